"""The service's metadata (one SQLite file) and its files on disk, under the data directory.

Layout: ``service.db`` (files, jobs, events, checkpoints), ``files/<file id>`` (uploads, written atomically,
named by their random id: an upload's own name never reaches a path), ``jobs/<job id>/`` (a job's copies of
its files, the worker's messages, its stage store and report). Every query that a request makes is scoped to
its tenant, so another tenant's object is simply not found. Ids are random (``secrets``).
"""

from __future__ import annotations

import json
import secrets
import shutil
import sqlite3
import string
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tuneguard.serve.engine import atomic_write

ID_ALPHABET = string.ascii_letters + string.digits
ACTIVE = ("validating_files", "queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
  n INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, tenant TEXT NOT NULL, filename TEXT NOT NULL,
  bytes INTEGER NOT NULL, purpose TEXT NOT NULL, created_at INTEGER NOT NULL, examples INTEGER NOT NULL,
  upload_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
  n INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, tenant TEXT NOT NULL, model TEXT NOT NULL,
  training_file TEXT NOT NULL, validation_file TEXT, examples INTEGER NOT NULL, hyperparameters TEXT NOT NULL,
  suffix TEXT, seed INTEGER NOT NULL, metadata TEXT, status TEXT NOT NULL, error TEXT,
  fine_tuned_model TEXT UNIQUE, model_tag TEXT UNIQUE NOT NULL, model_dir TEXT, model_deleted INTEGER DEFAULT 0,
  created_at INTEGER NOT NULL, finished_at INTEGER, trained_tokens INTEGER, queued_at REAL, started_at REAL,
  messages_offset INTEGER NOT NULL DEFAULT 0, screening TEXT, gate TEXT, timings TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS events (
  n INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL, created_at INTEGER NOT NULL,
  level TEXT NOT NULL, message TEXT NOT NULL, data TEXT, type TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
  n INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL, created_at INTEGER NOT NULL,
  step INTEGER NOT NULL, metrics TEXT NOT NULL, UNIQUE (job_id, step)
);
CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (tenant, n);
CREATE INDEX IF NOT EXISTS files_by_tenant ON files (tenant, n);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, n);
"""
JSON_COLUMNS = ("hyperparameters", "metadata", "error", "screening", "gate", "timings", "data", "metrics")


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(ID_ALPHABET) for _ in range(length))


class ServiceStore:
    """SQLite metadata (WAL; one connection per thread) and the files of uploads and jobs."""

    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir).absolute()  # the jobs' paths reach workers elsewhere (Ray tasks)
        for sub in ("files", "jobs", "logs", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "service.db"
        self._local = threading.local()
        self._connection().executescript(SCHEMA)  # its own transaction

    # -------------------------------------------------------------------------------------------- plumbing
    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a committed job or event survives a crash of the machine
            self._local.db = db
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return [_decode(r) for r in self._connection().execute(sql, args).fetchall()]

    def _row(self, sql: str, args: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        rows = self._rows(sql, args)
        return rows[0] if rows else None

    def _page(self, table: str, where: str, args: tuple[Any, ...], after: str | None, limit: int, asc: bool = False):
        """One page of rows, newest first (``asc``: oldest first), starting after the row with id ``after``."""
        op, order = (">", "ASC") if asc else ("<", "DESC")
        if after is not None:
            where += f" AND n {op} (SELECT n FROM {table} WHERE id = ? AND {where})"  # unknown id: no rows
            args = (*args, after, *args)
        rows = self._rows(f"SELECT * FROM {table} WHERE {where} ORDER BY n {order} LIMIT ?", (*args, limit + 1))
        return rows[:limit], len(rows) > limit

    # ----------------------------------------------------------------------------------------------- files
    def file_path(self, file_id: str) -> Path:
        return self.root / "files" / file_id

    def add_file(self, tenant: str, filename: str, purpose: str, content: bytes, examples: int, upload_s: float):
        file_id = new_id("file-")
        atomic_write(self.file_path(file_id), content)  # the bytes first: a row never points at nothing
        with self.transaction() as db:
            db.execute(
                "INSERT INTO files (id, tenant, filename, bytes, purpose, created_at, examples, upload_s) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (file_id, tenant, filename, len(content), purpose, int(time.time()), examples, upload_s),
            )
        return self.get_file(tenant, file_id)

    def get_file(self, tenant: str, file_id: str) -> dict[str, Any] | None:
        return self._row("SELECT * FROM files WHERE tenant = ? AND id = ?", (tenant, file_id))

    def list_files(self, tenant: str, after: str | None, limit: int, asc: bool, purpose: str | None):
        where, args = "tenant = ?", (tenant,)
        if purpose is not None:
            where, args = where + " AND purpose = ?", (tenant, purpose)
        return self._page("files", where, args, after, limit, asc)

    def delete_file(self, tenant: str, file_id: str) -> bool:
        with self.transaction() as db:
            deleted = db.execute("DELETE FROM files WHERE tenant = ? AND id = ?", (tenant, file_id)).rowcount
        if deleted:
            self.file_path(file_id).unlink(missing_ok=True)
        return bool(deleted)

    # ------------------------------------------------------------------------------------------------ jobs
    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def add_job(self, tenant: str, fields: dict[str, Any], files: dict[str, str]) -> dict[str, Any]:
        """Create a job: copies of its files in its directory first, then the row (status validating_files)."""
        job_id = new_id("ftjob-")
        directory = self.job_dir(job_id)
        for name, file_id in files.items():
            atomic_write(directory / name, self.file_path(file_id).read_bytes())
        with self.transaction() as db:
            row = {
                **fields,
                "id": job_id,
                "tenant": tenant,
                "status": "validating_files",
                "created_at": int(time.time()),
                "model_tag": new_id("", 8),
            }
            columns = ", ".join(row)
            db.execute(f"INSERT INTO jobs ({columns}) VALUES ({', '.join('?' * len(row))})", _encode(row))
        return self.job(job_id)

    def job(self, job_id: str) -> dict[str, Any] | None:
        return self._row("SELECT * FROM jobs WHERE id = ?", (job_id,))

    def get_job(self, tenant: str, job_id: str) -> dict[str, Any] | None:
        return self._row("SELECT * FROM jobs WHERE tenant = ? AND id = ?", (tenant, job_id))

    def list_jobs(self, tenant: str, after: str | None, limit: int):
        return self._page("jobs", "tenant = ?", (tenant,), after, limit)

    def jobs_with_status(self, *statuses: str, order: str = "n") -> list[dict[str, Any]]:
        marks = ", ".join("?" * len(statuses))
        return self._rows(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY {order}, n", statuses)

    def update_job(self, db: sqlite3.Connection, job_id: str, when: tuple[str, ...] | None = None, **fields) -> bool:
        """Set fields of a job (in the caller's transaction); with ``when``, only if its status is one of those."""
        sets = ", ".join(f"{k} = ?" for k in fields)
        sql, args = f"UPDATE jobs SET {sets} WHERE id = ?", (*_encode(fields), job_id)
        if when:
            sql += f" AND status IN ({', '.join('?' * len(when))})"
            args = (*args, *when)
        return db.execute(sql, args).rowcount == 1

    # --------------------------------------------------------------------------------- events, checkpoints
    def add_event(self, db: sqlite3.Connection, job_id: str, message: str, **kw: Any) -> None:
        level, data, kind = kw.get("level", "info"), kw.get("data"), kw.get("type", "message")
        db.execute(
            "INSERT INTO events (id, job_id, created_at, level, message, data, type) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (new_id("ftevent-"), job_id, int(time.time()), level, message, _dump(data), kind),
        )

    def list_events(self, job_id: str, after: str | None, limit: int):
        return self._page("events", "job_id = ?", (job_id,), after, limit)

    def all_events(self, job_id: str) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM events WHERE job_id = ? ORDER BY n", (job_id,))

    def add_checkpoint(self, db: sqlite3.Connection, job_id: str, step: int, metrics: dict[str, Any]) -> bool:
        """Record a checkpoint once (a resumed job reports its earlier checkpoints again)."""
        cursor = db.execute(
            "INSERT OR IGNORE INTO checkpoints (id, job_id, created_at, step, metrics) VALUES (?, ?, ?, ?, ?)",
            (new_id("ftckpt-"), job_id, int(time.time()), step, _dump(metrics)),
        )
        return cursor.rowcount == 1

    def list_checkpoints(self, job_id: str, after: str | None, limit: int):
        return self._page("checkpoints", "job_id = ?", (job_id,), after, limit)

    # ---------------------------------------------------------------------------------------------- models
    def fine_tuned_models(self, tenant: str) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT * FROM jobs WHERE tenant = ? AND fine_tuned_model IS NOT NULL AND model_deleted = 0 ORDER BY n",
            (tenant,),
        )

    def fine_tuned_model(self, tenant: str, name: str) -> dict[str, Any] | None:
        return self._row(
            "SELECT * FROM jobs WHERE tenant = ? AND fine_tuned_model = ? AND model_deleted = 0", (tenant, name)
        )

    def delete_model(self, tenant: str, name: str) -> bool:
        """Mark a fine-tuned model deleted and remove its weights (the job's stage store); the job stays."""
        job = self.fine_tuned_model(tenant, name)
        if job is None:
            return False
        with self.transaction() as db:
            self.update_job(db, job["id"], model_deleted=1)
        shutil.rmtree(self.job_dir(job["id"]) / "store", ignore_errors=True)
        return True


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _encode(fields: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(_dump(v) if k in JSON_COLUMNS else v for k, v in fields.items())


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for key in JSON_COLUMNS:
        if out.get(key) is not None:
            out[key] = json.loads(out[key])
    return out
