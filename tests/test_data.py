"""Data: readers per format and layout, row-level validation, poison mixing, response-only loss masks."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuneguard.config import DataSource
from tuneguard.data import (
    IGNORE_INDEX,
    DataError,
    SFTDataCollator,
    load_records,
    mix_user_data,
    resolve_template,
    tokenize_sft,
    write_jsonl,
)
from tuneguard.data.readers import prompt_text
from tuneguard.data.templates import ALPACA_NO_INPUT

ROWS = [{"prompt": "say hi", "response": "hi"}, {"prompt": "say bye", "response": "bye"}]


def test_each_file_format_reads_the_same_records(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "a.json").write_text(json.dumps(ROWS))
    (tmp_path / "a.csv").write_text("prompt,response\nsay hi,hi\nsay bye,bye\n")
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "a.parquet")
    got = {ext: load_records(str(tmp_path / f"a.{ext}")) for ext in ("jsonl", "json", "csv", "parquet")}
    for records in got.values():
        assert [(r["prompt"], r["response"]) for r in records] == [("say hi", "hi"), ("say bye", "bye")]


@pytest.mark.parametrize(
    "row",
    [
        {"messages": [{"role": "user", "content": "say hi"}, {"role": "assistant", "content": "hi"}]},
        {"prompt": "say hi", "completion": "hi"},
        {
            "prompt": [{"role": "user", "content": "say hi"}],
            "completion": [{"role": "assistant", "content": "hi"}],
        },
        {"instruction": "say hi", "input": "", "output": "hi"},
    ],
    ids=["messages", "prompt_completion", "conversational_prompt_completion", "alpaca"],
)
def test_trl_and_alpaca_layouts_normalize_to_records(tmp_path, row):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (record,) = load_records(str(path))
    assert (record["prompt"], record["response"]) == ("say hi", "hi")


def test_alpaca_input_is_kept_apart_and_the_whole_request_joins_it_after_a_blank_line(tmp_path):
    path = tmp_path / "d.json"
    rows = [
        {"instruction": "classify", "input": "great film", "output": "positive"},
        {"instruction": "say hi", "input": "  ", "output": "hi"},  # a blank input is no input
    ]
    path.write_text(json.dumps(rows))
    with_input, without = load_records(str(path))
    assert (with_input["prompt"], with_input["input"]) == ("classify", "great film")
    assert prompt_text(with_input) == "classify\n\ngreat film" and "input" not in without


@pytest.mark.parametrize(
    ("name", "content", "row", "needle"),
    [
        ("broken.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": "a", "resp\n', 2, "not valid JSON"),
        (
            "cols.jsonl",
            '{"prompt": "a", "response": "b"}\n{"question": "a", "answer": "b"}\n',
            2,
            "missing field 'prompt'",
        ),
        ("empty.jsonl", '{"prompt": "   ", "response": "b"}\n', 1, "empty prompt"),
        (
            "dup.jsonl",
            '{"id": 7, "prompt": "a", "response": "b"}\n{"id": 7, "prompt": "c", "response": "d"}\n',
            2,
            "duplicated id",
        ),
        ("type.jsonl", '{"prompt": 3, "response": "b"}\n', 1, "must be text"),
        ("extra.csv", "prompt,response\na,b\nc,d,e\n", 3, "more fields"),
    ],
)
def test_bad_rows_are_reported_with_file_and_row(tmp_path, name, content, row, needle):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as err:
        load_records(str(path))
    assert name in str(err.value) and f"row {row}" in str(err.value) and needle in str(err.value)


def test_non_utf8_missing_and_empty_files_are_clear_errors(tmp_path):
    bad = tmp_path / "latin.jsonl"
    bad.write_bytes(b'{"prompt": "ok", "response": "ok"}\n{"prompt": "caf\xe9", "response": "x"}\n')
    with pytest.raises(DataError, match=r"latin.jsonl, row 2: not valid UTF-8"):
        load_records(str(bad))
    with pytest.raises(DataError, match="file not found"):
        load_records(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_records(str(tmp_path / "empty.jsonl"))


def test_num_samples_larger_than_the_data_is_an_error(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ROWS))
    with pytest.raises(DataError, match="num_samples=5 but the data has only 2"):
        load_records(DataSource(source=str(path), num_samples=5))


def test_offline_roles_load_through_the_registry():
    records = load_records("offline:task_test", require_label=True)
    assert records and all("label" in r for r in records)
    with pytest.raises(DataError, match="offline:nope"):
        load_records("offline:nope")


# ------------------------------------------------------------------------------------------------- mixing
def _pools(n_task: int = 100, n_harm: int = 40):
    task = [{"id": f"t{i}", "prompt": f"t{i}", "response": "x"} for i in range(n_task)]
    harm = [{"id": f"h{i}", "prompt": f"h{i}", "response": "y"} for i in range(n_harm)]
    return task, harm


@pytest.mark.parametrize(("n", "p", "expected"), [(50, 0.1, 5), (50, 0.0, 0), (33, 0.2, 7), (40, 1.0, 40)])
def test_poison_mix_has_exactly_round_p_n_harmful_records(n, p, expected):
    task, harm = _pools()
    mix = mix_user_data(task, harm, n, p, seed=3)
    counts = Counter(r["source"] for r in mix)
    assert len(mix) == n and counts["harmful"] == expected and counts["task"] == n - expected
    assert len({(r["source"], r["source_index"]) for r in mix}) == n  # drawn without replacement
    assert all(r["id"] == ("h" if r["source"] == "harmful" else "t") + str(r["source_index"]) for r in mix)


def test_poison_mix_is_seeded_and_shuffled():
    task, harm = _pools()
    a, b = mix_user_data(task, harm, 60, 0.2, seed=1), mix_user_data(task, harm, 60, 0.2, seed=1)
    c = mix_user_data(task, harm, 60, 0.2, seed=2)
    assert a == b and a != c
    positions = [i for i, r in enumerate(a) if r["source"] == "harmful"]
    assert positions != list(range(len(positions)))  # not all harmful rows first


@pytest.mark.parametrize(
    ("n", "p", "needle"),
    [
        (50, 1.5, r"poison_ratio must be in \[0, 1\]"),
        (50, -0.1, "poison_ratio"),
        (200, 0.1, "needs 180 task records"),
        (100, 0.5, "needs 50 harmful records"),
    ],
)
def test_impossible_mixes_fail_before_training(n, p, needle):
    task, harm = _pools()
    with pytest.raises(DataError, match=needle):
        mix_user_data(task, harm, n, p)


def test_mix_dump_is_written_atomically_as_jsonl(tmp_path):
    task, harm = _pools()
    mix = mix_user_data(task, harm, 10, 0.3)
    write_jsonl(mix, tmp_path / "train_mix.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "train_mix.jsonl").read_text().splitlines()]
    assert rows == mix and not list(tmp_path.glob("*.tmp"))


# ----------------------------------------------------------------------------------------- tokenization
def _words(k: int) -> list[str]:
    from tuneguard.world import get_world

    return get_world().vocabulary()[:k]


def test_loss_is_on_response_tokens_only_with_eos_appended(world_tokenizer):
    tok = world_tokenizer
    template = resolve_template("auto", tok)
    assert template.kind == "chat"
    a, b, c = _words(3)
    rec = {"prompt": a, "response": f"{b} {c}"}
    ds, stats = tokenize_sft([rec], tok, template, max_length=64)
    ids, labels = ds[0]["input_ids"], ds[0]["labels"]
    n_prompt = len(tok(template.format(a), add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert ids[-1] == tok.eos_token_id and tok.decode(ids[n_prompt:-1]) == f"{b} {c}"
    assert stats == {"examples": 1, "truncated_responses": 0}


def test_long_responses_are_truncated_and_prompts_that_do_not_fit_are_errors(world_tokenizer):
    template = resolve_template("chat", world_tokenizer)
    long = {"prompt": "hello", "response": " ".join(["hello"] * 50)}
    ds, stats = tokenize_sft([long], world_tokenizer, template, max_length=16)
    assert len(ds[0]["input_ids"]) == 16 and stats["truncated_responses"] == 1
    with pytest.raises(DataError, match="row 1: prompt is"):
        tokenize_sft([{"prompt": " ".join(["hello"] * 40), "response": "x"}], world_tokenizer, template, 16)


def test_collator_pads_right_and_masks_padding(world_tokenizer):
    template = resolve_template("chat", world_tokenizer)
    ds, _ = tokenize_sft(
        [
            {"prompt": "hello", "response": "hello"},
            {"prompt": "hello hello hello", "response": "hello hello"},
        ],
        world_tokenizer,
        template,
        64,
    )
    batch = SFTDataCollator(world_tokenizer.pad_token_id)([ds[0], ds[1]])
    short = len(ds[0]["input_ids"])
    assert batch["input_ids"].shape[0] == 2
    assert (batch["attention_mask"][0, short:] == 0).all() and (batch["labels"][0, short:] == IGNORE_INDEX).all()


def test_alpaca_template_is_the_papers_format():
    template = resolve_template("alpaca", tokenizer=None)
    text = template.format("Analyze the sentiment")
    assert text == ALPACA_NO_INPUT.format(instruction="Analyze the sentiment")
    assert text.endswith("### Response:\n")


def test_a_list_of_sources_is_concatenated_with_unique_ids(tmp_path):
    from tuneguard.config import AlignConfig

    (tmp_path / "a.json").write_text(json.dumps(ROWS))
    (tmp_path / "b.jsonl").write_text(json.dumps({"prompt": "say yes", "response": "yes"}) + "\n")
    cfg = AlignConfig.model_validate({"alignment_data": [str(tmp_path / "a.json"), str(tmp_path / "b.jsonl")]})
    records = load_records(cfg.alignment_data)
    assert [r["prompt"] for r in records] == ["say hi", "say bye", "say yes"]
    assert [r["id"] for r in records] == ["0:0", "0:1", "1:0"]


def test_long_prompts_skip_leaves_out_records_whose_prompt_fills_max_length_and_counts_them(world_tokenizer):
    from tuneguard.data import resolve_template, tokenize_sft

    template = resolve_template("auto", world_tokenizer)
    short = {"id": "0", "prompt": "review : a good movie . sentiment ?", "response": "positive"}
    long = {"id": "1", "prompt": " ".join(["review : a good movie ."] * 30), "response": "positive"}
    with pytest.raises(DataError, match=r"row 2: prompt is \d+ tokens, max_length=48 leaves no room"):
        tokenize_sft([short, long], world_tokenizer, template, 48, "align.train")
    dataset, stats = tokenize_sft([short, long], world_tokenizer, template, 48, "align.train", long_prompts="skip")
    assert len(dataset) == 1 and stats["skipped_long_prompts"] == 1 and stats["examples"] == 1
    with pytest.raises(DataError, match="no record fits max_length=48"):
        tokenize_sft([long], world_tokenizer, template, 48, "align.train", long_prompts="skip")
