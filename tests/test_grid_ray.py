"""grid --ray: a tiny 2x2 grid as Ray tasks on a local Ray instance (2 CPUs, started once for this module)."""

from __future__ import annotations

import json
import sys

import conftest
import pytest
from conftest import (
    KillFirstAttemptAfterCheckpoint,
    check_like_serial_with_shared_stages_once,
    tiny_cluster_grid,
)

from tuneguard.gridexec.executor import run_grid_with
from tuneguard.gridexec.ray_backend import RayExecutor

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

# The runners are defined in modules that Ray's workers cannot import: ship them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
ray.cloudpickle.register_pickle_by_value(conftest)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_a_2x2_grid_on_ray_gives_the_serial_results_and_computes_each_shared_stage_once(tiny_experiment, tmp_path):
    check_like_serial_with_shared_stages_once(tiny_experiment, tmp_path, ["--ray"])  # this module's Ray instance


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
