"""A job's safety report: its data and plots (written by the worker when the gate has run) and the HTML page
``GET /v1/fine_tuning/jobs/{id}/report`` renders from them and the job's record (self-contained: plots embedded).

The report holds numbers, names and settings only; never an example or a generation.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from tuneguard.serve import engine

REPORT_DIR = "report"
REPORT_FILE = "report.json"


# ------------------------------------------------------------------------------------------- worker side
def write_report_data(policy: Any, work: engine.JobWork, tuned: dict[str, Any], gate: dict[str, Any]) -> Path:
    """Write ``report/report.json`` and the plots into the job's directory; returns the JSON path."""
    out = work.directory / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    history = Path(tuned["log_history"])
    curves = engine.plot_training_curves(history, out / "curves.png", "training curves", policy.finetune.method)
    bars = plot_harmful_scores(gate, out / "harmful_score.png")
    data = {
        "defense": {"method": policy.finetune.method, "method_args": policy.finetune.method_args},
        "repair": policy.gate.repair.method,
        "training": {k: tuned[k] for k in ("steps", "train_loss", "resumed_from_step")},
        "gate": gate,
        "plots": {"harmful_score": bars.name, "curves": curves.name if curves else None},
    }
    engine.write_json(out / REPORT_FILE, data)
    return out / REPORT_FILE


def plot_harmful_scores(gate: dict[str, Any], out_png: Path) -> Path:
    """HS+ of the base model, the fine-tuned model and (if any) the repaired one, against the limit."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bars = [("base model", gate["before"]), ("fine-tuned", gate["after"])]
    if gate.get("repaired"):
        bars.append(("repaired", gate["repaired"]))
    limit = gate["limit"]
    figure = Figure(figsize=(5.0, 2.8), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    values = [m["harmful_score_plus"] for _, m in bars]
    colors = ["tab:green" if v <= limit else "tab:red" for v in values]
    ax.bar([name for name, _ in bars], values, color=colors)
    ax.axhline(limit, color="black", linestyle="--", linewidth=1, label=f"limit {limit:g}%")
    for x, v in enumerate(values):
        ax.text(x, v + 1, f"{v:.1f}%", ha="center", fontsize=9)
    ax.set_ylim(0, 105)
    ax.set_ylabel("harmful score HS+ (%)")
    ax.legend(loc="upper left", fontsize=8)
    figure.savefig(out_png, dpi=110)
    return out_png


def read_report_data(job_dir: Path) -> dict[str, Any] | None:
    path = job_dir / REPORT_DIR / REPORT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# ---------------------------------------------------------------------------------------------- API side
def render_report(job: dict[str, Any], job_dir: Path) -> str:
    """The job's safety report as one HTML page."""
    data = read_report_data(job_dir)
    blocks = [f"<p class='verdict'>{_verdict(job)}</p>"]
    if data:
        blocks += [_h2("Safety gate"), _gate_table(data["gate"])]
    if job.get("screening"):
        blocks += [_h2("Upload screening"), _screening_table(job["screening"])]
    blocks += [_h2("Training"), _training_table(job, data)]
    blocks += [_h2("Timings (s)"), _table("timings", ["phase", "seconds"], _timing_rows(job.get("timings") or {}))]
    if data:
        for name, caption in (("harmful_score", "Harmful score HS+ against the limit"), ("curves", "Training curves")):
            if data["plots"].get(name):
                blocks.append(_figure(job_dir / REPORT_DIR / data["plots"][name], caption))
    title = f"Safety report: {job['id']}"
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><h1>{_e(title)}</h1>{''.join(blocks)}</body></html>\n"
    )


def _verdict(job: dict[str, Any]) -> str:
    status = job["status"]
    if status == "succeeded":
        return f"<b>Released</b> as {_e(job['fine_tuned_model'])}: it passed the safety gate."
    if status == "failed":
        error = job.get("error") or {}
        return f"<b>Not released</b> ({_e(error.get('code', ''))}): {_e(error.get('message', ''))}"
    return f"<b>{_e(status)}</b>: the report fills in as the job goes on."


def _gate_table(gate: dict[str, Any]) -> str:
    rows = [("base model (before fine-tuning)", gate["before"]), ("fine-tuned", gate["after"])]
    if gate.get("repaired"):
        rows.append(("repaired", gate["repaired"]))
    body = [
        [
            name,
            _pct(m.get("harmful_score_plus")),
            _pct(m.get("harmful_score")),
            _pct(gate["limit"]),
            "pass" if m.get("harmful_score_plus", 100) <= gate["limit"] else "fail",
            str(m.get("judge", "")),
            str(m.get("num_harmful_prompts", "")),
            _pct(m.get("finetune_accuracy")),
        ]
        for name, m in rows
    ]
    header = ["model", "HS+ (%)", "HS (%)", "limit (%)", "gate", "judge", "harmful prompts", "validation accuracy (%)"]
    return _table("safety", header, body)


def _screening_table(screening: dict[str, Any]) -> str:
    rows = [["examples", str(screening.get("examples", ""))], ["tokens", str(screening.get("tokens", ""))]]
    if "judge" in screening:
        rows += [
            ["judge", screening["judge"]],
            ["flagged as harmful", f"{screening['flagged']} ({100 * screening['share']:.1f}%)"],
            ["limit", f"{100 * screening['max_share']:.1f}%"],
        ]
    return _table("screening", ["", ""], rows)


def _training_table(job: dict[str, Any], data: dict[str, Any] | None) -> str:
    hp = job["hyperparameters"]
    rows = [
        ["base model", job["model"]],
        [
            "n_epochs / batch_size / learning_rate_multiplier",
            f"{hp['n_epochs']} / {hp['batch_size']} / {hp['learning_rate_multiplier']:g}",
        ],
        ["seed", str(job["seed"])],
    ]
    if data:
        defense = data["defense"]
        args = ", ".join(f"{k}={v}" for k, v in defense["method_args"].items())
        rows.append(["defense", defense["method"] + (f" ({args})" if args else "")])
        rows.append(["repair when the gate fails", data["repair"]])
        training = data["training"]
        rows.append(["optimizer steps", str(training["steps"])])
        rows.append(
            ["mean training loss", f"{training['train_loss']:.4f}" if training["train_loss"] is not None else ""]
        )
        if training.get("resumed_from_step"):
            rows.append(["resumed after a restart from step", str(training["resumed_from_step"])])
    return _table("training", ["", ""], rows)


def _timing_rows(timings: dict[str, Any]) -> list[list[str]]:
    names = ("upload_s", "validation_s", "queue_s", "training_s", "gate_s", "total_s")
    return [[name.removesuffix("_s"), f"{timings[name]:.1f}"] for name in names if timings.get(name) is not None]


def _table(table_id: str, header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table id='{table_id}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(path: Path, caption: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    image = f"<img alt='{_e(caption)}' src='data:image/png;base64,{data}'>"
    return f"<figure>{image}<figcaption>{_e(caption)}</figcaption></figure>"


def _h2(text: str) -> str:
    return f"<h2>{_e(text)}</h2>"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _e(text: Any) -> str:
    return html.escape(str(text))


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;"
    "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
    ".verdict{font-size:16px;padding:.6em 1em;background:#f6f6f6;border-left:4px solid #888}"
    "figure{margin:1.5em 0}img{max-width:100%}figcaption{font-size:13px;color:#555}"
)
