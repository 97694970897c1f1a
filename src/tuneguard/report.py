"""Results tables: one row per evaluated model, written as Markdown and CSV (atomically); mean ± std and
bootstrap intervals over seeds. The report page of a grid run (Markdown + self-contained HTML) is in
``report_page.py``."""

from __future__ import annotations

import csv
import io
import random
import statistics
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from tuneguard.store import atomic_output

OFFLINE_NOTE = (
    "Offline benchmark (a synthetic world and a tiny Llama pre-trained on it; a simulation that checks the "
    "mechanisms end to end, not a claim about real models). HS = harmful score (exact judge, lower is better), "
    "FA = fine-tune accuracy (higher is better), P(comply) = mean probability of a compliant vs refusing first "
    "token on the harmful prompts, over-refusal = % of benign prompts refused (the task test prompts unless "
    "eval.benign_prompts names a set)."
)

# (column key, header, format) for the standard HS / FA table.
DEFAULT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("model", "model", "{}"),
    ("method", "method", "{}"),
    ("poison_ratio", "p", "{:g}"),
    ("harmful_score", "HS (%)", "{:.1f}"),
    ("harmful_score_plus", "HS+ (%)", "{:.1f}"),
    ("judge", "judge", "{}"),
    ("finetune_accuracy", "FA (%)", "{:.1f}"),
    ("compliance_probability", "P(comply) (%)", "{:.1f}"),
    ("over_refusal_rate", "over-refusal (%)", "{:.1f}"),  # benign prompts refused (eval.benign_prompts or task test)
    ("harmful_preference", "harm. pref. (%)", "{:.1f}"),  # the judge-free metric of the first eval.likelihood set
    ("compliance_margin", "margin (nats/token)", "{:+.3f}"),
    ("compliance_margin_ci", "margin 95% CI", "[{:+.3f}, {:+.3f}]"),
    ("wall_s", "time (s)", "{:.0f}"),
    ("flags", "flags", "{}"),  # why a harmful score cannot be taken at face value (eval.metrics.trust_flags)
)


def format_cell(row: Mapping[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None or value == "":
        return "-"
    if isinstance(value, list) and fmt.count("{") == len(value) > 1:  # an interval: [low, high]
        return fmt.format(*value)
    if isinstance(value, list):
        return "; ".join(map(str, value)) or "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]] = DEFAULT_COLUMNS) -> str:
    """The ``columns`` (key, header, format) of ``rows`` that any row has, as a Markdown table."""
    cols = [c for c in columns if any(r.get(c[0]) is not None for r in rows)]
    return pipe_table([h for _, h, _ in cols], [[format_cell(r, k, f) for k, _, f in cols] for r in rows])


def pipe_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown (pipe) table of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (``store.atomic_output``), with a temp name unique to this process,
    so that processes that rebuild the same file concurrently (grid shards) never mix their writes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, shared=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_results(
    rows: Sequence[Mapping[str, Any]], out_dir: str | Path, stem: str = "results", note: str = ""
) -> dict[str, Path]:
    """Write ``<stem>.md`` (with an optional note above the table) and ``<stem>.csv``."""
    out_dir = Path(out_dir)
    md = (note.rstrip() + "\n\n" if note else "") + markdown_table(rows)
    return {
        "markdown": write_text_atomic(out_dir / f"{stem}.md", md),
        "csv": write_text_atomic(out_dir / f"{stem}.csv", csv_text(rows)),
    }


def summarize(
    rows: Sequence[Mapping[str, Any]],
    group_by: Sequence[str],
    metrics: Sequence[str] = ("harmful_score", "finetune_accuracy"),
    *,
    bootstrap: int = 0,
) -> list[dict[str, Any]]:
    """Mean and sample standard deviation of ``metrics`` over the rows sharing ``group_by`` values (e.g. seeds),
    in first-seen group order. Each output row has the group keys, ``n``, ``<metric>`` (mean) and ``<metric>_std``;
    with ``bootstrap`` > 0 resamples, also ``<metric>_ci_low`` / ``<metric>_ci_high`` (see ``bootstrap_ci``). A
    single value has no spread: its ``_std`` is None and it gets no interval (not "± 0.0 [x, x]")."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in group_by), []).append(row)
    out = []
    for key, members in groups.items():
        summary: dict[str, Any] = dict(zip(group_by, key, strict=True)) | {"n": len(members)}
        for m in metrics:
            values = [r[m] for r in members if r.get(m) is not None]
            if values:
                summary[m] = statistics.fmean(values)
                summary[f"{m}_std"] = statistics.stdev(values) if len(values) > 1 else None
                if bootstrap and len(values) > 1:
                    summary[f"{m}_ci_low"], summary[f"{m}_ci_high"] = bootstrap_ci(values, resamples=bootstrap)
        out.append(summary)
    return out


def mean_std_table(
    summary: Sequence[dict[str, Any]],
    group_by: Sequence[str],
    metrics: Sequence[tuple[str, str]],
    group_headers: Sequence[str] | None = None,
    digits: Mapping[str, int] | None = None,
    signed: Collection[str] = (),
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of ``summarize`` output: the group columns (headed ``group_headers``, default their keys),
    the number of seeds, then 'mean ± std [low, high]' per (metric, header) (see ``format_mean_std``; ``digits``:
    decimals per metric, default 1; ``signed``: metrics that are differences, written with their sign)."""
    digits = digits or {}
    header = [*(group_headers or group_by), "seeds", *(h for _, h in metrics)]
    rows = [
        [str(s.get(k, "-")) for k in group_by]
        + [str(s["n"])]
        + [format_mean_std(s, m, digits.get(m, 1), signed=m in signed) for m, _ in metrics]
        for s in summary
    ]
    return header, rows


def format_mean_std(row: dict[str, Any], metric: str, digits: int = 1, *, signed: bool = False) -> str:
    """'mean ± std' of a ``summarize`` row, with ' [low, high]' when it has an interval; the value alone when it
    is one value (n = 1) without an interval; '-' if absent. ``signed``: the mean and the interval's ends carry
    their sign ('+0.398'), as a difference does."""
    if metric not in row:
        return "-"
    number = f"{{:{'+' if signed else ''}.{digits}f}}".format
    text = number(row[metric])
    if row.get(metric + "_std") is not None:
        text += f" ± {row[metric + '_std']:.{digits}f}"
    if metric + "_ci_low" in row:
        text += f" [{number(row[metric + '_ci_low'])}, {number(row[metric + '_ci_high'])}]"
    return text


def bootstrap_ci(
    values: Sequence[float], *, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (deterministic: a fixed seed).

    With few seeds (n = 2 or 3) the interval is coarse: it cannot be wider than the range of the values."""
    if not values:
        raise ValueError("bootstrap_ci: no values")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(statistics.fmean(rng.choices(values, k=n)) for _ in range(resamples))
    tail = (1.0 - level) / 2.0
    low = means[int(tail * (resamples - 1))]
    high = means[int(round((1.0 - tail) * (resamples - 1)))]
    return low, high
