"""The stage-sharing plan of a grid (what the Ray and Slurm backends schedule): which stages several cells share,
and that each comes after the shared stage it starts from. Config only: nothing trains."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

from tuneguard.grid import expand_grid, load_grid, parse_grid
from tuneguard.gridexec.plan import plan_stages, stage_chain

EFFICACY = Path(__file__).parent.parent / "benchmarks" / "efficacy.yaml"


def test_the_efficacy_grid_shares_each_aligned_model_its_evaluation_and_the_sft_model_that_antidote_repairs():
    cells = expand_grid(load_grid(EFFICACY))
    plan = plan_stages(cells)
    # 4 alignment methods x 3 seeds: aligned models and their evaluations; SFT and Antidote share the
    # fine-tuned model of each (poison ratio, seed): 4 x 3. Nothing else is shared (84 cells).
    assert len(cells) == 84
    assert Counter(n.stage for n in plan.nodes) == {"align": 12, "eval": 12, "finetune": 12}
    sft_aligned = next(n for n in plan.nodes if n.stage == "align" and n.config.align.method == "sft")
    assert len(sft_aligned.cells) == 4 * 4  # sft, bso, lisa, antidote x 4 poison ratios, one seed
    by_settings = {(c.variant, c.values["finetune.user_data.poison_ratio"], c.values["seed"]): c for c in cells}
    sft, antidote = by_settings[("sft", 0.1, 1)], by_settings[("antidote", 0.1, 1)]
    shared_finetune = [n for n in plan.needs[sft.cell_id] if plan.node(n).stage == "finetune"]
    assert len(shared_finetune) == 1 and shared_finetune[0] in plan.needs[antidote.cell_id]
    assert [plan.node(n).stage for n in plan.needs[by_settings[("vaccine", 0.1, 1)].cell_id]] == ["align", "eval"]


def test_every_shared_stage_comes_after_the_shared_stage_it_starts_from():
    plan = plan_stages(expand_grid(load_grid(EFFICACY)))
    seen: set[str] = set()
    for node in plan.nodes:
        assert node.parent is None or node.parent in seen
        if node.parent is not None:  # the parent is needed by every cell that needs its child
            assert set(node.cells) <= set(plan.node(node.parent).cells)
        seen.add(node.node_id)
    for needs in plan.needs.values():
        assert len(needs) == len(set(needs))


def test_cells_that_differ_only_in_checkpointing_share_their_stages():
    """save_steps changes how a stage is recorded, not what it computes (the store's key leaves it out): two
    cells that differ only there must not become two tasks writing one stage directory."""
    raw = {"name": "g", "base": {"output_dir": "/tmp/unused"}, "grid": {"align.training.save_steps": [10, 20]}}
    cells = expand_grid(parse_grid(raw))
    plan = plan_stages(cells)
    assert stage_chain(cells[0].config) == stage_chain(cells[1].config)
    assert len(plan.nodes) == len(stage_chain(cells[0].config))  # every stage shared by both cells


@pytest.mark.parametrize(("flag", "module", "extra"), [("--ray", "ray", "ray"), ("--slurm", "submitit", "slurm")])
def test_a_missing_cluster_extra_is_one_error_saying_what_to_install(flag, module, extra, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tuneguard.cli import app
    from tuneguard.config import ConfigError

    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it raises ImportError
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(f"name: g\nbase: {{output_dir: {tmp_path / 'runs'}}}\n")
    result = CliRunner().invoke(app, ["grid", str(grid_file), flag])
    assert isinstance(result.exception, ConfigError)
    assert (
        str(result.exception) == f"grid {flag} needs the optional package '{module}': pip install 'tuneguard[{extra}]'"
    )
    assert not (tmp_path / "runs").exists()  # found before anything was written
