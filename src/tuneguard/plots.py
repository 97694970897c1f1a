"""Training-curve plots from a Trainer's log history (``trainer.state.log_history`` or a trainer_state.json).

Drawn with matplotlib's Agg canvas directly (no pyplot, no global backend switch), so it works headless and
inside other people's programs. Any logged scalar can be plotted (a method's ``curve_keys`` name its own).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Bookkeeping entries of a log record that are not training curves.
_NOT_CURVES = {"step", "epoch", "total_flos", "learning_rate"}


def plot_training_curves(
    log_history: Sequence[dict[str, Any]] | str | Path,
    out_png: str | Path,
    keys: Sequence[str] | None = None,
    *,
    state_key: str = "lisa/state",
    title: str | None = None,
) -> Path:
    """Plot logged scalars against the optimizer step, one panel per key, and write a PNG; return its path.

    ``log_history``: the list of log records (each with a ``step``), or the path of a ``trainer_state.json``
    (or of a JSON file holding the list itself). ``keys``: the scalars to draw; default: every numeric training
    scalar found (``loss``, ``grad_norm``, a method's own keys...).
    Where ``state_key`` is logged (Lisa: 1 = alignment state, 0 = fine-tune), each panel shades the spans
    that ended in the alignment state (exact with ``logging_steps=1``, the last step of each window otherwise).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = [r for r in _load_history(log_history) if "step" in r and not _is_summary(r)]
    if keys is None:
        keys = _numeric_keys(records)
    if not keys:
        raise ValueError("nothing to plot: the log history has no numeric training scalars")

    figure = Figure(figsize=(7.0, 1.9 * len(keys) + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    spans = _state_spans(records, state_key)
    for ax, key in zip(axes, keys, strict=True):
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float)]
        for start, end in spans:
            ax.axvspan(start, end, color="tab:orange", alpha=0.15, linewidth=0)
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="." if len(points) < 60 else None, linewidth=1.2)
        ax.set_ylabel(key.split("/")[-1].replace("_", " "))
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("optimizer step")
    if spans:
        axes[0].set_title("shaded: alignment state", fontsize=8, loc="right")
    if title:
        figure.suptitle(title)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    return out


def _load_history(source: Sequence[dict[str, Any]] | str | Path) -> list[dict[str, Any]]:
    if isinstance(source, str | Path):
        data = json.loads(Path(source).read_text())
        return list(data["log_history"] if isinstance(data, dict) else data)
    return list(source)


def _is_summary(record: dict[str, Any]) -> bool:
    # The Trainer's end-of-training record (train_runtime, train_loss, ...) and evaluation records.
    return "train_runtime" in record or any(k.startswith("eval_") for k in record)


def _numeric_keys(records: list[dict[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key not in _NOT_CURVES and isinstance(value, int | float) and not isinstance(value, bool):
                keys[key] = None
    return list(keys)


def _state_spans(records: list[dict[str, Any]], state_key: str) -> list[tuple[float, float]]:
    spans: list[tuple[float, float]] = []
    previous = 0
    for record in records:
        if state_key not in record:
            continue
        if record[state_key] >= 0.5:
            if spans and spans[-1][1] == previous:
                spans[-1] = (spans[-1][0], record["step"])
            else:
                spans.append((previous, record["step"]))
        previous = record["step"]
    return spans


# --------------------------------------------------------------------------------------- grid result plots
def plot_metric_vs_ratio(
    summary: Sequence[dict[str, Any]],
    out_png: str | Path,
    *,
    series: Sequence[str],
    metric: str = "harmful_score",
    ylabel: str = "harmful score HS (%)",
    ylim: tuple[float, float] | None = (-3, 103),
    title: str | None = None,
) -> Path:
    """One line per ``series`` group (e.g. the method variant) of ``metric`` against the poison ratio p, from
    ``report.summarize`` rows (mean, error bars ± one standard deviation over seeds). Each series is shifted
    slightly along p (a dodge of < 1 % of the p range per series), so that series that coincide stay visible."""
    figure, ax = _figure((6.4, 4.2))
    groups = _series(summary, series)
    ratios = [_ratio(r) for r in summary if r.get("poison_ratio") is not None]
    dodge = 0.008 * ((max(ratios) - min(ratios)) if ratios else 0.0)
    for i, ((label, rows), marker) in enumerate(zip(groups.items(), _markers(), strict=False)):
        rows = sorted((r for r in rows if metric in r and r.get("poison_ratio") is not None), key=_ratio)
        shift = (i - (len(groups) - 1) / 2) * dodge
        if rows:
            ax.errorbar(
                [_ratio(r) + shift for r in rows],
                [r[metric] for r in rows],
                yerr=[r.get(metric + "_std") or 0.0 for r in rows],
                marker=marker,
                capsize=3,
                linewidth=1.4,
                label=label,
            )
    ax.set_xlabel("poison ratio p (share of harmful records in the user data)")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(figure, out_png, title or f"{ylabel} vs p (mean ± std over seeds)")


def plot_tradeoff(
    summary: Sequence[dict[str, Any]],
    out_png: str | Path,
    *,
    series: Sequence[str],
    title: str | None = None,
) -> Path:
    """The defense trade-off: harmful score against fine-tune accuracy, one marker per ``series`` group and p,
    joined in order of p and labelled at the largest p; error bars ± one standard deviation over seeds. Lower
    right is better."""
    figure, ax = _figure((6.4, 4.6))
    for (label, rows), marker in zip(_series(summary, series).items(), _markers(), strict=False):
        rows = [r for r in rows if "harmful_score" in r and "finetune_accuracy" in r]
        if not rows:
            continue
        rows.sort(key=lambda r: _ratio(r) if r.get("poison_ratio") is not None else 0.0)
        bars = ax.errorbar(
            [r["finetune_accuracy"] for r in rows],
            [r["harmful_score"] for r in rows],
            xerr=[r.get("finetune_accuracy_std") or 0.0 for r in rows],
            yerr=[r.get("harmful_score_std") or 0.0 for r in rows],
            fmt=marker + "-",
            linewidth=0.8,
            elinewidth=0.6,
            capsize=2,
            alpha=0.85,
            label=label,
        )
        last = rows[-1]
        if last.get("poison_ratio") is not None:
            ax.annotate(
                f"p={_ratio(last):g}",
                (last["finetune_accuracy"], last["harmful_score"]),
                textcoords="offset points",
                xytext=(4, 3),
                fontsize=7,
                color=bars[0].get_color(),
            )
    ax.set_xlabel("fine-tune accuracy FA (%)  (higher is better)")
    ax.set_ylabel("harmful score HS (%)  (lower is better)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(figure, out_png, title or "trade-off: harm vs task accuracy (mean ± std over seeds)")


def plot_loss_overlay(
    histories: dict[str, Sequence[dict[str, Any]] | str | Path],
    out_png: str | Path,
    *,
    key: str = "loss",
    title: str | None = None,
) -> Path:
    """One logged scalar (default the Trainer's ``loss``) against the step, one line per labelled history."""
    figure, ax = _figure((6.4, 3.8))
    for label, history in histories.items():
        points = [
            (r["step"], r[key])
            for r in _load_history(history)
            if "step" in r and not _is_summary(r) and isinstance(r.get(key), int | float)
        ]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="." if len(points) < 60 else None, linewidth=1.3, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(key.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(figure, out_png, title)


def _figure(size: tuple[float, float]) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(figure: Any, out_png: str | Path, title: str | None) -> Path:
    if title:
        figure.suptitle(title, fontsize=10)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    return out


def _series(summary: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in summary:
        label = ", ".join(f"{row.get(k)}" if k == "variant" else f"{k}={row.get(k)}" for k in keys) or "all"
        groups.setdefault(label, []).append(row)
    return groups


def _markers() -> Any:
    """Marker shapes to cycle through, so that series drawn on top of each other stay distinguishable."""
    import itertools

    return itertools.cycle("os^Dv<>PX*")


def _ratio(row: dict[str, Any]) -> float:
    return float(row["poison_ratio"])
