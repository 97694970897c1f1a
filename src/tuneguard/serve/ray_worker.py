"""The ``ray`` worker backend (``workers.type: ray``): each fine-tuning job runs as a Ray task on a cluster.

The task runs the job exactly as a local worker process does (``runner.run_task``) and reports the same way: it
writes the job's messages to its channel in the service's data directory, so ``data_dir`` (and
``base_models_dir``) must be a path that every node mounts, and tuneguard must be installed on every node (as for
``tuneguard grid --ray``). Ray places each task on a node with the policy's ``workers.ray.resources``; the service
only bounds how many jobs it hands to Ray at once (``max_jobs``, by default what the cluster's CPUs and GPUs
hold), and the rest stay ``queued`` in FIFO order. Screening stays on this machine (``worker.LocalWorker``).

A task whose worker process dies (killed, out of memory, a lost node) is rerun by Ray up to ``max_retries``
times; the rerun resumes the job from its last checkpoint (the job's stage store resumes, and the stage's lock
makes a rerun wait for a predecessor that is still dying). After the last rerun the job fails as after a local
worker's crash. Cancelling is ``ray.cancel(force=True)``, which kills the task's worker process. The tasks belong
to the API process (Ray's driver): when it ends, Ray ends them, and the restarted service queues their jobs
again to resume from their checkpoints, as with local workers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneguard.serve.engine import ConfigError
from tuneguard.serve.policy import RayWorkers, ServePolicy
from tuneguard.serve.worker import WORKER_ENV, Task

logger = logging.getLogger("tuneguard.serve")
CAPACITY_REFRESH_S = 10.0  # how often the cluster's resources are read again (nodes join and leave)
CANCEL_WAIT_S = 30.0  # how long cancel() waits for Ray to confirm that the task's worker is gone


class RayWorker:
    """Training slots on a Ray cluster (the :class:`~tuneguard.serve.worker.Worker` interface).

    ``policy`` is the service's policy; the tasks get it with its data directories made absolute. Connects to
    (or starts) Ray at once: a cluster that cannot be reached is a :class:`ConfigError` naming the address."""

    def __init__(self, settings: RayWorkers, policy: ServePolicy, logs_dir: Path) -> None:
        import ray

        self._ray = ray
        self.settings = settings
        self.logs_dir = logs_dir.absolute()
        raw = json.loads(policy.model_dump_json(exclude_unset=True))
        raw["data_dir"] = str(Path(policy.data_dir).absolute())
        raw["base_models_dir"] = str(policy.base_models_path.absolute())
        self._policy_json = json.dumps(raw)
        self._cwd = os.getcwd()  # relative paths in the policy mean what they mean to the API process
        self._running: dict[str, tuple[Task, Any]] = {}  # job id -> (task, its Ray object ref)
        self._capacity, self._capacity_at = 1, float("-inf")
        _connect(ray, settings.address)
        need = settings.resources
        self._remote = ray.remote(run_job)
        self._options = {
            "num_cpus": need.num_cpus,
            "num_gpus": need.num_gpus,
            "max_retries": need.max_retries,
            "runtime_env": {"env_vars": WORKER_ENV},  # set when Ray starts the worker process, as a local one's
        }
        if settings.max_jobs is None and self._fitting_jobs() == 0:
            logger.warning(
                "the Ray cluster has no room for one job (%s CPUs, %s GPUs each, workers.ray.resources); jobs wait "
                "until a node that has it joins",
                need.num_cpus,
                need.num_gpus,
            )

    def free_slots(self) -> int:
        return max(0, self._slots() - len(self._running))

    def submit(self, task: Task) -> None:
        assert task.job_id is not None, "only jobs run on Ray"
        log_file = self.logs_dir / f"ray-{task.job_id}.log"
        ref = self._remote.options(name=f"tuneguard-job-{task.job_id}", **self._options).remote(
            self._policy_json, task.to_json(), self._cwd, str(log_file)
        )
        self._running[task.job_id] = (task, ref)

    def finished(self, task: Task) -> None:
        self._running.pop(str(task.job_id), None)

    def lost(self) -> list[Task]:
        """Tasks that ended without a result: Ray gave up on them (their worker died more often than
        ``max_retries``) or they raised outside the job's own error handling."""
        if not self._running:
            return []
        refs = [ref for _, ref in self._running.values()]
        done, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        out = []
        for job_id, (task, ref) in list(self._running.items()):
            if ref not in done:
                continue
            try:
                self._ray.get(ref, timeout=0)
            except self._ray.exceptions.RayError as exc:
                logger.warning("the Ray task of job %s ended without a result: %s", job_id, _first_line(exc))
                del self._running[job_id]
                out.append(task)
            # A task that returned has written its result; the scheduler reads it and calls finished().
        return out

    def cancel(self, job_id: str) -> bool:
        """Kill the job's task (its worker process) and wait until Ray confirms it, so that the caller may remove
        the job's partial files."""
        entry = self._running.pop(job_id, None)
        if entry is None:
            return False
        ray, ref = self._ray, entry[1]
        ray.cancel(ref, force=True)
        try:
            ray.get(ref, timeout=CANCEL_WAIT_S)
        except ray.exceptions.GetTimeoutError:
            logger.warning("Ray did not confirm the cancellation of job %s in %.0f s", job_id, CANCEL_WAIT_S)
        except ray.exceptions.RayError:
            pass  # cancelled (or its worker is gone): what we asked for
        return True

    def running(self) -> list[Task]:
        return [task for task, _ in self._running.values()]

    def stop(self) -> None:
        """Stop the running tasks and disconnect; their jobs resume from their checkpoints at the next start."""
        for _, ref in self._running.values():
            self._ray.cancel(ref, force=True)
        self._running.clear()
        self._ray.shutdown()

    # ----------------------------------------------------------------------------------------------- private
    def _slots(self) -> int:
        if self.settings.max_jobs is not None:
            return self.settings.max_jobs
        if time.monotonic() - self._capacity_at > CAPACITY_REFRESH_S:
            # At least one: a job handed to Ray shows an autoscaling cluster the demand for a node.
            self._capacity, self._capacity_at = max(1, self._fitting_jobs()), time.monotonic()
        return self._capacity

    def _fitting_jobs(self) -> int:
        """How many jobs the cluster's CPUs and GPUs hold at once (all nodes together)."""
        total, need = self._ray.cluster_resources(), self.settings.resources
        fits = [int(total.get("CPU", 0) // need.num_cpus)]
        if need.num_gpus:
            fits.append(int(total.get("GPU", 0) // need.num_gpus))
        return min(fits)


def _connect(ray: Any, address: str) -> None:
    if ray.is_initialized():  # the API process already joined a cluster
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except ConnectionError as exc:
        raise ConfigError(f"workers.ray.address {address}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(getattr(exc, "cause", None) or exc).strip().splitlines() or [type(exc).__name__])[0]


# ------------------------------------------------------------------------------------------------ the task
def run_job(policy_json: str, task_json: str, cwd: str, log_file: str) -> None:
    """A Ray task: one fine-tuning job, run as a local worker runs it; its log goes to ``log_file``."""
    from tuneguard.serve import runner

    if os.path.isdir(cwd):
        os.chdir(cwd)
    policy = ServePolicy.model_validate_json(policy_json)
    if policy.workers.torch_threads:
        import torch

        torch.set_num_threads(policy.workers.torch_threads)
    with _job_log(Path(log_file)):
        runner.run_task(policy, Task.from_json(task_json))


@contextlib.contextmanager
def _job_log(path: Path) -> Iterator[None]:
    """Send the task's output and log records to the job's log file (appended to by Ray's reruns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    with path.open("a", encoding="utf-8") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter(f"%(asctime)s ray-{os.getpid()} %(levelname)s %(name)s: %(message)s"))
        level = root.level
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            yield
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
