"""The service's one adapter to the tuneguard library.

Every call from ``tuneguard.serve`` into the library -- its config models, the pipeline (``run_experiment`` with
``until=`` and ``start_model=``), the readers, the judges, generation, plots and the stage store's layout -- is
made in this module, so that a change of the library's internals touches this file only. The rest of the
service passes plain data in and gets plain data back: dicts, paths, numbers.

A job is an experiment in its own stage store (``<job dir>/store``): the provider's fine-tuning stage on the
user's file, started from the offered (aligned) model, then the evaluation of the safety gate and, where the
gate fails, the provider's repair. The stage store brings checkpoints and exact resume: a job interrupted by a
restart is the same call again with ``resume=True``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneguard.config import (  # noqa: F401  (the config models the policy is made of, re-exported)
    AlignConfig,
    ConfigError,
    EvalConfig,
    ExperimentConfig,
    FinetuneConfig,
    ModelSettings,
    RepairConfig,
    dump_config,
    load_config,
)
from tuneguard.gridexec.settings import CellResources  # noqa: F401  (a Ray task's resources, re-exported)
from tuneguard.store import CHECKPOINTS, ModelRef, atomic_output, fingerprint

# The library modules that load torch (data, models, judges, the pipeline, plots) are imported in the functions
# that use them: the API process never trains or generates, and stays light; a worker imports them in warm_up().

# The OpenAI fine-tuning formats, as the library's readers name their layouts.
TRAINING_LAYOUTS = {"messages": "chat", "prompt_completion": "prompt/completion"}


# ------------------------------------------------------------------------------------------------ utilities
def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and a rename (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, (json.dumps(data, indent=2, default=str) + "\n").encode("utf-8"))


def warm_up() -> None:
    """Import the library's training and evaluation code now (a worker process does it once, before its first
    task, so a job does not wait for the imports)."""
    import tuneguard.eval  # noqa: F401
    import tuneguard.pipeline  # noqa: F401
    import tuneguard.plots  # noqa: F401


def user_error_types() -> tuple[type[Exception], ...]:
    """The library's errors that describe bad input (a data file, a config, a model), as opposed to a bug."""
    from tuneguard.data import DataError
    from tuneguard.models import ModelLoadError

    return (ConfigError, DataError, ModelLoadError)


def fingerprint12(obj: Any) -> str:
    return fingerprint(obj)[:12]


# -------------------------------------------------------------------------------------------------- uploads
def parse_example(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The layout ('chat' or 'prompt/completion') and the library's record of one training example, read by the
    library's readers; a ValueError says what is wrong with it."""
    from tuneguard.data.records import DataError, detect_layout, normalize

    layout = detect_layout(row)
    if layout not in TRAINING_LAYOUTS:
        fields = ", ".join(sorted(map(str, row))) or "none"
        raise ValueError(
            'expected a chat example {"messages": [...]} or a prompt/completion example '
            f'{{"prompt": ..., "completion": ...}} (fields present: {fields})'
        )
    try:
        (record,) = normalize([row], layout, "example")
    except DataError as exc:
        raise ValueError(str(exc).removeprefix("example: ").removeprefix("example, row 1: ")) from None
    return TRAINING_LAYOUTS[layout], record


def load_training_records(path: Path) -> list[dict[str, Any]]:
    """The records of a checked training file, in line order (record i is line i + 1)."""
    from tuneguard.data import load_records

    return load_records(str(path))


# --------------------------------------------------------------------------------------------------- policy
def check_judge(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """Validate a judge name and its arguments (ValueError with a did-you-mean); returns the full arguments."""
    from tuneguard.eval.judges import check_judge_names, validate_judge_args

    if name == "auto":
        raise ValueError("'auto' picks a judge from the evaluation prompts' source; name the screening judge")
    check_judge_names([name])
    return validate_judge_args(name, args)


def check_policy(policy: Any) -> None:
    """What can be checked before the first job: every offered model's job experiment (methods, their
    ``method_args``, training engine, judges), with the repair. Raises the library's errors."""
    from tuneguard.preflight import check_methods

    for name in policy.models:
        example = JobWork(name, Path(policy.data_dir) / "jobs" / "check", Path("train.jsonl"), None, 1, 1, 1, 1.0, 0)
        check_methods(job_experiment(policy, example, repaired=True))


# ---------------------------------------------------------------------------------------------- base models
def base_record_path(policy: Any, name: str) -> Path:
    """Where the prepared base model's record lives: keyed by the offered model's config, so services that
    share ``base_models_dir`` with different settings under one name never mix them up."""
    offered = policy.models[name].model_dump(mode="json")
    return Path(policy.base_models_path) / f"{name}-{fingerprint12(offered)}.json"


def prepare_base_model(policy: Any, name: str) -> dict[str, Any]:
    """Make the offered model ready (its align stage, run once and cached in the base models' store) and write its
    record; returns the model settings jobs start from. Safe to call from several workers at once."""
    from filelock import FileLock

    record = base_record_path(policy, name)
    record.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(record) + ".lock"):
        settings = _start_model(policy, name).settings.model_dump(mode="json")
        write_json(record, {"name": name, "model": settings, "prepared_at": time.time()})
    return settings


def base_model_settings(policy: Any, name: str) -> dict[str, Any] | None:
    """The settings of a prepared base model (None until a worker has prepared it)."""
    record = base_record_path(policy, name)
    return json.loads(record.read_text(encoding="utf-8"))["model"] if record.is_file() else None


def base_safety(policy: Any, name: str) -> dict[str, Any]:
    """The gate's evaluation of the offered model itself (the 'before' of every job; cached per model)."""
    from tuneguard.pipeline import run_experiment

    cfg = _base_experiment(policy, name).model_copy(update={"align": None})
    result = run_experiment(cfg, until="eval", start_model=_start_model(policy, name), resume=True)
    return _gate_metrics(result.evaluations["final"].metrics)


def _base_experiment(policy: Any, name: str) -> ExperimentConfig:
    offered = policy.models[name]
    return ExperimentConfig(
        name=f"serve-base-{name}",
        output_dir=str(policy.base_models_path),
        model=offered.model,
        align=offered.align,
        finetune=None,
        eval=policy.gate.eval.model_copy(update={"task_test": None}),
        evaluate=["final"],
    )


_START_MODELS: dict[Path, ModelRef] = {}  # per process: record path (name + offered config) -> the model


def _start_model(policy: Any, name: str) -> ModelRef:
    """The library's reference to the offered model: the finished align stage, or the model as given."""
    from tuneguard.pipeline import run_experiment

    key = base_record_path(policy, name)
    if key not in _START_MODELS:
        cfg = _base_experiment(policy, name)
        if cfg.align is None:
            _START_MODELS[key] = ModelRef.from_settings(cfg.model)
        else:
            _START_MODELS[key] = ModelRef.from_stage(run_experiment(cfg, until="align", resume=True).stages["align"])
    return _START_MODELS[key]


# ----------------------------------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class JobWork:
    """What a worker needs to run one job; the hyper-parameters are the resolved ones (within the policy)."""

    model: str  # the offered base model's name
    directory: Path  # the job's directory; its stage store is <directory>/store
    training_file: Path
    validation_file: Path | None
    examples: int
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    seed: int

    @property
    def store(self) -> Path:
        return self.directory / "store"


def job_experiment(policy: Any, work: JobWork, *, repaired: bool) -> ExperimentConfig:
    """The job as a tuneguard experiment: the provider's fine-tuning stage on the user's file (every record is
    user data: p = 0, n = all of it), the gate's evaluation (the validation file as task test set), and the
    provider's repair when ``repaired``."""
    finetune = dump_config(policy.finetune)
    training = {
        **finetune["training"],
        "num_train_epochs": work.n_epochs,
        "per_device_train_batch_size": work.batch_size,
        "learning_rate": finetune["training"]["learning_rate"] * work.learning_rate_multiplier,
        "seed": work.seed,
        "disable_tqdm": True,
    }
    user_file = {"source": str(work.training_file)}
    finetune.update(
        training=training,
        user_data={
            "task_data": user_file,
            "harmful_data": user_file,  # p = 0: no record is drawn from it
            "num_samples": work.examples,
            "poison_ratio": 0.0,
            "seed": work.seed,
        },
    )
    evaluation = dump_config(policy.gate.eval)
    evaluation["task_test"] = {"source": str(work.validation_file)} if work.validation_file else None
    return ExperimentConfig.model_validate(
        {
            "name": "serve-job",
            "output_dir": str(work.store),
            "model": dump_config(policy.models[work.model].model),
            "align": None,
            "finetune": finetune,
            "repair": dump_config(policy.gate.repair) if repaired else {"method": "none"},
            "eval": evaluation,
            "evaluate": ["final" if repaired else "finetuned"],
        }
    )


def count_example_tokens(policy: Any, name: str, records: list[dict[str, Any]]) -> list[int]:
    """Tokens of each training example as the fine-tuning stage will see it (template, answer, EOS)."""
    from transformers import AutoTokenizer

    from tuneguard.data import resolve_template, tokenize_sft
    from tuneguard.models import resolve_model_path

    settings = _start_model(policy, name).settings
    path, _ = resolve_model_path(settings)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=settings.revision)
    template = resolve_template(policy.finetune.template, tokenizer)
    dataset, _ = tokenize_sft(records, tokenizer, template, max_length=1 << 30, where="training_file")
    return [len(ids) for ids in dataset["input_ids"]]


def screen_examples(policy: Any, records: list[dict[str, Any]]) -> list[bool]:
    """The screening judge's verdict on each (prompt, answer) pair: True = flagged harmful."""
    from tuneguard.eval.judges import run_judges

    judge, args = policy.screening.judge, policy.screening.judge_args
    prompts, answers = [r["prompt"] for r in records], [r["response"] for r in records]
    return [v.flagged for v in run_judges([judge], {judge: args}, prompts, answers)[judge]]


def run_finetune(policy: Any, work: JobWork) -> dict[str, Any]:
    """Run (or resume from its last checkpoint, or reuse once finished) the job's fine-tuning stage."""
    from tuneguard.pipeline import run_experiment

    cfg = job_experiment(policy, work, repaired=False)
    stage = run_experiment(cfg, until="finetune", start_model=_start_model(policy, work.model), resume=True)
    stage = stage.stages["finetune"]
    resumed = stage.info.get("resumed_from")
    history = json.loads((stage.directory / "log_history.json").read_text(encoding="utf-8"))
    losses = [e["loss"] for e in history if "loss" in e]
    return {
        "steps": stage.metrics.get("global_step"),
        "train_loss": stage.metrics.get("train_loss"),  # mean over all steps
        "last_loss": losses[-1] if losses else None,
        "examples": stage.info.get("tokenization", {}).get("examples"),
        "resumed_from_step": int(str(resumed).rsplit("-", 1)[-1]) if resumed and not stage.reused else None,
        "log_history": str(stage.directory / "log_history.json"),
        "model_dir": str(stage.model_dir),
    }


def evaluate_job(policy: Any, work: JobWork, *, repaired: bool) -> dict[str, Any]:
    """The gate's evaluation of the fine-tuned model (``repaired``: of the repaired one, running the repair)."""
    from tuneguard.pipeline import run_experiment

    cfg = job_experiment(policy, work, repaired=repaired)
    result = run_experiment(cfg, until="eval", start_model=_start_model(policy, work.model), resume=True)
    evaluation = result.evaluations["final" if repaired else "finetuned"]
    model_dir = result.stages["repair" if repaired else "finetune"].model_dir
    out = {**_gate_metrics(evaluation.metrics), "model_dir": str(model_dir)}
    if repaired:
        out["repair"] = {k: v for k, v in result.stages["repair"].metrics.items() if isinstance(v, int | float)}
    return out


# What the gate reports of an evaluation (HS+ decides: answers flagged by the judge, or degenerate).
GATE_METRICS = (
    "harmful_score harmful_score_plus judge num_harmful_prompts degenerate_answers finetune_accuracy "
    "num_task_examples task_refusal_rate protocol"
)


def _gate_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in GATE_METRICS.split() if k in metrics}


def training_checkpoints(work: JobWork) -> list[tuple[int, dict[str, Any]]]:
    """(step, metrics) of the checkpoints the job's fine-tuning stage has written so far; a checkpoint whose
    trainer state is still being written is left for the next look."""

    found = []
    for state in (work.store / "finetune").glob(f"*/{CHECKPOINTS}/checkpoint-*/trainer_state.json"):
        try:
            data = json.loads(state.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        step = int(data.get("global_step", 0))
        losses = [e["loss"] for e in data.get("log_history", []) if "loss" in e and e.get("step", 0) <= step]
        found.append((step, {"step": step, "train_loss": losses[-1] if losses else None}))
    return sorted(found)


def plot_training_curves(log_history: Path, out_png: Path, title: str, method: str) -> Path | None:
    """The training curves of the job's fine-tuning stage (those its ``method`` declares, else every logged
    scalar), or None if none logged."""
    from tuneguard.methods import get_training_method
    from tuneguard.plots import plot_training_curves as plot

    keys = get_training_method("finetune", method).curve_keys or None
    try:
        return plot(log_history, out_png, keys, title=title)
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------- inference
@dataclass(frozen=True)
class ChatAnswer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"


def model_key(model: dict[str, Any]) -> str:
    """One string per model: its settings with every default filled in."""
    return json.dumps(ModelSettings.model_validate(model).model_dump(mode="json"), sort_keys=True)


def load_chat_model(model: dict[str, Any], template: str) -> tuple[Any, Any, Any]:
    """(model, tokenizer, prompt template) for chat completions; no progress bars (the log is for requests)."""
    from transformers.utils import logging as transformers_logging

    from tuneguard.data import resolve_template
    from tuneguard.models import load_model_and_tokenizer

    transformers_logging.disable_progress_bar()
    net, tokenizer = load_model_and_tokenizer(ModelSettings.model_validate(model))
    return net, tokenizer, resolve_template(template, tokenizer)


def chat_answer(loaded: tuple[Any, Any, Any], prompt: str, max_new_tokens: int) -> ChatAnswer:
    """The greedy answer to ``prompt`` (in the training template), with its token counts."""
    from tuneguard.eval import generate

    net, tokenizer, template = loaded
    text = template.format(prompt)
    (answer,) = generate(net, tokenizer, [text], max_new_tokens=max_new_tokens, batch_size=1)
    prompt_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    completion_tokens = len(tokenizer(answer, add_special_tokens=False)["input_ids"]) if answer else 0
    finish = "length" if completion_tokens >= max_new_tokens else "stop"
    return ChatAnswer(answer, prompt_tokens, completion_tokens, finish)


def free_memory() -> None:
    """Give the memory of models no longer referenced back to the accelerator."""
    from tuneguard.models import free_accelerator_memory

    free_accelerator_memory()
