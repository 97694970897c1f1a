"""Where each architecture keeps its decoder layers: the selector of per-layer submodules the defenses hook.

:func:`layer_modules` returns one self-attention block or MLP block per decoder layer, and :func:`final_norm` the
norm before the LM head, by ``config.model_type``, through PEFT / DDP wrappers. An unknown architecture is an
error that says how to add it (:func:`register_layout`); nothing falls back on name matching.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class LayerLayout:
    """Where an architecture keeps its decoder layers, relative to the backbone (``model.base_model``).

    ``layers``: dotted path of the ``ModuleList`` of decoder layers; ``attention`` / ``mlp``: attribute of a
    decoder layer whose first output is the self-attention / MLP block's output, before the residual add;
    ``final_norm``: dotted path of the norm applied before the LM head.
    """

    layers: str
    attention: str
    mlp: str
    final_norm: str


_LLAMA_LIKE = LayerLayout(layers="layers", attention="self_attn", mlp="mlp", final_norm="norm")
LAYOUTS: dict[str, LayerLayout] = {
    **dict.fromkeys(
        ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo", "olmo2"),
        _LLAMA_LIKE,
    ),
    "gpt2": LayerLayout(layers="h", attention="attn", mlp="mlp", final_norm="ln_f"),
    "opt": LayerLayout(
        layers="decoder.layers", attention="self_attn", mlp="fc2", final_norm="decoder.final_layer_norm"
    ),
}


def register_layout(model_type: str, layout: LayerLayout) -> None:
    """Teach the selector a new architecture (``config.model_type`` → :class:`LayerLayout`)."""
    LAYOUTS[model_type] = layout


def unwrap_model(model: nn.Module) -> nn.Module:
    """The ``transformers`` model inside DDP / DataParallel wrappers and a PEFT ``PeftModel``."""
    while isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        model = model.module
    if hasattr(model, "get_base_model"):  # peft.PeftModel
        model = model.get_base_model()
    return model


def layout_of(model: nn.Module) -> LayerLayout:
    """The :class:`LayerLayout` of ``model``'s architecture; a clear error for an unknown one."""
    config = getattr(unwrap_model(model), "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in LAYOUTS:
        raise ValueError(
            f"no decoder-layer layout known for model_type={model_type!r} (known: {', '.join(sorted(LAYOUTS))}); "
            "add one with tuneguard.methods.layouts.register_layout(model_type, LayerLayout(...))"
        )
    return LAYOUTS[model_type]


def layer_modules(model: nn.Module, part: str) -> list[nn.Module]:
    """One module per decoder layer: ``part`` is ``"attention"`` or ``"mlp"`` (see :class:`LayerLayout`).

    Checks that there is exactly one per layer of ``config.num_hidden_layers``.
    """
    if part not in ("attention", "mlp"):
        raise ValueError(f"part must be 'attention' or 'mlp', not {part!r}")
    hf_model = unwrap_model(model)
    layout = layout_of(hf_model)
    layers = _resolve(hf_model.base_model, layout.layers, hf_model)
    name = getattr(layout, part)
    missing = [i for i, layer in enumerate(layers) if not isinstance(getattr(layer, name, None), nn.Module)]
    if missing:
        raise ValueError(f"{type(hf_model).__name__}: decoder layers {missing} have no submodule {name!r}")
    expected = getattr(hf_model.config, "num_hidden_layers", len(layers))
    if len(layers) != expected:
        raise ValueError(f"{type(hf_model).__name__}: found {len(layers)} decoder layers, config says {expected}")
    return [getattr(layer, name) for layer in layers]


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied to the last hidden state before the LM head (for logit-lens losses)."""
    hf_model = unwrap_model(model)
    return _resolve(hf_model.base_model, layout_of(hf_model).final_norm, hf_model)


def _resolve(root: nn.Module, path: str, model: nn.Module) -> Any:
    node: Any = root
    for part in path.split("."):
        node = getattr(node, part, None)
        if node is None:
            raise ValueError(f"{type(model).__name__}: no module at {path!r} under {type(root).__name__}")
    return node
