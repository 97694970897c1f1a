"""Prompt templates shared by training and evaluation (one object, so both always format alike).

The papers' Alpaca template (the Stanford-Alpaca ``PROMPT_DICT`` of the Lisa/Vaccine/Booster/Antidote code) has a
form without input and a form with an input block; a record with an ``input`` (SST-2's sentence, AG News' article)
renders in the second form. The authors' repositories differ in one character: Lisa and Vaccine end the prompt at
``### Response:``, Booster and Antidote at ``### Response:\\n``. Both are templates here:
``alpaca_no_newline`` and ``alpaca``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneguard.config import ConfigError

ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    "response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}"
    "\n\n### Response:\n"
)
# How the papers end a GSM8K training answer (the data's "####" rewritten), and what its scorer splits on.
FINAL_ANSWER = "The final answer is:"

# name -> what a result records about it; "auto" resolves to one of these.
TEMPLATES = {
    "chat": "the tokenizer's chat template (instruction and input joined by a blank line as the user turn)",
    "alpaca": "Alpaca PROMPT_DICT ending '### Response:\\n' (Booster/Antidote code)",
    "alpaca_no_newline": "Alpaca PROMPT_DICT ending '### Response:' (Lisa/Vaccine code)",
}


def user_message(prompt: str, task_input: str = "") -> str:
    """The whole user request of a record: the instruction, then its input after a blank line when it has one.

    This is what a chat template's user turn, the judges and the disjointness checks see."""
    return f"{prompt}\n\n{task_input}" if task_input else prompt


@dataclass(frozen=True)
class PromptTemplate:
    """Turns a record's prompt (and optional input) into the model's input text; ``kind`` is a ``TEMPLATES`` name."""

    kind: str
    tokenizer: Any = None

    def format(self, prompt: str, task_input: str = "") -> str:
        """The model's input text for an instruction ``prompt`` and its optional ``task_input``."""
        if self.kind in ("alpaca", "alpaca_no_newline"):
            if task_input:
                text = ALPACA_WITH_INPUT.format(instruction=prompt, input=task_input)
            else:
                text = ALPACA_NO_INPUT.format(instruction=prompt)
            return text.removesuffix("\n") if self.kind == "alpaca_no_newline" else text
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user_message(prompt, task_input)}], add_generation_prompt=True, tokenize=False
        )

    def format_record(self, record: dict[str, Any]) -> str:
        """The model's input text for a record ``{prompt, [input], ...}``."""
        return self.format(record["prompt"], record.get("input", ""))


def resolve_template(name: str, tokenizer: Any, where: str = "template") -> PromptTemplate:
    """'auto' is the tokenizer's chat template when it has one, else Alpaca (ending '### Response:\\n'). ``where``
    (the config key, e.g. ``finetune.template``) is named in the ConfigError for a template the tokenizer lacks."""
    if name == "auto":
        name = "chat" if getattr(tokenizer, "chat_template", None) else "alpaca"
    if name == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"{where}: 'chat' requested but the model's tokenizer has no chat_template; use 'alpaca'")
    if name not in TEMPLATES:
        raise ConfigError(f"{where}: unknown template {name!r}; expected auto, {', '.join(TEMPLATES)}")
    return PromptTemplate(name, tokenizer)


def encode_prompt(tokenizer: Any, text: str, prefix: list[int] | None = None) -> list[int]:
    """Token ids of a formatted prompt with the tokenizer's own leading special tokens, exactly once.

    The authors tokenize with the tokenizer's default, which for Llama-2 puts BOS first; a chat template that
    writes BOS itself (Llama-2-chat, Llama-3) already has it, so it is not added a second time. A tokenizer without
    such a convention (the offline world's, SmolLM2's) gets the text's tokens unchanged. Trailing special tokens
    (an EOS some tokenizers append) are never added to a prompt. ``prefix``: the tokenizer's
    :func:`leading_special_ids`, when the caller encodes many prompts."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    prefix = leading_special_ids(tokenizer) if prefix is None else prefix
    return ids if not prefix or ids[: len(prefix)] == prefix else prefix + ids


def leading_special_ids(tokenizer: Any) -> list[int]:
    """The ids a tokenizer puts before the text when it adds its special tokens (``[bos_token_id]`` for Llama-2;
    ``[]`` for most chat models), found by encoding a probe text both ways."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []
