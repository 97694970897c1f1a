"""Workers: where the service's tasks (prepare a base model, screen a job's file, train a job) run.

:class:`Worker` is the interface the scheduler uses; ``ray_worker.RayWorker`` (``workers.type: ray``) implements
it on a Ray cluster, and its tasks write the same messages (``channel.py``). :class:`LocalWorker` runs one
long-lived process per slot (device), started by ``python -m tuneguard.serve.runner``: it imports torch once and
then takes tasks from its stdin, one at a time. Training never runs in the API process. A worker process dies
with the service (Linux: the parent-death signal), so after a crash no orphan keeps writing into a job's stage
directory while the restarted service resumes it; cancelling kills the slot's process (within the optimizer step
it is in) and a fresh one takes its place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger("tuneguard.serve")
# The environment of every worker process (read by libraries at import): no progress bars, no tokenizer threads.
WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}


@dataclass(frozen=True)
class Task:
    """One unit of work: ``kind`` prepare | screen | train; messages go to ``channel``."""

    kind: str
    job_id: str | None
    channel: str
    payload: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: str) -> Task:
        return cls(**json.loads(line))


class Worker(Protocol):
    """A pool of slots that run tasks; each task reports through its channel and ends with a result message."""

    def free_slots(self) -> int: ...

    def submit(self, task: Task) -> None: ...

    def finished(self, task: Task) -> None:
        """The scheduler has read the task's result: its slot is free again."""

    def lost(self) -> list[Task]:
        """Tasks whose process ended before their result (a crash); their slots are restarted."""

    def cancel(self, job_id: str) -> bool:
        """Stop the job's running task now; True if one was running."""

    def running(self) -> list[Task]: ...

    def stop(self) -> None: ...


@dataclass
class _Slot:
    device: str
    process: subprocess.Popen[bytes] | None = None
    task: Task | None = None
    started: float = 0.0
    quick_deaths: int = 0  # processes that died soon after starting: wait longer before the next one


class LocalWorker:
    """One worker process per device on this machine (``devices``: 'cpu', 'cuda:0', ...)."""

    def __init__(self, name: str, devices: list[str], policy_file: Path, logs_dir: Path, threads: int | None) -> None:
        self.name = name
        self.policy_file = policy_file
        self.logs_dir = logs_dir
        self.threads = threads
        self._slots = [_Slot(device) for device in devices]

    # The scheduler thread calls every method except cancel(), which request threads call under its lock.
    def free_slots(self) -> int:
        self._respawn()
        return sum(1 for s in self._slots if s.task is None and s.process is not None)

    def submit(self, task: Task) -> None:
        """Run ``task`` on a free slot (call only when :meth:`free_slots` is positive)."""
        slot = next(s for s in self._slots if s.task is None and s.process is not None)
        slot.task = task
        try:
            assert slot.process.stdin is not None
            slot.process.stdin.write(task.to_json().encode("utf-8") + b"\n")
            slot.process.stdin.flush()
        except OSError:
            pass  # the process has died: lost() reports the task

    def finished(self, task: Task) -> None:
        for slot in self._slots:
            if slot.task == task:
                slot.task = None

    def lost(self) -> list[Task]:
        out = []
        for slot in self._slots:
            if slot.process is not None and slot.process.poll() is not None:
                code = slot.process.returncode
                logger.warning("worker %s on %s stopped (exit code %s)", self.name, slot.device, code)
                slot.quick_deaths = slot.quick_deaths + 1 if time.time() - slot.started < 30 else 0
                slot.process = None
                if slot.task is not None:
                    out.append(slot.task)
                    slot.task = None
        return out

    def cancel(self, job_id: str) -> bool:
        for slot in self._slots:
            if slot.task is not None and slot.task.job_id == job_id:
                _kill(slot.process)
                slot.process, slot.task = None, None
                return True
        return False

    def running(self) -> list[Task]:
        return [s.task for s in self._slots if s.task is not None]

    def stop(self) -> None:
        for slot in self._slots:
            _kill(slot.process)
            slot.process, slot.task = None, None

    def pids(self) -> list[int]:
        return [s.process.pid for s in self._slots if s.process is not None]

    # ----------------------------------------------------------------------------------------------- private
    def _respawn(self) -> None:
        for slot in self._slots:
            if slot.process is None and time.time() >= slot.started + min(60.0, 2.0**slot.quick_deaths - 1):
                slot.process = self._spawn(slot)

    def _spawn(self, slot: _Slot) -> subprocess.Popen[bytes]:
        index = self._slots.index(slot)
        env = {**os.environ, **WORKER_ENV}
        env["CUDA_VISIBLE_DEVICES"] = slot.device.removeprefix("cuda:") if slot.device.startswith("cuda:") else ""
        command = [sys.executable, "-m", "tuneguard.serve.runner", "--policy", str(self.policy_file)]
        command += ["--parent", str(os.getpid()), "--name", f"{self.name}-{index}"]
        if self.threads:
            command += ["--threads", str(self.threads)]
        slot.started = time.time()
        log = (self.logs_dir / f"worker-{self.name}-{index}.log").open("ab")
        try:
            # Its own process group, so that cancelling also ends any process it started (data loaders).
            return subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        finally:
            log.close()


def _kill(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):  # it ended in between
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def die_with_parent(parent: int) -> None:
    """In a worker process: be killed when the service process ends (Linux), and exit if it already has."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
