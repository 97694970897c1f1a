"""Harmful text is data: a pipeline run prints and logs none of it unless asked (--show-text), and no secret
from the environment ends up in what the run writes."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import yaml

from tuneguard.cli import main

TOKEN = "hf_placeholderSecretThatMustNotBeSaved"


def run_cli(monkeypatch, capsys, argv: list[str]) -> str:
    monkeypatch.setattr(sys, "argv", ["tuneguard", *argv])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    assert exc.value.code == 0, captured.err
    return captured.out + captured.err


def test_a_run_shows_no_harmful_text_by_default_and_saves_no_token(
    tiny_experiment, small_data, tmp_path, monkeypatch, capsys, caplog
):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tiny_experiment.model_dump(mode="json")))
    shown = run_cli(monkeypatch, capsys, ["run", str(path), "--verbose"]) + caplog.text
    assert "HS (%)" in shown  # the run printed its table

    harmful = [json.loads(line) for role in ("harmful", "harmful_eval") for line in small_data[role].open()]
    texts = {r["prompt"] for r in harmful} | {r["response"] for r in harmful}
    output = Path(tiny_experiment.output_dir)
    rows = [json.loads(line) for path in (output / "eval").glob("*/generations.jsonl") for line in path.open()]
    answers = [r["answer"] for r in rows if r["set"] == "harmful"]
    answers = [a for a in answers if len(a.split()) >= 2]  # a lone common word is no evidence either way
    assert answers, "the tiny model produced no multi-word answer to check"
    leaked = [t for t in texts | set(answers) if len(t.split()) >= 2 and t in shown]
    assert not leaked, f"{len(leaked)} harmful texts printed or logged"

    files = [p for p in output.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".yaml", ".txt")]
    assert files and not [p for p in files if TOKEN in p.read_text(encoding="utf-8", errors="replace")]

    shown = run_cli(monkeypatch, capsys, ["run", str(path), "--show-text"])  # every stage reused
    assert any(repr(a) in shown for a in answers)


@pytest.mark.parametrize("key", ["model.token", "finetune.training.extra_args.hub_token", "eval.api_key"])
def test_a_secret_in_a_config_is_refused_with_a_pointer_to_the_environment(key):
    from tuneguard.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=f"{key}: secrets are not read from configs.*HF_TOKEN"):
        load_config(None, [f"{key}=placeholder"])


def test_show_text_prints_each_sets_first_answers_and_marks_benign_refusals(tmp_path):
    from tuneguard.cli import _print_answers, console

    rows = [
        {"set": "harmful", "id": "h1", "answer": "harmful answer"},
        {"set": "task", "id": "t1", "answer": "positive"},
        {"set": "benign", "id": "0:b1", "answer": "I cannot help with that.", "refused": True},
        {"set": "benign", "id": "0:b2", "answer": "Boil the water first.", "refused": False},
    ]
    (tmp_path / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with console.capture() as captured:
        _print_answers({"final": tmp_path})
    shown = captured.get()
    assert "final harmful #h1: 'harmful answer'" in shown and "final task #t1: 'positive'" in shown
    assert "final benign #0:b1 (refused): 'I cannot help with that.'" in shown
    assert "final benign #0:b2: 'Boil the water first.'" in shown
