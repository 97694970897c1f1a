"""`tuneguard serve` with the Ray worker backend (`workers.type: ray`): every fine-tuning job is a Ray task on the
Ray instance the service starts (address 'local', CPU jobs: num_gpus 0), driven by the official `openai` client
over HTTP. A job whose Ray worker process is killed mid-training is rerun by Ray, resumes from its last checkpoint
and ends with the local backend's numbers, model and answer for the same file and seed; cancel kills the job's
Ray task."""

from __future__ import annotations

import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from serve_support import FAST_GATE, ROOT, Server, events, training_file, upload, wait_for

from tuneguard.config import ConfigError

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

# Jobs of 100 examples, 2 epochs, batch 10: 20 SFT steps with a checkpoint every 4.
JOB = {"n_epochs": 2, "batch_size": 10}
POLICY = ["finetune.method=sft", "finetune.method_args={}", "finetune.alignment_data=null"]
POLICY += ["finetune.training.save_steps=4", "gate.repair={method: none}", FAST_GATE]
RAY_WORKERS = "workers={type: ray, ray: {resources: {num_cpus: 1, num_gpus: 0, max_retries: 1}}}"


def new_server(tmp_path_factory, name: str, *overrides: str) -> Server:
    base_models = tmp_path_factory.getbasetemp() / "serve-base-models"  # shared by the service test modules
    data = tmp_path_factory.mktemp(name) / "data"
    return Server(data, [*POLICY, f"base_models_dir={base_models}", *overrides])


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """A service whose jobs run on Ray and one with local workers, the same policy otherwise (started at once)."""
    ray_server = new_server(tmp_path_factory, "serve-ray", RAY_WORKERS)
    # Ray runs its workers at nice 15 (for its own daemons' sake); on a shared test machine that starves the job
    # behind any other load, and the local backend's workers run at the default: the same for both.
    ray_server.env["RAY_worker_niceness"] = "0"
    local_server = new_server(tmp_path_factory, "serve-local")
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(Server.start, (ray_server, local_server)))
        yield {"ray": ray_server, "local": local_server}
    finally:
        ray_server.stop()
        local_server.stop()


@pytest.fixture(scope="module")
def ray_server(servers) -> Server:
    return servers["ray"]


@pytest.fixture(scope="module")
def clean_file(tmp_path_factory) -> Path:
    return training_file(tmp_path_factory.mktemp("serve-ray-files") / "clean.jsonl", 100, seed=1)


@pytest.fixture(scope="module")
def same_job(servers, clean_file):
    """The same job (file, seed) on both services at once; on Ray, the worker process that runs it is killed after
    its first checkpoint. Each job as it ends, its events, the statuses seen, and an answer of its model."""
    created = {}
    for backend, server in servers.items():
        client = server.client()
        job = client.fine_tuning.jobs.create(
            model="tiny-aligned", training_file=upload(client, clean_file).id, seed=0, hyperparameters=JOB
        )
        created[backend] = job.id
    first_checkpoint(servers["ray"].client(), created["ray"])
    killed = ray_task_pids(created["ray"])
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    out = {"killed": killed}
    for backend, server in servers.items():
        client = server.client()
        job, seen = wait_for(client, created[backend])
        assert job.fine_tuned_model, job.error
        prompt = [{"role": "user", "content": "Is this review positive or negative? A wonderful film."}]
        answer = client.chat.completions.create(model=job.fine_tuned_model, messages=prompt)
        out[backend] = {"server": server, "job": job, "seen": seen, "events": events(client, job.id), "answer": answer}
    return out


def job_model(server: Server, job_id: str) -> dict[str, torch.Tensor]:
    (weights,) = (server.data_dir / "jobs" / job_id / "store").glob("finetune/sft-*/model/*.safetensors")
    return load_file(weights)


def assert_same_model(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def ray_task_pids(job_id: str) -> list[int]:
    """The processes running the job's Ray task (Ray titles a worker process after the task it runs)."""
    title = f"ray::tuneguard-job-{job_id}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(title):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def first_checkpoint(client, job_id: str, timeout: float = 300) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if steps := [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job_id)]:
            return min(steps)
        time.sleep(0.05)
    pytest.fail(f"job {job_id} wrote no checkpoint in {timeout} s")


# ------------------------------------------------------------------------------------------------------ tests
def test_a_job_on_ray_ends_with_the_local_backend_s_numbers_model_and_answer(same_job):
    ray_run, local_run = same_job["ray"], same_job["local"]
    for run in (ray_run, local_run):
        assert run["job"].status == "succeeded", run["job"].error
        messages = [e.message for e in run["events"]]
        steps = ("Files validated; the job is queued", "Fine-tuning job started", "The job has successfully completed")
        assert [m for m in messages if m in steps] == list(steps)
    server, job = ray_run["server"], ray_run["job"]
    assert (server.data_dir / "logs" / f"ray-{job.id}.log").is_file()  # the task's log, in the service's logs
    assert job.trained_tokens == local_run["job"].trained_tokens > 0

    # The same steps, losses, gate numbers and weights: the same computation, placed by Ray (and resumed there).
    def numbers(run):
        return [(e.message, {**e.data, "model_dir": None}) for e in run["events"] if e.type == "metrics"]

    assert numbers(ray_run) == numbers(local_run)
    assert [data.get("step") for _, data in numbers(ray_run)][:6] == [4, 8, 12, 16, 20, 20]  # checkpoints, the end
    assert_same_model(job_model(server, job.id), job_model(local_run["server"], local_run["job"].id))
    assert ray_run["answer"].choices[0].message.content == local_run["answer"].choices[0].message.content


def test_a_killed_ray_worker_is_rerun_by_ray_and_the_job_resumes_from_its_checkpoint(same_job):
    ray_run = same_job["ray"]
    assert len(same_job["killed"]) == 1  # one process ran the job's task when it was killed
    seen = ray_run["seen"]
    assert "queued" not in seen[seen.index("running") :], seen  # Ray reran it; the service did not requeue it
    messages = [e.message for e in ray_run["events"]]
    resumed = [m for m in messages if m.startswith("Resuming fine-tuning from the checkpoint at step")]
    assert len(resumed) == 1 and int(resumed[0].rsplit(" ", 1)[1]) >= 4, messages
    assert not [m for m in same_job["local"]["events"] if m.message.startswith("Resuming")]


def test_cancel_through_the_client_kills_the_job_s_ray_task(ray_server, clean_file):
    client = ray_server.client()
    long = client.fine_tuning.jobs.create(
        model="tiny-aligned",
        training_file=upload(client, clean_file).id,
        hyperparameters={"n_epochs": 10, "batch_size": 1},
    )  # 1000 steps
    first_checkpoint(client, long.id)
    assert ray_task_pids(long.id)
    cancelled = client.fine_tuning.jobs.cancel(long.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    deadline = time.time() + 10
    while ray_task_pids(long.id) and time.time() < deadline:
        time.sleep(0.1)
    assert not ray_task_pids(long.id), "the job's Ray task still runs"
    assert not (ray_server.data_dir / "jobs" / long.id / "store").exists()  # its partial training is removed
    steps = sorted(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(long.id, limit=100))
    time.sleep(1)
    assert sorted(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(long.id, limit=100)) == steps
    assert steps[-1] < 1000 and events(client, long.id)[-1].message == "The job was cancelled"


# ------------------------------------------------------------------------------------------------ the policy
def test_the_ray_backend_without_the_ray_package_is_one_error_naming_the_extra(monkeypatch):
    from tuneguard.serve.policy import load_policy

    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(ConfigError) as exc:
        load_policy(ROOT / "examples" / "serve" / "offline.yaml", ["workers={type: ray}"])
    assert "workers: type: ray needs the optional package 'ray': pip install 'tuneguard[ray]'" in str(exc.value)
    assert load_policy(ROOT / "examples" / "serve" / "offline.yaml").workers.type == "local"  # the default needs none
