"""Lisa under DDP: two CPU processes, gloo backend, launched with torch.distributed.run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_distributed

from tuneguard.methods.lisa import ALIGNMENT, bistate_position

WORKER = Path(__file__).with_name("lisa_ddp_worker.py")
ALIGN = 2


@pytest.mark.slow
def test_lisa_ddp_ranks_switch_on_the_same_steps_and_stay_in_sync(tmp_path):
    run_distributed(WORKER, str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]

    expected = [bistate_position(step, 1, 2)[0] for step in range(8)]
    for rank in ranks:
        assert [step for step, _, _ in rank["seen"]] == list(range(8))
        states = [ALIGNMENT if set(markers) == {ALIGN} else "finetune" for _, markers, _ in rank["seen"]]
        assert states == expected
    # each rank draws its own shard of both data sets
    for step in range(8):
        assert not set(ranks[0]["seen"][step][2]) & set(ranks[1]["seen"][step][2]), step
    # replicas stay identical: same gradients (all-reduced) plus the same closed-form proximal gradient
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert [h["lisa/state"] for h in ranks[0]["logs"]] == [h["lisa/state"] for h in ranks[1]["logs"]]
    assert ranks[0]["logs"][0]["lisa/alignment_loss"] == ranks[1]["logs"][0]["lisa/alignment_loss"]
