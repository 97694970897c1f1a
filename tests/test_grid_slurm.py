"""grid --slurm: the jobs through submitit's local executor (the Slurm code path minus sbatch), and the sbatch
scripts of --dry-run (dependencies, array sizes, resources)."""

from __future__ import annotations

import re

import pytest
from conftest import comparable_results, finished_cell_settings, tiny_cluster_grid, write_grid_file

from tuneguard.grid import run_grid
from tuneguard.gridexec.executor import run_grid_with
from tuneguard.gridexec.settings import SlurmSettings
from tuneguard.gridexec.slurm_backend import SlurmExecutor

pytest.importorskip("submitit")


@pytest.mark.slow
def test_the_slurm_jobs_run_by_submitits_local_executor_give_the_results_store_of_the_serial_run(
    tiny_experiment, tmp_path
):
    serial = tiny_cluster_grid(tiny_experiment, tmp_path / "serial", seeds=(0,))
    run_grid(serial)
    spec = tiny_cluster_grid(tiny_experiment, tmp_path / "slurm", seeds=(0,))
    settings = SlurmSettings(time_min=10, setup=["export OMP_NUM_THREADS=1"])  # jobs side by side on 2 cores
    outcome = run_grid_with(SlurmExecutor(settings, cluster="local"), spec, report=False)
    assert len(outcome.ran) == 2
    assert finished_cell_settings(spec.run_dir) == finished_cell_settings(serial.run_dir)
    assert comparable_results(spec.run_dir) == comparable_results(serial.run_dir)
    assert len(list((spec.output_dir / "align").iterdir())) == 1
    records = [p.read_text() for p in (spec.run_dir / "cells").glob("*.json")]
    assert all('"align"' in r.split('"reused"')[1] for r in records)  # every cell job found the aligned model done
    assert (spec.run_dir / "report.md").is_file()  # written by the last job (afterany: every cell array)


def dry_run_scripts(tiny_experiment, tmp_path, *cli_args: str) -> dict[str, str]:
    """Run ``tuneguard grid tiny.yaml --slurm --dry-run`` on a 2x2 grid (with a slurm: key); -> name -> script."""
    from typer.testing import CliRunner

    from tuneguard.cli import app

    spec = tiny_cluster_grid(tiny_experiment, tmp_path / "runs")
    slurm = {"partition": "gpu", "time_min": 90, "sbatch": {"account": "lab"}}
    grid_file = write_grid_file(spec, tmp_path / "tiny.yaml", resources={"num_gpus": 1, "num_cpus": 2}, slurm=slurm)
    result = CliRunner().invoke(app, ["grid", str(grid_file), "--slurm", "--dry-run", *cli_args])
    assert result.exit_code == 0, result.output
    parts = re.split(r"^# ---- (\S+)\n", result.output, flags=re.M)[1:]
    return dict(zip(parts[::2], parts[1::2], strict=True))


def sbatch(script: str, option: str) -> str | None:
    found = re.search(rf"^#SBATCH --{option}=(.*)$", script, flags=re.M)
    return found.group(1) if found else None


def test_dry_run_prints_a_job_per_shared_stage_then_the_cell_array_after_them(tiny_experiment, tmp_path):
    scripts = dry_run_scripts(tiny_experiment, tmp_path, "--slurm-opt", "time_min=30")
    names = list(scripts)
    # the shared aligned model, its evaluation (both cells' 'aligned' row), the array of 4 cells, the results job
    assert [n.split("-")[0] for n in names] == ["align", "eval", "cells", "results"]
    align, evaluation, cells, results = (scripts[n] for n in names)
    assert sbatch(align, "dependency") is None and sbatch(align, "array") is None
    assert sbatch(evaluation, "dependency") == f"afterok:{names[0]}"
    assert sbatch(cells, "dependency") == f"afterok:{names[0]}:{names[1]}"
    assert sbatch(cells, "array") == "0-3%4"
    assert sbatch(results, "dependency") == f"afterany:{names[2]}"
    for script in scripts.values():
        assert sbatch(script, "partition") == "gpu" and sbatch(script, "account") == "lab"
        assert sbatch(script, "time") == "30"  # the command line's --slurm-opt over the grid file's 90
    for script in (align, evaluation, cells):
        assert sbatch(script, "gpus-per-node") == "1" and sbatch(script, "cpus-per-task") == "2"  # resources:
    assert sbatch(results, "gpus-per-node") is None and sbatch(results, "cpus-per-task") == "1"
    assert not (tmp_path / "runs" / "align").exists()  # nothing ran


def test_a_misspelled_slurm_setting_is_one_error_naming_the_key(tiny_experiment, tmp_path):
    from typer.testing import CliRunner

    from tuneguard.cli import app

    spec = tiny_cluster_grid(tiny_experiment, tmp_path)
    grid_file = write_grid_file(spec, tmp_path / "g.yaml", slurm={"partion": "gpu"})
    result = CliRunner().invoke(app, ["grid", str(grid_file), "--slurm", "--dry-run"])
    assert result.exit_code != 0 and "partion" in str(result.exception) and "partition" in str(result.exception)
