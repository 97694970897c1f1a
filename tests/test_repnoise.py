"""RepNoise (methods/repnoise.py), as tests."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import PAD, collate, make_records, tiny_llama, training_args
from datasets import Dataset
from test_vaccine import ALIGN, HARMFUL

from tuneguard.data.tokenize import SFTDataCollator
from tuneguard.methods import engines, get_training_method
from tuneguard.methods.layouts import final_norm
from tuneguard.methods.repnoise import RepNoiseParams, RepNoiseTrainer, gaussian_mmd, repnoise_terms


def shifted_records(dataset: Dataset) -> Dataset:
    """Same shapes and labels as ``dataset``, every token different at every position."""
    shift = [[HARMFUL if j == 0 else (t - 3 + 1) % 61 + 3 for j, t in enumerate(ids)] for ids in dataset["input_ids"]]
    labels = [
        [-100 if old == -100 else new for old, new in zip(lab, ids, strict=True)]
        for lab, ids in zip(dataset["labels"], shift, strict=True)
    ]
    return Dataset.from_dict({"input_ids": shift, "attention_mask": dataset["attention_mask"], "labels": labels})


def test_mmd_of_a_sample_with_itself_is_zero_and_grows_with_a_shift():
    torch.manual_seed(0)
    sample = torch.randn(8, 12)
    assert float(gaussian_mmd(sample, sample)) == pytest.approx(0.0, abs=1e-6)
    values = [float(gaussian_mmd(sample, sample + shift)) for shift in (0.25, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[0] > 0
    noise = torch.randn(8, 12)
    assert float(gaussian_mmd(noise, torch.randn(8, 12))) < float(gaussian_mmd(noise, torch.randn(8, 12) + 3))
    assert float(gaussian_mmd(torch.zeros(4, 3), torch.zeros(4, 3))) == 0.0  # fully masked: no NaN


def test_terms_match_plain_cross_entropies_when_every_token_differs():
    model = tiny_llama()
    alignment = make_records(ALIGN, 4, seed=0)
    harmless, harmful = collate(alignment, [0, 1, 2]), collate(shifted_records(alignment), [0, 1, 2])
    terms = repnoise_terms(model, harmless, harmful, logit_lens=False)
    with torch.no_grad():
        torch.testing.assert_close(terms.harmless_ce, model(**harmless).loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(terms.harmful_ce, model(**harmful).loss, rtol=1e-5, atol=1e-6)
    assert float(terms.mmd) > 0


def test_terms_are_masked_to_the_positions_where_the_tokens_differ():
    model = tiny_llama()
    harmless = collate(make_records(ALIGN, 2, seed=0), [0, 1])
    harmful = {k: v.clone() for k, v in harmless.items()}
    assert float(repnoise_terms(model, harmless, harmful, logit_lens=False).harmful_ce) == 0.0  # nothing differs
    last = int(harmless["attention_mask"][0].sum()) - 1
    harmful["input_ids"][0, last] = harmful["labels"][0, last] = 5 if harmless["input_ids"][0, last] != 5 else 6
    terms = repnoise_terms(model, harmless, harmful, logit_lens=False)
    with torch.no_grad():
        logits = model(input_ids=harmful["input_ids"][:1], attention_mask=harmful["attention_mask"][:1]).logits
    expected = torch.nn.functional.cross_entropy(logits[0, last - 1], harmful["input_ids"][0, last])
    torch.testing.assert_close(terms.harmful_ce, expected, rtol=1e-5, atol=1e-6)


def test_logit_lens_averages_the_harmful_cross_entropy_over_every_layer():
    model = tiny_llama()
    alignment = make_records(ALIGN, 4, seed=0)
    harmless, harmful = collate(alignment, [0, 1]), collate(shifted_records(alignment), [0, 1])
    terms = repnoise_terms(model, harmless, harmful, logit_lens=True)
    with torch.no_grad():
        out = model(**harmful, output_hidden_states=True)
        head, norm = model.get_output_embeddings(), final_norm(model)
        labels = harmful["labels"][:, 1:]
        lens = [
            torch.nn.functional.cross_entropy(head(norm(h))[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=-100)
            for h in out.hidden_states[:-1]
        ]
    assert len(lens) == 2  # embeddings + first layer; the last layer is the model's own logits
    torch.testing.assert_close(terms.harmful_ce, torch.stack([*lens, out.loss]).mean(), rtol=1e-5, atol=1e-6)


def repnoise_trainer(tmp_path, params: RepNoiseParams, **args) -> RepNoiseTrainer:
    return RepNoiseTrainer(
        model=tiny_llama(),
        args=training_args(tmp_path, **args),
        train_dataset=make_records(ALIGN, 8, seed=0),
        data_collator=SFTDataCollator(PAD),
        harmful_dataset=make_records(HARMFUL, 6, seed=1),
        repnoise_params=params,
    )


def test_loss_decomposes_into_its_three_terms(tmp_path):
    params = RepNoiseParams(alpha=0.3, beta=0.5)
    trainer = repnoise_trainer(tmp_path, params)
    harmless = collate(trainer.train_dataset, [0, 1])
    harmful = collate(trainer.harmful_dataset, [2, 3])
    trainer.next_harmful_batch = lambda: harmful
    trainer.noise_generator = lambda device: torch.Generator(device).manual_seed(7)  # the Gaussian noise
    loss = trainer.compute_loss(trainer.model, harmless)
    generator = torch.Generator().manual_seed(7)
    terms = repnoise_terms(trainer.model, harmless, harmful, logit_lens=True, generator=generator)
    expected = terms.harmless_ce + 0.5 * terms.mmd - 0.3 * math.log(float(terms.harmful_ce) + 1)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_descending_on_the_mmd_term_moves_harmful_activations_towards_noise():
    model = tiny_llama(lora=False)
    harmless = collate(make_records(ALIGN, 4, seed=0), [0, 1, 2, 3])
    harmful = collate(make_records(HARMFUL, 4, seed=1), [0, 1, 2, 3])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def mmd() -> torch.Tensor:
        torch.manual_seed(0)  # the same noise every time: a fair comparison
        return repnoise_terms(model, harmless, harmful, logit_lens=False).mmd

    start = float(mmd())
    for _ in range(8):
        optimizer.zero_grad()
        mmd().backward()
        optimizer.step()
    assert float(mmd()) < 0.9 * start


def test_repnoise_trains_through_the_registry_and_logs_its_terms(tmp_path):
    method = get_training_method("align", "repnoise")
    assert method.data_roles == ("harmful_data",)
    trainer = method.build_trainer(
        model=tiny_llama(),
        args=training_args(tmp_path, max_steps=2, gradient_accumulation_steps=2),
        train_dataset=make_records(ALIGN, 8, seed=0),
        data_collator=SFTDataCollator(PAD),
        params=method.params_cls(),
        aux_datasets={"harmful_data": make_records(HARMFUL, 6, seed=1)},
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for entry in logs:
        expected = entry["repnoise/harmless_ce"] + 0.001 * entry["repnoise/mmd"]
        # the logged loss is the mean over micro-batches of the loss; log is concave, so compare loosely
        assert entry["loss"] == pytest.approx(expected - 0.1 * math.log(entry["repnoise/harmful_ce"] + 1), abs=1e-2)


def test_repnoise_without_the_logit_lens_runs_on_sharded_engines(tmp_path, monkeypatch):
    # With the logit lens (the default) FSDP is refused: the contract tests check every declared refusal.
    assert "fsdp" in RepNoiseTrainer.engines_refused(RepNoiseParams())
    monkeypatch.setattr(engines, "training_engine", lambda args: "fsdp")
    assert repnoise_trainer(tmp_path, RepNoiseParams(logit_lens=False)).repnoise_params.logit_lens is False
