"""Antidote: post-fine-tuning safety repair by one-shot pruning of harmful weights.

Huang et al., "Antidote: Post-fine-tuning Safety Alignment for Large Language Models against Harmful
Fine-tuning", arXiv 2408.09600 (code: git-disl/Antidote). Not to be confused with "AntiDote" (arXiv 2509.08000),
an unrelated, later defense with a similar name.

After the (possibly harmful) fine-tuning, score every weight of the selected linear layers with the Wanda score
over *re-alignment data* (harmful prompt + harmful answer, disjoint from the attack and evaluation data):
s_ij = |W_ij| · ||X_j||₂; the top fraction α of weights by score are the ones the harmful data relies on most,
and are set to zero. The authors prune the fine-tuning adapter's LoRA A and B matrices of q/k/v, comparing
weights within each output row; the paper writes one global top-k. Both, a per-layer grouping, full-weight
scope and the random / magnitude ablations are options.

Registered as the repair method ``antidote`` (``repair.method: antidote``, ``repair.realign_data: ...``).
:func:`antidote_prune` is the same algorithm for a model in hand (a ``PeftModel`` or a plain model).
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from tuneguard.config import ModelSettings
from tuneguard.data import SFTDataCollator, resolve_template, tokenize_sft
from tuneguard.data.readers import Record
from tuneguard.data.templates import PromptTemplate
from tuneguard.methods._wanda import collect_input_norms, score_weights, top_fraction_masks
from tuneguard.methods.base import MethodParams, RepairMethod, RepairOutput, register_repair_method
from tuneguard.models import load_model_and_tokenizer, merge_lora
from tuneguard.store import StageResult

logger = logging.getLogger(__name__)

ALL_LINEAR = "all-linear"


class AntidoteParams(MethodParams):
    """Antidote's parameters (``repair.method_args``); defaults are the authors' unless noted."""

    mask_ratio: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="α, the fraction of weights removed in each group (authors: 0.1 for SST-2/AG News/Alpaca, "
        "0.05 for GSM8K; the code calls it dense_ratio). ⌈α·n⌉ of a group of n weights. 0 changes nothing.",
    )
    scope: Literal["lora", "full"] = Field(
        "lora",
        description="lora: prune the fine-tuning adapter's LoRA A and B matrices, then merge (authors); "
        "full: prune the merged model's linear weights (the authors' option for full fine-tuning).",
    )
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj"],
        description="Names (last path component) of the linear modules to prune, or 'all-linear' (every linear "
        "but the output head). Authors: q_proj, k_proj, v_proj.",
    )
    grouping: Literal["per_row", "per_layer", "global"] = Field(
        "per_row",
        description="Where the top α is taken: per output row of each matrix (authors' code, Wanda), per matrix, "
        "or over all selected matrices together (the paper's ArgTopK).",
    )
    score: Literal["wanda", "magnitude", "random"] = Field(
        "wanda",
        description="wanda: |W|·||X||₂ on the re-alignment data (authors); magnitude: |W| (authors' ablation "
        "without harmful data); random: a random mask of the same size (authors' random_prune ablation).",
    )
    num_calibration_samples: int | None = Field(
        2000,
        gt=0,
        description="Re-alignment records used for the scores, drawn with `seed` (all when fewer; null: all). "
        "Authors: 2000.",
    )
    batch_size: int = Field(
        16, gt=0, description="Calibration batch size. Authors: 1; padding is excluded, so the scores agree."
    )
    max_length: int = Field(
        256,
        gt=8,
        description="Tokens per calibration example (prompt + answer); longer answers are truncated. Authors: "
        "model_max_length 2048 (512 for Alpaca); 256 is tuneguard's fine-tuning default.",
    )
    seed: int = Field(0, description="Seeds the calibration subsample and the random mask (authors: 43).")

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value


# --------------------------------------------------------------------------------------------- public entry
def antidote_repair(model: Any, tokenizer: Any, params: AntidoteParams, data: dict[str, Any]) -> RepairOutput:
    """The ``antidote`` repair: prune, and return the merged repaired model and the mask statistics.

    With ``scope=lora`` and a merged ``model`` (the pipeline's case), the unmerged fine-tuned model is rebuilt
    from the stage that produced it, ``data["input_stage"]`` (the fine-tuning stage): its aligned input model plus
    the adapter it saved. The prompts are formatted with that stage's template (or, without one, the tokenizer's
    default).
    """
    input_stage = data.get("input_stage")
    template = resolve_template((input_stage.info.get("template") if input_stage else None) or "auto", tokenizer)
    target = model
    if params.scope == "lora" and not _lora_layers(model):
        target = load_unmerged_finetuned(input_stage)
    stats = antidote_prune(target, tokenizer, data["realign_data"], params, template)
    if stats["removed"] == 0 and target is not model:
        return RepairOutput(model, stats)  # nothing removed: the input model, bit for bit (no re-merge)
    return RepairOutput(merge_lora(target), stats)


def antidote_prune(
    model: nn.Module, tokenizer: Any, records: list[Record], params: AntidoteParams, template: PromptTemplate
) -> dict[str, Any]:
    """Zero, in place, the top ``params.mask_ratio`` of the selected weights of ``model`` by score.

    ``scope=lora`` needs a model with LoRA layers (a ``PeftModel``); ``scope=full`` a plain (merged) model.
    Returns JSON-able statistics: per layer and in total, the number and share (%) of weights removed, the
    calibration samples and tokens, and timings (s).
    """
    start = time.time()
    modules, missing = select_modules(model, params.scope, params.target_modules)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    norms, tokens, samples = None, 0, 0
    if params.score == "wanda" and params.mask_ratio > 0:
        batches, samples = _calibration_batches(records, tokenizer, template, params)
        norms, tokens = collect_input_norms(model, modules, batches)
        if tokens == 0:
            raise ValueError("the re-alignment data produced no calibration tokens")
    calibrated = time.time()
    layers = prune_modules(modules, params, norms)
    removed = sum(int(v["removed"]) for v in layers.values())
    total = sum(int(v["total"]) for v in layers.values())
    stats: dict[str, Any] = {
        "mask_ratio": params.mask_ratio,
        "scope": params.scope,
        "grouping": params.grouping,
        "score": params.score,
        "template": template.kind,
        "removed": removed,
        "total": total,
        "share_removed": 100.0 * removed / total,
        "num_layers": len(layers),
        "layers": layers,
        "not_adapted": missing,
        "calibration_samples": samples,
        "calibration_tokens": tokens,
        "calibration_s": round(calibrated - start, 3),
        "prune_s": round(time.time() - calibrated, 3),
    }
    if device.type == "cuda":
        stats["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    logger.info(
        "antidote: removed %d of %d weights (%.2f %%) in %d matrices",
        removed,
        total,
        stats["share_removed"],
        len(layers),
    )
    return stats


def prune_modules(
    modules: dict[str, nn.Linear], params: AntidoteParams, norms: dict[str, torch.Tensor] | None = None
) -> dict[str, dict[str, float | int]]:
    """Score ``modules`` (``norms``: ||X_j||₂ per module, for ``wanda``), zero the top ``mask_ratio`` of each
    group in place, and return per module the number removed, its size and the share removed (%)."""
    if params.mask_ratio == 0:  # nothing to remove: no scores needed (and no calibration was run)
        return {name: {"removed": 0, "total": m.weight.numel(), "share": 0.0} for name, m in modules.items()}
    generator = torch.Generator().manual_seed(params.seed)
    scores = score_weights(modules, params.score, norms, generator)
    masks = top_fraction_masks(scores, params.mask_ratio, params.grouping)
    layers: dict[str, dict[str, float | int]] = {}
    with torch.no_grad():
        for name, module in modules.items():
            mask = masks[name].to(module.weight.device)
            module.weight.masked_fill_(mask, 0.0)
            removed = int(mask.sum())
            layers[name] = {"removed": removed, "total": mask.numel(), "share": 100.0 * removed / mask.numel()}
    return layers


def select_modules(model: nn.Module, scope: str, target_modules: list[str]) -> tuple[dict[str, nn.Linear], list[str]]:
    """The ``nn.Linear`` matrices to prune, by readable name, and the target names the model has no LoRA on.

    lora: ``<module>.lora_A`` and ``<module>.lora_B`` of every LoRA layer whose name is a target (active adapter);
    full: every ``nn.Linear`` whose name is a target. Raises when nothing matches.
    """
    wanted = set(target_modules)
    every = ALL_LINEAR in wanted
    lora = _lora_layers(model)
    found: dict[str, nn.Linear] = {}
    if scope == "lora":
        if not lora:
            raise ValueError("scope=lora needs a model with LoRA layers (the unmerged fine-tuned model)")
        for name, layer in lora.items():
            short = name.rsplit(".", 1)[-1]
            if not (every or short in wanted):
                continue
            for adapter in layer.active_adapters:
                for part in ("lora_A", "lora_B"):
                    matrices = getattr(layer, part)  # an nn.ModuleDict (no .get)
                    if adapter in matrices and isinstance(matrices[adapter], nn.Linear):
                        found[f"{_readable(name)}.{part}"] = matrices[adapter]
        adapted = {name.rsplit(".", 1)[-1] for name in lora}
        missing = sorted(wanted - adapted - {ALL_LINEAR})
    elif scope == "full":
        if lora:
            raise ValueError("scope=full prunes merged weights; merge the LoRA adapter first (merge_and_unload)")
        output_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        for name, module in model.named_modules():
            short = name.rsplit(".", 1)[-1]
            if isinstance(module, nn.Linear) and module is not output_head and (every or short in wanted):
                found[name] = module
        missing = sorted(wanted - {n.rsplit(".", 1)[-1] for n in found} - {ALL_LINEAR})
    else:
        raise ValueError(f"unknown scope {scope!r}; expected lora or full")
    if not found:
        raise ValueError(f"no {scope} weights match target_modules={target_modules}")
    return found, missing


def load_unmerged_finetuned(stage: StageResult | None) -> Any:
    """Rebuild the fine-tuned model of a fine-tuning ``stage`` with its adapter unmerged: the stage's input
    (aligned) model + its adapter."""
    from peft import PeftModel

    if stage is None:
        raise ValueError(
            "scope=lora needs the fine-tuning adapter, but the input model comes from no fine-tuning stage; "
            "use scope=full, or repair the output of a LoRA fine-tuning stage"
        )
    adapter_dir = stage.info.get("adapter_dir")
    if stage.stage != "finetune" or not adapter_dir or not Path(adapter_dir).is_dir():
        raise ValueError(
            f"scope=lora needs the fine-tuning adapter, but the input stage {stage.directory} ({stage.stage}) "
            f"saved none (full fine-tuning?); use scope=full"
        )
    aligned, _ = load_model_and_tokenizer(ModelSettings(**stage.info["input_model"]))
    return PeftModel.from_pretrained(aligned, adapter_dir)


# ---------------------------------------------------------------------------------------------- internals
def _calibration_batches(
    records: list[Record], tokenizer: Any, template: PromptTemplate, params: AntidoteParams
) -> tuple[list[dict[str, torch.Tensor]], int]:
    n = params.num_calibration_samples
    if n is not None and n < len(records):
        records = random.Random(params.seed).sample(records, n)
    dataset, _ = tokenize_sft(records, tokenizer, template, params.max_length, "repair.realign_data")
    collate = SFTDataCollator(tokenizer.pad_token_id)
    rows = [dataset[i] for i in range(len(dataset))]
    batches = [collate(rows[i : i + params.batch_size]) for i in range(0, len(rows), params.batch_size)]
    return batches, len(rows)


def _lora_layers(model: nn.Module) -> dict[str, Any]:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def _readable(name: str) -> str:
    return name.removeprefix("base_model.model.")


ANTIDOTE = register_repair_method(
    RepairMethod(
        name="antidote",
        params_cls=AntidoteParams,
        repair=antidote_repair,
        data_roles=("realign_data",),
        summary="Antidote: zero the top-α Wanda-scored weights of the fine-tuning adapter on harmful data",
        paper="arXiv 2408.09600",
    )
)
