"""Vaccine, Booster and RepNoise under DDP: two CPU processes, gloo backend, launched with torch.distributed.run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("alignment_ddp_worker.py")
METHODS = ("vaccine", "booster", "repnoise")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_alignment_defenses_keep_ddp_replicas_identical_and_log_rank_averaged_internals(tmp_path):
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
    for method in METHODS:
        ranks = [json.loads((tmp_path / f"{method}-rank{r}.json").read_text()) for r in range(2)]
        assert [r["world_size"] for r in ranks] == [2, 2]
        # every rank perturbs for its own data; the synchronised gradients keep the replicas identical
        assert ranks[0]["weights"] == ranks[1]["weights"], method
        logs = [r["logs"] for r in ranks]
        assert len(logs[0]) == 3 and logs[0] == logs[1], method  # internals are averaged over ranks
        assert any(key.startswith(f"{method}/") for key in logs[0][0]), method
