"""Every reader accepts every valid form of its format, and nothing else (the bad forms are in the bad-input
corpus); rows are counted as the file counts them, also after sampling and mixing; untrusted YAML is bounded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneguard.config import ConfigError, DataSource, load_config
from tuneguard.data import DataError, load_records, mix_user_data, resolve_template, tokenize_sft
from tuneguard.untrusted import MAX_YAML_NODES, check_plain_name, load_yaml


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


# ------------------------------------------------------------------------------------------------- JSON Lines
def test_jsonl_accepts_a_bom_crlf_blank_lines_and_line_separators_inside_strings(tmp_path):
    rows = [{"prompt": "first\u2028still the first prompt\x0c", "response": "a"}, {"prompt": "second", "response": "b"}]
    text = "\ufeff" + json.dumps(rows[0], ensure_ascii=False) + "\r\n\r\n" + json.dumps(rows[1]) + "\r\n"
    records = load_records(str(write(tmp_path / "data.jsonl", text)))
    assert [r["prompt"] for r in records] == [rows[0]["prompt"], "second"]
    assert [row for _, row in records.origins] == [1, 3]  # the file's lines; line 2 is blank


def test_json_accepts_a_list_or_a_data_list_with_a_bom(tmp_path):
    row = {"prompt": "p", "response": "r"}
    assert len(load_records(str(write(tmp_path / "a.json", "\ufeff" + json.dumps([row, row | {"id": 1}]))))) == 2
    assert load_records(str(write(tmp_path / "b.json", json.dumps({"data": [row]}))))[0]["prompt"] == "p"


# ------------------------------------------------------------------------------------------------------- CSV
def test_csv_accepts_quoted_newlines_commas_and_a_bom_and_counts_rows_by_line(tmp_path):
    text = '\ufeffprompt,response\r\n"two\nlines, one field",answer one\r\n\r\nthird line,"say ""hi"""\r\n'
    records = load_records(str(write(tmp_path / "data.csv", text)))
    assert [r["prompt"] for r in records] == ["two\nlines, one field", "third line"]
    assert records[1]["response"] == 'say "hi"'
    assert [row for _, row in records.origins] == [2, 5]


def test_csv_fields_longer_than_the_csv_modules_default_limit_are_read(tmp_path):
    long_prompt = "word " * 40_000  # 200 KB, over csv's 128 KiB default field limit
    text = f'prompt,response\n"{long_prompt}",answer\n'
    assert load_records(str(write(tmp_path / "long.csv", text)))[0]["prompt"] == long_prompt


# ------------------------------------------------------------------------------------------------- layouts
def test_messages_accept_openai_text_parts_and_trl_conversational_prompt_completion(tmp_path):
    parts = [{"type": "text", "text": "first part"}, {"type": "text", "text": "second part"}]
    rows = [
        {"messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": [parts[0]]}]},
        {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "prompt only"}]},
    ]
    path = write(tmp_path / "chat.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    records = load_records(str(path))
    assert records[0]["prompt"] == "first part\nsecond part" and records[0]["response"] == "first part"
    assert (records[1]["prompt"], records[1]["response"]) == ("q", "a")
    assert (records[2]["prompt"], records[2]["response"]) == ("prompt only", "")
    assert "[{" not in records[0]["prompt"]  # never the Python repr of the parts


def test_number_labels_are_scored_only_as_numbers(tmp_path):
    rows = [{"prompt": "a", "label": 42}, {"prompt": "b", "label": 42.0}, {"prompt": "c", "label": 3.5}]
    path = write(tmp_path / "test.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    numbers = load_records(str(path), require_label=True, numeric_labels=True)
    assert [r["label"] for r in numbers] == ["42", "42", "3.5"]
    with pytest.raises(DataError, match=r"row 1: field 'label' is a number \(42\).*accuracy_mode: number"):
        load_records(str(path), require_label=True)
    as_metadata = load_records(str(path))  # unscored (training) data keeps a number label as its text
    assert as_metadata[0]["label"] == "42"


def test_ids_may_be_text_or_integers_and_a_null_id_is_the_row_position(tmp_path):
    rows = [{"id": 7, "prompt": "a", "response": "x"}, {"id": None, "prompt": "b", "response": "y"}]
    path = write(tmp_path / "ids.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert [r["id"] for r in load_records(str(path))] == ["7", "1"]


# --------------------------------------------------------------------- rows after sampling, excluding, mixing
def test_a_row_found_bad_after_sampling_and_mixing_is_named_by_its_line_in_the_file(tmp_path, world_tokenizer):
    rows = [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(30)]
    rows[17]["prompt"] = "long " * 300
    task = write(tmp_path / "task.jsonl", "\n\n" + "".join(json.dumps(r) + "\n" for r in rows))  # 2 blank lines
    harmful = write(tmp_path / "harmful.jsonl", "".join(json.dumps(r) + "\n" for r in rows[:5]))
    sampled = load_records(DataSource(source=str(task), num_samples=30, seed=3))
    mix = mix_user_data(sampled, load_records(str(harmful)), 30, 0.0, seed=1)
    template = resolve_template("alpaca", world_tokenizer)
    with pytest.raises(DataError, match=r"finetune\.user_data \(.*task\.jsonl\), row 20: prompt is"):
        tokenize_sft(mix, world_tokenizer, template, 64, "finetune.user_data")


def test_sampling_by_index_draws_the_records_that_sampling_the_list_draws(tmp_path):
    """Records keep their origins through num_samples; the draw itself is unchanged (data fingerprints and stage
    keys of earlier runs stay valid)."""
    import random

    rows = [{"prompt": f"q{i}", "response": "a"} for i in range(50)]
    path = write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    full = load_records(str(path))
    assert list(load_records(DataSource(source=str(path), num_samples=10, seed=4))) == random.Random(4).sample(
        list(full), 10
    )


# ---------------------------------------------------------------------------------------------- YAML bounds
def test_yaml_anchors_aliases_and_merge_keys_within_the_bounds_are_accepted(tmp_path):
    text = """
align: {training: &training {learning_rate: 1.0e-4, num_train_epochs: 1, per_device_train_batch_size: 4}}
finetune:
  training:
    <<: *training
    learning_rate: 2.0e-4
"""
    cfg = load_config(write(tmp_path / "anchors.yaml", text))
    assert cfg.align.training.learning_rate == 1e-4 and cfg.finetune.training.learning_rate == 2e-4
    assert cfg.finetune.training.per_device_train_batch_size == 4


def test_yaml_expansion_is_counted_through_aliases():
    small_bomb = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    assert len(load_yaml(small_bomb, "x", ConfigError)["b"]) == 10  # ~120 values: fine
    levels = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    levels += [f"a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * 10) + "]" for k in range(1, 6)]
    assert MAX_YAML_NODES < 10**6
    with pytest.raises(ConfigError, match="expands to more than"):
        load_yaml("\n".join(levels), "bomb.yaml", ConfigError)


def test_names_that_become_paths_are_plain_names():
    for good in ("efficacy", "lisa-offline", "run_2.b"):
        assert check_plain_name(good, "grid", ConfigError) == good
    for bad in ("../x", "a/b", ".hidden", "", "-flag", "x" * 201, "a\x00b"):
        with pytest.raises(ConfigError, match="not a plain name"):
            check_plain_name(bad, "grid", ConfigError)


def test_a_method_name_must_be_a_plain_name_since_it_names_stage_directories():
    from tuneguard.methods.base import TrainingMethod, register_training_method
    from tuneguard.methods.sft import SFT

    with pytest.raises(ValueError, match="not a plain name"):
        register_training_method(TrainingMethod("../escape", ("finetune",), SFT.params_cls, SFT.build_trainer))
