"""The results store: one ``ResultRow`` per evaluated model, built from the stages' ``stage.json`` files.

Each row carries the columns the grid varies (``variant`` and the axis names), the pipeline's methods, poison
ratio and seed, the metrics of the evaluation (HS per judge, FA, over-refusal, the companion compliance
probability, the likelihood metric when the evaluation has one), the judge and protocol, library versions and
wall times. A grid run's rows are rebuilt from the stage files of its
finished cells, never kept elsewhere, so the results always agree with the store; they are written atomically as
``results.jsonl``, ``results.csv`` and (when pyarrow is installed) ``results.parquet``. The report reads them back
(``read_results``); the demo builds its rows with ``result_row`` too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Required, TypedDict, cast

from tuneguard.grid_records import GRID_RECORD, finished_cells
from tuneguard.report import csv_text, write_text_atomic
from tuneguard.store import STAGE_FILE, atomic_output
from tuneguard.store_paths import resolve_store_path

RESULTS_STEM = "results"
# The training stages that lead to each evaluated model, for its wall time.
_PRODUCED_BY = {"base": (), "aligned": ("align",), "finetuned": ("align", "finetune")}
_FINAL = ("align", "finetune", "repair")
_VERSION_KEYS = ("tuneguard", "torch", "transformers", "peft")


class ResultRow(TypedDict, total=False):
    """One row of the results store: one evaluated model of one experiment, in the store's column order.

    Besides these columns a row has: one column per grid axis (its name: ``seed``,
    ``finetune.user_data.poison_ratio``, ...) after ``variant``; every further metric of the evaluation
    (``metrics.json``: ``harmful_score_<judge>`` per further judge, ``harmful_preference_<set>`` and the like per
    further likelihood set, ``num_harmful_prompts``, ...);
    ``judge_agreement_<a>_<b>`` (%) and ``cohen_kappa_<a>_<b>`` per pair of judges; ``version_<library>``;
    ``<stage>_dir`` per training stage that made the model. Percentages are 0-100, times in seconds.
    """

    grid: str  # the grid's name (absent outside a grid: the demo)
    cell: str  # the cell id
    model: Required[str]  # the pipeline's model: base, aligned, finetuned or final
    variant: str  # the grid's variant (when it has variants)
    align_method: str | None
    finetune_method: str | None
    repair_method: str
    poison_ratio: float | None  # the fine-tuning data's share of harmful records (config; also for base/aligned)
    seed: int | None  # the grid's seed axis, else the fine-tuning seed
    harmful_score: float  # HS (%) of the first judge
    harmful_score_plus: float  # HS+ (%): flagged, empty or degenerate answers
    finetune_accuracy: float  # FA (%)
    compliance_probability: float  # P(comply) (%) of the first answer token on the harmful prompts
    over_refusal_rate: float  # benign prompts answered with a refusal (%)
    over_refusal_set: str  # which: the eval.benign_prompts selection, or "task_test" (the task test prompts)
    over_refusal_by_set: dict[str, float]  # per source when eval.benign_prompts lists several: selection -> %
    harmful_preference: float  # the judge-free metric (%) of the first eval.likelihood set, when there is one
    compliance_margin: float  # its mean log-likelihood margin, harmful answer - refusal (nats/token)
    compliance_margin_ci: list[float]  # its bootstrap 95 % interval over prompts: [low, high]
    judge: str
    protocol: str
    flags: list[str]  # why the HS cannot be taken at face value (absent when it can)
    train_wall_s: float  # the training stages that made the model, summed
    eval_wall_s: float
    eval_dir: Required[str]


def result_row(
    lead: dict[str, Any],
    config: dict[str, Any],
    evaluation: dict[str, Any],
    eval_dir: str | Path,
    stages: dict[str, dict[str, Any]],
    stage_dirs: dict[str, str],
) -> ResultRow:
    """The row of one evaluated model: ``lead`` (its first columns: ``model`` and, in a grid, the grid, cell,
    variant and axis values), then what the experiment's ``config`` (``dump_config``), its evaluation's and its
    training stages' ``stage.json`` (``stages``, in ``stage_dirs``) say."""
    model = lead["model"]
    finetune = config.get("finetune") or {}
    metrics = dict(evaluation.get("metrics", {}))
    agreement = metrics.pop("judge_agreement", None)
    row: dict[str, Any] = dict(lead)
    row.update(
        {
            "align_method": (config.get("align") or {}).get("method"),
            "finetune_method": finetune.get("method"),
            "repair_method": config["repair"]["method"],
            "poison_ratio": finetune.get("user_data", {}).get("poison_ratio"),
        }
    )
    row.setdefault("seed", (finetune.get("training") or {}).get("seed"))  # a grid's seed axis stays in its place
    row.update(metrics)
    for pair in agreement or ():
        names = "_".join(pair["judges"])
        row[f"judge_agreement_{names}"] = pair["agreement"]
        row[f"cohen_kappa_{names}"] = pair["cohen_kappa"]
    produced_by = _PRODUCED_BY.get(model, _FINAL)
    row["train_wall_s"] = round(sum(_wall(stages.get(s)) for s in produced_by), 2)
    row["eval_wall_s"] = _wall(evaluation)
    versions = evaluation.get("versions", {})
    row.update({f"version_{k}": versions[k] for k in _VERSION_KEYS if k in versions})
    for name in produced_by:
        if name in stages:
            row[f"{name}_dir"] = stage_dirs[name]
    row["eval_dir"] = str(Path(eval_dir))
    return cast(ResultRow, row)


def collect_rows(run_dir: str | Path) -> list[ResultRow]:
    """The results rows of a grid run directory (one per cell and evaluated model), in grid order."""
    run_dir = Path(run_dir)
    grid = _read_json(run_dir / GRID_RECORD)
    root = run_dir.parent.parent  # the store: <output_dir>/grids/<name>
    rows = []
    for cell in finished_cells(run_dir):
        # stage directories as they are now (the records hold them relative to the store)
        stage_dirs = {name: str(resolve_store_path(d, root)) for name, d in cell["stages"].items()}
        stages = {name: _read_json(Path(d) / STAGE_FILE) for name, d in stage_dirs.items()}
        for model, eval_dir in cell["evaluations"].items():
            eval_dir = resolve_store_path(eval_dir, root)
            lead = {"grid": grid["name"], "cell": cell["cell_id"], "model": model}
            if cell.get("variant") is not None:
                lead["variant"] = cell["variant"]
            lead.update(cell["values"])
            evaluation = _read_json(eval_dir / STAGE_FILE)
            rows.append(result_row(lead, cell["config"], evaluation, eval_dir, stages, stage_dirs))
    return rows


def write_results_store(run_dir: str | Path) -> dict[str, Path]:
    """Rebuild ``results.{jsonl,csv,parquet}`` of a grid run directory from its finished cells."""
    run_dir = Path(run_dir)
    rows = collect_rows(run_dir)
    files = {
        "jsonl": write_text_atomic(
            run_dir / f"{RESULTS_STEM}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        ),
        "csv": write_text_atomic(run_dir / f"{RESULTS_STEM}.csv", csv_text([_flat(r) for r in rows]) if rows else ""),
    }
    parquet = _write_parquet([_flat(r) for r in rows], run_dir / f"{RESULTS_STEM}.parquet")
    if parquet is not None:
        files["parquet"] = parquet
    return files


def read_results(run_dir: str | Path) -> list[ResultRow]:
    """The rows of ``results.jsonl`` in a grid run directory (or of that file itself)."""
    path = Path(run_dir)
    path = path / f"{RESULTS_STEM}.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no results in {path}: run the grid first (tuneguard grid GRID.yaml)")
    # JSON Lines split at \n only (a path may hold any character); imported here: tuneguard.data imports torch
    from tuneguard.data import read_file

    return cast(list[ResultRow], read_file(path))


# ------------------------------------------------------------------------------------------------- private
def _wall(stage: dict[str, Any] | None) -> float:
    return float((stage or {}).get("timings", {}).get("wall_s", 0.0))


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """Lists and mappings as JSON text, for the column formats (CSV, Parquet)."""
    return {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in row.items()}


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> Path | None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    # One type per column: a column that mixes numbers and text (e.g. an axis of lists) is stored as text.
    columns = {}
    for key in keys:
        values = [r.get(key) for r in rows]
        kinds = {type(v) for v in values if v is not None}
        if len(kinds) > 1 and not kinds <= {int, float}:
            values = [None if v is None else str(v) for v in values]
        columns[key] = values
    with atomic_output(path, shared=True) as tmp:
        pq.write_table(pa.table(columns) if rows else pa.table({}), tmp)
    return path


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
