"""Vaccine (methods/vaccine.py) and the shared layer selector/hooks (methods/layouts.py, methods/hooks.py), as tests.

The small helpers (tiny LoRA Llama, marked records, arguments) live in conftest.py, shared with the other method
tests.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import PAD, assert_same_weights, collate, make_records, tiny_llama, trainable_state, training_args
from transformers import (
    AutoModelForCausalLM,
    GemmaConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Qwen2Config,
    Trainer,
)

from tuneguard.data.tokenize import SFTDataCollator
from tuneguard.methods import get_training_method
from tuneguard.methods.engines import training_engine
from tuneguard.methods.hooks import add_to_outputs, capture_outputs
from tuneguard.methods.layouts import final_norm, layer_modules
from tuneguard.methods.vaccine import NORM_EPS, VaccineParams, VaccineTrainer
from tuneguard.methods.weights import global_norm

ALIGN, HARMFUL = 1, 2  # first token of every record: which data set it came from


# ---- the architecture-aware layer selector ----------------------------------------------------------------------

TINY = dict(vocab_size=64, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=32)
ARCHITECTURES = {
    "llama": LlamaConfig(hidden_size=16, intermediate_size=32, num_key_value_heads=2, **TINY),
    "qwen2": Qwen2Config(hidden_size=16, intermediate_size=32, num_key_value_heads=2, **TINY),
    "mistral": MistralConfig(hidden_size=16, intermediate_size=32, num_key_value_heads=2, **TINY),
    "gemma": GemmaConfig(hidden_size=16, intermediate_size=32, num_key_value_heads=2, head_dim=8, **TINY),
    "gpt2": GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32),
    "opt": OPTConfig(
        vocab_size=64,
        hidden_size=16,
        ffn_dim=32,
        word_embed_proj_dim=16,
        **{k: v for k, v in TINY.items() if k != "vocab_size"},
    ),
}


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_selector_finds_one_attention_and_one_mlp_block_per_decoder_layer(model_type):
    config = ARCHITECTURES[model_type]
    model = AutoModelForCausalLM.from_config(config)
    attention, mlp = layer_modules(model, "attention"), layer_modules(model, "mlp")
    assert len(attention) == len(mlp) == 2
    assert all("Attention" in type(m).__name__ for m in attention)
    assert isinstance(final_norm(model), torch.nn.Module)
    ids = torch.randint(3, 64, (2, 5))
    with capture_outputs(attention) as attn_out, capture_outputs(mlp) as mlp_out:
        model(input_ids=ids)
    width = config.hidden_size
    assert [tuple(t.shape) for t in attn_out.outputs] == [(2, 5, width)] * 2
    assert [t.numel() for t in mlp_out.outputs] == [2 * 5 * width] * 2  # OPT's fc2 sees tokens flattened


def test_selector_sees_through_peft_and_distributed_wrappers():
    plain = tiny_llama(lora=False)
    peft_model = tiny_llama(lora=True)
    assert len(layer_modules(peft_model, "attention")) == 2
    # the same modules whichever wrapper is passed
    assert layer_modules(peft_model, "attention")[0] is peft_model.get_base_model().model.layers[0].self_attn
    assert layer_modules(plain, "mlp")[1] is plain.model.layers[1].mlp


def test_unknown_architecture_is_a_clear_error():
    model = torch.nn.Linear(2, 2)
    model.config = SimpleNamespace(model_type="mamba")
    with pytest.raises(ValueError, match="no decoder-layer layout known for model_type='mamba'.*register_layout"):
        layer_modules(model, "attention")


def test_attention_output_is_the_block_output_before_the_residual_add():
    model = tiny_llama(lora=False)
    layer = model.model.layers[0]
    ids = torch.randint(3, 64, (1, 6))
    # the layer's output is input + attention output + MLP output: with the MLP's output zeroed, the residual add
    # of the captured attention output to the layer input must give the layer output exactly
    with torch.no_grad():
        layer.mlp.down_proj.weight.zero_()
    with capture_outputs([layer]) as layer_io, capture_outputs(layer_modules(model, "attention")[:1]) as attn:
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(layer_io.outputs[0], hidden[0] + attn.outputs[0])


# ---- Vaccine --------------------------------------------------------------------------------------------------


def vaccine_trainer(tmp_path: Path, rho: float = 2.0, model=None, **args) -> VaccineTrainer:
    return VaccineTrainer(
        model=model if model is not None else tiny_llama(),
        args=training_args(tmp_path, **args),
        train_dataset=make_records(ALIGN, 8, seed=0),
        data_collator=SFTDataCollator(PAD),
        vaccine_params=VaccineParams(rho=rho),
    )


def reference_activation_gradients(model, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """∂loss/∂(attention outputs) through retain_grad (an independent path from the trainer's autograd.grad)."""
    with capture_outputs(layer_modules(model, "attention")) as capture:
        loss = model(**batch).loss
    for out in capture.outputs:
        out.retain_grad()
    loss.backward()
    grads = [out.grad.detach().clone() for out in capture.outputs]
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def test_vaccine_perturbation_has_norm_rho_along_the_activation_gradient(tmp_path):
    trainer = vaccine_trainer(tmp_path, rho=2.0)
    trainer.current_gradient_accumulation_steps = 1
    batch = collate(trainer.train_dataset, [0, 1, 2])
    offsets = trainer.vaccine_perturbation(batch)
    assert len(offsets) == 2
    assert float(global_norm(offsets)) == pytest.approx(2.0, rel=1e-5)
    assert all(p.grad is None for p in trainer.model.parameters())  # pass 1 keeps no weight gradient

    _, grads = reference_activation_gradients(trainer.model, batch)
    norm = global_norm(grads)
    for offset, grad in zip(offsets, grads, strict=True):
        torch.testing.assert_close(offset, 2.0 * grad / (norm + NORM_EPS), rtol=1e-4, atol=1e-7)


def test_vaccine_perturbation_raises_the_loss_more_than_a_random_one(tmp_path):
    trainer = vaccine_trainer(tmp_path, rho=0.5)
    trainer.current_gradient_accumulation_steps = 1
    model, batch = trainer.model, collate(trainer.train_dataset, [0, 1, 2, 3])
    offsets = trainer.vaccine_perturbation(batch)
    modules = layer_modules(model, "attention")
    with torch.no_grad():
        clean = model(**batch).loss
        with add_to_outputs(modules, offsets):
            adversarial = model(**batch).loss
        random = [torch.randn_like(o) for o in offsets]
        random = [r * 0.5 / global_norm(random) for r in random]
        with add_to_outputs(modules, random):
            noisy = model(**batch).loss
    assert adversarial > noisy and adversarial > clean


def test_vaccine_rho_zero_equals_plain_sft_with_dropout_and_gradient_accumulation(tmp_path):
    args = dict(max_steps=3, gradient_accumulation_steps=2)
    sft = Trainer(
        model=tiny_llama(lora_dropout=0.1, attention_dropout=0.1),
        args=training_args(tmp_path / "sft", **args),
        train_dataset=make_records(ALIGN, 8, seed=0),
        data_collator=SFTDataCollator(PAD),
    )
    sft.train()
    vaccine = vaccine_trainer(
        tmp_path / "vaccine", rho=0.0, model=tiny_llama(lora_dropout=0.1, attention_dropout=0.1), **args
    )
    vaccine.train()
    assert_same_weights(trainable_state(sft.model), trainable_state(vaccine.model))


def test_vaccine_trains_and_logs_its_internals_through_the_registry(tmp_path):
    method = get_training_method("align", "vaccine")
    trainer = method.build_trainer(
        model=tiny_llama(),
        args=training_args(tmp_path, max_steps=2, gradient_accumulation_steps=2),
        train_dataset=make_records(ALIGN, 8, seed=0),
        data_collator=SFTDataCollator(PAD),
        params=method.params_cls(rho=3.0),
        aux_datasets={},
    )
    before = trainable_state(trainer.model)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for entry in logs:
        assert entry["vaccine/perturbation_norm"] == pytest.approx(3.0, rel=1e-4)
        assert entry["vaccine/activation_grad_norm"] > 0
        assert entry["loss"] > entry["vaccine/clean_loss"]  # the perturbation is an ascent direction
    after = trainable_state(trainer.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_vaccine_under_gradient_checkpointing_takes_the_same_step(tmp_path):
    runs = []
    for checkpointing in (False, True):
        trainer = vaccine_trainer(
            tmp_path / str(checkpointing), rho=2.0, max_steps=2, gradient_checkpointing=checkpointing
        )
        trainer.train()
        runs.append(trainable_state(trainer.model))
    assert_same_weights(runs[0], runs[1], atol=1e-6)


def test_engines_are_detected_from_the_training_arguments():
    assert training_engine(SimpleNamespace(fsdp=[], deepspeed=None, n_gpu=1)) == "ddp"
    assert training_engine(SimpleNamespace(fsdp=["full_shard"], deepspeed=None)) == "fsdp"
    zero3 = {"zero_optimization": {"stage": 3}}
    assert training_engine(SimpleNamespace(fsdp=[], deepspeed=zero3)) == "deepspeed-zero3"
