"""grid --ray: a tiny 2x2 grid as Ray tasks on a local Ray instance (2 CPUs, started once for this module)."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest
from conftest import comparable_results, finished_cell_settings, tiny_cluster_grid, write_grid_file

from tuneguard.grid import run_grid
from tuneguard.gridexec.executor import run_grid_with
from tuneguard.gridexec.ray_backend import RayExecutor
from tuneguard.pipeline import run_experiment

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

# The runner below is defined here, in a module that Ray's workers cannot import: ship it by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_a_2x2_grid_on_ray_gives_the_serial_results_and_computes_each_shared_stage_once(
    tiny_experiment, tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    from tuneguard.cli import app

    serial = tiny_cluster_grid(tiny_experiment, tmp_path / "serial")
    run_grid(serial)
    spec = tiny_cluster_grid(tiny_experiment, tmp_path / "ray")
    grid_file = write_grid_file(spec, tmp_path / "tiny.yaml")
    monkeypatch.setenv("COLUMNS", "200")
    ran = CliRunner().invoke(app, ["grid", str(grid_file), "--ray"])  # this module's Ray instance
    assert ran.exit_code == 0, ran.output
    assert len(re.findall(r"^cell \d \(poison_ratio=\S+, seed=\d\) finished in \d+ s$", ran.output, flags=re.M)) == 4
    assert (spec.run_dir / "report.html").is_file()
    assert finished_cell_settings(spec.run_dir) == finished_cell_settings(serial.run_dir)
    rows = comparable_results(spec.run_dir)
    assert len(rows) == 8 and rows == comparable_results(serial.run_dir)  # 4 cells x (aligned, final), same numbers

    root = spec.output_dir
    assert len(list((root / "align").iterdir())) == 1
    assert len(list((root / "finetune").iterdir())) == 4
    assert len(list((root / "eval").iterdir())) == 1 + 4  # the aligned model once, each final model
    records = [json.loads(p.read_text()) for p in (spec.run_dir / "cells").glob("*.json")]
    # No cell task trained the aligned model or evaluated it: each found it finished (by the shared stage's task).
    assert all({"align", "aligned"} <= set(r["reused"]) and "finetune" not in r["reused"] for r in records)


class KillFirstAttemptAfterCheckpoint:
    """Runs experiments like ``run_experiment``; in the first attempt of the cell with poison ratio 0.5 and seed 1
    the worker process is SIGKILLed right after the fine-tuning stage saves its first checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __call__(self, cfg, **kwargs):
        victim = cfg.finetune.user_data.poison_ratio == 0.5 and cfg.finetune.training.seed == 1
        if victim and kwargs.get("until", "eval") == "eval" and not self.marker.exists():
            from transformers import Trainer

            save = Trainer._save_checkpoint
            marker = self.marker

            def save_then_die(trainer, *args, **kw):
                save(trainer, *args, **kw)
                marker.write_text(str(trainer.state.global_step))
                os.kill(os.getpid(), signal.SIGKILL)

            Trainer._save_checkpoint = save_then_die
        return run_experiment(cfg, **kwargs)


def test_a_cell_whose_worker_is_killed_is_rerun_by_ray_and_resumes_from_its_checkpoint(tiny_experiment, tmp_path):
    spec = tiny_cluster_grid(tiny_experiment, tmp_path / "runs")
    marker = tmp_path / "killed-at-step"
    outcome = run_grid_with(RayExecutor(report=False, runner=KillFirstAttemptAfterCheckpoint(marker)), spec)
    assert marker.read_text() == "2"  # the worker died after the checkpoint of step 2 (save_steps 2, 3 steps)
    assert len(outcome.ran) == 4
    finetuned = [json.loads(p.read_text()) for p in (spec.output_dir / "finetune").glob("*/stage.json")]
    resumed = [info for info in finetuned if info["resumed_from"]]
    assert len(resumed) == 1 and resumed[0]["resumed_from"].endswith("checkpoint-2")
    assert resumed[0]["metrics"]["global_step"] == 3
    assert not (spec.run_dir / ".attempts").exists()  # the run's attempt markers are cleared at its end
