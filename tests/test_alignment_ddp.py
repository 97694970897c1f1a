"""Vaccine, Booster and RepNoise under DDP: two CPU processes, gloo backend, launched with torch.distributed.run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_distributed

WORKER = Path(__file__).with_name("alignment_ddp_worker.py")
METHODS = ("vaccine", "booster", "repnoise")


@pytest.mark.slow
def test_alignment_defenses_keep_ddp_replicas_identical_and_log_rank_averaged_internals(tmp_path):
    run_distributed(WORKER, str(tmp_path))
    for method in METHODS:
        ranks = [json.loads((tmp_path / f"{method}-rank{r}.json").read_text()) for r in range(2)]
        assert [r["world_size"] for r in ranks] == [2, 2]
        # every rank perturbs for its own data; the synchronised gradients keep the replicas identical
        assert ranks[0]["weights"] == ranks[1]["weights"], method
        logs = [r["logs"] for r in ranks]
        assert len(logs[0]) == 3 and logs[0] == logs[1], method  # internals are averaged over ranks
        assert any(key.startswith(f"{method}/") for key in logs[0][0]), method
