"""The method registry: every alignment, fine-tuning and repair method is registered here by name.

A *training* method (alignment or fine-tuning stage) is a ``transformers.Trainer`` subclass plus a pydantic
parameter class; the stage code builds it through ``build_trainer``. A *repair* method is a function applied to
a merged model. Adding a defense = one file in ``methods/`` that calls ``register_training_method`` or
``register_repair_method``, plus its test. Nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from tuneguard.config import ConfigError

STAGES = ("align", "finetune", "repair")


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
    maps the training engines the method refuses (see ``methods._hooks.training_engine``) to the reason.
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


@dataclass
class _Registry:
    training: dict[tuple[str, str], TrainingMethod] = field(default_factory=dict)
    repair: dict[str, RepairMethod] = field(default_factory=dict)


_REGISTRY = _Registry()


def trainer_builder(
    trainer_cls: type,
    *,
    params_kwarg: str | None = None,
    params_cls: type[MethodParams] | None = None,
    datasets: dict[str, str] | None = None,
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
    _check_method_name(method.name)
    for stage in method.stages:
        if stage not in ("align", "finetune"):
            raise ValueError(f"{method.name}: training methods belong to 'align' or 'finetune', not {stage!r}")
        _REGISTRY.training[(stage, method.name)] = method
    return method


def register_repair_method(method: RepairMethod) -> RepairMethod:
    _check_method_name(method.name)
    _REGISTRY.repair[method.name] = method
    return method


def get_training_method(stage: str, name: str) -> TrainingMethod:
    _load_builtin_methods()
    try:
        return _REGISTRY.training[(stage, name)]
    except KeyError:
        known = ", ".join(sorted(n for s, n in _REGISTRY.training if s == stage))
        raise ConfigError(f"{stage}.method: unknown {stage} method {name!r}; known: {known}") from None


def get_repair_method(name: str) -> RepairMethod:
    _load_builtin_methods()
    try:
        return _REGISTRY.repair[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY.repair))
        raise ConfigError(f"repair.method: unknown repair method {name!r}; known: {known}") from None


def list_methods() -> list[tuple[str, str, str]]:
    """(stage, name, summary) for every registered method."""
    _load_builtin_methods()
    rows = [(s, n, m.summary) for (s, n), m in _REGISTRY.training.items()]
    rows += [("repair", n, m.summary) for n, m in _REGISTRY.repair.items()]
    order = {s: i for i, s in enumerate(STAGES)}
    return sorted(rows, key=lambda r: (order[r[0]], r[1]))


def parse_params(params_cls: type[MethodParams], raw: dict[str, Any], where: str) -> MethodParams:
    """Validate ``method_args`` against the method's parameter class, naming the offending key."""
    from tuneguard.config import validate_config

    return validate_config(raw, params_cls, where)


def _check_method_name(name: str) -> None:
    # A method's name becomes a directory name (<output_dir>/<stage>/<method>-<key>): it must stay a plain name.
    from tuneguard.untrusted import check_plain_name

    check_plain_name(name, "method name", ValueError)


def _load_builtin_methods() -> None:
    # Importing the package registers every built-in method (each module registers itself on import).
    import tuneguard.methods  # noqa: F401
