"""``grid --jobs N``: a grid's cells on N worker processes of this machine, after the stages they share.

The plan is ``--ray``'s (``tuneguard.gridexec.plan``): every shared stage is one task and every cell one task
that is handed to a worker once the shared stages of its chain have finished, so each stage is computed by one
task and no worker waits on a stage lock. Workers are fresh processes (spawned, not forked: they inherit no
CUDA context or thread pool of this one) with ``threads`` torch threads each (default: this machine's CPUs
divided among the workers). With one GPU the workers share it: a small model leaves most of a GPU idle between
kernel launches, so several cells at a time fill it (SmolLM2-135M: 14 workers on one H200 ran the 63 cells of
benchmarks/real_smollm2.yaml in 403 s). The results store and the report are rebuilt after every finished
cell. A failed task does not stop the others; the cells that needed a failed shared stage are not started, and
the first error is raised when everything else has finished. A worker killed from outside breaks the pool: the
run stops, and ``--resume`` continues it (finished cells are skipped, interrupted stages resume).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import Progress

from tuneguard.config import ConfigError
from tuneguard.grid import Cell, GridSpec
from tuneguard.gridexec.executor import cell_finished, progress_columns
from tuneguard.gridexec.plan import StageNode, StagePlan, StageRunner, compute_cell, compute_shared_stage
from tuneguard.store import InterruptedStageError


@dataclass
class LocalExecutor:
    """Run a grid on ``jobs`` local worker processes (``threads`` torch threads each; None: CPUs / jobs)."""

    jobs: int
    threads: int | None = None
    report: bool = True
    runner: StageRunner | None = None  # runs (a prefix of) an experiment; default run_experiment (tests wrap it)
    console: Console | None = None

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {self.jobs}")

    def run(self, spec: GridSpec, cells: list[Cell], plan: StagePlan, *, resume: bool) -> list[Cell]:
        threads = self.threads or max(1, (os.cpu_count() or 1) // self.jobs)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(self.jobs, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
            return _Schedule(self, pool, spec, cells, plan, resume).run()


class _Schedule:
    """Hands each task to the pool once the shared stages it starts from have finished; collects the cells."""

    def __init__(
        self,
        executor: LocalExecutor,
        pool: ProcessPoolExecutor,
        spec: GridSpec,
        cells: list[Cell],
        plan: StagePlan,
        resume: bool,
    ) -> None:
        self.executor, self.pool, self.spec, self.cells, self.plan = executor, pool, spec, cells, plan
        self.resume = resume
        self.finished_nodes: set[str] = set()
        self.submitted: set[str] = set()
        self.running: dict[Future, StageNode | Cell] = {}
        self.finished: list[Cell] = []
        self.failures: list[BaseException] = []
        self.broken = False  # a worker died (killed, out of memory): the pool takes no more tasks

    def run(self) -> list[Cell]:
        console = self.executor.console or Console(stderr=True)
        with Progress(*progress_columns(), console=console) as progress:
            bar = progress.add_task(f"grid {self.spec.name} on {self.executor.jobs} workers", total=len(self.cells))
            self._submit_ready()
            while self.running:
                done, _ = wait(self.running, return_when=FIRST_COMPLETED)
                for future in done:
                    work = self.running.pop(future)
                    self._finish(future, work, progress)
                    if isinstance(work, Cell):
                        progress.advance(bar)
                self._submit_ready()
            for cell in self.cells:
                if cell.cell_id not in self.submitted and not self.broken:  # a shared stage of its chain failed
                    progress.console.print(f"cell {cell.index} ({cell.label}) not run: a stage it needs failed")
                    progress.advance(bar)
        if self.broken:
            raise InterruptedStageError(
                f"grid {self.spec.name}: a worker process died (killed, or out of memory) and the others were "
                f"stopped; {len(self.finished)} of {len(self.cells)} cells finished. Run the grid again with --resume "
                "to continue: finished cells are skipped, interrupted stages resume from their last checkpoint"
            )
        if self.failures:
            raise self.failures[0]
        return self.finished

    def _submit_ready(self) -> None:
        if self.broken:
            return
        runner, resume = self.executor.runner, self.resume
        for node in self.plan.nodes:  # shared stages first, so that the cells waiting on them start sooner
            if node.node_id not in self.submitted and (node.parent is None or node.parent in self.finished_nodes):
                self.submitted.add(node.node_id)
                future = self.pool.submit(compute_shared_stage, node, resume=resume, runner=runner)
                self.running[future] = node
        for cell in self.cells:
            if cell.cell_id not in self.submitted and set(self.plan.needs[cell.cell_id]) <= self.finished_nodes:
                self.submitted.add(cell.cell_id)
                self.running[self.pool.submit(compute_cell, self.spec, cell, resume=resume, runner=runner)] = cell

    def _finish(self, future: Future, work: StageNode | Cell, progress: Progress) -> None:
        try:
            result: Any = future.result()
        except BrokenProcessPool:
            self.broken = True
            return
        except Exception as exc:  # kept, and raised once the other tasks have finished
            self.failures.append(exc)
            what = f"cell {work.index} ({work.label})" if isinstance(work, Cell) else f"stage {work.label}"
            reason = (str(exc) or type(exc).__name__).splitlines()[0]
            progress.console.print(f"{what} failed: {reason}", highlight=False)
            return
        if isinstance(work, StageNode):
            self.finished_nodes.add(work.node_id)
            return
        self.finished.append(work)
        cell_finished(self.spec.run_dir, work, result, progress.console, report=self.executor.report)


def _init_worker(threads: int) -> None:
    """A worker's torch threads (set before any stage runs in it)."""
    import torch

    torch.set_num_threads(threads)
