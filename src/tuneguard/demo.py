"""The offline demo: the harmful fine-tuning phenomenon, measured on the offline benchmark.

base -> alignment -> fine-tuning at several poison ratios p -> HS / FA per model. All stages are cached, so the
base and aligned models are trained and evaluated once however many ratios are run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneguard.config import ConfigError, ExperimentConfig, dump_config
from tuneguard.models import prepare_model_files
from tuneguard.pipeline import ExperimentResult, run_experiment
from tuneguard.report import OFFLINE_NOTE, write_results
from tuneguard.results import ResultRow, result_row

# The demo's name of each evaluated model and the stage that trained it (its time is the model's own).
_SHOWN = {"base": ("base", None), "aligned": ("aligned", "align"), "final": ("fine-tuned", "finetune")}


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
        for model in run_cfg.evaluate:
            if model in result.evaluations:
                rows.append(_table_row(_result_row(run_cfg, result, model), result))
    return rows, write_results(rows, cfg.output_dir, stem="results", note=note)


def _result_row(cfg: ExperimentConfig, result: ExperimentResult, model: str) -> ResultRow:
    evaluation = result.evaluations[model]
    return result_row(
        {"model": model},
        dump_config(cfg),
        evaluation.info,
        evaluation.directory,
        {name: r.info for name, r in result.stages.items()},
        {name: str(r.directory) for name, r in result.stages.items()},
    )


def _table_row(row: ResultRow, result: ExperimentResult) -> dict[str, Any]:
    """The demo table's columns of a results row: the model's own method, and its own time (its evaluation and
    the one stage that trained it; a cached stage counts with the time it took when computed)."""
    name, trained_by = _SHOWN[row["model"]]
    wall = row["eval_wall_s"]
    if trained_by is not None:
        wall += result.stages[trained_by].info.get("timings", {}).get("wall_s", 0.0)
    return {
        "model": name,
        "method": {"base": "-", "aligned": row["align_method"], "final": row["finetune_method"]}[row["model"]],
        "poison_ratio": row["poison_ratio"] if row["model"] == "final" else None,
        "harmful_score": row.get("harmful_score"),
        "finetune_accuracy": row.get("finetune_accuracy"),
        "compliance_probability": row.get("compliance_probability"),
        "over_refusal_rate": row.get("over_refusal_rate"),
        "harmful_preference": row.get("harmful_preference"),
        "compliance_margin": row.get("compliance_margin"),
        "compliance_margin_ci": row.get("compliance_margin_ci"),
        "judge": row.get("judge"),
        "wall_s": wall,
        "flags": row.get("flags"),
        "eval_dir": row["eval_dir"],
    }
