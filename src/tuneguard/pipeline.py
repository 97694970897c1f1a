"""Run the stages of one experiment (base -> align -> fine-tune -> repair -> evaluate), with caching.

Every stage goes through the stage store, so running the same experiment twice recomputes nothing, and
experiments that share a prefix (one aligned model, many fine-tuning runs) share its stages.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from tuneguard.config import ConfigError, ExperimentConfig
from tuneguard.data.records import Records, prompt_text
from tuneguard.eval.runner import run_evaluate
from tuneguard.preflight import STAGE_ORDER, compared_roles, experiment_roles, preflight
from tuneguard.roles import finetune_data, load_roles, with_default_roles
from tuneguard.stages import run_align, run_finetune, run_repair
from tuneguard.store import ModelRef, StageResult


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

    Everything the stages need is checked first (``tuneguard.preflight``: methods, TrainingArguments, the output
    directory, every data role, the tokenization), so bad input stops the run before the first stage trains;
    each data file is read once. ``start_model`` replaces the pipeline's input for the first stage that runs
    (e.g. fine-tune a given model directory instead of aligning the base model first). ``overwrite``
    recomputes the stages that run; ``resume`` continues an interrupted stage from its last checkpoint (without
    it, an interrupted stage stops the run with an :class:`~tuneguard.store.InterruptedStageError`).
    """
    if overwrite and resume:
        raise ConfigError("resume and overwrite exclude each other: resume continues a run, overwrite discards it")
    plan = preflight(cfg, until=until, start_model=start_model)
    cfg, roles = plan.config, plan.roles
    root = cfg.output_dir
    result = ExperimentResult()
    models = result.models
    models["base"] = ModelRef.from_settings(cfg.model)
    current = start_model or models["base"]
    again = {"overwrite": overwrite, "resume": resume, "roles": roles}

    if "align" in plan.stages:
        result.stages["align"] = run_align(cfg.align, current, root, **again)
        current = models["aligned"] = ModelRef.from_stage(result.stages["align"])
    if "finetune" in plan.stages:
        result.stages["finetune"] = run_finetune(cfg.finetune, current, root, **again)
        current = models["finetuned"] = ModelRef.from_stage(result.stages["finetune"])
    if "repair" in plan.stages:
        forbidden = None
        if "eval.harmful_prompts" in roles and cfg.repair.realign_data is not None:
            # re-alignment data must not contain the evaluation prompts (recorded in the stage's disjointness)
            prompts = [prompt_text(r) for r in roles["eval.harmful_prompts"]]
            forbidden = {f"eval.harmful_prompts ({cfg.eval.harmful_prompts.source})": prompts}
        result.stages["repair"] = run_repair(cfg.repair, current, root, forbidden_prompts=forbidden, **again)
        if cfg.repair.method != "none":  # identity repair: the final model is the fine-tuned one, same key
            current = ModelRef.from_stage(result.stages["repair"])
    models["final"] = current
    if "eval" in plan.stages:
        for name in cfg.evaluate:
            if name not in models:
                continue  # e.g. 'aligned' when alignment is skipped
            result.evaluations[name] = run_evaluate(cfg.eval, models[name], root, model_name=name, **again)
    return result


def harmful_data_roles(cfg: ExperimentConfig, stages: Collection[str] = STAGE_ORDER) -> dict[str, Records]:
    """The loaded data of the given ``stages`` (and the evaluation prompts) that the disjointness check compares,
    by role (``data.provenance.ROLE_SIDES``); for the attack, the harmful records the user data actually draws."""
    cfg = with_default_roles(cfg)
    running = tuple(s for s in STAGE_ORDER if s in stages)
    roles = load_roles(experiment_roles(cfg, running))
    if "finetune" in running:
        finetune_data(cfg.finetune, roles)
    return compared_roles(roles)
