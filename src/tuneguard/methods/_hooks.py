"""Mechanics shared by the alignment-stage defenses (DESIGN §4, last paragraph), written once.

- :func:`layer_modules`: the architecture-aware selector of per-decoder-layer submodules (self-attention block,
  MLP block) and the final norm, by ``config.model_type``, through PEFT / DDP wrappers. An unknown architecture
  is an error that says how to add it (:func:`register_layout`); nothing falls back on name matching.
- :func:`capture_outputs` / :func:`add_to_outputs`: forward hooks that record, or add a constant to, the first
  output of chosen modules (Vaccine's activation perturbation, RepNoise's MLP activations).
- :func:`perturbed_weights`: move trainable weights along a direction and restore them bit-exactly (Booster).
- :func:`global_norm`: one L2 norm over many tensors, in float32.
- :func:`check_engine`: refuse, at build time, a training engine a method does not support.

The endless auxiliary loader and the weight snapshots live in :mod:`tuneguard.methods._shared`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tuneguard.methods._shared import auxiliary_loader


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
            "add one with tuneguard.methods._hooks.register_layout(model_type, LayerLayout(...))"
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


# --------------------------------------------------------------------------------------------------------------
# Forward hooks on module outputs
# --------------------------------------------------------------------------------------------------------------


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def _replace_first(output: Any, value: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (value, *output[1:])
    if isinstance(output, list):
        return [value, *output[1:]]
    return value


class OutputCapture:
    """What :func:`capture_outputs` records: ``outputs[i]`` is module i's first output of the last forward.

    Recording is on only inside the ``with`` block and while :attr:`recording` is True; set it False after the
    forward so that recomputation under (non-reentrant) gradient checkpointing does not overwrite the tensors
    the graph was built from.
    """

    def __init__(self, count: int) -> None:
        self.outputs: list[torch.Tensor | None] = [None] * count
        self.recording = True


@contextlib.contextmanager
def capture_outputs(modules: Sequence[nn.Module], *, require_grad: bool = False) -> Iterator[OutputCapture]:
    """Record the first output of each module during forwards inside the block.

    ``require_grad=True`` makes every recorded output differentiable, for ``torch.autograd.grad(loss, outputs)``:
    an output that does not already require grad (nothing trainable upstream of it, e.g. LoRA only on later
    layers) is replaced by a detached leaf that does; this is exact, since a gradient with respect to an output
    only depends on what is downstream of it.
    """
    capture = OutputCapture(len(modules))

    def make_hook(index: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if not capture.recording:
                return None
            value = _first(output)
            if require_grad and torch.is_grad_enabled() and not value.requires_grad:
                value = value.detach().requires_grad_()
                capture.outputs[index] = value
                return _replace_first(output, value)
            capture.outputs[index] = value
            return None

        return hook

    handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(modules)]
    try:
        yield capture
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def add_to_outputs(modules: Sequence[nn.Module], offsets: Sequence[torch.Tensor | None]) -> Iterator[None]:
    """Add ``offsets[i]`` (a constant: detached) to module i's first output in every forward inside the block.

    A ``None`` offset leaves that module alone. Under gradient checkpointing the recomputed forward gets the
    same offset, so the recomputation matches the original forward.
    """
    if len(modules) != len(offsets):
        raise ValueError(f"{len(modules)} modules but {len(offsets)} offsets")

    def make_hook(offset: torch.Tensor) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            value = _first(output)
            return _replace_first(output, value + offset.to(value.dtype))

        return hook

    handles = [
        m.register_forward_hook(make_hook(o.detach())) for m, o in zip(modules, offsets, strict=True) if o is not None
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# --------------------------------------------------------------------------------------------------------------
# Weights: norm, perturb and restore
# --------------------------------------------------------------------------------------------------------------


def global_norm(tensors: Iterable[torch.Tensor | None]) -> torch.Tensor:
    """sqrt(Σ ||t||²) over all tensors (``None`` skipped), as a float32 scalar."""
    squares = [t.detach().float().pow(2).sum() for t in tensors if t is not None]
    if not squares:
        return torch.zeros(())
    device = squares[0].device
    return torch.stack([s.to(device) for s in squares]).sum().sqrt()


@contextlib.contextmanager
def perturbed_weights(
    params: Sequence[torch.Tensor], direction: Sequence[torch.Tensor | None], step: float
) -> Iterator[None]:
    """Inside the block, ``w ← w + step · d`` for each parameter; on exit ``w`` is restored bit-exactly.

    The original values are copied before the move and copied back after (not subtracted again, which would
    leave rounding errors), also when the block raises. A ``None`` direction leaves that parameter alone.
    """
    if len(params) != len(direction):
        raise ValueError(f"{len(params)} parameters but {len(direction)} directions")
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for param, d in zip(params, direction, strict=True):
                if d is None:
                    continue
                saved.append((param, param.detach().clone()))
                param.add_(d.to(param.dtype), alpha=step)
        yield
    finally:
        with torch.no_grad():
            for param, original in saved:
                param.copy_(original)


# --------------------------------------------------------------------------------------------------------------
# Training engines
# --------------------------------------------------------------------------------------------------------------


def training_engine(args: Any) -> str:
    """The engine ``TrainingArguments`` select: ``"fsdp"``, ``"deepspeed-zero0..3"``, ``"dataparallel"``, or
    ``"ddp"`` (which also covers single-process training)."""
    if getattr(args, "fsdp", None):  # a non-empty list of FSDP options
        return "fsdp"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    deepspeed = getattr(args, "deepspeed", None)
    if deepspeed:
        config = deepspeed
        if isinstance(deepspeed, str):
            with open(deepspeed, encoding="utf-8") as handle:
                config = json.load(handle)
        stage = (config.get("zero_optimization") or {}).get("stage", 0)
        return f"deepspeed-zero{stage}"
    if getattr(args, "n_gpu", 1) > 1 and str(getattr(args, "parallel_mode", "")).endswith("NOT_DISTRIBUTED"):
        return "dataparallel"
    return "ddp"


def check_engine(method: str, args: Any, unsupported: dict[str, str]) -> str:
    """Raise a ``ConfigError`` (a ``ValueError``) if the engine of ``args`` is a key of ``unsupported``
    (engine → reason)."""
    from tuneguard.config import ConfigError

    engine = training_engine(args)
    if engine in unsupported:
        raise ConfigError(
            f"{method} does not support {engine}: {unsupported[engine]}. Supported engines are listed in "
            "docs/engines.md; use DDP (torchrun) instead."
        )
    return engine


# --------------------------------------------------------------------------------------------------------------
# Logged internals
# --------------------------------------------------------------------------------------------------------------


class MetricWindow:
    """Running sums of named scalars between two Trainer logs; device tensors, so no host sync per step."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, value: torch.Tensor | float) -> None:
        value = value.detach().float() if torch.is_tensor(value) else torch.tensor(float(value))
        self.sums[name] = self.sums[name] + value.to(self.sums[name].device) if name in self.sums else value
        self.counts[name] = self.counts.get(name, 0) + 1

    def drain(self, accelerator: Any = None) -> dict[str, float]:
        """The mean of each name over the window (and over DDP ranks when ``accelerator`` has several); resets."""
        if not self.sums:
            return {}
        names = sorted(self.sums)
        device = self.sums[names[0]].device
        means = torch.stack([self.sums[n].to(device) / self.counts[n] for n in names])
        if accelerator is not None and accelerator.num_processes > 1:
            means = accelerator.reduce(means.to(accelerator.device), reduction="mean")
        self.sums, self.counts = {}, {}
        return dict(zip(names, means.tolist(), strict=True))


# --------------------------------------------------------------------------------------------------------------
# Harmful data: an endless loader attached to a Trainer, saved in its checkpoints
# --------------------------------------------------------------------------------------------------------------

HARMFUL_LOADER_FILE = "harmful_loader.pt"  # written into each checkpoint folder next to trainer_state.json


class HarmfulDataMixin:
    """Draws harmful batches for a ``transformers.Trainer`` (Booster, RepNoise) from an ``EndlessLoader``.

    The loader is built at the first draw (per-rank shard, seeded by ``data_seed`` or ``seed``) and its position
    is saved in every checkpoint and restored on resume, so a resumed run draws the batches an unbroken run
    would have drawn.
    """

    harmful_dataset: Any
    harmful_data_collator: Any

    def setup_harmful_data(self, dataset: Any, collator: Any, method: str) -> None:
        if dataset is None:
            raise ValueError(f"{method} needs harmful data (harmful prompt -> harmful answer): pass harmful_dataset")
        self.harmful_dataset, self.harmful_data_collator = dataset, collator
        self._harmful_loader: Any = None
        self._harmful_pending: dict[str, Any] | None = None

    def harmful_batch_size(self) -> int:
        raise NotImplementedError

    def next_harmful_batch(self) -> dict[str, Any]:
        """The next collated harmful batch, on the training device."""
        if self._harmful_loader is None:
            self._harmful_loader = self._build_harmful_loader()
            if self._harmful_pending is not None:
                self._harmful_loader.load_state_dict(self._harmful_pending)
                self._harmful_pending = None
        return self._prepare_inputs(next(self._harmful_loader))

    def train(self, resume_from_checkpoint: Any = None, *args: Any, **kwargs: Any) -> Any:
        from transformers.trainer_utils import get_last_checkpoint

        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        self._harmful_loader, self._harmful_pending = None, None
        if isinstance(checkpoint, str | os.PathLike):
            path = os.path.join(checkpoint, HARMFUL_LOADER_FILE)
            if os.path.isfile(path):
                self._harmful_pending = torch.load(path, map_location="cpu", weights_only=True)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        if self._harmful_loader is not None and self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            os.makedirs(folder, exist_ok=True)
            torch.save(self._harmful_loader.state_dict(), os.path.join(folder, HARMFUL_LOADER_FILE))
        super()._save_checkpoint(model, trial)

    def _build_harmful_loader(self) -> Any:
        collate = self.harmful_data_collator or self.data_collator
        return auxiliary_loader(self, self.harmful_dataset, collate, self.harmful_batch_size(), "harmful")
