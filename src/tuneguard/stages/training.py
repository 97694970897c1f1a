"""The training stages: ``align`` (the provider's safety alignment) and ``finetune`` (the user's job).

Both train on the input model with the stage's registered method through the ``transformers.Trainer`` the method
builds (progress bars, ``report_to``, checkpoints and resume come with it), save the adapter, and output the merged
model.
"""

from __future__ import annotations

import logging
import shutil
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
import transformers

from tuneguard.callbacks import LogAtCheckpoints, StageClock, StopOnNonFinite
from tuneguard.config import AlignConfig, ConfigError, FinetuneConfig, TrainingSettings, dump_config
from tuneguard.data import SFTDataCollator, mix_user_data, resolve_template, tokenize_sft, write_jsonl
from tuneguard.data.records import Records
from tuneguard.data.templates import leading_special_ids
from tuneguard.methods.base import MethodParams, TrainingMethod, get_training_method, parse_params
from tuneguard.methods.engines import check_engine
from tuneguard.models import (
    count_parameters,
    load_model_and_tokenizer,
    merge_lora,
    prepare_for_training,
    prepare_model_files,
    save_model_atomic,
)
from tuneguard.progress import stage_label, use_stage_progress
from tuneguard.roles import USER_DATA, Role, Roles, method_roles
from tuneguard.stages.base import Stage, StageRun, input_fields
from tuneguard.store import CHECKPOINTS, ModelRef, StageResult, last_checkpoint, write_json_atomic
from tuneguard.store_paths import store_root

logger = logging.getLogger(__name__)

# Settings that change how a run is recorded, never what it computes: left out of the stage key, so that e.g.
# checkpointing more often does not orphan an interrupted run.
BOOKKEEPING = ("save_steps", "save_total_limit", "report_to", "disable_tqdm")
# The TrainingSettings fields that are not TrainingArguments fields of the same name (every other one is).
TUNEGUARD_ONLY_SETTINGS = {"extra_args": "any other TrainingArguments fields, passed through as they are"}


class TrainingStage(Stage):
    """A training stage: the config's method trains on ``train`` (and on the method's own data roles).

    A subclass names the stage and says what it trains on (:meth:`roles`, :meth:`data`)."""

    training_data_key: ClassVar[str]  # the config key of what the stage trains on (named in its data errors)

    def __init__(self, cfg: AlignConfig | FinetuneConfig) -> None:
        self.cfg = cfg

    @property
    def label(self) -> str:
        return self.cfg.method

    @cached_property
    def method(self) -> TrainingMethod:
        return get_training_method(self.name, self.cfg.method)

    @cached_property
    def params(self) -> MethodParams:
        """The method's validated ``method_args``; a training engine (``training.extra_args``: fsdp, deepspeed)
        that the method does not support is refused, before anything is loaded."""
        params = parse_params(self.method.params_cls, self.cfg.method_args, f"{self.name}.method_args")
        engine = SimpleNamespace(**self.cfg.training.extra_args)
        check_engine(self.cfg.method, engine, self.method.unsupported_engines(params))
        return params

    def check_config(self) -> None:
        self.params  # noqa: B018  (parsing checks the method_args and the engine)

    def method_data(self, roles: Roles) -> dict[str, Records]:
        """The loaded records of the method's own data roles (e.g. Lisa's ``alignment_data``), by role name."""
        return {role: roles[f"{self.name}.{role}"] for role in self.method.data_roles}

    def resolved_config(self) -> dict[str, Any]:
        return {**dump_config(self.cfg), "method_args": self.params.model_dump(mode="json")}

    def key_config(self, resolved: dict[str, Any]) -> dict[str, Any]:
        training = {k: v for k, v in resolved["training"].items() if k not in BOOKKEEPING}
        return {**resolved, "training": training}

    def training_arguments(self, checkpoints: Path) -> transformers.TrainingArguments:
        return training_arguments(self.cfg.training, checkpoints, self.name)

    def compute(self, run: StageRun) -> dict[str, Any]:
        info = self.train(run.model, run.data, run.directory)
        info["config"] = run.config
        info["data"] = {k: {"fingerprint": run.data_fingerprints[k], "records": len(v)} for k, v in run.data.items()}
        return info

    def train(self, model: ModelRef, data: dict[str, Records], directory: Path) -> dict[str, Any]:
        """Train into ``directory`` (resuming from its last checkpoint, if any); save the adapter and the merged
        model; return the stage record's fields."""
        cfg, stage, method = self.cfg, self.name, self.method
        # One-off builds of the input model (pre-training, dequantizing) belong to no stage: timed apart.
        model_setup_s = prepare_model_files(model.settings)
        checkpoint = last_checkpoint(directory / CHECKPOINTS)
        clock = StageClock(before_s=StageClock.from_checkpoint(checkpoint))
        net, tokenizer = load_model_and_tokenizer(model.settings)
        template = resolve_template(cfg.template, tokenizer, f"{stage}.template")
        train_ds, tok_stats = tokenize_sft(
            data["train"], tokenizer, template, cfg.max_length, self.training_data_key, cfg.long_prompts
        )
        aux = {}
        for role in method.data_roles:
            aux[role], _ = tokenize_sft(
                data[role], tokenizer, template, cfg.max_length, f"{stage}.{role}", cfg.long_prompts
            )
        # Seed before the adapter is created: its initialisation must not depend on what ran earlier in the process
        # (e.g. whether the previous stage was trained here or reused from the store).
        transformers.set_seed(cfg.training.seed)
        net = prepare_for_training(net, cfg.finetuning_type, cfg.lora)
        trainer = method.build_trainer(
            model=net,
            args=self.training_arguments(directory / CHECKPOINTS),
            train_dataset=train_ds,
            data_collator=SFTDataCollator(tokenizer.pad_token_id),
            processing_class=tokenizer,
            params=self.params,
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
            save_model_atomic(trained, None, directory / "adapter", store=store_root(directory))
        model_dir = save_model_atomic(merge_lora(trained), tokenizer, directory / "model")
        write_json_atomic(directory / "log_history.json", trainer.state.log_history)
        shutil.rmtree(directory / CHECKPOINTS, ignore_errors=True)
        timings = {"train_s": round(train_seconds, 2), "wall_s": round(clock.elapsed_s(), 2)}
        if checkpoint:
            timings["before_resume_s"] = round(clock.before_s, 2)
        if model_setup_s >= 0.5:
            timings["model_setup_s"] = round(model_setup_s, 2)
        return {
            "method": cfg.method,
            **input_fields(model),
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


class AlignStage(TrainingStage):
    """Stage 1: train the base model on the alignment data with the configured method; merge the adapter."""

    name = "align"
    produces = "aligned"
    training_data_key = "align.alignment_data"

    def roles(self) -> list[Role]:
        return [
            Role("align.alignment_data", self.cfg.alignment_data),
            *method_roles(self.name, self.cfg, self.method.data_roles),
        ]

    def data(self, roles: Roles) -> dict[str, Records]:
        return {"train": roles["align.alignment_data"], **self.method_data(roles)}


class FinetuneStage(TrainingStage):
    """Stage 2: the user's job: a fresh adapter on the (merged) aligned model, trained on the poisoned mix
    (``finetune.user_data``, drawn from its task and harmful data; saved as ``train_mix.jsonl``)."""

    name = "finetune"
    produces = "finetuned"
    training_data_key = "finetune.user_data"

    def roles(self) -> list[Role]:
        ud = self.cfg.user_data
        return [
            Role(f"{USER_DATA}.task_data", ud.task_data),
            Role(f"{USER_DATA}.harmful_data", ud.harmful_data),
            *method_roles(self.name, self.cfg, self.method.data_roles),
        ]

    def data(self, roles: Roles) -> dict[str, Records]:
        """``train``, the drawn user data (added to ``roles`` as ``finetune.user_data``), and the method's roles."""
        if USER_DATA not in roles:
            ud = self.cfg.user_data
            task, harmful = roles[f"{USER_DATA}.task_data"], roles[f"{USER_DATA}.harmful_data"]
            roles[USER_DATA] = mix_user_data(task, harmful, ud.num_samples, ud.poison_ratio, ud.seed, ud.draw)
        return {"train": roles[USER_DATA], **self.method_data(roles)}

    def train(self, model: ModelRef, data: dict[str, Records], directory: Path) -> dict[str, Any]:
        write_jsonl(data["train"], directory / "train_mix.jsonl")
        return super().train(model, data, directory)


def run_align(
    cfg: AlignConfig,
    model: ModelRef,
    output_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    roles: Roles | None = None,
) -> StageResult:
    """Stage 1, the alignment (:class:`AlignStage`); the arguments as in :meth:`Stage.run`."""
    return AlignStage(cfg).run(model, output_dir, overwrite=overwrite, resume=resume, roles=roles)


def run_finetune(
    cfg: FinetuneConfig,
    model: ModelRef,
    output_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    roles: Roles | None = None,
) -> StageResult:
    """Stage 2, the user's fine-tuning (:class:`FinetuneStage`); the arguments as in :meth:`Stage.run`."""
    return FinetuneStage(cfg).run(model, output_dir, overwrite=overwrite, resume=resume, roles=roles)


def training_arguments(t: TrainingSettings, checkpoints: Path, stage: str) -> transformers.TrainingArguments:
    """The ``transformers.TrainingArguments`` of a training stage: every field of ``t`` (``training`` of the
    config) under its own name, ``t.extra_args``, and the arguments every stage sets itself
    (:func:`managed_training_arguments`). Settings that TrainingArguments refuses are a ConfigError naming
    ``<stage>.training``; the pre-flight builds them once before the first stage trains."""
    settings = t.model_dump(exclude=set(TUNEGUARD_ONLY_SETTINGS))
    settings["report_to"] = t.report_to or "none"  # no logger named: none (not transformers' default, all)
    try:
        return transformers.TrainingArguments(**settings, **managed_training_arguments(t, checkpoints), **t.extra_args)
    except (ValueError, TypeError, ImportError) as exc:  # transformers' own checks of the values
        raise ConfigError(f"{stage}.training: transformers.TrainingArguments refuses these settings: {exc}") from None


def managed_training_arguments(t: TrainingSettings, checkpoints: Path) -> dict[str, Any]:
    """The TrainingArguments every training stage sets itself (``config.MANAGED_TRAINING_ARGS`` says why)."""
    return {
        "output_dir": str(checkpoints),
        "save_strategy": "steps",
        "data_seed": t.seed,
        "remove_unused_columns": False,
        "dataloader_pin_memory": torch.cuda.is_available(),
    }


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


def _poison_counts(records: Records) -> dict[str, int]:
    harmful = sum(1 for r in records if r.get("source") == "harmful")
    return (
        {"harmful_records": harmful, "task_records": len(records) - harmful}
        if records and "source" in records[0]
        else {}
    )
