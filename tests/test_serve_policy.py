"""`tuneguard serve` without a server: the provider's policy, upload checks, API keys, the worker channel, and
the rule that the service reaches the library through one adapter module."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tuneguard.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SERVE = ROOT / "src" / "tuneguard" / "serve"


def test_the_offline_and_llama2_example_policies_validate_and_pass_the_preflight_checks():
    from tuneguard.serve.engine import check_policy
    from tuneguard.serve.policy import load_policy

    offline = load_policy(ROOT / "examples" / "serve" / "offline.yaml")
    check_policy(offline)  # methods, their arguments, training engine and judges of every offered model's job
    assert offline.finetune.method == "lisa" and offline.gate.repair.method == "antidote"
    assert offline.limits.max_tokens_per_example == offline.finetune.max_length == 64

    llama = load_policy(ROOT / "examples" / "serve" / "llama2.yaml")
    check_policy(llama)
    assert llama.screening.judge == "beaverdam" and llama.gate.eval.judges == ["beaverdam"]
    assert llama.screening.judge_args["threshold"] == 0.5  # the judge's settings model filled in its arguments
    assert llama.models["llama-2-7b-aligned"].align.method == "sft" and llama.workers.devices == ["cuda:0"]


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("gate.max_harmful_scor=5", "gate.max_harmful_scor: unknown key (did you mean 'max_harmful_score'?)"),
        ("finetune.user_data={num_samples: 10}", "user_data: every job trains on its own training file"),
        ("finetune.training.num_train_epochs=3", "training.num_train_epochs: set by each job"),
        ("gate.eval.task_test=offline:task_test", "each job's validation file is the task test set"),
        ("screening.judge=auto", "name the screening judge"),
        ("screening.judge=ofline", "did you mean 'offline'"),
        ("limits.max_tokens_per_example=100", "exceeds finetune.max_length (64)"),
        ("hyperparameters.n_epochs={default: 20, min: 1, max: 10}", "needs min <= default <= max"),
        ("workers.devices=[gpu0]", "unknown device 'gpu0'"),
        ("workers.type=slurm", "workers.type: Input should be 'local' or 'ray' (got 'slurm')"),
        ("workers.ray={max_jobs: 2}", "ray: only with type: ray"),
        ("workers={type: ray, ray: {max_job: 2}}", "workers.ray.max_job: unknown key (did you mean 'max_jobs'?)"),
        ("workers={type: ray, devices: [cuda:0]}", "devices: with type: ray, Ray places the jobs"),
        ("models={'tiny aligned': {model: {model_name_or_path: offline:tiny}}}", "model name 'tiny aligned'"),
        ("gate.eval.api_key=x", "secrets are not read from configs"),
    ],
)
def test_a_policy_mistake_is_one_error_naming_the_key(override, needle):
    from tuneguard.serve.policy import load_policy

    with pytest.raises(ConfigError) as exc:
        load_policy(ROOT / "examples" / "serve" / "offline.yaml", [override])
    assert needle in str(exc.value)


def test_hyperparameters_default_to_the_policy_and_stay_within_its_bounds():
    from tuneguard.serve.policy import HyperparameterBounds, HyperparameterError, resolve_hyperparameters

    bounds = HyperparameterBounds.model_validate({"n_epochs": {"default": 3, "min": 1, "max": 5}})
    assert resolve_hyperparameters(bounds, None) == {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.0}
    chosen = {"n_epochs": 5, "batch_size": "auto", "learning_rate_multiplier": 0.5}
    assert resolve_hyperparameters(bounds, chosen) == {"n_epochs": 5, "batch_size": 8, "learning_rate_multiplier": 0.5}
    for bad, param in [
        ({"n_epochs": 6}, "n_epochs"),
        ({"n_epochs": 2.5}, "n_epochs"),
        ({"batch_size": True}, "batch_size"),
        ({"learning_rate_multiplier": 20}, "learning_rate_multiplier"),
        ({"warmup": 1}, "warmup"),
    ]:
        with pytest.raises(HyperparameterError) as exc:
            resolve_hyperparameters(bounds, bad)
        assert exc.value.param == f"hyperparameters.{param}"


# ------------------------------------------------------------------------------------------------ uploads
def lines(*rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode("utf-8")


CHAT = {"messages": [{"role": "user", "content": "a question"}, {"role": "assistant", "content": "an answer"}]}
COMPLETION = {"prompt": "a question", "completion": "an answer"}


def test_a_chat_or_prompt_completion_file_is_accepted_with_its_example_count():
    from tuneguard.serve.uploads import check_training_file

    summary = check_training_file(lines(CHAT, COMPLETION, CHAT), max_examples=10, min_examples=3)
    assert summary.examples == 3 and summary.layouts == ("chat", "prompt/completion")


@pytest.mark.parametrize(
    ("data", "line", "needle"),
    [
        (lines(CHAT, CHAT, '{"messages": [', CHAT), 3, "not valid JSON"),
        (lines(CHAT, {"prompt": "q"}, CHAT), 2, "expected a chat example"),
        (lines(CHAT, {"prompt": "q", "completion": 3}, CHAT), 2, "field 'completion' must be text"),
        (
            lines(CHAT, {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}),
            2,
            "no answer to train on",
        ),
        (lines(CHAT, {"messages": [{"role": "assistant", "content": "a"}]}), 2, "no 'user' message"),
        (lines(CHAT, "[1, 2]", CHAT), 2, "expected a JSON object"),
        (lines(CHAT, "", CHAT), 2, "empty line"),
        (lines(CHAT) + b'{"prompt": "\xff", "completion": "a"}\n', 2, "not valid UTF-8"),
        (lines(CHAT, CHAT, CHAT, CHAT, CHAT), 5, "more than 4 examples"),
    ],
)
def test_a_bad_upload_is_refused_naming_its_line(data, line, needle):
    from tuneguard.serve.uploads import UploadError, check_training_file

    with pytest.raises(UploadError) as exc:
        check_training_file(data, max_examples=4, min_examples=1)
    assert exc.value.line == line and str(exc.value).startswith(f"line {line}: ") and needle in str(exc.value)


def test_a_file_with_too_few_examples_is_refused():
    from tuneguard.serve.uploads import UploadError, check_training_file

    with pytest.raises(UploadError, match="2 examples; a training file needs at least 10"):
        check_training_file(lines(CHAT, CHAT), max_examples=100, min_examples=10)


# --------------------------------------------------------------------------------------------------- keys
def test_api_keys_are_kept_as_hashes_and_looked_up_by_hash(tmp_path):
    from tuneguard.serve.auth import KEYS_ENV, KeyRing, KeysError, add_key

    keys_file = tmp_path / "keys.yaml"
    first, second = add_key(keys_file, "acme"), add_key(keys_file, "acme")
    other = add_key(keys_file, "globex")
    stored = keys_file.read_text()
    assert first != second and not any(k in stored for k in (first, second, other))
    assert len(yaml.safe_load(stored)["acme"]) == 2

    ring = KeyRing.load(keys_file, environ={KEYS_ENV: "initech=plain-env-key"})
    assert ring.tenant(first) == ring.tenant(second) == "acme" and ring.tenant(other) == "globex"
    assert ring.tenant("plain-env-key") == "initech" and ring.tenant("wrong") is None and ring.tenant(None) is None

    keys_file.write_text(yaml.safe_dump({"acme": ["tg-a-plain-key"]}))
    with pytest.raises(KeysError, match="keeps hashes only") as exc:
        KeyRing.load(keys_file, environ={})
    assert "tg-a-plain-key" not in str(exc.value)
    with pytest.raises(KeysError, match="no API keys"):
        KeyRing.load(None, environ={})


# ---------------------------------------------------------------------------------------------- channel
def test_the_worker_channel_applies_each_message_once_and_drops_a_half_written_line(tmp_path):
    from tuneguard.serve.channel import MessageWriter, read_messages

    path = tmp_path / "messages.jsonl"
    writer = MessageWriter(path)
    writer.event("one")
    writer.send("checkpoint", step=2, metrics={})
    writer.close()
    messages, offset = read_messages(path, 0)
    assert [m["kind"] for m in messages] == ["event", "checkpoint"] and offset == path.stat().st_size
    with path.open("ab") as fh:
        fh.write(b'{"kind": "event", "mess')  # a worker killed in the middle of a line
    assert read_messages(path, offset) == ([], offset)
    writer = MessageWriter(path)  # the next attempt of the job
    writer.event("three")
    writer.close()
    messages, _ = read_messages(path, offset)
    assert [m["message"] for m in messages] == ["three"]


def test_only_the_engine_module_calls_the_library():
    # A refactor of the library's internals must touch one file of the service: engine.py.
    imports = re.compile(r"^\s*(?:from|import)\s+tuneguard\.(?!serve\b)(\w+)", re.MULTILINE)
    offenders = {p.name: imports.findall(p.read_text()) for p in SERVE.glob("*.py") if p.name != "engine.py"}
    assert not {name: found for name, found in offenders.items() if found}
    assert imports.findall((SERVE / "engine.py").read_text())
