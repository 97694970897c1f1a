"""The bi-state schedule of Lisa/BSO: its parameters, the state of each step, and what one ``train()`` call
keeps (the trainers are in ``lisa.py``).

The state is a function of the global optimizer step only (:func:`bistate_position`), so every DDP rank and a
resumed run agree on it; what a checkpoint must add (the anchor, the alignment loader's position) goes into
``LISA_STATE_FILE`` next to ``trainer_state.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import Field, model_validator

from tuneguard.methods.auxiliary_data import EndlessLoader
from tuneguard.methods.base import MethodParams

logger = logging.getLogger(__name__)

ALIGNMENT = "alignment"
FINETUNE = "finetune"
PAPER_SCHEDULE = (100, 900)  # K_a / K_f of the Lisa paper and code
MIN_CYCLES = 4  # a short run with the default schedule still alternates this many times
LISA_STATE_FILE = "lisa_state.pt"  # written into each checkpoint folder next to trainer_state.json


class BSOParams(MethodParams):
    """Bi-State Optimization: alternate alignment and user steps with one optimizer, no proximal term."""

    alignment_steps: int | None = Field(
        None,
        ge=0,
        description="K_a: optimizer steps on alignment batches per cycle, taken first (papers: 100). "
        "0 disables the alignment state: the method is then exactly plain SFT. Unset (with finetune_steps unset "
        "too): the papers' 100/900, scaled down for a run of fewer than 4000 steps (see schedule()).",
    )
    finetune_steps: int | None = Field(
        None, ge=1, description="K_f: optimizer steps on user batches per cycle (papers: 900; unset: see above)."
    )
    alignment_ratio: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Ratio form of the schedule, with cycle_steps: K_a = round(alignment_ratio * cycle_steps), "
        "K_f = cycle_steps - K_a, replacing alignment_steps/finetune_steps (papers: 0.1 of 1000).",
    )
    cycle_steps: int | None = Field(
        None, ge=2, description="K_a + K_f, with alignment_ratio (papers: 1000). Unset: use the step counts."
    )
    alignment_batch_size: int | None = Field(
        None, ge=1, description="Alignment batch size; unset = per_device_train_batch_size (authors' code)."
    )

    @model_validator(mode="after")
    def _check_schedule(self) -> BSOParams:
        if (self.alignment_ratio is None) != (self.cycle_steps is None):
            raise ValueError("alignment_ratio and cycle_steps go together: set both or neither")
        if self.alignment_ratio is not None:
            clash = {"alignment_steps", "finetune_steps"} & self.model_fields_set
            if clash:
                raise ValueError(
                    f"give the schedule as alignment_ratio/cycle_steps or as step counts, not both "
                    f"(also set: {', '.join(sorted(clash))})"
                )
            if self.schedule()[1] < 1:
                raise ValueError("alignment_ratio * cycle_steps leaves no fine-tuning step in the cycle")
        return self

    def schedule(self, total_steps: int | None = None) -> tuple[int, int]:
        """(K_a, K_f) in optimizer steps, from whichever form was given.

        Left unset, the schedule is the papers' 100/900 when the run (``total_steps`` optimizer steps, if known)
        has at least 4 of its 1000-step cycles; a shorter run keeps the papers' 1:9 ratio in at least 4 cycles
        of at least 10 steps (a cycle of min(1000, max(10, total_steps // 4)) steps; 160 steps give 4/36, the
        offline benchmarks' schedule). Otherwise the papers' 100/900 on a run of, say, 60 steps would make every
        step an alignment step: the user's data would never be trained on."""
        if self.alignment_ratio is not None and self.cycle_steps is not None:
            k_a = round(self.alignment_ratio * self.cycle_steps)
            return k_a, self.cycle_steps - k_a
        if self.alignment_steps is not None or self.finetune_steps is not None:
            k_a = self.alignment_steps if self.alignment_steps is not None else PAPER_SCHEDULE[0]
            return k_a, self.finetune_steps if self.finetune_steps is not None else PAPER_SCHEDULE[1]
        cycle = sum(PAPER_SCHEDULE)
        if total_steps is None or total_steps >= MIN_CYCLES * cycle:
            return PAPER_SCHEDULE
        scaled = min(cycle, max(10, total_steps // MIN_CYCLES))
        k_a = round(scaled * PAPER_SCHEDULE[0] / cycle)
        return k_a, scaled - k_a

    def schedule_warning(self, total_steps: int) -> str | None:
        """What is wrong with an explicit schedule for a run of ``total_steps`` optimizer steps, if anything (an
        unset one is scaled to the run)."""
        k_a, k_f = self.schedule(total_steps)
        if k_a == 0 or not {"alignment_steps", "finetune_steps", "alignment_ratio"} & self.model_fields_set:
            return None
        if total_steps <= k_a:
            return (
                f"the run has {total_steps} optimizer steps and K_a = {k_a}: every step is an alignment step, so the "
                "user data is never trained on; set alignment_steps/finetune_steps for this run length, or leave "
                "them unset to scale the papers' schedule to it"
            )
        if total_steps < k_a + k_f:
            return (
                f"the run has {total_steps} optimizer steps, fewer than one cycle of K_a + K_f = {k_a + k_f}: "
                f"{k_a} of them ({100 * k_a / total_steps:.0f} %, not {100 * k_a / (k_a + k_f):.0f} %) are "
                "alignment steps"
            )
        return None


class LisaParams(BSOParams):
    """BSO plus the proximal term (rho/2)·||w − w̃||² towards the weights at the last switch."""

    rho: float = Field(
        1.0,
        ge=0,
        description="Proximal strength (Lisa paper and code: 1; the Booster repo runs Lisa with 0.01). "
        "0 is exactly BSO.",
    )
    proximal_warmup_ratio: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Share of max_steps at the start during which the proximal term is off (the first "
        "ceil(ratio * max_steps) optimizer steps). Default 0.1: the authors' code does this (commented: the "
        "term 'will downgrade benign accuracy' / hurts GSM8K convergence) and every published Lisa number, "
        "including Lisa as a baseline in Booster/Antidote, was produced with it. 0 = the paper's algorithm box.",
    )


def bistate_position(step: int, alignment_steps: int, finetune_steps: int) -> tuple[str, int]:
    """(state, in-state clock) of 0-based optimizer step ``step``: K_a alignment steps, then K_f fine-tune
    steps, repeating; with K_a = 0 every step is a fine-tune step."""
    if alignment_steps == 0:
        return FINETUNE, step
    k = step % (alignment_steps + finetune_steps)
    return (ALIGNMENT, k) if k < alignment_steps else (FINETUNE, k - alignment_steps)


@dataclass
class Window:
    """Sums over the current logging window (device tensors: no host sync per step)."""

    steps: int = 0
    alignment_steps: int = 0
    user_steps: int = 0
    grad_norm_steps: int = 0
    alignment_loss: Any = 0.0
    user_loss: Any = 0.0
    proximal: Any = 0.0
    grad_norm: Any = 0.0
    state: str = FINETUNE


@dataclass
class RunState:
    """Everything Lisa keeps during one ``train()`` call."""

    step: int = -1  # optimizer step in progress (= global_step when it started)
    state: str = FINETUNE
    anchor: dict[str, torch.Tensor] | None = None
    loader: EndlessLoader | None = None
    pending: dict[str, Any] | None = None  # loaded from a checkpoint, applied at the first step
    step_loss: torch.Tensor | None = None
    window: Window = field(default_factory=Window)
