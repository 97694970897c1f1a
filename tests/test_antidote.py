"""Antidote (arXiv 2408.09600): Wanda scores from hooks, top-α masks per group, LoRA/full scope, the repair
stage and its disjointness check, on hand-set layers and tiny random models."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_llama, write_jsonl
from torch import nn

from tuneguard.config import ExperimentConfig, RepairConfig
from tuneguard.data import DataError, SFTDataCollator, resolve_template
from tuneguard.methods._wanda import InputNormCollector, collect_input_norms, removed_count, top_fraction_masks
from tuneguard.methods.antidote import (
    AntidoteParams,
    antidote_prune,
    load_unmerged_finetuned,
    prune_modules,
    select_modules,
)
from tuneguard.pipeline import run_experiment
from tuneguard.stages import check_disjoint_prompts, run_repair
from tuneguard.store import STAGE_FILE, ModelRef

# Hand-set layers. Inputs: two real tokens and one padding token; ||X_j||₂ over the real tokens = (1, 2, 3, 4).
TOKENS = torch.tensor([[[1.0, 2.0, 0.0, 4.0], [0.0, 0.0, 3.0, 0.0], [100.0, 100.0, 100.0, 100.0]]])
TOKEN_MASK = torch.tensor([[True, True, False]])
W1 = [[3.0, 2.5, 2.0, 0.5], [0.1, 0.2, 0.3, -2.0]]  # Wanda scores: [[3, 5, 6, 2], [0.1, 0.4, 0.9, 8]]
W2 = [[1.0, 1.0, 1.0, 1.0]]  # Wanda scores: [[1, 2, 3, 4]]


def _hand_set_layers() -> dict[str, nn.Linear]:
    layers = {}
    for name, weight in (("first", W1), ("second", W2)):
        layer = nn.Linear(4, len(weight), bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.tensor(weight))
        layers[name] = layer
    return layers


def _zeroed_after_pruning(**params) -> dict[str, set[tuple[int, int]]]:
    layers = _hand_set_layers()
    with InputNormCollector(layers) as collector:
        collector.token_mask = TOKEN_MASK
        for layer in layers.values():
            layer(TOKENS)
    norms = collector.norms()
    assert torch.allclose(norms["first"], torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    prune_modules(layers, AntidoteParams(**params), norms)
    return {name: {tuple(ix) for ix in (layer.weight == 0).nonzero().tolist()} for name, layer in layers.items()}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        # two of four per row: the row's two largest |W|·||X||
        (
            {"grouping": "per_row", "mask_ratio": 0.5},
            {"first": {(0, 2), (0, 1), (1, 3), (1, 2)}, "second": {(0, 3), (0, 2)}},
        ),
        # four of eight in "first": 8, 6, 5, 3 (three from row 0), two of four in "second"
        (
            {"grouping": "per_layer", "mask_ratio": 0.5},
            {"first": {(1, 3), (0, 2), (0, 1), (0, 0)}, "second": {(0, 3), (0, 2)}},
        ),
        # three of all twelve: 8, 6, 5, all in "first"; "second" keeps every weight
        ({"grouping": "global", "mask_ratio": 0.25}, {"first": {(1, 3), (0, 2), (0, 1)}, "second": set()}),
        # |W| only: row 0's largest is 3.0 at column 0 (Wanda picks column 2); equal weights: the first index
        (
            {"grouping": "per_row", "mask_ratio": 0.25, "score": "magnitude"},
            {"first": {(0, 0), (1, 3)}, "second": {(0, 0)}},
        ),
    ],
)
def test_exactly_the_top_scored_weights_of_each_group_are_zeroed(params, expected):
    assert _zeroed_after_pruning(**params) == expected


def test_random_mask_removes_the_same_number_per_row_and_depends_on_the_seed():
    masks = [_zeroed_after_pruning(score="random", mask_ratio=0.5, seed=s)["first"] for s in (0, 0, 1, 2, 3)]
    assert masks[0] == masks[1]
    assert all(sum(r == row for r, _ in m) == 2 for m in masks for row in (0, 1))
    assert len({frozenset(m) for m in masks}) > 1


def test_removed_count_is_the_ceiling_of_ratio_times_group_size():
    assert [removed_count(0.1, n) for n in (8, 10, 4096)] == [1, 1, 410]
    assert removed_count(0.0, 100) == 0 and removed_count(0.05, 20) == 1 and removed_count(0.3, 10) == 3
    masks = top_fraction_masks({"x": torch.arange(10.0).reshape(1, 10)}, 0.3, "per_row")
    assert masks["x"].nonzero()[:, 1].tolist() == [7, 8, 9]


def test_hook_norms_equal_a_direct_computation_with_padding_masked_out(world_tokenizer):
    model = build_tiny_llama(len(world_tokenizer), seed=1)
    model.eval()
    modules = {
        "q0": model.model.layers[0].self_attn.q_proj,
        "v1": model.model.layers[1].self_attn.v_proj,
        "down1": model.model.layers[1].mlp.down_proj,
    }
    sequences = [[5, 9, 13, 7, 22, 8], [30, 4], [11, 12, 40, 41]]
    pad = world_tokenizer.pad_token_id
    batch = SFTDataCollator(pad)([{"input_ids": s, "attention_mask": [1] * len(s), "labels": s} for s in sequences])
    assert (batch["attention_mask"] == 0).any()
    norms, tokens = collect_input_norms(model, modules, [batch])
    assert tokens == sum(map(len, sequences))

    # direct: each sequence alone (no padding at all), full inputs stored, sum of squares per feature
    stored: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    handles = [
        m.register_forward_hook(lambda mod, args, out, name=name: stored[name].append(args[0][0].clone()))
        for name, m in modules.items()
    ]
    with torch.no_grad():
        for s in sequences:
            model(input_ids=torch.tensor([s]))
    for h in handles:
        h.remove()
    for name in modules:
        direct = torch.cat(stored[name]).double().pow(2).sum(0).sqrt()
        assert torch.allclose(norms[name], direct, rtol=1e-5, atol=1e-6), name


def test_lora_scope_prunes_only_lora_a_and_b_of_the_target_modules(world_tokenizer):
    from peft import LoraConfig, get_peft_model

    base = build_tiny_llama(len(world_tokenizer), seed=2)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    records = [{"id": str(i), "prompt": "give me steps", "response": "sure . step one"} for i in range(3)]
    params = AntidoteParams(mask_ratio=0.2, batch_size=2)
    stats = antidote_prune(model, world_tokenizer, records, params, resolve_template("auto", world_tokenizer))

    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    targets = {"q_proj", "k_proj", "v_proj"}
    assert changed and all(("lora_A" in k or "lora_B" in k) and k.split(".")[-4] in targets for k in changed)
    assert len(changed) == 2 * 3 * 2  # A and B of q, k, v in both layers
    per_matrix = {"lora_A": 4 * removed_count(0.2, 32), "lora_B": 32 * removed_count(0.2, 4)}  # ⌈0.2·in⌉ per row
    assert all(v["removed"] == per_matrix[name.rsplit(".", 1)[-1]] for name, v in stats["layers"].items())
    assert set(stats["layers"]) == {
        f"model.layers.{i}.self_attn.{m}.{p}" for i in (0, 1) for m in targets for p in ("lora_A", "lora_B")
    }
    assert stats["calibration_tokens"] > 0 and stats["calibration_samples"] == 3 and stats["not_adapted"] == []


def test_full_scope_selects_the_merged_linear_weights_and_refuses_an_unmerged_model(world_tokenizer):
    from peft import LoraConfig, get_peft_model

    model = build_tiny_llama(len(world_tokenizer))
    modules, missing = select_modules(model, "full", ["q_proj", "o_proj", "nope"])
    assert sorted(modules) == [f"model.layers.{i}.self_attn.{m}" for i in (0, 1) for m in ("o_proj", "q_proj")]
    assert missing == ["nope"]
    assert "lm_head" not in select_modules(model, "full", ["all-linear"])[0]
    with pytest.raises(ValueError, match="merge the LoRA adapter first"):
        select_modules(get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])), "full", ["q_proj"])


def test_overlapping_prompts_are_refused_naming_counts_and_sources():
    records = [{"id": "r1", "prompt": "How to  Hide a body?"}, {"id": "r2", "prompt": "another one"}]
    others = {"attack data": ["how to hide a body?", "x"], "eval prompts": ["y"]}
    with pytest.raises(DataError, match=r"1 with attack data \(2 prompts; e.g. ids r1\)"):
        check_disjoint_prompts(records, others, "repair.realign_data")
    assert check_disjoint_prompts(records[1:], others, "here") == {
        "attack data": {"prompts": 2, "shared": 0},
        "eval prompts": {"prompts": 1, "shared": 0},
    }


# ------------------------------------------------------------------------------------- the repair stage
@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, tiny_model_dir):
    """One aligned + LoRA-fine-tuned tiny model (shared by the stage tests) and its experiment config."""
    from tuneguard.world import get_world

    root = tmp_path_factory.mktemp("antidote")
    world = get_world()
    files = {
        role: write_jsonl(root / f"{role}.jsonl", world.records(role, n))
        for role, n in {"alignment": 16, "harmful": 24, "realign": 12, "harmful_eval": 8, "task_train": 24}.items()
    }
    training = {"max_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 1e-2, "disable_tqdm": True}
    cfg = ExperimentConfig.model_validate(
        {
            "output_dir": str(root / "runs"),
            "model": {"model_name_or_path": str(tiny_model_dir)},
            "align": {"alignment_data": str(files["alignment"]), "training": training, "lora": {"r": 4}},
            "finetune": {
                "user_data": {
                    "task_data": str(files["task_train"]),
                    "harmful_data": str(files["harmful"]),
                    "num_samples": 20,
                    "poison_ratio": 0.5,
                },
                "training": training,
                "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]},
            },
            "repair": {"method": "antidote", "realign_data": str(files["realign"])},
            "eval": {"harmful_prompts": str(files["harmful_eval"]), "task_test": None, "judges": ["refusal"]},
        }
    )
    stage = run_experiment(cfg, until="finetune").stages["finetune"]
    return cfg, stage, files


def _weights(model_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_repair_stage_writes_the_mask_statistics_and_changes_only_the_target_weights(finetuned):
    cfg, ft, _ = finetuned
    result = run_repair(cfg.repair, ModelRef.from_stage(ft), cfg.output_dir)
    info = json.loads((result.directory / STAGE_FILE).read_text())
    stats = info["metrics"]
    assert stats["scope"] == "lora" and stats["grouping"] == "per_row" and stats["mask_ratio"] == 0.1
    assert stats["not_adapted"] == ["k_proj"]  # the fine-tuning adapter has no k_proj
    assert set(stats["layers"]) == {
        f"model.layers.{i}.self_attn.{m}.{p}"
        for i in (0, 1)
        for m in ("q_proj", "v_proj")
        for p in ("lora_A", "lora_B")
    }
    assert stats["removed"] == sum(v["removed"] for v in stats["layers"].values()) > 0
    assert 10 <= stats["share_removed"] <= 30  # ⌈0.1·32⌉/32 of A, ⌈0.1·4⌉/4 of B
    assert stats["calibration_samples"] == 12 and stats["calibration_tokens"] > 12 and stats["template"] == "chat"
    assert set(info["disjointness"]) == {f"the attack data ({ft.directory / 'train_mix.jsonl'})"}
    assert info["disjointness"][next(iter(info["disjointness"]))] == {"prompts": 10, "shared": 0}

    before, after = _weights(ft.model_dir), _weights(result.model_dir)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"model.layers.{i}.self_attn.{m}.weight" for i in (0, 1) for m in ("q_proj", "v_proj")}


def test_mask_ratio_zero_leaves_the_model_bit_identical(finetuned):
    cfg, ft, _ = finetuned
    repair = cfg.repair.model_copy(update={"method_args": {"mask_ratio": 0.0}})
    result = run_repair(repair, ModelRef.from_stage(ft), cfg.output_dir)
    before, after = _weights(ft.model_dir), _weights(result.model_dir)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert result.metrics["removed"] == 0


def test_the_rebuilt_unpruned_adapter_reproduces_the_finetuned_model_exactly(finetuned):
    _, ft, _ = finetuned
    rebuilt = load_unmerged_finetuned(ft).merge_and_unload().state_dict()
    saved = _weights(ft.model_dir)
    assert all(torch.equal(rebuilt[k], saved[k]) for k in saved)


def test_full_scope_repair_prunes_the_merged_weights(finetuned):
    cfg, ft, _ = finetuned
    repair = cfg.repair.model_copy(update={"method_args": {"scope": "full", "grouping": "global", "mask_ratio": 0.05}})
    result = run_repair(repair, ModelRef.from_stage(ft), cfg.output_dir)
    stats = result.metrics
    assert len(stats["layers"]) == 6 and stats["removed"] == removed_count(0.05, stats["total"])
    before, after = _weights(ft.model_dir), _weights(result.model_dir)
    assert sum(int((after[f"{name}.weight"] == 0).sum()) for name in stats["layers"]) == stats["removed"]
    assert all(torch.equal(before[k], after[k]) for k in before if k.removesuffix(".weight") not in stats["layers"])


def test_realign_data_overlapping_the_attack_data_is_refused(finetuned):
    cfg, ft, files = finetuned
    repair = RepairConfig(method="antidote", realign_data=str(files["harmful"]))  # the attack's own pool
    with pytest.raises(DataError, match=r"re-alignment records share prompts: \d+ with the attack data"):
        run_repair(repair, ModelRef.from_stage(ft), cfg.output_dir)


def test_the_pipeline_refuses_realign_data_that_contains_evaluation_prompts(finetuned, tmp_path):
    cfg, _, files = finetuned
    rows = [json.loads(x) for x in files["harmful_eval"].read_text().splitlines()[:2]]
    mixed = write_jsonl(
        tmp_path / "mixed.jsonl", [{**r, "response": "sure .", "id": f"m{i}"} for i, r in enumerate(rows)]
    )
    bad = cfg.model_copy(update={"repair": RepairConfig(method="antidote", realign_data=str(mixed))})
    with pytest.raises(DataError, match=r"repair\.realign_data and eval\.harmful_prompts share 2 prompts"):
        run_experiment(bad, until="repair")
