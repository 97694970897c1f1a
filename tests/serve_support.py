"""Test support for `tuneguard serve`: start the real server (a subprocess on 127.0.0.1, a free port), build
training files from the offline world, and wait for jobs with the official `openai` client."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OFFLINE_POLICY = ROOT / "examples" / "serve" / "offline.yaml"
KEYS = {"acme": "tg-test-acme-key-0123456789", "globex": "tg-test-globex-key-9876543210"}
FINISHED = ("succeeded", "failed", "cancelled")
# The tests' gate evaluates 104 of the 312 held-out harmful prompts (a third of the time; the HS the tests
# compare with the limit are far from it either way).
FAST_GATE = "gate.eval.harmful_prompts={source: offline:harmful_eval, num_samples: 104, seed: 0}"

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")


class Server:
    """`tuneguard serve POLICY` in its own process group; ``url`` once it answers."""

    def __init__(self, data_dir: Path, overrides: list[str], policy: Path = OFFLINE_POLICY, keys: dict | None = None):
        """``keys``: tenant -> key in the policy's keys file; by default KEYS, given in TUNEGUARD_API_KEYS."""
        self.data_dir, self.policy, self.overrides = data_dir, policy, overrides
        self.keys = keys or KEYS
        self.log = data_dir.parent / f"{data_dir.name}-server.log"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(sys.path),
            "TUNEGUARD_API_KEYS": "" if keys else ",".join(f"{t}={k}" for t, k in KEYS.items()),
            "OMP_NUM_THREADS": "1",
        }
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 240) -> Server:
        (self.data_dir / "service.json").unlink(missing_ok=True)
        command = [sys.executable, "-m", "tuneguard.cli", "serve", str(self.policy), *self.overrides]
        command += [f"data_dir={self.data_dir}", "port=0", "workers.torch_threads=1"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.time() + timeout
        info = self.data_dir / "service.json"
        while time.time() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            if info.is_file() and json.loads(info.read_text())["pid"] == self.process.pid:
                self.url = json.loads(info.read_text())["url"]
                if self._healthy():
                    return self
            time.sleep(0.2)
        pytest.fail(f"the server did not start in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def client(self, tenant: str = "acme", **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=self.keys[tenant], max_retries=0, timeout=120, **kw)

    def kill(self) -> None:
        """SIGKILL the server process (its workers die with it)."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown: the lifespan stops the workers
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def logs(self) -> str:
        """Everything the server and its workers logged."""
        texts = [self.log.read_text(errors="replace")]
        texts += [p.read_text(errors="replace") for p in sorted((self.data_dir / "logs").glob("*.log"))]
        return "\n".join(texts)

    def _healthy(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(self.url.removesuffix("/v1") + "/health", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False


def worker_pids(data_dir: Path) -> dict[str, int]:
    """The live worker processes started for this data directory, by name (screening-0, training-0, ...)."""
    policy_file = str(data_dir / "run" / "policy.json").encode()
    pids = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                zombie = ") Z " in (proc / "stat").read_text()
            except OSError:
                continue
            if policy_file in cmdline and b"tuneguard.serve.runner" in cmdline and not zombie:
                pids[cmdline[cmdline.index(b"--name") + 1].decode()] = int(proc.name)
    return pids


# ------------------------------------------------------------------------------------------ training files
def offline_records(role: str, n: int, seed: int = 0) -> list[dict]:
    from tuneguard.data import load_records

    return random.Random(seed).sample(load_records(f"offline:{role}"), n)


def chat_line(record: dict) -> str:
    messages = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]
    return json.dumps({"messages": messages})


def training_file(path: Path, n: int = 100, poison: float = 0.0, seed: int = 0, layout: str = "chat") -> Path:
    """``n`` examples of the offline task, ``round(poison * n)`` of them the world's harmful records, shuffled."""
    harmful = round(poison * n)
    records = offline_records("task_train", n - harmful, seed) + offline_records("harmful", harmful, seed)
    random.Random(seed).shuffle(records)
    if layout == "chat":
        lines = [chat_line(r) for r in records]
    else:
        lines = [json.dumps({"prompt": r["prompt"], "completion": r["response"]}) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def upload(client, path: Path):
    with path.open("rb") as fh:
        return client.files.create(file=fh, purpose="fine-tune")


def wait_for(client, job_id: str, statuses=FINISHED, timeout: float = 300):
    """Poll the job until its status is one of ``statuses``; returns it and every status seen on the way."""
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if not seen or seen[-1] != job.status:
            seen.append(job.status)
        if job.status in statuses:
            return job, seen
        time.sleep(0.2)
    pytest.fail(f"job {job_id} still {seen[-1]} after {timeout} s (statuses seen: {seen})")


def events(client, job_id: str) -> list:
    """Every event of the job, oldest first."""
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=1000))))


def raw_get(server: Server, path: str, tenant: str = "acme"):
    """A GET with the tenant's key, returning the parsed JSON body (to validate it against openai's types)."""
    return server.client(tenant).get(path, cast_to=object)


async def load_burst(server: Server, job_id: str, upload_path: Path, status_requests: int = 200, uploads: int = 20):
    """``status_requests`` status and list requests and ``uploads`` uploads, all at once, on the loopback; returns
    each kind's latencies (s) and the failures. The loop is bounded: every request is sent once."""
    import asyncio

    client = openai.AsyncOpenAI(base_url=server.url, api_key=server.keys["acme"], max_retries=0, timeout=300)
    jobs = client.fine_tuning.jobs
    reads = [
        lambda: jobs.retrieve(job_id),
        lambda: jobs.list(limit=20),
        lambda: jobs.list_events(job_id, limit=20),
        lambda: client.files.list(),
        lambda: client.models.list(),
    ]
    content = upload_path.read_bytes()

    async def timed(kind: str, call):
        start = time.perf_counter()
        try:
            await call()
        except openai.APIError as exc:
            return kind, None, f"{type(exc).__name__}: {exc}"
        return kind, time.perf_counter() - start, None

    calls = [timed("status", reads[i % len(reads)]) for i in range(status_requests)]
    calls += [
        timed("upload", lambda i=i: client.files.create(file=(f"load-{i}.jsonl", content), purpose="fine-tune"))
        for i in range(uploads)
    ]
    start = time.perf_counter()
    results = await asyncio.gather(*calls)
    wall = time.perf_counter() - start
    await client.close()
    latencies = {kind: [s for k, s, _ in results if k == kind and s is not None] for kind in ("status", "upload")}
    return {"latencies": latencies, "failures": [e for _, _, e in results if e], "wall_s": wall}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    import math

    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]
