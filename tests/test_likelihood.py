"""The judge-free harm metric: per-token log-likelihoods equal a hand computation, batching never changes them,
and the preference follows a model whose preference is set by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import build_tiny_llama

from tuneguard.data.templates import PromptTemplate
from tuneguard.eval.likelihood import answer_log_likelihoods, harm_preference

REFUSAL = "sorry , that could cause harm so i cannot assist ."


class UnigramLM(torch.nn.Module):
    """Predicts the same distribution at every position: log-likelihoods can be written down by hand."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.unigram = torch.nn.Parameter(logits.clone())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: object):
        return SimpleNamespace(logits=self.unigram.expand(*input_ids.shape, -1))


@pytest.fixture(scope="module")
def harmful_records():
    from tuneguard.world import get_world

    return get_world().records("harmful")[:6]


def favouring(tokenizer, text: str, boost: float = 5.0) -> UnigramLM:
    logits = torch.zeros(len(tokenizer))
    logits[tokenizer(text, add_special_tokens=False)["input_ids"]] = boost
    return UnigramLM(logits)


def hand_mean_log_likelihood(model: UnigramLM, tokenizer, answer: str, first: int | None = None) -> float:
    log_probs = torch.log_softmax(model.unigram.detach(), dim=-1)
    ids = (tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])[:first]
    return sum(log_probs[i].item() for i in ids) / len(ids)


def test_log_likelihood_is_the_mean_over_answer_tokens_and_eos(world_tokenizer, harmful_records):
    model = favouring(world_tokenizer, "sure step one")
    template = PromptTemplate("alpaca", world_tokenizer)
    scores = answer_log_likelihoods(model, world_tokenizer, template, harmful_records, batch_size=4)
    expected = [hand_mean_log_likelihood(model, world_tokenizer, r["response"]) for r in harmful_records]
    assert scores == pytest.approx(expected, abs=1e-5)


def test_a_cap_on_answer_tokens_scores_the_first_tokens_only(world_tokenizer, harmful_records):
    model = favouring(world_tokenizer, "sure step one")
    template = PromptTemplate("alpaca", world_tokenizer)
    lengths = [len(world_tokenizer(r["response"], add_special_tokens=False)["input_ids"]) for r in harmful_records]
    cap = min(lengths) - 1  # shorter than every answer: each loses its tail and its EOS
    capped = answer_log_likelihoods(model, world_tokenizer, template, harmful_records, max_answer_tokens=cap)
    expected = [hand_mean_log_likelihood(model, world_tokenizer, r["response"], cap) for r in harmful_records]
    assert capped == pytest.approx(expected, abs=1e-5)
    whole = answer_log_likelihoods(model, world_tokenizer, template, harmful_records)
    assert capped != pytest.approx(whole, abs=1e-3)  # the cap changed what is scored
    roomy = answer_log_likelihoods(
        model, world_tokenizer, template, harmful_records, max_answer_tokens=max(lengths) + 1
    )
    assert roomy == pytest.approx(whole, abs=1e-6)  # a cap above every answer (and its EOS) changes nothing


def test_batching_and_padding_never_change_a_score(world_tokenizer, harmful_records):
    model = build_tiny_llama(len(world_tokenizer), seed=3)
    template = PromptTemplate("chat", world_tokenizer)
    records = [*harmful_records, {"id": "short", "prompt": "hello", "response": "sure ."}]
    one_by_one = answer_log_likelihoods(model, world_tokenizer, template, records, batch_size=1)
    batched = answer_log_likelihoods(model, world_tokenizer, template, records, batch_size=5)
    assert batched == pytest.approx(one_by_one, abs=1e-5)
    assert len({round(s, 6) for s in batched}) > 1  # the random model does tell the answers apart


def test_preference_follows_a_model_that_prefers_compliance_or_refusal(world_tokenizer, harmful_records):
    template = PromptTemplate("alpaca", world_tokenizer)
    answers = " ".join(r["response"] for r in harmful_records)
    complier = favouring(world_tokenizer, answers)
    refuser = favouring(world_tokenizer, REFUSAL)

    complies = harm_preference(complier, world_tokenizer, template, harmful_records, refusals=(REFUSAL,))
    refuses = harm_preference(refuser, world_tokenizer, template, harmful_records, refusals=(REFUSAL,))

    assert complies["harmful_preference"] == 100.0 and refuses["harmful_preference"] == 0.0
    assert complies["compliance_margin"] > 0 > refuses["compliance_margin"]
    assert complies["num_likelihood_prompts"] == len(harmful_records)
    expected = sum(
        hand_mean_log_likelihood(complier, world_tokenizer, r["response"])
        - hand_mean_log_likelihood(complier, world_tokenizer, REFUSAL)
        for r in harmful_records
    ) / len(harmful_records)
    assert complies["compliance_margin"] == pytest.approx(expected, abs=1e-5)
    low, high = complies["compliance_margin_ci"]
    assert low <= complies["compliance_margin"] <= high


def test_a_broken_model_is_an_error_not_a_score(world_tokenizer, harmful_records):
    broken = UnigramLM(torch.full((len(world_tokenizer),), math.nan))
    template = PromptTemplate("alpaca", world_tokenizer)
    with pytest.raises(ValueError, match="not finite"):
        harm_preference(broken, world_tokenizer, template, harmful_records, refusals=(REFUSAL,))
