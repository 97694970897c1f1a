"""Experiment grids: one base experiment, expanded over named variants and a cartesian product of axes.

A grid file is YAML with these top-level keys (nothing else; each is optional except ``base``)::

    name: efficacy                       # the grid's name: its run directory is <output_dir>/grids/<name>
    base: ../examples/demo.yaml          # an experiment config: a path (relative to this file) or a mapping
    set:                                 # dotted key -> value, applied to the base (values are NOT expanded)
      eval.judges: [offline]
    variants:                            # named alternatives, one axis (column `variant`); each a mapping of
      sft: {}                            # dotted key -> value (values are NOT expanded either)
      lisa: {finetune.method: lisa, finetune.alignment_data: offline:alignment}
    grid:                                # dotted key -> LIST of values: the cartesian product is taken
      finetune.user_data.poison_ratio: [0.0, 0.1, 0.2]
      finetune.training.learning_rate: [1.0e-4, 3.0e-4]
      seed:                              # a named axis that sets several keys to the same value
        keys: [align.training.seed, finetune.training.seed, finetune.user_data.seed]
        values: [0, 1, 2]
    resources: {num_cpus: 4, num_gpus: 1}  # what one cell (one task) needs on a cluster (``grid --ray``)
    slurm: {partition: gpu, time_min: 120}  # sbatch settings for ``grid --slurm`` (see tuneguard.gridexec)

Only the lists directly under ``grid:`` expand, so list-typed fields (``eval.judges``,
``lora.target_modules``) are never expanded by accident; to sweep such a field, give a list of lists
(``eval.judges: [[offline], [refusal]]``). Cells are ordered variants first, then the axes in file order.

Running a grid is idempotent and resumable: each finished cell writes ``cells/<cell_id>.json`` (atomically, last),
and a cell whose record exists is skipped; every stage goes through the stage store, so cells that share a prefix
(one aligned model, many fine-tuning runs) compute it once. ``shard=(i, n)`` runs the i-th of n disjoint parts of
the grid, split by aligned model so that no two shards ever compute the same stage; several processes or
machines can share one ``output_dir`` that way.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneguard.config import (
    ConfigError,
    ExperimentConfig,
    apply_override,
    dump_config,
    read_yaml_mapping,
    validate_config,
)
from tuneguard.grid_records import CELLS_DIR, GRID_RECORD, cell_record_file
from tuneguard.gridexec.settings import CellResources, SlurmSettings
from tuneguard.presets import PRESET_SCHEME, UnknownPresetError, resolve_config_path
from tuneguard.results import write_results_store
from tuneguard.store import fingerprint, remove_stage, write_json_atomic
from tuneguard.store_paths import resolve_store_path, store_path
from tuneguard.untrusted import check_plain_name, file_problem

logger = logging.getLogger(__name__)

GRID_FILE_KEYS = ("name", "base", "set", "variants", "grid", "resources", "slurm")


@dataclass(frozen=True)
class Axis:
    """One grid dimension: a column name, the config keys it sets (all to the same value), its values."""

    name: str
    keys: tuple[str, ...]
    values: tuple[Any, ...]


@dataclass
class GridSpec:
    """A parsed grid file: the base config (raw mapping, overrides applied), variants and axes."""

    name: str
    base: dict[str, Any]
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    axes: list[Axis] = field(default_factory=list)
    source: str = "<grid>"
    resources: CellResources = field(default_factory=CellResources)
    slurm: SlurmSettings = field(default_factory=SlurmSettings)

    @property
    def output_dir(self) -> Path:
        return Path(validate_config(copy.deepcopy(self.base), ExperimentConfig, self.source).output_dir)

    @property
    def run_dir(self) -> Path:
        """Where the grid's cell records, results and report live: ``<output_dir>/grids/<name>``."""
        return self.output_dir / "grids" / self.name

    @property
    def columns(self) -> list[str]:
        """The result columns that the grid varies: ``variant`` (when there are variants) and the axis names."""
        return (["variant"] if self.variants else []) + [a.name for a in self.axes]


@dataclass
class Cell:
    """One experiment of the grid."""

    index: int
    cell_id: str
    variant: str | None
    values: dict[str, Any]
    config: ExperimentConfig

    @property
    def label(self) -> str:
        parts = [self.variant] if self.variant else []
        parts += [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.values.items()]
        return ", ".join(parts) or "base"


@dataclass
class GridRun:
    """What one ``run_grid`` call did."""

    ran: list[Cell] = field(default_factory=list)
    skipped: list[Cell] = field(default_factory=list)
    run_dir: Path | None = None


# ------------------------------------------------------------------------------------------------- loading
def load_grid(path: str | Path, overrides: Sequence[str] = ()) -> GridSpec:
    """Read a grid file; ``overrides`` (``key.sub=value``) apply to the base config of every cell."""
    path = Path(path)
    raw = read_yaml_mapping(path, f"a grid file (keys {', '.join(GRID_FILE_KEYS)})")
    return parse_grid(raw, source=str(path), base_dir=path.parent, overrides=overrides)


def parse_grid(
    raw: dict[str, Any], *, source: str = "<grid>", base_dir: Path | None = None, overrides: Sequence[str] = ()
) -> GridSpec:
    """Build a ``GridSpec`` from a grid mapping (see the module docstring for the format)."""
    unknown = sorted(set(raw) - set(GRID_FILE_KEYS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level key(s) {', '.join(unknown)}; a grid file has {', '.join(GRID_FILE_KEYS)} "
            "(experiment settings go under `base:` or `set:`)"
        )
    if "base" not in raw:
        raise ConfigError(f"{source}: `base:` is required (an experiment config path or mapping)")
    base = _load_base(raw["base"], source, base_dir or Path("."))
    for key, value in _mapping(raw.get("set"), f"{source}: set").items():
        _set(base, key, value)
    for item in overrides:
        apply_override(base, item)
    variants = {
        str(name): _mapping(body, f"{source}: variants.{name}")
        for name, body in _mapping(raw.get("variants"), f"{source}: variants").items()
    }
    axes = [_axis(name, body, source) for name, body in _mapping(raw.get("grid"), f"{source}: grid").items()]
    names = [a.name for a in axes]
    if len(set(names)) != len(names) or "variant" in names:
        raise ConfigError(f"{source}: grid axis names must be unique and not 'variant': {names}")
    if raw.get("name") is not None:  # names the run directory <output_dir>/grids/<name>: must stay inside grids/
        name = check_plain_name(str(raw["name"]), f"{source}: name: the grid", ConfigError)
    else:
        name = _file_safe(Path(source).stem).lstrip(".-") or "grid"
    spec = GridSpec(name=name, base=base, variants=variants, axes=axes)
    spec.source = source
    for key, cls in (("resources", CellResources), ("slurm", SlurmSettings)):
        setattr(spec, key, validate_config(_mapping(raw.get(key), f"{source}: {key}"), cls, f"{source}: {key}"))
    return spec


def _load_base(value: Any, source: str, base_dir: Path) -> dict[str, Any]:
    if isinstance(value, dict):
        return copy.deepcopy(value)
    if isinstance(value, str) and value.startswith(PRESET_SCHEME):  # a shipped preset, as `tuneguard run` takes
        try:
            return read_yaml_mapping(resolve_config_path(value), "an experiment config")
        except UnknownPresetError as exc:
            raise ConfigError(f"{source}: base: {exc}") from None
    if isinstance(value, str):
        path = (base_dir / value).expanduser()
        if file_problem(path) == "file not found":
            raise ConfigError(f"{source}: base config not found: {path}")
        return read_yaml_mapping(path, "an experiment config")
    raise ConfigError(f"{source}: `base:` must be a path or a mapping, got {type(value).__name__}")


def _axis(name: Any, body: Any, source: str) -> Axis:
    where = f"{source}: grid.{name}"
    if isinstance(body, dict):
        extra = set(body) - {"keys", "values"}
        if extra or "values" not in body:
            raise ConfigError(f"{where}: a named axis is {{keys: [dotted keys], values: [...]}}")
        keys = body.get("keys") or [name]
        keys = [keys] if isinstance(keys, str) else keys
        values = body["values"]
    else:
        keys, values = [name], body
    if not isinstance(values, list) or not values:
        raise ConfigError(
            f"{where}: the values of a grid axis must be a non-empty list, got {values!r} "
            "(a fixed value goes under `set:`)"
        )
    return Axis(name=str(name), keys=tuple(str(k) for k in keys), values=tuple(values))


def _file_safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in text)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set a dotted key to an already-parsed value (unlike ``apply_override``, which parses text)."""
    parts = [p for p in str(dotted).split(".") if p]
    node = raw
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)


# ----------------------------------------------------------------------------------------------- expansion
def expand_grid(spec: GridSpec) -> list[Cell]:
    """All cells of the grid, each with its validated config (errors name the grid file and the cell)."""
    cells = []
    variants: list[tuple[str | None, dict[str, Any]]] = list(spec.variants.items()) or [(None, {})]
    output_dir = str(spec.output_dir)
    combos = list(itertools.product(*(a.values for a in spec.axes)))
    for variant, settings in variants:
        for combo in combos:
            raw = copy.deepcopy(spec.base)
            for key, value in settings.items():
                _set(raw, key, value)
            values = {}
            for axis, value in zip(spec.axes, combo, strict=True):
                values[axis.name] = value
                for key in axis.keys:
                    _set(raw, key, value)
            cell = Cell(index=len(cells), cell_id="", variant=variant, values=values, config=ExperimentConfig())
            cell.config = validate_config(raw, ExperimentConfig, f"{spec.source} (cell {cell.label})")
            if cell.config.output_dir != output_dir:
                raise ConfigError(f"{spec.source} (cell {cell.label}): output_dir may not vary within a grid")
            digest = fingerprint(dump_config(cell.config))[:12]
            cell.cell_id = f"{_file_safe(variant)}-{digest}" if variant else digest
            cells.append(cell)
    return cells


def select_cells(cells: list[Cell], *, shard: tuple[int, int] | None = None, cell: int | None = None) -> list[Cell]:
    """The cells one process runs: all, the one with index ``cell``, or shard ``(i, n)`` (0 <= i < n).

    Shards split the grid by aligned model (the base model and the alignment config), round-robin over those
    groups in grid order: every stage a cell needs belongs to one shard only, so shards never duplicate work.
    """
    if cell is not None:
        if not 0 <= cell < len(cells):
            raise ConfigError(f"--cell {cell}: the grid has cells 0..{len(cells) - 1}")
        return [cells[cell]]
    if shard is None:
        return list(cells)
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {index}/{count}: expected i/n with 0 <= i < n")
    groups: dict[str, int] = {}
    for c in cells:
        groups.setdefault(alignment_group(c.config), len(groups))
    return [c for c in cells if groups[alignment_group(c.config)] % count == index]


def alignment_group(cfg: ExperimentConfig) -> str:
    """Cells with the same value share their aligned model (and so every stage that an overlap implies)."""
    align = dump_config(cfg.align) if cfg.align is not None else None
    return fingerprint({"model": dump_config(cfg.model), "align": align})


def parse_shard(text: str) -> tuple[int, int]:
    """``'i/n'`` -> ``(i, n)``."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    return index, count


# ------------------------------------------------------------------------------------------------- running
ExperimentRunner = Callable[[ExperimentConfig], Any]


def run_grid(
    spec: GridSpec,
    *,
    shard: tuple[int, int] | None = None,
    cell: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
    runner: ExperimentRunner | None = None,
) -> GridRun:
    """Run the grid's (selected) cells one after another; skip those already finished; rebuild the results.

    ``runner`` runs one experiment config and returns a ``pipeline.ExperimentResult`` (default:
    ``run_experiment``). A cell that raises stops the grid; the cells finished before it stay finished, so
    running the grid again continues with it. ``overwrite`` recomputes the selected cells: the stages that
    their records name are removed first, so a stage that several cells share is recomputed once, not per cell.
    ``resume`` continues a stage that a killed grid left interrupted (checkpoints, no ``stage.json``) from its
    last checkpoint; without it such a stage stops the grid with a message saying so.
    """
    if runner is None:
        from functools import partial

        from tuneguard.pipeline import run_experiment  # imports torch: only when cells run here, not to read a grid

        runner = partial(run_experiment, resume=resume)

    cells, selected = prepare_run(spec, shard=shard, cell=cell, overwrite=overwrite)
    outcome = GridRun(run_dir=spec.run_dir)
    for c in selected:
        if cell_record_path(spec.run_dir, c).is_file():
            outcome.skipped.append(c)
            continue
        logger.info("grid %s: cell %d/%d (%s)", spec.name, c.index + 1, len(cells), c.label)
        run_cell(spec, c, runner)
        outcome.ran.append(c)
        write_results_store(spec.run_dir)
    write_results_store(spec.run_dir)
    return outcome


def preflight_cells(spec: GridSpec, cells: list[Cell]) -> None:
    """Check every cell that will run before the first one trains: its methods, data roles (each distinct data
    source loaded once for the whole grid), TrainingArguments and the output directory. The tokenization of each
    cell's training data is checked when the cell runs (``run_experiment``'s own pre-flight)."""
    from tuneguard.preflight import check_output_dir, preflight  # imports torch (see run_grid)

    check_output_dir(spec.output_dir)
    loaded: dict[str, Any] = {}
    for c in cells:
        try:
            preflight(c.config, role_cache=loaded, tokenize=False)
        except ConfigError as exc:
            raise ConfigError(f"{spec.source} (cell {c.index}: {c.label}): {exc}") from None


def prepare_run(
    spec: GridSpec, *, shard: tuple[int, int] | None = None, cell: int | None = None, overwrite: bool = False
) -> tuple[list[Cell], list[Cell]]:
    """Expand the grid, pre-flight the cells that will run, write the grid's record and (``overwrite``) forget the
    selected cells; -> (all cells, selected cells)."""
    cells = expand_grid(spec)
    selected = select_cells(cells, shard=shard, cell=cell)
    preflight_cells(spec, [c for c in selected if overwrite or not cell_record_path(spec.run_dir, c).is_file()])
    (spec.run_dir / CELLS_DIR).mkdir(parents=True, exist_ok=True)
    write_json_atomic(spec.run_dir / GRID_RECORD, grid_record(spec, cells))
    if overwrite:
        _remove_cells(spec.run_dir, selected, spec.output_dir)
    return cells, selected


def run_cell(spec: GridSpec, cell: Cell, runner: ExperimentRunner) -> dict[str, Any]:
    """Run one cell's experiment and write its record (last, atomically: from then on the cell counts as finished)."""
    start = time.time()
    result = runner(cell.config)
    record = cell_record(spec, cell, result, time.time() - start)
    write_json_atomic(cell_record_path(spec.run_dir, cell), record)
    return record


def _remove_cells(run_dir: Path, cells: list[Cell], output_dir: Path) -> None:
    """Forget finished cells: remove their records and the stage directories (inside ``output_dir``) they name."""
    root = output_dir.resolve()
    stage_dirs: dict[Path, str] = {}
    for c in cells:
        path = cell_record_path(run_dir, c)
        if path.is_file():
            record = json.loads(path.read_text(encoding="utf-8"))
            for name, value in [*record["stages"].items(), *record["evaluations"].items()]:
                stage_dirs[resolve_store_path(value, output_dir)] = "eval" if name in record["evaluations"] else name
            path.unlink()
    for directory, stage in sorted(stage_dirs.items()):
        if directory.resolve().is_relative_to(root):
            remove_stage(directory, stage)  # under the stage's lock: never while another process computes it


def cell_record_path(run_dir: Path, cell: Cell) -> Path:
    return cell_record_file(run_dir, cell.cell_id)


def grid_record(spec: GridSpec, cells: list[Cell]) -> dict[str, Any]:
    return {
        "name": spec.name,
        "source": spec.source,
        "columns": spec.columns,
        "axes": [{"name": a.name, "keys": list(a.keys), "values": list(a.values)} for a in spec.axes],
        "variants": spec.variants,
        "base": spec.base,
        "cells": len(cells),
        "cell_ids": [c.cell_id for c in cells],
    }


def cell_record(spec: GridSpec, cell: Cell, result: Any, wall_s: float) -> dict[str, Any]:
    """The finished cell: its place in the grid, its config and the stage directories that hold its results."""
    return {
        "grid": spec.name,
        "index": cell.index,
        "cell_id": cell.cell_id,
        "variant": cell.variant,
        "values": cell.values,
        "config": dump_config(cell.config),
        # relative to the store (output_dir), so that a moved or copied store reads its own stages
        "stages": {name: store_path(r.directory, spec.output_dir) for name, r in result.stages.items()},
        "evaluations": {name: store_path(r.directory, spec.output_dir) for name, r in result.evaluations.items()},
        "reused": sorted(name for name, r in {**result.stages, **result.evaluations}.items() if r.reused),
        "wall_s": round(wall_s, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
