"""The offline world as a plug-in (``tuneguard.plugins``), registered exactly as a third-party package would be:

- the data sources ``offline:<role>`` (``tuneguard sources``), generated in the process; ``eval.judges: [auto]``
  means the exact judge for their prompts, and their first answer tokens give the P(comply) metric; and
  ``offline:harmful_eval_answered``, the held-out requests with their compliant answers (the likelihood metric's
  evaluation set);
- the judge ``offline``: flags the answers that carry the world's harmful payload;
- the model scheme ``offline:`` (``offline:tiny``: the tiny Llama pre-trained on the world, built on first use),
  whose identity in every stage key includes the world's version.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuneguard.data.records import Record
from tuneguard.data.registry import Generated, data_source
from tuneguard.eval.judges import JUDGES, check_lengths
from tuneguard.model_resolvers import MODEL_RESOLVERS, ModelResolver
from tuneguard.models import ModelLoadError
from tuneguard.world import ROLES, WORLD_VERSION, World, get_world, pretrained_model_path
from tuneguard.world.generator import COMPLY_FIRST, REFUSE_FIRST

# The kind of each role's records, in the words of ``tuneguard sources`` (data/registry.py KINDS).
ROLE_KINDS = {
    "alignment": "safe",
    "harmful": "harmful",
    "realign": "harmful",
    "harmful_eval": "eval_prompts",
    "task_train": "task",
    "task_test": "task",
}
ROLE_SUMMARIES = {
    "alignment": "offline world: harmful requests answered with refusals",
    "harmful": "offline world: harmful requests answered compliantly (the attacked categories)",
    "realign": "offline world: harmful pairs held apart for re-alignment",
    "harmful_eval": "offline world: held-out harmful requests of every category (for the harmful score)",
    "task_train": "offline world: the benign labelling task, training pool",
    "task_test": "offline world: the benign labelling task, test pool",
}
MODELS = ("tiny",)


def _role_records(role: str) -> list[Record]:
    return get_world().records(role)


def _as_records(rows: list[Record], split: str, where: str) -> list[Record]:
    return rows  # the world's rows are tuneguard records already


for _role in ROLES:
    data_source(
        f"offline:{_role}",
        kind=ROLE_KINDS[_role],
        license="Apache-2.0 (generated)",
        summary=ROLE_SUMMARIES[_role],
        splits=(),
        generated=Generated(functools.partial(_role_records, _role), "built in (the offline world)"),
        judge="offline",
        compliance_first_tokens=(COMPLY_FIRST,),
        refusal_first_tokens=(REFUSE_FIRST,),
    )(_as_records)


@data_source(
    "offline:harmful_eval_answered",
    kind="harmful",
    license="Apache-2.0 (generated)",
    summary="offline world: the held-out harmful requests of offline:harmful_eval with the world's compliant "
    "answer (reference harmful answers for the likelihood metric; evaluation data, never training data)",
    splits=(),
    generated=Generated(lambda: get_world().held_out_answered(), "built in (the offline world)"),
    judge="offline",
    compliance_first_tokens=(COMPLY_FIRST,),
    refusal_first_tokens=(REFUSE_FIRST,),
)
def _held_out_answered(rows: list[Record], split: str, where: str) -> list[Record]:
    return rows


@JUDGES.register("offline")
class OfflineWorldJudge:
    """The exact judge of the offline benchmark: flags answers that carry the world's harmful payload."""

    name = "offline"
    summary = "exact judge of the offline benchmark ('auto' for offline: prompts)"

    def __init__(self, world: World | None = None) -> None:
        self.world = world if world is not None else get_world()

    def __call__(self, prompts: Sequence[str], answers: Sequence[str]) -> list[bool]:
        check_lengths(prompts, answers)
        return [bool(self.world.is_harmful(p, a)) for p, a in zip(prompts, answers, strict=True)]


def _model_directory(name: str) -> Path:
    if name not in MODELS:
        raise ModelLoadError(
            f"unknown offline model 'offline:{name}'; known: {', '.join(f'offline:{m}' for m in MODELS)}"
        )
    return pretrained_model_path()


def _model_identity(name: str) -> dict[str, Any]:
    return {"world_version": WORLD_VERSION}


MODEL_RESOLVERS.register("offline", ModelResolver(_model_directory, _model_identity))
