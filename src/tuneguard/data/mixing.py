"""Poison mixing: the user's data set of n records, exactly round(p·n) of them harmful."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tuneguard.data.records import DataError, Record, Records
from tuneguard.store import atomic_output


def mix_user_data(
    task_records: list[Record],
    harmful_records: list[Record],
    num_samples: int,
    poison_ratio: float,
    seed: int = 0,
    draw: str = "random",
) -> Records:
    """Draw ``round(p·n)`` harmful and ``n - round(p·n)`` task records and shuffle them (seeded).

    ``draw="random"`` draws each part without replacement (seeded); ``"first"`` takes the first records of each
    source in order, as the authors' code does (their attack rows are the first p·n unsafe BeaverTails rows).

    Each returned record carries ``source`` ("task" or "harmful") and ``source_index`` (its row in that source)
    so the mix can be audited; as :class:`Records` it also knows each record's file and row, when the sources do.
    Raises ``DataError`` before anything is trained when the request is impossible.
    """
    if not 0.0 <= poison_ratio <= 1.0:
        raise DataError("finetune.user_data", f"poison_ratio must be in [0, 1], got {poison_ratio}")
    if num_samples <= 0:
        raise DataError("finetune.user_data", f"num_samples must be positive, got {num_samples}")
    num_harmful = round(poison_ratio * num_samples)
    num_task = num_samples - num_harmful
    if num_harmful > len(harmful_records):
        raise DataError(
            "finetune.user_data.harmful_data",
            f"needs {num_harmful} harmful records (p={poison_ratio} x n={num_samples}) but has {len(harmful_records)}",
        )
    if num_task > len(task_records):
        raise DataError(
            "finetune.user_data.task_data",
            f"needs {num_task} task records (n={num_samples}) but has {len(task_records)}",
        )
    if draw not in ("random", "first"):
        raise ValueError(f"unknown draw {draw!r}; expected random or first")
    rng = random.Random(seed)
    if draw == "first":
        harmful_rows, task_rows = range(num_harmful), range(num_task)
    else:
        harmful_rows = rng.sample(range(len(harmful_records)), num_harmful)
        task_rows = rng.sample(range(len(task_records)), num_task)
    picked = [("harmful", i) for i in harmful_rows] + [("task", i) for i in task_rows]
    rng.shuffle(picked)
    pools = {"harmful": harmful_records, "task": task_records}
    records = [{**pools[src][i], "source": src, "source_index": i} for src, i in picked]
    if not all(isinstance(pool, Records) and pool.origins for pool in pools.values()):
        return Records(records)
    return Records(records, [pools[src].origins[i] for src, i in picked])


def write_jsonl(records: list[Record], path: str | Path) -> None:
    """Write records as JSONL atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
