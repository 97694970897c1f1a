"""Config: YAML in, key.sub=value overrides, clear errors, resolved config out."""

from __future__ import annotations

import pytest
import yaml

from tuneguard.config import ConfigError, ExperimentConfig, dump_config, load_config


def test_override_sets_nested_key_with_yaml_typed_value(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("finetune:\n  user_data:\n    poison_ratio: 0.1\n")
    cfg = load_config(
        path,
        [
            "finetune.user_data.poison_ratio=0.2",
            "finetune.training.learning_rate=5e-4",
            "finetune.lora.target_modules=[q_proj,v_proj]",
            "align=null",
        ],
    )
    assert cfg.finetune.user_data.poison_ratio == 0.2
    assert cfg.finetune.training.learning_rate == 5e-4
    assert cfg.finetune.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.align is None


def test_unknown_key_is_an_error_with_a_did_you_mean(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["finetune.training.learning_rat=1e-4"])
    assert "finetune.training.learning_rat" in str(err.value)
    assert "did you mean 'learning_rate'" in str(err.value)


def test_out_of_range_poison_ratio_names_the_key():
    with pytest.raises(ConfigError, match=r"finetune.user_data.poison_ratio"):
        load_config(None, ["finetune.user_data.poison_ratio=1.5"])


def test_bad_yaml_and_missing_file_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("align: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(None, ["finetune.method"])


def test_data_source_accepts_a_plain_string_and_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["align.alignment_data=data/align.jsonl"])
    assert cfg.align.alignment_data.source == "data/align.jsonl"
    out = tmp_path / "resolved.yaml"
    out.write_text(yaml.safe_dump(dump_config(cfg), sort_keys=False), encoding="utf-8")
    again = ExperimentConfig.model_validate(yaml.safe_load(out.read_text()))
    assert again == cfg


def test_packaged_demo_config_validates():
    from importlib import resources

    cfg = load_config(str(resources.files("tuneguard") / "presets" / "demo.yaml"))
    assert cfg.model.model_name_or_path == "offline:tiny"
    assert cfg.finetune.method == "sft"


def test_every_example_config_validates_with_its_method_args():
    from pathlib import Path

    from tuneguard.methods import get_training_method
    from tuneguard.methods.base import parse_params

    examples = sorted((Path(__file__).parents[1] / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        cfg = load_config(path)
        for stage in ("align", "finetune"):
            stage_cfg = getattr(cfg, stage)
            if stage_cfg is not None:
                method = get_training_method(stage, stage_cfg.method)
                parse_params(method.params_cls, stage_cfg.method_args, f"{path.name}: {stage}.method_args")
