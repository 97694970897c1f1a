"""Experiment grids: expansion (and the non-expansion of list-typed fields), sharding, skip-finished, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneguard.config import ConfigError, dump_config
from tuneguard.data import DataError
from tuneguard.grid import alignment_group, expand_grid, load_grid, parse_grid, run_grid, select_cells
from tuneguard.pipeline import run_experiment

SEED_AXIS = {"keys": ["align.training.seed", "finetune.training.seed", "finetune.user_data.seed"], "values": [0, 1]}


def grid_mapping(**extra) -> dict:
    return {
        "name": "g",
        "base": {"output_dir": "/tmp/unused", "eval": {"judges": ["offline", "refusal"]}},
        "variants": {
            "sft": {},
            "lisa": {"finetune.method": "lisa", "finetune.lora.target_modules": ["q_proj", "v_proj"]},
        },
        "grid": {"finetune.user_data.poison_ratio": [0.0, 0.1], "seed": SEED_AXIS},
        **extra,
    }


def test_grid_expands_the_product_of_variants_and_axes():
    cells = expand_grid(parse_grid(grid_mapping()))
    assert len(cells) == 2 * 2 * 2
    assert [c.variant for c in cells[:4]] == ["sft"] * 4
    settings = {(c.variant, c.config.finetune.user_data.poison_ratio, c.config.finetune.training.seed) for c in cells}
    assert len(settings) == 8
    assert len({c.cell_id for c in cells}) == 8


def test_named_axis_sets_all_its_keys_to_the_same_value():
    for cell in expand_grid(parse_grid(grid_mapping())):
        seed = cell.values["seed"]
        cfg = cell.config
        assert cfg.align.training.seed == cfg.finetune.training.seed == cfg.finetune.user_data.seed == seed


def test_list_typed_fields_in_base_and_variants_are_not_expanded():
    cells = expand_grid(parse_grid(grid_mapping()))
    assert all(c.config.eval.judges == ["offline", "refusal"] for c in cells)
    lisa = [c for c in cells if c.variant == "lisa"]
    assert all(c.config.finetune.lora.target_modules == ["q_proj", "v_proj"] for c in lisa)


def test_a_list_of_lists_under_grid_sweeps_a_list_typed_field():
    spec = parse_grid({"base": {}, "grid": {"eval.judges": [["offline"], ["refusal", "offline"]]}})
    assert [c.config.eval.judges for c in expand_grid(spec)] == [["offline"], ["refusal", "offline"]]


def test_grid_axis_must_be_a_list():
    with pytest.raises(ConfigError, match="must be a non-empty list"):
        parse_grid({"base": {}, "grid": {"finetune.user_data.poison_ratio": 0.1}})


def test_misspelled_key_names_the_cell_and_suggests_the_field():
    spec = parse_grid({"base": {}, "grid": {"finetune.user_data.poison_ratoi": [0.1]}}, source="g.yaml")
    with pytest.raises(ConfigError, match=r"(?s)g\.yaml \(cell poison_ratoi=0.1\).*did you mean 'poison_ratio'"):
        expand_grid(spec)


def test_unknown_top_level_key_is_refused():
    with pytest.raises(ConfigError, match="unknown top-level key"):
        parse_grid({"base": {}, "finetune": {"method": "lisa"}})


def test_base_path_is_relative_to_the_grid_file_and_overrides_apply_to_every_cell(tmp_path):
    (tmp_path / "base.yaml").write_text("output_dir: runs_here\nfinetune: {method: bso}\n")
    (tmp_path / "g.yaml").write_text("base: base.yaml\ngrid:\n  finetune.user_data.poison_ratio: [0.0, 0.2]\n")
    spec = load_grid(tmp_path / "g.yaml", ["finetune.method=lisa"])
    assert spec.name == "g" and spec.run_dir == Path("runs_here") / "grids" / "g"
    assert [c.config.finetune.method for c in expand_grid(spec)] == ["lisa", "lisa"]


def test_base_may_name_a_preset_as_tuneguard_run_does(tmp_path):
    from tuneguard.config import load_config

    (tmp_path / "g.yaml").write_text("base: preset:demo\ngrid:\n  finetune.user_data.poison_ratio: [0.0, 0.2]\n")
    cells = expand_grid(load_grid(tmp_path / "g.yaml"))
    for cell, ratio in zip(cells, (0.0, 0.2), strict=True):
        expected = load_config("preset:demo", [f"finetune.user_data.poison_ratio={ratio}"])
        assert dump_config(cell.config) == dump_config(expected)
    (tmp_path / "bad.yaml").write_text("base: preset:dmeo\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: base: unknown preset 'dmeo'; did you mean 'demo'\?"):
        load_grid(tmp_path / "bad.yaml")


def test_shards_partition_the_grid_by_aligned_model():
    spec = parse_grid(grid_mapping())
    cells = expand_grid(spec)
    shards = [select_cells(cells, shard=(i, 2)) for i in range(2)]
    indices = [{c.index for c in s} for s in shards]
    assert indices[0].isdisjoint(indices[1]) and indices[0] | indices[1] == set(range(len(cells)))
    groups = [{alignment_group(c.config) for c in s} for s in shards]
    assert groups[0] and groups[1] and groups[0].isdisjoint(groups[1])


# ----------------------------------------------------------------------------------- running (tiny models)
@pytest.fixture
def tiny_grid(tiny_experiment):
    base = dump_config(tiny_experiment)
    return parse_grid({"name": "tiny", "base": base, "grid": {"finetune.user_data.poison_ratio": [0.0, 0.5]}})


class CountingRunner:
    """Runs experiments for real; records which cells ran; raises (a simulated kill) at call ``fail_at``."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at
        self.ran: list[float] = []

    def __call__(self, cfg):
        if self.fail_at is not None and len(self.ran) == self.fail_at:
            raise KeyboardInterrupt("simulated kill")
        self.ran.append(cfg.finetune.user_data.poison_ratio)
        return run_experiment(cfg)


def test_grid_trains_the_shared_aligned_model_once_and_skips_finished_cells(tiny_grid):
    first = run_grid(tiny_grid)
    root = tiny_grid.output_dir
    assert len(first.ran) == 2
    assert len(list((root / "align").iterdir())) == 1  # one aligned model for both fine-tuning runs
    assert len(list((root / "finetune").iterdir())) == 2
    stages = [json.loads(p.read_text())["stages"]["align"] for p in (first.run_dir / "cells").glob("*.json")]
    assert len(set(stages)) == 1

    counting = CountingRunner()
    again = run_grid(tiny_grid, runner=counting)
    assert counting.ran == [] and len(again.skipped) == 2

    rows = [json.loads(line) for line in (first.run_dir / "results.jsonl").read_text().splitlines()]
    assert sorted((r["model"], r["poison_ratio"]) for r in rows) == [
        ("aligned", 0.0),
        ("aligned", 0.5),
        ("final", 0.0),
        ("final", 0.5),
    ]
    for row in rows:
        assert {"harmful_score", "finetune_accuracy", "judge", "protocol", "seed", "version_torch"} <= set(row)
        assert row["train_wall_s"] > 0 and row["finetune.user_data.poison_ratio"] == row["poison_ratio"]
    csv_header = (first.run_dir / "results.csv").read_text().splitlines()[0].split(",")
    assert "harmful_score" in csv_header and "finetune.user_data.poison_ratio" in csv_header
    import pyarrow.parquet as pq

    assert pq.read_table(first.run_dir / "results.parquet").num_rows == len(rows)


def test_a_killed_grid_resumes_with_the_cells_it_had_not_finished(tiny_grid):
    with pytest.raises(KeyboardInterrupt):
        run_grid(tiny_grid, runner=CountingRunner(fail_at=1))
    run_dir = tiny_grid.run_dir
    assert len(list((run_dir / "cells").glob("*.json"))) == 1
    assert len((run_dir / "results.jsonl").read_text().splitlines()) == 2  # the finished cell's two models

    resumed = CountingRunner()
    outcome = run_grid(tiny_grid, runner=resumed)
    assert resumed.ran == [0.5]  # only the cell that had not finished
    assert [c.index for c in outcome.skipped] == [0]
    assert len((run_dir / "results.jsonl").read_text().splitlines()) == 4


def test_cli_grid_runs_then_lists_every_cell_as_finished_and_writes_the_report(tiny_grid, tmp_path, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from tuneguard.cli import app

    monkeypatch.setenv("COLUMNS", "200")
    path = tmp_path / "tiny.yaml"
    path.write_text(
        yaml.safe_dump({"name": "tiny", "base": tiny_grid.base, "grid": {"finetune.training.seed": [0, 1]}})
    )
    cli = CliRunner()
    ran = cli.invoke(app, ["grid", str(path), "finetune.training.max_steps=2"])
    assert ran.exit_code == 0, ran.output
    run_dir = tiny_grid.run_dir
    assert (run_dir / "report.html").is_file() and (run_dir / "results.csv").is_file()
    listed = cli.invoke(app, ["grid", str(path), "finetune.training.max_steps=2", "--list"])
    assert listed.exit_code == 0 and listed.output.count("yes") == 2


def test_overwrite_recomputes_a_shared_stage_once_for_all_its_cells(tiny_grid):
    first = run_grid(tiny_grid)
    align_stage = next((tiny_grid.output_dir / "align").iterdir()) / "stage.json"
    before = json.loads(align_stage.read_text())["finished_at"], align_stage.stat().st_mtime_ns
    counting = CountingRunner()
    again = run_grid(tiny_grid, overwrite=True, runner=counting)
    assert counting.ran == [0.0, 0.5] and not again.skipped
    assert len(list((tiny_grid.output_dir / "align").iterdir())) == 1
    assert align_stage.stat().st_mtime_ns != before[1]  # recomputed ...
    cells = [json.loads(p.read_text()) for p in (first.run_dir / "cells").glob("*.json")]
    assert sorted(c["reused"] for c in cells) == [[], ["align", "aligned"]]  # ... once: the second cell reused it


def test_a_grid_killed_inside_a_stage_stops_until_resume_then_continues_from_the_checkpoint(tiny_grid, monkeypatch):
    from transformers import Trainer

    save = Trainer._save_checkpoint
    calls = {"n": 0}

    def save_then_die(self, *args, **kwargs):
        save(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill after a checkpoint")

    monkeypatch.setattr(Trainer, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_grid(tiny_grid)
    monkeypatch.setattr(Trainer, "_save_checkpoint", save)
    with pytest.raises(Exception, match="interrupted at step .*pass --resume"):
        run_grid(tiny_grid)
    outcome = run_grid(tiny_grid, resume=True)
    assert len(outcome.ran) == 2
    trained = [json.loads(p.read_text()) for p in tiny_grid.output_dir.glob("*/*/stage.json")]
    assert sum(bool(info.get("resumed_from")) for info in trained) == 1  # the killed stage, from its checkpoint


def test_every_cell_is_checked_before_the_first_cell_trains(tiny_experiment, small_data, monkeypatch):
    """The last cell's variant lacks a data role its method needs, and another one reads a bad file: the grid
    stops before any cell trains, naming the cell."""
    from transformers import Trainer

    monkeypatch.setattr(Trainer, "train", lambda *a, **k: pytest.fail("a cell trained before the grid was checked"))
    raw = {"name": "checked", "base": dump_config(tiny_experiment), "variants": {"sft": {}, "booster": {}}}
    raw["variants"]["booster"] = {"align.method": "booster"}  # needs align.harmful_data
    with pytest.raises(ConfigError, match=r"cell 1: booster\): align\.harmful_data: align method 'booster' needs it"):
        run_grid(parse_grid(raw))
    raw["variants"]["booster"] = {"align.method": "booster", "align.harmful_data": str(small_data["harmful_eval"])}
    raw["variants"]["sft"] = {"eval.task_test": str(small_data["harmful_eval"])}  # no labels
    with pytest.raises(DataError, match=r"harmful_eval\.jsonl, row 1: task records need a 'label'"):
        run_grid(parse_grid(raw))
    assert not (Path(tiny_experiment.output_dir) / "align").exists()
