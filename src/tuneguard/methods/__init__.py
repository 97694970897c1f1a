"""Defenses and baselines, one module per method, each registered by name on import.

Alignment stage: ``sft``. Fine-tuning stage: ``sft`` (the attack), ``bso`` and ``lisa`` (Lisa, arXiv
2405.18641; ``bso`` is Lisa with rho = 0). Repair: ``none``.
"""

# Importing a method module registers it (one line per method, kept in alphabetical order).
import tuneguard.methods.antidote  # noqa: F401
import tuneguard.methods.booster  # noqa: F401
import tuneguard.methods.lisa  # noqa: F401
import tuneguard.methods.repnoise  # noqa: F401
import tuneguard.methods.sft  # noqa: F401  (sft and the identity repair)
import tuneguard.methods.vaccine  # noqa: F401
from tuneguard.methods.base import (
    MethodParams,
    NoParams,
    RepairMethod,
    TrainingMethod,
    get_repair_method,
    get_training_method,
    list_methods,
    register_repair_method,
    register_training_method,
)

__all__ = [
    "MethodParams",
    "NoParams",
    "RepairMethod",
    "TrainingMethod",
    "get_repair_method",
    "get_training_method",
    "list_methods",
    "register_repair_method",
    "register_training_method",
]
