"""The scheduler: moves jobs through their statuses and feeds the workers.

``validating_files`` (the screening worker checks and screens the file) -> ``queued`` (FIFO) -> ``running`` (one
job per training slot, i.e. per device) -> ``succeeded`` / ``failed``; ``cancelled`` from any of the first three.
It runs in one thread of the API process, applies what the workers report (``channel.py``) to the metadata, and
on start recovers from a crash: messages written after the last ones it applied are applied now, and a job
that was running is queued again at its place, to resume from its last checkpoint.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from tuneguard.serve.channel import read_messages
from tuneguard.serve.store import ACTIVE, ServiceStore
from tuneguard.serve.worker import Task, Worker

logger = logging.getLogger("tuneguard.serve")
TICK_S = 0.25


class Scheduler:
    """Owns the worker pools; every method may be called from any thread (one lock)."""

    def __init__(self, store: ServiceStore, screening: Worker, training: Worker) -> None:
        self.store, self.screening, self.training = store, screening, training
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tuneguard-scheduler", daemon=True)
        self._prepare = Task("prepare", None, str(store.root / "run" / "prepare.messages.jsonl"))
        self._prepare_offset = 0
        self._prepare_pending = True  # the base models are prepared first, on the screening worker
        self.ready = threading.Event()  # set once the base models are prepared

    def start(self) -> None:
        Path(self._prepare.channel).unlink(missing_ok=True)
        self.recover()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        with self._lock:
            self.screening.stop()
            self.training.stop()

    def wake(self) -> None:
        self._wake.set()

    # ---------------------------------------------------------------------------------------------- recovery
    def recover(self) -> None:
        """After a restart: apply the messages the last run did not, and queue running jobs again."""
        with self._lock:
            for job in self.store.jobs_with_status(*ACTIVE):
                self._ingest(job["id"])
            for job in self.store.jobs_with_status("running"):
                with self.store.transaction() as db:
                    if self.store.update_job(db, job["id"], when=("running",), status="queued"):
                        message = (
                            "The service restarted while the job was training; it continues from its last checkpoint"
                        )
                        self.store.add_event(db, job["id"], message)

    # ---------------------------------------------------------------------------------------------- the loop
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(TICK_S)
            self._wake.clear()
            try:
                with self._lock:
                    self._tick()
            except Exception:  # a scheduler that stops would stall every job: log the bug and go on
                logger.exception("scheduler error")

    def _tick(self) -> None:
        self._ingest_prepare()
        for pool in (self.screening, self.training):
            for task in pool.running():
                if task.job_id is not None:
                    self._ingest(task.job_id)
            for task in pool.lost():
                if task.job_id is None:
                    self._prepare_pending = True  # the base models are needed: try again
                    continue
                self._ingest(task.job_id)
                with self.store.transaction() as db:
                    error = {"code": "server_error", "message": "the worker process stopped unexpectedly"}
                    self._finish(db, task.job_id, "failed", error=error)
        self._dispatch()

    def _dispatch(self) -> None:
        if self._prepare_pending and self.screening.free_slots():
            self.screening.submit(self._prepare)
            self._prepare_pending = False
        busy = {t.job_id for pool in (self.screening, self.training) for t in pool.running()}
        waiting = [j for j in self.store.jobs_with_status("validating_files") if j["id"] not in busy]
        for job in waiting[: self.screening.free_slots()]:
            self.screening.submit(self._task("screen", job))
        queued = [j for j in self.store.jobs_with_status("queued", order="queued_at") if j["id"] not in busy]
        for job in queued[: self.training.free_slots()]:
            with self.store.transaction() as db:
                if not self.store.update_job(db, job["id"], when=("queued",), status="running", started_at=time.time()):
                    continue
                timings = job["timings"] | {"queue_s": round(time.time() - job["queued_at"], 2)}
                self.store.update_job(db, job["id"], timings=timings)
                self.store.add_event(db, job["id"], "Fine-tuning job started")
            self.training.submit(self._task("train", job))

    def _task(self, kind: str, job: dict[str, Any]) -> Task:
        directory = self.store.job_dir(job["id"])
        payload = {
            "model": job["model"],
            "directory": str(directory),
            "training_file": str(directory / "training.jsonl"),
            "validation_file": str(directory / "validation.jsonl") if job["validation_file"] else None,
            "examples": job["examples"],
            "hyperparameters": job["hyperparameters"],
            "seed": job["seed"],
            "tokens": (job["screening"] or {}).get("tokens", 0),
        }
        return Task(kind, job["id"], str(directory / "messages.jsonl"), payload)

    # ------------------------------------------------------------------------------------------ messages
    def _ingest(self, job_id: str) -> None:
        """Apply the job's new messages and store how far they were read, in one transaction."""
        job = self.store.job(job_id)
        messages, offset = read_messages(self.store.job_dir(job_id) / "messages.jsonl", job["messages_offset"])
        if not messages:
            return
        with self.store.transaction() as db:
            for message in messages:
                self._apply(db, job, message)
            self.store.update_job(db, job_id, messages_offset=offset)

    def _apply(self, db: Any, job: dict[str, Any], message: dict[str, Any]) -> None:
        job_id, kind = job["id"], message["kind"]
        if kind == "event":
            self.store.add_event(
                db, job_id, message["message"], level=message["level"], data=message.get("data"), type=message["type"]
            )
        elif kind == "checkpoint":
            metrics = message["metrics"]
            if (
                self.store.add_checkpoint(db, job_id, message["step"], metrics)
                and metrics.get("train_loss") is not None
            ):
                text = f"Step {message['step']}: training loss={metrics['train_loss']:.4f}"
                self.store.add_event(db, job_id, text, data=metrics, type="metrics")
        elif kind == "result" and message["task"] == "screen":
            self._screened(db, job, message)
        elif kind == "result" and message["task"] == "train":
            self._trained(db, job, message)

    def _screened(self, db: Any, job: dict[str, Any], result: dict[str, Any]) -> None:
        self._release(job["id"], "screen")
        now = time.time()
        timings = job["timings"] | {"validation_s": round(now - job["timings"]["created"], 2)}
        fields = {"screening": result.get("screening"), "timings": timings}
        if result["outcome"] != "ok":
            self._finish(db, job["id"], "failed", error=result["error"], **fields)
        elif self.store.update_job(db, job["id"], when=("validating_files",), status="queued", queued_at=now, **fields):
            self.store.add_event(db, job["id"], "Files validated; the job is queued")

    def _trained(self, db: Any, job: dict[str, Any], result: dict[str, Any]) -> None:
        self._release(job["id"], "train")
        timings = job["timings"] | result.get("timings", {})
        fields = {"gate": result.get("gate"), "timings": timings, "trained_tokens": result.get("trained_tokens")}
        if result["outcome"] == "succeeded":
            model = ":".join(["ft", job["model"], job["tenant"], job["suffix"] or "", job["model_tag"]])
            fields.update(fine_tuned_model=model, model_dir=result["model_dir"])
            self._finish(db, job["id"], "succeeded", **fields)
        else:
            self._finish(db, job["id"], "failed", error=result["error"], **fields)

    def _finish(self, db: Any, job_id: str, status: str, **fields: Any) -> bool:
        now = time.time()
        job = self.store.job(job_id)
        timings = (fields.pop("timings", None) or job["timings"]) | {
            "total_s": round(now - job["timings"]["created"], 2)
        }
        done = self.store.update_job(
            db, job_id, when=ACTIVE, status=status, finished_at=int(now), timings=timings, **fields
        )
        if done:
            error = fields.get("error")
            text = {"succeeded": "The job has successfully completed", "cancelled": "The job was cancelled"}.get(
                status, f"The job failed: {error['message'] if error else ''}"
            )
            self.store.add_event(db, job_id, text, level="error" if status == "failed" else "info")
            logger.info("job %s %s", job_id, status if not error else f"{status} ({error['code']})")
        return done

    def _release(self, job_id: str, kind: str) -> None:
        for pool in (self.screening, self.training):
            for task in pool.running():
                if task.job_id == job_id and task.kind == kind:
                    pool.finished(task)

    def _ingest_prepare(self) -> None:
        messages, self._prepare_offset = read_messages(Path(self._prepare.channel), self._prepare_offset)
        for message in messages:
            if message["kind"] == "event":
                logger.info("%s", message["message"])
            elif message["kind"] == "result":
                self.screening.finished(self._prepare)
                if message["outcome"] == "ok":
                    self.ready.set()
                else:
                    logger.error("preparing the base models failed: %s", message["error"]["message"])

    # -------------------------------------------------------------------------------------------- cancel
    def cancel(self, job_id: str) -> None:
        """Stop the job now (its worker process is killed and replaced); a finished job stays as it is."""
        with self._lock:
            stopped = self.screening.cancel(job_id) or self.training.cancel(job_id)
            self._ingest(job_id)  # what the worker reported before it stopped
            with self.store.transaction() as db:
                cancelled = self._finish(db, job_id, "cancelled")
            if cancelled and stopped:
                shutil.rmtree(self.store.job_dir(job_id) / "store", ignore_errors=True)  # partial training
        self._wake.set()
