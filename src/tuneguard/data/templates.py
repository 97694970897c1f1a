"""Prompt templates shared by training and evaluation (one object, so both always format alike)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The Stanford-Alpaca template used by the Lisa/Vaccine/Booster/Antidote papers. We end with "### Response:\n"
# as Booster/Antidote do; the Lisa/Vaccine code ends without the newline (reference/anchors.md §3).
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
# How the papers end a GSM8K training answer (the data's "#### N" rewritten), and what its scorer looks for.
FINAL_ANSWER = "The final answer is:"


@dataclass(frozen=True)
class PromptTemplate:
    """Turns a record's prompt into the model's input text. ``kind`` is 'chat' or 'alpaca'."""

    kind: str
    tokenizer: Any = None

    def format(self, prompt: str) -> str:
        if self.kind == "alpaca":
            return ALPACA_NO_INPUT.format(instruction=prompt)
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )


def resolve_template(name: str, tokenizer: Any, where: str = "template") -> PromptTemplate:
    """'auto' is the tokenizer's chat template when it has one, else Alpaca (the papers' preset). ``where`` (the
    config key, e.g. ``finetune.template``) is named in the ConfigError for a template the tokenizer lacks."""
    from tuneguard.config import ConfigError

    if name == "auto":
        name = "chat" if getattr(tokenizer, "chat_template", None) else "alpaca"
    if name == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"{where}: 'chat' requested but the model's tokenizer has no chat_template; use 'alpaca'")
    if name not in ("chat", "alpaca"):
        raise ConfigError(f"{where}: unknown template {name!r}; expected auto, chat or alpaca")
    return PromptTemplate(name, tokenizer)
