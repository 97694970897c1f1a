"""The repair stage: a registered repair method (Antidote, or ``none``) applied to the fine-tuned model.

Re-alignment data must share no prompt with the attack data (the harmful records of the input fine-tuning stage's
``train_mix.jsonl``) nor with the prompts the result is evaluated on; an overlap is refused before anything runs,
and the comparison is recorded in the stage's ``disjointness``.
"""

from __future__ import annotations

import time
from functools import cached_property
from pathlib import Path
from typing import Any

from tuneguard.config import RepairConfig, dump_config
from tuneguard.data import DataError, read_file
from tuneguard.data.provenance import shared_prompt_ids
from tuneguard.data.records import Records, prompt_text
from tuneguard.methods.base import MethodParams, RepairMethod, get_repair_method, parse_params
from tuneguard.models import load_model_and_tokenizer, resolve_model_path, save_model_atomic
from tuneguard.roles import Role, Roles, method_roles
from tuneguard.stages.base import Stage, StageRun, input_fields
from tuneguard.store import ModelRef, StageResult, read_finished

REALIGN = "realign_data"


class RepairStage(Stage):
    """Stage 3: repair the fine-tuned model with ``cfg.method``; a method that passes its input through
    (``RepairMethod.passes_through``, the identity ``none``) records its input model instead of a copy.

    ``forbidden_prompts`` (name -> prompts, e.g. the evaluation's harmful prompts): sets the re-alignment data
    must not share a prompt with, besides the attack data."""

    name = "repair"
    produces = "final"

    def __init__(self, cfg: RepairConfig, forbidden_prompts: dict[str, list[str]] | None = None) -> None:
        self.cfg = cfg
        self.forbidden_prompts = forbidden_prompts or {}

    @property
    def label(self) -> str:
        return self.cfg.method

    @cached_property
    def method(self) -> RepairMethod:
        return get_repair_method(self.cfg.method)

    @cached_property
    def params(self) -> MethodParams:
        return parse_params(self.method.params_cls, self.cfg.method_args, "repair.method_args")

    def roles(self) -> list[Role]:
        return method_roles(self.name, self.cfg, self.method.data_roles)

    def check_config(self) -> None:
        self.params  # noqa: B018  (parsing checks the method_args)

    def data(self, roles: Roles) -> dict[str, Records]:
        """The method's own roles (Antidote: ``realign_data``)."""
        return {role: roles[f"repair.{role}"] for role in self.method.data_roles}

    def check_inputs(self, model: ModelRef, data: dict[str, Records]) -> dict[str, Any]:
        if REALIGN not in data:
            return {"disjointness": {}}
        others = {**_attack_prompts(model), **self.forbidden_prompts}
        where = f"repair.{REALIGN} ({self.cfg.realign_data.source})"
        return {"disjointness": check_disjoint_prompts(data[REALIGN], others, where)}

    def resolved_config(self) -> dict[str, Any]:
        return {**dump_config(self.cfg), "method_args": self.params.model_dump(mode="json")}

    def compute(self, run: StageRun) -> dict[str, Any]:
        model = run.model
        start = time.time()
        if self.method.passes_through:  # point at the input model instead of copying its weights
            path = resolve_model_path(model.settings)[0]
            return {"config": run.config, "input_model": model.settings.model_dump(), "model_dir": path}
        net, tokenizer = load_model_and_tokenizer(model.settings)
        input_stage = read_finished(model.stage_dir) if model.stage_dir else None
        output = self.method.repair(net, tokenizer, self.params, {**run.data, "input_stage": input_stage})
        model_dir = save_model_atomic(output.model, tokenizer, run.directory / "model")
        return {
            "config": run.config,
            **input_fields(model),
            "model_dir": str(model_dir),
            "data": run.data_fingerprints,
            "disjointness": run.checked["disjointness"],
            "metrics": output.stats,
            "timings": {"wall_s": round(time.time() - start, 2)},
        }

    def output_model(self, result: StageResult, model: ModelRef) -> ModelRef:
        """The repaired model; for a repair that passes its input through, the input model itself (same key)."""
        return model if self.method.passes_through else ModelRef.from_stage(result)


def run_repair(
    cfg: RepairConfig,
    model: ModelRef,
    output_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    forbidden_prompts: dict[str, list[str]] | None = None,
    roles: Roles | None = None,
) -> StageResult:
    """Stage 3, the repair (:class:`RepairStage`); the arguments as in :meth:`Stage.run`."""
    stage = RepairStage(cfg, forbidden_prompts)
    return stage.run(model, output_dir, overwrite=overwrite, resume=resume, roles=roles)


def check_disjoint_prompts(records: Records, others: dict[str, list[str]], where: str) -> dict[str, dict[str, int]]:
    """Refuse ``records`` whose prompt (case- and whitespace-normalized) occurs in any of ``others``.

    Returns, per other set, how many prompts it has and how many ``records`` share with it (all 0 on success).
    The error names the counts, the sets and a few record ids, never the (harmful) prompt text.
    """
    report: dict[str, dict[str, int]] = {}
    problems = []
    for name, prompts in others.items():
        shared = shared_prompt_ids(records, prompts)
        report[name] = {"prompts": len(prompts), "shared": len(shared)}
        if shared:
            problems.append(f"{len(shared)} with {name} ({len(prompts)} prompts; e.g. ids {', '.join(shared[:3])})")
    if problems:
        raise DataError(
            where,
            f"{len(records)} re-alignment records share prompts: "
            + "; ".join(problems)
            + ". Re-alignment data must be disjoint from the attack data and the evaluation prompts.",
        )
    return report


def _attack_prompts(model: ModelRef) -> dict[str, list[str]]:
    """The harmful prompts the input fine-tuning stage trained on, when the input model comes from one."""
    mix = model.stage_dir / "train_mix.jsonl" if model.stage_dir else None
    if mix is None or not mix.is_file():
        return {}
    return {f"the attack data ({mix})": [prompt_text(r) for r in read_file(mix) if r.get("source") == "harmful"]}
