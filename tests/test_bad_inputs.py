"""The bad-input corpus (tests/bad_inputs/): every case, run through the command line, stops with ONE clear
message naming the file and row (or the config key), without a traceback, before anything trains, and loses
nothing already written.

The base config has every stage (align -> finetune -> repair -> eval), so a problem of a later stage must be
found by the pre-flight before the first stage trains (the Trainer's ``train`` fails the test if it is called).
Files that cannot live in git (symbolic-link loops, FIFOs, a 2 MiB config) are made by ``MAKERS`` in a temporary
folder, ``{tmp}``."""

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
ROOT = BAD.parent.parent
TASK = "finetune.user_data.task_data="
EVAL = "eval.harmful_prompts="
TEST = "eval.task_test="
LISA = ("finetune.method=lisa",)


@dataclass(frozen=True)
class Case:
    """``tuneguard <command> <config> <args>``; ``{bad}``, ``{model}``, ``{task}``, ``{eval}``, ``{tmp}``, ``{root}``
    and ``{long}`` in args and config are filled in. ``config`` names a corpus YAML that replaces the (valid) base
    config ("" for a command without one); ``needles`` must all appear in the one error message; ``env`` is set
    for the run; ``make`` names a maker of files under ``{tmp}``."""

    name: str
    args: tuple[str, ...]
    needles: tuple[str, ...]
    command: str = "finetune"
    config: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    make: str | None = None


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
    Case("unknown_offline_source", (TASK + "offline:nope",), ("offline:nope", "not a registered data source")),
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
    # ======== issue 15 and beyond: every stage configured, so each case must be found before align trains ========
    # ---- a later stage's data or method, found before the first stage trains
    Case(
        "lisa_without_alignment_data_or_align_stage",
        ("align=null", *LISA),
        ("finetune.alignment_data: finetune method 'lisa' needs it", "align stage"),
    ),
    Case("booster_without_harmful_data", ("align.method=booster",), ("align.harmful_data: align method 'booster'",)),
    Case(
        "antidote_without_realign_data",
        ("repair.method=antidote",),
        ("repair.realign_data: repair method 'antidote' needs it",),
        command="run",
    ),
    Case("bad_task_file_after_align", (TASK + "{bad}/malformed.jsonl",), ("malformed.jsonl, row 2",), command="run"),
    Case("bad_eval_prompts_file", (EVAL + "{bad}/malformed.jsonl",), ("malformed.jsonl, row 2",), command="run"),
    Case("bad_task_test_file", (TEST + "{bad}/task_without_label.jsonl",), ("task_without_label.jsonl, row 1",), "run"),
    Case(
        "bad_lisa_alignment_file",
        (*LISA, "finetune.alignment_data={bad}/empty_prompt.jsonl"),
        ("empty_prompt.jsonl, row 2", "empty prompt"),
    ),
    Case(
        "prompt_only_records_as_task_data",
        (TASK + "{bad}/prompt_only.jsonl",),
        ("finetune.user_data (", "prompt_only.jsonl), row", "empty response"),
    ),
    Case(
        "realignment_data_holds_the_eval_prompts",
        ("repair.method=antidote", "repair.realign_data={eval}"),
        ("repair.realign_data and eval.harmful_prompts share",),
        command="run",
    ),
    Case("eval_template_missing", ("eval.template=nope",), ("eval.template", "'nope'"), command="run"),
    # ---- config values: not a number, null, infinite, empty
    Case("p_not_a_number", ("finetune.user_data.poison_ratio=nan",), ("poison_ratio", "finite number", "'nan'")),
    Case("p_null", ("finetune.user_data.poison_ratio=null",), ("poison_ratio", "got null")),
    Case("epochs_overflow", ("finetune.training.num_train_epochs=1e400",), ("num_train_epochs", "finite number")),
    Case("learning_rate_infinite", ("align.training.learning_rate=.inf",), ("align.training.learning_rate", "finite")),
    Case("method_arg_nan", (*LISA, "finetune.method_args={{rho: .nan}}"), ("finetune.method_args", "rho", "finite")),
    Case("n_not_an_integer", ("finetune.user_data.num_samples=2.5",), ("num_samples", "integer")),
    Case("empty_judge_list", ("eval.judges=[]",), ("eval.judges", "at least 1 item"), command="run"),
    Case("required_source_null", ("finetune.user_data.task_data=null",), ("task_data", "got null")),
    # ---- training.extra_args and TrainingArguments
    Case(
        "extra_args_unknown_keyword",
        ("finetune.training.extra_args={{eval_strateg: steps}}",),
        (
            "finetune.training.extra_args",
            "'eval_strateg' is not a transformers.TrainingArguments field",
            "eval_strategy",
        ),
    ),
    Case(
        "extra_args_duplicates_a_field",
        ("finetune.training.extra_args={{learning_rate: 0.1}}",),
        ("'learning_rate' is a field of training itself: set training.learning_rate",),
    ),
    Case(
        "extra_args_sets_what_tuneguard_sets",
        ("align.training.extra_args={{output_dir: elsewhere}}",),
        ("'output_dir' is set by tuneguard",),
    ),
    Case(
        "extra_args_bad_value",
        ("finetune.training.extra_args={{eval_strategy: sometimes}}",),
        ("finetune.training: transformers.TrainingArguments refuses", "sometimes"),
    ),
    Case("unknown_lr_scheduler", ("finetune.training.lr_scheduler_type=bogus",), ("finetune.training", "bogus")),
    # ---- the config file: empty, hostile, unreadable
    Case("empty_config", (), ("empty.yaml", "no settings"), config="empty.yaml"),
    Case("comments_only_config", (), ("comments_only.yaml", "no settings"), config="comments_only.yaml"),
    Case("billion_laughs", (), ("billion_laughs.yaml", "expands to more than"), config="billion_laughs.yaml"),
    Case("deeply_nested_yaml", (), ("deep_nesting.yaml", "nested more than 64 levels"), config="deep_nesting.yaml"),
    Case("duplicated_yaml_key", (), ("duplicate_key.yaml", "'finetune' appears twice"), config="duplicate_key.yaml"),
    Case("alias_cycle", (), ("alias_cycle.yaml", "refers to a value that contains it"), config="alias_cycle.yaml"),
    Case("python_tag_in_yaml", (), ("python_tag.yaml", "not valid YAML"), config="python_tag.yaml"),
    Case(
        "huge_config",
        (),
        ("huge.yaml", "a config file is at most 1048576 bytes"),
        config="{tmp}/huge.yaml",
        make="huge",
    ),
    Case("config_is_a_directory", (), ("model_without_config", "is a directory"), config="model_without_config"),
    Case("config_symlink_loop", (), ("loop.yaml", "symbolic link loop"), config="{tmp}/loop.yaml", make="loops"),
    Case("preset_path_traversal", (), ("'../../etc/passwd' is not a plain name",), config="preset:../../etc/passwd"),
    Case("unknown_preset", (), ("unknown preset 'nope'",), config="preset:nope"),
    Case("gguf_file_outside_the_model", ("model.gguf_file=../../x.gguf",), ("model.gguf_file", "inside")),
    # ---- data files: forms of the format that are not valid, or not supported
    Case(
        "messages_as_strings",
        (TASK + "{bad}/messages_as_strings.jsonl",),
        ("messages_as_strings.jsonl, row 2", "messages[1] must be a {role, content} object, got str"),
    ),
    Case(
        "message_content_not_text",
        (TASK + "{bad}/message_content_not_text.jsonl",),
        ("row 1", "messages[1].content must be text or a list of text parts, got int"),
    ),
    Case(
        "message_image_part",
        (TASK + "{bad}/message_image_part.jsonl",),
        ("row 1", "messages[1].content[2]", "got 'image_url'"),
    ),
    Case("system_message", (TASK + "{bad}/system_message.jsonl",), ("row 1", "'system' messages are not supported")),
    Case("multi_turn", (TASK + "{bad}/multi_turn.jsonl",), ("multi_turn.jsonl, row 1", "multi-turn")),
    Case(
        "unknown_message_role", (TASK + "{bad}/unknown_role.jsonl",), ("role must be 'user' or 'assistant'", "'tool'")
    ),
    Case(
        "conversational_prompt_with_two_turns",
        (TASK + "{bad}/conversational_two_prompts.jsonl",),
        ("row 1", "field 'prompt' must hold one 'user' message"),
    ),
    Case("null_response", (TASK + "{bad}/null_response.jsonl",), ("null_response.jsonl, row 2", "'response' is null")),
    Case("alpaca_null_output", (TASK + "{bad}/alpaca_null_output.jsonl",), ("row 1", "field 'output' is null")),
    Case("label_true_false", (TEST + "{bad}/label_bool.jsonl",), ("label_bool.jsonl, row 1", "got true/false"), "run"),
    Case("label_list", (TEST + "{bad}/label_list.jsonl",), ("label_list.jsonl, row 1", "got a list"), "run"),
    Case(
        "label_number_compared_as_text",
        (TEST + "{bad}/label_number.jsonl",),
        ("label_number.jsonl, row 1", "is a number (1)", "eval.accuracy_mode: number"),
        command="run",
    ),
    Case("id_not_text", (TASK + "{bad}/id_list.jsonl",), ("id_list.jsonl, row 1", "'id' must be text or an integer")),
    Case("duplicated_json_key", (TASK + "{bad}/duplicate_json_key.jsonl",), ("row 2", "'prompt' appears twice")),
    Case("nan_in_json", (TASK + "{bad}/nan_value.jsonl",), ("nan_value.jsonl, row 2", "NaN is not a JSON value")),
    Case("json_nested_too_deeply", (TASK + "{bad}/deep.json",), ("deep.json", "nested too deeply")),
    Case("csv_fewer_fields", (TASK + "{bad}/fewer_fields.csv",), ("fewer_fields.csv, row 3", "2 of the header's 3")),
    Case("csv_duplicate_column", (TASK + "{bad}/duplicate_column.csv",), ("row 1", "'prompt' appears twice")),
    Case(
        "csv_unterminated_quote",
        (TASK + "{bad}/unterminated_quote.csv",),
        ("unterminated_quote.csv, row 3", "not valid CSV", "unexpected end of data"),
    ),
    Case(
        "data_file_is_a_directory", (TASK + "{bad}/model_without_config",), ("model_without_config", "is a directory")
    ),
    Case("data_symlink_loop", (TASK + "{tmp}/loop.jsonl",), ("loop.jsonl", "symbolic link loop"), make="loops"),
    Case("data_broken_symlink", (TASK + "{tmp}/broken.jsonl",), ("broken.jsonl", "broken symbolic link"), make="loops"),
    Case("data_file_is_a_fifo", (TASK + "{tmp}/fifo.jsonl",), ("fifo.jsonl", "not a regular file"), make="fifo"),
    # ---- where outputs go: output_dir and the cache
    Case("output_dir_is_a_file", ("output_dir={bad}/empty.jsonl",), ("output_dir", "is a file, not a directory")),
    Case("output_dir_below_a_file", ("output_dir={bad}/empty.jsonl/runs",), ("output_dir", "a folder on its path")),
    Case("output_dir_name_too_long", ("output_dir={tmp}/{long}",), ("output_dir", "too long for the file system")),
    Case(
        "cache_is_a_file",
        ("model.model_name_or_path=offline:tiny",),
        ("TUNEGUARD_CACHE=", "is a file, not a directory"),
        env=(("TUNEGUARD_CACHE", "{bad}/empty.jsonl"),),
    ),
    Case(
        "cache_below_a_file",
        ("model.model_name_or_path=offline:tiny",),
        ("TUNEGUARD_CACHE=", "a folder on its path is a file"),
        env=(("TUNEGUARD_CACHE", "{bad}/empty.jsonl/cache"),),
    ),
    # ---- grids and reports
    Case("grid_name_escapes_its_folder", (), ("name: the grid '../../outside'",), "grid", "grid_name_escapes.yaml"),
    Case("grid_shard_out_of_range", ("--shard", "3/2"), ("--shard 3/2",), "grid", "{root}/benchmarks/efficacy.yaml"),
    Case(
        "grid_cell_out_of_range",
        ("--cell", "999"),
        ("--cell 999", "cells 0..83"),
        "grid",
        "{root}/benchmarks/efficacy.yaml",
    ),
    Case(
        "grid_output_dir_is_a_file",
        ("output_dir={bad}/empty.jsonl",),
        ("output_dir", "is a file, not a directory"),
        command="grid",
        config="{root}/benchmarks/efficacy.yaml",
    ),
    Case(
        "grid_cell_without_a_data_role",
        ("--cell", "0", "align.method=booster", "output_dir={tmp}/grid"),
        ("cell 0: sft, poison_ratio=0.0, seed=0", "align.harmful_data: align method 'booster' needs it"),
        command="grid",
        config="{root}/benchmarks/efficacy.yaml",
    ),
    Case("demo_ratio_not_a_number", ("--poison-ratios", "0,nan"), ("--poison-ratios: 'nan'",), "demo", ""),
    Case("demo_ratio_above_one", ("--poison-ratios", "0,2"), ("'2' is not a number in [0, 1]",), "demo", ""),
    Case("report_of_a_non_grid_folder", ("{bad}",), ("not a grid run directory",), command="report", config=""),
]

LONG_NAME = "x" * 300


def _make_huge(tmp: Path) -> None:
    (tmp / "huge.yaml").write_text("# filler\n" * 150_000 + "name: huge\n")


def _make_loops(tmp: Path) -> None:
    for name in ("loop.yaml", "loop.jsonl"):
        (tmp / name).symlink_to(tmp / name)
    (tmp / "broken.jsonl").symlink_to(tmp / "nowhere.jsonl")


def _make_fifo(tmp: Path) -> None:
    os.mkfifo(tmp / "fifo.jsonl")  # reading it would block forever: it must be refused, not read


MAKERS = {"huge": _make_huge, "loops": _make_loops, "fifo": _make_fifo}


@pytest.fixture
def base_config(tiny_experiment, tmp_path) -> Path:
    """The valid config of every stage over the tiny model; its output directory holds an earlier result."""
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


def test_the_corpus_has_at_least_115_cases_every_file_is_used_and_names_are_unique():
    assert len(CASES) >= 115
    assert len({c.name for c in CASES}) == len(CASES)
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
    made = tmp_path / "made"
    made.mkdir()
    if case.make:
        MAKERS[case.make](made)
    fill = {
        "bad": BAD,
        "model": tiny_model_dir,
        "task": small_data["task_train"],
        "eval": small_data["harmful_eval"],
        "tmp": made,
        "root": ROOT,
        "long": LONG_NAME,
    }
    for key, value in case.env:
        monkeypatch.setenv(key, value.format(**fill))
    if case.config is None:
        config = [str(base_config)]
    elif case.config == "":
        config = []
    elif case.config.startswith(("{", "preset:")):
        config = [case.config.format(**fill)]
    else:
        config = [str(BAD / case.config)]
    args = [a.format(**fill) for a in case.args]
    code, err = run_cli(monkeypatch, capsys, [case.command, *config, *args])
    assert_one_clear_error(code, err, case.needles)
    assert_nothing_lost(Path(tiny_experiment.output_dir))


def test_an_unwritable_output_directory_is_named(base_config, tiny_experiment, monkeypatch, capsys):
    """Simulated (tests run as root, where permissions are not enforced): the write probe is denied."""
    from transformers import Trainer

    monkeypatch.setattr(Trainer, "train", lambda *a, **k: pytest.fail("trained despite an unwritable output"))
    real_write = Path.write_text

    def denied(self, *args, **kwargs):
        if self.name.startswith(".write-test"):
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
