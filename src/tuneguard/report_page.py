"""The report of a grid run: ``report.md`` and a self-contained ``report.html`` (plots embedded as base64 PNG).

Built from the run's results store (``results.jsonl``, see ``results.py``): per evaluated model a table of HS / FA
as mean ± std over seeds with bootstrap 95 % intervals, HS and FA against the poison ratio per method, the HS-FA
trade-off, the training curves that a fine-tuning method declares (``TrainingMethod.curve_keys``) and each
alignment method's loss. The page names the protocol and judge, and says so when the results come from the offline
simulation.
"""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneguard.config import ConfigError
from tuneguard.grid_records import read_grid_record
from tuneguard.plots import plot_loss_overlay, plot_metric_vs_ratio, plot_tradeoff, plot_training_curves
from tuneguard.report import OFFLINE_NOTE, mean_std_table, pipe_table, summarize, write_text_atomic
from tuneguard.results import ResultRow, read_results
from tuneguard.store import OutputError

METRICS = (
    ("harmful_score", "HS (%)"),
    ("finetune_accuracy", "FA (%)"),
    ("compliance_probability", "P(comply) (%)"),
    ("over_refusal_rate", "over-refusal (%)"),
    ("harmful_preference", "harm. pref. (%)"),
    ("compliance_margin", "margin (nats/token)"),
)
DIGITS = {"compliance_margin": 3}  # decimals, where one is too coarse (a margin is a fraction of a nat)
SIGNED = {"compliance_margin"}  # differences, written with their sign
MODEL_ORDER = ("final", "finetuned", "aligned", "base")
BOOTSTRAP_RESAMPLES = 2000
_POISON_KEY = "finetune.user_data.poison_ratio"


@dataclass
class _Block:
    kind: str  # "h2", "p", "table", "img"
    text: str = ""
    header: Sequence[str] = ()
    rows: Sequence[Sequence[str]] = ()
    path: Path | None = None


def build_report(run_dir: str | Path, *, bootstrap: int = BOOTSTRAP_RESAMPLES) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` into the grid run directory; return the paths."""
    run_dir = Path(run_dir)
    rows = read_results(run_dir)
    if not rows:
        raise OutputError(f"{run_dir}: the results store is empty (no finished cell yet)")
    grid = read_grid_record(run_dir)
    series = _series_columns(grid, rows)
    blocks = [_Block("p", _provenance(grid, rows))]
    for model in sorted({r["model"] for r in rows}, key=_model_rank):
        blocks += _model_table(model, [r for r in rows if r["model"] == model], series, bootstrap)
    blocks += _plots(rows, series, run_dir / "plots")
    title = f"tuneguard report: {grid.get('name') or run_dir.name}"
    return {
        "markdown": write_text_atomic(run_dir / "report.md", _markdown(title, blocks, run_dir)),
        "html": write_text_atomic(run_dir / "report.html", _html(title, blocks)),
    }


# ------------------------------------------------------------------------------------------------- content
def _provenance(grid: dict[str, Any], rows: list[ResultRow]) -> str:
    protocols = sorted({str(r.get("protocol")) for r in rows})
    judges = sorted({str(r.get("judge")) for r in rows})
    versions = {
        k.removeprefix("version_"): sorted({str(r[k]) for r in rows}) for k in rows[0] if k.startswith("version_")
    }
    seeds = sorted({r.get("seed") for r in rows}, key=str)
    text = (
        f"{len({r['cell'] for r in rows})} finished cells of {grid.get('cells', '?')}; "
        f"protocol {', '.join(protocols)}; "
        f"judge {', '.join(judges)}; seeds {', '.join(map(str, seeds))}; "
        + "; ".join(f"{k} {', '.join(v)}" for k, v in versions.items())
        + ". Mean ± sample std over seeds, then the percentile-bootstrap 95 % interval of the mean "
        f"({BOOTSTRAP_RESAMPLES} resamples; with 2-3 seeds it cannot be wider than the seeds' range); a single "
        "seed (seeds = 1) is shown alone, without a spread or an interval."
    )
    if any(r.get("protocol") == "tuneguard-offline" or r.get("judge") == "offline" for r in rows):
        text = "**This is a simulation.** " + OFFLINE_NOTE + "\n\n" + text
    return text


def _model_table(model: str, rows: list[ResultRow], series: list[str], bootstrap: int) -> list[_Block]:
    rows = list({r["eval_dir"]: r for r in rows}.values())  # one evaluation can serve several cells
    if model in ("aligned", "base"):  # the fine-tuning settings do not change these models
        series = ["align_method"] if model == "aligned" else []
        group = series
    else:
        group = [*series, "poison_ratio"]
    metrics = [(m, h) for m, h in METRICS if any(r.get(m) is not None for r in rows)]
    metrics += [(k, f"HS {k.removeprefix('harmful_score_')} (%)") for k in _extra_judges(rows)]
    metrics += [(k, f"harm. pref. {k.removeprefix('harmful_preference_')} (%)") for k in _extra_likelihood_sets(rows)]
    summary = summarize(rows, group, [m for m, _ in metrics], bootstrap=bootstrap)
    for one in (s for s in summary if s["n"] == 1):  # one evaluation: its margin's interval is over its prompts
        (row,) = [r for r in rows if all(r.get(g) == one.get(g) for g in group)]
        if interval := row.get("compliance_margin_ci"):
            one["compliance_margin_ci_low"], one["compliance_margin_ci_high"] = interval
    header, table = mean_std_table(summary, group, metrics, [_short(g) for g in group], DIGITS, SIGNED)
    flagged = [r for r in rows if r.get("flags")]
    if flagged:  # evaluations whose HS cannot be taken at face value (empty answers, ...): counted per group
        counts = Counter(tuple(r.get(g) for g in group) for r in flagged)
        header.append("flagged")
        for line, s in zip(table, summary, strict=True):
            line.append(f"{counts.get(tuple(s.get(g) for g in group), 0)} of {s['n']}")
    what = {"final": "the final model (after repair, if any)", "aligned": "the aligned model, before the attack"}
    blocks = [
        _Block("h2", f"Model: {model}"),
        _Block(
            "p",
            f"HS / FA of {what.get(model, 'the ' + model + ' model')}: mean ± std [bootstrap 95 % CI over seeds; "
            "for the margin of a single evaluation, over its prompts]. Over-refusal: % of benign prompts refused "
            "(the task test prompts unless eval.benign_prompts names a set); harm. pref. / margin: the judge-free "
            "metric (eval.likelihood).",
        ),
        _Block("table", header=header, rows=table),
    ]
    if flagged:
        blocks.append(
            _Block(
                "p",
                "**Flagged evaluations** (their HS cannot be taken at face value): "
                + "; ".join(
                    f"cell {r.get('cell')} ({', '.join(f'{_short(g)} {r.get(g)}' for g in group)}): "
                    + ", ".join(r["flags"])
                    for r in flagged
                )
                + ".",
            )
        )
    return blocks


def _plots(rows: list[ResultRow], series: list[str], out: Path) -> list[_Block]:
    final = list({r["eval_dir"]: r for r in rows if r["model"] == "final"}.values())
    if not final:
        return []
    summary = summarize(final, [*series, "poison_ratio"])
    blocks = [_Block("h2", "Plots")]
    if len({r.get("poison_ratio") for r in final}) > 1:
        path = plot_metric_vs_ratio(summary, out / "hs_vs_poison_ratio.png", series=series)
        blocks.append(
            _Block(
                "img",
                "Harmful score of the final model against the poison ratio, per method (each method shifted "
                "slightly along p so that coinciding methods stay visible).",
                path=path,
            )
        )
        path = plot_metric_vs_ratio(
            summary,
            out / "fa_vs_poison_ratio.png",
            series=series,
            metric="finetune_accuracy",
            ylabel="fine-tune accuracy FA (%)",
            ylim=None,
        )
        blocks.append(_Block("img", "Fine-tune accuracy of the final model against the poison ratio.", path=path))
    if any("finetune_accuracy" in s for s in summary):
        path = plot_tradeoff(summary, out / "tradeoff.png", series=series)
        blocks.append(
            _Block(
                "img",
                "The trade-off: HS against FA (lower right is better); each method's points are joined in order of p, "
                "from p = 0 to the labelled largest p.",
                path=path,
            )
        )
    for row in _one_per_series(final, series, lambda r: bool(_curve_keys(r.get("finetune_method")))):
        history = Path(row.get("finetune_dir", "")) / "log_history.json"
        if history.is_file():
            name = _slug(_label(row, series))
            logged = json.loads(history.read_text())
            keys = [k for k in _curve_keys(row["finetune_method"]) if any(k in h for h in logged)] or None
            caption = f"Training curves of {_label(row, series)} (p = {row['poison_ratio']}, seed {row['seed']})."
            path = plot_training_curves(history, out / f"curves_{name}.png", keys, title=caption.rstrip("."))
            blocks.append(_Block("img", caption, path=path))
    aligned = {
        f"{r['align_method']} (seed {r['seed']})": Path(r["align_dir"]) / "log_history.json"
        for r in _one_per_series(final, ["align_method"], lambda r: bool(r.get("align_dir")))
    }
    aligned = {k: v for k, v in aligned.items() if v.is_file()}
    if aligned:
        path = plot_loss_overlay(aligned, out / "alignment_loss.png", title="alignment stage: training loss")
        blocks.append(_Block("img", "Alignment-stage training loss per alignment method.", path=path))
    return blocks


def _one_per_series(rows: list[ResultRow], series: list[str], keep: Any) -> list[ResultRow]:
    """Per series group, the row with the largest poison ratio and then the smallest seed."""
    chosen: dict[tuple, ResultRow] = {}
    for r in sorted(rows, key=lambda r: (-(r.get("poison_ratio") or 0), str(r.get("seed")))):
        if keep(r):
            chosen.setdefault(tuple(r.get(k) for k in series), r)
    return list(chosen.values())


def _curve_keys(finetune_method: str | None) -> tuple[str, ...]:
    """The training curves the fine-tuning method declares (none for a method this process does not know)."""
    if finetune_method is None:
        return ()
    from tuneguard.methods import get_training_method  # the methods import torch: only when there are final rows

    try:
        return get_training_method("finetune", finetune_method).curve_keys
    except (ConfigError, LookupError):  # results of a plug-in method that is not installed here
        return ()


# ------------------------------------------------------------------------------------------------ grouping
def _series_columns(grid: dict[str, Any], rows: list[ResultRow]) -> list[str]:
    """The columns that tell methods/settings apart: the grid's columns without the seed and the poison ratio."""
    axes = {a["name"]: a["keys"] for a in grid.get("axes", [])}
    columns = grid.get("columns") or [c for c in ("variant",) if c in rows[0]]
    return [
        c
        for c in columns
        if c != "seed" and not all(k.endswith(".seed") for k in axes.get(c, [c])) and _POISON_KEY not in axes.get(c, [])
    ]


def _extra_judges(rows: list[ResultRow]) -> list[str]:
    return sorted({k for r in rows for k in r if k.startswith("harmful_score_")})


def _extra_likelihood_sets(rows: list[ResultRow]) -> list[str]:
    return sorted({k for r in rows for k in r if k.startswith("harmful_preference_")})


def _label(row: ResultRow, series: list[str]) -> str:
    return ", ".join(str(row.get(k)) if k == "variant" else f"{_short(k)}={row.get(k)}" for k in series) or "all"


def _short(column: str) -> str:
    return "p" if column == "poison_ratio" else column.rsplit(".", 1)[-1]


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text).strip("_")[:60] or "run"


def _model_rank(model: str) -> int:
    return MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER)


# ----------------------------------------------------------------------------------------------- rendering
def _markdown(title: str, blocks: list[_Block], run_dir: Path) -> str:
    out = [f"# {title}\n"]
    for b in blocks:
        if b.kind == "h2":
            out.append(f"## {b.text}\n")
        elif b.kind == "p":
            out.append(b.text + "\n")
        elif b.kind == "table":
            out.append(pipe_table(b.header, b.rows))
        elif b.kind == "img" and b.path is not None:
            out.append(f"![{b.text}]({b.path.relative_to(run_dir).as_posix()})\n\n{b.text}\n")
    return "\n".join(out)


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;"
    "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
    "figure{margin:1.5em 0}img{max-width:100%}figcaption{font-size:13px;color:#555}"
)


def _html(title: str, blocks: list[_Block]) -> str:
    esc = html.escape
    out = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>",
    ]
    for b in blocks:
        if b.kind == "h2":
            out.append(f"<h2>{esc(b.text)}</h2>")
        elif b.kind == "p":
            text = esc(b.text).replace("**", "")
            out.append("".join(f"<p>{part}</p>" for part in text.split("\n\n")))
        elif b.kind == "table":
            head = "".join(f"<th>{esc(h)}</th>" for h in b.header)
            body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in b.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b.kind == "img" and b.path is not None:
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            out.append(
                f"<figure><img alt='{esc(b.text)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{esc(b.text)}</figcaption></figure>"
            )
    out.append("</body></html>\n")
    return "\n".join(out)
