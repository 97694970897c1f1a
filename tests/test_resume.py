"""Kill a stage (SIGKILL, in a subprocess) after a checkpoint; --resume ends with the weights and metrics of an
unbroken run, and without --resume the interrupted run is neither continued nor thrown away silently."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tuneguard.callbacks import StageClock
from tuneguard.cli import main
from tuneguard.pipeline import run_experiment
from tuneguard.store import STAGE_FILE

KILLER = Path(__file__).with_name("kill_after_checkpoint.py")
METHOD_ARGS = {"sft": {}, "lisa": {"alignment_steps": 1, "finetune_steps": 2, "proximal_warmup_ratio": 0.0}}


@pytest.fixture(params=["sft", "lisa"])
def finetune_only(request, tiny_experiment, small_data):
    tiny_experiment.align = None
    ft = tiny_experiment.finetune
    ft.method = request.param
    ft.method_args = METHOD_ARGS[request.param]
    ft.alignment_data = {"source": str(small_data["alignment"])} if request.param == "lisa" else None
    ft.training.max_steps = 6
    ft.training.save_steps = 2
    ft.training.logging_steps = 3  # checkpoints fall between two logs
    return tiny_experiment


def run_cli(capsys, monkeypatch, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["tuneguard", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def test_killed_stage_resumes_to_the_weights_and_metrics_of_an_unbroken_run(
    finetune_only, tmp_path, capsys, monkeypatch
):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(finetune_only.model_dump(mode="json")))
    killed = subprocess.run(
        [sys.executable, str(KILLER), "4", "finetune", str(path)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (directory,) = (Path(finetune_only.output_dir) / "finetune").iterdir()
    assert not (directory / STAGE_FILE).exists() and (directory / "checkpoints" / "checkpoint-4").is_dir()
    before_kill = StageClock.from_checkpoint(directory / "checkpoints" / "checkpoint-4")  # the stage's time so far
    assert before_kill > 0

    code, err = run_cli(capsys, monkeypatch, "finetune", str(path))
    assert code == 2 and "interrupted at step 4" in err and "--resume" in err and "Traceback" not in err
    assert (directory / "checkpoints" / "checkpoint-4").is_dir()  # the refusal lost nothing

    code, err = run_cli(capsys, monkeypatch, "finetune", str(path), "--resume")
    assert code == 0, err
    resumed = run_experiment(finetune_only, until="finetune").stages["finetune"]  # reuses the finished stage
    assert resumed.reused and resumed.info["resumed_from"].endswith("checkpoint-4")
    timings = resumed.info["timings"]  # the whole stage: the time before the kill plus the resumed run's
    assert timings["before_resume_s"] == round(before_kill, 2) and timings["wall_s"] > timings["before_resume_s"]

    finetune_only.output_dir = str(tmp_path / "unbroken")
    unbroken = run_experiment(finetune_only, until="finetune").stages["finetune"]
    assert unbroken.info["resumed_from"] is None and "before_resume_s" not in unbroken.info["timings"]
    a, b = load_file(resumed.model_dir / "model.safetensors"), load_file(unbroken.model_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert resumed.metrics["train_loss"] is not None and resumed.metrics["global_step"] == 6
    assert resumed.metrics == unbroken.metrics


def test_resume_and_overwrite_exclude_each_other(tiny_experiment):
    with pytest.raises(ValueError, match="resume and overwrite exclude each other"):
        run_experiment(tiny_experiment, until="align", resume=True, overwrite=True)


def test_a_checkpoint_cut_short_by_a_kill_is_passed_over(tmp_path):
    # A process killed while the Trainer saves leaves a checkpoint folder without its trainer state (written last).
    from tuneguard.store import last_checkpoint

    for step, files in ((2, ["model.safetensors", "optimizer.pt", "trainer_state.json"]), (4, ["model.safetensors"])):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name in files:
            (folder / name).write_text("x")
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
