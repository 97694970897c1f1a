"""The throw-away example defense (methods/_example_l2.py): the pull keeps the weights nearer their start."""

from __future__ import annotations

import torch
from conftest import PAD, make_records, tiny_llama, trainable_state, training_args

from tuneguard.data.tokenize import SFTDataCollator
from tuneguard.methods import get_training_method


def test_the_l2_pull_ends_nearer_the_initial_weights_than_plain_sft(tmp_path):
    distances = {}
    for name in ("sft", "example-l2"):
        method = get_training_method("finetune", name)
        params = method.params_cls(lamb=50.0) if name == "example-l2" else method.params_cls()
        trainer = method.build_trainer(
            model=tiny_llama(),
            args=training_args(tmp_path / name, max_steps=3),
            train_dataset=make_records(1, 8, seed=0),
            data_collator=SFTDataCollator(PAD),
            params=params,
        )
        start = trainable_state(trainer.model)
        trainer.train()
        end = trainable_state(trainer.model)
        distances[name] = sum(float((end[k] - start[k]).pow(2).sum()) for k in start)
    assert distances["example-l2"] < 0.5 * distances["sft"]
    assert torch.isfinite(torch.tensor(distances["example-l2"]))
