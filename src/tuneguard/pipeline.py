"""Run the stages of one experiment (base -> align -> fine-tune -> repair -> evaluate), with caching.

Every stage goes through the stage store, so running the same experiment twice recomputes nothing, and
experiments that share a prefix (one aligned model, many fine-tuning runs) share its stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tuneguard.config import ExperimentConfig
from tuneguard.data import load_records
from tuneguard.data.registry import check_experiment_sources
from tuneguard.eval.judges import resolve_judge_names
from tuneguard.eval.runner import run_evaluate
from tuneguard.methods.base import get_repair_method, parse_params
from tuneguard.stages import check_training_method, run_align, run_finetune, run_repair
from tuneguard.store import ModelRef, StageResult

STAGE_ORDER = ("align", "finetune", "repair", "eval")


@dataclass
class ExperimentResult:
    """The stage results of one experiment, the evaluations and the pipeline's models, keyed by model name."""

    stages: dict[str, StageResult] = field(default_factory=dict)
    evaluations: dict[str, StageResult] = field(default_factory=dict)
    models: dict[str, ModelRef] = field(default_factory=dict)  # base, aligned, finetuned, final (those that ran)

    def metrics(self, model: str = "final") -> dict[str, Any]:
        return self.evaluations[model].metrics


def run_experiment(
    cfg: ExperimentConfig,
    *,
    until: str = "eval",
    start_model: ModelRef | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> ExperimentResult:
    """Run the pipeline up to and including stage ``until`` (align, finetune, repair or eval).

    ``start_model`` replaces the pipeline's input for the first stage that runs (e.g. fine-tune a given
    model directory instead of aligning the base model first). ``overwrite`` recomputes the stages that run;
    ``resume`` continues an interrupted stage from its last checkpoint (without it, an interrupted stage stops
    the run with an :class:`~tuneguard.store.InterruptedStageError`).
    """
    if overwrite and resume:
        raise ValueError("resume and overwrite exclude each other: resume continues a run, overwrite discards it")
    check_methods(cfg)
    if until not in STAGE_ORDER:
        raise ValueError(f"unknown stage {until!r}; expected one of {', '.join(STAGE_ORDER)}")
    check_experiment_sources(cfg)  # training/evaluation overlap by provenance, before anything runs
    last = STAGE_ORDER.index(until)
    root = cfg.output_dir
    result = ExperimentResult()
    models = result.models
    models["base"] = ModelRef.from_settings(cfg.model)
    current = start_model or models["base"]

    if cfg.align is not None and start_model is None:
        result.stages["align"] = run_align(cfg.align, current, root, overwrite=overwrite, resume=resume)
        current = models["aligned"] = ModelRef.from_stage(result.stages["align"])
    if last >= 1 and cfg.finetune is not None:
        result.stages["finetune"] = run_finetune(cfg.finetune, current, root, overwrite=overwrite, resume=resume)
        current = models["finetuned"] = ModelRef.from_stage(result.stages["finetune"])
    if last >= 2:
        forbidden = None
        if cfg.repair.realign_data is not None:  # re-alignment data must not contain the evaluation prompts
            forbidden = {
                f"eval.harmful_prompts ({cfg.eval.harmful_prompts.source})": [
                    r["prompt"] for r in load_records(cfg.eval.harmful_prompts)
                ]
            }
        result.stages["repair"] = run_repair(
            cfg.repair, current, root, overwrite=overwrite, resume=resume, forbidden_prompts=forbidden
        )
        if cfg.repair.method != "none":  # identity repair: the final model is the fine-tuned one, same key
            current = ModelRef.from_stage(result.stages["repair"])
    models["final"] = current
    if last >= 3:
        for name in cfg.evaluate:
            if name not in models:
                continue  # e.g. 'aligned' when alignment is skipped
            result.evaluations[name] = run_evaluate(cfg.eval, models[name], root, overwrite=overwrite, resume=resume)
    return result


def check_methods(cfg: ExperimentConfig) -> None:
    """Resolve every stage's method, its ``method_args``, its training engine and the judges before anything
    runs, so that a mistake in a later stage does not stop the pipeline after hours of training in an earlier one."""
    for stage in ("align", "finetune"):
        if (stage_cfg := getattr(cfg, stage)) is not None:
            check_training_method(stage, stage_cfg)
    repair = get_repair_method(cfg.repair.method)
    parse_params(repair.params_cls, cfg.repair.method_args, "repair.method_args")
    resolve_judge_names(cfg.eval.judges, cfg.eval.harmful_prompts.source)
