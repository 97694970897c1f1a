"""The report of a grid run, built from a fixture results store: tables, bootstrap intervals, plots, HTML."""

from __future__ import annotations

import json
import random
import re
import statistics

import pytest

from tuneguard.report import bootstrap_ci, format_mean_std, summarize
from tuneguard.report_page import build_report
from tuneguard.results import result_row

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RATIOS = (0.0, 0.1, 0.2)
SEEDS = (0, 1, 2)


@pytest.fixture
def run_dir(tmp_path):
    """A grid run directory as `tuneguard grid` leaves it: grid.json, results.jsonl, a Lisa log history."""
    rng = random.Random(0)
    history = tmp_path / "finetune" / "lisa" / "log_history.json"
    history.parent.mkdir(parents=True)
    history.write_text(
        json.dumps(
            [
                {
                    "step": s,
                    "loss": 1 / s,
                    "lisa/state": float(s % 4 == 0),
                    "lisa/alignment_loss": 0.5 / s,
                    "lisa/drift": 0.01 * s,
                    "lisa/grad_norm": 1.0 + 0.1 * s,
                }
                for s in range(1, 21)
            ]
            + [{"step": 20, "train_runtime": 3.0, "train_loss": 0.2}]
        )
    )
    rows = []
    for variant in ("sft", "lisa"):
        for p in RATIOS:
            for seed in SEEDS:
                rows.append(
                    {
                        "grid": "fixture",
                        "cell": f"{variant}-{p}-{seed}",
                        "model": "final",
                        "variant": variant,
                        "finetune.user_data.poison_ratio": p,
                        "seed": seed,
                        "align_method": "sft",
                        "finetune_method": variant,
                        "repair_method": "none",
                        "poison_ratio": p,
                        "harmful_score": (400 if variant == "sft" else 50) * p + rng.uniform(0, 5),
                        "finetune_accuracy": 85 + rng.uniform(0, 10),
                        "judge": "offline",
                        "protocol": "tuneguard-offline",
                        "version_torch": "2.x",
                        "finetune_dir": str(history.parent),
                        "eval_dir": f"/eval/{variant}-{p}-{seed}",
                    }
                )
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    grid = {
        "name": "fixture",
        "columns": ["variant", "finetune.user_data.poison_ratio", "seed"],
        "cells": 18,
        "axes": [
            {"name": "finetune.user_data.poison_ratio", "keys": ["finetune.user_data.poison_ratio"]},
            {"name": "seed", "keys": ["align.training.seed", "finetune.training.seed"]},
        ],
    }
    (tmp_path / "grid.json").write_text(json.dumps(grid))
    return tmp_path


def fixture_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def test_report_table_gives_mean_std_and_bootstrap_interval_per_method_and_ratio(run_dir):
    markdown = build_report(run_dir)["markdown"].read_text()
    rows = fixture_rows(run_dir)
    for variant in ("sft", "lisa"):
        for p in RATIOS:
            hs = [r["harmful_score"] for r in rows if r["variant"] == variant and r["poison_ratio"] == p]
            low, high = bootstrap_ci(hs)
            cell = f"{statistics.fmean(hs):.1f} ± {statistics.stdev(hs):.1f} [{low:.1f}, {high:.1f}]"
            assert re.search(rf"\| {variant} \| {p} \| 3 \| {re.escape(cell)} \|", markdown), cell


def test_report_says_the_offline_benchmark_is_a_simulation_and_names_protocol_and_judge(run_dir):
    text = build_report(run_dir)["markdown"].read_text()
    assert "simulation" in text and "protocol tuneguard-offline" in text and "judge offline" in text


def test_report_on_another_protocol_does_not_claim_a_simulation(run_dir):
    rows = [{**r, "protocol": "beavertails-500", "judge": "beaver-dam"} for r in fixture_rows(run_dir)]
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = build_report(run_dir)["markdown"].read_text()
    assert "simulation" not in text and "protocol beavertails-500" in text


def test_report_html_is_self_contained_with_every_plot_embedded(run_dir):
    html = build_report(run_dir)["html"].read_text()
    pngs = sorted((run_dir / "plots").glob("*.png"))
    names = {p.stem for p in pngs}
    assert {"hs_vs_poison_ratio", "fa_vs_poison_ratio", "tradeoff"} <= names
    assert any(n.startswith("curves_lisa") for n in names)  # Lisa's training curves from its log history
    for png in pngs:
        assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 5000
    assert html.count("src='data:image/png;base64,") == len(pngs)
    assert not re.search(r"(src|href)=['\"](?!data:)", html)  # no external assets
    assert "<table>" in html and "± " in html


def test_bootstrap_interval_lies_within_the_values_and_holds_the_mean():
    values = [3.0, 9.0, 4.0, 12.0]
    low, high = bootstrap_ci(values)
    assert min(values) <= low <= statistics.fmean(values) <= high <= max(values)
    assert bootstrap_ci(values) == (low, high)  # deterministic
    assert bootstrap_ci([5.0, 5.0, 5.0]) == (5.0, 5.0)


def test_summarize_adds_bootstrap_bounds_only_when_asked():
    rows = [{"m": "a", "harmful_score": v} for v in (1.0, 2.0, 6.0)]
    plain, boot = summarize(rows, ["m"]), summarize(rows, ["m"], bootstrap=500)
    assert "harmful_score_ci_low" not in plain[0]
    assert boot[0]["harmful_score_ci_low"] <= boot[0]["harmful_score"] <= boot[0]["harmful_score_ci_high"]


def test_a_single_seed_is_shown_alone_without_a_spread_or_an_interval():
    single = summarize([{"m": "a", "harmful_score": 12.34}], ["m"], bootstrap=500)[0]
    assert single["n"] == 1 and single["harmful_score_std"] is None and "harmful_score_ci_low" not in single
    assert format_mean_std(single, "harmful_score") == "12.3"
    pair = summarize([{"m": "a", "harmful_score": v} for v in (10.0, 14.0)], ["m"], bootstrap=500)[0]
    assert format_mean_std(pair, "harmful_score").startswith("12.0 ± 2.8 [")


def test_a_difference_is_written_with_its_sign_and_its_spread_without():
    rows = [{"m": "a", "compliance_margin": v} for v in (0.3, 0.5)]
    two = summarize(rows, ["m"], ["compliance_margin"], bootstrap=500)[0]
    text = format_mean_std(two, "compliance_margin", 2, signed=True)
    assert text.startswith("+0.40 ± 0.14 [+0.3") and text.endswith("+0.50]")
    low = summarize([{"m": "a", "compliance_margin": -2.5}], ["m"], ["compliance_margin"])[0]
    assert format_mean_std(low, "compliance_margin", 3, signed=True) == "-2.500"
    assert format_mean_std(two, "compliance_margin", 2).startswith("0.40 ± 0.14 [0.3")


def test_a_results_row_has_an_agreement_and_a_kappa_column_per_pair_of_judges_and_the_training_time_of_its_stages():
    config = {
        "align": {"method": "sft"},
        "finetune": {"method": "lisa", "user_data": {"poison_ratio": 0.1}, "training": {"seed": 3}},
        "repair": {"method": "none"},
    }
    pair = {"judges": ["offline", "refusal"], "agreement": 75.0, "cohen_kappa": 0.5}
    evaluation = {"metrics": {"harmful_score": 10.0, "judge_agreement": [pair]}, "timings": {"wall_s": 2.0}}
    stages = {"align": {"timings": {"wall_s": 1.0}}, "finetune": {"timings": {"wall_s": 3.0}}}
    row = result_row({"model": "final"}, config, evaluation, "/e", stages, {"align": "/a", "finetune": "/f"})
    assert row["judge_agreement_offline_refusal"] == 75.0 and row["cohen_kappa_offline_refusal"] == 0.5
    assert "judge_agreement" not in row
    assert (row["finetune_method"], row["poison_ratio"], row["seed"]) == ("lisa", 0.1, 3)
    assert row["train_wall_s"] == 4.0 and row["eval_wall_s"] == 2.0
    assert (row["align_dir"], row["finetune_dir"], row["eval_dir"]) == ("/a", "/f", "/e")
    aligned = result_row({"model": "aligned"}, config, evaluation, "/e2", stages, {"align": "/a", "finetune": "/f"})
    assert aligned["train_wall_s"] == 1.0 and "finetune_dir" not in aligned
