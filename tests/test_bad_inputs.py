"""The bad-input corpus (tests/bad_inputs/): every case, run through the command line, stops with ONE clear
message naming the file and row (or the config key), without a traceback, and loses nothing already written."""

from __future__ import annotations

import errno
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tuneguard.cli import main

BAD = Path(__file__).with_name("bad_inputs")
TASK = "finetune.user_data.task_data="


@dataclass(frozen=True)
class Case:
    """``tuneguard <command> <config> <args>``; ``{bad}`` and ``{model}`` in args are filled in. ``config`` names a
    corpus YAML that replaces the (valid) base config; ``needles`` must all appear in the one error message."""

    name: str
    args: tuple[str, ...]
    needles: tuple[str, ...]
    command: str = "finetune"
    config: str | None = None


CASES = [
    # ---- data files: format, encoding, columns, values, ids, sizes
    Case("malformed_jsonl", (TASK + "{bad}/malformed.jsonl",), ("malformed.jsonl, row 2", "not valid JSON")),
    Case("truncated_json", (TASK + "{bad}/truncated.json",), ("truncated.json: not valid JSON at line 3",)),
    Case("csv_extra_fields", (TASK + "{bad}/extra_fields.csv",), ("extra_fields.csv, row 3", "more fields")),
    Case("csv_missing_column", (TASK + "{bad}/missing_column.csv",), ("missing_column.csv, row 2", "'response'")),
    Case("missing_column", (TASK + "{bad}/missing_prompt.jsonl",), ("missing_prompt.jsonl, row 1", "'prompt'")),
    Case("wrong_type", (TASK + "{bad}/wrong_type.jsonl",), ("wrong_type.jsonl, row 2", "must be text, got int")),
    Case("empty_prompt", (TASK + "{bad}/empty_prompt.jsonl",), ("empty_prompt.jsonl, row 2", "empty prompt")),
    Case("non_utf8", (TASK + "{bad}/non_utf8.jsonl",), ("non_utf8.jsonl, row 2", "not valid UTF-8")),
    Case("duplicated_ids", (TASK + "{bad}/duplicated_ids.jsonl",), ("duplicated_ids.jsonl, row 3", "duplicated id")),
    Case("empty_file", (TASK + "{bad}/empty.jsonl",), ("empty.jsonl", "no records")),
    Case("blank_lines_only", (TASK + "{bad}/blank_lines_only.jsonl",), ("blank_lines_only.jsonl", "no records")),
    Case("json_not_a_list", (TASK + "{bad}/not_a_list.json",), ("not_a_list.json", "expected a JSON list")),
    Case("row_not_object", (TASK + "{bad}/row_not_object.jsonl",), ("row_not_object.jsonl, row 2", "got list")),
    Case(
        "messages_without_user",
        (TASK + "{bad}/messages_without_user.jsonl",),
        ("messages_without_user.jsonl, row 1", "no 'user' message"),
    ),
    Case("corrupt_parquet", (TASK + "{bad}/corrupt.parquet",), ("corrupt.parquet", "not a readable Parquet file")),
    Case("missing_data_file", (TASK + "{bad}/nowhere.jsonl",), ("nowhere.jsonl", "file not found")),
    Case("unknown_offline_source", (TASK + "offline:nope",), ("offline:nope", "unknown world role 'nope'")),
    Case(
        "huge_row_beyond_max_length",
        (TASK + "{bad}/huge_prompt.jsonl", "finetune.user_data.num_samples=2", "finetune.user_data.poison_ratio=0"),
        ("finetune.user_data (", "huge_prompt.jsonl), row 2:", "max_length=256 leaves no room"),
    ),
    Case(
        "task_test_without_label",
        ("--model", "{model}", "eval.task_test={bad}/task_without_label.jsonl"),
        ("task_without_label.jsonl, row 1", "need a 'label'"),
        command="eval",
    ),
    # ---- the poisoned mix: p, n
    Case("p_above_one", ("finetune.user_data.poison_ratio=1.5",), ("finetune.user_data.poison_ratio", "1")),
    Case("p_below_zero", ("finetune.user_data.poison_ratio=-0.1",), ("finetune.user_data.poison_ratio", "0")),
    Case("n_larger_than_data", ("finetune.user_data.num_samples=500",), ("harmful_data", "needs 125 harmful")),
    Case(
        "source_num_samples_larger_than_data",
        (TASK + "{{source: {task}, num_samples: 1000}}",),
        ("task_train.jsonl", "num_samples=1000 but the data has only 48 records"),
    ),
    Case("n_zero", ("finetune.user_data.num_samples=0",), ("finetune.user_data.num_samples", "greater than 0")),
    # ---- training settings
    Case("negative_max_steps", ("finetune.training.max_steps=-5",), ("finetune.training.max_steps", "-1")),
    Case("negative_save_steps", ("finetune.training.save_steps=-2",), ("finetune.training.save_steps",)),
    Case("negative_learning_rate", ("finetune.training.learning_rate=-1",), ("finetune.training.learning_rate",)),
    # ---- engines: FSDP/DeepSpeed options pass through training.extra_args; unsupported ones fail at start
    Case(
        "lisa_under_fsdp",
        ("finetune.method=lisa", "finetune.alignment_data={task}", "finetune.training.extra_args={{fsdp: true}}"),
        ("lisa does not support fsdp", "docs/engines.md"),
    ),
    Case(
        "booster_under_deepspeed_zero3",
        (
            "align.method=booster",
            "align.harmful_data={task}",
            "align.training.extra_args={{deepspeed: {{zero_optimization: {{stage: 3}}}}}}",
        ),
        ("booster does not support deepspeed-zero3", "docs/engines.md"),
        command="align",
    ),
    # ---- names: methods, judges
    Case("unknown_finetune_method", ("finetune.method=nope",), ("unknown finetune method 'nope'", "lisa")),
    Case("unknown_align_method", ("align.method=nope",), ("unknown align method 'nope'", "vaccine"), "align"),
    Case(
        "unknown_repair_method",
        ("--model", "{model}", "finetune=null", "repair.method=nope"),
        ("unknown repair method 'nope'", "antidote"),
        command="repair",
    ),
    Case(
        "unknown_judge",
        ("--model", "{model}", "eval.judges=[nope]"),
        ("unknown judge 'nope'", "refusal"),
        command="eval",
    ),
    Case(
        "typo_in_method_args", (), ("finetune.method_args", "rhoo", "did you mean 'rho'"), config="typo_method_arg.yaml"
    ),
    # ---- models
    Case("missing_model_path", ("model.model_name_or_path=/nonexistent/model",), ("/nonexistent/model", "not found")),
    Case(
        "model_dir_without_config",
        ("model.model_name_or_path={bad}/model_without_config",),
        ("model_without_config", "no config.json"),
    ),
    Case(
        "gguf_that_is_not_one",
        ("model.model_name_or_path={bad}/not_a_gguf", "model.gguf_file=model.gguf"),
        ("not_a_gguf/model.gguf", "not a GGUF file"),
    ),
    Case(
        "missing_gguf_file",
        ("model.model_name_or_path={bad}/not_a_gguf", "model.gguf_file=absent.gguf"),
        ("absent.gguf", "GGUF file not found"),
    ),
    # ---- the config file and the command line
    Case("yaml_key_typo", (), ("typo_key.yaml", "poison_ratoi", "did you mean 'poison_ratio'"), config="typo_key.yaml"),
    Case("invalid_yaml", (), ("invalid.yaml", "not valid YAML"), config="invalid.yaml"),
    Case("yaml_top_level_list", (), ("top_level_list.yaml", "must be a mapping"), config="top_level_list.yaml"),
    Case("missing_config_file", (), ("absent.yaml", "config file not found"), config="absent.yaml"),
    Case("override_without_value", ("finetune.method",), ("finetune.method", "key.sub=value")),
    Case(
        "token_in_config",
        (),
        ("finetune.training.extra_args.hub_token", "environment", "HF_TOKEN"),
        config="secret_in_config.yaml",
    ),
    Case("resume_with_overwrite", ("--resume", "--overwrite"), ("resume and overwrite exclude each other",)),
]


@pytest.fixture
def base_config(tiny_experiment, tmp_path) -> Path:
    """The valid fine-tuning-only config over the tiny model; its output directory holds an earlier result."""
    tiny_experiment.align = None
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(tiny_experiment.model_dump(mode="json")))
    earlier = Path(tiny_experiment.output_dir) / "earlier" / "results.csv"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("model,harmful_score\nfinal,12.5\n")
    return path


def run_cli(monkeypatch, capsys, argv: list[str]) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["tuneguard", *argv])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err


def assert_one_clear_error(code: int, err: str, needles: tuple[str, ...]) -> None:
    assert code == 2, err
    assert "Traceback" not in err and err.count("error:") == 1, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


def assert_nothing_lost(output_dir: Path) -> None:
    assert (output_dir / "earlier" / "results.csv").read_text() == "model,harmful_score\nfinal,12.5\n"
    assert not [p for p in output_dir.rglob("*.tmp")], "a temporary file was left behind"


def test_the_corpus_has_at_least_30_cases_and_every_file_is_used():
    assert len(CASES) >= 30
    used = " ".join(" ".join(c.args) + f" {c.config}" for c in CASES)
    unused = [p.name for p in BAD.iterdir() if p.name != "README.md" and p.name not in used]
    assert not unused, unused


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_stops_with_one_clear_message(
    case, tmp_path, base_config, tiny_experiment, small_data, tiny_model_dir, monkeypatch, capsys
):
    from transformers import Trainer

    monkeypatch.setattr(Trainer, "train", lambda *a, **k: pytest.fail("training started despite bad input"))
    monkeypatch.chdir(tmp_path)  # a corpus YAML's default output_dir ("runs") lands here
    config = BAD / case.config if case.config else base_config
    fill = {"bad": BAD, "model": tiny_model_dir, "task": small_data["task_train"]}
    args = [a.format(**fill) for a in case.args]
    code, err = run_cli(monkeypatch, capsys, [case.command, str(config), *args])
    assert_one_clear_error(code, err, case.needles)
    assert_nothing_lost(Path(tiny_experiment.output_dir))


def test_an_unwritable_output_directory_is_named(base_config, tiny_experiment, monkeypatch, capsys):
    """Simulated (tests run as root, where permissions are not enforced): the write probe is denied."""
    from transformers import Trainer

    monkeypatch.setattr(Trainer, "train", lambda *a, **k: pytest.fail("trained despite an unwritable output"))
    real_write = Path.write_text

    def denied(self, *args, **kwargs):
        if self.name == ".write-test":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", denied)
    code, err = run_cli(monkeypatch, capsys, ["finetune", str(base_config)])
    assert_one_clear_error(code, err, ("output_dir", "cannot write into it: permission denied"))
    assert_nothing_lost(Path(tiny_experiment.output_dir))


def test_a_full_disk_names_the_file_and_keeps_earlier_outputs(base_config, tiny_experiment, monkeypatch, capsys):
    """The disk fills up while the first output of the stage (the poisoned mix) is being written."""
    real_replace = os.replace

    def disk_full(src, dst, *args, **kwargs):
        if Path(dst).name == "train_mix.jsonl":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", disk_full)
    code, err = run_cli(monkeypatch, capsys, ["finetune", str(base_config)])
    assert_one_clear_error(code, err, ("train_mix.jsonl", "the disk is full"))
    assert_nothing_lost(Path(tiny_experiment.output_dir))


def test_a_failed_write_leaves_the_earlier_file_intact(tmp_path):
    from tuneguard.store import OutputError, atomic_output, write_json_atomic

    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"harmful_score": 12.5})
    with pytest.raises(OutputError, match=r"metrics\.json: the disk is full"), atomic_output(path) as tmp:
        tmp.write_text('{"harmful_sc')
        raise OSError(errno.ENOSPC, "No space left on device")
    assert path.read_text() == '{\n  "harmful_score": 12.5\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
