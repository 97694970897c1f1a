"""Stages and the pipeline on a tiny random model: outputs, caching, bad input before training (resume:
tests/test_resume.py)."""

from __future__ import annotations

import json

import pytest

from tuneguard.config import ModelSettings
from tuneguard.data import DataError
from tuneguard.models import ModelLoadError
from tuneguard.pipeline import run_experiment
from tuneguard.roles import Role
from tuneguard.stages import Stage, run_finetune
from tuneguard.store import STAGE_FILE, ModelRef


def test_pipeline_writes_every_stage_and_second_run_reuses_all(tiny_experiment):
    first = run_experiment(tiny_experiment)
    ft = first.stages["finetune"]
    info = json.loads((ft.directory / STAGE_FILE).read_text())
    assert info["config"]["user_data"]["poison_ratio"] == 0.25
    assert info["metrics"]["harmful_records"] == 5 and info["metrics"]["task_records"] == 15
    # recorded relative to the store (a moved or copied store keeps working), resolved when read
    assert info["input_stage_dir"] == f"align/{first.stages['align'].directory.name}"
    assert ft.info["input_stage_dir"] == str(first.stages["align"].directory)
    assert info["model_dir"] == f"finetune/{ft.directory.name}/model" and ft.model_dir == ft.directory / "model"
    assert {"torch", "transformers", "peft"} <= set(info["versions"])
    assert (ft.directory / "model" / "config.json").is_file() and (ft.directory / "adapter").is_dir()
    mix = [json.loads(x) for x in (ft.directory / "train_mix.jsonl").read_text().splitlines()]
    assert len(mix) == 20 and sum(r["source"] == "harmful" for r in mix) == 5
    ev = first.evaluations["final"]
    assert 0 <= ev.metrics["harmful_score"] <= 100 and ev.metrics["judge"] == "refusal"
    gens = [json.loads(x) for x in (ev.directory / "generations.jsonl").read_text().splitlines()]
    assert {g["set"] for g in gens} == {"harmful", "task"} and all("prompt" not in g for g in gens)
    assert not any(r.reused for r in [*first.stages.values(), *first.evaluations.values()])

    mtime = (ft.directory / STAGE_FILE).stat().st_mtime_ns
    second = run_experiment(tiny_experiment)
    assert all(r.reused for r in [*second.stages.values(), *second.evaluations.values()])
    assert (ft.directory / STAGE_FILE).stat().st_mtime_ns == mtime  # never rewritten


def test_a_changed_poison_ratio_reuses_alignment_but_not_finetuning(tiny_experiment):
    first = run_experiment(tiny_experiment, until="finetune")
    tiny_experiment.finetune.user_data.poison_ratio = 0.5
    second = run_experiment(tiny_experiment, until="finetune")
    assert second.stages["align"].reused and second.stages["align"].directory == first.stages["align"].directory
    assert not second.stages["finetune"].reused
    assert second.stages["finetune"].directory != first.stages["finetune"].directory


def test_overwrite_recomputes_a_finished_stage(tiny_experiment):
    first = run_experiment(tiny_experiment, until="align")
    again = run_experiment(tiny_experiment, until="align", overwrite=True)
    assert not again.stages["align"].reused and again.stages["align"].directory == first.stages["align"].directory


@pytest.mark.parametrize(
    ("override", "error", "needle"),
    [
        ({"finetune.user_data.task_data": "missing.jsonl"}, DataError, "file not found"),
        ({"finetune.user_data.num_samples": 500}, DataError, "needs 125 harmful records"),
        ({"model.model_name_or_path": "/nonexistent/model"}, ModelLoadError, "model path not found"),
        ({"finetune.method": "nope"}, ValueError, "unknown finetune method 'nope'"),
    ],
)
def test_bad_input_stops_before_any_training(tiny_experiment, monkeypatch, override, error, needle):
    from transformers import Trainer

    def no_training(*args, **kwargs):
        raise AssertionError("training started despite bad input")

    monkeypatch.setattr(Trainer, "train", no_training)
    tiny_experiment.align = None
    for key, value in override.items():
        obj = tiny_experiment
        *path, last = key.split(".")
        for part in path:
            obj = getattr(obj, part)
        if last in ("task_data",):
            value = {"source": value}
        setattr(obj, last, value)
    with pytest.raises(error, match=needle):
        run_experiment(tiny_experiment, until="finetune")


def test_model_ref_of_a_local_dir_changes_when_its_files_change(tiny_model_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    before = ModelRef.from_settings(ModelSettings(model_name_or_path=str(copy))).fingerprint
    (copy / "extra.bin").write_bytes(b"x")
    after = ModelRef.from_settings(ModelSettings(model_name_or_path=str(copy))).fingerprint
    assert before != after


def test_adapter_initialisation_does_not_depend_on_earlier_random_draws(tiny_experiment):
    """The same stage config gives the same weights whatever consumed the global RNG before it."""
    import torch
    from safetensors.torch import load_file

    tiny_experiment.align = None
    base = ModelRef.from_settings(tiny_experiment.model)
    torch.manual_seed(1)
    a = run_finetune(tiny_experiment.finetune, base, tiny_experiment.output_dir + "-a")
    torch.manual_seed(2)
    torch.rand(100)
    b = run_finetune(tiny_experiment.finetune, base, tiny_experiment.output_dir + "-b")
    wa, wb = load_file(a.model_dir / "model.safetensors"), load_file(b.model_dir / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_training_extra_args_reach_the_training_arguments(tiny_experiment, monkeypatch):
    """FSDP / DeepSpeed options (and any other TrainingArguments field) pass through ``training.extra_args``."""
    from tuneguard.methods import list_methods
    from tuneguard.stages import training

    list_methods()  # the method modules load at the first lookup; TRL's subclass of TrainingArguments with them
    seen = {}

    def capture(**kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt  # stop before the trainer is built

    # the module object the stages hold (transformers swaps its lazy module in sys.modules on first use)
    monkeypatch.setattr(training.transformers, "TrainingArguments", capture)
    tiny_experiment.align = None
    tiny_experiment.finetune.training.extra_args = {"fsdp": "full_shard", "fsdp_config": {"min_num_params": 1}}
    with pytest.raises(KeyboardInterrupt):
        run_experiment(tiny_experiment, until="finetune")
    assert seen["fsdp"] == "full_shard" and seen["fsdp_config"] == {"min_num_params": 1}


def test_every_training_setting_is_the_training_argument_of_its_name_or_named_tuneguard_only(tmp_path):
    """TrainingArguments are built from the settings by name: a new TrainingSettings field reaches the Trainer
    under its own name unless it is listed (and explained) in TUNEGUARD_ONLY_SETTINGS."""
    import dataclasses

    from transformers import TrainingArguments

    from tuneguard.config import MANAGED_TRAINING_ARGS, TrainingSettings
    from tuneguard.stages.training import TUNEGUARD_ONLY_SETTINGS, managed_training_arguments, training_arguments

    arguments = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    assert set(TrainingSettings.model_fields) - arguments == set(TUNEGUARD_ONLY_SETTINGS)
    settings = TrainingSettings(learning_rate=3e-4, max_steps=7, warmup_steps=0.1, save_steps=3)
    args = training_arguments(settings, tmp_path, "align")
    for name in set(TrainingSettings.model_fields) - set(TUNEGUARD_ONLY_SETTINGS):
        assert getattr(args, name) == getattr(settings, name), name
    assert set(managed_training_arguments(settings, tmp_path)) == set(MANAGED_TRAINING_ARGS)


def test_a_foreign_or_corrupt_stage_record_is_a_clear_error_and_is_kept(tmp_path):
    from tuneguard.store import STAGE_FILE, OutputError, load_finished

    record = tmp_path / STAGE_FILE
    record.write_text('{"key": "someone-else"}')
    with pytest.raises(OutputError, match="belongs to another stage .*pass --overwrite"):
        load_finished(tmp_path, "align", "mine")
    record.write_text("{not json")
    with pytest.raises(OutputError, match="not a readable stage record"):
        load_finished(tmp_path, "align", "mine")
    assert record.read_text() == "{not json"


def test_a_one_off_build_of_the_input_model_is_timed_apart_from_the_stage(tiny_experiment, monkeypatch):
    """E.g. the offline world's pre-training on first use: not part of the alignment stage's time (the pre-flight,
    which loads the input model's tokenizer, or the stage itself builds it; a stage that does records it apart)."""
    import time

    import tuneguard.models as models

    real, built = models.resolve_model_path, []

    def build_on_first_use(settings):
        if not built:
            built.append(settings.model_name_or_path)
            time.sleep(2.0)
        return real(settings)

    monkeypatch.setattr(models, "resolve_model_path", build_on_first_use)
    start = time.time()
    align = run_experiment(tiny_experiment, until="align").stages["align"]
    total = time.time() - start
    timings = align.info["timings"]
    assert built and timings["wall_s"] <= total - 2.0
    assert timings.get("model_setup_s", 0.0) < total - timings["wall_s"]


# ---- the stage protocol: what a new stage gets from the base --------------------------------------------------------
class _ShoutStage(Stage):
    """A new stage in a dozen lines: upper-cases its records into a file of its directory."""

    name = "shout"
    label = "upper"

    def __init__(self, source, refuse: bool = False):
        self.source, self.refuse, self.computed = source, refuse, 0

    def roles(self):
        return [Role("shout.data", self.source)]

    def data(self, roles):
        return {"data": roles["shout.data"]}

    def check_inputs(self, model, data):
        if self.refuse:
            raise DataError("shout.data", "refused")
        return {"records": len(data["data"])}

    def resolved_config(self):
        return {"source": self.source.source}

    def compute(self, run):
        self.computed += 1
        (run.directory / "shout.txt").write_text("\n".join(r["response"].upper() for r in run.data["data"]))
        return {"config": run.config, "metrics": {"records": run.checked["records"]}}


def test_a_new_stage_is_keyed_reused_and_refused_by_the_protocol(tmp_path, small_data):
    from tuneguard.config import DataSource

    model = ModelRef(settings=ModelSettings(model_name_or_path="m"), fingerprint="m0")
    source = DataSource(source=str(small_data["alignment"]))
    stage = _ShoutStage(source)
    first = stage.run(model, tmp_path / "store")
    assert first.directory.parent == tmp_path / "store" / "shout" and first.directory.name.startswith("upper-")
    assert (first.directory / "shout.txt").is_file() and first.metrics["records"] > 0
    again = stage.run(model, tmp_path / "store")
    assert again.reused and again.key == first.key and stage.computed == 1
    other = stage.run(ModelRef(settings=model.settings, fingerprint="m1"), tmp_path / "store")  # another input
    assert not other.reused and other.key != first.key and stage.computed == 2
    with pytest.raises(DataError, match="refused"):
        _ShoutStage(source, refuse=True).run(model, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()  # refused before the stage directory is claimed
