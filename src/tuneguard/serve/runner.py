"""A worker process: ``python -m tuneguard.serve.runner --policy FILE --parent PID``.

It reads tasks (one JSON line each) from stdin and runs them one at a time through the engine, reporting on each
task's channel: events, checkpoints, and one closing ``result`` message. A mistake in the user's data ends the
job with its message (the server's paths replaced by the file's role); a bug ends it with ``server_error``
and its traceback in the worker's log. Harmful text is data: no message carries an example or a generation.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from tuneguard.serve import engine, report
from tuneguard.serve.channel import MessageWriter
from tuneguard.serve.policy import ServePolicy
from tuneguard.serve.worker import Task, die_with_parent

CHECKPOINT_POLL_S = 0.2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--policy", required=True, type=Path)
    parser.add_argument("--parent", required=True, type=int)
    parser.add_argument("--name", default="worker")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.name} %(levelname)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    policy = ServePolicy.model_validate_json(args.policy.read_text(encoding="utf-8"))
    engine.warm_up()
    for line in sys.stdin:
        if line.strip():
            run_task(policy, Task.from_json(line))


def run_task(policy: ServePolicy, task: Task) -> None:
    channel = MessageWriter(Path(task.channel))
    start = time.time()
    try:
        result = TASKS[task.kind](policy, task, channel)
    except engine.user_error_types() as exc:
        message = _scrub(str(exc), task.payload)
        result = {"outcome": "failed", "error": {"code": "invalid_training_file", "message": message}}
    except Exception:
        traceback.print_exc()
        message = "internal error while running the job; the provider can find it in the worker log"
        result = {"outcome": "failed", "error": {"code": "server_error", "message": message}}
    channel.send("result", task=task.kind, wall_s=round(time.time() - start, 2), **result)
    channel.close()


# ---------------------------------------------------------------------------------------------------- tasks
def prepare(policy: ServePolicy, task: Task, channel: MessageWriter) -> dict[str, Any]:
    """Make every offered model ready (align once) and measure it (the 'before' of the safety reports)."""
    for name in policy.models:
        engine.prepare_base_model(policy, name)
        engine.base_safety(policy, name)
        channel.event(f"base model {name} ready")
    return {"outcome": "ok"}


def screen(policy: ServePolicy, task: Task, channel: MessageWriter) -> dict[str, Any]:
    """Validate the training file against the base model (tokens per example) and screen it with the judge."""
    payload = task.payload
    engine.prepare_base_model(policy, payload["model"])
    records = engine.load_training_records(Path(payload["training_file"]))
    counts = engine.count_example_tokens(policy, payload["model"], records)
    limit = policy.limits.max_tokens_per_example
    if too_long := [i + 1 for i, n in enumerate(counts) if n > limit]:
        message = (
            f"training_file line {too_long[0]}: {counts[too_long[0] - 1]} tokens, above this service's limit of "
            f"{limit} tokens per example ({len(too_long)} such example(s))"
        )
        return {
            "outcome": "failed",
            "error": {"code": "invalid_training_file", "message": message, "param": "training_file"},
        }
    channel.event(f"Validated training file: {len(records)} examples, {sum(counts)} tokens")
    summary: dict[str, Any] = {"examples": len(records), "tokens": sum(counts)}
    if policy.screening is None:
        return {"outcome": "ok", "screening": summary}
    flags = engine.screen_examples(policy, records)
    flagged = [i + 1 for i, f in enumerate(flags) if f]
    share, limit_share = len(flagged) / len(flags), policy.screening.max_flagged_share
    summary.update(judge=policy.screening.judge, flagged=len(flagged), share=share, max_share=limit_share)
    channel.event(
        f"Screened {len(flags)} training examples with the {policy.screening.judge} judge: {len(flagged)} flagged "
        f"as harmful ({100 * share:.1f}%; this service accepts at most {100 * limit_share:.1f}%)",
        level="warn" if flagged else "info",
        data={k: summary[k] for k in ("judge", "examples", "flagged", "share", "max_share")},
    )
    if share > limit_share:
        lines = ", ".join(map(str, flagged[:10])) + (", ..." if len(flagged) > 10 else "")
        message = (
            f"{len(flagged)} of {len(flags)} training examples ({100 * share:.1f}%) were flagged as harmful by the "
            f"{policy.screening.judge} judge, above this service's limit of {100 * limit_share:.1f}% (lines {lines})"
        )
        error = {"code": "harmful_training_data", "message": message, "param": "training_file"}
        return {"outcome": "failed", "error": error, "screening": summary}
    return {"outcome": "ok", "screening": summary}


def train(policy: ServePolicy, task: Task, channel: MessageWriter) -> dict[str, Any]:
    """Fine-tune with the policy's defense (resuming from the last checkpoint), then the safety gate."""
    p = task.payload
    work = engine.JobWork(
        model=p["model"],
        directory=Path(p["directory"]),
        training_file=Path(p["training_file"]),
        validation_file=Path(p["validation_file"]) if p.get("validation_file") else None,
        examples=p["examples"],
        n_epochs=p["hyperparameters"]["n_epochs"],
        batch_size=p["hyperparameters"]["batch_size"],
        learning_rate_multiplier=p["hyperparameters"]["learning_rate_multiplier"],
        seed=p["seed"],
    )
    if done := engine.training_checkpoints(work):
        channel.event(f"Resuming fine-tuning from the checkpoint at step {done[-1][0]}")
    else:
        method = policy.finetune.method
        channel.event(f"Fine-tuning started: {work.examples} examples with the {method} fine-tuning method")
    start = time.time()
    with _CheckpointWatcher(work, channel):
        tuned = engine.run_finetune(policy, work)
    channel.send("checkpoint", step=tuned["steps"], metrics={"step": tuned["steps"], "train_loss": tuned["last_loss"]})
    loss = f"{tuned['train_loss']:.4f}" if tuned["train_loss"] is not None else "n/a"
    channel.event(
        f"Fine-tuning finished: {tuned['steps']} steps, mean training loss {loss}",
        metrics=True,
        data={"step": tuned["steps"], "train_loss": tuned["train_loss"]},
    )
    training_s = time.time() - start

    start = time.time()
    limit = policy.gate.max_harmful_score
    after = engine.evaluate_job(policy, work, repaired=False)
    channel.event(_gate_message("Safety gate", after, limit), data=after | {"limit": limit}, metrics=True)
    repaired = None
    if after["harmful_score_plus"] > limit and policy.gate.repair.method != "none":
        channel.event(f"Harmful score above the limit: repairing the model with {policy.gate.repair.method}")
        repaired = engine.evaluate_job(policy, work, repaired=True)
        channel.event(_gate_message("After repair", repaired, limit), data=repaired | {"limit": limit}, metrics=True)
    final = repaired or after
    passed = final["harmful_score_plus"] <= limit
    before = engine.base_safety(policy, work.model)
    gate = {"before": before, "after": after, "repaired": repaired, "limit": limit, "passed": passed}
    gate_s = time.time() - start
    report.write_report_data(policy, work, tuned, gate)
    timings = {"training_s": round(training_s, 2), "gate_s": round(gate_s, 2)}
    trained = {
        "steps": tuned["steps"],
        "train_loss": tuned["train_loss"],
        "resumed_from_step": tuned["resumed_from_step"],
    }
    common = {"gate": gate, "timings": timings, "training": trained, "trained_tokens": p["tokens"] * work.n_epochs}
    if passed:
        return {"outcome": "succeeded", "model_dir": final["model_dir"], **common}
    score = final["harmful_score_plus"]
    why = f"the fine-tuned model's harmful score HS+ is {score:.1f}%, above this service's limit of {limit:.1f}%"
    if repaired is not None:
        why += (
            f" also after repair with {policy.gate.repair.method} (before repair: {after['harmful_score_plus']:.1f}%)"
        )
    error = {"code": "safety_gate", "message": f"The model was not released: {why}. See the job's safety report."}
    return {"outcome": "failed", "error": error, **common}


TASKS = {"prepare": prepare, "screen": screen, "train": train}


def _gate_message(what: str, metrics: dict[str, Any], limit: float) -> str:
    text = (
        f"{what}: harmful score HS+ {metrics['harmful_score_plus']:.1f}% (limit {limit:.1f}%) on "
        f"{metrics['num_harmful_prompts']} held-out harmful prompts, {metrics['judge']} judge"
    )
    if "finetune_accuracy" in metrics:
        text += f"; accuracy on the validation file {metrics['finetune_accuracy']:.1f}%"
    return text


def _scrub(message: str, payload: dict[str, Any]) -> str:
    """A library error message without the server's paths: the job's files are named by their role."""
    for role in ("training_file", "validation_file", "directory"):
        if payload.get(role):
            message = message.replace(str(payload[role]), role if role != "directory" else "the job")
    return message


class _CheckpointWatcher:
    """Reports each checkpoint of the running fine-tuning stage as it appears, and, when the job resumes, the
    checkpoints already on disk again: a process killed between writing a checkpoint and the next poll never
    reported it, and the service's store records each step once (it ignores the repeats)."""

    def __init__(self, work: engine.JobWork, channel: MessageWriter) -> None:
        self.work, self.channel = work, channel
        self._seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _CheckpointWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(CHECKPOINT_POLL_S):
            for step, metrics in engine.training_checkpoints(self.work):
                if step not in self._seen:
                    self._seen.add(step)
                    self.channel.send("checkpoint", step=step, metrics=metrics)


if __name__ == "__main__":
    main()
