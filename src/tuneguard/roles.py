"""The data roles of an experiment: which data each stage reads, named by its config key, loaded once.

A role is the config key that holds a data source: ``align.alignment_data``, ``align.harmful_data``,
``finetune.user_data.task_data``, ``finetune.user_data.harmful_data``, ``finetune.alignment_data``,
``repair.realign_data``, ``eval.harmful_prompts``, ``eval.task_test``, ``eval.likelihood`` (``eval.likelihood[i]``
when it lists several sets), ``eval.likelihood_refusals``, ``eval.benign_prompts``; plus ``finetune.user_data``, the
user's data set drawn from the two before it (records tagged ``source`` = task / harmful). A method's extra data roles
(``TrainingMethod.data_roles``, e.g. Lisa's ``alignment_data``) are fields of its stage's config of the same
name, so a missing one is found from the config alone, before anything is loaded or trained.

Each stage declares the roles it reads (``Stage.roles``) and takes what it computes on from the loaded roles
(``Stage.data``); :func:`load_roles` loads each role once, so the pipeline reads every file once and the stages
see exactly what the pre-flight checked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tuneguard.config import ConfigError, DataSource, ExperimentConfig
from tuneguard.data import load_records
from tuneguard.data.records import Records
from tuneguard.methods.base import get_training_method

Roles = dict[str, Records]
USER_DATA = "finetune.user_data"  # the drawn user data set (task + harmful records)


@dataclass(frozen=True)
class Role:
    """One data source of an experiment, by config key, with how it is loaded."""

    key: str
    source: DataSource | list[DataSource]
    require_label: bool = False
    numeric_labels: bool = False

    def load(self) -> Records:
        return load_records(self.source, require_label=self.require_label, numeric_labels=self.numeric_labels)

    @property
    def identity(self) -> str:
        """Two roles with the same identity load the same records (e.g. across the cells of a grid)."""
        sources = self.source if isinstance(self.source, list) else [self.source]
        return json.dumps([[s.model_dump(mode="json") for s in sources], self.require_label, self.numeric_labels])


def with_default_roles(cfg: ExperimentConfig) -> ExperimentConfig:
    """The experiment with its data defaults filled in: a fine-tuning defense that needs the provider's alignment
    data (Lisa, BSO) and has no ``finetune.alignment_data`` uses ``align.alignment_data``, the data the provider
    aligned with (the Lisa paper's setting: the same safety data in both stages)."""
    ft = cfg.finetune
    if ft is None or ft.alignment_data is not None or cfg.align is None:
        return cfg
    if "alignment_data" not in get_training_method("finetune", ft.method).data_roles:
        return cfg
    resolved = cfg.model_copy(deep=True)
    resolved.finetune.alignment_data = cfg.align.model_copy(deep=True).alignment_data
    return resolved


def method_roles(stage: str, cfg: Any, data_roles: tuple[str, ...]) -> list[Role]:
    """The roles of a stage's method (``data_roles``: fields of the stage's config ``cfg``); a role the method needs
    but the config lacks is a ConfigError naming ``<stage>.<role>``."""
    roles = []
    for role in data_roles:
        source = getattr(cfg, role, None)
        if source is None:
            hint = (
                " (or an align stage, whose align.alignment_data it then uses)"
                if (stage, role) == ("finetune", "alignment_data")
                else ""
            )
            raise ConfigError(f"{stage}.{role}: {stage} method {cfg.method!r} needs it, but it is not set{hint}")
        roles.append(Role(f"{stage}.{role}", source))
    return roles


def load_roles(roles: list[Role], cache: dict[str, Records] | None = None) -> Roles:
    """Each role's records, loaded (and validated) once, in the given order; with ``cache`` (identity -> records),
    a source already loaded for another experiment is not read again."""
    cache = cache if cache is not None else {}
    loaded = {}
    for role in roles:
        if role.identity not in cache:
            cache[role.identity] = role.load()
        loaded[role.key] = cache[role.identity]
    return loaded
