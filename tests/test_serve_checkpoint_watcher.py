"""The service's runner reports a fine-tuning job's checkpoints to the scheduler: a job that resumes reports the
checkpoints already on disk again, so one written just before its process was killed (before the watcher's next
poll) is not lost; the service's store records each step once."""

from __future__ import annotations

import time

from tuneguard.serve import engine, runner


class Channel:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    def send(self, kind: str, **fields) -> None:
        self.sent.append((kind, fields))


def test_a_resumed_job_reports_the_checkpoints_already_on_disk(monkeypatch):
    on_disk = [(4, {"step": 4, "train_loss": 0.5}), (8, {"step": 8, "train_loss": 0.25})]
    monkeypatch.setattr(engine, "training_checkpoints", lambda work: list(on_disk))
    monkeypatch.setattr(runner, "CHECKPOINT_POLL_S", 0.01)
    channel = Channel()
    with runner._CheckpointWatcher(object(), channel):
        deadline = time.time() + 10
        while len(channel.sent) < 2 and time.time() < deadline:
            time.sleep(0.01)
        on_disk.append((12, {"step": 12, "train_loss": 0.125}))  # written while it runs: reported once too
        while len(channel.sent) < 3 and time.time() < deadline:
            time.sleep(0.01)
    assert [fields["step"] for kind, fields in channel.sent if kind == "checkpoint"] == [4, 8, 12]
