"""Alignment-stage defenses on the offline benchmark: HS / FA after the harmful fine-tuning attack.

For each seed and each alignment method (SFT, Vaccine, Booster, RepNoise), align the base model with that
method (``align.training.seed`` = seed), fine-tune the aligned model with plain SFT on the poisoned user data at
p = ``--poison-ratio`` (``finetune.user_data.seed`` = ``finetune.training.seed`` = seed), and evaluate the
aligned and the fine-tuned model. Booster and RepNoise take their harmful data from ``offline:realign``, which
the offline world keeps disjoint from the attack data (``offline:harmful``) and the evaluation prompts.
Prints mean ± std over seeds, and the alignment step time relative to SFT (the Trainer's ``train_runtime``
over its optimizer steps, same batch and step count for every method). Stages are cached under
``--output-dir``: re-running reuses finished stages (the runs form a grid, see ``tuneguard.grid``).

    .venv/bin/python benchmarks/alignment_defenses.py                       # 3 seeds, the 4 methods
    .venv/bin/python benchmarks/alignment_defenses.py --seeds 0 1 2 3 4 --methods sft booster

Paper claims to check: HS Booster << SFT, Vaccine < SFT at similar FA; step time ≈ 2x SFT for
Vaccine, ≈ 3x for Booster.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("sft", "vaccine", "booster", "repnoise")
NEEDS_HARMFUL = ("booster", "repnoise")
SEED_KEYS = ("align.training.seed", "finetune.user_data.seed", "finetune.training.seed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "examples" / "demo.yaml"))
    parser.add_argument("--output-dir", default="/tmp/tuneguard-bench-alignment")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--poison-ratio", type=float, default=0.2)
    parser.add_argument("--harmful-data", default="offline:realign", help="Booster/RepNoise align.harmful_data")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (keep the machine usable)")
    parser.add_argument("--override", action="append", default=[], help="extra key.sub=value config overrides")
    parser.add_argument("--json", help="also write the per-run rows to this file")
    options = parser.parse_args()

    import torch

    torch.set_num_threads(options.threads)
    rows = run_all(options)
    if options.json:
        Path(options.json).write_text(json.dumps(rows, indent=2))
    report(rows, options)


def grid_spec(options: argparse.Namespace):
    """The alignment methods (variants) x the seeds at one poison ratio, as a grid (``tuneguard.grid``)."""
    from tuneguard.grid import parse_grid

    variants = {
        method: {
            "align.method": method,
            **({"align.harmful_data": options.harmful_data} if method in NEEDS_HARMFUL else {}),
        }
        for method in options.methods
    }
    grid = {
        "name": f"alignment_defenses_p{options.poison_ratio:g}",
        "base": str(Path(options.config).resolve()),
        "set": {
            "output_dir": options.output_dir,
            "finetune.user_data.poison_ratio": options.poison_ratio,
            "evaluate": ["aligned", "final"],
        },
        "variants": variants,
        "grid": {"seed": {"keys": list(SEED_KEYS), "values": options.seeds}},
    }
    return parse_grid(grid, source=__file__, overrides=options.override)


def run_all(options: argparse.Namespace) -> list[dict]:
    """Run (or reuse) every cell; one row per cell with the aligned and the attacked model's metrics."""
    from tuneguard.grid import run_grid
    from tuneguard.results import collect_rows

    spec = grid_spec(options)
    run_grid(spec)
    models: dict[str, dict[str, dict]] = {}
    for r in collect_rows(spec.run_dir):
        models.setdefault(r["cell"], {})[r["model"]] = r
    rows = []
    for cell in models.values():
        aligned, final = cell["aligned"], cell["final"]
        align_dir = Path(final["align_dir"])
        history = json.loads((align_dir / "log_history.json").read_text())
        runtime = next(h["train_runtime"] for h in reversed(history) if "train_runtime" in h)
        steps = json.loads((align_dir / "stage.json").read_text())["metrics"]["global_step"]
        row = {
            "method": final["variant"],
            "seed": final["seed"],
            "hs_aligned": aligned["harmful_score"],
            "fa_aligned": aligned.get("finetune_accuracy"),
            "hs": final["harmful_score"],
            "fa": final.get("finetune_accuracy"),
            "align_steps": steps,
            "align_step_s": runtime / steps,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def report(rows: list[dict], options: argparse.Namespace) -> None:
    def stat(values: list[float]) -> str:
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.1f} ± {spread:.1f}"

    by_method = {m: [r for r in rows if r["method"] == m] for m in options.methods}
    sft_step = statistics.mean(r["align_step_s"] for r in by_method["sft"]) if by_method.get("sft") else None
    print(f"\np = {options.poison_ratio}, seeds {options.seeds}, mean ± std (HS, FA in %)")
    print("| align method | HS aligned | HS after attack | FA after attack | align step (ms) | step time / SFT |")
    print("|---|---|---|---|---|---|")
    for method, runs in by_method.items():
        step = statistics.mean(r["align_step_s"] for r in runs)
        ratio = f"{step / sft_step:.2f}x" if sft_step else "-"
        print(
            f"| {method} | {stat([r['hs_aligned'] for r in runs])} | {stat([r['hs'] for r in runs])} | "
            f"{stat([r['fa'] for r in runs])} | {1000 * step:.1f} | {ratio} |"
        )


if __name__ == "__main__":
    main()
