"""Training engines: which one ``TrainingArguments`` select, and the refusal of one a method does not support."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from tuneguard.config import ConfigError


def training_engine(args: Any) -> str:
    """The engine ``TrainingArguments`` select: ``"fsdp"``, ``"deepspeed-zero0..3"``, ``"dataparallel"``, or
    ``"ddp"`` (which also covers single-process training)."""
    if getattr(args, "fsdp", None):  # a non-empty list of FSDP options
        return "fsdp"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    deepspeed = getattr(args, "deepspeed", None)
    if deepspeed:
        config = deepspeed
        if isinstance(deepspeed, str):
            with open(deepspeed, encoding="utf-8") as handle:
                config = json.load(handle)
        stage = (config.get("zero_optimization") or {}).get("stage", 0)
        return f"deepspeed-zero{stage}"
    if getattr(args, "n_gpu", 1) > 1 and str(getattr(args, "parallel_mode", "")).endswith("NOT_DISTRIBUTED"):
        return "dataparallel"
    return "ddp"


def check_engine(method: str, args: Any, unsupported: Mapping[str, str]) -> str:
    """Raise a ``ConfigError`` (a ``ValueError``) if the engine of ``args`` is a key of ``unsupported``
    (engine → reason)."""
    engine = training_engine(args)
    if engine in unsupported:
        raise ConfigError(
            f"{method} does not support {engine}: {unsupported[engine]}. Supported engines are listed in "
            "docs/engines.md; use DDP (torchrun) instead."
        )
    return engine
