"""grid --jobs N: a tiny 2x2 grid on local worker processes (spawned), against the serial run."""

from __future__ import annotations

import json

import pytest
from conftest import (
    KillFirstAttemptAfterCheckpoint,
    check_like_serial_with_shared_stages_once,
    comparable_results,
    finished_cell_settings,
    tiny_cluster_grid,
    write_grid_file,
)

from tuneguard.gridexec.executor import run_grid_with
from tuneguard.gridexec.local_backend import LocalExecutor
from tuneguard.pipeline import run_experiment
from tuneguard.store import InterruptedStageError

pytestmark = pytest.mark.slow


def test_a_2x2_grid_on_two_workers_gives_the_serial_results_and_computes_each_shared_stage_once(
    tiny_experiment, tmp_path
):
    check_like_serial_with_shared_stages_once(tiny_experiment, tmp_path, ["--jobs", "2"])


class FailWhere:
    """Runs experiments like ``run_experiment``, but raises in the tasks that run up to ``until`` (a shared
    stage's task; None: a cell's) for the poison ratio ``ratio`` (None: any)."""

    def __init__(self, until: str | None, ratio: float | None) -> None:
        self.until, self.ratio = until, ratio

    def __call__(self, cfg, **kwargs):
        ratio_matches = self.ratio is None or cfg.finetune.user_data.poison_ratio == self.ratio
        if kwargs.get("until") == self.until and ratio_matches:
            raise RuntimeError(f"planted failure (until={self.until}, ratio={self.ratio})")
        return run_experiment(cfg, **kwargs)


def test_a_failed_cell_does_not_stop_the_others_and_its_error_is_raised_at_the_end(tiny_experiment, tmp_path):
    spec = tiny_cluster_grid(tiny_experiment, tmp_path / "runs")
    with pytest.raises(RuntimeError, match="planted failure"):
        run_grid_with(LocalExecutor(jobs=2, report=False, runner=FailWhere(None, 0.5)), spec)
    done = finished_cell_settings(spec.run_dir)
    assert [json.loads(values)["finetune.user_data.poison_ratio"] for _, values, _ in done] == [0.0, 0.0]
    assert len(comparable_results(spec.run_dir)) == 4  # the two finished cells' rows are in the store


def test_the_cells_that_need_a_failed_shared_stage_are_not_started(tiny_experiment, tmp_path, capsys):
    spec = tiny_cluster_grid(tiny_experiment, tmp_path / "runs")
    with pytest.raises(RuntimeError, match="planted failure"):
        run_grid_with(LocalExecutor(jobs=2, report=False, runner=FailWhere("align", None)), spec)
    assert finished_cell_settings(spec.run_dir) == []
    assert not (spec.output_dir / "finetune").exists()
    assert capsys.readouterr().err.count("not run: a stage it needs failed") == 4


def test_jobs_excludes_the_cluster_backends_and_the_hand_splits(tiny_experiment, tmp_path, monkeypatch, capsys):
    import sys

    from tuneguard.cli import main

    grid_file = write_grid_file(tiny_cluster_grid(tiny_experiment, tmp_path / "runs"), tmp_path / "tiny.yaml")
    for options, message in (
        (["--jobs", "2", "--ray"], "--ray, --slurm and --jobs exclude each other"),
        (["--jobs", "2", "--cell", "1"], "do not combine with --ray, --slurm or --jobs"),
        (["--jobs", "2", "--dry-run"], "--dry-run go with --slurm"),
        (["--jobs", "0"], "--jobs must be at least 1"),
    ):
        monkeypatch.setattr(sys, "argv", ["tuneguard", "grid", str(grid_file), *options])
        with pytest.raises(SystemExit) as exc:
            main()
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("error:") == 1 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "runs" / "align").exists()


def test_a_killed_worker_stops_the_run_and_resume_continues_it_from_the_checkpoint(tiny_experiment, tmp_path):
    spec = tiny_cluster_grid(tiny_experiment, tmp_path / "runs")
    marker = tmp_path / "killed-at-step"
    with pytest.raises(InterruptedStageError, match="a worker process died .* with --resume"):
        run_grid_with(LocalExecutor(jobs=2, report=False, runner=KillFirstAttemptAfterCheckpoint(marker)), spec)
    assert marker.read_text() == "2"  # the worker died after the checkpoint of step 2 (save_steps 2, 3 steps)
    outcome = run_grid_with(LocalExecutor(jobs=2, report=False), spec, resume=True)
    assert len(outcome.ran) + len(outcome.skipped) == 4 and len(outcome.ran) >= 1
    finetuned = [json.loads(p.read_text()) for p in (spec.output_dir / "finetune").glob("*/stage.json")]
    resumed = [info for info in finetuned if info["resumed_from"]]
    assert len(finetuned) == 4 and any(info["resumed_from"].endswith("checkpoint-2") for info in resumed)
    assert all(info["metrics"]["global_step"] == 3 for info in finetuned)
