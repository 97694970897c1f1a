"""Mechanics shared by the training-stage defenses, written once (DESIGN §4, last paragraph).

- :class:`EndlessLoader`: an endless, reshuffling loader over an auxiliary data set (Lisa/BSO's alignment
  data; later Booster's harmful data) whose position can be saved and restored exactly, and which gives each
  DDP rank its own deterministic shard.
- :func:`trainable_parameters`, :func:`snapshot_parameters`, :func:`squared_distance`: the anchor snapshot
  w̃ and the squared L2 distance ||w − w̃||² used by proximal terms (Lisa) and drift logging.

Room is left here for the other shared pieces the design names (forward hooks on chosen modules for
Vaccine/RepNoise, perturb-and-restore of weights for Booster); they land in this module when those methods do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

# --------------------------------------------------------------------------------------------------------------
# Trainable weights: enumerate, snapshot, distance
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# Endless auxiliary loader
# --------------------------------------------------------------------------------------------------------------


class EndlessLoader:
    """An endless iterator of collated batches over ``dataset``, reshuffled every pass, resumable exactly.

    Pass ``e`` (0, 1, ...) over the data uses the permutation drawn from a private ``torch.Generator`` seeded
    with ``seed + e`` (the ``DistributedSampler`` convention), so the global RNG is never touched: building or
    drawing from this loader cannot change dropout or the main data order of the run it is attached to.

    Under DDP each of ``world_size`` ranks takes every ``world_size``-th index of the permutation (padded by
    wrapping around, so every rank's shard has the same length and every rank yields batches of the same
    sizes); all ranks advance in lockstep as long as they draw the same number of batches.

    The position is ``(epoch, batch index within the epoch)``; :meth:`state_dict` / :meth:`load_state_dict`
    save and restore it, so a resumed run draws exactly the batches an unbroken run would have drawn.
    Batches are built in the calling process (no worker processes): auxiliary batches are small and few.
    """

    def __init__(
        self,
        dataset: Sequence[Any],
        batch_size: int,
        collate_fn: Callable[[list[Any]], Any],
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if len(dataset) == 0:
            raise ValueError("the auxiliary data set is empty")
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.shard_size = math.ceil(len(dataset) / world_size)
        if drop_last and self.shard_size < batch_size:
            raise ValueError(
                f"drop_last with a shard of {self.shard_size} examples and batch_size {batch_size} yields no batch"
            )
        self.batches_per_epoch = self.shard_size // batch_size if drop_last else math.ceil(self.shard_size / batch_size)
        self.epoch = 0
        self.index = 0  # next batch within the epoch
        self._shard: list[int] | None = None  # indices of the current epoch, this rank

    def __iter__(self) -> EndlessLoader:
        return self

    def __next__(self) -> Any:
        if self.index >= self.batches_per_epoch:
            self.epoch += 1
            self.index = 0
            self._shard = None
        if self._shard is None:
            self._shard = self._shard_indices(self.epoch)
        start = self.index * self.batch_size
        indices = self._shard[start : start + self.batch_size]
        self.index += 1
        return self.collate_fn([self.dataset[i] for i in indices])

    def state_dict(self) -> dict[str, int | bool]:
        """The position and everything that must match for it to mean the same batches on restore."""
        return {
            "epoch": self.epoch,
            "index": self.index,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "dataset_size": len(self.dataset),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict`; refuses one that would address different batches."""
        for key in ("seed", "shuffle", "batch_size", "world_size", "dataset_size"):
            current = len(self.dataset) if key == "dataset_size" else getattr(self, key)
            if key in state and state[key] != current:
                raise ValueError(f"cannot restore the auxiliary loader: saved {key}={state[key]!r}, now {current!r}")
        self.epoch = int(state["epoch"])
        self.index = int(state["index"])
        self._shard = None

    def _shard_indices(self, epoch: int) -> list[int]:
        n = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + epoch)
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        total = self.shard_size * self.world_size
        padded = (order * math.ceil(total / n))[:total]
        return padded[self.rank :: self.world_size]


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
