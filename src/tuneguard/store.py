"""The stage store: each stage output lives in a directory keyed by a hash of everything that determines it.

``<output_dir>/<stage>/<method>-<key12>/`` holds the stage's files; ``stage.json`` is written last (atomically),
so its presence means "finished". A finished stage is reused, never recomputed or overwritten unless asked.

One process computes a stage directory at a time: :func:`claim_stage` holds an OS file lock
(``<output_dir>/.locks/<stage>-<method>-<key12>.lock``) while the stage is computed; another process that wants
the same stage waits for it and then reuses the result. Paths in ``stage.json`` that point into the store are
recorded relative to the store (``output_dir``), so a store that is moved or copied keeps working and never reads
another copy's files (``store_paths.py``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneguard.config import ModelSettings
from tuneguard.model_resolvers import model_identity
from tuneguard.store_paths import resolve_paths, store_relative_paths, store_root

logger = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
CHECKPOINTS = "checkpoints"
# Bump when a change alters what a stage computes for the same config (invalidates cached stages).
STORE_FORMAT = 1
LOCKS_DIR = ".locks"
LOCK_SUFFIX = ".lock"
OWNER_SUFFIX = ".owner.json"
# Seconds to wait for a stage that another process computes (None: as long as it takes; tests lower it).
LOCK_TIMEOUT_S: float | None = None


class OutputError(RuntimeError):
    """An output could not be written (e.g. a full disk) or would clobber an earlier one; names the path."""


class InterruptedStageError(OutputError):
    """A stage directory holds an unfinished run: resume it (``resume``) or start over (``overwrite``)."""


class StageBusyError(OutputError):
    """Another live process computes this stage, and waiting for it timed out (``LOCK_TIMEOUT_S``)."""


def fingerprint(obj: Any) -> str:
    """sha256 of the canonical JSON form of ``obj`` (records, configs)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ModelRef:
    """A stage's input model: what to load, and a fingerprint that identifies its weights."""

    settings: ModelSettings
    fingerprint: str
    stage_dir: Path | None = None  # set when the model was produced by a stage

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> ModelRef:
        name = settings.model_name_or_path
        ident: dict[str, Any] = settings.model_dump()
        path = Path(name).expanduser()
        if path.is_dir():  # a local model: identify it by its files, not just its path
            ident["files"] = sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.is_file())
        ident |= model_identity(name)  # e.g. the offline world's version for offline:tiny
        return cls(settings=settings, fingerprint=fingerprint(ident))

    @classmethod
    def from_stage(cls, result: StageResult) -> ModelRef:
        if result.model_dir is None:
            raise ValueError(f"stage {result.directory} produced no model")
        if not result.model_dir.is_dir():
            raise OutputError(
                f"{result.directory / STAGE_FILE}: its model {result.model_dir} does not exist (deleted, or the store "
                "was moved from elsewhere by an older tuneguard?); pass --overwrite to recompute the stage"
            )
        settings = ModelSettings(model_name_or_path=str(result.model_dir))
        return cls(settings=settings, fingerprint=result.key, stage_dir=result.directory)


@dataclass
class StageResult:
    """A finished stage; path fields of ``info`` (``model_dir``, ...) are resolved for the store's current place."""

    stage: str
    directory: Path
    key: str
    info: dict[str, Any] = field(default_factory=dict)
    reused: bool = False

    @property
    def model_dir(self) -> Path | None:
        value = self.info.get("model_dir")
        return Path(value) if value else None

    @property
    def metrics(self) -> dict[str, Any]:
        return self.info.get("metrics", {})


def stage_key(stage: str, config: dict[str, Any], model: ModelRef, data: dict[str, str]) -> str:
    return fingerprint(
        {"format": STORE_FORMAT, "stage": stage, "config": config, "model": model.fingerprint, "data": data}
    )


def stage_dir(output_dir: str | Path, stage: str, method: str, key: str) -> Path:
    return Path(output_dir) / stage / f"{method}-{key[:12]}"


def load_finished(directory: Path, stage: str, key: str) -> StageResult | None:
    """The finished stage in ``directory``, or None if it has not finished."""
    path = directory / STAGE_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OutputError(f"{path}: not a readable stage record ({exc}); pass --overwrite to recompute it") from None
    if not isinstance(info, dict) or info.get("key") != key:
        found = info.get("key") if isinstance(info, dict) else None
        raise OutputError(
            f"{path}: belongs to another stage (key {found!r}, expected {key!r}); it is kept: pass --overwrite to "
            "replace it, or use another output_dir"
        )
    return StageResult(stage=stage, directory=directory, key=key, info=resolve_paths(info, directory), reused=True)


def read_finished(directory: str | Path) -> StageResult | None:
    """The finished stage in ``directory`` whatever its key (e.g. the stage a model came from); None if none."""
    directory = Path(directory)
    path = directory / STAGE_FILE
    if not path.is_file():
        return None
    info = json.loads(path.read_text(encoding="utf-8"))
    return load_finished(directory, info["stage"], info["key"])


@contextlib.contextmanager
def claim_stage(
    directory: Path, stage: str, key: str, *, overwrite: bool = False, resume: bool = False
) -> Iterator[StageResult | None]:
    """The finished stage to reuse, or the right to compute it: one process per stage directory at a time.

    Yields the finished :class:`StageResult` when ``directory`` holds one (and ``overwrite`` is off). Otherwise
    takes the stage's lock (:func:`stage_lock`; waiting, with a message, while another process computes it), looks
    again (that process may just have finished it), prepares the directory (:func:`prepare_directory`) and yields
    None: the body computes the stage and ends with :func:`finish_stage`, under the lock. An interrupted run is
    thus only reported (and resumed) when no live process is computing it.
    """
    if not overwrite and (done := load_finished(directory, stage, key)):
        yield done
        return
    with stage_lock(directory, stage):
        if not overwrite and (done := load_finished(directory, stage, key)):
            yield done
            return
        prepare_directory(directory, overwrite, resume=resume)
        yield None


@contextlib.contextmanager
def stage_lock(directory: Path, stage: str, *, timeout: float | None = None) -> Iterator[None]:
    """Hold the lock of a stage directory (:func:`lock_file`) for the body.

    The lock is an OS file lock (``filelock.FileLock``: ``flock`` on POSIX), which the OS releases when its holder
    exits however it exits (SIGKILL, a crash), so a dead process can never keep a stage locked. The holder records
    who it is (pid, host, start time) in an ``.owner.json`` next to the lock; a process that finds the stage locked says
    "stage X is being computed by pid N on HOST" and waits (``timeout`` seconds, default ``LOCK_TIMEOUT_S``: for
    ever; then :class:`StageBusyError`). An owner record whose process is gone (stale: it was killed before it
    could remove it) is reported and taken over.
    """
    from filelock import FileLock, Timeout

    directory = Path(directory)
    lock_path = lock_file(directory)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    owner_path = lock_path.with_name(lock_path.name.removesuffix(LOCK_SUFFIX) + OWNER_SUFFIX)
    lock = FileLock(str(lock_path))
    timeout = LOCK_TIMEOUT_S if timeout is None else timeout
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = _describe_owner(owner_path)
        logger.warning(
            "stage %s is being computed by %s in %s; waiting for it to finish (Ctrl-C stops waiting; nothing is lost)",
            stage,
            holder,
            directory,
        )
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout, poll_interval=0.5)
        except Timeout:
            raise StageBusyError(
                f"stage {stage} is being computed by {_describe_owner(owner_path)} in {directory}; run again when it "
                "has finished (the result is then reused)"
            ) from None
        logger.info("stage %s: %s has released it; continuing", stage, holder)
    try:
        stale = _read_owner(owner_path)
        if stale is not None:  # the previous holder ended without removing its record: it was killed
            logger.warning(
                "stage %s: taking over %s from %s, which stopped without finishing it (killed?)",
                stage,
                directory,
                _describe_owner(owner_path),
            )
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json_atomic(owner_path, me)
        try:
            yield
        finally:
            owner_path.unlink(missing_ok=True)
    finally:
        lock.release()


def lock_file(directory: Path) -> Path:
    """The lock of a stage directory: ``<output_dir>/.locks/<stage>-<method>-<key12>.lock`` (out of the stage
    folders, so that they hold stage directories only)."""
    return store_root(directory) / LOCKS_DIR / f"{directory.parent.name}-{directory.name}{LOCK_SUFFIX}"


def _read_owner(path: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _describe_owner(path: Path) -> str:
    owner = _read_owner(path)
    if owner is None:  # between taking the lock and writing its record, or a record from elsewhere
        return "another process"
    return f"pid {owner.get('pid')} on {owner.get('host')} (since {owner.get('since')})"


def remove_stage(directory: Path, stage: str) -> None:
    """Delete a stage directory (e.g. to recompute it), under its lock: never while another process computes it."""
    with stage_lock(directory, stage):
        shutil.rmtree(directory, ignore_errors=True)


def prepare_directory(directory: Path, overwrite: bool, *, resume: bool = False) -> None:
    """Create the stage directory; with ``overwrite`` an earlier (finished or partial) result is removed.

    An interrupted earlier run (a Trainer checkpoint but no ``stage.json``) is continued only with ``resume`` and
    otherwise refused, so that it is neither silently continued nor silently thrown away. Partial outputs
    without a checkpoint (e.g. of a run that stopped on bad input) are recomputed from scratch.
    """
    if overwrite and directory.exists():
        shutil.rmtree(directory)
    elif not resume and (checkpoint := last_checkpoint(directory / CHECKPOINTS)) is not None:
        raise InterruptedStageError(
            f"stage {directory.parent.name} was interrupted at step {checkpoint.name.rsplit('-', 1)[-1]} in "
            f"{directory}; pass --resume to continue (Python: resume=True) or --overwrite to start over"
        )
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / ".write-test"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"cannot write to the stage directory {directory}: {exc.strerror}") from None


# The Trainer writes a checkpoint's files in place and its trainer state last: a checkpoint without it was cut
# short (the process was killed while saving) and cannot be resumed from.
CHECKPOINT_COMPLETE = "trainer_state.json"


def last_checkpoint(path: Path) -> Path | None:
    """The complete ``checkpoint-<step>`` folder with the highest step under ``path`` (a Trainer output dir)."""
    if not path.is_dir():
        return None
    found = [
        p
        for p in path.glob("checkpoint-*")
        if p.is_dir() and p.name.split("-")[-1].isdigit() and (p / CHECKPOINT_COMPLETE).is_file()
    ]
    return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None


@contextlib.contextmanager
def atomic_output(path: Path, *, shared: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (file or directory) to write; on success it replaces ``path``.

    On failure the temporary is removed and ``path`` (an earlier output, if any) is left as it was; a full disk
    or another OS error becomes an :class:`OutputError` naming ``path``. The temporary is ``<name>.tmp`` (a
    leftover of a killed run is cleared by the next write); with ``shared`` (a file that several processes may
    rebuild at once, e.g. the results of grid shards) its name is unique to this process and call instead.
    """
    path = Path(path)
    if shared:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    else:
        tmp = path.with_name(path.name + ".tmp")
        _remove(tmp)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            _remove(path)  # os.replace cannot replace a non-empty directory
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise OutputError(f"could not write {path}: {reason}; earlier outputs are left as they were") from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def finish_stage(directory: Path, stage: str, key: str, info: dict[str, Any]) -> StageResult:
    """Write ``stage.json`` (last, atomically): from now on the stage counts as finished."""
    info = {"stage": stage, "key": key, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
    info.setdefault("versions", library_versions())
    record = store_relative_paths(info, directory)
    write_json_atomic(directory / STAGE_FILE, record)
    return StageResult(stage=stage, directory=directory, key=key, info=resolve_paths(record, directory), reused=False)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("tuneguard", "torch", "transformers", "peft", "accelerate", "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
