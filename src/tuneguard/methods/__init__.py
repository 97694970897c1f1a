"""Defenses and baselines, one module per method, each registered by name when the registry first looks one up.

``tuneguard methods`` (or :func:`list_methods`) lists the registered methods of each stage; ``base.py`` holds the
registry, ``defense.py`` the base of the defenses' trainers, and the modules named for what they hold the shared
mechanics (``layouts``, ``hooks``, ``weights``, ``engines``, ``auxiliary_data``).
"""

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
