"""Booster (methods/booster.py) and the perturb/restore of weights (methods/weights.py), as tests."""

from __future__ import annotations

import pytest
import torch
from conftest import PAD, collate, make_records, tiny_llama, trainable_state, training_args
from test_vaccine import ALIGN, HARMFUL
from torch.func import functional_call

from tuneguard.data.tokenize import SFTDataCollator
from tuneguard.methods import get_training_method
from tuneguard.methods.booster import NORM_EPS, BoosterParams, BoosterTrainer
from tuneguard.methods.weights import perturbed_weights


def booster_trainer(tmp_path, params: BoosterParams | None = None, **args) -> BoosterTrainer:
    return BoosterTrainer(
        model=tiny_llama(),
        args=training_args(tmp_path, **args),
        train_dataset=make_records(ALIGN, 8, seed=0),
        data_collator=SFTDataCollator(PAD),
        harmful_dataset=make_records(HARMFUL, 6, seed=1),
        booster_params=params or BoosterParams(harmful_batch_size=3),
    )


def straight_through_objective(model, alignment, harmful, lamb: float, alpha: float):
    """f(w) + λ·(h(w) − h(w − α·d)), d = ∇h(w)/||∇h(w)|| held constant: its autograd gradient is Booster's g."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    weights = {n: p for n, p in model.named_parameters() if p.requires_grad}

    def loss(batch, at):
        return functional_call(model, at, args=(), kwargs=batch, strict=False).loss

    grads = torch.autograd.grad(loss(harmful, weights), [weights[n] for n in names])
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads)) + NORM_EPS
    moved = {n: weights[n] - alpha * (g / norm).detach() for n, g in zip(names, grads, strict=True)}
    return loss(alignment, weights) + lamb * (loss(harmful, weights) - loss(harmful, moved))


@pytest.mark.parametrize("accumulation", [1, 2])
def test_booster_gradient_matches_autograd_of_the_straight_through_objective(tmp_path, accumulation):
    params = BoosterParams(lamb=5.0, alpha=0.1, harmful_batch_size=3)
    trainer = booster_trainer(tmp_path, params, gradient_accumulation_steps=accumulation)
    model = trainer.model
    alignment = collate(trainer.train_dataset, [0, 1, 2])
    harmful = collate(trainer.harmful_dataset, [0, 1, 2])
    trainer.current_gradient_accumulation_steps = accumulation
    trainer.next_harmful_batch = lambda: trainer._prepare_inputs(harmful)

    objective = straight_through_objective(model, alignment, harmful, params.lamb, params.alpha)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    expected = torch.autograd.grad(objective, [dict(model.named_parameters())[n] for n in names])

    model.zero_grad(set_to_none=True)
    trainer.training_step(model, dict(alignment))
    for name, reference in zip(names, expected, strict=True):
        got = dict(model.named_parameters())[name].grad
        torch.testing.assert_close(got * accumulation, reference, rtol=1e-4, atol=1e-6, msg=name)


def test_weights_are_bit_identical_after_the_perturbed_pass(tmp_path):
    trainer = booster_trainer(tmp_path, BoosterParams(alpha=0.7, harmful_batch_size=3))
    trainer.current_gradient_accumulation_steps = 1
    before = trainable_state(trainer.model)
    correction = trainer.booster_correction()
    assert any(float(c.abs().sum()) > 0 for c in correction)
    after = trainable_state(trainer.model)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert all(p.grad is None for p in trainer.model.parameters())  # passes 1 and 2 leave .grad alone


def test_perturbed_weights_restores_exactly_even_when_the_block_raises():
    weights = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    saved = [w.detach().clone() for w in weights]
    direction = [torch.randn(5, 3) * 1e-3, None]
    with pytest.raises(RuntimeError), perturbed_weights(weights, direction, step=0.1):
        assert not torch.equal(weights[0], saved[0]) and torch.equal(weights[1], saved[1])
        raise RuntimeError("inside the perturbed pass")
    assert all(torch.equal(w, s) for w, s in zip(weights, saved, strict=True))


def test_booster_trains_and_logs_the_harmful_loss_before_and_after_the_simulated_step(tmp_path):
    method = get_training_method("align", "booster")
    assert method.data_roles == ("harmful_data",)
    trainer = method.build_trainer(
        model=tiny_llama(),
        args=training_args(tmp_path, max_steps=2, gradient_accumulation_steps=2),
        train_dataset=make_records(ALIGN, 8, seed=0),
        data_collator=SFTDataCollator(PAD),
        params=method.params_cls(harmful_batch_size=2),
        aux_datasets={"harmful_data": make_records(HARMFUL, 6, seed=1)},
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for entry in logs:
        assert entry["booster/harmful_loss_drop"] == pytest.approx(
            entry["booster/harmful_loss"] - entry["booster/harmful_loss_after_step"], abs=1e-5
        )
        assert entry["booster/harmful_loss_after_step"] < entry["booster/harmful_loss"]  # a descent step on h
        assert entry["booster/harmful_grad_norm"] > 0 and entry["booster/correction_norm"] > 0


def test_booster_needs_harmful_data(tmp_path):
    with pytest.raises(ValueError, match="needs harmful data"):
        BoosterTrainer(
            model=tiny_llama(),
            args=training_args(tmp_path),
            train_dataset=make_records(ALIGN, 4, seed=0),
            data_collator=SFTDataCollator(PAD),
        )
