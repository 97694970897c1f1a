"""`tuneguard serve` with SFT jobs and the Antidote repair: a repair that brings the harmful score under the limit
releases the repaired model; one that does not fails the gate. And the service killed with SIGKILL in the middle
of a job: restarted, the job continues from its last checkpoint and ends with the model of an unbroken run, with
no file, job or event lost."""

from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import load_file
from serve_support import FAST_GATE, Server, events, training_file, upload, wait_for, worker_pids

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    overrides = [
        "finetune.method=sft",
        "finetune.method_args={}",
        "finetune.alignment_data=null",
        "screening.max_flagged_share=0.6",
        "finetune.training.save_steps=5",
        f"base_models_dir={tmp_path_factory.getbasetemp() / 'serve-base-models'}",
        FAST_GATE,
    ]
    server = Server(tmp_path_factory.mktemp("serve-restart") / "data", overrides).start()
    yield server
    server.stop()


def test_a_repair_that_brings_the_harmful_score_under_the_limit_releases_the_repaired_model(server, tmp_path):
    client = server.client()
    path = training_file(tmp_path / "half.jsonl", 100, poison=0.5, seed=3)
    job, _ = wait_for(
        client, client.fine_tuning.jobs.create(model="tiny-aligned", training_file=upload(client, path).id, seed=0).id
    )
    assert job.status == "succeeded", job.error
    gate = {e.message.split(":")[0]: e.data for e in events(client, job.id) if e.data and "limit" in e.data}
    assert gate["Safety gate"]["harmful_score_plus"] > 10.0 >= gate["After repair"]["harmful_score_plus"]
    released = server.data_dir / "jobs" / job.id / "store" / "repair"
    assert [p for p in released.glob("antidote-*/model") if p.is_dir()]  # the released model is the repaired one
    answer = client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.role == "assistant"


def test_a_killed_service_resumes_the_job_from_its_last_checkpoint_to_the_model_of_an_unbroken_run(server, tmp_path):
    client = server.client()
    path = training_file(tmp_path / "big.jsonl", 300, poison=0.5, seed=5)  # 90 optimizer steps, a checkpoint every 5
    training = upload(client, path)
    killed = client.fine_tuning.jobs.create(model="tiny-aligned", training_file=training.id, seed=0)
    while not list(client.fine_tuning.jobs.checkpoints.list(killed.id)):
        time.sleep(0.05)
    before = {
        "events": {e.id for e in events(client, killed.id)},
        "files": [f.id for f in client.files.list()],
        "jobs": [j.id for j in client.fine_tuning.jobs.list()],
    }
    workers = worker_pids(server.data_dir)
    server.kill()
    deadline = time.time() + 30
    while worker_pids(server.data_dir) and time.time() < deadline:
        time.sleep(0.1)
    assert workers and not worker_pids(server.data_dir), "a worker outlived the killed service"

    server.start()
    client = server.client()
    job, _ = wait_for(client, killed.id, timeout=600)
    messages = [e.message for e in events(client, killed.id)]
    assert any("restarted while the job was training" in m for m in messages), messages
    resumed_at = next(
        int(m.rsplit(" ", 1)[1]) for m in messages if m.startswith("Resuming fine-tuning from the checkpoint")
    )
    assert resumed_at >= 5 and before["events"] <= {e.id for e in events(client, killed.id)}  # no event lost
    assert [f.id for f in client.files.list()] == before["files"] and [
        j.id for j in client.fine_tuning.jobs.list()
    ] == before["jobs"]

    unbroken = client.fine_tuning.jobs.create(model="tiny-aligned", training_file=training.id, seed=0)
    unbroken, _ = wait_for(client, unbroken.id, timeout=600)
    assert job.status == unbroken.status == "failed" and job.error.code == unbroken.error.code == "safety_gate"
    assert "also after repair with antidote" in job.error.message  # a repair that does not suffice
    assert job.trained_tokens == unbroken.trained_tokens
    for stage in ("finetune/sft-*", "repair/antidote-*"):
        (a,) = (server.data_dir / "jobs" / killed.id / "store").glob(f"{stage}/model/model.safetensors")
        (b,) = (server.data_dir / "jobs" / unbroken.id / "store").glob(f"{stage}/model/model.safetensors")
        weights_a, weights_b = load_file(a), load_file(b)
        assert weights_a.keys() == weights_b.keys()
        for name in weights_a:
            torch.testing.assert_close(weights_a[name], weights_b[name], rtol=0, atol=1e-6, msg=f"{stage} {name}")
