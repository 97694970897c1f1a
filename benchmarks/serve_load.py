"""`tuneguard serve` on this machine: one job end to end, and latency under load while a job trains.

Starts the service with the README's offline policy (examples/serve/offline.yaml, Lisa) on 127.0.0.1, a free port,
and drives it with the official `openai` client (the tests' harness, tests/serve_support.py):

1. one job end to end on a warm service (its base model prepared): the upload as the client sees it, then the
   service's own timings of the job's phases (validation and screening, queue, training, safety gate, total);
2. while a long job trains: ``--status-requests`` status/list requests (job, jobs, events, files, models) and
   ``--uploads`` uploads of a 100-example file, all sent at once on the loopback (each exactly once); every one
   must succeed; p50/p99 latency per kind. Then the long job is cancelled.

    .venv/bin/python benchmarks/serve_load.py --output benchmarks/results/serve_load.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sqlite3
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/tuneguard-bench/serve"))
    parser.add_argument("--status-requests", type=int, default=200)
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--output", type=Path, help="write the results as Markdown here")
    options = parser.parse_args()

    from serve_support import Server, load_burst, percentile, training_file, upload, wait_for

    shutil.rmtree(options.work_dir, ignore_errors=True)
    options.work_dir.mkdir(parents=True)
    clean = training_file(options.work_dir / "clean.jsonl", 100, seed=1)
    start = time.perf_counter()
    server = Server(options.work_dir / "data", []).start()
    startup = time.perf_counter() - start
    try:
        client = server.client()
        while True:  # warm: the base model is prepared (chat on it answers instead of 503)
            try:
                client.chat.completions.create(model="tiny-aligned", messages=[{"role": "user", "content": "hi"}])
                break
            except Exception:  # the openai client's InternalServerError (503) while the worker prepares it
                time.sleep(0.5)
        ready = time.perf_counter() - start

        start = time.perf_counter()
        file = upload(client, clean)
        upload_s = time.perf_counter() - start
        job = client.fine_tuning.jobs.create(model="tiny-aligned", training_file=file.id, seed=0)
        job, _ = wait_for(client, job.id, timeout=900)
        client_total = time.perf_counter() - start
        assert job.status == "succeeded", job.error
        timings = _job_timings(server, job.id)

        hyperparameters = {"n_epochs": 10, "batch_size": 1}  # 1000 steps: it trains throughout the burst
        long = client.fine_tuning.jobs.create(
            model="tiny-aligned", training_file=file.id, hyperparameters=hyperparameters
        )
        wait_for(client, long.id, statuses=("running",), timeout=900)
        alone = []  # the same kinds of request, one at a time, while the job trains
        for _ in range(50):
            begin = time.perf_counter()
            client.fine_tuning.jobs.retrieve(long.id)
            alone.append(time.perf_counter() - begin)
        load_before = os.getloadavg()[0]
        burst = asyncio.run(load_burst(server, long.id, clean, options.status_requests, options.uploads))
        still = client.fine_tuning.jobs.retrieve(long.id).status
        start = time.perf_counter()
        client.fine_tuning.jobs.cancel(long.id)
        cancel_s = time.perf_counter() - start
    finally:
        server.stop()

    lat = burst["latencies"]
    lines = [
        "# `tuneguard serve`: one job end to end, and latency under load",
        "",
        f"Machine: {os.cpu_count()} CPU cores, {platform.python_implementation()} {platform.python_version()}, "
        f"load average {load_before:.1f} before the burst (other work shares the machine). "
        "Policy: examples/serve/offline.yaml (Lisa, offline "
        "judge screening, gate on 312 held-out harmful prompts, Antidote repair when needed); one training worker.",
        "",
        f"Command: `.venv/bin/python benchmarks/serve_load.py --output {options.output or '-'}`",
        "",
        "## One job end to end (100 chat examples, 3 epochs, batch 10: 30 Lisa steps; warm service)",
        "",
        "| phase | seconds |",
        "|---|---|",
        f"| upload (client: POST /v1/files, 100 examples checked line by line) | {upload_s:.2f} |",
        *(f"| {name} (service) | {timings[key]:.2f} |" for key, name in TIMING_NAMES if key in timings),
        f"| total as the client sees it (upload to `succeeded`, polling every 0.2 s) | {client_total:.2f} |",
        "",
        f"Service start to listening: {startup:.1f} s; to the base model prepared (aligned once, evaluated): "
        f"{ready:.1f} s.",
        "",
        f"## Load while a job trains ({options.status_requests} status/list requests + {options.uploads} uploads, "
        "all at once)",
        "",
        "| requests | n | p50 (ms) | p99 (ms) | max (ms) |",
        "|---|---|---|---|---|",
        *(
            f"| {kind} | {len(v)} | {1000 * percentile(v, 50):.0f} | {1000 * percentile(v, 99):.0f} | "
            f"{1000 * max(v):.0f} |"
            for kind, v in (
                ("status (one at a time)", alone),
                ("status/list", lat["status"]),
                ("upload", lat["upload"]),
            )
        ),
        "",
        f"Failures: {len(burst['failures'])}. Burst wall time {burst['wall_s']:.1f} s; the job was `{still}` "
        f"after it; cancelling it took {cancel_s:.2f} s (its worker process killed and replaced).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if options.output:
        options.output.write_text(text, encoding="utf-8")


TIMING_NAMES = (
    ("validation_s", "validation and screening (created to queued)"),
    ("queue_s", "queue (queued to running)"),
    ("training_s", "training (30 optimizer steps, in the worker)"),
    ("gate_s", "safety gate (evaluation of the fine-tuned model)"),
    ("total_s", "total (created to succeeded)"),
)


def _job_timings(server, job_id: str) -> dict:
    """The service's own timings of the job's phases (in its metadata, and on the job's report page)."""
    with sqlite3.connect(server.data_dir / "service.db") as db:
        (raw,) = db.execute("SELECT timings FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return json.loads(raw)


if __name__ == "__main__":
    main()
