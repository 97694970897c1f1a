"""Lisa under DDP: two CPU processes, gloo backend, launched with torch.distributed.run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tuneguard.methods.lisa import ALIGNMENT, bistate_position

WORKER = Path(__file__).with_name("lisa_ddp_worker.py")
ALIGN = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_lisa_ddp_ranks_switch_on_the_same_steps_and_stay_in_sync(tmp_path):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(WORKER),
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
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
