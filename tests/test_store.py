"""The stage store under concurrent runs (one process per stage directory, stale locks) and when it is moved or
copied (paths relative to the store; records of an older tuneguard with absolute paths)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import write_jsonl

from tuneguard import store
from tuneguard.pipeline import run_experiment
from tuneguard.store import STAGE_FILE, InterruptedStageError, StageBusyError, lock_file, stage_lock

KILLER = Path(__file__).with_name("kill_after_checkpoint.py")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


# ------------------------------------------------------------------------------------------ concurrent runs
@pytest.fixture
def finetune_only(tiny_experiment):
    tiny_experiment.align = None
    tiny_experiment.finetune.training.max_steps = 4
    tiny_experiment.finetune.training.save_steps = 1
    return tiny_experiment


def start_slow_run(cfg, tmp_path: Path, *, sleep_s: float, kill_at: int = 0) -> subprocess.Popen:
    """``tuneguard finetune`` in another process, ``sleep_s`` per optimizer step; returns once it trains."""
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    marker = tmp_path / "training-started"
    env = {**ENV, "STEP_SLEEP_S": str(sleep_s), "TRAINING_MARKER": str(marker)}
    proc = subprocess.Popen(
        [sys.executable, str(KILLER), str(kill_at), "finetune", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while not marker.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("the other run did not start training: " + proc.stderr.read()[-2000:])
        time.sleep(0.2)
    return proc


def forbid_training(monkeypatch) -> None:
    from transformers import Trainer

    def no_training(*args, **kwargs):
        raise AssertionError("this process trained a stage that another process computes")

    monkeypatch.setattr(Trainer, "train", no_training)


@pytest.mark.slow
def test_a_second_run_waits_for_the_stage_another_process_computes_and_reuses_it(
    finetune_only, tmp_path, monkeypatch, caplog
):
    other = start_slow_run(finetune_only, tmp_path, sleep_s=1.0)
    forbid_training(monkeypatch)
    with caplog.at_level(logging.INFO, logger="tuneguard.store"):
        result = run_experiment(finetune_only, until="finetune")
    assert other.wait(timeout=120) == 0, other.stderr.read()[-2000:]
    assert result.stages["finetune"].reused and result.stages["finetune"].metrics["global_step"] == 4
    assert f"stage finetune is being computed by pid {other.pid} on " in caplog.text
    assert "waiting for it to finish" in caplog.text


@pytest.mark.slow
def test_a_live_run_is_reported_busy_not_interrupted_and_a_killed_one_is_resumed_by_one_process(
    finetune_only, tmp_path, monkeypatch, caplog
):
    finetune_only.finetune.training.max_steps = 6
    other = start_slow_run(finetune_only, tmp_path, sleep_s=2.0, kill_at=3)
    (directory,) = (Path(finetune_only.output_dir) / "finetune").iterdir()
    while not (directory / "checkpoints" / "checkpoint-1").is_dir():  # a checkpoint of a run that is still alive
        assert other.poll() is None, other.stderr.read()[-2000:]
        time.sleep(0.2)
    monkeypatch.setattr(store, "LOCK_TIMEOUT_S", 1.0)
    with pytest.raises(StageBusyError, match=f"stage finetune is being computed by pid {other.pid} ") as busy:
        run_experiment(finetune_only, until="finetune")
    assert "interrupted" not in str(busy.value) and "--resume" not in str(busy.value)

    assert other.wait(timeout=120) == -signal.SIGKILL  # killed after its checkpoint of step 3, holding the lock
    with pytest.raises(InterruptedStageError, match="interrupted at step 3 .*pass --resume"):
        run_experiment(finetune_only, until="finetune")
    with caplog.at_level(logging.WARNING, logger="tuneguard.store"):
        resumed = run_experiment(finetune_only, until="finetune", resume=True).stages["finetune"]
    assert not resumed.reused and resumed.metrics["global_step"] == 6
    assert resumed.info["resumed_from"].endswith("checkpoint-3")
    assert f"taking over {directory} from pid {other.pid} " in caplog.text


HOLD_LOCK = """
import sys, time
from pathlib import Path
from tuneguard.store import stage_lock
with stage_lock(Path(sys.argv[1]), "align"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_lock_left_by_a_killed_process_is_detected_and_taken_over(tmp_path, caplog):
    directory = tmp_path / "runs" / "align" / "sft-0123456789ab"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(directory)], env=ENV, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = pytest.raises(StageBusyError, match=f"stage align is being computed by pid {holder.pid} on ")
        with busy, stage_lock(directory, "align", timeout=0.5):
            pytest.fail("took a lock that a live process holds")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_file(directory).is_file()  # left behind by the killed holder, with its owner record
    started = time.time()
    with caplog.at_level(logging.WARNING, logger="tuneguard.store"), stage_lock(directory, "align", timeout=5):
        assert time.time() - started < 5
        owner = json.loads(lock_file(directory).with_name("align-sft-0123456789ab.owner.json").read_text())
        assert owner["pid"] == os.getpid()
    assert f"from pid {holder.pid} " in caplog.text and "stopped without finishing it" in caplog.text


# --------------------------------------------------------------------------------- a moved or copied store
def all_records(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.json") if ".locks" not in p.parts)


def test_a_copied_store_uses_its_own_models_and_works_without_the_original(tiny_experiment, tmp_path, monkeypatch):
    import tuneguard.methods.antidote
    import tuneguard.models
    import tuneguard.stages.repair
    import tuneguard.stages.training
    from tuneguard.world import get_world

    original = Path(tiny_experiment.output_dir)
    first = run_experiment(tiny_experiment, until="finetune")
    assert all(r.directory.is_relative_to(original) for r in first.stages.values())
    copy = tmp_path / "elsewhere" / "store"
    shutil.copytree(original, copy)

    loaded: list[str] = []
    for module in (tuneguard.models, tuneguard.stages.training, tuneguard.stages.repair, tuneguard.methods.antidote):
        real = module.load_model_and_tokenizer
        monkeypatch.setattr(
            module, "load_model_and_tokenizer", lambda s, real=real: loaded.append(s.model_name_or_path) or real(s)
        )
    tiny_experiment.output_dir = str(copy)
    tiny_experiment.finetune.user_data.poison_ratio = 0.5  # a new fine-tuning run from the copy's aligned model
    second = run_experiment(tiny_experiment, until="finetune")
    assert second.stages["align"].reused and not second.stages["finetune"].reused
    assert loaded == [str(copy / "align" / first.stages["align"].directory.name / "model")]

    original.rename(tmp_path / "original-moved-away")  # the copy must not need it
    realign = write_jsonl(tmp_path / "realign.jsonl", get_world().records("realign", 12))
    tiny_experiment.repair.method = "antidote"  # reads the fine-tuning stage's adapter and its input model
    tiny_experiment.repair.realign_data = {"source": str(realign)}
    loaded.clear()
    third = run_experiment(tiny_experiment)
    assert third.stages["finetune"].reused and third.evaluations["final"].metrics["num_harmful_prompts"] == 8
    assert loaded and all(Path(p).is_relative_to(copy) for p in loaded), loaded
    for record in all_records(copy):
        assert str(original) not in record.read_text(), record


def to_legacy_record(path: Path) -> None:
    """Rewrite a stage.json as an older tuneguard wrote it: absolute paths, no ``store_relative`` list."""
    info = json.loads(path.read_text())
    root = path.parent.parent.parent
    for name in info.pop("store_relative"):
        *head, last = name.split(".")
        holder = info
        for part in head:
            holder = holder[part]
        holder[last] = str(root / holder[last])
    path.write_text(json.dumps(info))


def test_records_with_absolute_paths_from_an_older_version_are_read_from_the_store_they_are_in(
    tiny_experiment, tmp_path
):
    from tuneguard.store import ModelRef, OutputError

    original = Path(tiny_experiment.output_dir)
    first = run_experiment(tiny_experiment, until="finetune")
    for record in original.glob("*/*/" + STAGE_FILE):
        to_legacy_record(record)
    assert str(original) in (first.stages["finetune"].directory / STAGE_FILE).read_text()
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    tiny_experiment.output_dir = str(copy)
    again = run_experiment(tiny_experiment, until="finetune")  # the original still exists: it must not be used
    finetune = again.stages["finetune"]
    assert finetune.reused and finetune.model_dir == copy / "finetune" / finetune.directory.name / "model"
    assert Path(finetune.info["input_stage_dir"]) == copy / "align" / first.stages["align"].directory.name
    assert ModelRef.from_stage(again.stages["align"]).settings.model_name_or_path.startswith(str(copy))

    shutil.rmtree(copy / "align" / first.stages["align"].directory.name / "model")  # the copy lacks a model
    with pytest.raises(OutputError, match="its model .* does not exist .*pass --overwrite"):
        run_experiment(tiny_experiment, until="finetune")
