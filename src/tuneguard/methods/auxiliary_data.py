"""Auxiliary data sets of a defense: the provider's data drawn next to the user's (Lisa/BSO's alignment data,
Booster's and RepNoise's harmful data).

- :class:`EndlessLoader`: an endless, reshuffling loader whose position can be saved and restored exactly, and
  which gives each DDP rank its own deterministic shard; :func:`auxiliary_loader` builds one for a Trainer.
- :class:`HarmfulDataMixin`: the harmful data of a defense, drawn from such a loader and checkpointed with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from tuneguard.methods.defense import DefenseMixin

SHARDING = "batch"  # how EndlessLoader splits the data over DDP ranks; saved with its position


class EndlessLoader:
    """An endless iterator of collated batches over ``dataset``, reshuffled every pass, resumable exactly.

    Pass ``e`` (0, 1, ...) over the data uses the permutation drawn from a private ``torch.Generator`` seeded
    with ``seed + e`` (the ``DistributedSampler`` convention), so the global RNG is never touched: building or
    drawing from this loader cannot change dropout or the main data order of the run it is attached to.

    Under DDP the data is sharded by whole batches, exactly as accelerate shards the Trainer's main data
    (``BatchSamplerShard``, ``split_batches=False``, ``even_batches=True``): the permutation is cut into the
    batches one process would draw, and rank ``r`` of ``world_size`` W takes batches ``r, r + W, r + 2W, ...``.
    So the ``k``-th batch a rank draws is the ``(k·W + r)``-th batch of the one-process sequence, and a
    W-rank run draws, micro-step for micro-step, the same auxiliary batches as one process with W times the
    gradient accumulation, as long as every rank draws the same number of batches. When W > 1 and the
    pass does not fill whole rounds of W batches, it is padded by wrapping around to its start (all batches
    then have ``batch_size`` examples); with ``drop_last`` the incomplete round is dropped instead. The
    one-process sequence is then the same only if ``len(dataset)`` is a multiple of ``W · batch_size``,
    the same condition as for the main data.

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
        n, round_size = len(dataset), batch_size * world_size
        if drop_last:
            self.batches_per_epoch = n // round_size
            if self.batches_per_epoch == 0:
                raise ValueError(
                    f"drop_last with {n} examples, batch_size {batch_size} and {world_size} ranks yields no batch"
                )
        else:
            self.batches_per_epoch = math.ceil(n / round_size)
        self.epoch = 0
        self.index = 0  # next batch within the epoch
        self._order: list[int] | None = None  # the current epoch's index sequence, all ranks, padded

    def __iter__(self) -> EndlessLoader:
        return self

    @property
    def drawn(self) -> int:
        """How many batches this rank has drawn so far (all passes); restored with the position."""
        return self.epoch * self.batches_per_epoch + self.index

    @property
    def last_batch_number(self) -> int:
        """The number of this rank's last batch in the one-process sequence (``k·W + r`` for draw ``k``)."""
        if self.drawn == 0:
            raise RuntimeError("no batch has been drawn yet")
        return (self.drawn - 1) * self.world_size + self.rank

    def __next__(self) -> Any:
        if self.index >= self.batches_per_epoch:
            self.epoch += 1
            self.index = 0
            self._order = None
        if self._order is None:
            self._order = self._epoch_order(self.epoch)
        start = (self.index * self.world_size + self.rank) * self.batch_size  # this rank's batch in the round
        indices = self._order[start : start + self.batch_size]
        self.index += 1
        return self.collate_fn([self.dataset[i] for i in indices])

    def state_dict(self) -> dict[str, int | bool | str]:
        """The position and everything that must match for it to mean the same batches on restore."""
        return {
            "epoch": self.epoch,
            "index": self.index,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "dataset_size": len(self.dataset),
            "sharding": SHARDING,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict`; refuses one that would address different batches."""
        for key in ("seed", "shuffle", "batch_size", "world_size", "dataset_size"):
            current = len(self.dataset) if key == "dataset_size" else getattr(self, key)
            if key in state and state[key] != current:
                raise ValueError(f"cannot restore the auxiliary loader: saved {key}={state[key]!r}, now {current!r}")
        if self.world_size > 1 and state.get("sharding", "example") != SHARDING:  # saved before batch sharding
            raise ValueError("cannot restore the auxiliary loader: it was saved with per-example DDP sharding")
        self.epoch = int(state["epoch"])
        self.index = int(state["index"])
        self._order = None

    def _epoch_order(self, epoch: int) -> list[int]:
        n = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + epoch)
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        if self.world_size == 1:
            return order  # one process: the last batch may be short, as in a plain DataLoader
        total = self.batches_per_epoch * self.world_size * self.batch_size
        return (order * math.ceil(total / n))[:total]  # wrap around (accelerate's even_batches)


def auxiliary_loader(
    trainer: Any, dataset: Any, collate: Callable[[list[Any]], Any], batch_size: int, description: str, **kwargs: Any
) -> EndlessLoader:
    """An :class:`EndlessLoader` over a second data set of a ``transformers.Trainer`` (Lisa's alignment data,
    Booster's and RepNoise's harmful data), prepared as the Trainer prepares its own: columns the model does not
    take are dropped, the run's data seed shuffles it, and each DDP rank draws its share. ``kwargs`` go to the
    loader (e.g. ``drop_last``)."""
    if hasattr(dataset, "column_names"):  # a datasets.Dataset: drop columns the model does not take
        dataset = trainer._remove_unused_columns(dataset, description=description)
    else:
        collate = trainer._get_collator_with_removed_columns(collate, description=description)
    args = trainer.args
    seed = args.data_seed if args.data_seed is not None else args.seed
    return EndlessLoader(
        dataset, batch_size, collate, seed=seed, rank=args.process_index, world_size=args.world_size, **kwargs
    )


HARMFUL_LOADER_FILE = "harmful_loader.pt"  # written into each checkpoint folder next to trainer_state.json


class HarmfulDataMixin(DefenseMixin):
    """Draws harmful batches for a defense (Booster, RepNoise) from an :class:`EndlessLoader`.

    The loader is built at the first draw (per-rank shard, seeded by ``data_seed`` or ``seed``) and its position
    is saved in every checkpoint and restored on resume, so a resumed run draws the batches an unbroken run
    would have drawn.
    """

    extra_state_file = HARMFUL_LOADER_FILE
    dataset_keywords = {"harmful_data": "harmful_dataset"}
    harmful_dataset: Any
    harmful_data_collator: Any

    def setup_harmful_data(self, dataset: Any, collator: Any) -> None:
        if dataset is None:
            raise ValueError(
                f"{self.method_name} needs harmful data (harmful prompt -> harmful answer): pass harmful_dataset"
            )
        self.harmful_dataset, self.harmful_data_collator = dataset, collator
        self._harmful_loader: EndlessLoader | None = None
        self._harmful_pending: dict[str, Any] | None = None

    def harmful_batch_size(self) -> int:
        raise NotImplementedError

    def next_harmful_batch(self) -> dict[str, Any]:
        """The next collated harmful batch, on the training device."""
        if self._harmful_loader is None:
            self._harmful_loader = self._build_harmful_loader()
            if self._harmful_pending is not None:
                self._harmful_loader.load_state_dict(self._harmful_pending)
                self._harmful_pending = None
        return self._prepare_inputs(next(self._harmful_loader))

    def begin_train(self, checkpoint: str | None, saved: dict[str, Any] | None) -> None:
        super().begin_train(checkpoint, saved)
        self._harmful_loader, self._harmful_pending = None, saved

    def extra_checkpoint_state(self) -> dict[str, Any] | None:
        return self._harmful_loader.state_dict() if self._harmful_loader is not None else None

    def _build_harmful_loader(self) -> EndlessLoader:
        collate = self.harmful_data_collator or self.data_collator
        return auxiliary_loader(self, self.harmful_dataset, collate, self.harmful_batch_size(), "harmful")
