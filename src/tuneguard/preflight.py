"""Pre-flight: everything an experiment will need is checked before its first stage trains.

A mistake in a later stage (a missing data role, a bad evaluation file, a TrainingArguments value, a prompt too
long for ``max_length``) must not surface after hours of training in an earlier one. :func:`preflight` checks,
for every stage that will run, in order of cost:

1. the methods, their ``method_args`` and training engines, the judges (``check_methods``);
2. each training stage's ``transformers.TrainingArguments``, built once as the stage will build them;
3. the output directory: created, writable, short enough for the stage files below it;
4. every data role, loaded and validated once (``tuneguard.roles``), and the drawn user data set;
5. the checks over loaded roles in :data:`ROLE_CHECKS` and by provenance (``check_experiment_sources``);
6. the input model's tokenizer: each stage's prompt template and the tokenization of every training set
   (an empty response, a prompt with no room for its answer), with the errors naming the file's row.

It returns a :class:`Plan`: the config with its data defaults resolved, the stages that will run and the loaded
roles, which the pipeline hands to the stages so that no file is read twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tuneguard.config import ExperimentConfig
from tuneguard.data import resolve_template, tokenize_sft
from tuneguard.data.provenance import ROLE_SIDES, check_disjoint_roles
from tuneguard.data.records import Records
from tuneguard.data.registry import check_experiment_sources
from tuneguard.eval.likelihood import check_refusals_spelled, refusals_of
from tuneguard.models import load_tokenizer
from tuneguard.roles import USER_DATA, Role, Roles, load_roles, with_default_roles
from tuneguard.stages import STAGE_ORDER, EvaluateStage, Stage, TrainingStage, experiment_stages
from tuneguard.store import ModelRef, OutputError
from tuneguard.untrusted import make_writable_dir

ATTACK = f"{USER_DATA}.harmful_data"  # its role in ROLE_SIDES: the drawn harmful records
# The compared roles in pipeline order (errors name a pair in this order).
COMPARED_ORDER = (
    "align.alignment_data",
    "align.harmful_data",
    ATTACK,
    "finetune.alignment_data",
    "repair.realign_data",
    "eval.harmful_prompts",
    "eval.likelihood",
    "eval.benign_prompts",
)
LIKELIHOOD = "eval.likelihood"  # its likelihood sets (eval.likelihood[i] in a list) are compared as one
# Room below output_dir for a stage's deepest file (<stage>/<method>-<key>/checkpoints/checkpoint-N/<file>.tmp).
STAGE_PATH_ROOM = 200


@dataclass
class Plan:
    """A checked experiment: ``config`` with its data defaults resolved, the ``stages`` that will run (in order)
    and ``roles``, every data role they read, loaded once (config key -> records)."""

    config: ExperimentConfig
    stages: tuple[str, ...]
    roles: Roles


def compared_roles(roles: Roles) -> dict[str, Records]:
    """The loaded roles that ``data.provenance.check_disjoint_roles`` compares; the attack is the harmful records of
    the drawn user data (``finetune.user_data``), not the whole harmful pool it was drawn from."""
    loaded = dict(roles)
    loaded.pop(ATTACK, None)
    if USER_DATA in roles:
        loaded[ATTACK] = Records([r for r in roles[USER_DATA] if r["source"] == "harmful"])
    sets = [loaded.pop(key) for key in roles if key.startswith(LIKELIHOOD + "[")]
    if sets:
        loaded[LIKELIHOOD] = Records([r for records in sets for r in records])
    order = [*COMPARED_ORDER, *(key for key in ROLE_SIDES if key not in COMPARED_ORDER)]
    return {key: loaded[key] for key in order if key in loaded}


def experiment_is_disjoint(roles: Roles) -> None:
    """The attack data, the provider's data (alignment, a defense's harmful data, re-alignment data) and the
    evaluation prompts share no prompt (``data/provenance.py``)."""
    check_disjoint_roles(compared_roles(roles))


# Checks over the loaded roles (config key -> records), run after every role has loaded: each raises a DataError or
# ConfigError naming the roles. Add one here (a pure function of the roles) to check more before training.
ROLE_CHECKS: list[Callable[[Roles], None]] = [experiment_is_disjoint]


def stages_to_run(cfg: ExperimentConfig, until: str, start_model: ModelRef | None) -> tuple[str, ...]:
    """The stages ``run_experiment`` runs: up to ``until``; alignment only from the base model."""
    if until not in STAGE_ORDER:
        raise ValueError(f"unknown stage {until!r}; expected one of {', '.join(STAGE_ORDER)}")
    last = STAGE_ORDER.index(until)
    stages = []
    if cfg.align is not None and start_model is None:
        stages.append("align")
    if last >= 1 and cfg.finetune is not None:
        stages.append("finetune")
    stages += [s for s in ("repair", "eval") if last >= STAGE_ORDER.index(s)]
    return tuple(stages)


def preflight(
    cfg: ExperimentConfig,
    *,
    until: str = "eval",
    start_model: ModelRef | None = None,
    stages: tuple[str, ...] | None = None,
    role_cache: dict[str, Records] | None = None,
    tokenize: bool = True,
) -> Plan:
    """Check everything the stages up to ``until`` need (or exactly ``stages``) before any of them runs.

    ``role_cache`` shares loaded sources between the pre-flights of several experiments (a grid's cells);
    ``tokenize=False`` leaves out step 6 (the grid checks it per cell, when the cell runs)."""
    stages = stages if stages is not None else stages_to_run(cfg, until, start_model)
    cfg = with_default_roles(cfg)
    model_stages = experiment_stages(cfg, stages)
    check_methods(cfg)
    for stage in model_stages:
        if isinstance(stage, TrainingStage):
            stage.training_arguments(Path(cfg.output_dir) / stage.name)
    check_experiment_sources(cfg)
    roles = load_experiment_roles(cfg, stages, role_cache)
    for check in ROLE_CHECKS:
        check(roles)
    check_output_dir(cfg.output_dir)  # after the data checks: a refused experiment leaves no directory behind
    if tokenize:
        _check_tokenization(cfg, stages, model_stages, roles, start_model or ModelRef.from_settings(cfg.model))
    return Plan(config=cfg, stages=stages, roles=roles)


def check_methods(cfg: ExperimentConfig) -> None:
    """Resolve every stage's method, its ``method_args``, its training engine and the judges, from the config
    alone (nothing loaded)."""
    for stage in [*experiment_stages(cfg, STAGE_ORDER), EvaluateStage(cfg.eval)]:
        stage.check_config()


def load_experiment_roles(
    cfg: ExperimentConfig, stages: tuple[str, ...], cache: dict[str, Records] | None = None
) -> Roles:
    """Every data role that ``stages`` read (:func:`experiment_roles`), loaded once (``cache``: see
    ``roles.load_roles``), and the user data set drawn from them (``finetune.user_data``: n and p must fit)."""
    roles = load_roles(experiment_roles(cfg, stages), cache)
    for stage in experiment_stages(cfg, stages):
        stage.data(roles)
    return roles


def experiment_roles(cfg: ExperimentConfig, stages: tuple[str, ...]) -> list[Role]:
    """The data roles that ``stages`` read; a role a method needs but the config lacks is a ConfigError."""
    roles = [role for stage in experiment_stages(cfg, stages) for role in stage.roles()]
    evaluation = EvaluateStage(cfg.eval).roles()
    if "eval" in stages:
        roles += evaluation
    else:  # the prompts the result will be judged on: every training set must be disjoint from them all the same
        roles += [role for role in evaluation if role.key != "eval.task_test"]
    return roles


def check_output_dir(output_dir: str | Path) -> Path:
    """Create ``output_dir``: a writable directory with room for the stage paths below it; otherwise an
    OutputError naming ``output_dir`` and the reason."""
    return make_writable_dir(Path(output_dir), f"output_dir {output_dir}", OutputError, room=STAGE_PATH_ROOM)


def _check_tokenization(
    cfg: ExperimentConfig, names: tuple[str, ...], stages: list[Stage], roles: Roles, model: ModelRef
) -> None:
    """Every training set fits its stage's template and ``max_length`` (tokenized with the input model's tokenizer,
    which every stage shares); the evaluation's template exists."""
    tokenizer = load_tokenizer(model.settings)
    for stage in stages:
        if not isinstance(stage, TrainingStage):
            continue
        stage_cfg = stage.cfg
        template = resolve_template(stage_cfg.template, tokenizer, f"{stage.name}.template")
        for role, records in stage.data(roles).items():
            where = stage.training_data_key if role == "train" else f"{stage.name}.{role}"
            tokenize_sft(records, tokenizer, template, stage_cfg.max_length, where, stage_cfg.long_prompts)
    if "eval" in names:
        resolve_template(cfg.eval.template, tokenizer, "eval.template")
        if cfg.eval.likelihood:
            refusals = refusals_of(roles.get("eval.likelihood_refusals"))
            check_refusals_spelled(tokenizer, refusals, "eval.likelihood_refusals")
