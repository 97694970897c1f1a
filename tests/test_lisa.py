"""Lisa / BSO (methods/lisa.py) on tiny random Llama models: the specification, as tests."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import PAD, assert_same_weights, make_records, tiny_llama, trainable_state, training_args
from datasets import Dataset
from transformers import Trainer

from tuneguard.data.tokenize import SFTDataCollator
from tuneguard.methods import get_training_method
from tuneguard.methods.auxiliary_data import EndlessLoader
from tuneguard.methods.lisa import (
    ALIGNMENT,
    FINETUNE,
    LISA_STATE_FILE,
    BSOParams,
    LisaParams,
    LisaTrainer,
    bistate_position,
)
from tuneguard.methods.weights import snapshot_parameters, squared_distance
from tuneguard.plots import plot_training_curves

USER, ALIGN = 1, 2  # first token of every record: which data set it came from
LISA_STEPS = 10


class Recorder:
    """Mixin recording, per micro-batch, (optimizer step, markers of the batch, record ids of the batch), and the
    trainable weights as each optimizer step begins (before its first micro-batch changes anything)."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        ids = inputs["input_ids"]
        step = self.state.global_step
        self.weights_at.setdefault(step, snapshot_parameters(self.model))
        self.seen.append((step, ids[:, 0].tolist(), ids[:, 1].tolist()))
        return super().training_step(model, inputs, num_items_in_batch)


class RecordingLisa(Recorder, LisaTrainer):
    pass


class RecordingSFT(Recorder, Trainer):
    pass


def lisa_trainer(tmp_path: Path, params: LisaParams | BSOParams, cls=LisaTrainer, lora=True, **args) -> LisaTrainer:
    trainer = cls(
        model=tiny_llama(lora=lora, lora_dropout=0.1),
        args=training_args(tmp_path, **{"max_steps": LISA_STEPS, **args}),
        train_dataset=make_records(USER, 12, seed=0),
        data_collator=SFTDataCollator(PAD),
        alignment_dataset=make_records(ALIGN, 6, seed=1),
        lisa_params=params,
    )
    trainer.seen, trainer.weights_at = [], {}
    return trainer


# ---- the proximal term ----------------------------------------------------------------------------------------


def test_lisa_proximal_gradient_equals_rho_times_drift(tmp_path):
    rho = 0.7
    trainer = lisa_trainer(tmp_path, LisaParams(alignment_steps=2, finetune_steps=3, rho=rho))
    model = trainer.model
    anchor = snapshot_parameters(model)
    with torch.no_grad():  # move w away from w̃
        for _, param in model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
    # autograd of (rho/2)·||w − w̃||²
    model.zero_grad()
    (0.5 * rho * squared_distance(model, anchor)).backward()
    autograd = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    # the trainer's closed form, applied at the end of an optimizer step
    model.zero_grad()
    trainer._lisa.anchor, trainer._lisa.state = anchor, ALIGNMENT
    trainer.state.global_step, trainer.state.max_steps = 5, 10
    trainer.proximal_warmup_ratio = 0.0
    trainer._end_step()
    assert len(autograd) == 8  # LoRA A and B of q_proj and v_proj in 2 layers
    for name, param in model.named_parameters():
        if param.requires_grad:
            expected = rho * (param.detach() - anchor[name])
            torch.testing.assert_close(autograd[name], expected, msg=name)
            torch.testing.assert_close(param.grad, expected, msg=name)


def test_proximal_term_is_off_during_warmup(tmp_path):
    trainer = lisa_trainer(tmp_path, LisaParams(alignment_steps=2, finetune_steps=3, proximal_warmup_ratio=0.5))
    trainer.model.zero_grad()
    anchor = {k: v + 1.0 for k, v in snapshot_parameters(trainer.model).items()}
    trainer._lisa.anchor, trainer.state.max_steps = anchor, 10
    trainer.state.global_step = 4  # < ceil(0.5 * 10)
    trainer._end_step()
    assert all(p.grad is None for p in trainer.model.parameters())
    trainer.state.global_step = 5
    trainer._end_step()
    assert all(p.grad is not None for p in trainer.model.parameters() if p.requires_grad)


# ---- the state machine ------------------------------------------------------------------------------------------


def test_step_accounting_two_alignment_then_three_user_steps(tmp_path):
    trainer = lisa_trainer(tmp_path, LisaParams(alignment_steps=2, finetune_steps=3), cls=RecordingLisa)
    trainer.train()
    expected_states = [ALIGNMENT] * 2 + [FINETUNE] * 3 + [ALIGNMENT] * 2 + [FINETUNE] * 3
    assert [bistate_position(s, 2, 3)[0] for s in range(10)] == expected_states
    assert [step for step, _, _ in trainer.seen] == list(range(10))
    sources = [ALIGNMENT if set(markers) == {ALIGN} else FINETUNE for _, markers, _ in trainer.seen]
    assert sources == expected_states

    # alignment steps draw consecutive batches of the endless loader (6 records, batch 2: reshuffled each 3)
    reference = EndlessLoader(make_records(ALIGN, 6, seed=1), 2, SFTDataCollator(PAD), seed=0)
    expected_alignment = [next(reference)["input_ids"][:, 1].tolist() for _ in range(4)]
    assert [ids for _, m, ids in trainer.seen if m[0] == ALIGN] == expected_alignment
    # user steps see exactly the batches plain SFT sees at the same steps: the displaced ones are skipped
    sft = RecordingSFT(
        model=tiny_llama(lora_dropout=0.1),
        args=training_args(tmp_path / "sft", max_steps=LISA_STEPS),
        train_dataset=make_records(USER, 12, seed=0),
        data_collator=SFTDataCollator(PAD),
    )
    sft.seen, sft.weights_at = [], {}
    sft.train()
    user_steps = [s for s, state in enumerate(expected_states) if state == FINETUNE]
    assert [ids for s, m, ids in trainer.seen if m[0] == USER] == [sft.seen[s][2] for s in user_steps]
    # the anchor of the last state (fine-tune, steps 7..9) is the model as it entered step 7, and not as it entered
    # any other step (the weights move at every step)
    assert_same_weights(trainer.lisa_anchor, trainer.weights_at[7])
    assert not all(torch.equal(trainer.lisa_anchor[k], trainer.weights_at[6][k]) for k in trainer.lisa_anchor)
    assert not all(torch.equal(trainer.lisa_anchor[k], trainer.weights_at[8][k]) for k in trainer.lisa_anchor)


def test_states_switch_on_optimizer_step_boundaries_with_gradient_accumulation(tmp_path):
    params = LisaParams(alignment_steps=2, finetune_steps=3)
    trainer = lisa_trainer(tmp_path, params, cls=RecordingLisa, gradient_accumulation_steps=2, max_steps=10)
    trainer.train()
    assert len(trainer.seen) == 20
    for step in range(10):
        micro = [markers for s, markers, _ in trainer.seen if s == step]
        assert len(micro) == 2
        marker = ALIGN if trainer.state_at(step) == ALIGNMENT else USER
        assert all(set(m) == {marker} for m in micro), (step, micro)


def test_ratio_form_of_the_schedule():
    assert LisaParams(alignment_ratio=0.1, cycle_steps=1000).schedule() == (100, 900)
    assert LisaParams().schedule() == (100, 900)
    with pytest.raises(ValueError):
        LisaParams(alignment_ratio=0.1)
    with pytest.raises(ValueError):
        LisaParams(alignment_ratio=0.1, cycle_steps=10, alignment_steps=3)
    with pytest.raises(ValueError):
        BSOParams(rho=1.0)  # BSO has no rho


def test_the_default_schedule_keeps_the_papers_ratio_in_at_least_four_cycles_of_a_short_run():
    assert LisaParams().schedule(total_steps=None) == (100, 900)  # the run's length unknown: the papers' values
    assert LisaParams().schedule(total_steps=4000) == (100, 900)
    assert LisaParams().schedule(total_steps=160) == (4, 36)  # the offline benchmarks' schedule
    assert LisaParams().schedule(total_steps=1000) == (25, 225)
    assert LisaParams().schedule(total_steps=3) == (1, 9)  # the shortest cycle keeps 1:9
    # an explicit schedule is kept as given, whatever the run's length
    assert LisaParams(alignment_steps=100, finetune_steps=900).schedule(total_steps=40) == (100, 900)
    assert LisaParams(alignment_steps=0).schedule(total_steps=40) == (0, 900)


def test_an_explicit_schedule_that_never_reaches_the_user_data_is_warned_about():
    explicit = LisaParams(alignment_steps=100, finetune_steps=900)
    assert "never trained on" in explicit.schedule_warning(total_steps=40)
    assert "fewer than one cycle" in explicit.schedule_warning(total_steps=400)
    assert LisaParams().schedule_warning(total_steps=40) is None
    assert LisaParams(alignment_steps=0).schedule_warning(total_steps=40) is None


def test_a_short_run_with_the_default_schedule_trains_on_the_user_data(tmp_path):
    trainer = lisa_trainer(tmp_path, LisaParams(), cls=RecordingLisa, max_steps=12)
    trainer.train()
    markers = [set(m) for _, m, _ in trainer.seen]
    assert markers[0] == {ALIGN} and markers[1:10] == [{USER}] * 9 and markers[10] == {ALIGN}  # K_a/K_f = 1/9
    assert (trainer.alignment_steps, trainer.finetune_steps) == (1, 9)


# ---- reductions to BSO and SFT ---------------------------------------------------------------------------------


def test_rho_zero_reproduces_bso_exactly(tmp_path):
    schedule = dict(alignment_steps=2, finetune_steps=3)
    lisa = lisa_trainer(tmp_path / "lisa", LisaParams(rho=0.0, proximal_warmup_ratio=0.0, **schedule))
    lisa.train()
    bso_method = get_training_method("finetune", "bso")
    bso = bso_method.build_trainer(
        model=tiny_llama(lora_dropout=0.1),
        args=training_args(tmp_path / "bso", max_steps=LISA_STEPS),
        train_dataset=make_records(USER, 12, seed=0),
        data_collator=SFTDataCollator(PAD),
        params=BSOParams(**schedule),
        aux_datasets={"alignment_data": make_records(ALIGN, 6, seed=1)},
    )
    bso.train()
    assert_same_weights(trainable_state(lisa.model), trainable_state(bso.model))
    # and the proximal term does change the result when it is on
    pulled = lisa_trainer(tmp_path / "pulled", LisaParams(rho=1.0, proximal_warmup_ratio=0.0, **schedule))
    pulled.train()
    diff = [
        not torch.equal(a, b)
        for a, b in zip(trainable_state(pulled.model).values(), trainable_state(bso.model).values(), strict=True)
    ]
    assert any(diff)


def test_zero_alignment_steps_reproduces_plain_sft_exactly(tmp_path):
    lisa = lisa_trainer(tmp_path / "lisa", LisaParams(alignment_steps=0, rho=1.0, proximal_warmup_ratio=0.0))
    lisa.train()
    sft = Trainer(
        model=tiny_llama(lora_dropout=0.1),
        args=training_args(tmp_path / "sft", max_steps=LISA_STEPS),
        train_dataset=make_records(USER, 12, seed=0),
        data_collator=SFTDataCollator(PAD),
    )
    sft.train()
    assert_same_weights(trainable_state(lisa.model), trainable_state(sft.model))
    assert lisa.lisa_anchor is None


# ---- checkpoint / resume ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("resume_at", [3, 6])  # 3: mid fine-tune state and mid user epoch; 6: mid alignment state
def test_kill_and_resume_ends_with_the_same_weights_as_an_unbroken_run(tmp_path, resume_at):
    params = LisaParams(alignment_steps=2, finetune_steps=3, rho=1.0, proximal_warmup_ratio=0.0)
    checkpoints = dict(save_strategy="steps", save_steps=3)
    unbroken = lisa_trainer(tmp_path / "unbroken", params, **checkpoints)
    unbroken.train()
    checkpoint = tmp_path / "unbroken" / f"checkpoint-{resume_at}"
    assert (checkpoint / LISA_STATE_FILE).is_file()
    saved = torch.load(checkpoint / LISA_STATE_FILE, weights_only=True)
    assert saved["global_step"] == resume_at
    alignment_draws = sum(bistate_position(s, 2, 3)[0] == ALIGNMENT for s in range(resume_at))
    assert saved["alignment_loader"]["epoch"] * 3 + saved["alignment_loader"]["index"] == alignment_draws

    # "killed" after the checkpoint: a fresh process builds a fresh trainer and resumes from the folder
    shutil.copytree(checkpoint, tmp_path / "resumed" / checkpoint.name)
    resumed = lisa_trainer(tmp_path / "resumed", params, **checkpoints)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 10
    assert_same_weights(trainable_state(resumed.model), trainable_state(unbroken.model))
    assert_same_weights(resumed.lisa_anchor, unbroken.lisa_anchor)


# ---- logging and the plot ----------------------------------------------------------------------------------------

LOGGED_KEYS = {
    "lisa/state",
    "lisa/alignment_fraction",
    "lisa/alignment_loss",
    "lisa/user_loss",
    "lisa/proximal",
    "lisa/drift",
    "lisa/grad_norm",
}


def test_logged_keys_appear_in_log_history_and_plot_writes_a_png(tmp_path):
    params = LisaParams(alignment_steps=2, finetune_steps=3, proximal_warmup_ratio=0.0)
    trainer = lisa_trainer(tmp_path, params, logging_steps=2, save_strategy="steps", save_steps=10)
    trainer.train()
    train_logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(train_logs) == 5
    assert set().union(*train_logs) >= LOGGED_KEYS
    # window averages: steps 4..5 are (fine-tune, alignment), steps 6..7 (alignment, fine-tune)
    assert [h["lisa/alignment_fraction"] for h in train_logs] == [1.0, 0.0, 0.5, 0.5, 0.0]
    assert [h["lisa/state"] for h in train_logs] == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert train_logs[0]["lisa/drift"] > 0  # after 2 alignment steps away from the initial anchor
    for h in train_logs:
        assert math.isfinite(h["lisa/drift"]) and h["lisa/proximal"] >= 0
        assert h["loss"] == pytest.approx(
            h["lisa/alignment_fraction"] * h.get("lisa/alignment_loss", 0)
            + (1 - h["lisa/alignment_fraction"]) * h.get("lisa/user_loss", 0),
            rel=1e-5,
        )
    png = plot_training_curves(trainer.state.log_history, tmp_path / "curves.png")
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state_json = tmp_path / "checkpoint-10" / "trainer_state.json"
    assert "lisa/drift" in json.loads(state_json.read_text())["log_history"][0]
    png = plot_training_curves(state_json, tmp_path / "from_json.png")
    assert Path(png).stat().st_size > 1000


# ---- the endless loader ---------------------------------------------------------------------------------------


def test_endless_loader_restores_its_position_exactly():
    data = list(range(10))
    loader = EndlessLoader(data, 3, list, seed=5)
    for _ in range(5):  # into the second pass
        next(loader)
    state = loader.state_dict()
    expected = [next(loader) for _ in range(6)]
    restored = EndlessLoader(data, 3, list, seed=5)
    restored.load_state_dict(state)
    assert [next(restored) for _ in range(6)] == expected
    fresh = EndlessLoader(data, 3, list, seed=5)
    assert sorted(x for _ in range(4) for x in next(fresh)) == data  # one pass: batches of 3, 3, 3, 1
    with pytest.raises(ValueError, match="seed"):
        restored.load_state_dict({**state, "seed": 6})
    ranked = EndlessLoader(data, 2, list, seed=5, rank=1, world_size=2)
    with pytest.raises(ValueError, match="per-example"):  # a position saved before DDP sharding by whole batches
        ranked.load_state_dict(
            {k: v for k, v in {**state, "batch_size": 2, "world_size": 2}.items() if k != "sharding"}
        )


@pytest.mark.parametrize(
    ("size", "batch", "world", "drop_last"), [(8, 2, 2, False), (10, 3, 2, False), (5, 4, 2, False), (11, 2, 3, True)]
)
def test_endless_loader_shards_whole_batches_like_accelerate(size, batch, world, drop_last):
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    data = list(range(size))
    one = EndlessLoader(data, batch, list, seed=3, drop_last=drop_last)
    ranks = [
        EndlessLoader(data, batch, list, seed=3, drop_last=drop_last, rank=r, world_size=world) for r in range(world)
    ]
    order = torch.randperm(size, generator=torch.Generator().manual_seed(3)).tolist()
    for rank, loader in enumerate(ranks):  # the first pass: how accelerate shards the Trainer's main data
        accelerate_shard = list(BatchSamplerShard(BatchSampler(order, batch, drop_last), world, rank))
        assert [next(loader) for _ in range(loader.batches_per_epoch)] == accelerate_shard
    if size % (batch * world) == 0:  # then draw k of rank r is draw k*W + r of one process, pass after pass
        ranks = [EndlessLoader(data, batch, list, seed=3, rank=r, world_size=world) for r in range(world)]
        interleaved = [next(ranks[k % world]) for k in range(3 * size // batch)]
        assert interleaved == [next(one) for _ in range(3 * size // batch)]


# ---- TRL ------------------------------------------------------------------------------------------------------


def test_lisa_sft_trainer_runs_with_trl(tmp_path):
    pytest.importorskip("trl")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from trl import SFTConfig

    from tuneguard.methods.lisa import LisaSFTTrainer

    words = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(61)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")

    def records(first: int, n: int) -> Dataset:
        return Dataset.from_dict(
            {
                "prompt": [f"w{first} w{10 + i} w{20 + i % 5}" for i in range(n)],
                "completion": [f" w{30 + i % 7} w{40 + i % 3}" for i in range(n)],
            }
        )

    args = SFTConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        max_length=32,
    )
    trainer = LisaSFTTrainer(
        model=tiny_llama(lora_dropout=0.1),
        args=args,
        train_dataset=records(3, 8),
        processing_class=tokenizer,
        alignment_dataset=records(4, 6),
        lisa_params=LisaParams(alignment_steps=1, finetune_steps=1, proximal_warmup_ratio=0.0),
    )
    assert "input_ids" in trainer.alignment_dataset.column_names
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["lisa/state"] for h in logs] == [1.0, 0.0, 1.0, 0.0]
    assert all("mean_token_accuracy" in h and "lisa/drift" in h for h in logs)
