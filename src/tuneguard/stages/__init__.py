"""The stages of an experiment: align -> finetune -> repair, and the evaluation of each model they produce.

Each stage is a :class:`~tuneguard.stages.base.Stage`: the protocol (key, reuse, claim, compute, finish) lives in
the base, a stage supplies its data roles and its computation (``training.py``: align and finetune;
``repair.py``; ``evaluate.py``). :func:`experiment_stages` lists the stages of an experiment, in order: the
pre-flight checks what they read, the pipeline runs them.

A new stage is a subclass of :class:`Stage` (its ``name``, the model it ``produces``, and the hooks ``label``,
``roles``, ``data``, ``resolved_config``, ``compute``) listed in :func:`experiment_stages`; its data roles are then
loaded and checked by the pre-flight, and its results keyed, reused, locked and resumed like every other stage's.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from tuneguard.config import ExperimentConfig
from tuneguard.data.records import prompt_text
from tuneguard.roles import Roles
from tuneguard.stages.base import Stage, StageRun
from tuneguard.stages.evaluate import EvaluateStage, run_evaluate
from tuneguard.stages.repair import RepairStage, check_disjoint_prompts, run_repair
from tuneguard.stages.training import (
    BOOKKEEPING,
    AlignStage,
    FinetuneStage,
    TrainingStage,
    mean_train_loss,
    run_align,
    run_finetune,
    training_arguments,
)
from tuneguard.store import StageResult

__all__ = [
    "BOOKKEEPING",
    "STAGE_ORDER",
    "AlignStage",
    "EvaluateStage",
    "FinetuneStage",
    "RepairStage",
    "Stage",
    "StageRun",
    "TrainingStage",
    "check_disjoint_prompts",
    "describe_stage",
    "experiment_stages",
    "mean_train_loss",
    "run_align",
    "run_evaluate",
    "run_finetune",
    "run_repair",
    "training_arguments",
]

# The stages in pipeline order (``eval``: the evaluation of each named model).
STAGE_ORDER = ("align", "finetune", "repair", "eval")


def experiment_stages(cfg: ExperimentConfig, names: Collection[str], roles: Roles | None = None) -> list[Stage]:
    """The model stages of experiment ``cfg`` among ``names`` (align, finetune, repair), in pipeline order; a
    training stage the experiment does not configure is left out.

    With the experiment's loaded ``roles``, the repair stage also refuses re-alignment data that shares a prompt
    with the evaluation's harmful prompts (``eval.harmful_prompts``), and records that comparison."""
    stages: list[Stage] = []
    if "align" in names and cfg.align is not None:
        stages.append(AlignStage(cfg.align))
    if "finetune" in names and cfg.finetune is not None:
        stages.append(FinetuneStage(cfg.finetune))
    if "repair" in names:
        forbidden = None
        if roles is not None and "eval.harmful_prompts" in roles and cfg.repair.realign_data is not None:
            prompts = [prompt_text(r) for r in roles["eval.harmful_prompts"]]
            forbidden = {f"eval.harmful_prompts ({cfg.eval.harmful_prompts.source})": prompts}
        stages.append(RepairStage(cfg.repair, forbidden))
    return stages


def describe_stage(result: StageResult) -> dict[str, Any]:
    """A short, printable summary of a stage result (no data text)."""
    return {
        "stage": result.stage,
        "directory": str(result.directory),
        "reused": result.reused,
        **{k: v for k, v in result.metrics.items() if isinstance(v, int | float)},
    }
