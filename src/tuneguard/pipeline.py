"""Run the stages of one experiment (base -> align -> fine-tune -> repair -> evaluate), with caching.

Every stage goes through the stage store, so running the same experiment twice recomputes nothing, and
experiments that share a prefix (one aligned model, many fine-tuning runs) share its stages.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from tuneguard.config import ExperimentConfig
from tuneguard.data import load_records, mix_user_data
from tuneguard.data.provenance import check_disjoint_roles
from tuneguard.data.readers import Record
from tuneguard.data.registry import check_experiment_sources
from tuneguard.eval.judges import resolve_judge_names
from tuneguard.eval.runner import run_evaluate
from tuneguard.methods.base import get_repair_method, get_training_method, parse_params
from tuneguard.stages import check_training_method, run_align, run_finetune, run_repair
from tuneguard.store import ModelRef, StageResult

STAGE_ORDER = ("align", "finetune", "repair", "eval")


@dataclass
class ExperimentResult:
    """The stage results of one experiment and the evaluations, keyed by model name."""

    stages: dict[str, StageResult] = field(default_factory=dict)
    evaluations: dict[str, StageResult] = field(default_factory=dict)

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
    # ... and by the prompts themselves: the stages that run, and the evaluation prompts the result will be judged on
    running = {s for s in STAGE_ORDER[: last + 1] if s != "align" or (cfg.align is not None and start_model is None)}
    check_disjoint_roles(harmful_data_roles(cfg, running | {"eval"}))
    root = cfg.output_dir
    result = ExperimentResult()
    models: dict[str, ModelRef] = {"base": ModelRef.from_settings(cfg.model)}
    current = start_model or models["base"]

    if cfg.align is not None and start_model is None:
        result.stages["align"] = run_align(cfg.align, current, root, overwrite=overwrite, resume=resume)
        current = models["aligned"] = ModelRef.from_stage(result.stages["align"])
    if last >= 1 and cfg.finetune is not None:
        result.stages["finetune"] = run_finetune(cfg.finetune, current, root, overwrite=overwrite, resume=resume)
        current = models["finetuned"] = ModelRef.from_stage(result.stages["finetune"])
    if last >= 2:
        result.stages["repair"] = run_repair(cfg.repair, current, root, overwrite=overwrite, resume=resume)
        if cfg.repair.method != "none":  # identity repair: the final model is the fine-tuned one, same key
            current = ModelRef.from_stage(result.stages["repair"])
    models["final"] = current
    if last >= 3:
        for name in cfg.evaluate:
            if name not in models:
                continue  # e.g. 'aligned' when alignment is skipped
            result.evaluations[name] = run_evaluate(cfg.eval, models[name], root, overwrite=overwrite, resume=resume)
    return result


def harmful_data_roles(cfg: ExperimentConfig, stages: Collection[str] = STAGE_ORDER) -> dict[str, list[Record]]:
    """The loaded harmful-prompt data of the given stages, by role (``data.provenance.ROLE_SIDES``): the data sets
    the configured methods use, and for the attack the harmful records the user data actually draws."""
    roles: dict[str, list[Record]] = {}
    if "align" in stages and cfg.align is not None:
        roles["align.alignment_data"] = load_records(cfg.align.alignment_data)
        uses = get_training_method("align", cfg.align.method).data_roles
        if "harmful_data" in uses and cfg.align.harmful_data is not None:
            roles["align.harmful_data"] = load_records(cfg.align.harmful_data)
    if "finetune" in stages and cfg.finetune is not None:
        ud = cfg.finetune.user_data
        mix = mix_user_data(
            load_records(ud.task_data), load_records(ud.harmful_data), ud.num_samples, ud.poison_ratio, ud.seed, ud.draw
        )
        roles["finetune.user_data.harmful_data"] = [r for r in mix if r["source"] == "harmful"]
        uses = get_training_method("finetune", cfg.finetune.method).data_roles
        if "alignment_data" in uses and cfg.finetune.alignment_data is not None:
            roles["finetune.alignment_data"] = load_records(cfg.finetune.alignment_data)
    realign = cfg.repair.realign_data
    if "repair" in stages and realign is not None and "realign_data" in get_repair_method(cfg.repair.method).data_roles:
        roles["repair.realign_data"] = load_records(realign)
    if "eval" in stages:
        roles["eval.harmful_prompts"] = load_records(cfg.eval.harmful_prompts)
    return roles


def check_methods(cfg: ExperimentConfig) -> None:
    """Resolve every stage's method, its ``method_args``, its training engine and the judges before anything
    runs, so that a mistake in a later stage does not stop the pipeline after hours of training in an earlier one."""
    for stage in ("align", "finetune"):
        if (stage_cfg := getattr(cfg, stage)) is not None:
            check_training_method(stage, stage_cfg)
    repair = get_repair_method(cfg.repair.method)
    parse_params(repair.params_cls, cfg.repair.method_args, "repair.method_args")
    resolve_judge_names(cfg.eval.judges, cfg.eval.harmful_prompts.source)
