"""The evaluate stage: harmful score (per judge), fine-tune accuracy, over-refusal and, when ``eval.likelihood``
names sets, the judge-free harm metric of one model, cached like any stage.

Writes ``generations.jsonl`` (one row per prompt: set, prompt id, answer, each judge's verdict and details such as
Llama Guard's categories, whether the answer is degenerate or empty, whether a benign prompt was refused; never the
prompt text) and ``metrics.json`` (what ``tuneguard.eval.runner.evaluate_model`` scores); the harmful answers are
data in files, never printed.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from tuneguard.config import ConfigError, DataSource, EvalConfig, dump_config
from tuneguard.data import write_jsonl
from tuneguard.data.records import Records
from tuneguard.eval.judges import check_judge_names, resolve_judge_names, validate_judge_args
from tuneguard.eval.runner import evaluate_model
from tuneguard.models import prepare_model_files
from tuneguard.roles import Role, Roles
from tuneguard.stages.base import Stage, StageRun, input_fields
from tuneguard.store import ModelRef, StageResult, write_json_atomic


class EvaluateStage(Stage):
    """Generate greedy answers to the held-out harmful prompts, the task test set and the benign prompts; judge and
    score them; score the likelihood sets on the same loaded model.

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
        cfg = self.cfg
        roles = [Role("eval.harmful_prompts", cfg.harmful_prompts)]
        if cfg.task_test is not None:  # scored: labels are text, numbers only when the answer's number counts
            numeric = cfg.accuracy_mode == "number"
            roles.append(Role("eval.task_test", cfg.task_test, True, numeric_labels=numeric))
        roles += [Role(key, source) for key, source in likelihood_keys(cfg).items()]
        if cfg.likelihood and cfg.likelihood_refusals is not None:
            roles.append(Role("eval.likelihood_refusals", cfg.likelihood_refusals))
        if cfg.benign_prompts is not None:
            roles.append(Role("eval.benign_prompts", cfg.benign_prompts))
        return roles

    def data(self, roles: Roles) -> dict[str, Records]:
        """The ``harmful_prompts``, the ``task_test`` set (empty when there is none) and, when set, each likelihood
        set (``likelihood_<name>``, see :func:`likelihood_set_names`), the likelihood refusals and the
        ``benign_prompts``. A likelihood set without reference answers is a ConfigError naming its key."""
        data = {"harmful_prompts": roles["eval.harmful_prompts"], "task_test": roles.get("eval.task_test", Records())}
        for (key, _), name in zip(likelihood_keys(self.cfg).items(), likelihood_set_names(self.cfg), strict=True):
            records = roles[key]
            if missing := sum(not r["response"].strip() for r in records):
                raise ConfigError(
                    f"{key}: {missing} of {len(records)} records have no reference answer; the likelihood metric "
                    "needs harmful prompt -> harmful answer records (e.g. pyrit:harmful_qa or rho:harmful)"
                )
            data[f"likelihood_{name}"] = records
        if "eval.likelihood_refusals" in roles and self.cfg.likelihood:
            data["likelihood_refusals"] = roles["eval.likelihood_refusals"]
        if "eval.benign_prompts" in roles:
            data["benign_prompts"] = roles["eval.benign_prompts"]
        return data

    def resolved_config(self) -> dict[str, Any]:
        """The config with the judges resolved (``auto``: the source's judge) and their full arguments."""
        names = resolve_judge_names(self.cfg.judges, self.cfg.harmful_prompts.source)
        judges = {name: validate_judge_args(name, self.cfg.judge_args.get(name, {})) for name in names}
        return {**dump_config(self.cfg), "judges": names, "judge_args": judges}

    def compute(self, run: StageRun) -> dict[str, Any]:
        model = run.model
        model_setup_s = prepare_model_files(model.settings)  # one-off builds (pre-training): not this evaluation's
        start = time.time()
        names = likelihood_set_names(self.cfg)
        metrics, rows, template_kind, parts = evaluate_model(
            self.cfg,
            model,
            run.config["judges"],
            run.config["judge_args"],
            run.data["harmful_prompts"],
            run.data["task_test"],
            self.model_name,
            likelihood={name: run.data[f"likelihood_{name}"] for name in names},
            likelihood_refusals=run.data.get("likelihood_refusals"),
            benign=run.data.get("benign_prompts"),
        )
        write_jsonl(rows, run.directory / "generations.jsonl")
        write_json_atomic(run.directory / "metrics.json", metrics)
        timings = {"wall_s": round(time.time() - start, 2), **parts}
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


def likelihood_keys(cfg: EvalConfig) -> dict[str, DataSource]:
    """The config key of each likelihood set (``eval.likelihood``; ``eval.likelihood[i]`` in a list of several)."""
    if len(cfg.likelihood) == 1:
        return {"eval.likelihood": cfg.likelihood[0]}
    return {f"eval.likelihood[{i}]": source for i, source in enumerate(cfg.likelihood)}


def likelihood_set_names(cfg: EvalConfig) -> list[str]:
    """The short name of each likelihood set, which suffixes its metrics after the first set's (unsuffixed): the
    source's name (a file's stem) in lower case, letters and digits kept, anything else ``_`` (``pyrit:harmful_qa``
    -> ``pyrit_harmful_qa``); a name met again gets ``_2``, ``_3``, ..."""
    names: list[str] = []
    for source in cfg.likelihood:
        text = Path(source.source).stem if Path(source.source).suffix else source.source
        name = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "set"
        unique, k = name, 1
        while unique in names:
            k += 1
            unique = f"{name}_{k}"
        names.append(unique)
    return names


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
