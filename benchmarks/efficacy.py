"""The efficacy benchmark: every registered defense on the offline benchmark, as one grid (benchmarks/efficacy.yaml).

Alignment-stage SFT / Vaccine / Booster / RepNoise followed by the SFT attack, fine-tuning-stage BSO / Lisa on the
SFT-aligned model, and Antidote repair after the SFT attack, at p in {0, 0.05, 0.1, 0.2} and 3 seeds. The grid is
resumable (a finished cell is skipped; stop it and run it again to continue). Writes the grid's results store
and report under ``<output_dir>/grids/efficacy/``, the report's Markdown to benchmarks/results/efficacy.md
and its plots to benchmarks/results/efficacy/ (a hand-written "## Reading" section of the previous file is kept):

    nice -n 15 .venv/bin/python benchmarks/efficacy.py
    nice -n 15 .venv/bin/python benchmarks/efficacy.py --override finetune.training.num_train_epochs=2  # quicker

The same as ``tuneguard grid benchmarks/efficacy.yaml`` with one torch thread (the machine is shared). Another grid
file runs the same way (``--grid benchmarks/real_smollm2.yaml --results benchmarks/results/real_smollm2.md``).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
READING = re.compile(r"^## Reading", re.MULTILINE)  # a results file's hand-written section, kept on a rewrite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default=str(ROOT / "benchmarks" / "efficacy.yaml"))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (keep the machine usable)")
    parser.add_argument("--shard", help="i/n: run part i of n (several processes sharing output_dir)")
    parser.add_argument("--override", action="append", default=[], help="key.sub=value for the base config")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "efficacy.md"))
    parser.add_argument(
        "--report-only", action="store_true", help="run no cell: report the finished ones (cells run elsewhere)"
    )
    options = parser.parse_args()

    import torch
    import transformers

    from tuneguard.grid import load_grid, parse_shard, run_grid
    from tuneguard.report import write_text_atomic

    torch.set_num_threads(options.threads)
    transformers.logging.set_verbosity_error()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    spec = load_grid(options.grid, options.override)
    run_dir = spec.run_dir
    if not options.report_only:
        start = time.time()
        outcome = run_grid(spec, shard=parse_shard(options.shard) if options.shard else None)
        print(f"ran {len(outcome.ran)} cells, skipped {len(outcome.skipped)} finished, {time.time() - start:.0f} s")
        run_dir = outcome.run_dir
    from tuneguard.report_page import build_report  # after the grid: a report bug never costs a run

    files = build_report(run_dir)
    command = "nice -n 15 .venv/bin/python benchmarks/efficacy.py"
    for flag, value in (("--grid", options.grid), ("--results", options.results)):
        if value != parser.get_default(flag.lstrip("-")):
            path = Path(value).resolve()
            command += f" {flag} {path.relative_to(ROOT) if path.is_relative_to(ROOT) else value}"
    command += "".join(f" --override {o}" for o in options.override)
    # The plots go next to the results file, and the report's links are pointed at them.
    results = Path(options.results)
    plots = results.with_suffix("")
    shutil.copytree(run_dir / "plots", plots, dirs_exist_ok=True)
    text = files["markdown"].read_text(encoding="utf-8").replace("](plots/", f"]({plots.name}/")
    # A hand-written "## Reading" section of the previous results file (the verdicts per claim) is kept, below.
    previous = results.read_text(encoding="utf-8") if results.is_file() else ""
    reading = previous[found.start() :] if (found := READING.search(previous)) else ""
    write_text_atomic(results, f"Command: `{command}` (report: {files['html']})\n\n{text.rstrip()}\n\n{reading}")
    print(f"wrote {files['markdown']}, {files['html']} and {options.results}")


if __name__ == "__main__":
    main()
