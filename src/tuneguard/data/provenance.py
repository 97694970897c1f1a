"""Which of an experiment's data sets must not share prompts, the check, and how a data selection is described.

An experiment holds harmful prompts on three sides: the user's **attack** data (the harmful records drawn into the
fine-tuning mix), the **provider**'s data (alignment data, a defense's harmful data, Antidote's re-alignment data)
and the **evaluation**'s harmful prompts. A prompt on two sides makes a result untrustworthy: a defense that was
shown the attack's prompts, or a harmful score measured on prompts the model was trained on. The authors keep the
sides apart by row ranges (Booster's ``poison_data_start``: attack rows from 0, the provider's from 5000);
BeaverTails repeats a prompt with several answers, so tuneguard checks the prompts themselves (case- and
whitespace-normalized, instruction and input together) before anything trains. A set split into disjoint pools
by behaviour (``pyrit:harmful_qa`` split ``attack`` / ``eval``, ``data/splits.py``) is compared by behaviour group:
its attack pool and its eval pool are disjoint; the whole set and its eval pool are not.

Within the provider's side prompts may repeat on purpose: Booster's harmful data are the alignment prompts with
their harmful answers, and RepNoise pairs them the same way. The task data are benign and not compared.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations

from tuneguard.config import DataSource
from tuneguard.data.derive import normalize_prompt
from tuneguard.data.readers import DataError, Record, prompt_text
from tuneguard.data.splits import behaviour_key

# Role (the config key of a data set) -> side. A role not listed here is not compared.
ROLE_SIDES = {
    "finetune.user_data.harmful_data": "attack",
    "align.alignment_data": "provider",
    "align.harmful_data": "provider",
    "finetune.alignment_data": "provider",
    "repair.realign_data": "provider",
    "eval.harmful_prompts": "evaluation",
    "eval.likelihood": "evaluation",
    "eval.benign_prompts": "evaluation",
}


def check_disjoint_roles(roles: Mapping[str, Sequence[Record]]) -> dict[str, int]:
    """Refuse data sets on different sides (``ROLE_SIDES``) that share a prompt.

    ``roles`` maps a role (config key, e.g. ``"finetune.user_data.harmful_data"``) to its loaded records (for the
    attack: the harmful records of the user data actually drawn). Returns the number of shared prompts per compared
    pair (``"role A | role B"`` -> 0). The error names every pair that shares prompts and how many, never the text.
    """
    checked = {role: ROLE_SIDES[role] for role in roles if role in ROLE_SIDES}
    # a request of a set split by behaviour (data/splits.py) counts as its whole behaviour group
    prompts = {role: {behaviour_key(prompt_text(r)) for r in roles[role]} for role in checked}
    report, problems = {}, []
    for first, second in combinations(checked, 2):
        if checked[first] == checked[second]:
            continue
        shared = len(prompts[first] & prompts[second])
        report[f"{first} | {second}"] = shared
        if shared:
            problems.append(f"{first} and {second} share {shared} prompt{'s' if shared > 1 else ''}")
    if problems:
        raise DataError(
            "experiment data",
            "; ".join(problems) + " (compared case- and whitespace-normalized, near-duplicates of a behaviour "
            "together). The attack data, the provider's "
            "alignment/defense/re-alignment data and the evaluation prompts must be disjoint: give one of each pair "
            "a disjoint 'rows' range or an 'exclude' of the other",
        )
    return report


def shared_prompt_ids(records: Iterable[Record], prompts: Iterable[str]) -> list[str]:
    """The ids of ``records`` whose whole request (normalized) is one of ``prompts``."""
    seen = {normalize_prompt(p) for p in prompts}
    return [str(r["id"]) for r in records if normalize_prompt(prompt_text(r)) in seen]


def describe_selection(spec: DataSource | Sequence[DataSource] | None) -> str | None:
    """One line saying which records a data source selects, for results (``"beavertails:prompts_unsafe_rows
    [30k_test] rows [0, 1000)"``); sources of a list are joined with ``+``."""
    if spec is None:
        return None
    if not isinstance(spec, DataSource):
        return " + ".join(filter(None, (describe_selection(one) for one in spec)))
    parts = [spec.source + (f" [{spec.split}]" if spec.split else "")]
    if spec.rows is not None:
        parts.append(f"rows [{spec.rows[0]}, {spec.rows[1]})")
    if spec.exclude:
        parts.append("minus the prompts of (" + "; ".join(describe_selection(x) or "" for x in spec.exclude) + ")")
    if spec.num_samples is not None:
        parts.append(f"{spec.num_samples} drawn with seed {spec.seed}")
    if spec.responses != "keep":
        parts.append(f"answered with {spec.responses}s")
    return " ".join(parts)
