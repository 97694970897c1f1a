"""The evaluate stage: harmful score (per judge) and fine-tune accuracy of one model, cached like any stage.

Writes ``generations.jsonl`` (one row per prompt: set, prompt id, answer, each judge's verdict and details such as
Llama Guard's categories, whether the answer is degenerate or empty; never the prompt text) and ``metrics.json``
(what ``tuneguard.eval.runner.evaluate_model`` scores); the harmful answers are data in files, never printed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tuneguard.config import ConfigError, EvalConfig, dump_config
from tuneguard.data import write_jsonl
from tuneguard.data.records import Records
from tuneguard.eval.judges import check_judge_names, resolve_judge_names, validate_judge_args
from tuneguard.eval.runner import evaluate_model
from tuneguard.models import prepare_model_files
from tuneguard.roles import Role, Roles
from tuneguard.stages.base import Stage, StageRun, input_fields
from tuneguard.store import ModelRef, StageResult, write_json_atomic


class EvaluateStage(Stage):
    """Generate greedy answers to the held-out harmful prompts and the task test set; judge and score them.

    ``label`` names the stage directory (``eval/<label>-<key12>``); ``model_name`` (``final``, ``aligned``) names
    the model on the progress bars. An evaluation has no checkpoints: ``resume`` redoes an interrupted one."""

    name = "eval"

    def __init__(self, cfg: EvalConfig, *, label: str = "eval", model_name: str = "") -> None:
        self.cfg = cfg
        self._label = label
        self.model_name = model_name

    @property
    def label(self) -> str:
        return self._label

    def check_config(self) -> None:
        check_judges(self.cfg)

    def roles(self) -> list[Role]:
        roles = [Role("eval.harmful_prompts", self.cfg.harmful_prompts)]
        if self.cfg.task_test is not None:  # scored: labels are text, numbers only when the answer's number counts
            numeric = self.cfg.accuracy_mode == "number"
            roles.append(Role("eval.task_test", self.cfg.task_test, True, numeric_labels=numeric))
        return roles

    def data(self, roles: Roles) -> dict[str, Records]:
        """The ``harmful_prompts`` and the ``task_test`` set (empty when there is none)."""
        return {"harmful_prompts": roles["eval.harmful_prompts"], "task_test": roles.get("eval.task_test", Records())}

    def resolved_config(self) -> dict[str, Any]:
        """The config with the judges resolved (``auto``: the source's judge) and their full arguments."""
        names = resolve_judge_names(self.cfg.judges, self.cfg.harmful_prompts.source)
        judges = {name: validate_judge_args(name, self.cfg.judge_args.get(name, {})) for name in names}
        return {**dump_config(self.cfg), "judges": names, "judge_args": judges}

    def compute(self, run: StageRun) -> dict[str, Any]:
        model = run.model
        model_setup_s = prepare_model_files(model.settings)  # one-off builds (pre-training): not this evaluation's
        start = time.time()
        metrics, rows, template_kind = evaluate_model(
            self.cfg,
            model,
            run.config["judges"],
            run.config["judge_args"],
            run.data["harmful_prompts"],
            run.data["task_test"],
            self.model_name,
        )
        write_jsonl(rows, run.directory / "generations.jsonl")
        write_json_atomic(run.directory / "metrics.json", metrics)
        timings = {"wall_s": round(time.time() - start, 2)}
        if model_setup_s >= 0.5:
            timings["model_setup_s"] = round(model_setup_s, 2)
        return {
            "config": run.config,
            **input_fields(model),
            "template": template_kind,
            "data": {k: {"fingerprint": v} for k, v in run.data_fingerprints.items()},
            "metrics": metrics,
            "timings": timings,
        }


def check_judges(eval_cfg: EvalConfig) -> None:
    """Every name in ``eval.judges`` is 'auto' or a registered judge, and ``eval.judge_args`` holds valid arguments
    of registered judges; otherwise a ConfigError naming the key (with a did-you-mean)."""
    try:
        check_judge_names(eval_cfg.judges)
    except ValueError as exc:
        raise ConfigError(f"eval.judges: {exc}") from None
    for name, args in eval_cfg.judge_args.items():
        try:
            validate_judge_args(name, args)  # the judge's own settings model: unknown keys, bad values
        except ValueError as exc:
            raise ConfigError(f"eval.judge_args: {exc}") from None


def run_evaluate(
    cfg: EvalConfig,
    model: ModelRef,
    output_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    label: str = "eval",
    roles: Roles | None = None,
    model_name: str = "",
) -> StageResult:
    """The evaluation of ``model`` (:class:`EvaluateStage`); the other arguments as in :meth:`Stage.run`."""
    stage = EvaluateStage(cfg, label=label, model_name=model_name)
    return stage.run(model, output_dir, overwrite=overwrite, resume=resume, roles=roles)
