"""The ``transformers`` Trainer callbacks that every training stage of the pipeline adds, whatever its method.

- :class:`StopOnNonFinite` stops a run whose weights or loss stop being finite, with one line naming the stage
  and the step, instead of training on to a NaN model that an evaluation would score as safe.
- :class:`StageClock` carries a stage's elapsed time in its checkpoints, so a resumed stage records its whole time.
- :class:`LogAtCheckpoints` logs at every checkpoint, so that the checkpointed log history covers every step.

They are plain ``TrainerCallback`` objects: add them to your own ``Trainer`` (``callbacks=[StopOnNonFinite()]``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState


class NonFiniteTrainingError(ValueError):
    """Training produced non-finite (NaN or infinite) weights or a non-finite loss; the message names the stage,
    the step and the learning rate."""


class StopOnNonFinite(TrainerCallback):
    """Stop training at the first optimizer step after which a trainable weight, or the logged loss, is not finite.

    A diverged run (``learning_rate=inf``, a learning rate far too high, an fp16 overflow) would otherwise train on
    to its last step and save a NaN model; such a model answers every prompt with nothing, which a judge scores as
    perfectly safe. The trainable weights are checked after every optimizer step (one reduction per trainable
    tensor and one device sync: negligible for a LoRA adapter), the loss whenever it is logged. Under
    ``torch.distributed`` the verdict is agreed by all ranks, so that they stop together.
    """

    def __init__(self, stage: str = "training") -> None:
        self.stage = stage
        self._weights: list[tuple[str, torch.Tensor]] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
        self._weights = [(name, p) for name, p in model.named_parameters() if p.requires_grad] if model else []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if not self._weights:
            return control
        finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in self._weights]).all()
        broken = (~finite).to(device=args.device, dtype=torch.float32)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(broken, op=torch.distributed.ReduceOp.MAX)
        if broken.item():
            bad = [name for name, p in self._weights if not torch.isfinite(p.detach()).all()]
            where = f"{len(bad)} of {len(self._weights)} trainable tensors" + (f" (e.g. {bad[0]})" if bad else "")
            self._stop(args, state, f"its weights are not finite (NaN or inf) in {where}")
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        loss = (logs or {}).get("loss")
        if isinstance(loss, int | float) and not math.isfinite(loss):
            self._stop(args, state, f"its loss is {loss}")
        return control

    def _stop(self, args: Any, state: Any, what: str) -> None:
        raise NonFiniteTrainingError(
            f"{self.stage}: training diverged at step {state.global_step} of {state.max_steps}: {what} "
            f"(learning_rate={args.learning_rate:g}, fp16={args.fp16}, bf16={args.bf16}); lower the learning rate "
            "(or use float32); no model was saved"
        )


class StageClock(TrainerCallback, ExportableState):
    """The elapsed seconds of a training stage, carried in its checkpoints (``trainer_state.json``,
    ``stateful_callbacks``): a stage resumed from a checkpoint adds the time spent before it was interrupted
    (up to that checkpoint; the steps after it are redone and counted again) to the time of the resumed run."""

    def __init__(self, before_s: float = 0.0, started: float | None = None) -> None:
        self.before_s = before_s
        self.started = time.time() if started is None else started

    def elapsed_s(self) -> float:
        """Seconds spent on the stage: before the resume (from the checkpoint) plus since ``started``."""
        return self.before_s + time.time() - self.started

    def state(self) -> dict[str, Any]:
        return {"args": {"before_s": self.elapsed_s()}, "attributes": {}}

    @staticmethod
    def from_checkpoint(checkpoint: str | Path | None) -> float:
        """The elapsed seconds recorded in a checkpoint (0 for none, or for one written without a clock)."""
        path = Path(checkpoint) / "trainer_state.json" if checkpoint else None
        if path is None or not path.is_file():
            return 0.0
        saved = json.loads(path.read_text(encoding="utf-8")).get("stateful_callbacks", {}).get("StageClock")
        return float(saved["args"]["before_s"]) if isinstance(saved, dict) else 0.0


class LogAtCheckpoints(TrainerCallback):
    """Log at every checkpoint and at the last step, so that the log history (which checkpoints carry) accounts
    for every step's loss, also across a resume."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if control.should_save or state.global_step >= state.max_steps:
            control.should_log = True
        return control
