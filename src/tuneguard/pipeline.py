"""Run the stages of one experiment (base -> align -> fine-tune -> repair -> evaluate), with caching.

Every stage goes through the stage store, so running the same experiment twice recomputes nothing, and
experiments that share a prefix (one aligned model, many fine-tuning runs) share its stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tuneguard.config import ConfigError, ExperimentConfig
from tuneguard.preflight import preflight
from tuneguard.stages import EvaluateStage, experiment_stages
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
    again = {"overwrite": overwrite, "resume": resume, "roles": roles}
    result = ExperimentResult()
    models = result.models
    models["base"] = ModelRef.from_settings(cfg.model)
    current = start_model or models["base"]
    for stage in experiment_stages(cfg, plan.stages, roles):
        result.stages[stage.name] = stage.run(current, cfg.output_dir, **again)
        current = models[stage.produces] = stage.output_model(result.stages[stage.name], current)
    models["final"] = current
    if "eval" in plan.stages:
        for name in cfg.evaluate:
            if name in models:  # not e.g. 'aligned' when alignment is skipped
                evaluate = EvaluateStage(cfg.eval, model_name=name)
                result.evaluations[name] = evaluate.run(models[name], cfg.output_dir, **again)
    return result
