"""The executor interface, and what every backend shares: the run around it, results, optional imports."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from tuneguard.config import ConfigError
from tuneguard.grid import Cell, GridRun, GridSpec, cell_record_path, prepare_run
from tuneguard.gridexec.plan import StagePlan, plan_stages
from tuneguard.report_page import build_report
from tuneguard.results import write_results_store


class GridExecutor(Protocol):
    """Runs the given cells of a grid (and the shared stages of ``plan`` before them) on some engine."""

    def run(self, spec: GridSpec, cells: list[Cell], plan: StagePlan, *, resume: bool) -> list[Cell]:
        """Run (or submit) ``cells``; return those that finished before it returned."""
        ...


def run_grid_with(
    executor: GridExecutor, spec: GridSpec, *, overwrite: bool = False, resume: bool = False, report: bool = True
) -> GridRun:
    """Run the grid's unfinished cells with ``executor``; rebuild the results store (and the report) at the end.

    ``overwrite`` and ``resume`` mean what they mean for the serial ``run_grid``. Every cell that will run is
    pre-flighted (``grid.prepare_run``) before anything is submitted, so bad input stops the grid before the
    first stage."""
    _, selected = prepare_run(spec, overwrite=overwrite)
    todo = [c for c in selected if not cell_record_path(spec.run_dir, c).is_file()]
    ran = executor.run(spec, todo, plan_stages(todo), resume=resume) if todo else []
    refresh_results(spec.run_dir, report=report)
    skipped = [c for c in selected if c not in todo]
    return GridRun(ran=ran, skipped=skipped, run_dir=spec.run_dir)


def refresh_results(run_dir: Path, *, report: bool) -> None:
    """Rebuild the results store (and the report) of a grid run directory from its finished cells."""
    write_results_store(run_dir)
    if report:
        build_report(run_dir)


def progress_columns() -> tuple:
    """The columns of a parallel backend's overall bar: description, bar, cells done of all, elapsed time."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def cell_finished(run_dir: Path, cell: Cell, record: dict, console: Any, *, report: bool) -> None:
    """After a parallel backend's cell has finished: rebuild the results store (and the report), say so in a line."""
    refresh_results(run_dir, report=report)
    console.print(f"cell {cell.index} ({cell.label}) finished in {record['wall_s']:.0f} s", highlight=False)


def require_extra(module: str, extra: str, flag: str) -> ModuleType:
    """Import an optional dependency, or stop with one line that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{flag} needs the optional package {module!r}: pip install 'tuneguard[{extra}]'") from None
