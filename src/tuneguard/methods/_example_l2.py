"""A throw-away example defense: supervised fine-tuning plus an L2 pull towards the weights training started from.

loss = CE + (lamb / 2)·||w − w₀||², the pull added to the gradients in closed form after the last micro-batch of
each optimizer step. It shows what a new defense needs: a parameter class, a trainer mixin on
:class:`~tuneguard.methods.defense.DefenseMixin`, and its registration.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from transformers import Trainer

from tuneguard.methods.base import MethodParams, TrainingMethod, register_training_method
from tuneguard.methods.defense import DefenseMixin
from tuneguard.methods.weights import add_proximal_gradient, snapshot_parameters


class ExampleL2Params(MethodParams):
    """The example's parameters (``finetune.method_args``)."""

    lamb: float = Field(0.1, ge=0, description="Strength of the pull towards the initial weights; 0 is plain SFT.")


class ExampleL2Mixin(DefenseMixin):
    """Adds the L2 pull to a ``transformers.Trainer``; logs ``example-l2/distance`` (||w − w₀||²)."""

    method_name = "example-l2"
    unsupported_engines = {"fsdp": "the pull snapshots whole weights, which FSDP shards"}
    params_keyword = "l2_params"
    extra_state_file = "example_l2_state.pt"

    def __init__(self, *args: Any, l2_params: ExampleL2Params | None = None, **kwargs: Any) -> None:
        self.l2_params = l2_params if l2_params is not None else ExampleL2Params()
        super().__init__(*args, **kwargs)
        self._initial: dict[str, torch.Tensor] | None = None

    def begin_train(self, checkpoint: str | None, saved: dict[str, Any] | None) -> None:
        super().begin_train(checkpoint, saved)
        self._initial = saved["initial"] if saved is not None else None

    def extra_checkpoint_state(self) -> dict[str, Any] | None:
        return {"initial": {k: v.cpu() for k, v in self._initial.items()}} if self._initial is not None else None

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        if self._initial is None:
            self._initial = snapshot_parameters(self.trainable_weights())
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients:  # the last micro-batch of the optimizer step
            coefficient = self.l2_params.lamb * self.gradient_scale()
            distance2 = add_proximal_gradient(self.trainable_weights(), self._initial, coefficient)
            self.record_metric("example-l2/distance", distance2)
        return loss


class ExampleL2Trainer(ExampleL2Mixin, Trainer):
    """``transformers.Trainer`` with the example's L2 pull."""


EXAMPLE_L2 = register_training_method(
    TrainingMethod.for_defense(
        ExampleL2Trainer,
        name="example-l2",
        stages=("finetune",),
        params_cls=ExampleL2Params,
        summary="example: SFT with an L2 pull towards the initial weights",
    )
)
