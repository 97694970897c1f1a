"""RepNoise: push the representations of harmful data towards Gaussian noise (an alignment-stage baseline).

Rosati et al., "Representation Noising: A Defence Mechanism Against Harmful Finetuning", NeurIPS 2024,
arXiv 2405.14577. Implemented as in the git-disl Booster repository (``loss_func/repnoise_loss.py``,
``RepNoiseTrainer``), the variant with the logit-lens harmful loss and the "+1":

    loss = CE_s + β · MMD − α · log(H + 1)

per micro-batch, over an alignment ("harmless") batch s and a harmful batch x (harmful prompt → harmful answer):

- CE_s: cross-entropy of the alignment batch;
- MMD: mean over decoder layers of a multi-kernel Gaussian MMD (5 bandwidths, factor 2, bandwidth from the
  data) between the harmful batch's MLP-block outputs and standard Gaussian noise, each example flattened over
  tokens × width, masked positions zeroed in both;
- H: harmful cross-entropy, averaged over the logit lens of every layer (lm_head(final_norm(hidden state)))
  with the model's own final logits as the last layer; ``logit_lens=False`` keeps only the final logits, which
  is the plain form log(CE(harmful) + 1) (the Antidote repo's variant has neither the lens
  nor the "+1": log(CE)).

Masks (the reference's ``adapt_dimension_b2a``): the harmless token ids are padded/truncated to the harmful
batch's shape and compared position by position; harmful terms use the positions where the tokens differ,
the harmless CE the positions where they differ in the other direction. Here both are also restricted to the
response tokens (labels ≠ -100): with paired data (same prompt, refusal vs harmful answer: the Booster repo's
pairing) that is the reference's mask exactly, and with unpaired data it keeps the harmful prompts, which the
model must still read in order to refuse, out of the gradient ascent.

Differences from the reference, on purpose: the harmful and harmless batches go through ONE forward (padded and
concatenated; right padding does not change a causal model's earlier positions), which also makes it a plain
loss under DDP; the reference's H counts the final CE twice (its own term plus the last hidden state) and
divides by the number of hidden states; here H is the plain mean over layers. The noise comes from a private
generator seeded per harmful micro-batch (the reference uses the global RNG), so that a DDP run draws the same
noise as one process and dropout's RNG stream is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from transformers import Trainer

from tuneguard.data.tokenize import IGNORE_INDEX
from tuneguard.methods.auxiliary_data import HarmfulDataMixin
from tuneguard.methods.base import MethodParams, TrainingMethod, register_training_method
from tuneguard.methods.hooks import capture_outputs
from tuneguard.methods.layouts import final_norm, layer_modules, unwrap_model


class RepNoiseParams(MethodParams):
    """RepNoise's parameters (``align.method_args``)."""

    alpha: float = Field(0.1, ge=0, description="α: weight of −log(harmful CE + 1) (reference script: 0.1).")
    beta: float = Field(0.001, ge=0, description="β: weight of the harmful-activations/noise MMD (reference: 0.001).")
    harmful_batch_size: int | None = Field(
        None, ge=1, description="Harmful examples per micro-batch and device; unset = per_device_train_batch_size."
    )
    logit_lens: bool = Field(
        True,
        description="Average the harmful CE over the logit lens of every layer (Booster-repo variant); False: the "
        "final logits only.",
    )


@dataclass
class RepNoiseTerms:
    """The three terms of the RepNoise loss, each a differentiable scalar."""

    harmless_ce: torch.Tensor
    mmd: torch.Tensor
    harmful_ce: torch.Tensor

    def loss(self, alpha: float, beta: float) -> torch.Tensor:
        return self.harmless_ce + beta * self.mmd - alpha * torch.log(self.harmful_ce + 1)


def gaussian_mmd(
    source: torch.Tensor, target: torch.Tensor, kernel_mul: float = 2.0, kernel_num: int = 5
) -> torch.Tensor:
    """Multi-kernel Gaussian MMD² between two equal-size samples ``[n, d]`` (biased estimate, reference form).

    Bandwidths: the mean pairwise squared distance (a constant: no gradient), divided by ``kernel_mul **
    (kernel_num // 2)``, times ``kernel_mul ** i`` for i < kernel_num.
    """
    if source.shape != target.shape:
        raise ValueError(f"MMD needs samples of the same shape, got {tuple(source.shape)} and {tuple(target.shape)}")
    n = source.shape[0]
    total = torch.cat([source, target]).float()
    distances = torch.cdist(total, total).pow(2)
    samples = 2 * n
    bandwidth = distances.detach().sum() / max(samples * samples - samples, 1)
    bandwidth = bandwidth.clamp_min(torch.finfo(torch.float32).tiny) / kernel_mul ** (kernel_num // 2)
    kernels = sum(torch.exp(-distances / (bandwidth * kernel_mul**i)) for i in range(kernel_num))
    xx, yy, xy, yx = kernels[:n, :n], kernels[n:, n:], kernels[:n, n:], kernels[n:, :n]
    return (xx + yy - xy - yx).mean()


def repnoise_terms(
    model: Any,
    harmless: dict[str, torch.Tensor],
    harmful: dict[str, torch.Tensor],
    *,
    logit_lens: bool = True,
    generator: torch.Generator | None = None,
) -> RepNoiseTerms:
    """Compute the three RepNoise terms in one forward of ``model`` (which may be PEFT/DDP-wrapped).

    ``harmless`` / ``harmful``: collated batches with ``input_ids``, ``attention_mask``, ``labels``. The Gaussian
    noise is drawn from ``generator`` (on the model's device), or from the global RNG when it is None.
    """
    hf_model = unwrap_model(model)
    mlps = layer_modules(hf_model, "mlp")
    harmful_mask, harmless_mask = _difference_masks(harmful, harmless)
    n_harmful = harmful["input_ids"].shape[0]
    width = max(harmful["input_ids"].shape[1], harmless["input_ids"].shape[1])
    pad_id = hf_model.config.pad_token_id if hf_model.config.pad_token_id is not None else 0
    input_ids = torch.cat([_pad(harmful["input_ids"], width, pad_id), _pad(harmless["input_ids"], width, pad_id)])
    attention = torch.cat([_pad(harmful["attention_mask"], width, 0), _pad(harmless["attention_mask"], width, 0)])
    with capture_outputs(mlps) as capture:
        outputs = model(input_ids=input_ids, attention_mask=attention, output_hidden_states=logit_lens)
    logits = outputs.logits
    harmful_labels = _pad(torch.where(harmful_mask, harmful["labels"], IGNORE_INDEX), width, IGNORE_INDEX)
    harmless_labels = _pad(torch.where(harmless_mask, harmless["labels"], IGNORE_INDEX), width, IGNORE_INDEX)
    harmless_ce = _causal_ce(logits[n_harmful:], harmless_labels)

    harmful_ce = _causal_ce(logits[:n_harmful], harmful_labels)
    if logit_lens:
        head, norm = hf_model.get_output_embeddings(), final_norm(hf_model)
        lens = [_causal_ce(head(norm(h[:n_harmful])), harmful_labels) for h in outputs.hidden_states[:-1]]
        harmful_ce = torch.stack([*lens, harmful_ce]).mean()

    # MLP activations of the harmful rows vs noise, masked at the harmful answer's differing positions
    position_mask = _pad(harmful_mask, width, False)[..., None]
    mmd_terms = []
    for activation in capture.outputs:
        activation = activation.reshape(*input_ids.shape, -1)  # OPT's fc2 sees the tokens flattened
        hidden = activation[:n_harmful].float() * position_mask
        noise = torch.randn(hidden.shape, generator=generator, device=hidden.device, dtype=hidden.dtype)
        noise = noise * position_mask
        mmd_terms.append(gaussian_mmd(hidden.reshape(n_harmful, -1), noise.reshape(n_harmful, -1)))
    return RepNoiseTerms(harmless_ce=harmless_ce, mmd=torch.stack(mmd_terms).mean(), harmful_ce=harmful_ce)


def _difference_masks(
    harmful: dict[str, torch.Tensor], harmless: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Response positions of each batch whose token differs from the other batch's token at the same place."""

    def fit(ids: torch.Tensor, shape: torch.Size) -> torch.Tensor:  # pad (with -1: no token) or truncate
        out = torch.full(shape, -1, dtype=ids.dtype, device=ids.device)
        rows, cols = min(shape[0], ids.shape[0]), min(shape[1], ids.shape[1])
        out[:rows, :cols] = ids[:rows, :cols]
        return out

    a, b = harmful["input_ids"], harmless["input_ids"]
    harmful_mask = (a != fit(b, a.shape)) & (harmful["labels"] != IGNORE_INDEX)
    harmless_mask = (b != fit(a, b.shape)) & (harmless["labels"] != IGNORE_INDEX)
    return harmful_mask, harmless_mask


def _pad(tensor: torch.Tensor, width: int, value: Any) -> torch.Tensor:
    return F.pad(tensor, (0, width - tensor.shape[1]), value=value)


def _causal_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token CE over labelled positions; 0 (still in the graph) when none is labelled."""
    shifted_logits, shifted_labels = logits[:, :-1].float(), labels[:, 1:]
    valid = shifted_labels != IGNORE_INDEX
    if not valid.any():
        return shifted_logits.sum() * 0.0
    return F.cross_entropy(shifted_logits[valid], shifted_labels[valid])


class RepNoiseMixin(HarmfulDataMixin):
    """Replaces the Trainer's loss by the RepNoise loss (put it before the Trainer in the bases).

    ``harmful_dataset``: tokenized harmful pairs, collated by ``harmful_data_collator`` (default: the Trainer's).
    Logs, averaged over the logging window: ``repnoise/harmless_ce``, ``repnoise/mmd``, ``repnoise/harmful_ce``.
    """

    method_name = "repnoise"
    paper = "arXiv:2405.14577"
    params_keyword = "repnoise_params"

    def __init__(
        self,
        *args: Any,
        harmful_dataset: Any = None,
        harmful_data_collator: Any = None,
        repnoise_params: RepNoiseParams | None = None,
        **kwargs: Any,
    ) -> None:
        self.repnoise_params = repnoise_params if repnoise_params is not None else RepNoiseParams()
        super().__init__(*args, **kwargs)
        self.setup_harmful_data(harmful_dataset, harmful_data_collator)
        layer_modules(self.model, "mlp")  # an unknown architecture fails here, not at the first step
        self.loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides by the accumulation steps

    def compute_loss(
        self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        p = self.repnoise_params
        harmful = self.next_harmful_batch()
        generator = self.noise_generator(harmful["input_ids"].device)
        terms = repnoise_terms(model, inputs, harmful, logit_lens=p.logit_lens, generator=generator)
        loss = terms.loss(p.alpha, p.beta)
        self.record_metric("repnoise/harmless_ce", terms.harmless_ce)
        self.record_metric("repnoise/mmd", terms.mmd)
        self.record_metric("repnoise/harmful_ce", terms.harmful_ce)
        return (loss, None) if return_outputs else loss

    @classmethod
    def engines_refused(cls, params: RepNoiseParams | None) -> dict[str, str]:
        """The engines RepNoise refuses (engine -> reason): sharded ones only when the logit lens is on."""
        reason = "the logit lens calls lm_head and the final norm outside the engine's forward (set logit_lens=False)"
        unsupported = {"dataparallel": "torch.nn.DataParallel is not supported; use DDP"}
        if params is None or params.logit_lens:
            unsupported |= {"deepspeed-zero3": reason, "fsdp": reason}
        return unsupported

    def harmful_batch_size(self) -> int:
        return self.repnoise_params.harmful_batch_size or self.args.per_device_train_batch_size

    def noise_generator(self, device: torch.device) -> torch.Generator:
        """The private generator of the Gaussian noise for the harmful batch just drawn.

        Seeded with the run's seed and the batch's number in the one-process sequence (draw k of rank r of W is
        number k·W + r), so each micro-batch gets its own noise, the same in any DDP topology and after a resume,
        and the global RNG (dropout) is never touched.
        """
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        generator = torch.Generator(device=device)
        generator.manual_seed((seed << 32) + self._harmful_loader.last_batch_number)
        return generator


class RepNoiseTrainer(RepNoiseMixin, Trainer):
    """``transformers.Trainer`` with the RepNoise loss (arXiv 2405.14577); see :mod:`tuneguard.methods.repnoise`."""


REPNOISE = register_training_method(
    TrainingMethod.for_defense(
        RepNoiseTrainer,
        name="repnoise",
        stages=("align",),
        params_cls=RepNoiseParams,
        summary="RepNoise: align while pushing harmful activations to noise and ascending the harmful loss",
    )
)
