"""What a grid file says about running on a cluster: the ``resources:`` and ``slurm:`` keys (validated with the
grid, before anything runs; importing this module imports neither Ray nor submitit)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tuneguard.config import apply_override, validate_config


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CellResources(_Strict):
    """What one task (one cell, or one stage that several cells share) needs: Ray's task resources, and the
    defaults of a Slurm job's CPUs and GPUs."""

    num_cpus: float = Field(1, gt=0, description="CPU cores per task (Ray sets OMP_NUM_THREADS from it).")
    num_gpus: float = Field(0, ge=0, description="GPUs per task; 0 = CPU only (the default).")
    max_retries: int = Field(
        2, ge=0, description="How often Ray reruns a task whose worker died; a rerun resumes the stage's checkpoint."
    )


class SlurmSettings(_Strict):
    """The sbatch settings of ``grid --slurm`` (grid file key ``slurm:``, or ``--slurm-opt KEY=VALUE``)."""

    partition: str | None = Field(None, description="sbatch --partition; default: the cluster's default partition.")
    time_min: int = Field(60, gt=0, description="Time limit of each job, in minutes (sbatch --time).")
    gpus_per_node: int | None = Field(None, ge=0, description="GPUs per job; default: resources.num_gpus.")
    cpus_per_task: int | None = Field(None, gt=0, description="CPUs per job; default: resources.num_cpus.")
    mem_gb: float | None = Field(None, gt=0, description="Memory per job in GB (sbatch --mem); default: the cluster's.")
    array_parallelism: int = Field(64, gt=0, description="At most this many cells of one job array run at once.")
    sbatch: dict[str, Any] = Field(
        default_factory=dict, description="Further #SBATCH options, name -> value (e.g. {account: lab, qos: high})."
    )
    setup: list[str] = Field(
        default_factory=list, description="Shell lines run before each job (module load ..., source venv/bin/activate)."
    )


def with_overrides(settings: SlurmSettings, overrides: list[str], where: str = "--slurm-opt") -> SlurmSettings:
    """``settings`` with ``KEY=VALUE`` overrides (values parsed as YAML, like experiment overrides) applied."""
    raw = settings.model_dump(exclude_unset=True)
    for item in overrides:
        apply_override(raw, item)
    return validate_config(raw, SlurmSettings, where)
