"""Tokenization for supervised fine-tuning: loss on the response tokens only, EOS appended."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset

from tuneguard.config import ConfigError
from tuneguard.data.records import DataError, Record, locate
from tuneguard.data.templates import PromptTemplate, encode_prompt, leading_special_ids

IGNORE_INDEX = -100


def tokenize_sft(
    records: list[Record],
    tokenizer: Any,
    template: PromptTemplate,
    max_length: int,
    where: str = "data",
    long_prompts: str = "error",
) -> tuple[Dataset, dict[str, int]]:
    """Tokenize records into ``input_ids``/``attention_mask``/``labels`` (prompt positions = -100).

    The prompt is ``template.format_record(record)`` with the tokenizer's BOS as the tokenizer adds it, once
    (:func:`~tuneguard.data.templates.encode_prompt`); the response follows without special tokens, then EOS.
    A response that does not fit is truncated (counted in the returned stats); a prompt that leaves no room for
    a single response token would teach nothing: an error naming the row, or with ``long_prompts="skip"`` the
    record is left out (counted). An empty response is an error: prompt-only records (harmful prompts for
    evaluation, e.g. ``strongreject``) are not training data. Errors name ``where`` and, for :class:`Records`, the
    record's file and row.
    """
    if tokenizer.eos_token_id is None:
        raise ConfigError("the model's tokenizer has no eos_token; set one before training")
    columns: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    truncated = skipped = 0
    bos = leading_special_ids(tokenizer)
    for k, rec in enumerate(records):
        if not rec["response"].strip():
            location, row = locate(records, k, where)
            raise DataError(location, "empty response: prompt-only records are for evaluation, not training", row=row)
        prompt_ids = encode_prompt(tokenizer, template.format_record(rec), bos)
        response_ids = tokenizer(rec["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        room = max_length - len(prompt_ids)
        if room < 1:
            if long_prompts == "skip":
                skipped += 1
                continue
            location, row = locate(records, k, where)
            raise DataError(
                location,
                f"prompt is {len(prompt_ids)} tokens, max_length={max_length} leaves no room "
                "(raise max_length, or set long_prompts: skip to leave such records out)",
                row=row,
            )
        if len(response_ids) > room:
            response_ids = response_ids[:room]
            truncated += 1
        ids = prompt_ids + response_ids
        columns["input_ids"].append(ids)
        columns["attention_mask"].append([1] * len(ids))
        columns["labels"].append([IGNORE_INDEX] * len(prompt_ids) + response_ids)
    if not columns["input_ids"]:
        raise DataError(where, f"no record fits max_length={max_length}: all {skipped} prompts are longer")
    stats = {"examples": len(records) - skipped, "truncated_responses": truncated}
    if skipped:
        stats["skipped_long_prompts"] = skipped
    return Dataset.from_dict(columns), stats


@dataclass
class SFTDataCollator:
    """Right-pads a batch; padded positions get attention 0 and label -100."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            pad = width - len(f["input_ids"])
            batch["input_ids"].append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            batch["attention_mask"].append(list(f["attention_mask"]) + [0] * pad)
            batch["labels"].append(list(f["labels"]) + [IGNORE_INDEX] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
