"""The stage-sharing plan of a grid: which stages several cells share, and in which order they must run.

Each cell is a chain of stages (align -> finetune -> repair, and the evaluations of the models it names). Cells
that agree on a prefix of that chain (the base model and the alignment config, say) share its stages. A stage
that two or more cells need becomes a task of its own, which runs after the shared stage before it; a cell's
task runs after every shared stage of its chain and computes only the stages no other cell needs. So on any
number of workers each stage is computed by exactly one task, and the order is a task dependency, not a lock.

A stage is identified here by a fingerprint of the configs that determine it (its own and those of the stages
before it), without the settings that only change how a run is recorded (``tuneguard.stages.BOOKKEEPING``): the stage
store's key adds the data fingerprints, which the same configs determine, so equal identities mean equal keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuneguard.config import ExperimentConfig, dump_config
from tuneguard.grid import Cell, GridSpec, run_cell
from tuneguard.methods.base import get_repair_method
from tuneguard.pipeline import run_experiment
from tuneguard.stages import BOOKKEEPING, run_evaluate
from tuneguard.store import ModelRef, fingerprint

# Runs (a prefix of) an experiment: ``runner(cfg, until=stage, resume=bool)``; default ``run_experiment``.
StageRunner = Callable[..., Any]


@dataclass
class StageNode:
    """One stage that several cells share: computed by one task, for the first cell (in grid order) that needs it."""

    node_id: str
    stage: str  # align | finetune | repair | eval
    model: str | None  # for an evaluation: which model of the pipeline (base, aligned, finetuned, final)
    config: ExperimentConfig
    parent: str | None  # the shared stage that must finish first (None: none)
    cells: list[int] = field(default_factory=list)  # grid indices of the cells that need it
    parent_stage: str | None = None  # the stage of ``parent`` (for an evaluation: the stage its model comes from)

    @property
    def label(self) -> str:
        what = f"eval of the {self.model} model" if self.stage == "eval" else self.stage
        return f"{what} shared by {len(self.cells)} cells"


@dataclass
class StagePlan:
    """The shared stages in dependency order (a parent before its children), and each cell's shared stages."""

    nodes: list[StageNode]
    needs: dict[str, list[str]]  # cell_id -> node ids of the shared stages in its chain

    def node(self, node_id: str) -> StageNode:
        return next(n for n in self.nodes if n.node_id == node_id)


def stage_chain(cfg: ExperimentConfig) -> list[tuple[str, str, str | None, str | None]]:
    """The stages that ``run_experiment(cfg)`` computes, in order, as (identity, stage, model, parent identity).

    Mirrors the pipeline: align and finetune run when configured, repair always (``none`` passes its input
    through), then one evaluation per named model that exists."""

    def identity(stage: str, settings: Any, before: str | None) -> str:
        resolved = dump_config(settings)
        if "training" in resolved:
            resolved["training"] = {k: v for k, v in resolved["training"].items() if k not in BOOKKEEPING}
        return fingerprint({"stage": stage, "config": resolved, "after": before})

    chain: list[tuple[str, str, str | None, str | None]] = []
    models: dict[str, str] = {"base": identity("model", cfg.model, None)}
    producers: dict[str, str | None] = {"base": None}  # model -> the stage (identity) that produced it
    current, producer = models["base"], None
    for stage, settings, model in (("align", cfg.align, "aligned"), ("finetune", cfg.finetune, "finetuned")):
        if settings is not None:
            node = identity(stage, settings, current)
            chain.append((node, stage, None, producer))
            current, producer = node, node
            models[model], producers[model] = node, node
    repair = identity("repair", cfg.repair, current)
    chain.append((repair, "repair", None, producer))
    if not get_repair_method(cfg.repair.method).passes_through:  # else the final model is its input (same identity)
        current, producer = repair, repair
    models["final"], producers["final"] = current, producer
    seen = set()
    for name in cfg.evaluate:
        if name in models:
            node = identity("eval", cfg.eval, models[name])
            if node not in seen:
                seen.add(node)
                chain.append((node, "eval", name, producers[name]))
    return chain


def plan_stages(cells: list[Cell]) -> StagePlan:
    """The stages that two or more of ``cells`` need, as nodes in dependency order, and each cell's needs."""
    chains = {c.cell_id: stage_chain(c.config) for c in cells}
    users: dict[str, list[int]] = {}
    for c in cells:
        for node_id, *_ in chains[c.cell_id]:
            users.setdefault(node_id, []).append(c.index)
    nodes: dict[str, StageNode] = {}
    for c in cells:  # grid order, and chain order within a cell: every parent is listed before its children
        for node_id, stage, model, parent in chains[c.cell_id]:
            if len(users[node_id]) > 1 and node_id not in nodes:
                # A stage shared by several cells comes after a stage that they all share too.
                assert parent is None or len(users[parent]) > 1
                parent_stage = nodes[parent].stage if parent else None
                nodes[node_id] = StageNode(node_id, stage, model, c.config, parent, users[node_id], parent_stage)
    needs = {c.cell_id: [n for n, *_ in chains[c.cell_id] if n in nodes] for c in cells}
    return StagePlan(nodes=list(nodes.values()), needs=needs)


# ------------------------------------------------------------------------------------ what a task runs
def compute_shared_stage(node: StageNode, *, resume: bool, runner: StageRunner | None = None) -> None:
    """Compute one shared stage (its parents have finished: they are reused from the store, not recomputed)."""
    runner = runner or run_experiment
    cfg = node.config
    if node.stage != "eval":
        runner(cfg, until=node.stage, resume=resume)
        return
    if node.parent_stage is None:  # the base model
        model = ModelRef.from_settings(cfg.model)
    else:  # run up to the stage that produced the model: every stage of it is shared, finished, reused
        model = runner(cfg, until=node.parent_stage, resume=resume).models[str(node.model)]
    run_evaluate(cfg.eval, model, cfg.output_dir, resume=resume)


def compute_cell(spec: GridSpec, cell: Cell, *, resume: bool, runner: StageRunner | None = None) -> dict[str, Any]:
    """Run one cell (its shared stages have finished and are reused) and write its record; -> the record."""
    runner = runner or run_experiment
    return run_cell(spec, cell, lambda cfg: runner(cfg, resume=resume))
