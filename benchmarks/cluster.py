"""Grid on Ray (or on `grid --jobs` workers) vs serial: the efficacy grid (benchmarks/efficacy.yaml) with one seed,
run serially (one process, one torch thread, as benchmarks/efficacy.py) and on a local Ray instance with 2 workers
(one CPU, so one torch thread, each), each from an empty output_dir. Reports the wall time of each, the speed-up,
the Ray instance's start-up, and whether the two results stores agree (same cells, same numbers). Writes
benchmarks/results/cluster.md:

    nice -n 10 .venv/bin/python benchmarks/cluster.py                           # 7 variants x 4 ratios, seed 0
    nice -n 10 .venv/bin/python benchmarks/cluster.py --variants sft vaccine     # a smaller slice
    .venv/bin/python benchmarks/cluster.py --engine jobs --results benchmarks/results/cluster_jobs.md

``--engine jobs`` runs the parallel side on `grid --jobs` workers (spawned processes, one torch thread each)
instead of Ray; ``--serial-s S`` reuses the serial store of an earlier run (its wall time S) instead of
computing it again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = Path("/tmp/tuneguard-bench/cluster")
# Result columns that say where and when a row was computed (they differ between the two runs), not what.
RUN_COLUMNS = ("wall_s", "_dir", "finished_at", "version_", "cell")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="*", help="run only these variants of the grid (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray instance (1 per task)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "cluster.md"))
    parser.add_argument("--engine", choices=("ray", "jobs"), default="ray", help="the parallel side")
    parser.add_argument("--serial-s", type=float, help="reuse the serial store of an earlier run (its wall time)")
    options = parser.parse_args()

    import torch
    import transformers

    from tuneguard.grid import expand_grid, load_grid, run_grid
    from tuneguard.gridexec.executor import run_grid_with
    from tuneguard.gridexec.local_backend import LocalExecutor
    from tuneguard.gridexec.plan import plan_stages
    from tuneguard.report import write_text_atomic

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    specs = {}
    for engine in ("serial", options.engine):
        if engine != "serial" or options.serial_s is None:
            shutil.rmtree(OUTPUT / engine, ignore_errors=True)  # each run starts from an empty store
        spec = load_grid(ROOT / "benchmarks" / "efficacy.yaml", [f"output_dir={OUTPUT / engine}"])
        if options.variants:
            spec.variants = {k: v for k, v in spec.variants.items() if k in options.variants}
        spec.axes = [dataclasses.replace(a, values=(options.seed,)) if a.name == "seed" else a for a in spec.axes]
        specs[engine] = spec
    cells = expand_grid(specs["serial"])
    shared = len(plan_stages(cells).nodes)

    start = time.time()
    if options.serial_s is None:
        run_grid(specs["serial"])
    serial_s = time.time() - start if options.serial_s is None else options.serial_s

    start, startup_s = time.time(), 0.0
    if options.engine == "ray":
        import ray

        from tuneguard.gridexec.ray_backend import RayExecutor

        ray.init(num_cpus=options.workers, include_dashboard=False, log_to_driver=False)
        startup_s = time.time() - start
        run_grid_with(RayExecutor(report=False), specs["ray"])
        ray.shutdown()
    else:
        run_grid_with(LocalExecutor(jobs=options.workers, threads=1, report=False), specs["jobs"])
    parallel_s = time.time() - start

    speedup = f"{serial_s / parallel_s:.2f}x"
    same = rows(specs["serial"].run_dir) == rows(specs[options.engine].run_dir)
    variants = ", ".join(specs["serial"].variants)
    load = os.getloadavg()
    command = "nice -n 10 .venv/bin/python benchmarks/cluster.py"
    if options.variants:
        command += " --variants " + " ".join(options.variants)
    if options.engine == "jobs":
        command += f" --engine jobs --results {options.results}"
    if options.serial_s is not None:
        command += f" --serial-s {options.serial_s:g}"
    parallel = (
        f"local Ray, {options.workers} workers (1 CPU, 1 torch thread each), with start-up"
        if options.engine == "ray"
        else f"`grid --jobs {options.workers}` (spawned processes, 1 torch thread each), with start-up"
    )
    serial_note = " (an earlier run's store, reused)" if options.serial_s is not None else ""
    startup_row = f"| of which: starting the Ray instance | {startup_s:.0f} s | |\n" if options.engine == "ray" else ""
    text = f"""# Grid on {"local Ray" if options.engine == "ray" else "local workers (grid --jobs)"} vs serial

Command: `{command}`
(`{time.strftime("%Y-%m-%d %H:%M")}`, {os.cpu_count()} CPU cores; load average at the end {load[0]:.1f}).

The efficacy grid (benchmarks/efficacy.yaml) with seed {options.seed} only: variants {variants} x 4 poison
ratios = {len(cells)} cells, of which {shared} stages are shared by several cells (aligned models, their
evaluations, the SFT model that Antidote repairs). Each run starts from an empty output_dir.

| run | wall time | speed-up |
|---|---|---|
| serial (`run_grid`, one process, 1 torch thread){serial_note} | {serial_s:.0f} s | 1.00x |
| {parallel} | {parallel_s:.0f} s | {speedup} |
{startup_row}
Results stores identical (same cells, same HS/FA/losses; only paths and times differ): {"yes" if same else "NO"}.
"""
    write_text_atomic(options.results, text)
    print(text)


def rows(run_dir: Path) -> list[dict]:
    lines = (run_dir / "results.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(x).items() if not any(p in k for p in RUN_COLUMNS)} for x in lines]


if __name__ == "__main__":
    main()
