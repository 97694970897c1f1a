"""Why Booster's own alignment leaves harm on the offline benchmark.

On the offline world, right after its alignment Booster (lambda = 5, alpha = 0.1, one epoch) leaves HS ~20 % where
SFT alignment leaves 0 %, and it does not make the model more robust to the attack. This sweeps Booster's lambda
and alpha and the alignment length, and reads, from every alignment run's log history, the harmful loss h(w) on
the harmful batches at the start and at the end of alignment, and the drop h(w) - h(w') of the simulated harmful
step that Booster's term lambda * (h(w) - h(w')) minimises. lambda = 0 is exactly SFT alignment (the correction is
zero and the harmful loader never touches the global RNG) that still logs h(w): the control.

    nice -n 15 .venv/bin/python benchmarks/booster_anomaly.py                  # lambda x alpha x epochs, seed 0
    nice -n 15 .venv/bin/python benchmarks/booster_anomaly.py --seeds 0 1 --epochs 1

Each cell aligns with Booster, then attacks with SFT fine-tuning at p = --poison-ratio; both the aligned and the
attacked model are evaluated. Stages are cached under --output-dir, so a rerun only computes new cells.
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
SEED_KEYS = ("align.training.seed", "finetune.user_data.seed", "finetune.training.seed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "examples" / "demo.yaml"))
    parser.add_argument("--output-dir", default="/tmp/tuneguard-bench-booster")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 1.0, 5.0])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--epochs", type=float, nargs="+", default=[1.0, 3.0], help="alignment epochs")
    parser.add_argument("--poison-ratio", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the per-cell rows to this file")
    options = parser.parse_args()

    import torch

    torch.set_num_threads(options.threads)
    rows = run_all(options)
    if options.json:
        Path(options.json).write_text(json.dumps(rows, indent=2))
    report(rows, options)


def grid_spec(options: argparse.Namespace):
    """Booster settings (variants; lambda = 0 once, it ignores alpha) x alignment epochs x seeds, as a grid."""
    from tuneguard.grid import parse_grid

    variants = {}
    for lamb in options.lambdas:
        for alpha in options.alphas if lamb > 0 else options.alphas[:1]:
            variants[f"lambda{lamb:g}_alpha{alpha:g}"] = {
                "align.method": "booster",
                "align.harmful_data": "offline:realign",
                "align.method_args": {"lamb": lamb, "alpha": alpha},
            }
    grid = {
        "name": f"booster_anomaly_p{options.poison_ratio:g}",
        "base": str(Path(options.config).resolve()),
        "set": {
            "output_dir": options.output_dir,
            "finetune.user_data.poison_ratio": options.poison_ratio,
            "evaluate": ["aligned", "final"],
            "align.training.logging_steps": 1,  # h(w) at every step: the start and the end of alignment
        },
        "variants": variants,
        "grid": {
            "align.training.num_train_epochs": options.epochs,
            "seed": {"keys": list(SEED_KEYS), "values": options.seeds},
        },
    }
    return parse_grid(grid, source=__file__)


def run_all(options: argparse.Namespace) -> list[dict]:
    from tuneguard.grid import run_grid
    from tuneguard.results import collect_rows

    spec = grid_spec(options)
    run_grid(spec, resume=True)  # a killed run continues its interrupted stage
    cells: dict[str, dict[str, dict]] = {}
    for r in collect_rows(spec.run_dir):
        cells.setdefault(r["cell"], {})[r["model"]] = r
    rows = []
    for cell in cells.values():
        aligned, final = cell["aligned"], cell["final"]
        history = json.loads((Path(final["align_dir"]) / "log_history.json").read_text())
        logged = [h for h in history if "booster/harmful_loss" in h]
        first, last = logged[0], logged[-1]
        row = {
            "variant": final["variant"],
            "epochs": final["align.training.num_train_epochs"],
            "seed": final["seed"],
            "hs_aligned": aligned["harmful_score"],
            "hs_attacked": final["harmful_score"],
            "fa_attacked": final.get("finetune_accuracy"),
            "harmful_loss_start": first["booster/harmful_loss"],
            "harmful_loss_end": last["booster/harmful_loss"],
            "drop_start": first["booster/harmful_loss_drop"],
            "drop_end": last["booster/harmful_loss_drop"],
            "alignment_loss_end": last["loss"],
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def report(rows: list[dict], options: argparse.Namespace) -> None:
    def mean(values: list[float]) -> str:
        values = [v for v in values if v is not None]
        return f"{statistics.mean(values):.2f}" if values else "-"

    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["epochs"]), []).append(r)
    print(f"\np = {options.poison_ratio}, seeds {options.seeds}; means over seeds (HS, FA in %; losses in nats/token)")
    print(
        "| Booster setting | align epochs | HS aligned | HS attacked | FA attacked | h(w) start -> end | "
        "h(w) - h(w') start -> end | alignment loss end |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (variant, epochs), runs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(
            f"| {variant.replace('_', ', ')} | {epochs:g} | {mean([r['hs_aligned'] for r in runs])} | "
            f"{mean([r['hs_attacked'] for r in runs])} | {mean([r['fa_attacked'] for r in runs])} | "
            f"{mean([r['harmful_loss_start'] for r in runs])} -> {mean([r['harmful_loss_end'] for r in runs])} | "
            f"{mean([r['drop_start'] for r in runs])} -> {mean([r['drop_end'] for r in runs])} | "
            f"{mean([r['alignment_loss_end'] for r in runs])} |"
        )


if __name__ == "__main__":
    main()
