"""Lisa (Lazy Safety Alignment) and BSO (Bi-State Optimization): the fine-tuning-stage defense.

Huang et al., "Lisa: Lazy Safety Alignment for Large Language Models against Harmful Fine-tuning Attack",
NeurIPS 2024, arXiv 2405.18641 (code: git-disl/Lisa, ``LisaTrainer``; ``ADMMTrainer`` in Booster/Antidote).
Not to be confused with LISA, "Layerwise Importance Sampled AdamW" (arXiv 2403.17919), the memory-saving
optimizer of LMFlow and LLaMA-Factory (``use_lisa``): same name, unrelated method.

The algorithm, as the authors' code runs it:

- One set of trainable weights (the fine-tuning LoRA adapter, or the full model) and ONE optimizer and LR
  schedule, shared by two states. Starting in the *alignment* state, take K_a optimizer steps on batches of
  the provider's alignment data (an endless reshuffled loader, batch size = ``per_device_train_batch_size``),
  then K_f steps on the user's batches (*fine-tune* state), and repeat. The state is a function of the global
  optimizer step, so it is the same on every DDP rank and after a resume.
- At every switch the trainable weights are snapshotted as the anchor w̃ (the last iterate of the other
  state; at step 0 the initial weights), and every step adds (rho/2)·||w − w̃||² to the loss. BSO is rho = 0.
  The proximal gradient rho·(w − w̃) is added in closed form once per optimizer step, before gradient clipping
  (the Trainer's ``max_grad_norm`` clips the sum, as in the authors' code).
- The authors' code switches the proximal term off for the first 10 % of the steps (not in the paper):
  ``proximal_warmup_ratio``.

Budget and epochs. ``max_steps`` / ``num_train_epochs`` count the optimizer steps of BOTH states. During an
alignment step the Trainer's user batch(es) for that step are drawn and skipped, as in the authors' code, so
the user data loader advances one batch per micro-batch in either state: one "epoch" is still
``ceil(len(user_data) / batch)`` optimizer steps, of which a share K_a / (K_a + K_f) trains on alignment data;
each epoch therefore shows the model about K_f / (K_a + K_f) of the user records (different ones each epoch,
since the user data is reshuffled). With the papers' 100/900 split, 10 % of the steps are alignment steps.
Left unset, the schedule is fixed when training starts, from the run's length: the papers' 100/900 for runs of
4000 steps or more, the same 1:9 ratio in at least 4 shorter cycles otherwise (``BSOParams.schedule``), so that a
short run still trains on the user's data; an explicit schedule that leaves no user step is warned about.

Differences from the authors' code, on purpose: a "step" is an optimizer step (their counter advanced per
micro-batch, so with gradient accumulation their switch fell inside an optimizer step); K_a = 0 is exactly plain
SFT (their code still pulled towards the initial weights); all of it resumes exactly from a checkpoint.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from transformers import Trainer

from tuneguard.methods._bistate import (
    ALIGNMENT,
    FINETUNE,
    LISA_STATE_FILE,
    BSOParams,
    LisaParams,
    RunState,
    Window,
    bistate_position,
)
from tuneguard.methods.auxiliary_data import EndlessLoader, auxiliary_loader
from tuneguard.methods.base import TrainingMethod, register_training_method
from tuneguard.methods.defense import DefenseMixin
from tuneguard.methods.weights import add_proximal_gradient, snapshot_parameters, squared_distance

logger = logging.getLogger(__name__)
_PROXIMAL = "Lisa/BSO write the proximal gradient into .grad and snapshot whole weights"
UNSUPPORTED_ENGINES = {
    "deepspeed-zero1": f"{_PROXIMAL}; DeepSpeed owns the gradients",
    "deepspeed-zero2": f"{_PROXIMAL}; DeepSpeed partitions the gradients",
    "deepspeed-zero3": f"{_PROXIMAL}; ZeRO-3 shards the weights",
    "fsdp": f"{_PROXIMAL}; FSDP shards the weights",
}


class LisaMixin(DefenseMixin):
    """The Lisa/BSO logic as a mixin over any ``transformers.Trainer`` subclass (see :class:`LisaTrainer`,
    :class:`LisaSFTTrainer`). Extra constructor keywords: ``alignment_dataset`` (tokenized like the training
    data, collated by ``alignment_data_collator`` or else the trainer's ``data_collator``) and
    ``lisa_params`` (:class:`LisaParams`, or :class:`BSOParams` for rho = 0).

    Hooks it overrides: ``get_batch_samples`` (once per optimizer step: picks the state, snapshots w̃ on a switch,
    swaps in alignment batches), ``training_step`` (adds rho·(w − w̃) to the gradients after the last
    micro-batch), ``_get_grad_norm`` (records the pre-clip norm), ``log`` (adds the ``lisa/*`` scalars, window
    averages), ``_save_checkpoint`` / ``train`` (save and restore w̃ and the alignment loader position).

    Logged every ``logging_steps`` (into ``state.log_history`` and every ``report_to`` backend):
    ``lisa/state`` (1 alignment, 0 fine-tune, at the window's last step), ``lisa/alignment_fraction``,
    ``lisa/alignment_loss`` and ``lisa/user_loss`` (mean cross-entropy over the window's steps of that state,
    averaged over ranks; absent when the window has none), ``lisa/proximal`` (mean (rho/2)·||w − w̃||² applied;
    0 during the warm-up and for BSO), ``lisa/drift`` (||w − w̃|| after the window's last update) and
    ``lisa/grad_norm`` (mean pre-clip gradient norm). The Trainer's own ``loss`` is the cross-entropy alone.
    """

    method_name = "lisa"
    paper = "arXiv:2405.18641"
    unsupported_engines = UNSUPPORTED_ENGINES
    curve_keys = ("lisa/alignment_loss", "lisa/user_loss", "lisa/drift", "lisa/grad_norm")
    params_keyword = "lisa_params"
    dataset_keywords = {"alignment_data": "alignment_dataset"}
    extra_state_file = LISA_STATE_FILE

    def __init__(
        self,
        *args: Any,
        alignment_dataset: Any = None,
        lisa_params: LisaParams | BSOParams | None = None,
        alignment_data_collator: Any = None,
        **kwargs: Any,
    ) -> None:
        self._lisa = RunState()
        self.lisa_params = lisa_params if lisa_params is not None else LisaParams()
        super().__init__(*args, **kwargs)
        self.alignment_steps, self.finetune_steps = self.lisa_params.schedule()
        self.rho = float(getattr(self.lisa_params, "rho", 0.0))
        self.proximal_warmup_ratio = float(getattr(self.lisa_params, "proximal_warmup_ratio", 0.0))
        if self.alignment_steps > 0 and (alignment_dataset is None or len(alignment_dataset) == 0):
            raise ValueError("Lisa/BSO need a non-empty alignment_dataset (or alignment_steps=0 for plain SFT)")
        self.alignment_dataset = (
            self._prepare_alignment_dataset(alignment_dataset) if alignment_dataset is not None else None
        )
        self.alignment_data_collator = alignment_data_collator

    # ---- public view of the state machine ------------------------------------------------------------------

    def state_at(self, step: int) -> str:
        """The state (``"alignment"`` / ``"finetune"``) of 0-based optimizer step ``step``."""
        return bistate_position(step, self.alignment_steps, self.finetune_steps)[0]

    @property
    def lisa_anchor(self) -> dict[str, torch.Tensor] | None:
        """The current anchor w̃ (trainable parameter name → tensor), or None before training / with K_a = 0."""
        return self._lisa.anchor

    # ---- Trainer hooks --------------------------------------------------------------------------------------

    def begin_train(self, checkpoint: str | None, saved: dict[str, Any] | None) -> None:
        super().begin_train(checkpoint, saved)
        self._lisa = RunState()
        if checkpoint is not None and self.alignment_steps > 0:
            if saved is None:
                logger.warning(
                    "Lisa: %s has no %s; the anchor restarts from the resumed weights", checkpoint, LISA_STATE_FILE
                )
            self._lisa.pending = saved

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
        # Called once per optimizer step, before its micro-batches: the state is chosen here, so that all
        # micro-batches of one optimizer step come from the same data set.
        if self._begin_step() == FINETUNE:
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        displaced = 0
        for _ in range(num_batches):  # the user batches of an alignment step are skipped (authors' code)
            try:
                next(epoch_iterator)
            except StopIteration:
                break
            displaced += 1
        batches = [next(self._lisa.loader) for _ in range(displaced)]
        # The Trainer's own counting of loss tokens (num_items_in_batch), applied to the alignment batches.
        return super().get_batch_samples(iter(batches), displaced, device)

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        run = self._lisa
        run.step_loss = loss.detach() if run.step_loss is None else run.step_loss + loss.detach()
        if self.accelerator.sync_gradients:  # the last micro-batch of the optimizer step
            self._end_step()
        return loss

    def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
        grad_norm = super()._get_grad_norm(model, grad_norm)
        if grad_norm is not None:
            window = self._lisa.window
            value = grad_norm.detach().float() if torch.is_tensor(grad_norm) else float(grad_norm)
            window.grad_norm = window.grad_norm + value
            window.grad_norm_steps += 1
        return grad_norm

    def method_scalars(self) -> dict[str, float]:
        return self._drain_window() if self._lisa.window.steps > 0 else {}

    def extra_checkpoint_state(self) -> dict[str, Any] | None:
        return self._lisa_state_dict() if self.alignment_steps > 0 else None

    # ---- internals ------------------------------------------------------------------------------------------

    def _prepare_alignment_dataset(self, dataset: Any) -> Any:
        """Hook for subclasses whose training data goes through a preparation step (TRL tokenizes)."""
        return dataset

    def _begin_step(self) -> str:
        run = self._lisa
        step = self.state.global_step
        if run.step == step:
            return run.state
        if run.step < 0:  # the first step of this train() call: the run's length is known now
            self._fix_schedule(self.state.max_steps)
        if self.alignment_steps > 0:
            if run.loader is None:
                run.loader = self._build_alignment_loader()
            if run.pending is not None:
                self._restore(run.pending)
                run.pending = None
            state = self.state_at(step)
            switched = step == 0 or self.state_at(step - 1) != state
            if run.anchor is None and not switched:
                logger.warning(
                    "Lisa: resumed at step %d without a saved anchor; snapshotting the current weights", step
                )
            if switched or run.anchor is None:
                run.anchor = snapshot_parameters(self.trainable_weights())
        else:
            state = FINETUNE
        run.step, run.state = step, state
        return state

    def _fix_schedule(self, total_steps: int) -> None:
        self.alignment_steps, self.finetune_steps = self.lisa_params.schedule(total_steps)
        logger.info(
            "Lisa/BSO schedule: K_a/K_f = %d/%d optimizer steps over a run of %d",
            self.alignment_steps,
            self.finetune_steps,
            total_steps,
        )
        if (problem := self.lisa_params.schedule_warning(total_steps)) is not None:
            logger.warning("Lisa/BSO: %s", problem)

    def _end_step(self) -> None:
        run, window = self._lisa, self._lisa.window
        step_loss = run.step_loss if run.step_loss is not None else torch.zeros(())
        run.step_loss = None
        if run.state == ALIGNMENT:
            window.alignment_loss = window.alignment_loss + step_loss
            window.alignment_steps += 1
        else:
            window.user_loss = window.user_loss + step_loss
            window.user_steps += 1
        window.steps += 1
        window.state = run.state
        if run.anchor is None:
            return
        warmup_steps = math.ceil(self.proximal_warmup_ratio * self.state.max_steps)
        if self.rho > 0 and self.state.global_step >= warmup_steps:
            coefficient = self.rho * self.gradient_scale()
            distance2 = add_proximal_gradient(self.trainable_weights(), run.anchor, coefficient)
            window.proximal = window.proximal + 0.5 * self.rho * distance2

    def _build_alignment_loader(self) -> EndlessLoader:
        return auxiliary_loader(
            self,
            self.alignment_dataset,
            self.alignment_data_collator or self.data_collator,
            self.lisa_params.alignment_batch_size or self.args.per_device_train_batch_size,
            "alignment",
            drop_last=self.args.dataloader_drop_last,
        )

    def _drain_window(self) -> dict[str, float]:
        window = self._lisa.window
        self._lisa.window = Window()
        device = self.args.device
        losses = torch.stack(
            [
                torch.as_tensor(window.alignment_loss, device=device),
                torch.as_tensor(window.user_loss, device=device),
            ]
        ).float()
        if self.args.world_size > 1:  # like the Trainer's "loss": the mean over ranks
            losses = self.accelerator.reduce(losses, reduction="mean")
        logs = {
            "lisa/state": 1.0 if window.state == ALIGNMENT else 0.0,
            "lisa/alignment_fraction": window.alignment_steps / window.steps,
        }
        if window.alignment_steps:
            logs["lisa/alignment_loss"] = losses[0].item() / window.alignment_steps
        if window.user_steps:
            logs["lisa/user_loss"] = losses[1].item() / window.user_steps
        anchor = self._lisa.anchor
        if anchor is not None:
            logs["lisa/proximal"] = float(window.proximal) / window.steps
            # After the window's last update (the Trainer logs after the optimizer step); w and w̃ are the same
            # on every rank, so no reduction is needed.
            logs["lisa/drift"] = math.sqrt(float(squared_distance(self.trainable_weights(), anchor).detach()))
        if window.grad_norm_steps:
            logs["lisa/grad_norm"] = float(window.grad_norm) / window.grad_norm_steps
        return logs

    def _lisa_state_dict(self) -> dict[str, Any]:
        run = self._lisa
        state, clock = bistate_position(max(run.step, 0), self.alignment_steps, self.finetune_steps)
        return {
            "format": 1,
            "global_step": self.state.global_step,  # steps completed; the resumed run starts with this one
            "last_state": state,
            "last_clock": clock,
            "schedule": [self.alignment_steps, self.finetune_steps],
            "anchor": {k: v.detach().cpu() for k, v in (run.anchor or {}).items()},
            "alignment_loader": run.loader.state_dict() if run.loader is not None else None,
        }

    def _restore(self, saved: dict[str, Any]) -> None:
        if saved["global_step"] != self.state.global_step:
            raise ValueError(
                f"{LISA_STATE_FILE} is for step {saved['global_step']}, the checkpoint's trainer state for step "
                f"{self.state.global_step}"
            )
        if list(saved["schedule"]) != [self.alignment_steps, self.finetune_steps]:
            logger.warning(
                "Lisa: the checkpoint used K_a/K_f = %s, this run %s/%s; the phase is recomputed",
                saved["schedule"],
                self.alignment_steps,
                self.finetune_steps,
            )
        params = dict(self.trainable_weights())
        if set(saved["anchor"]) != set(params):
            raise ValueError("the saved Lisa anchor does not match the model's trainable parameters")
        self._lisa.anchor = {
            k: v.to(device=params[k].device, dtype=params[k].dtype) for k, v in saved["anchor"].items()
        }
        if saved["alignment_loader"] is not None:
            self._lisa.loader.load_state_dict(saved["alignment_loader"])


class LisaTrainer(LisaMixin, Trainer):
    """``transformers.Trainer`` with Lisa (or BSO with ``BSOParams``/rho = 0); see :class:`LisaMixin`.

    Lisa: arXiv 2405.18641 (Huang et al., NeurIPS 2024).
    """


try:  # TRL is an optional dependency
    from trl import SFTTrainer as _SFTTrainer
except ImportError:  # pragma: no cover - exercised only without trl
    _SFTTrainer = None

if _SFTTrainer is not None:

    class LisaSFTTrainer(LisaMixin, _SFTTrainer):
        """TRL's ``SFTTrainer`` with Lisa (arXiv 2405.18641); see :class:`LisaMixin`.

        The alignment data set goes through the same preparation as ``train_dataset`` (TRL tokenizes text,
        prompt-completion or conversational records and builds the labels), then through the same collator.
        """

        def _prepare_alignment_dataset(self, dataset: Any) -> Any:
            if getattr(self, "_skip_prepare_dataset", False):
                return dataset
            return self._prepare_dataset(
                dataset,
                self.processing_class,
                self.args,
                self.args.packing,
                self._formatting_func,
                "alignment",
            )


def _register(name: str, params_cls: type[BSOParams], summary: str) -> TrainingMethod:
    """Lisa and BSO are one trainer with two parameter sets (BSO: no proximal term)."""
    return register_training_method(
        TrainingMethod.for_defense(LisaTrainer, name=name, stages=("finetune",), params_cls=params_cls, summary=summary)
    )


LISA = _register(
    "lisa", LisaParams, "Lisa: alternate alignment/user steps with a proximal pull to the last switch point"
)
BSO = _register(
    "bso", BSOParams, "BSO: alternate K_a alignment steps and K_f user steps, one optimizer (Lisa with rho = 0)"
)
