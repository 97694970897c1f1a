"""Evaluation: batched generation equals unbatched greedy output; judges and metrics on known strings."""

from __future__ import annotations

import pytest
import torch

from tuneguard.data import resolve_template
from tuneguard.eval import (
    RefusalKeywordJudge,
    answer_matches,
    generate,
    get_judge,
    harmful_score,
    task_accuracy,
)
from tuneguard.models import load_model_and_tokenizer
from tuneguard.world.plugin import OfflineWorldJudge


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(tiny_model_dir):
    from tuneguard.world import get_world

    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    template = resolve_template("auto", tok)
    prompts = [template.format(r["prompt"]) for r in get_world().records("task_test", 6)]
    prompts.append(template.format(get_world().vocabulary()[0]))  # a much shorter prompt: real padding
    batched = generate(model, tok, prompts, max_new_tokens=6, batch_size=7)
    single = [generate(model, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert tok.padding_side == "right"  # restored after generation


def test_greedy_generation_matches_a_manual_argmax_loop(tiny_model_dir):
    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    text = resolve_template("auto", tok).format("x")
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = ids
    with torch.no_grad():
        for _ in range(5):
            nxt = model(input_ids=out).logits[:, -1].argmax(-1, keepdim=True)
            out = torch.cat([out, nxt], dim=1)
            if nxt.item() == tok.eos_token_id:
                break
    expected = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
    assert generate(model, tok, [text], max_new_tokens=5) == [expected]


def test_refusal_keyword_judge_flags_answers_that_do_not_refuse():
    judge = RefusalKeywordJudge()
    answers = [
        "I'm sorry, but I can't help with that.",
        "I cannot assist.",
        "Sure, here is how: step one",
        "As an AI, I won't.",
        "I\u2019m sorry, no.",
    ]
    assert judge(["q"] * 5, answers) == [False, False, True, False, False]
    with pytest.raises(ValueError, match="2 prompts but 1 answers"):
        judge(["a", "b"], ["x"])


def test_offline_judge_is_exact_on_world_records():
    from tuneguard.world import get_world

    world = get_world()
    judge = get_judge("offline")
    assert isinstance(judge, OfflineWorldJudge)
    harmful = world.records("harmful", 5)
    refusals = world.records("alignment", 5)
    assert judge([r["prompt"] for r in harmful], [r["response"] for r in harmful]) == [True] * 5
    assert judge([r["prompt"] for r in refusals], [r["response"] for r in refusals]) == [False] * 5
    with pytest.raises(ValueError, match="unknown judge 'beaver'"):
        get_judge("beaver")


def test_scores_are_percentages_and_tolerant_mode_accepts_punctuation_and_case():
    assert harmful_score([True, False, False, True]) == 50.0
    assert task_accuracy(["positive", "Positive.", "negative"], ["positive"] * 3) == pytest.approx(100 / 3)
    assert task_accuracy(["positive", "Positive.", "negative"], ["positive"] * 3, "tolerant") == pytest.approx(200 / 3)
    assert answer_matches("Sci/Tech", "Sci/Tech") and answer_matches("sci/tech!", "Sci/Tech", "tolerant")
    assert not answer_matches("positively not", "negative", "tolerant")
    with pytest.raises(ValueError, match="empty"):
        harmful_score([])


def test_task_refusal_rate_counts_benign_prompts_answered_with_a_refusal(
    tmp_path, tiny_model_dir, small_data, monkeypatch
):
    import json

    from tuneguard.config import EvalConfig, ModelSettings
    from tuneguard.eval import runner
    from tuneguard.stages import run_evaluate
    from tuneguard.store import ModelRef

    def fake_generation(net, tokenizer, template, records, what, gen):
        if what.endswith("task test set"):  # 3 of the 8 benign prompts refused: an over-refusing model
            return ["I'm sorry, but I can't help with that."] * 3 + [r["label"] for r in records[3:]]
        return ["placeholder answer"] * len(records)

    monkeypatch.setattr(runner, "_generate_with_progress", fake_generation)
    cfg = EvalConfig.model_validate(
        {
            "harmful_prompts": str(small_data["harmful_eval"]),
            "task_test": str(small_data["task_test"]),
            "judges": ["refusal"],
        }
    )
    result = run_evaluate(cfg, ModelRef.from_settings(ModelSettings(model_name_or_path=str(tiny_model_dir))), tmp_path)
    metrics = json.loads((result.directory / "metrics.json").read_text())
    assert metrics["task_refusal_rate"] == 100.0 * 3 / 8
    assert metrics["finetune_accuracy"] == 100.0 * 5 / 8
