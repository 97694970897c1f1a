"""Lisa vs BSO vs SFT on the offline benchmark, with seeds.

The paper's claim to check: with few alignment steps (K_a/K_f = 1/9), Lisa's harmful score is well below SFT's
at nearly the same fine-tune accuracy, and Lisa beats BSO. Run by hand (minutes on 2 CPU cores):

    .venv/bin/python benchmarks/lisa_offline.py --seeds 0 1 2 --poison-ratio 0.2

Writes benchmarks/results/lisa_offline.md (mean ± std over seeds) and the per-run CSV next to it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tuneguard.grid import GridSpec, parse_grid, run_grid  # noqa: E402
from tuneguard.report import csv_text, mean_std_table, pipe_table, summarize, write_text_atomic  # noqa: E402
from tuneguard.results import collect_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METRICS = (("harmful_score", "HS (%)"), ("finetune_accuracy", "FA (%)"), ("compliance_probability", "P(comply) (%)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "examples" / "demo.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--poison-ratio", type=float, default=0.2)
    parser.add_argument("--alignment-steps", type=int, default=4, help="K_a per cycle")
    parser.add_argument("--finetune-steps", type=int, default=36, help="K_f per cycle")
    parser.add_argument("--rho", type=float, nargs="+", default=[1.0], help="Lisa proximal strengths to run")
    parser.add_argument("--output-dir", default="/tmp/tuneguard-bench/lisa")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "lisa_offline"))
    args = parser.parse_args()

    spec = grid_spec(args)
    run_grid(spec)
    rows = [
        {
            "method": r["variant"],
            "seed": r["seed"],
            "poison_ratio": r["poison_ratio"],
            **{k: r.get(k) for k, _ in METRICS},
            "wall_s": round(r["train_wall_s"] + r["eval_wall_s"], 1),
        }
        for r in collect_rows(spec.run_dir)
        if r["model"] == "final"
    ]
    summary = summarize(rows, ["method"], [k for k, _ in METRICS])
    header = (
        f"Offline benchmark, p = {args.poison_ratio}, K_a/K_f = {args.alignment_steps}/{args.finetune_steps}, "
        f"seeds {args.seeds} (mean ± std). Command: python benchmarks/lisa_offline.py "
        f"--seeds {' '.join(map(str, args.seeds))} --poison-ratio {args.poison_ratio} "
        f"--alignment-steps {args.alignment_steps} --finetune-steps {args.finetune_steps} "
        f"--rho {' '.join(f'{r:g}' for r in args.rho)}\n\n"
    )
    table = pipe_table(*mean_std_table(summary, ["method"], METRICS))
    write_text_atomic(args.results + ".md", header + table)
    write_text_atomic(args.results + ".csv", csv_text(rows))
    print(header + table)


def grid_spec(args: argparse.Namespace) -> GridSpec:
    """SFT, BSO and Lisa at each rho (the variants) x the seeds, at one poison ratio, as a grid."""
    schedule = {
        "finetune.alignment_data": "offline:alignment",
        "finetune.method_args.alignment_steps": args.alignment_steps,
        "finetune.method_args.finetune_steps": args.finetune_steps,
    }
    variants: dict[str, dict] = {"sft": {}, "bso": {"finetune.method": "bso", **schedule}}
    for rho in args.rho:
        variants[f"lisa rho={rho:g}"] = {"finetune.method": "lisa", **schedule, "finetune.method_args.rho": rho}
    grid = {
        "name": f"lisa_offline_p{args.poison_ratio:g}",
        "base": str(Path(args.config).resolve()),
        "set": {"output_dir": args.output_dir, "finetune.user_data.poison_ratio": args.poison_ratio},
        "variants": variants,
        "grid": {"seed": {"keys": ["finetune.user_data.seed", "finetune.training.seed"], "values": args.seeds}},
    }
    return parse_grid(grid, source=__file__)


if __name__ == "__main__":
    main()
