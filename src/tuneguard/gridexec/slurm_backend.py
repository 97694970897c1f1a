"""``grid --slurm``: a grid as Slurm jobs, submitted through submitit (``pip install 'tuneguard[slurm]'``).

Every stage that several cells share is one job (an aligned model first, then what depends on it), with an
``afterok`` dependency on the shared job before it; the cells that need the same shared stages are one job array
with an ``afterok`` dependency on those jobs; a last job (``afterany`` on every array) rebuilds the results and
writes the report. Each cell job rebuilds the results store when it finishes. ``tuneguard grid --slurm`` returns
once everything is submitted (``squeue`` shows the jobs; ``tuneguard grid ... --list`` which cells finished);
``--dry-run`` prints the sbatch scripts instead. Job logs go to ``<run_dir>/slurm/``.

The ``local`` cluster runs the same jobs through submitit's local executor (processes on this machine, no
sbatch, no scheduler): there a dependent job is submitted once the jobs it depends on have finished, and the
call returns when every job has finished. Tests use it.
"""

from __future__ import annotations

import math
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from tuneguard.config import ConfigError
from tuneguard.grid import Cell, GridSpec
from tuneguard.gridexec.executor import refresh_results, require_extra
from tuneguard.gridexec.plan import StageNode, StagePlan, StageRunner, compute_cell, compute_shared_stage
from tuneguard.gridexec.settings import SlurmSettings

SLURM_DIR = "slurm"  # in the grid's run directory: submitit's pickles and each job's logs


@dataclass
class JobGroup:
    """One submission: a single job (a shared stage, or the final results job) or a job array (cells)."""

    name: str
    works: list[Any]  # StageNode | (GridSpec, Cell) | Path (a run directory: rebuild its results and report)
    after: list[str] = field(default_factory=list)  # names of the groups that must finish first
    dependency: str = "afterok"  # afterok: only when those succeeded; afterany: in any case

    @property
    def is_array(self) -> bool:
        return len(self.works) > 1  # submitit submits a one-element map as a plain job


def job_groups(spec: GridSpec, cells: list[Cell], plan: StagePlan) -> list[JobGroup]:
    """The submissions of a grid, in dependency order: the shared stages, one array per set of cells that need
    the same shared stages, and the results job."""
    groups = [JobGroup(_node_name(n), [n], [_node_name(plan.node(n.parent))] if n.parent else []) for n in plan.nodes]
    arrays: dict[tuple[str, ...], JobGroup] = {}
    for c in cells:
        needs = tuple(_node_name(plan.node(n)) for n in plan.needs[c.cell_id])
        if needs not in arrays:
            arrays[needs] = JobGroup(f"cells-{len(arrays)}", [], list(needs))
        arrays[needs].works.append((spec, c))
    groups += arrays.values()
    groups.append(JobGroup("results", [spec.run_dir], [g.name for g in arrays.values()], dependency="afterany"))
    return groups


def _node_name(node: StageNode) -> str:
    what = f"eval-{node.model}" if node.stage == "eval" else node.stage
    return f"{what}-{node.node_id[:8]}"


@dataclass
class SlurmExecutor:
    """Submit a grid to Slurm (``cluster="slurm"``) or run its jobs locally through submitit (``"local"``)."""

    settings: SlurmSettings
    cluster: Literal["slurm", "local"] = "slurm"
    dry_run: bool = False
    runner: StageRunner | None = None
    console: Console = field(default_factory=Console)

    def __post_init__(self) -> None:
        require_extra("submitit", "slurm", "grid --slurm")  # before anything runs or is written
        if self.cluster == "slurm" and not self.dry_run and not (shutil.which("sbatch") and shutil.which("srun")):
            raise ConfigError(
                "grid --slurm submits with Slurm's sbatch and srun, which are not on PATH here (run it on a "
                "cluster's login node); --slurm --dry-run prints the sbatch scripts without submitting"
            )

    def run(self, spec: GridSpec, cells: list[Cell], plan: StagePlan, *, resume: bool) -> list[Cell]:
        import submitit

        groups = job_groups(spec, cells, plan)
        folder = spec.run_dir / SLURM_DIR / "%j"
        if self.dry_run:
            for group in groups:
                self.console.print(f"# ---- {group.name}", highlight=False)
                self.console.print(self.sbatch_script(spec, group), highlight=False, markup=False, soft_wrap=True)
            return []
        jobs: dict[str, list[Any]] = {}
        for group in groups:
            if self.cluster == "local":
                executor = submitit.LocalExecutor(folder=folder)
                for name in group.after:  # no scheduler holds a job back here: wait for what it depends on
                    _wait(jobs[name], raise_failure=group.dependency == "afterok")
            else:
                executor = submitit.SlurmExecutor(folder=folder)
            executor.update_parameters(**self._parameters(spec, group, jobs))
            args = [(work, resume, self.runner) for work in group.works]
            jobs[group.name] = executor.map_array(_run_job, *zip(*args, strict=True))
            ids = ", ".join(sorted({j.job_id.split("_")[0] for j in jobs[group.name]}))
            self.console.print(f"submitted {group.name} ({len(group.works)} job(s)): {ids}", highlight=False)
        if self.cluster == "slurm":
            return []
        return self._collect(groups, jobs)

    def sbatch_script(self, spec: GridSpec, group: JobGroup) -> str:
        """The sbatch script of one submission, as submitit's Slurm executor writes it (its own sbatch template;
        the executor itself needs a Slurm installation); dependencies name the groups, not job ids."""
        from submitit.slurm.slurm import _make_sbatch_string

        folder = spec.run_dir / SLURM_DIR / "%j"
        command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
        count = {"map_count": len(group.works)} if group.is_array else {}  # what submitit sets for an array
        return _make_sbatch_string(command=command, folder=folder, **self._parameters(spec, group, None), **count)

    def _parameters(self, spec: GridSpec, group: JobGroup, jobs: dict[str, list[Any]] | None) -> dict[str, Any]:
        s, resources = self.settings, spec.resources
        gpus = s.gpus_per_node if s.gpus_per_node is not None else math.ceil(resources.num_gpus)
        cpus = s.cpus_per_task or math.ceil(resources.num_cpus)
        if isinstance(group.works[0], Path):  # the results job: reads JSON files and draws plots
            gpus, cpus = 0, 1
        if self.cluster == "local" and jobs is not None:
            return {"timeout_min": s.time_min, "gpus_per_node": gpus, "setup": s.setup}
        extra = dict(s.sbatch)
        if group.after:
            ids = [",".join(sorted({j.job_id.split("_")[0] for j in jobs[n]})) for n in group.after] if jobs else None
            extra["dependency"] = f"{group.dependency}:" + ":".join(ids or group.after)
        params: dict[str, Any] = {
            "job_name": f"tuneguard-{spec.name}-{group.name}",
            "time": s.time_min,
            "cpus_per_task": cpus,
            "array_parallelism": s.array_parallelism,
            "setup": s.setup,
            "additional_parameters": extra,
        }
        if s.partition:
            params["partition"] = s.partition
        if gpus:
            params["gpus_per_node"] = gpus
        if s.mem_gb:
            extra["mem"] = f"{round(s.mem_gb * 1024)}M"
        return params

    def _collect(self, groups: list[JobGroup], jobs: dict[str, list[Any]]) -> list[Cell]:
        """Wait for every job (local cluster); raise the first failure after all have ended."""
        finished, failures = [], []
        for group in groups:
            for work, job in zip(group.works, jobs[group.name], strict=True):
                try:
                    job.result()
                except Exception as exc:  # submitit wraps the job's error: keep the first, let the others end
                    failures.append(exc)
                else:
                    if isinstance(work, tuple):
                        finished.append(work[1])
        if failures:
            raise failures[0]
        return finished


def _wait(jobs: Sequence[Any], *, raise_failure: bool) -> None:
    for job in jobs:
        job.wait()
        if raise_failure and (error := job.exception()) is not None:
            raise error


def _run_job(work: StageNode | tuple[GridSpec, Cell] | Path, resume: bool, runner: StageRunner | None) -> Any:
    """One Slurm job (or array element): a shared stage, a cell (then the results store is rebuilt), or the
    results job (a run directory: its results store and report)."""
    if isinstance(work, StageNode):
        return compute_shared_stage(work, resume=resume, runner=runner)
    if isinstance(work, Path):
        return refresh_results(work, report=True)
    spec, cell = work
    record = compute_cell(spec, cell, resume=resume, runner=runner)
    refresh_results(spec.run_dir, report=False)
    return record
