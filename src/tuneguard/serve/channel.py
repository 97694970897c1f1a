"""The worker -> service channel: a job's messages, one JSON object per line in ``<job dir>/messages.jsonl``.

The worker appends and fsyncs each message before it goes on; the service reads complete lines from the byte
offset it stored with the job, and stores the new offset in the same transaction as the events it made of them.
So a message is applied exactly once, also when the service is killed in between and reads the file again on
restart, and a worker killed in the middle of a line leaves nothing half-read (the next writer drops the
unfinished line).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any


class MessageWriter:
    """Appends messages to a channel file, each flushed to disk before :meth:`send` returns."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _drop_unfinished_line(path)
        self.path = path
        self._file = path.open("ab")
        self._lock = threading.Lock()  # the checkpoint watcher sends from its own thread

    def send(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"kind": kind, "time": time.time(), **fields}, default=str) + "\n"
        with self._lock:
            self._file.write(line.encode("utf-8"))
            self._file.flush()
            os.fsync(self._file.fileno())

    def event(self, message: str, *, level: str = "info", data: dict[str, Any] | None = None, metrics: bool = False):
        """A job event as the API shows it (``metrics``: an event of type 'metrics')."""
        self.send("event", message=message, level=level, data=data, type="metrics" if metrics else "message")

    def close(self) -> None:
        self._file.close()


def read_messages(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The complete messages after byte ``offset``, and the offset after the last of them."""
    if not path.is_file():
        return [], offset
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    lines = data[: end + 1].splitlines()
    return [json.loads(line) for line in lines if line.strip()], offset + end + 1


def _drop_unfinished_line(path: Path) -> None:
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as fh:
        data = fh.read()
        if not data.endswith(b"\n"):
            fh.truncate(data.rfind(b"\n") + 1)
