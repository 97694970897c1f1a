"""The contract every registered method keeps, run over the registry (modelled on PEFT's PeftCommonTester and
its TEST_CASES): a method that registers gets these tests without writing them.

A training method (alignment or fine-tuning stage) builds from its registry entry with its default parameters and
one tiny data set per data role, trains two steps and logs its scalars, resumes from a checkpoint to the weights of
the unbroken run, and refuses, when built, each engine it declares unsupported; every method's parameters have
valid defaults and refuse unknown keys. A repair method returns a model of
the input's shape and JSON-able statistics, and one that passes its input through leaves it untouched.
"""

from __future__ import annotations

import copy
import json
import math
import re

import pytest
import torch
from conftest import PAD, assert_same_weights, build_tiny_llama, make_records, tiny_llama, trainable_state
from conftest import training_args as tiny_training_args

from tuneguard.config import ConfigError
from tuneguard.data.tokenize import SFTDataCollator
from tuneguard.methods import engines
from tuneguard.methods.base import REPAIR_METHODS, TRAINING_METHODS, parse_params
from tuneguard.models import merge_lora

USER_MARKER = 1  # first token of the training records; each data role gets the next marker


def _training_methods() -> list:
    """Each registered training method once (``sft`` serves two stages), with the first stage it serves."""
    seen: dict[str, tuple[str, object]] = {}
    for stage, registry in TRAINING_METHODS.items():
        for name, method in registry.items():
            seen.setdefault(name, (stage, method))
    return [pytest.param(stage, method, id=name) for name, (stage, method) in sorted(seen.items())]


TRAINING_CASES = _training_methods()
REFUSING_CASES = [case for case in TRAINING_CASES if case.values[1].unsupported_engines(case.values[1].params_cls())]
REPAIR_CASES = [pytest.param(method, id=name) for name, method in REPAIR_METHODS.items()]


def build(method, output_dir, **args):
    """The method's trainer from its registry entry: default parameters, a tiny LoRA Llama, tiny data."""
    aux = {role: make_records(USER_MARKER + 1 + i, 6, seed=1 + i) for i, role in enumerate(method.data_roles)}
    return method.build_trainer(
        model=tiny_llama(),
        args=tiny_training_args(output_dir, **args),
        train_dataset=make_records(USER_MARKER, 8, seed=0),
        data_collator=SFTDataCollator(PAD),
        params=method.params_cls(),
        aux_datasets=aux,
    )


@pytest.mark.parametrize(("stage", "method"), TRAINING_CASES)
def test_a_training_method_trains_logs_its_scalars_and_resumes_exactly_from_a_checkpoint(stage, method, tmp_path):
    assert method.name in TRAINING_METHODS[stage]
    unbroken = build(method, tmp_path / "unbroken", max_steps=2, save_strategy="steps", save_steps=1)
    before = trainable_state(unbroken.model)
    unbroken.train()

    after = trainable_state(unbroken.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    logs = [entry for entry in unbroken.state.log_history if "loss" in entry]
    assert len(logs) == 2 and all(math.isfinite(entry["loss"]) for entry in logs)
    assert set(method.curve_keys) <= {key for entry in logs for key in entry}  # the report draws these
    prefix = getattr(unbroken, "method_name", "")
    if prefix:  # a defense: its own scalars in every training log, all finite
        for entry in logs:
            own = {k: v for k, v in entry.items() if k.startswith(f"{prefix}/")}
            assert own and all(math.isfinite(v) for v in own.values())

    resumed = build(method, tmp_path / "resumed", max_steps=2, save_strategy="steps", save_steps=1)
    resumed.train(resume_from_checkpoint=str(tmp_path / "unbroken" / "checkpoint-1"))
    assert resumed.state.global_step == 2
    assert_same_weights(after, trainable_state(resumed.model))


@pytest.mark.parametrize(("stage", "method"), REFUSING_CASES)
def test_a_training_method_refuses_each_engine_it_declares_unsupported_when_built(stage, method, tmp_path, monkeypatch):
    refused = method.unsupported_engines(method.params_cls())
    for engine, reason in refused.items():
        monkeypatch.setattr(engines, "training_engine", lambda args, engine=engine: engine)
        with pytest.raises(ConfigError, match=re.escape(f"does not support {engine}: {reason}")):
            build(method, tmp_path)


@pytest.mark.parametrize(
    ("stage", "method"), [*TRAINING_CASES, *(pytest.param("repair", *case.values, id=case.id) for case in REPAIR_CASES)]
)
def test_a_method_has_valid_default_parameters_and_refuses_unknown_ones(stage, method):
    where = f"{stage}.method_args"
    assert parse_params(method.params_cls, {}, where) == method.params_cls()
    with pytest.raises(ConfigError, match=f"(?s){where}.*not_a_parameter: unknown key"):
        parse_params(method.params_cls, {"not_a_parameter": 1}, where)


@pytest.mark.parametrize("method", REPAIR_CASES)
def test_a_repair_returns_a_model_of_the_input_shape_and_json_statistics(method, world_tokenizer):
    from peft import LoraConfig, get_peft_model

    base = build_tiny_llama(len(world_tokenizer), seed=2)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    expected = {k: v.shape for k, v in merge_lora(copy.deepcopy(model)).state_dict().items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    records = [{"id": str(i), "prompt": "give me steps", "response": "sure . step one"} for i in range(3)]
    data = {role: records for role in method.data_roles} | {"input_stage_dir": None}

    output = method.repair(model, world_tokenizer, method.params_cls(), data)

    json.dumps(output.stats)
    if method.passes_through:
        assert output.model is model
        assert_same_weights(before, dict(model.state_dict()))
    else:
        assert {k: v.shape for k, v in merge_lora(output.model).state_dict().items()} == expected
