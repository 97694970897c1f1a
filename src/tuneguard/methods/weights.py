"""The trainable weights of a defense: enumerate, snapshot, measure and move them.

- :func:`trainable_parameters`, :func:`snapshot_parameters`, :func:`squared_distance`: the anchor snapshot w̃
  and the squared L2 distance ||w − w̃||² (Lisa's anchor, drift logging);
- :func:`add_proximal_gradient`: the gradient of (c/2)·||w − w̃||², added in closed form (Lisa);
- :func:`global_norm`: one L2 norm over many tensors, in float32;
- :func:`perturbed_weights`: move weights along a direction and restore them bit-exactly (Booster).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

# Functions taking ``Weights`` accept a model (its trainable parameters are used) or the already listed
# ``(name, parameter)`` pairs: listing a PEFT model's parameters costs ~1 ms, worth caching once per run.
Weights = nn.Module | Iterable[tuple[str, torch.Tensor]]


def trainable_parameters(model: Weights) -> Iterator[tuple[str, nn.Parameter]]:
    """Yield ``(name, parameter)`` for every parameter with ``requires_grad`` (the LoRA weights under LoRA).

    Pass the unwrapped model (``trainer.model``), not a DDP wrapper, so that names carry no ``module.`` prefix.
    Given ``(name, parameter)`` pairs instead of a model, yields those with ``requires_grad``.
    """
    pairs = model.named_parameters() if isinstance(model, nn.Module) else model
    for name, param in pairs:
        if param.requires_grad:
            yield name, param


def snapshot_parameters(model: Weights) -> dict[str, torch.Tensor]:
    """Detached clones of the trainable parameters, keyed by name, on their own device and dtype."""
    return {name: param.detach().clone() for name, param in trainable_parameters(model)}


def squared_distance(model: Weights, snapshot: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ over trainable tensors of ||w − w̃||², as a float32 scalar on the parameters' device.

    Differentiable with respect to the parameters (its gradient is 2·(w − w̃)); wrap the call in
    ``torch.no_grad()`` to use it as a measurement. Raises if the snapshot and the model disagree on names.
    """
    total: torch.Tensor | None = None
    seen = 0
    for name, param in trainable_parameters(model):
        try:
            anchor = snapshot[name]
        except KeyError:
            raise KeyError(f"trainable parameter {name!r} has no entry in the snapshot") from None
        term = (param.float() - anchor.float()).pow(2).sum()
        total = term if total is None else total + term
        seen += 1
    if seen != len(snapshot):
        raise KeyError(f"the snapshot holds {len(snapshot)} tensors, the model {seen} trainable ones")
    if total is None:
        return torch.zeros(())
    return total


def add_proximal_gradient(model: Weights, snapshot: dict[str, torch.Tensor], coefficient: float | None) -> torch.Tensor:
    """Add ``coefficient · (w − w̃)`` to the ``.grad`` of every trainable parameter; return ||w − w̃||².

    That is the gradient of ``(coefficient / 2) · ||w − w̃||²`` (a proximal term), added in closed form after
    the backward pass instead of through autograd: no graph is built, it is exact under gradient accumulation
    (add it once per optimizer step), and under DDP it keeps replicas in sync because w and w̃ are identical on
    every rank. ``coefficient=None`` only measures the squared distance (float32 scalar) and leaves grads alone.
    The caller scales ``coefficient`` by the loss scale when gradients are still scaled (fp16 GradScaler).
    """
    total: torch.Tensor | None = None
    with torch.no_grad():
        for name, param in trainable_parameters(model):
            diff = param.detach() - snapshot[name]
            term = diff.float().pow(2).sum()
            total = term if total is None else total + term.to(total.device)
            if coefficient is not None:
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
                param.grad.add_(diff, alpha=coefficient)
    return total if total is not None else torch.zeros(())


def global_norm(tensors: Iterable[torch.Tensor | None]) -> torch.Tensor:
    """sqrt(Σ ||t||²) over all tensors (``None`` skipped), as a float32 scalar."""
    squares = [t.detach().float().pow(2).sum() for t in tensors if t is not None]
    if not squares:
        return torch.zeros(())
    device = squares[0].device
    return torch.stack([s.to(device) for s in squares]).sum().sqrt()


@contextlib.contextmanager
def perturbed_weights(
    params: Sequence[torch.Tensor], direction: Sequence[torch.Tensor | None], step: float
) -> Iterator[None]:
    """Inside the block, ``w ← w + step · d`` for each parameter; on exit ``w`` is restored bit-exactly.

    The original values are copied before the move and copied back after (not subtracted again, which would
    leave rounding errors), also when the block raises. A ``None`` direction leaves that parameter alone.
    """
    if len(params) != len(direction):
        raise ValueError(f"{len(params)} parameters but {len(direction)} directions")
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for param, d in zip(params, direction, strict=True):
                if d is None:
                    continue
                saved.append((param, param.detach().clone()))
                param.add_(d.to(param.dtype), alpha=step)
        yield
    finally:
        with torch.no_grad():
            for param, original in saved:
                param.copy_(original)
