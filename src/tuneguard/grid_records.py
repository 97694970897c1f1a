"""The records of a grid run directory (``<output_dir>/grids/<name>``): ``grid.json``, what the grid last run there
was (its columns, axes and cell ids), and ``cells/<cell_id>.json``, one per finished cell (written last, so a
record means a finished cell). ``grid`` writes them; the results store and the report read them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneguard.config import ConfigError
from tuneguard.untrusted import check_plain_name

CELLS_DIR = "cells"
GRID_RECORD = "grid.json"


def cell_record_file(run_dir: Path, cell_id: str) -> Path:
    """Where the record of the cell ``cell_id`` is (once the cell has finished)."""
    return run_dir / CELLS_DIR / f"{cell_id}.json"


def read_grid_record(run_dir: str | Path) -> dict[str, Any]:
    """The grid record of ``run_dir`` (empty when there is none, e.g. a copied ``results.jsonl`` alone)."""
    path = Path(run_dir) / GRID_RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def finished_cells(run_dir: str | Path) -> Iterator[dict[str, Any]]:
    """The records of the finished cells of the grid last run in ``run_dir``, in grid order.

    Records of cells that the grid no longer has (its file was edited) stay on disk but are left out."""
    run_dir = Path(run_dir)
    grid = json.loads((run_dir / GRID_RECORD).read_text(encoding="utf-8"))
    for cell_id in grid["cell_ids"]:
        # A run directory may come from elsewhere: its ids name files, which must stay inside cells/.
        check_plain_name(str(cell_id), f"{run_dir / GRID_RECORD}: cell id", ConfigError)
        path = cell_record_file(run_dir, cell_id)
        if path.is_file():
            yield json.loads(path.read_text(encoding="utf-8"))
