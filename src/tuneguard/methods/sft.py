"""Plain supervised fine-tuning: the undefended alignment and the harmful fine-tuning attack itself.

Cross-entropy on response tokens only (the collator sets prompt and padding labels to -100), through the
stock ``transformers.Trainer``. Registered as ``sft`` for the ``align`` and ``finetune`` stages.
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer

from tuneguard.methods.base import (
    NoParams,
    RepairMethod,
    RepairOutput,
    TrainingMethod,
    register_repair_method,
    register_training_method,
    trainer_builder,
)

SFT = register_training_method(
    TrainingMethod(
        name="sft",
        stages=("align", "finetune"),
        params_cls=NoParams,
        build_trainer=trainer_builder(Trainer),
        summary="plain supervised fine-tuning (no defense; at the fine-tuning stage, the attack)",
    )
)


def _identity_repair(model: Any, tokenizer: Any, params: NoParams, data: dict[str, Any]) -> RepairOutput:
    return RepairOutput(model, {})


NONE_REPAIR = register_repair_method(
    RepairMethod(
        name="none", params_cls=NoParams, repair=_identity_repair, summary="no repair (identity)", passes_through=True
    )
)
