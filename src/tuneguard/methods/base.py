"""The method registry: every alignment, fine-tuning and repair method is registered here by name.

A *training* method (alignment or fine-tuning stage) is a ``transformers.Trainer`` subclass plus a pydantic
parameter class; the stage code builds it through ``build_trainer``. A *repair* method is a function applied to
a merged model. There is one :class:`~tuneguard.registry.Registry` per stage.

Adding a defense = one file in ``methods/`` that calls ``register_training_method`` or ``register_repair_method``
(a defense's trainer: :class:`~tuneguard.methods.defense.DefenseMixin` and ``TrainingMethod.for_defense``), its
module's name in ``BUILTIN_METHODS`` (or, outside tuneguard, a plug-in: ``tuneguard.plugins``), and its test;
the contract tests (``tests/test_method_contract.py``) then run over it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from tuneguard.config import ConfigError, validate_config
from tuneguard.registry import Registry, UnknownNameError
from tuneguard.untrusted import check_plain_name

STAGES = ("align", "finetune", "repair")
# The modules whose import registers the built-in methods (imported at the first lookup), alphabetical.
BUILTIN_METHODS = (
    "tuneguard.methods.antidote",
    "tuneguard.methods.booster",
    "tuneguard.methods.lisa",
    "tuneguard.methods.repnoise",
    "tuneguard.methods.sft",
    "tuneguard.methods.vaccine",
)


class MethodParams(BaseModel):
    """Base class of a method's own parameters (``method_args`` in the YAML); unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class NoParams(MethodParams):
    """A method without parameters."""


@dataclass(frozen=True)
class TrainingMethod:
    """A registered alignment- or fine-tuning-stage method.

    ``build_trainer(model=, args=, train_dataset=, data_collator=, processing_class=, params=, aux_datasets=,
    callbacks=)`` returns a ready ``Trainer``; ``aux_datasets`` holds the tokenized extra data named in
    ``data_roles`` (e.g. ``alignment_data`` for Lisa, ``harmful_data`` for Booster). ``unsupported_engines(params)``
    maps the training engines the method refuses (see ``methods.engines.training_engine``) to the reason.
    """

    name: str
    stages: tuple[str, ...]
    params_cls: type[MethodParams]
    build_trainer: Callable[..., Any]
    data_roles: tuple[str, ...] = ()
    summary: str = ""
    paper: str = ""
    unsupported_engines: Callable[[Any], dict[str, str]] = lambda params: {}
    # The logged scalars the report draws as this method's training curves (none: no curve plot).
    curve_keys: tuple[str, ...] = ()

    @classmethod
    def for_defense(
        cls,
        trainer_cls: type,
        *,
        name: str,
        stages: tuple[str, ...],
        params_cls: type[MethodParams],
        summary: str = "",
    ) -> TrainingMethod:
        """The entry of a defense whose trainer declares its plumbing as class attributes (a subclass of
        :class:`~tuneguard.methods.defense.DefenseMixin`): its parameters' and data sets' keywords, refused
        engines, paper and curve keys."""
        datasets = dict(trainer_cls.dataset_keywords)
        return cls(
            name=name,
            stages=stages,
            params_cls=params_cls,
            build_trainer=trainer_builder(
                trainer_cls, params_kwarg=trainer_cls.params_keyword, params_cls=params_cls, datasets=datasets
            ),
            data_roles=tuple(datasets),
            summary=summary,
            paper=trainer_cls.paper,
            unsupported_engines=lambda params: dict(trainer_cls.engines_refused(params)),
            curve_keys=tuple(trainer_cls.curve_keys),
        )


@dataclass
class RepairOutput:
    """What a repair method returns: the model to save (the input model edited in place, or a new one) and
    JSON-able statistics for ``stage.json``."""

    model: Any
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RepairMethod:
    """A registered post-fine-tuning method: ``repair(model, tokenizer, params, data) -> RepairOutput``.

    ``model`` is the merged fine-tuned model; ``data`` holds the loaded records of each role in ``data_roles``
    and ``input_stage``, the finished stage that produced the model (a ``store.StageResult``, or None), for
    methods that need more than the merged weights (Antidote prunes the fine-tuning adapter it saved).
    """

    name: str
    params_cls: type[MethodParams]
    repair: Callable[..., RepairOutput]
    data_roles: tuple[str, ...] = ()
    summary: str = ""
    paper: str = ""
    # True for a repair that returns its input model unchanged: the stage then records the input model
    # instead of saving a copy, and the experiment's final model is the fine-tuned one.
    passes_through: bool = False


TRAINING_METHODS: dict[str, Registry[TrainingMethod]] = {
    stage: Registry(f"{stage} method", BUILTIN_METHODS) for stage in ("align", "finetune")
}
REPAIR_METHODS: Registry[RepairMethod] = Registry("repair method", BUILTIN_METHODS)


def trainer_builder(
    trainer_cls: type,
    *,
    params_kwarg: str | None = None,
    params_cls: type[MethodParams] | None = None,
    datasets: Mapping[str, str] | None = None,
) -> Callable[..., Any]:
    """The ``build_trainer`` of a method whose trainer takes the standard ``Trainer`` arguments plus its
    parameters (as ``params_kwarg``, defaulting to ``params_cls()``) and auxiliary data sets (``datasets`` maps a
    data role to the constructor keyword, e.g. ``{"harmful_data": "harmful_dataset"}``)."""

    def build_trainer(
        *,
        model: Any,
        args: Any,
        train_dataset: Any,
        data_collator: Any,
        processing_class: Any = None,
        params: MethodParams | None = None,
        aux_datasets: dict[str, Any] | None = None,
        callbacks: list[Any] | None = None,
    ) -> Any:
        extra = {keyword: (aux_datasets or {}).get(role) for role, keyword in (datasets or {}).items()}
        if params_kwarg is not None:
            extra[params_kwarg] = params if params is not None or params_cls is None else params_cls()
        return trainer_cls(
            model=model,
            args=args,
            train_dataset=train_dataset,
            data_collator=data_collator,
            processing_class=processing_class,
            callbacks=callbacks,
            **extra,
        )

    return build_trainer


def register_training_method(method: TrainingMethod) -> TrainingMethod:
    """Register ``method`` under its name for each of its stages (``align``, ``finetune``); returns it."""
    _check_method_name(method.name)
    for stage in method.stages:
        if stage not in TRAINING_METHODS:
            raise ValueError(f"{method.name}: training methods belong to 'align' or 'finetune', not {stage!r}")
    for stage in method.stages:
        TRAINING_METHODS[stage].register(method.name, method)
    return method


def register_repair_method(method: RepairMethod) -> RepairMethod:
    """Register the repair ``method`` under its name; returns it."""
    _check_method_name(method.name)
    return REPAIR_METHODS.register(method.name, method)


def get_training_method(stage: str, name: str) -> TrainingMethod:
    """The ``stage`` (``align`` / ``finetune``) method called ``name``; a ``ConfigError`` naming the key otherwise."""
    try:
        return TRAINING_METHODS[stage].get(name)
    except UnknownNameError as error:
        raise ConfigError(f"{stage}.method: {error}") from None


def get_repair_method(name: str) -> RepairMethod:
    """The repair method called ``name``; a ``ConfigError`` naming the key otherwise."""
    try:
        return REPAIR_METHODS.get(name)
    except UnknownNameError as error:
        raise ConfigError(f"repair.method: {error}") from None


def list_methods() -> list[tuple[str, str, str]]:
    """(stage, name, summary) for every registered method, by stage then name."""
    rows = [(stage, name, m.summary) for stage, registry in TRAINING_METHODS.items() for name, m in registry.items()]
    rows += [("repair", name, m.summary) for name, m in REPAIR_METHODS.items()]
    order = {s: i for i, s in enumerate(STAGES)}
    return sorted(rows, key=lambda r: (order[r[0]], r[1]))


def parse_params(params_cls: type[MethodParams], raw: dict[str, Any], where: str) -> MethodParams:
    """Validate ``method_args`` against the method's parameter class, naming the offending key."""
    return validate_config(raw, params_cls, where)


def _check_method_name(name: str) -> None:
    # A method's name becomes a directory name (<output_dir>/<stage>/<method>-<key>): it must stay a plain name.
    check_plain_name(name, "method name", ValueError)
