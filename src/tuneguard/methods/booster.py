"""Booster: attenuate the harmful perturbation at alignment time, the alignment-stage defense.

Huang et al., "Booster: Tackling Harmful Fine-tuning for Large Language Models via Attenuating Harmful
Perturbation", ICLR 2025, arXiv 2409.01586 (code: git-disl/Booster, ``BoosterAlignmentTrainer``).

Objective, with f the alignment loss (harmful prompt → refusal) and h the loss on harmful data (harmful prompt →
harmful answer):  min_w f(w) + λ·( h(w) − h(w − α·∇h(w)/||∇h(w)||) ).
Update, first-order (the authors pass straight through the second-order term, as in first-order MAML):
    g(w) = ∇f(w) + λ·( ∇h(w) − ∇h(w') ),   w' = w − α·∇h(w)/||∇h(w)||,
||·|| one L2 norm over all trainable weights. Three forward/backward passes per micro-batch
(as the authors' ``BoosterAlignmentTrainer`` runs them):

1. h and ∇h at w, on a harmful batch from an endless reshuffled loader (authors: batch 10, hard-coded);
2. h and ∇h at w' on the SAME harmful batch; the weights are then restored bit-exactly;
3. f on the alignment batch at w, backward through the Trainer (DDP-synchronised), then
   λ·(∇h(w) − ∇h(w')) is added to the gradient. The Trainer's ``max_grad_norm`` clips the sum (authors too).

Passes 1 and 2 run on the unwrapped model with ``torch.autograd.grad``, so they never touch ``.grad`` nor
trigger DDP's all-reduce. Under DDP each rank simulates the step on its own harmful batch, and the correction
λ·(∇h(w) − ∇h(w')) is averaged over ranks explicitly (one all-reduce of trainable-weight size per micro-batch)
before it is added, so the replicas stay identical. Under gradient accumulation the correction of every
micro-batch is divided by the accumulation steps, like the loss: the step uses the mean over micro-batches.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from pydantic import Field
from transformers import Trainer

from tuneguard.methods.auxiliary_data import HarmfulDataMixin
from tuneguard.methods.base import MethodParams, TrainingMethod, register_training_method
from tuneguard.methods.weights import global_norm, perturbed_weights

NORM_EPS = 1e-7  # added to ||∇h|| before dividing, as in the authors' code

UNSUPPORTED_ENGINES = {
    "deepspeed-zero1": "Booster writes the combined gradient into .grad, which DeepSpeed owns",
    "deepspeed-zero2": "Booster writes the combined gradient into .grad, which DeepSpeed partitions",
    "deepspeed-zero3": "Booster perturbs and restores the weights in place, which ZeRO-3 shards",
    "fsdp": "Booster perturbs and restores the weights in place, which FSDP shards",
    "dataparallel": "torch.nn.DataParallel is not supported; use DDP",
}


class BoosterParams(MethodParams):
    """Booster's parameters (``align.method_args``)."""

    lamb: float = Field(
        5.0, ge=0, description="λ: weight of the harmful-perturbation attenuation term (authors: 5). 0 is plain SFT."
    )
    alpha: float = Field(
        0.1, ge=0, description="α: step size of the simulated harmful step, normalized direction (authors: 0.1)."
    )
    harmful_batch_size: int = Field(
        10, ge=1, description="Harmful examples per micro-batch and device (authors: 10, hard-coded)."
    )


class BoosterMixin(HarmfulDataMixin):
    """Adds Booster's three-pass gradient to a ``transformers.Trainer`` (put it before the Trainer in the bases).

    ``harmful_dataset``: tokenized harmful pairs (harmful prompt → harmful answer), collated by
    ``harmful_data_collator`` (default: the Trainer's collator). Logs, averaged over the logging window:
    ``booster/harmful_loss`` (h(w)), ``booster/harmful_loss_after_step`` (h(w')), ``booster/harmful_loss_drop``
    (h(w) − h(w'), the term λ weighs), ``booster/harmful_grad_norm`` (||∇h(w)||) and ``booster/correction_norm``
    (||λ·(∇h(w) − ∇h(w'))||).
    """

    method_name = "booster"
    paper = "arXiv:2409.01586"
    unsupported_engines = UNSUPPORTED_ENGINES
    params_keyword = "booster_params"

    def __init__(
        self,
        *args: Any,
        harmful_dataset: Any = None,
        harmful_data_collator: Any = None,
        booster_params: BoosterParams | None = None,
        **kwargs: Any,
    ) -> None:
        self.booster_params = booster_params if booster_params is not None else BoosterParams()
        super().__init__(*args, **kwargs)
        self.setup_harmful_data(harmful_dataset, harmful_data_collator)

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        correction = self.booster_correction()
        loss = super().training_step(model, inputs, num_items_in_batch)
        with torch.no_grad():
            scale = self.gradient_scale() / self.current_gradient_accumulation_steps
            for (_, param), delta in zip(self.trainable_weights(), correction, strict=True):
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
                param.grad.add_(delta.to(param.grad.dtype), alpha=scale)
        return loss

    def booster_correction(self, harmful_batch: dict[str, Any] | None = None) -> list[torch.Tensor]:
        """Passes 1 and 2: λ·(∇h(w) − ∇h(w')) per trainable parameter, averaged over DDP ranks.

        ``harmful_batch``: a collated batch; by default the next one from the endless harmful loader.
        """
        p = self.booster_params
        batch = self.next_harmful_batch() if harmful_batch is None else self._prepare_inputs(harmful_batch)
        params = [param for _, param in self.trainable_weights()]
        loss, grads = self._harmful_loss_and_grads(batch, params)
        grad_norm = global_norm(grads)
        direction = [g / (grad_norm.to(g.device) + NORM_EPS) for g in grads]
        with perturbed_weights(params, direction, -p.alpha):
            loss_after, grads_after = self._harmful_loss_and_grads(batch, params)
        correction = [p.lamb * (g - g_after) for g, g_after in zip(grads, grads_after, strict=True)]
        correction_norm = global_norm(correction)  # this micro-batch's, as in one process (logs average over ranks)
        if self.args.world_size > 1 and dist.is_available() and dist.is_initialized():
            flat = torch.cat([c.reshape(-1) for c in correction])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= self.args.world_size
            correction = [
                chunk.view_as(c)
                for chunk, c in zip(flat.split([c.numel() for c in correction]), correction, strict=True)
            ]
        self.record_metric("booster/harmful_loss", loss)
        self.record_metric("booster/harmful_loss_after_step", loss_after)
        self.record_metric("booster/harmful_loss_drop", loss - loss_after)
        self.record_metric("booster/harmful_grad_norm", grad_norm)
        self.record_metric("booster/correction_norm", correction_norm)
        return correction

    # ---- internals ------------------------------------------------------------------------------------------

    def _harmful_loss_and_grads(
        self, batch: dict[str, Any], params: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model = self.model  # unwrapped: no DDP synchronisation; .grad is never touched
        model.train()
        with self.compute_loss_context_manager():
            loss = model(**batch).loss
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]
        return loss.detach(), grads

    def harmful_batch_size(self) -> int:
        return self.booster_params.harmful_batch_size


class BoosterTrainer(BoosterMixin, Trainer):
    """``transformers.Trainer`` with Booster's gradient (arXiv 2409.01586); see :class:`BoosterMixin`."""


BOOSTER = register_training_method(
    TrainingMethod.for_defense(
        BoosterTrainer,
        name="booster",
        stages=("align",),
        params_cls=BoosterParams,
        summary="Booster: align while attenuating how much a simulated harmful step lowers the harmful loss",
    )
)
