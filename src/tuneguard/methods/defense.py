"""The base of every defense's trainer: the plumbing a defense shares, so that a defense holds only its method.

A defense is a mixin put before a ``transformers.Trainer`` (or TRL's ``SFTTrainer``) in the bases, e.g.
``class BoosterTrainer(BoosterMixin, Trainer)``, with :class:`DefenseMixin` under it. The base owns:

- what the defense declares as class attributes: its name (``method_name``), paper (``paper``), the engines it
  refuses and why (``unsupported_engines``, checked when the trainer is built), the logged scalars the report
  draws as its training curves (``curve_keys``), the constructor keywords of its parameters and auxiliary data
  sets (``params_keyword``, ``dataset_keywords``: what the registry's ``build_trainer`` passes);
- the logging of its scalars: :meth:`~DefenseMixin.record_metric` during the step, averaged over the logging
  window (and over DDP ranks) into the Trainer's periodic log, hence into ``state.log_history`` and every
  ``report_to`` backend;
- the gradient scale under fp16 loss scaling (:meth:`~DefenseMixin.gradient_scale`) and the list of trainable
  weights (:meth:`~DefenseMixin.trainable_weights`, listed once per ``train()`` call);
- extra checkpoint state: what :meth:`~DefenseMixin.extra_checkpoint_state` returns is saved as
  ``extra_state_file`` in every checkpoint folder and handed back to :meth:`~DefenseMixin.begin_train` on resume.

Modelled on TRL's ``_BaseTrainer`` (name and paper as class attributes) and on the metric logging of its
``DPOTrainer`` (scalars gathered during the steps, averaged into the Trainer's ``log``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from tuneguard.methods.base import MethodParams
from tuneguard.methods.engines import check_engine
from tuneguard.methods.weights import trainable_parameters


class MetricWindow:
    """Running sums of named scalars between two Trainer logs; device tensors, so no host sync per step."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, value: torch.Tensor | float) -> None:
        value = value.detach().float() if torch.is_tensor(value) else torch.tensor(float(value))
        self.sums[name] = self.sums[name] + value.to(self.sums[name].device) if name in self.sums else value
        self.counts[name] = self.counts.get(name, 0) + 1

    def drain(self, accelerator: Any = None) -> dict[str, float]:
        """The mean of each name over the window (and over DDP ranks when ``accelerator`` has several); resets."""
        if not self.sums:
            return {}
        names = sorted(self.sums)
        device = self.sums[names[0]].device
        means = torch.stack([self.sums[n].to(device) / self.counts[n] for n in names])
        if accelerator is not None and accelerator.num_processes > 1:
            means = accelerator.reduce(means.to(accelerator.device), reduction="mean")
        self.sums, self.counts = {}, {}
        return dict(zip(names, means.tolist(), strict=True))


class DefenseMixin:
    """The shared base of the defenses' trainer mixins (see the module docstring).

    A subclass sets its parameters (the attribute named ``params_keyword``) before calling
    ``super().__init__``, so that the engine check at the end of the base's ``__init__`` can read them.
    """

    method_name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    unsupported_engines: ClassVar[Mapping[str, str]] = {}
    curve_keys: ClassVar[tuple[str, ...]] = ()
    params_keyword: ClassVar[str | None] = None
    dataset_keywords: ClassVar[Mapping[str, str]] = {}  # data role -> constructor keyword
    extra_state_file: ClassVar[str | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._method_metrics = MetricWindow()
        self._trainable_weights: list[tuple[str, torch.nn.Parameter]] | None = None
        super().__init__(*args, **kwargs)
        check_engine(self.method_name, self.args, self.engines_refused(self.method_params))

    # ---- declared per class ---------------------------------------------------------------------------------

    @classmethod
    def engines_refused(cls, params: MethodParams | None) -> Mapping[str, str]:
        """The engines this defense refuses with ``params`` (engine -> reason); by default ``unsupported_engines``."""
        return cls.unsupported_engines

    @property
    def method_params(self) -> MethodParams | None:
        """The defense's parameters (the attribute named ``params_keyword``)."""
        return getattr(self, self.params_keyword) if self.params_keyword else None

    # ---- shared plumbing ------------------------------------------------------------------------------------

    def record_metric(self, name: str, value: torch.Tensor | float) -> None:
        """Add ``value`` to the window of ``name``; its mean over the window is logged at the next training log."""
        self._method_metrics.add(name, value)

    def method_scalars(self) -> dict[str, float]:
        """The scalars added to the Trainer's periodic training log (default: the recorded metrics' means)."""
        return self._method_metrics.drain(self.accelerator)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs:  # the Trainer's periodic training log
            logs.update(self.method_scalars())
        super().log(logs, *args, **kwargs)

    def gradient_scale(self) -> float:
        """The factor the gradients still carry when written to directly: the fp16 GradScaler's loss scale, or 1."""
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            return float(scaler.get_scale())
        return 1.0

    def trainable_weights(self) -> list[tuple[str, torch.nn.Parameter]]:
        """``(name, parameter)`` of every trainable weight of the unwrapped model, listed once per ``train()``."""
        if self._trainable_weights is None:
            self._trainable_weights = list(trainable_parameters(self.model))
        return self._trainable_weights

    # ---- extra checkpoint state -----------------------------------------------------------------------------

    def begin_train(self, checkpoint: str | None, saved: dict[str, Any] | None) -> None:
        """Reset the defense's per-run state at the start of ``train()``; ``checkpoint``: the checkpoint resumed
        from (None for a fresh run), ``saved``: its ``extra_state_file`` (None when it has none)."""

    def extra_checkpoint_state(self) -> dict[str, Any] | None:
        """What to save as ``extra_state_file`` in the checkpoint being written (None: nothing)."""
        return None

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        self._trainable_weights = None
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)  # None: the Trainer raises its own error
        saved = None
        if isinstance(checkpoint, str | os.PathLike) and self.extra_state_file:
            path = os.path.join(checkpoint, self.extra_state_file)
            if os.path.isfile(path):
                saved = torch.load(path, map_location="cpu", weights_only=True)
        self.begin_train(str(checkpoint) if isinstance(checkpoint, str | os.PathLike) else None, saved)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        # Written before the Trainer's files, so that a checkpoint with a trainer_state.json always has it.
        state = self.extra_checkpoint_state() if self.extra_state_file and self.args.should_save else None
        if state is not None:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            os.makedirs(folder, exist_ok=True)
            torch.save(state, os.path.join(folder, self.extra_state_file))
        super()._save_checkpoint(model, trial)
