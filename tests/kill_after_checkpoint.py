"""Run a tuneguard CLI command and SIGKILL the process right after the checkpoint of step ``KILL_AT_STEP``.

Used by tests/test_resume.py and tests/test_store.py: ``python kill_after_checkpoint.py STEP tuneguard-args...``
(STEP 0: never kill). For the tests of concurrent runs, two environment variables slow the run down and say when
it trains: ``STEP_SLEEP_S`` (seconds slept after every optimizer step) and ``TRAINING_MARKER`` (a file written, with
this process's pid, when training begins).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from transformers import Trainer, TrainerCallback

from tuneguard.cli import main


class KillAfterCheckpoint(TrainerCallback):
    def __init__(self, step: int, sleep_s: float, marker: str | None) -> None:
        self.step, self.sleep_s, self.marker = step, sleep_s, marker

    def on_train_begin(self, args, state, control, **kwargs):
        if self.marker:
            Path(self.marker).write_text(str(os.getpid()))

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(self.sleep_s)

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    step = int(sys.argv[1])
    sleep_s = float(os.environ.get("STEP_SLEEP_S", "0"))
    marker = os.environ.get("TRAINING_MARKER")
    original_init = Trainer.__init__

    def init_with_kill(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(KillAfterCheckpoint(step, sleep_s, marker))

    Trainer.__init__ = init_with_kill
    sys.argv = ["tuneguard", *sys.argv[2:]]
    main()
