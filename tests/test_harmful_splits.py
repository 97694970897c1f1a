"""The attack / evaluation split of a harmful Q/A set by behaviour (issue 14, point 1) and the provenance guard
that knows it; the offline world's held-out requests with reference harmful answers.

The split is tested on a synthetic PyRIT package (placeholder text in the real file layout, found without
importing it), so no optional package is needed; the real set's counts are checked only where pyrit is installed.
"""

from __future__ import annotations

import importlib
import json

import pytest
from conftest import run_refused

from tuneguard.config import DataSource, ExperimentConfig
from tuneguard.data import DataError, load_records, splits
from tuneguard.data import registry as registry_module
from tuneguard.data.derive import normalize_prompt
from tuneguard.data.provenance import check_disjoint_roles
from tuneguard.data.registry import DATA_DIR_ENV, get_source

FAMILIES = 6  # behaviours written from one template: siblings differ in one word
SINGLES = 30  # behaviours of their own


def _synthetic_pairs() -> list[dict]:
    """PyRIT's many-shot layout: template families, exact repeats (case and spacing aside), single behaviours, and
    pairs its judge marked not harmful (left out)."""
    rows = []
    for f in range(FAMILIES):
        for variant in ("north", "south", "east"):
            rows.append({"user": f"placeholder f{f}a f{f}b f{f}c f{f}d fold the {variant} crane"})
    for k in range(SINGLES):
        rows.append({"user": f"placeholder single{k} alpha{k} beta{k} gamma{k} delta{k} epsilon{k}"})
    rows += [{"user": "PLACEHOLDER single3  alpha3 beta3 gamma3 delta3 epsilon3"}]  # a repeat of one behaviour
    for i, row in enumerate(rows):
        row.update(assistant=f"placeholder answer {i}", category="Harmful\n\nReason: placeholder.")
    rows.append({"user": "placeholder declined", "assistant": "placeholder", "category": "Not harmful\n\nReason: x"})
    return rows


@pytest.fixture
def fake_pyrit(tmp_path, monkeypatch):
    """A fake ``pyrit`` package holding only the many-shot file (importing it would fail), first on sys.path; the
    behaviour groups start empty so no other test's requests fold into this one's."""
    package = tmp_path / "pkgs" / "pyrit"
    data = package / "datasets" / "jailbreak"
    data.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (data / "many_shot_examples.json").write_text(json.dumps(_synthetic_pairs()))
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(splits, "_KNOWN_GROUPS", {})
    importlib.invalidate_caches()


def _pool(split: str | None = None, **kwargs) -> list[dict]:
    return load_records(DataSource(source="pyrit:harmful_qa", split=split, **kwargs))


def _group_of(record: dict) -> str:
    return splits.behaviour_key(record["prompt"])


# ---- the split ----------------------------------------------------------------------------------------------
def test_attack_and_eval_pools_partition_the_set_and_share_no_prompt_or_behaviour(fake_pyrit):
    whole, attack, evaluation = _pool(), _pool("attack"), _pool("eval")
    assert len(whole) == FAMILIES * 3 + SINGLES + 1  # the not-harmful pair is left out, as before the split
    assert attack and evaluation
    assert sorted(r["id"] for r in attack + evaluation) == sorted(r["id"] for r in whole)
    assert not {normalize_prompt(r["prompt"]) for r in attack} & {normalize_prompt(r["prompt"]) for r in evaluation}
    assert not {_group_of(r) for r in attack} & {_group_of(r) for r in evaluation}


def test_repeats_and_template_siblings_of_one_behaviour_land_in_the_same_pool(fake_pyrit):
    pool_of_prompt = {r["prompt"]: split for split in ("attack", "eval") for r in _pool(split)}
    for f in range(FAMILIES):
        siblings = {
            pool_of_prompt[f"placeholder f{f}a f{f}b f{f}c f{f}d fold the {v} crane"]
            for v in ["north", "south", "east"]
        }
        assert len(siblings) == 1
    assert (
        pool_of_prompt["placeholder single3 alpha3 beta3 gamma3 delta3 epsilon3"]
        == pool_of_prompt["PLACEHOLDER single3  alpha3 beta3 gamma3 delta3 epsilon3"]
    )
    # distinct behaviours are not folded together: each family is one group, each single its own
    assert len({_group_of(r) for r in _pool()}) == FAMILIES + SINGLES


def test_the_split_is_dealt_by_a_hash_of_the_behaviour_not_by_row_order_or_random_state():
    rows = [{"id": str(i), "prompt": f"placeholder behaviour{i} one two three four five"} for i in range(40)]
    first = [r["id"] for r in splits.split_by_behaviour(rows, "eval")]
    assert first == [r["id"] for r in splits.split_by_behaviour(rows, "eval")]
    shuffled = rows[::-1]  # another order, the same pool for each behaviour
    assert sorted(first) == sorted(r["id"] for r in splits.split_by_behaviour(shuffled, "eval"))
    # one row more does not move the others
    extra = [*rows, {"id": "new", "prompt": "placeholder unrelated request with six words"}]
    assert set(first) <= {r["id"] for r in splits.split_by_behaviour(extra, "eval")}
    with pytest.raises(ValueError, match="unknown pool 'test'"):
        splits.split_by_behaviour(rows, "test")


def test_an_unknown_split_names_the_known_ones(fake_pyrit):
    with pytest.raises(DataError, match=r"unknown split 'heldout'; expected one of all, attack, eval"):
        _pool("heldout")


# ---- the provenance guard -----------------------------------------------------------------------------------
ATTACK, EVALUATION = "finetune.user_data.harmful_data", "eval.harmful_prompts"


def test_the_guard_accepts_the_attack_pool_against_the_eval_pool(fake_pyrit):
    assert check_disjoint_roles({ATTACK: _pool("attack"), EVALUATION: _pool("eval")}) == {f"{ATTACK} | {EVALUATION}": 0}


def test_the_guard_accepts_the_whole_set_only_when_it_is_truly_disjoint_from_the_eval_pool(fake_pyrit):
    evaluation = _pool("eval")
    without = _pool(exclude=[DataSource(source="pyrit:harmful_qa", split="eval")])
    assert sorted(r["id"] for r in without) == sorted(r["id"] for r in _pool("attack"))
    check_disjoint_roles({ATTACK: without, EVALUATION: evaluation})
    with pytest.raises(DataError, match=rf"{ATTACK} and {EVALUATION} share {len(evaluation)} prompts"):
        check_disjoint_roles({ATTACK: _pool(), EVALUATION: evaluation})


def test_a_template_sibling_of_an_evaluated_behaviour_counts_as_the_same_behaviour(fake_pyrit):
    whole = _pool()
    north, south = (
        next(r for r in whole if r["prompt"] == f"placeholder f0a f0b f0c f0d fold the {v} crane")
        for v in ("north", "south")
    )
    with pytest.raises(DataError, match="share 1 prompt"):
        check_disjoint_roles({ATTACK: [north], EVALUATION: [south]})


def test_attacking_with_the_whole_set_and_evaluating_on_its_eval_pool_is_one_error_line(
    fake_pyrit, tmp_path, monkeypatch, capsys
):
    whole = len(_pool())
    cfg = {
        "output_dir": str(tmp_path / "runs"),
        "finetune": {
            "user_data": {
                "task_data": "offline:task_train",
                "harmful_data": "pyrit:harmful_qa",
                "num_samples": whole,
                "poison_ratio": 1.0,
            }
        },
        "eval": {"harmful_prompts": {"source": "pyrit:harmful_qa", "split": "eval"}},
    }
    ExperimentConfig.model_validate(cfg)
    err = run_refused(cfg, tmp_path / "whole_vs_eval.json", monkeypatch, capsys)
    assert "finetune.user_data.harmful_data and eval.harmful_prompts share" in err
    assert "placeholder" not in err  # never the text
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_the_source_without_a_split_reads_the_records_it_always_read(fake_pyrit):
    source = get_source("pyrit:harmful_qa")
    assert source.splits[0] == "all"  # the default: today's configs name no split and keep their stage keys
    assert [r["id"] for r in _pool()] == [str(i) for i in range(FAMILIES * 3 + SINGLES + 1)]
    assert all(set(r) == {"id", "prompt", "response"} for r in _pool())


@pytest.mark.parametrize("split, count", [(None, 283), ("attack", 194), ("eval", 89)])
def test_real_pyrit_pool_sizes_when_installed(split, count, monkeypatch):
    package = get_source("pyrit:harmful_qa").package
    if registry_module.package_folder(package.module) is None:
        pytest.skip(f"{package.requirement} is not installed (optional: {package.install})")
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert len(_pool(split)) == count


# ---- the offline world's answered held-out requests --------------------------------------------------------
def test_the_worlds_held_out_requests_come_with_compliant_answers_the_exact_judge_flags():
    from tuneguard.world import get_world

    world = get_world()
    held_out, answered = load_records("offline:harmful_eval"), load_records("offline:harmful_eval_answered")
    assert [(r["id"], r["prompt"]) for r in answered] == [(r["id"], r["prompt"]) for r in held_out]
    assert all(world.is_harmful(r["prompt"], r["response"]) for r in answered)
    assert all(r["response"] == "" for r in held_out)  # the prompt-only role is unchanged
