"""Typed configuration for every stage and for a whole experiment.

The settings models are in ``settings.py``; reading them from YAML with overrides is ``loading.py``. A config is
loaded from YAML, patched with ``key.sub=value`` overrides from the command line, validated (unknown keys are
errors, with a "did you mean" suggestion) and written, fully resolved, into every stage output.
"""

from tuneguard.config.loading import (
    SECRET_KEYS,
    apply_override,
    dump_config,
    load_config,
    read_yaml_mapping,
    validate_config,
    validation_problems,
)
from tuneguard.config.settings import (
    MANAGED_TRAINING_ARGS,
    AlignConfig,
    ConfigError,
    DataSource,
    EvalConfig,
    ExperimentConfig,
    FinetuneConfig,
    LoraSettings,
    ModelSettings,
    RepairConfig,
    TrainingSettings,
    UserDataSettings,
)

__all__ = [
    "MANAGED_TRAINING_ARGS",
    "SECRET_KEYS",
    "AlignConfig",
    "ConfigError",
    "DataSource",
    "EvalConfig",
    "ExperimentConfig",
    "FinetuneConfig",
    "LoraSettings",
    "ModelSettings",
    "RepairConfig",
    "TrainingSettings",
    "UserDataSettings",
    "apply_override",
    "dump_config",
    "load_config",
    "read_yaml_mapping",
    "validate_config",
    "validation_problems",
]
