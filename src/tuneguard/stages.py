"""The stages: align, finetune, repair, evaluate. Each reads a model and writes a stage directory.

Every stage takes its data already loaded and validated (the pipeline's pre-flight loads every role once, so bad
input stops before the first stage trains; called alone, a stage loads its own), computes its key from the
resolved config, the input model's fingerprint and the data fingerprints, and returns the cached result when
that key has already finished. Training goes through ``transformers.Trainer`` (built by the
registered method), which brings progress bars, ``report_to``, checkpoints and resume.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from tuneguard.callbacks import LogAtCheckpoints, StageClock, StopOnNonFinite
from tuneguard.config import AlignConfig, ConfigError, FinetuneConfig, RepairConfig, TrainingSettings, dump_config
from tuneguard.data import (
    DataError,
    SFTDataCollator,
    read_file,
    resolve_template,
    tokenize_sft,
    write_jsonl,
)
from tuneguard.data.provenance import shared_prompt_ids
from tuneguard.data.readers import Record, prompt_text
from tuneguard.data.templates import leading_special_ids
from tuneguard.methods.base import (
    MethodParams,
    TrainingMethod,
    get_repair_method,
    get_training_method,
    parse_params,
)
from tuneguard.models import (
    count_parameters,
    load_model_and_tokenizer,
    merge_lora,
    prepare_for_training,
    prepare_model_files,
)
from tuneguard.models import save_model_atomic as save_model
from tuneguard.progress import stage_label, use_stage_progress
from tuneguard.roles import (
    Roles,
    align_data,
    align_roles,
    finetune_data,
    finetune_roles,
    load_roles,
    repair_data,
    repair_roles,
)
from tuneguard.store import (
    CHECKPOINTS,
    ModelRef,
    StageResult,
    claim_stage,
    fingerprint,
    finish_stage,
    last_checkpoint,
    stage_dir,
    stage_key,
    write_json_atomic,
)
from tuneguard.store_paths import store_root

logger = logging.getLogger(__name__)


# -------------------------------------------------------------------------------------------- public stages
def run_align(
    cfg: AlignConfig,
    model: ModelRef,
    output_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    roles: Roles | None = None,
) -> StageResult:
    """Stage 1: train the base model on the alignment data with the configured method; merge the adapter.

    ``roles``: the experiment's loaded data roles (``tuneguard.roles``); without them the stage loads its own.
    ``resume`` continues an interrupted run of the same stage from its last checkpoint (without it, an
    interrupted run is an error); ``overwrite`` starts over. The same holds for every stage."""
    data = align_data(cfg, roles if roles is not None else load_roles(align_roles(cfg)))
    return _train_stage("align", cfg, model, data, output_dir, overwrite=overwrite, resume=resume)


def run_finetune(
    cfg: FinetuneConfig,
    model: ModelRef,
    output_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    roles: Roles | None = None,
) -> StageResult:
    """Stage 2: the user's job: a fresh adapter on the (merged) aligned model, trained on the poisoned mix."""
    data = finetune_data(cfg, roles if roles is not None else load_roles(finetune_roles(cfg)))
    return _train_stage("finetune", cfg, model, data, output_dir, overwrite=overwrite, resume=resume)


def run_repair(
    cfg: RepairConfig,
    model: ModelRef,
    output_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    forbidden_prompts: dict[str, list[str]] | None = None,
    roles: Roles | None = None,
) -> StageResult:
    """Stage 3: repair the fine-tuned model. ``none`` passes the input model through unchanged.

    Re-alignment data must share no prompt with the attack data (the harmful records of the input fine-tuning
    stage's ``train_mix.jsonl``) nor with ``forbidden_prompts`` (name -> prompts, e.g. the evaluation's harmful
    prompts); an overlap is refused before anything runs. (``run_experiment`` checks every data set of the
    experiment against the others before its first stage: ``data/provenance.py``.)
    """
    method = get_repair_method(cfg.method)
    params = parse_params(method.params_cls, cfg.method_args, "repair.method_args")
    data: dict[str, list[Record]] = repair_data(cfg, roles if roles is not None else load_roles(repair_roles(cfg)))
    disjointness: dict[str, dict[str, int]] = {}
    if "realign_data" in data:
        others = {**_attack_prompts(model), **(forbidden_prompts or {})}
        disjointness = check_disjoint_prompts(
            data["realign_data"], others, f"repair.realign_data ({cfg.realign_data.source})"
        )
    resolved = {**dump_config(cfg), "method_args": params.model_dump(mode="json")}
    key = stage_key("repair", resolved, model, {k: fingerprint(v) for k, v in data.items()})
    directory = stage_dir(output_dir, "repair", cfg.method, key)
    with claim_stage(directory, "repair", key, overwrite=overwrite, resume=resume) as done:
        if done is not None:
            return done
        start = time.time()
        if cfg.method == "none":  # identity: point at the input model instead of copying its weights
            return finish_stage(
                directory,
                "repair",
                key,
                {"config": resolved, "input_model": model.settings.model_dump(), "model_dir": _model_path(model)},
            )
        net, tokenizer = load_model_and_tokenizer(model.settings)
        output = method.repair(net, tokenizer, params, {**data, "input_stage_dir": model.stage_dir})
        model_dir = save_model(output.model, tokenizer, directory / "model")
        return finish_stage(
            directory,
            "repair",
            key,
            {
                "config": resolved,
                "input_model": model.settings.model_dump(),
                "input_stage_dir": str(model.stage_dir) if model.stage_dir else None,
                "model_dir": str(model_dir),
                "data": {k: fingerprint(v) for k, v in data.items()},
                "disjointness": disjointness,
                "metrics": output.stats,
                "timings": {"wall_s": round(time.time() - start, 2)},
            },
        )


def check_disjoint_prompts(
    records: list[Record], others: dict[str, list[str]], where: str
) -> dict[str, dict[str, int]]:
    """Refuse ``records`` whose prompt (case- and whitespace-normalized) occurs in any of ``others``.

    Returns, per other set, how many prompts it has and how many ``records`` share with it (all 0 on success).
    The error names the counts, the sets and a few record ids, never the (harmful) prompt text.
    """
    report: dict[str, dict[str, int]] = {}
    problems = []
    for name, prompts in others.items():
        shared = shared_prompt_ids(records, prompts)
        report[name] = {"prompts": len(prompts), "shared": len(shared)}
        if shared:
            problems.append(f"{len(shared)} with {name} ({len(prompts)} prompts; e.g. ids {', '.join(shared[:3])})")
    if problems:
        raise DataError(
            where,
            f"{len(records)} re-alignment records share prompts: "
            + "; ".join(problems)
            + ". Re-alignment data must be disjoint from the attack data and the evaluation prompts.",
        )
    return report


def _attack_prompts(model: ModelRef) -> dict[str, list[str]]:
    """The harmful prompts the input fine-tuning stage trained on, when the input model comes from one."""
    mix = model.stage_dir / "train_mix.jsonl" if model.stage_dir else None
    if mix is None or not mix.is_file():
        return {}
    return {f"the attack data ({mix})": [prompt_text(r) for r in read_file(mix) if r.get("source") == "harmful"]}


# ------------------------------------------------------------------------------------------- training core
def _train_stage(
    stage: str,
    cfg: AlignConfig | FinetuneConfig,
    model: ModelRef,
    data: dict[str, list[Record]],
    output_dir: str | Path,
    *,
    overwrite: bool,
    resume: bool,
) -> StageResult:
    method, params = check_training_method(stage, cfg)
    resolved = {**dump_config(cfg), "method_args": params.model_dump(mode="json")}
    data_fp = {k: fingerprint(v) for k, v in data.items()}
    key = stage_key(stage, _without_bookkeeping(resolved), model, data_fp)
    directory = stage_dir(output_dir, stage, cfg.method, key)
    with claim_stage(directory, stage, key, overwrite=overwrite, resume=resume) as done:
        if done is not None:
            logger.info("%s: reusing finished stage %s", stage, directory)
            return done
        info = _train(stage, cfg, method, params, model, data, directory)
        info["config"] = resolved
        info["data"] = {k: {"fingerprint": data_fp[k], "records": len(v)} for k, v in data.items()}
        return finish_stage(directory, stage, key, info)


def _train(
    stage: str,
    cfg: AlignConfig | FinetuneConfig,
    method: TrainingMethod,
    params: MethodParams,
    model: ModelRef,
    data: dict[str, list[Record]],
    directory: Path,
) -> dict[str, Any]:
    """Train the stage into ``directory`` (resuming from its last checkpoint, if any); save the adapter and the
    merged model; return the stage record's fields."""
    from transformers import set_seed

    if stage == "finetune":
        write_jsonl(data["train"], directory / "train_mix.jsonl")
    # One-off builds of the input model (pre-training, dequantizing) belong to no stage: timed apart.
    model_setup_s = prepare_model_files(model.settings)
    checkpoint = last_checkpoint(directory / CHECKPOINTS)
    clock = StageClock(before_s=StageClock.from_checkpoint(checkpoint))
    net, tokenizer = load_model_and_tokenizer(model.settings)
    template = resolve_template(cfg.template, tokenizer, f"{stage}.template")
    train_ds, tok_stats = tokenize_sft(
        data["train"], tokenizer, template, cfg.max_length, training_data_key(stage), cfg.long_prompts
    )
    aux = {}
    for role in method.data_roles:
        aux[role], _ = tokenize_sft(
            data[role], tokenizer, template, cfg.max_length, f"{stage}.{role}", cfg.long_prompts
        )
    # Seed before the adapter is created: its initialisation must not depend on what ran earlier in the process
    # (e.g. whether the previous stage was trained here or reused from the store).
    set_seed(cfg.training.seed)
    net = prepare_for_training(net, cfg.finetuning_type, cfg.lora)
    args = training_arguments(cfg.training, directory / CHECKPOINTS, stage)
    trainer = method.build_trainer(
        model=net,
        args=args,
        train_dataset=train_ds,
        data_collator=SFTDataCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        params=params,
        aux_datasets=aux,
        callbacks=[StopOnNonFinite(stage), clock, LogAtCheckpoints()],
    )
    ratio = cfg.user_data.poison_ratio if isinstance(cfg, FinetuneConfig) else None
    use_stage_progress(trainer, stage_label(stage, cfg.method, ratio))
    if checkpoint:
        logger.info("%s: resuming from %s", stage, checkpoint)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    train_seconds = clock.elapsed_s()

    trained = trainer.model
    if cfg.finetuning_type == "lora":  # the adapter alone (small): what Antidote prunes
        save_model(trained, None, directory / "adapter", store=store_root(directory))
    merged = merge_lora(trained)
    model_dir = save_model(merged, tokenizer, directory / "model")
    write_json_atomic(directory / "log_history.json", trainer.state.log_history)
    shutil.rmtree(directory / CHECKPOINTS, ignore_errors=True)
    timings = {"train_s": round(train_seconds, 2), "wall_s": round(clock.elapsed_s(), 2)}
    if checkpoint:
        timings["before_resume_s"] = round(clock.before_s, 2)
    if model_setup_s >= 0.5:
        timings["model_setup_s"] = round(model_setup_s, 2)
    return {
        "method": cfg.method,
        "input_model": model.settings.model_dump(),
        "input_stage_dir": str(model.stage_dir) if model.stage_dir else None,
        "model_dir": str(model_dir),
        "adapter_dir": str(directory / "adapter") if cfg.finetuning_type == "lora" else None,
        "template": template.kind,
        "prompt_prefix_tokens": tokenizer.convert_ids_to_tokens(leading_special_ids(tokenizer)),
        "tokenization": tok_stats,
        "parameters": count_parameters(trained),
        "resumed_from": str(checkpoint) if checkpoint else None,
        "metrics": {
            "train_loss": mean_train_loss(trainer.state.log_history),
            "global_step": trainer.state.global_step,
            **_poison_counts(data["train"]),
        },
        "timings": timings,
    }


def training_data_key(stage: str) -> str:
    """The config key of what a training stage trains on (named in its data errors)."""
    return {"align": "align.alignment_data", "finetune": "finetune.user_data"}[stage]


def training_arguments(t: TrainingSettings, checkpoints: Path, stage: str) -> Any:
    """The ``transformers.TrainingArguments`` of a training stage (``training`` of the config, checkpoints into
    ``checkpoints``). Settings that TrainingArguments refuses (an ``extra_args`` value, a combination) are a
    ConfigError naming ``<stage>.training``; the pre-flight builds them once before the first stage trains."""
    import transformers

    try:
        return transformers.TrainingArguments(
            output_dir=str(checkpoints),
            learning_rate=t.learning_rate,
            num_train_epochs=t.num_train_epochs,
            max_steps=t.max_steps,
            per_device_train_batch_size=t.per_device_train_batch_size,
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            lr_scheduler_type=t.lr_scheduler_type,
            warmup_steps=t.warmup_steps,
            weight_decay=t.weight_decay,
            max_grad_norm=t.max_grad_norm,
            optim=t.optim,
            logging_steps=t.logging_steps,
            save_strategy="steps",
            save_steps=t.save_steps,
            save_total_limit=t.save_total_limit,
            seed=t.seed,
            data_seed=t.seed,
            bf16=t.bf16,
            fp16=t.fp16,
            report_to=t.report_to or "none",
            disable_tqdm=t.disable_tqdm,
            remove_unused_columns=False,
            dataloader_pin_memory=torch.cuda.is_available(),
            **t.extra_args,
        )
    except (ValueError, TypeError, ImportError) as exc:  # transformers' own checks of the values
        raise ConfigError(f"{stage}.training: transformers.TrainingArguments refuses these settings: {exc}") from None


# Settings that change how a run is recorded, never what it computes: left out of the stage key, so that e.g.
# checkpointing more often does not orphan an interrupted run.
BOOKKEEPING = ("save_steps", "save_total_limit", "report_to", "disable_tqdm")


def _without_bookkeeping(resolved: dict[str, Any]) -> dict[str, Any]:
    training = {k: v for k, v in resolved["training"].items() if k not in BOOKKEEPING}
    return {**resolved, "training": training}


def mean_train_loss(log_history: list[dict[str, Any]]) -> float | None:
    """The mean training loss per optimizer step, from the logged window means (each weighted by its steps).

    Unlike ``TrainOutput.training_loss`` it is the same for a resumed run as for an unbroken one, since the
    log history is checkpointed (and a log is written at every checkpoint)."""
    total, last_step = 0.0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            total += entry["loss"] * (entry["step"] - last_step)
            last_step = entry["step"]
    return total / last_step if last_step else None


def check_training_method(stage: str, cfg: AlignConfig | FinetuneConfig) -> tuple[TrainingMethod, MethodParams]:
    """The stage's registered method and its validated ``method_args``; refuses, before anything is loaded, a
    training engine (``training.extra_args``: fsdp, deepspeed) that the method does not support."""
    from types import SimpleNamespace

    from tuneguard.methods.engines import check_engine

    method = get_training_method(stage, cfg.method)
    params = parse_params(method.params_cls, cfg.method_args, f"{stage}.method_args")
    check_engine(cfg.method, SimpleNamespace(**cfg.training.extra_args), method.unsupported_engines(params))
    return method, params


def _poison_counts(records: list[Record]) -> dict[str, int]:
    harmful = sum(1 for r in records if r.get("source") == "harmful")
    return (
        {"harmful_records": harmful, "task_records": len(records) - harmful}
        if records and "source" in records[0]
        else {}
    )


def _model_path(model: ModelRef) -> str:
    from tuneguard.models import resolve_model_path

    return resolve_model_path(model.settings)[0]


def describe_stage(result: StageResult) -> dict[str, Any]:
    """A short, printable summary of a stage result (no data text)."""
    return {
        "stage": result.stage,
        "directory": str(result.directory),
        "reused": result.reused,
        **{k: v for k, v in result.metrics.items() if isinstance(v, int | float)},
    }
