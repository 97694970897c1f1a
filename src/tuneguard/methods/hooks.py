"""Forward hooks on chosen modules: record their first output (Vaccine's activation gradients, RepNoise's MLP
activations) or add a constant to it (Vaccine's perturbation)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def _replace_first(output: Any, value: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (value, *output[1:])
    if isinstance(output, list):
        return [value, *output[1:]]
    return value


class OutputCapture:
    """What :func:`capture_outputs` records: ``outputs[i]`` is module i's first output of the last forward.

    Recording is on only inside the ``with`` block and while :attr:`recording` is True; set it False after the
    forward so that recomputation under (non-reentrant) gradient checkpointing does not overwrite the tensors
    the graph was built from.
    """

    def __init__(self, count: int) -> None:
        self.outputs: list[torch.Tensor | None] = [None] * count
        self.recording = True


@contextlib.contextmanager
def capture_outputs(modules: Sequence[nn.Module], *, require_grad: bool = False) -> Iterator[OutputCapture]:
    """Record the first output of each module during forwards inside the block.

    ``require_grad=True`` makes every recorded output differentiable, for ``torch.autograd.grad(loss, outputs)``:
    an output that does not already require grad (nothing trainable upstream of it, e.g. LoRA only on later
    layers) is replaced by a detached leaf that does; this is exact, since a gradient with respect to an output
    only depends on what is downstream of it.
    """
    capture = OutputCapture(len(modules))

    def make_hook(index: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if not capture.recording:
                return None
            value = _first(output)
            if require_grad and torch.is_grad_enabled() and not value.requires_grad:
                value = value.detach().requires_grad_()
                capture.outputs[index] = value
                return _replace_first(output, value)
            capture.outputs[index] = value
            return None

        return hook

    handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(modules)]
    try:
        yield capture
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def add_to_outputs(modules: Sequence[nn.Module], offsets: Sequence[torch.Tensor | None]) -> Iterator[None]:
    """Add ``offsets[i]`` (a constant: detached) to module i's first output in every forward inside the block.

    A ``None`` offset leaves that module alone. Under gradient checkpointing the recomputed forward gets the
    same offset, so the recomputation matches the original forward.
    """
    if len(modules) != len(offsets):
        raise ValueError(f"{len(modules)} modules but {len(offsets)} offsets")

    def make_hook(offset: torch.Tensor) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            value = _first(output)
            return _replace_first(output, value + offset.to(value.dtype))

        return hook

    handles = [
        m.register_forward_hook(make_hook(o.detach())) for m, o in zip(modules, offsets, strict=True) if o is not None
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
