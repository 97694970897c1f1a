"""The offline demo: the harmful fine-tuning phenomenon, measured on the offline benchmark.

base -> alignment -> fine-tuning at several poison ratios p -> HS / FA per model. All stages are cached, so the
base and aligned models are trained and evaluated once however many ratios are run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneguard.config import ConfigError, ExperimentConfig
from tuneguard.models import prepare_model_files
from tuneguard.pipeline import run_experiment
from tuneguard.report import OFFLINE_NOTE, write_results
from tuneguard.store import StageResult


def run_demo(
    cfg: ExperimentConfig, poison_ratios: list[float], *, overwrite: bool = False
) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Run the pipeline for each poison ratio; return the table rows and the written result files."""
    if cfg.finetune is None:
        raise ConfigError("the demo needs a finetune stage in its config (finetune: is null)")
    # The offline world's base model is pre-trained on first use (then cached): one-off work, timed apart from
    # the stages so that the table's times are the models' own.
    setup_s = prepare_model_files(cfg.model)
    note = OFFLINE_NOTE
    if setup_s >= 1.0:
        note += f" Before the stages, the base model was built in {setup_s:.0f} s (once; cached for later runs)."
    rows: list[dict[str, Any]] = []
    for i, ratio in enumerate(poison_ratios):
        run_cfg = cfg.model_copy(deep=True)
        run_cfg.finetune.user_data.poison_ratio = ratio
        run_cfg.evaluate = ["base", "aligned", "final"] if i == 0 else ["final"]
        # overwrite only on the first pass; later passes must reuse the freshly computed shared stages
        result = run_experiment(run_cfg, overwrite=overwrite and i == 0)
        if i == 0:
            rows.append(_row("base", "-", None, result.evaluations["base"], None))
            if "aligned" in result.evaluations:
                rows.append(
                    _row(
                        "aligned",
                        run_cfg.align.method,
                        None,
                        result.evaluations["aligned"],
                        result.stages["align"],
                    )
                )
        rows.append(
            _row(
                "fine-tuned",
                run_cfg.finetune.method,
                ratio,
                result.evaluations["final"],
                result.stages["finetune"],
            )
        )
    return rows, write_results(rows, cfg.output_dir, stem="results", note=note)


def _row(model: str, method: str, ratio: float | None, ev: StageResult, trained: StageResult | None) -> dict:
    m = ev.metrics
    wall = ev.info.get("timings", {}).get("wall_s", 0.0)
    if trained is not None:
        wall += trained.info.get("timings", {}).get("wall_s", 0.0)
    return {
        "model": model,
        "method": method,
        "poison_ratio": ratio,
        "harmful_score": m.get("harmful_score"),
        "finetune_accuracy": m.get("finetune_accuracy"),
        "compliance_probability": m.get("compliance_probability"),
        "judge": m.get("judge"),
        "wall_s": wall,
        "flags": m.get("flags"),
        "eval_dir": str(ev.directory),
    }
