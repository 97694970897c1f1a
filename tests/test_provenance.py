"""Which records an experiment uses and which may not share prompts (issue 12, point 4): row ranges, the
authors' first-rows draw, the seed rule, and the disjointness of the attack, the provider's data and the
evaluation prompts, checked before anything trains."""

from __future__ import annotations

import json

import pytest
from conftest import harmful_data_roles, write_jsonl

from tuneguard.config import ConfigError, DataSource, ExperimentConfig, load_config
from tuneguard.data import DataError, load_records, mix_user_data
from tuneguard.data.provenance import check_disjoint_roles, describe_selection
from tuneguard.data.registry import DATA_DIR_ENV
from tuneguard.pipeline import run_experiment

ROWS = [{"id": str(i), "prompt": f"placeholder request {i}", "response": f"answer {i}"} for i in range(10)]


def _records(tmp_path, rows=ROWS, name="data.jsonl"):
    return str(write_jsonl(tmp_path / name, rows))


# ---- rows, exclude, num_samples, seed -------------------------------------------------------------------------
def test_rows_keep_a_range_of_positions_counted_before_exclude_and_num_samples(tmp_path):
    path = _records(tmp_path)
    other = _records(tmp_path, ROWS[3:4], "other.jsonl")
    assert [r["id"] for r in load_records(DataSource(source=path, rows=[2, 5]))] == ["2", "3", "4"]
    # the range is the authors' positions: leaving a record out does not shift it
    picked = load_records(DataSource(source=path, rows=[2, 5], exclude=[other]))
    assert [r["id"] for r in picked] == ["2", "4"]
    drawn = load_records(DataSource(source=path, rows=[2, 8], num_samples=3, seed=1))
    assert len(drawn) == 3 and {r["id"] for r in drawn} <= {"2", "3", "4", "5", "6", "7"}


def test_a_row_range_past_the_data_or_backwards_is_a_clear_error(tmp_path):
    path = _records(tmp_path)
    with pytest.raises(DataError, match=r"rows \[5, 11\) but the data has only 10 records"):
        load_records(DataSource(source=path, rows=[5, 11]))
    with pytest.raises(ConfigError, match=r"rows must be \[start, end\] with 0 <= start < end"):
        load_config(None, [f"finetune.user_data.harmful_data={{source: {path}, rows: [4, 4]}}"])


def test_a_seed_without_num_samples_is_an_error_not_a_silent_no_op(tmp_path):
    with pytest.raises(ConfigError, match=r"finetune\.user_data\.harmful_data.*seed=2 seeds the num_samples draw"):
        load_config(None, ["finetune.user_data.harmful_data={source: offline:harmful, seed: 2}"])
    load_config(None, ["finetune.user_data.harmful_data={source: offline:harmful, seed: 2, num_samples: 5}"])
    # the default seed is written into every resolved config, so it stays accepted there
    load_config(None, ["finetune.user_data.harmful_data={source: offline:harmful, seed: 0}"])


def test_options_added_later_are_written_only_when_set_so_stage_keys_stay(tmp_path):
    dumped = load_config("preset:demo").model_dump(mode="json")
    assert set(dumped["finetune"]["user_data"]) == {"task_data", "harmful_data", "num_samples", "poison_ratio", "seed"}
    assert set(dumped["finetune"]["user_data"]["harmful_data"]) == {"source", "split", "layout", "num_samples", "seed"}
    assert not {"task_template", "task_max_new_tokens"} & set(dumped["eval"])
    ranged = DataSource(source="x.jsonl", rows=[1, 3]).model_dump(mode="json")
    assert ranged["rows"] == [1, 3]


# ---- the authors' first-rows draw -------------------------------------------------------------------------------
def test_draw_first_takes_the_first_harmful_and_task_records_in_source_order():
    harmful = [{"id": f"h{i}", "prompt": f"h {i}", "response": "x"} for i in range(50)]
    task = [{"id": f"t{i}", "prompt": f"t {i}", "response": "y"} for i in range(50)]
    mix = mix_user_data(task, harmful, num_samples=20, poison_ratio=0.1, seed=3, draw="first")
    assert sorted(r["source_index"] for r in mix if r["source"] == "harmful") == [0, 1]
    assert sorted(r["source_index"] for r in mix if r["source"] == "task") == list(range(18))
    assert [r["source"] for r in mix] != ["harmful"] * 2 + ["task"] * 18  # still shuffled
    random_mix = mix_user_data(task, harmful, num_samples=20, poison_ratio=0.1, seed=3)
    assert sorted(r["source_index"] for r in random_mix if r["source"] == "task") != list(range(18))


# ---- disjointness -----------------------------------------------------------------------------------------------
def test_roles_on_different_sides_may_not_share_a_prompt_and_the_error_names_roles_and_count_never_text():
    attack = [{"id": "a", "prompt": "How to  Hide a secret?", "response": "x"}, {"id": "b", "prompt": "p2"}]
    provider = [{"id": "c", "prompt": "how to hide a SECRET?", "response": "no"}]
    evaluation = [{"id": "d", "prompt": "p2"}, {"id": "e", "prompt": "p3"}]
    with pytest.raises(DataError) as info:
        check_disjoint_roles(
            {
                "finetune.user_data.harmful_data": attack,
                "finetune.alignment_data": provider,
                "eval.harmful_prompts": evaluation,
            }
        )
    message = str(info.value)
    assert "finetune.user_data.harmful_data and finetune.alignment_data share 1 prompt;" in message
    assert "finetune.user_data.harmful_data and eval.harmful_prompts share 1 prompt " in message
    assert "hide" not in message.lower() and "p2" not in message


def test_the_providers_own_data_sets_may_share_prompts_by_design():
    # Booster's harmful data are its alignment prompts with harmful answers
    same = [{"id": "0", "prompt": "placeholder request", "response": "x"}]
    report = check_disjoint_roles(
        {"align.alignment_data": same, "align.harmful_data": same, "eval.harmful_prompts": [{"id": "1", "prompt": "q"}]}
    )
    assert report == {"align.alignment_data | eval.harmful_prompts": 0, "align.harmful_data | eval.harmful_prompts": 0}


def test_an_instruction_with_an_input_is_compared_as_the_whole_request():
    attack = [{"id": "0", "prompt": "classify", "input": "placeholder text", "response": "x"}]
    evaluation = [{"id": "1", "prompt": "classify\n\nplaceholder   text"}]
    with pytest.raises(DataError, match="share 1 prompt"):
        check_disjoint_roles({"finetune.user_data.harmful_data": attack, "eval.harmful_prompts": evaluation})


def _offline_experiment(tmp_path, **overrides) -> ExperimentConfig:
    raw = load_config("preset:demo").model_dump(mode="json")
    raw["output_dir"] = str(tmp_path / "runs")
    for key, value in overrides.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return ExperimentConfig.model_validate(raw)


def test_the_demo_experiment_is_disjoint_on_every_side(tmp_path):
    cfg = _offline_experiment(tmp_path, **{"finetune.method": "lisa", "finetune.alignment_data": "offline:alignment"})
    roles = harmful_data_roles(cfg)
    assert len(roles["finetune.user_data.harmful_data"]) == 100  # the drawn attack records, p*n
    assert set(check_disjoint_roles(roles).values()) == {0}


@pytest.mark.parametrize(
    "overrides, pair",
    [
        (  # the defense's alignment data are the attack's own pool
            {"finetune.method": "lisa", "finetune.alignment_data": "offline:harmful"},
            "finetune.user_data.harmful_data and finetune.alignment_data",
        ),
        (  # the provider aligns on the evaluation prompts
            {"align.alignment_data": {"source": "offline:harmful_eval", "responses": "refusal"}},
            "align.alignment_data and eval.harmful_prompts",
        ),
        (  # re-alignment data that hold the attack records
            {"repair.method": "antidote", "repair.realign_data": "offline:harmful"},
            "finetune.user_data.harmful_data and repair.realign_data",
        ),
    ],
)
def test_run_experiment_refuses_shared_prompts_before_any_stage_runs(tmp_path, overrides, pair):
    cfg = _offline_experiment(tmp_path, **overrides)
    with pytest.raises(DataError, match=rf"{pair} share \d+ prompts"):
        run_experiment(cfg)
    assert not (tmp_path / "runs").exists()


def test_a_method_that_does_not_use_a_data_set_is_not_checked_against_it(tmp_path):
    # plain SFT ignores finetune.alignment_data, so its overlap with the attack does not matter
    cfg = _offline_experiment(tmp_path, **{"finetune.alignment_data": "offline:harmful"})
    assert "finetune.alignment_data" not in harmful_data_roles(cfg)


# ---- records of the Booster file and result descriptions --------------------------------------------------------
def test_booster_attack_and_harmful_data_are_the_refusal_files_prompts_with_their_harmful_answers(monkeypatch):
    from pathlib import Path

    monkeypatch.setenv(DATA_DIR_ENV, str(Path(__file__).parent / "fixtures" / "sources" / "hub"))
    harmful = load_records("beavertails:paired_harmful")
    refusals = load_records("beavertails:refusal")
    assert [r["prompt"] for r in harmful] == [r["prompt"] for r in refusals]  # row i pairs with row i
    answers = (harmful[0]["response"], refusals[0]["response"])
    assert answers == ("placeholder harmful answer 1", "placeholder refusal 1")


def test_a_selection_is_described_in_one_line_for_results():
    spec = DataSource(
        source="beavertails:harmful",
        split="30k_train",
        rows=[1, 2000],
        exclude=[DataSource(source="beavertails:prompts_unsafe_rows", split="30k_test", rows=[0, 1000])],
    )
    assert describe_selection(spec) == (
        "beavertails:harmful [30k_train] rows [1, 2000) minus the prompts of "
        "(beavertails:prompts_unsafe_rows [30k_test] rows [0, 1000))"
    )
    assert describe_selection(DataSource(source="beavertails:prompts", num_samples=5, seed=1)) == (
        "beavertails:prompts 5 drawn with seed 1"
    )
    assert json.dumps(describe_selection([DataSource(source="a.jsonl"), DataSource(source="b.jsonl")])) == (
        '"a.jsonl + b.jsonl"'
    )
