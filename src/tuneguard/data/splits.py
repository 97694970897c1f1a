"""Disjoint attack / evaluation pools of one harmful data set, split by behaviour.

A harmful Q/A set used both to attack (fine-tuning data) and to evaluate (held-out prompts with their reference
harmful answers, for the likelihood metric) must be split so that no behaviour is on both sides. PyRIT's harmful
pairs carry no behaviour id, only the request text: one HarmBench behaviour appears as the same request several
times (case or spacing aside), and HarmBench writes families of behaviours from one template ("... manufacturing
ricin at home" / "... tetrodotoxin at home"). A pool that held one sibling for training and the other for
evaluation would measure a memorised template, so both kinds of near-duplicate form one **behaviour group**:

- requests equal after :func:`~tuneguard.data.derive.normalize_prompt`;
- requests of at least :data:`NEAR_DUPLICATE_MIN_WORDS` distinct words each whose word sets overlap by at least
  :data:`NEAR_DUPLICATE_JACCARD` (Jaccard), joined transitively (shorter requests differ too much by one word).

Each group goes to one pool by a hash of its key (its smallest normalized request), not by a random draw, so a
pool does not depend on the order of the rows or on any random state; about :data:`ATTACK_SHARE` of the groups
attack. The provenance guard compares prompts through the same groups (:func:`behaviour_key`), so two sets are
disjoint only when they share no behaviour group.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from tuneguard.data.derive import normalize_prompt
from tuneguard.data.records import Record, prompt_text

POOLS = ("attack", "eval")
ATTACK_SHARE = 0.7  # of the behaviour groups
NEAR_DUPLICATE_JACCARD = 0.6  # word-set overlap from which two requests are one behaviour's variants
NEAR_DUPLICATE_MIN_WORDS = 6  # distinct words each of the two needs (PyRIT's requests have 3 to ~40)
SPLIT_SALT = "tuneguard-behaviour-split-v1"  # changing it re-deals every pool: a new split, a new name

# normalized request -> its group key, for every request of a set that was split (filled by behaviour_groups);
# the provenance guard folds a request into its group through it.
_KNOWN_GROUPS: dict[str, str] = {}


def behaviour_groups(prompts: Iterable[str]) -> dict[str, str]:
    """Each normalized request of ``prompts`` -> its behaviour group's key (the smallest normalized request of the
    group): equal requests and near-duplicates (word-set Jaccard >= ``NEAR_DUPLICATE_JACCARD``, both of at least
    ``NEAR_DUPLICATE_MIN_WORDS`` words), transitively.
    The groups are remembered for :func:`behaviour_key`."""
    texts = sorted({normalize_prompt(p) for p in prompts})
    words = [frozenset(t.split()) for t in texts]
    parent = list(range(len(texts)))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    long_enough = [k for k, w in enumerate(words) if len(w) >= NEAR_DUPLICATE_MIN_WORDS]
    for i, a in enumerate(long_enough):
        for b in long_enough[i + 1 :]:
            if len(words[a] & words[b]) / len(words[a] | words[b]) >= NEAR_DUPLICATE_JACCARD:
                ra, rb = root(a), root(b)
                parent[max(ra, rb)] = min(ra, rb)  # the root is the smallest text: the group's key
    groups = {text: texts[root(k)] for k, text in enumerate(texts)}
    _KNOWN_GROUPS.update(groups)
    return groups


def pool_of(group_key: str) -> str:
    """``"attack"`` or ``"eval"``: a hash of the group key, so the pool of a group never depends on other rows."""
    digest = hashlib.sha256(f"{SPLIT_SALT}\0{group_key}".encode()).digest()
    return "attack" if int.from_bytes(digest[:8], "big") / 2**64 < ATTACK_SHARE else "eval"


def split_by_behaviour(records: Sequence[Record], pool: str) -> list[Record]:
    """The records of ``records`` whose behaviour group falls in ``pool`` (``"attack"`` or ``"eval"``), in order."""
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; expected one of {', '.join(POOLS)}")
    groups = behaviour_groups(prompt_text(r) for r in records)
    return [r for r in records if pool_of(groups[normalize_prompt(prompt_text(r))]) == pool]


def behaviour_key(prompt: str) -> str:
    """The form in which the provenance guard compares a request: its behaviour group's key when it belongs to a
    set split here (loaded in this process), else the normalized request."""
    text = normalize_prompt(prompt)
    return _KNOWN_GROUPS.get(text, text)
