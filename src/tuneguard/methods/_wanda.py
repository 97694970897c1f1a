"""Wanda importance scores and top-fraction masks for one-shot pruning (Antidote's scores).

Wanda (Sun et al., arXiv 2306.11695) scores weight W_ij of a linear layer by s_ij = |W_ij| · ||X_j||₂, where X_j
is the j-th input feature of that layer over every token of the calibration data. Here the norms are gathered
by forward pre-hooks on the chosen ``nn.Linear`` modules during ordinary full-model forwards, as running sums of
squares (nothing is stored per token), so nothing depends on how a decoder layer is called (the authors' code
re-runs decoder layers with captured ``attention_mask``/``position_ids`` kwargs, which breaks on newer
transformers). Padding is excluded through the batch's attention mask.

- :class:`InputNormCollector`: the hooks and the running sums.
- :func:`score_weights`: ``wanda`` / ``magnitude`` / ``random`` scores.
- :func:`top_fraction_masks`: the top fraction α of scores per output row, per layer, or over all layers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

GROUPINGS = ("per_row", "per_layer", "global")
SCORES = ("wanda", "magnitude", "random")


class InputNormCollector:
    """Accumulate Σ_tokens x_j² of the input of each given ``nn.Linear``; use as a context manager.

    Set :attr:`token_mask` (bool, shaped like the batch's ``attention_mask``) before each forward: only the
    tokens it selects are counted. A module's input must then have the batch's leading shape ``[B, T, in]``
    (true for the projections of a decoder layer and for LoRA's A/B). ``token_mask = None`` counts every row.
    """

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self.modules = dict(modules)
        self.sum_squares: dict[str, torch.Tensor] = {}
        self.token_mask: torch.Tensor | None = None
        self._handles: list[Any] = []

    def __enter__(self) -> InputNormCollector:
        for name, module in self.modules.items():
            weight = module.weight
            self.sum_squares[name] = torch.zeros(weight.shape[1], dtype=torch.float64, device=weight.device)
            self._handles.append(module.register_forward_pre_hook(self._hook(name), with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def norms(self) -> dict[str, torch.Tensor]:
        """||X_j||₂ per module: the square root of the accumulated sums (float64, on the module's device)."""
        return {name: s.sqrt() for name, s in self.sum_squares.items()}

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = args[0] if args else kwargs["input"]
            rows = x.detach().reshape(-1, x.shape[-1])
            if self.token_mask is not None:
                mask = self.token_mask.reshape(-1).to(rows.device)
                if mask.numel() != rows.shape[0]:
                    raise RuntimeError(
                        f"{name}: input of shape {tuple(x.shape)} does not line up with the token mask of shape "
                        f"{tuple(self.token_mask.shape)}; this module cannot be scored per token"
                    )
                rows = rows[mask]
            self.sum_squares[name] += rows.float().pow(2).sum(0).double()

        return hook


@torch.no_grad()
def collect_input_norms(
    model: nn.Module, modules: Mapping[str, nn.Module], batches: Iterable[Mapping[str, torch.Tensor]]
) -> tuple[dict[str, torch.Tensor], int]:
    """Run ``model`` over ``batches`` (``input_ids`` + ``attention_mask``); return (||X_j||₂ per module, tokens).

    Only non-padding tokens (``attention_mask == 1``) count. The model is put in eval mode (no dropout).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    tokens = 0
    try:
        with InputNormCollector(modules) as collector:
            for batch in batches:
                attention_mask = batch["attention_mask"].to(device)
                collector.token_mask = attention_mask.bool()
                tokens += int(attention_mask.sum())
                model(input_ids=batch["input_ids"].to(device), attention_mask=attention_mask, use_cache=False)
    finally:
        model.train(was_training)
    return collector.norms(), tokens


def score_weights(
    modules: Mapping[str, nn.Module],
    kind: str,
    norms: Mapping[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Score every weight of every module (float32, on CPU): ``wanda`` |W|·||X_j||₂, ``magnitude`` |W|,
    ``random`` uniform noise (the random-mask ablation; draws in the order of ``modules``)."""
    scores: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        weight = module.weight.detach().float().cpu()
        if kind == "wanda":
            if norms is None:
                raise ValueError("wanda scores need the input norms")
            scores[name] = weight.abs() * norms[name].float().cpu().reshape(1, -1)
        elif kind == "magnitude":
            scores[name] = weight.abs()
        elif kind == "random":
            scores[name] = torch.rand(weight.shape, generator=generator)
        else:
            raise ValueError(f"unknown score {kind!r}; expected one of {', '.join(SCORES)}")
    return scores


def removed_count(ratio: float, group_size: int) -> int:
    """How many of ``group_size`` weights a ratio removes: ⌈ratio·n⌉, as the authors' code does (it keeps
    ⌊(1 − ratio)·n⌋); the small epsilon absorbs float error so that 0.1 · 10 removes 1, not 2."""
    return group_size - math.floor(group_size * (1.0 - ratio) + 1e-9)


def top_fraction_masks(scores: Mapping[str, torch.Tensor], ratio: float, grouping: str) -> dict[str, torch.Tensor]:
    """Boolean masks (True = remove) of the top ``ratio`` of scores in each group.

    ``per_row``: each output row of each layer (the authors' code, Wanda's comparison group); ``per_layer``: each
    layer's whole matrix; ``global``: all layers together (the paper's ArgTopK). Ties go to the lower index.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    masks = {name: torch.zeros(s.shape, dtype=torch.bool) for name, s in scores.items()}
    if ratio == 0.0 or not scores:
        return masks
    if grouping == "per_row":
        for name, s in scores.items():
            k = removed_count(ratio, s.shape[-1])
            order = torch.argsort(s, dim=-1, descending=True, stable=True)
            masks[name].scatter_(-1, order[..., :k], True)
    elif grouping == "per_layer":
        for name, s in scores.items():
            k = removed_count(ratio, s.numel())
            order = torch.argsort(s.reshape(-1), descending=True, stable=True)
            masks[name].view(-1)[order[:k]] = True
    elif grouping == "global":
        flat = torch.cat([s.reshape(-1) for s in scores.values()])
        k = removed_count(ratio, flat.numel())
        chosen = torch.zeros(flat.numel(), dtype=torch.bool)
        chosen[torch.argsort(flat, descending=True, stable=True)[:k]] = True
        start = 0
        for name, s in scores.items():
            masks[name] = chosen[start : start + s.numel()].reshape(s.shape)
            start += s.numel()
    else:
        raise ValueError(f"unknown grouping {grouping!r}; expected one of {', '.join(GROUPINGS)}")
    return masks
