"""``grid --ray``: a grid's cells as Ray tasks, after the stages they share (``pip install 'tuneguard[ray]'``).

Every shared stage of the plan is one task, and every cell one task whose arguments are the results of the
shared stages of its chain: Ray starts a task when its arguments exist, so the order is a task dependency,
never a lock, and each stage is computed by one task only. Each task asks for the grid's ``resources:``
(``num_cpus``, ``num_gpus``). A task whose worker dies (killed, out of memory, a lost node) is rerun by Ray
(``resources.max_retries``); the rerun resumes the stage it was computing from its last checkpoint. After
each finished cell the results store and the report are rebuilt, so they can be read while the grid runs.

Workers read and write the grid's ``output_dir``: on a cluster it must be a directory that every node mounts
at the same path, and tuneguard must be installed on every node.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from tuneguard.config import ConfigError
from tuneguard.grid import Cell, GridSpec
from tuneguard.gridexec.executor import cell_finished, progress_columns, require_extra
from tuneguard.gridexec.plan import StageNode, StagePlan, StageRunner, compute_cell, compute_shared_stage

ATTEMPTS_DIR = ".attempts"  # in the grid's run directory: one marker per task that has started (per invocation)


@dataclass
class RayExecutor:
    """Run a grid on Ray. ``address``: None starts a local Ray instance (with ``num_cpus`` CPUs, default all),
    ``"auto"`` joins the cluster this machine belongs to, ``"ray://host:10001"`` a remote one. When Ray is
    already initialised in this process, that instance is used and left running."""

    address: str | None = None
    num_cpus: int | None = None
    report: bool = True
    show_worker_logs: bool = False
    runner: StageRunner | None = None  # runs (a prefix of) an experiment; default run_experiment (tests wrap it)
    console: Console | None = None

    def __post_init__(self) -> None:
        require_extra("ray", "ray", "grid --ray")  # before anything runs or is written

    def run(self, spec: GridSpec, cells: list[Cell], plan: StagePlan, *, resume: bool) -> list[Cell]:
        import ray

        started = not ray.is_initialized()
        if started:
            local = {"num_cpus": self.num_cpus} if self.address is None else {}
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=self.show_worker_logs, **local)
            except ConnectionError as exc:  # --ray-address auto (or an address) with no Ray cluster there
                raise ConfigError(f"--ray-address {self.address}: {exc}") from None
        attempts = spec.run_dir / ATTEMPTS_DIR / uuid.uuid4().hex[:12]
        try:
            return self._run(ray, spec, cells, plan, _TaskContext(attempts, resume, self.runner))
        finally:
            shutil.rmtree(attempts, ignore_errors=True)
            with contextlib.suppress(OSError):  # another grid run may be using it
                attempts.parent.rmdir()
            if started:
                ray.shutdown()

    def _run(self, ray: Any, spec: GridSpec, cells: list[Cell], plan: StagePlan, ctx: _TaskContext) -> list[Cell]:
        resources = spec.resources
        task = ray.remote(_run_task)
        needs = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus, "max_retries": resources.max_retries}
        stages: dict[str, Any] = {}
        for node in plan.nodes:  # parents come before their children
            parents = [stages[node.parent]] if node.parent else []
            name = f"{node.stage}-{node.node_id[:12]}"
            stages[node.node_id] = task.options(name=name, **needs).remote(ctx, name, node, *parents)
        pending = {}
        for c in cells:
            name = f"cell-{c.cell_id}"
            shared = [stages[n] for n in plan.needs[c.cell_id]]
            pending[task.options(name=name, **needs).remote(ctx, name, (spec, c), *shared)] = c
        return self._collect(ray, spec, pending)

    def _collect(self, ray: Any, spec: GridSpec, pending: dict[Any, Cell]) -> list[Cell]:
        """Wait for the cells; one line per finished cell, an overall bar; a failed cell does not stop the others
        (its error is raised at the end, after the results of the finished cells are written)."""
        console = self.console or Console(stderr=True)
        finished: list[Cell] = []
        failures: list[BaseException] = []
        total = len(pending)
        with Progress(*progress_columns(), console=console) as progress:
            bar = progress.add_task(f"grid {spec.name} on Ray", total=total)
            waiting = list(pending)
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                cell = pending[done[0]]
                try:
                    record = ray.get(done[0])
                except ray.exceptions.RayError as exc:
                    failures.append(exc)
                    reason = str(getattr(exc, "cause", None) or exc).splitlines()[0]
                    progress.console.print(f"cell {cell.index} ({cell.label}) failed: {reason}", highlight=False)
                else:
                    finished.append(cell)
                    cell_finished(spec.run_dir, cell, record, progress.console, report=self.report)
                progress.advance(bar)
        if failures:
            first = failures[0]
            cause = getattr(first, "cause", None)
            if isinstance(cause, Exception):
                raise cause from first  # the user-facing error (the CLI prints it on one line); Ray's traceback
            raise first
        return finished


@dataclass(frozen=True)
class _TaskContext:
    attempts: Path
    resume: bool
    runner: StageRunner | None


def _run_task(ctx: _TaskContext, name: str, work: StageNode | tuple[GridSpec, Cell], *_parents: Any) -> Any:
    """One Ray task: a shared stage, or a cell (``(spec, cell)``; returns its record). ``_parents`` are the
    results of the shared stages it needs: Ray runs this task only once they exist."""
    resume = ctx.resume or _is_rerun(ctx.attempts / name)
    if isinstance(work, StageNode):
        compute_shared_stage(work, resume=resume, runner=ctx.runner)
        return name
    spec, cell = work
    return compute_cell(spec, cell, resume=resume, runner=ctx.runner)


def _is_rerun(marker: Path) -> bool:
    """Whether this task already started once in this grid run (Ray is rerunning it after its worker died):
    then the stage it was computing is resumed from its checkpoint rather than refused as interrupted."""
    if marker.exists():
        return True
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return False
