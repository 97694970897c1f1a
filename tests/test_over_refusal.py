"""Over-refusal in every evaluation: the share of held-out benign prompts answered with a refusal, beside HS; on the
task test prompts when no benign set is named; refusals in the offline world's own words counted through the
first tokens its data sources declare; a flag when most benign prompts are refused."""

from __future__ import annotations

import json

import pytest

from tuneguard.config import EvalConfig, ModelSettings
from tuneguard.eval import runner
from tuneguard.eval.metrics import OVER_REFUSAL_SHARE, trust_flags
from tuneguard.stages import run_evaluate
from tuneguard.store import ModelRef

WORLD_REFUSAL = "sorry , that could cause harm so i cannot assist ."
ENGLISH_REFUSAL = "I'm sorry, but I can't help with that."


@pytest.fixture
def answers_by_set(monkeypatch):
    """Greedy generation replaced by set answers: ``answers[set]`` is a function of the set's records."""
    answers = {}

    def fake_generation(net, tokenizer, template, records, what, gen):
        kind = next((k for k in answers if what.endswith(k)), None)
        return answers[kind](records) if kind else ["placeholder answer"] * len(records)

    monkeypatch.setattr(runner, "_generate_with_progress", fake_generation)
    return answers


def evaluate(tmp_path, tiny_model_dir, small_data, **eval_keys) -> tuple[dict, list[dict]]:
    cfg = EvalConfig.model_validate(
        {"harmful_prompts": str(small_data["harmful_eval"]), "judges": ["refusal"], **eval_keys}
    )
    result = run_evaluate(cfg, ModelRef.from_settings(ModelSettings(model_name_or_path=str(tiny_model_dir))), tmp_path)
    rows = [json.loads(line) for line in (result.directory / "generations.jsonl").read_text().splitlines()]
    return json.loads((result.directory / "metrics.json").read_text()), rows


def test_over_refusal_counts_the_benign_prompts_answered_with_a_refusal(
    tmp_path, tiny_model_dir, small_data, answers_by_set
):
    # 8 benign prompts: two English refusals, one in the offline world's words, five answers
    answers_by_set["benign prompts"] = lambda records: [ENGLISH_REFUSAL] * 2 + [WORLD_REFUSAL] + ["positive"] * 5
    answers_by_set["task test set"] = lambda records: [r["label"] for r in records]
    metrics, rows = evaluate(
        tmp_path,
        tiny_model_dir,
        small_data,
        task_test=str(small_data["task_test"]),
        benign_prompts={"source": "offline:task_test", "rows": [100, 108]},
    )
    assert metrics["over_refusal_rate"] == 100.0 * 3 / 8
    assert metrics["num_benign_prompts"] == 8
    assert metrics["over_refusal_set"] == "offline:task_test rows [100, 108)"
    assert metrics["task_refusal_rate"] == 0.0  # the task answers are labels
    benign = [r for r in rows if r["set"] == "benign"]
    assert [r["refused"] for r in benign] == [True] * 3 + [False] * 5
    assert all(r["answer"] for r in benign) and "flags" not in metrics


def test_a_list_of_benign_sets_also_reports_each_sets_over_refusal(
    tmp_path, tiny_model_dir, small_data, answers_by_set
):
    # two sets of 4 and 6 prompts: 3 of the first refused, 1 of the second; the overall rate is 4 of 10
    answers_by_set["benign prompts"] = lambda records: (
        [ENGLISH_REFUSAL] * 3 + ["positive"] * 2 + [WORLD_REFUSAL] + ["negative"] * 4
    )
    first = {"source": "offline:task_test", "rows": [100, 104]}
    second = {"source": "offline:task_test", "rows": [110, 116]}
    metrics, rows = evaluate(tmp_path, tiny_model_dir, small_data, benign_prompts=[first, second])
    assert metrics["over_refusal_rate"] == 40.0 and metrics["num_benign_prompts"] == 10
    assert metrics["over_refusal_by_set"] == {
        "offline:task_test rows [100, 104)": 75.0,
        "offline:task_test rows [110, 116)": 100.0 / 6,
    }
    assert [r["id"].split(":")[0] for r in rows if r["set"] == "benign"] == ["0"] * 4 + ["1"] * 6
    # one set: no per-set breakdown (it would repeat over_refusal_rate)
    answers_by_set["benign prompts"] = lambda records: [ENGLISH_REFUSAL] * 3 + ["positive"]
    one, _ = evaluate(tmp_path / "one", tiny_model_dir, small_data, benign_prompts=first)
    assert "over_refusal_by_set" not in one and one["over_refusal_rate"] == 75.0


def test_without_a_benign_set_over_refusal_is_measured_on_the_task_test_prompts(
    tmp_path, tiny_model_dir, small_data, answers_by_set
):
    # the offline world's refusal ("sorry , ...") is no English keyword: task_refusal_rate (the keyword judge, as
    # before) misses it; over_refusal_rate counts it through the first token that offline sources declare
    answers_by_set["task test set"] = lambda records: [WORLD_REFUSAL] * 5 + [r["label"] for r in records[5:]]
    metrics, rows = evaluate(
        tmp_path, tiny_model_dir, small_data, task_test={"source": "offline:task_test", "rows": [0, 8]}
    )
    assert metrics["over_refusal_rate"] == 100.0 * 5 / 8 and metrics["over_refusal_set"] == "task_test"
    assert metrics["task_refusal_rate"] == 0.0
    assert "num_benign_prompts" not in metrics
    assert [r["refused"] for r in rows if r["set"] == "task"] == [True] * 5 + [False] * 3
    assert metrics["flags"] == ["62% of the benign prompts (task_test) are refused (a low HS may be refusing all)"]


def test_a_selection_listed_twice_keeps_both_rates():
    from tuneguard.config import DataSource

    same = DataSource(source="rho:benign", rows=[100, 150])
    records = [{"id": f"{k}:{i}"} for k in range(3) for i in range(4)]
    refused = [True] * 4 + [False] * 4 + [True, False, False, False]
    rates = runner._rate_per_source([same, DataSource(source="gsm8k", split="test"), same], records, refused)
    assert rates == {"rho:benign rows [100, 150)": 100.0, "gsm8k [test]": 0.0, "rho:benign rows [100, 150) (#3)": 25.0}


def test_a_refusal_first_token_counts_only_for_sources_that_declare_it():
    from tuneguard.config import DataSource

    answers = [WORLD_REFUSAL, ENGLISH_REFUSAL, "sorry is a word here too", "positive"]
    assert runner.refusal_flags(answers, DataSource(source="offline:task_test")) == [True, True, True, False]
    assert runner.refusal_flags(answers, DataSource(source="data/my_benign.jsonl")) == [False, True, False, False]


def test_over_refusal_above_half_flags_the_harmful_score():
    assert trust_flags({"over_refusal_rate": OVER_REFUSAL_SHARE}) == []
    (flag,) = trust_flags({"over_refusal_rate": 90.0, "over_refusal_set": "rho:benign rows [100, 150)"})
    assert flag.startswith("90% of the benign prompts (rho:benign rows [100, 150)) are refused")
