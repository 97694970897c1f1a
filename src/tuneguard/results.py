"""The results store of a grid run: one row per evaluated model, rebuilt from the finished cells' stage files.

Each row carries the columns the grid varies (``variant`` and the axis names), the pipeline's methods, poison
ratio and seed, the metrics of the evaluation (HS per judge, FA, the companion compliance probability), the
judge and protocol, library versions and wall times. The rows are read from the stores' ``stage.json`` files of
the finished cells, never kept elsewhere, so the results always agree with the store. Written atomically as
``results.jsonl``, ``results.csv`` and (when pyarrow is installed) ``results.parquet``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneguard.grid_records import GRID_RECORD, finished_cells
from tuneguard.report import csv_text, write_text_atomic
from tuneguard.store import STAGE_FILE, atomic_output
from tuneguard.store_paths import resolve_store_path

RESULTS_STEM = "results"
# The training stages that lead to each evaluated model, for its wall time.
_PRODUCED_BY = {"base": (), "aligned": ("align",), "finetuned": ("align", "finetune")}
_FINAL = ("align", "finetune", "repair")
_VERSION_KEYS = ("tuneguard", "torch", "transformers", "peft")


def collect_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """The results rows of a grid run directory (one per cell and evaluated model), in grid order."""
    run_dir = Path(run_dir)
    grid = _read_json(run_dir / GRID_RECORD)
    root = run_dir.parent.parent  # the store: <output_dir>/grids/<name>
    rows = []
    for record in finished_cells(run_dir):
        cell = {
            **record,  # stage directories as they are now (the records hold them relative to the store)
            "stages": {name: str(resolve_store_path(d, root)) for name, d in record["stages"].items()},
            "evaluations": {name: str(resolve_store_path(d, root)) for name, d in record["evaluations"].items()},
        }
        stages = {name: _read_json(Path(d) / STAGE_FILE) for name, d in cell["stages"].items()}
        for model, eval_dir in cell["evaluations"].items():
            rows.append(_row(grid, cell, stages, model, _read_json(Path(eval_dir) / STAGE_FILE)))
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


def read_results(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``results.jsonl`` in a grid run directory (or of that file itself)."""
    path = Path(run_dir)
    path = path / f"{RESULTS_STEM}.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no results in {path}: run the grid first (tuneguard grid GRID.yaml)")
    # JSON Lines split at \n only (a path may hold any character); imported here: tuneguard.data imports torch
    from tuneguard.data import read_file

    return read_file(path)


# ------------------------------------------------------------------------------------------------- private
def _row(
    grid: dict[str, Any], cell: dict[str, Any], stages: dict[str, dict], model: str, evaluation: dict[str, Any]
) -> dict[str, Any]:
    cfg = cell["config"]
    finetune = cfg.get("finetune") or {}
    metrics = dict(evaluation.get("metrics", {}))
    agreement = metrics.pop("judge_agreement", None)
    row: dict[str, Any] = {"grid": grid["name"], "cell": cell["cell_id"], "model": model}
    if cell.get("variant") is not None:
        row["variant"] = cell["variant"]
    row.update(cell["values"])
    row.update(
        {
            "align_method": (cfg.get("align") or {}).get("method"),
            "finetune_method": finetune.get("method"),
            "repair_method": cfg["repair"]["method"],
            "poison_ratio": finetune.get("user_data", {}).get("poison_ratio"),
        }
    )
    row.setdefault("seed", (finetune.get("training") or {}).get("seed"))
    row.update(metrics)
    if agreement:
        row.update({f"judge_agreement_{name}": value for name, value in agreement.items()})
    produced_by = _PRODUCED_BY.get(model, _FINAL)
    row["train_wall_s"] = round(sum(_wall(stages.get(s)) for s in produced_by), 2)
    row["eval_wall_s"] = _wall(evaluation)
    versions = evaluation.get("versions", {})
    row.update({f"version_{k}": versions[k] for k in _VERSION_KEYS if k in versions})
    for name in produced_by:
        if name in stages:
            row[f"{name}_dir"] = cell["stages"][name]
    row["eval_dir"] = str(Path(cell["evaluations"][model]))
    return row


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
