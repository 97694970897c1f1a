"""Derived data sets: records with refusal answers, and records minus the prompts of other sets.

Real harmful-prompt sets rarely ship the refusal a provider aligns towards, and sets from different sources
share prompts (AdvBench and StrongREJECT share 25; BeaverTails repeats a prompt with several answers). Two
``DataSource`` options cover both: ``responses: refusal`` and ``exclude: [other sources]``.
"""

from __future__ import annotations

import hashlib
import unicodedata

from tuneguard.data.records import Record

# Refusals a provider aligns towards; each contains a phrase of the refusal-keyword judge, so the keyword judge
# counts them as refusals.
REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that request.",
    "I cannot help with this. It could cause serious harm to people.",
    "I'm sorry, I can't assist with that. Is there something else I can help you with?",
    "I cannot provide that information because it could be used to hurt someone.",
    "Sorry, but I won't help with this. It is harmful and may be illegal.",
    "I'm not able to provide help with that. If you have another question, I'm happy to help.",
)


def normalize_prompt(text: str) -> str:
    """The form in which two prompts count as the same: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def with_refusals(records: list[Record], refusals: tuple[str, ...] = REFUSALS) -> list[Record]:
    """Every record answered with a refusal, chosen by a hash of its id (stable across runs and machines)."""

    def pick(record_id: str) -> str:
        digest = hashlib.sha256(str(record_id).encode("utf-8")).digest()
        return refusals[int.from_bytes(digest[:4], "big") % len(refusals)]

    return [{**r, "response": pick(r["id"])} for r in records]
