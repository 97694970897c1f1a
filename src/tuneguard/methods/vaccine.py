"""Vaccine: perturbation-aware alignment, the alignment-stage defense against harmful fine-tuning.

Huang et al., "Vaccine: Perturbation-aware Alignment for Large Language Models against Harmful Fine-tuning
Attack", NeurIPS 2024, arXiv 2402.01109 (code: git-disl/Vaccine, ``VaccineTrainer``).

Objective: min_w max_{||ε|| ≤ rho} L(w; ε), where ε_l is added to the output of layer l's self-attention block
(before the residual add) of every decoder layer. Solved SAM-style on activations, per micro-batch
(as the authors' ``VaccineTrainer`` does):

1. Pass 1: forward + backward recording g_l = ∂L/∂(attention output of layer l); the weight gradients are not
   kept (here they are never computed: ``torch.autograd.grad`` with respect to the activations only).
2. ε_l = rho · g_l / (||g|| + 1e-7), ||g|| one L2 norm over all layers, batch and tokens together.
3. Pass 2: forward with ε_l added to those outputs as constants, backward; the optimizer steps on this gradient.

Gradient accumulation: every micro-batch gets its own perturbation, from its own loss scaled as the Trainer
scales it (the authors divide the recorded gradient by the accumulation steps); the optimizer step sums the
pass-2 gradients as usual. Under DDP, pass 1 runs on the unwrapped model (no gradient synchronisation), each
rank perturbs for its own micro-batch, and pass 2's gradients are all-reduced by DDP as in plain training.

Difference from the authors' code, on purpose: pass 1 runs under a forked RNG, so pass 2 sees the same dropout
masks as the pass that computed its perturbation, and rho = 0 is exactly plain SFT (same seed, same weights).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from transformers import Trainer

from tuneguard.methods.base import MethodParams, TrainingMethod, register_training_method
from tuneguard.methods.defense import DefenseMixin
from tuneguard.methods.hooks import add_to_outputs, capture_outputs
from tuneguard.methods.layouts import layer_modules
from tuneguard.methods.weights import global_norm

NORM_EPS = 1e-7  # added to ||g|| before dividing, as in the authors' code

UNSUPPORTED_ENGINES = {
    "deepspeed-zero3": "pass 1 runs the unwrapped model outside the engine, which needs unsharded weights",
    "fsdp": "pass 1 runs the unwrapped model outside the engine, which needs unsharded weights",
    "dataparallel": "forward hooks on the replicas of torch.nn.DataParallel are not supported",
}


class VaccineParams(MethodParams):
    """Vaccine's parameters (``align.method_args``)."""

    rho: float = Field(
        2.0,
        ge=0,
        description="Perturbation intensity: the L2 norm of the perturbation over all layers (authors' README: 2; "
        "the Booster repo's script uses 5, T-Vaccine 3). 0 is plain SFT at twice the cost.",
    )


class VaccineMixin(DefenseMixin):
    """Adds Vaccine's two-pass step to a ``transformers.Trainer`` (put it before the Trainer in the bases).

    Logs, averaged over the logging window: ``vaccine/perturbation_norm`` (||ε||, = rho unless the gradient
    vanished), ``vaccine/activation_grad_norm`` (||g||, the same under DDP as in one process) and
    ``vaccine/clean_loss`` (pass 1's loss, before the perturbation; the Trainer's ``loss`` is pass 2's, under it).
    """

    method_name = "vaccine"
    paper = "arXiv:2402.01109"
    unsupported_engines = UNSUPPORTED_ENGINES
    params_keyword = "vaccine_params"

    def __init__(self, *args: Any, vaccine_params: VaccineParams | None = None, **kwargs: Any) -> None:
        self.vaccine_params = vaccine_params if vaccine_params is not None else VaccineParams()
        super().__init__(*args, **kwargs)
        self.perturbed_modules = layer_modules(self.model, "attention")

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        inputs = self._prepare_inputs(inputs)
        offsets = self.vaccine_perturbation(inputs, num_items_in_batch)
        with add_to_outputs(self.perturbed_modules, offsets):
            return super().training_step(model, inputs, num_items_in_batch)

    def vaccine_perturbation(self, inputs: dict[str, Any], num_items_in_batch: Any = None) -> list[torch.Tensor]:
        """Pass 1: ε_l for every decoder layer's attention output, for this micro-batch (detached tensors)."""
        model = self.model  # unwrapped: no DDP synchronisation, and .grad of the weights is never touched
        model.train()
        with self._forked_rng():
            with capture_outputs(self.perturbed_modules, require_grad=True) as capture:
                with self.compute_loss_context_manager():
                    loss = self.compute_loss(model, dict(inputs), num_items_in_batch=num_items_in_batch)
                capture.recording = False
            if not self._loss_is_scaled_for_ga(num_items_in_batch):
                loss = loss / self.current_gradient_accumulation_steps
            grads = torch.autograd.grad(loss, capture.outputs, allow_unused=True)
        grads = [torch.zeros_like(out) if g is None else g for g, out in zip(grads, capture.outputs, strict=True)]
        grad_norm = global_norm(grads)
        scale = self.vaccine_params.rho / (grad_norm + NORM_EPS)
        offsets = [(g.float() * scale).to(g.dtype) for g in grads]
        self.record_metric("vaccine/clean_loss", loss.detach() * self.current_gradient_accumulation_steps)
        # Under DDP each rank's loss carries W times its share of the step (DDP then averages the gradients over
        # the W ranks): divided by W, the logged norm is the one a single process computes for this micro-batch.
        self.record_metric("vaccine/activation_grad_norm", grad_norm / self.args.world_size)
        self.record_metric(
            "vaccine/perturbation_norm", torch.linalg.vector_norm(torch.stack([o.float().norm() for o in offsets]))
        )
        return offsets

    def _loss_is_scaled_for_ga(self, num_items_in_batch: Any) -> bool:
        # The Trainer's own rule (training_step), so that pass 1 sees the loss pass 2 backpropagates.
        if self.loss_is_scaled_for_ga is not None:
            return bool(self.loss_is_scaled_for_ga)
        return (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None

    def _forked_rng(self) -> Any:
        device = self.args.device
        if device.type == "cpu":
            return torch.random.fork_rng(devices=[])
        index = device.index if device.index is not None else torch.get_device_module(device.type).current_device()
        return torch.random.fork_rng(devices=[index], device_type=device.type)


class VaccineTrainer(VaccineMixin, Trainer):
    """``transformers.Trainer`` with Vaccine's perturbation-aware step (arXiv 2402.01109); see :class:`VaccineMixin`."""


VACCINE = register_training_method(
    TrainingMethod.for_defense(
        VaccineTrainer,
        name="vaccine",
        stages=("align",),
        params_cls=VaccineParams,
        summary="Vaccine: align under the worst-case perturbation (norm rho) of every attention block's output",
    )
)
