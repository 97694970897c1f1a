"""The stage protocol: key -> finished? -> claim the directory -> compute -> finish.

A stage reads one model and writes one directory of the stage store (``tuneguard.store``). :meth:`Stage.run` is
the protocol, the same for every stage: take the stage's data from the loaded roles (or load them), check them,
compute the key from the resolved config, the input model's fingerprint and the data fingerprints, reuse the
finished stage of that key, or claim its directory (one process at a time), compute, and write ``stage.json``.
A concrete stage supplies only the hooks:

- :meth:`Stage.check_config` (optional): refuse a bad config before any data is read;
- :meth:`Stage.roles`: the data roles it reads (config keys, ``tuneguard.roles.Role``), declared once: the
  pre-flight loads exactly these before the first stage of an experiment trains;
- :meth:`Stage.data`: what it computes on, taken from the loaded roles (name -> records);
- :meth:`Stage.resolved_config`: its config with every default and method parameter filled in (recorded, and
  keyed through :meth:`Stage.key_config`);
- :meth:`Stage.check_inputs` (optional): refuse bad input before the directory is claimed;
- :meth:`Stage.compute`: the work, into the claimed directory; returns the fields of the stage record;
- :meth:`Stage.output_model` (optional): the model the next stage reads.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tuneguard.data.records import Records
from tuneguard.roles import Role, Roles, load_roles
from tuneguard.store import ModelRef, StageResult, claim_stage, fingerprint, finish_stage, stage_dir, stage_key

logger = logging.getLogger(__name__)


@dataclass
class StageRun:
    """What the protocol hands a stage's :meth:`Stage.compute`: its input model, its data (name -> records) and
    their fingerprints, its resolved config, the claimed directory, and what :meth:`Stage.check_inputs` found."""

    model: ModelRef
    data: dict[str, Records]
    data_fingerprints: dict[str, str]
    config: dict[str, Any]
    directory: Path
    checked: dict[str, Any] = field(default_factory=dict)


class Stage(ABC):
    """One stage of the pipeline (align, finetune, repair, eval): the protocol in :meth:`run`, the specifics in
    the hooks. ``name`` is the stage's name in the store (``<output_dir>/<name>/<label>-<key12>/``) and its key."""

    name: ClassVar[str]
    produces: ClassVar[str | None] = None  # the name of the model it outputs in the pipeline (``aligned``, ...)

    @property
    @abstractmethod
    def label(self) -> str:
        """The first part of the stage directory's name (the method, or the evaluation's label)."""

    def check_config(self) -> None:  # noqa: B027  (a hook: nothing to check by default)
        """Refuse a bad config (the method, its parameters) from the config alone, before any data is read."""

    @abstractmethod
    def roles(self) -> list[Role]:
        """The data roles this stage reads; a role its method needs but the config lacks is a ConfigError."""

    @abstractmethod
    def data(self, roles: Roles) -> dict[str, Records]:
        """What this stage computes on (name -> records), taken from the loaded ``roles``."""

    @abstractmethod
    def resolved_config(self) -> dict[str, Any]:
        """The stage's config as JSON, defaults and method parameters filled in: recorded in ``stage.json``."""

    def key_config(self, resolved: dict[str, Any]) -> dict[str, Any]:
        """The part of the resolved config that determines the result (the stage key's config); all of it."""
        return resolved

    def check_inputs(self, model: ModelRef, data: dict[str, Records]) -> dict[str, Any]:
        """Refuse bad input before the stage directory is claimed; returns what the check found (for
        :meth:`compute`, in ``StageRun.checked``). Nothing to check by default."""
        return {}

    @abstractmethod
    def compute(self, run: StageRun) -> dict[str, Any]:
        """Compute the stage into ``run.directory`` (claimed, prepared); return the fields of its ``stage.json``."""

    def output_model(self, result: StageResult, model: ModelRef) -> ModelRef:
        """The model the next stage reads, after this stage ran on ``model`` and gave ``result``."""
        return ModelRef.from_stage(result)

    def run(
        self,
        model: ModelRef,
        output_dir: str | Path,
        *,
        overwrite: bool = False,
        resume: bool = False,
        roles: Roles | None = None,
    ) -> StageResult:
        """Run the stage on ``model`` into the store at ``output_dir``, or reuse its finished result.

        ``roles``: the experiment's loaded data roles (``tuneguard.roles``); without them the stage loads its own.
        ``resume`` continues an interrupted run of the stage from its last checkpoint (without it, an interrupted
        run is an :class:`~tuneguard.store.InterruptedStageError`); ``overwrite`` starts over."""
        self.check_config()
        data = self.data(roles if roles is not None else load_roles(self.roles()))
        checked = self.check_inputs(model, data)
        resolved = self.resolved_config()
        fingerprints = {name: fingerprint(records) for name, records in data.items()}
        key = stage_key(self.name, self.key_config(resolved), model, fingerprints)
        directory = stage_dir(output_dir, self.name, self.label, key)
        with claim_stage(directory, self.name, key, overwrite=overwrite, resume=resume) as done:
            if done is not None:
                logger.info("%s: reusing finished stage %s", self.name, directory)
                return done
            info = self.compute(StageRun(model, data, fingerprints, resolved, directory, checked))
            return finish_stage(directory, self.name, key, info)


def input_fields(model: ModelRef) -> dict[str, Any]:
    """The record fields that name a stage's input model (and the stage that produced it, if any)."""
    return {
        "input_model": model.settings.model_dump(),
        "input_stage_dir": str(model.stage_dir) if model.stage_dir else None,
    }
