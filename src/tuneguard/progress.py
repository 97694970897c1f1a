"""Progress of a training stage: one bar on stderr that says which stage, method and p it trains, instead of the
Trainer's default output, which writes every log dict (``{'loss': ...}``) to stdout, between the lines of the
results table. The log dicts go to the ``tuneguard`` logger at DEBUG (``--verbose`` shows them) and to
``state.log_history`` (saved as ``log_history.json``) as before.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

logger = logging.getLogger("tuneguard.training")


class StageProgress(TrainerCallback):
    """A tqdm bar over the optimizer steps, labelled (``finetune lisa p=0.2``), with the last logged loss."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=state.max_steps,
            initial=state.global_step,
            desc=self.label,
            unit="step",
            file=sys.stderr,
            leave=False,
            disable=args.disable_tqdm or not state.is_world_process_zero,
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        logger.debug("%s step %d: %s", self.label, state.global_step, logs)
        if self.bar is not None and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.4g}", refresh=False)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if state.is_world_process_zero:
            logger.info("%s: %d optimizer steps done", self.label, state.global_step)


def use_stage_progress(trainer: Any, label: str) -> Any:
    """Replace the Trainer's own progress output (bar + log dicts on stdout) with a :class:`StageProgress`."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(StageProgress(label))
    return trainer


def stage_label(stage: str, method: str, poison_ratio: float | None = None) -> str:
    """``align sft``, ``finetune lisa p=0.2``: what a progress bar or a log line is about."""
    return f"{stage} {method}" + (f" p={poison_ratio:g}" if poison_ratio is not None else "")
