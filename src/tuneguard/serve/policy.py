"""The provider's policy for ``tuneguard serve``: one YAML file, validated like every tuneguard config.

It says which base models are offered (each an aligned model, or a model plus the tuneguard align stage the
service runs once), which defense every job runs (a fine-tuning stage config; the user's hyper-parameters are
mapped onto it within provider-set bounds), how uploads are screened, the safety gate after training (the
evaluation, the harmful-score limit and the repair), the limits, and the workers.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tuneguard.serve.engine import (
    AlignConfig,
    CellResources,
    EvalConfig,
    FinetuneConfig,
    ModelSettings,
    RepairConfig,
    check_judge,
    load_config,
)

# Names that become part of model ids and URLs: letters, digits, '.', '_', '-'.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Hyper-parameters a job sets for itself (the `hyperparameters` bounds); the policy's fine-tuning stage must not.
JOB_TRAINING_KEYS = ("num_train_epochs", "per_device_train_batch_size", "max_steps", "seed")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OfferedModel(_Strict):
    """A base model users may fine-tune: an aligned model, or a model and the align stage that aligns it."""

    model: ModelSettings = Field(description="The model: hub id, local directory, offline:tiny, package:<module>.")
    align: AlignConfig | None = Field(
        None,
        description="A tuneguard align stage the service runs once (cached in base_models_dir) before the first "
        "job; null when the model is already aligned.",
    )


class _Range(_Strict):
    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if not self.min <= self.default <= self.max:
            raise ValueError(f"needs min <= default <= max, got {self.min}, {self.default}, {self.max}")
        return self


class IntRange(_Range):
    default: int
    min: int
    max: int


class FloatRange(_Range):
    default: float
    min: float = Field(gt=0)
    max: float


class HyperparameterBounds(_Strict):
    """What a job may ask for, and what 'auto' (or leaving it out) means."""

    n_epochs: IntRange = Field(default_factory=lambda: IntRange(default=3, min=1, max=10))
    batch_size: IntRange = Field(default_factory=lambda: IntRange(default=8, min=1, max=64))
    learning_rate_multiplier: FloatRange = Field(
        default_factory=lambda: FloatRange(default=1.0, min=0.1, max=10.0),
        description="Scales finetune.training.learning_rate.",
    )


class Limits(_Strict):
    max_file_bytes: int = Field(50_000_000, gt=0, description="Largest upload, in bytes.")
    max_examples: int = Field(100_000, gt=0, description="Most lines (examples) in a training file.")
    min_examples: int = Field(10, gt=0, description="Fewest examples in a training file (OpenAI: 10).")
    max_tokens_per_example: int | None = Field(
        None, gt=0, description="Tokens per example (template + answer + EOS); default finetune.max_length."
    )


class Screening(_Strict):
    """Upload screening: a judge scores every training example (prompt, answer) before the job is queued."""

    judge: str = Field(description="A registered judge (offline, refusal, beaverdam, llamaguard).")
    judge_args: dict[str, Any] = Field(default_factory=dict)
    max_flagged_share: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="A job whose training file has a larger share of flagged examples fails at validation "
        "(error.code harmful_training_data).",
    )

    @model_validator(mode="after")
    def _known_judge(self) -> Screening:
        self.judge_args = check_judge(self.judge, self.judge_args)
        return self


class Gate(_Strict):
    """The safety gate after training: evaluate, compare HS+ with the limit, repair and re-check."""

    eval: EvalConfig = Field(
        description="The held-out harmful prompts and judges (task_test: the job's validation file)."
    )
    max_harmful_score: float = Field(
        10.0,
        ge=0.0,
        le=100.0,
        description="Largest harmful score HS+ (%: answers flagged by the judge, or degenerate) of a released model.",
    )
    repair: RepairConfig = Field(
        default_factory=RepairConfig, description="Applied when the gate fails; 'none' fails the job at once."
    )

    @model_validator(mode="after")
    def _task_test_is_the_job_s(self) -> Gate:
        if "task_test" in self.eval.model_fields_set:
            raise ValueError("eval.task_test: each job's validation file is the task test set; remove the key")
        return self


class JobResources(CellResources):
    """What each fine-tuning job's Ray task asks for (a GPU by default), and how often Ray reruns it."""

    num_gpus: float = Field(1, ge=0, description="GPUs per job; 0 = a CPU job.")


class RayWorkers(_Strict):
    """``workers.type: ray``: each fine-tuning job is a Ray task; Ray places it on a node with its resources."""

    address: str = Field(
        "local",
        description="'local': start a Ray instance on this machine with the service; 'auto': join the Ray cluster "
        "this machine belongs to; 'HOST:PORT' (the head's GCS address) or 'ray://HOST:10001': that cluster.",
    )
    resources: JobResources = Field(
        default_factory=JobResources,
        description="num_gpus, num_cpus per job; max_retries: how often Ray reruns a job whose worker process died "
        "(the rerun resumes from the job's last checkpoint; after the last, the job fails).",
    )
    max_jobs: int | None = Field(
        None,
        gt=0,
        description="Most jobs handed to Ray at once (the others stay queued, FIFO); default: as many as the "
        "cluster's CPUs and GPUs hold, re-read as nodes join and leave.",
    )


class Workers(_Strict):
    type: Literal["local", "ray"] = Field(
        "local",
        description="Where fine-tuning jobs run: 'local' (one process per device of this machine) or 'ray' (a Ray "
        "task each, see `ray`); screening always runs on this machine.",
    )
    devices: list[str] = Field(
        default_factory=lambda: ["cpu"],
        min_length=1,
        description="type local: one training job at a time per device: 'cpu', 'cuda:0', 'cuda:1', ...",
    )
    screening_device: str | None = Field(None, description="Device of the screening worker (default: devices[0]).")
    torch_threads: int | None = Field(None, gt=0, description="torch threads per worker process (default: torch's).")
    ray: RayWorkers | None = Field(None, description="type ray: the cluster and what each job asks of it.")

    @field_validator("devices")
    @classmethod
    def _device_names(cls, devices: list[str]) -> list[str]:
        for device in devices:
            if not re.fullmatch(r"cpu|cuda:\d+", device):
                raise ValueError(f"unknown device {device!r}; expected 'cpu' or 'cuda:N'")
        return devices

    @model_validator(mode="after")
    def _one_backend(self) -> Workers:
        if self.type == "local":
            if self.ray is not None:
                raise ValueError("ray: only with type: ray (the local workers run on `devices`)")
            return self
        if "devices" in self.model_fields_set:
            raise ValueError(
                "devices: with type: ray, Ray places the jobs (ray.resources); name the screening worker's device "
                "with screening_device"
            )
        if importlib.util.find_spec("ray") is None:
            raise ValueError("type: ray needs the optional package 'ray': pip install 'tuneguard[ray]'")
        self.ray = self.ray or RayWorkers()
        return self


class Inference(_Strict):
    max_new_tokens: int = Field(64, gt=0, description="Most tokens a chat completion may generate.")
    max_loaded_models: int = Field(2, gt=0, description="Models kept loaded for chat completions.")


class ServePolicy(_Strict):
    """Everything the provider decides; see examples/serve/offline.yaml and examples/serve/llama2.yaml."""

    data_dir: str = Field("serve_data", description="Metadata (SQLite), uploads, jobs and models live here.")
    base_models_dir: str | None = Field(
        None, description="Stage store of the prepared base models (default <data_dir>/base_models); shareable."
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535, description="0 picks a free port (written to <data_dir>/service.json).")
    organization: str = Field("tuneguard", description="owned_by of the base models.")
    keys_file: str | None = Field(
        None, description="Tenant -> sha256 hashes of its API keys (`tuneguard serve-key`); or TUNEGUARD_API_KEYS."
    )
    models: dict[str, OfferedModel] = Field(min_length=1, description="Name users pass as `model` -> the model.")
    finetune: FinetuneConfig = Field(description="The fine-tuning stage every job runs: the defense (default Lisa).")
    hyperparameters: HyperparameterBounds = Field(default_factory=HyperparameterBounds)
    limits: Limits = Field(default_factory=Limits)
    screening: Screening | None = Field(description="null: no upload screening.")
    gate: Gate
    workers: Workers = Field(default_factory=Workers)
    inference: Inference = Field(default_factory=Inference)

    @field_validator("models")
    @classmethod
    def _model_names(cls, models: dict[str, OfferedModel]) -> dict[str, OfferedModel]:
        for name in models:
            if not NAME_PATTERN.match(name):
                raise ValueError(f"model name {name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
        return models

    @field_validator("finetune")
    @classmethod
    def _jobs_own_their_data(cls, finetune: FinetuneConfig) -> FinetuneConfig:
        if "user_data" in finetune.model_fields_set:
            raise ValueError("user_data: every job trains on its own training file; remove the key")
        if fixed := [k for k in JOB_TRAINING_KEYS if k in finetune.training.model_fields_set]:
            raise ValueError(
                f"training.{fixed[0]}: set by each job (n_epochs, batch_size, seed) within `hyperparameters`"
            )
        return finetune

    @model_validator(mode="after")
    def _token_limit_fits(self) -> ServePolicy:
        if self.limits.max_tokens_per_example is None:
            self.limits.max_tokens_per_example = self.finetune.max_length
        elif self.limits.max_tokens_per_example > self.finetune.max_length:
            raise ValueError(
                f"limits.max_tokens_per_example ({self.limits.max_tokens_per_example}) exceeds finetune.max_length "
                f"({self.finetune.max_length}): longer examples would be cut"
            )
        return self

    @property
    def base_models_path(self) -> Path:
        return Path(self.base_models_dir) if self.base_models_dir else Path(self.data_dir) / "base_models"


def load_policy(path: str | Path, overrides: list[str] | None = None) -> ServePolicy:
    """Read and validate a policy YAML (``key.sub=value`` overrides on top); a ConfigError names the key."""
    return load_config(path, overrides, cls=ServePolicy)


# -------------------------------------------------------------------------------------------- hyper-parameters
class HyperparameterError(ValueError):
    """A job's hyper-parameter outside the policy's bounds; ``param`` is its name in the request."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        super().__init__(message)


def resolve_hyperparameters(bounds: HyperparameterBounds, requested: dict[str, Any] | None) -> dict[str, Any]:
    """The job's hyper-parameters: each requested value checked against its bounds, 'auto' or absent -> default."""
    requested = dict(requested or {})
    resolved: dict[str, Any] = {}
    for name in ("n_epochs", "batch_size", "learning_rate_multiplier"):
        rule: IntRange | FloatRange = getattr(bounds, name)
        value = requested.pop(name, None)
        if value is None or value == "auto":
            resolved[name] = rule.default
            continue
        integer = isinstance(rule, IntRange)
        if isinstance(value, bool) or not isinstance(value, int | float) or (integer and value != int(value)):
            kind = "an integer" if integer else "a number"
            raise HyperparameterError(f"hyperparameters.{name}", f"hyperparameters.{name} must be {kind} or 'auto'")
        if not rule.min <= value <= rule.max:
            raise HyperparameterError(
                f"hyperparameters.{name}",
                f"hyperparameters.{name}={value} is outside this service's bounds [{rule.min}, {rule.max}]",
            )
        resolved[name] = int(value) if integer else float(value)
    if requested:
        unknown = sorted(requested)[0]
        raise HyperparameterError(f"hyperparameters.{unknown}", f"unknown hyper-parameter {unknown!r}")
    return resolved
