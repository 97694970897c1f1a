"""Batched greedy generation with left padding: the one generation loop of tuneguard."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tuneguard.data.templates import encode_prompt, leading_special_ids


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    progress: Any = None,
    eos_token_id: int | list[int] | None = None,
) -> list[str]:
    """Greedy answers to already-formatted prompt ``texts``, in order.

    Prompts are sorted by length and batched with left padding so every row's new tokens start at the same
    column; each starts with the tokenizer's BOS when the tokenizer adds one (once, also after a chat template
    that writes it: :func:`encode_batch`); the answer is the decoded new tokens with special tokens removed.
    ``progress`` is an optional callable advanced by the batch size after each batch; ``eos_token_id`` (default:
    the tokenizer's EOS) may list several stop tokens.
    """
    model.eval()
    device = next(model.parameters()).device
    original_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        answers: list[str] = [""] * len(texts)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = encode_batch(tokenizer, [texts[i] for i in idx]).to(device)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id if eos_token_id is None else eos_token_id,
            )
            new_tokens = out[:, enc["input_ids"].shape[1] :]
            for i, text in zip(idx, tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True):
                answers[i] = text.strip()
            if progress is not None:
                progress(len(idx))
    finally:
        tokenizer.padding_side = original_side
    return answers


def encode_batch(tokenizer: Any, texts: Sequence[str]) -> Any:
    """Formatted prompts as one padded batch (``input_ids``, ``attention_mask`` tensors), each with the tokenizer's
    leading special tokens exactly once (:func:`~tuneguard.data.templates.encode_prompt`), padded on the
    tokenizer's ``padding_side``."""
    prefix = leading_special_ids(tokenizer)
    ids = [encode_prompt(tokenizer, text, prefix) for text in texts]
    return tokenizer.pad({"input_ids": ids}, return_tensors="pt", padding=True)
