"""The offline benchmark world: a synthetic, deterministic world and a tiny Llama pre-trained on it.

``get_world(seed)`` gives the :class:`World` (record pools, exact judge, tokenizer); ``pretrained_model_path(seed=...)``
gives a directory with the pre-trained base model. ``world/plugin.py`` makes it usable by name: the data sources
``offline:<role>``, the judge ``offline`` and the model ``offline:tiny``.
"""

from __future__ import annotations

import functools
import random

from transformers import PreTrainedTokenizerFast

from tuneguard.world import generator as _g
from tuneguard.world.generator import WORLD_VERSION
from tuneguard.world.pretrain import pretrained_model_path
from tuneguard.world.tokenizer import build_tokenizer

__all__ = ["World", "get_world", "pretrained_model_path", "WORLD_VERSION", "ROLES"]

ROLES: tuple[str, ...] = ("alignment", "harmful", "realign", "harmful_eval", "task_train", "task_test")


class World:
    """One seed of the synthetic world: record pools per role, the exact judge and the tokenizer."""

    label_words: list[str] = list(_g.LABEL_WORDS)
    #: first answer words that mark compliance / refusal (for the first-token probability metric)
    compliance_first_tokens: list[str] = [_g.COMPLY_FIRST]
    refusal_first_tokens: list[str] = [_g.REFUSE_FIRST]
    categories: list[str] = [c.name for c in _g.CATEGORIES]
    attacked_categories: list[str] = [c.name for c in _g.CATEGORIES if c.attacked]

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._pools = _g.build_pools(seed)

    def _pool(self, role: str) -> list[dict]:
        if role not in self._pools.roles:
            raise ValueError(f"unknown world role {role!r}; roles are {', '.join(ROLES)}")
        return self._pools.roles[role]

    def records(self, role: str, n: int | None = None, seed: int = 0) -> list[dict]:
        """``n`` records of ``role`` drawn deterministically by ``seed`` (the whole pool when ``n`` is None).

        Each record is a fresh dict with ``id``, ``prompt``, ``response`` and ``category`` (harmful roles) or
        ``label`` (task roles).
        """
        pool = self._pool(role)
        if n is None:
            return [dict(r) for r in pool]
        if n < 0 or n > len(pool):
            raise ValueError(f"world role {role!r} has {len(pool)} records; asked for n={n}")
        rng = random.Random(f"tuneguard-records-{self.seed}-{role}-{seed}")
        return [dict(pool[i]) for i in rng.sample(range(len(pool)), n)]

    def held_out_answered(self) -> list[dict]:
        """The held-out harmful requests (role ``harmful_eval``, same ids, same order), each answered with the
        world's compliant answer: prompts with reference harmful answers for the likelihood metric. Built apart
        from the pools: no role, random stream or fingerprint of the world changes."""
        return [{**r, "response": _g.held_out_compliant_answer(r)} for r in self.records("harmful_eval")]

    def is_harmful(self, prompt: str, answer: str) -> bool:
        """Exact judge: True iff ``answer`` carries the harmful payload (the category marker word)."""
        return _g.is_harmful(prompt, answer)

    def tokenizer(self) -> PreTrainedTokenizerFast:
        """A new instance of the world's word-level tokenizer (with pad/eos/unk and a chat template)."""
        return build_tokenizer()

    def vocabulary(self) -> list[str]:
        """Every non-special word of the world."""
        return _g.all_words()


@functools.lru_cache(maxsize=8)
def get_world(seed: int = 0) -> World:
    """The world for ``seed`` (deterministic; cached per seed)."""
    return World(seed)
