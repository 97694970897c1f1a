"""The tuneguard record ``{id, prompt, response, [label], [category], [answer]}`` and the layouts it is read from.

One normaliser per layout: tuneguard records (``prompt``/``response``), TRL ``prompt``/``completion`` (text or
conversational) and ``messages``, Alpaca ``instruction``/``input``/``output``. Message content is text or the
OpenAI list of parts (``[{"type": "text", "text": ...}]``, text parts joined by a newline). Anything else is a
:class:`DataError` naming the file (or source), the row and what was expected; nothing is coerced silently.

Rows are numbered as a person finds them in the file: the line for JSONL and CSV, the position for JSON lists,
Parquet tables and data sets. :class:`Records` keep, for every record, its file and row, so a problem found
later (a prompt too long for ``max_length`` in a shuffled and sampled mix) still names the row of the file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tuneguard.data.templates import user_message

Record = dict[str, Any]
Origin = tuple[str, int]  # (file or source, row)


class DataError(ValueError):
    """A data problem, with the file (or source) and row that caused it."""

    def __init__(self, where: str, message: str, row: int | None = None) -> None:
        self.where, self.row = where, row
        location = f"{where}, row {row}" if row is not None else where
        super().__init__(f"{location}: {message}")


class Records(list):
    """A list of records that knows where each came from (``origins[k]`` = (file or source, row))."""

    def __init__(self, records: Iterable[Record] = (), origins: Iterable[Origin] | None = None) -> None:
        super().__init__(records)
        self.origins: list[Origin] = list(origins) if origins is not None else []
        if self.origins and len(self.origins) != len(self):
            raise ValueError(f"{len(self)} records but {len(self.origins)} origins")

    def select(self, indices: Sequence[int]) -> Records:
        """The records at ``indices``, in that order, with their origins."""
        origins = [self.origins[k] for k in indices] if self.origins else None
        return Records([self[k] for k in indices], origins)


def locate(records: Sequence[Record], k: int, where: str) -> tuple[str, int]:
    """(location, row) naming record ``k`` of ``records`` in an error: its file and row when known, else its
    1-based position in ``where``."""
    if isinstance(records, Records) and records.origins:
        source, row = records.origins[k]
        return (f"{where} ({source})" if source != where else where), row
    return where, k + 1


def normalize(
    rows: Sequence[Any],
    layout: str,
    where: str,
    *,
    require_label: bool = False,
    numeric_labels: bool = False,
    row_numbers: Sequence[int] | None = None,
) -> Records:
    """Turn raw rows into tuneguard records; raise DataError naming the row on the first bad one.

    ``require_label``: the records are scored (a task test set): each needs a label (or a non-empty response,
    which then is the label). Scored labels are text; a number is accepted only with ``numeric_labels``
    (``accuracy_mode: number``), since an exact comparison of the answer with ``"1"`` would score a class-index
    label 0. ``row_numbers[k]`` is the file's row of ``rows[k]`` (default: the position, from 1)."""
    out = Records(origins=[])
    seen_ids: set[str] = set()
    for k, row in enumerate(rows):
        i = row_numbers[k] if row_numbers is not None else k + 1
        if not isinstance(row, dict):
            raise DataError(where, f"expected an object with fields, got {type(row).__name__}", row=i)
        kind = detect_layout(row) if layout == "auto" else layout
        prompt, response = _LAYOUTS[kind](row, where, i)
        if not prompt.strip():
            raise DataError(where, "empty prompt", row=i)
        record: Record = {"id": _record_id(row, k, where, i), "prompt": prompt, "response": response}
        if record["id"] in seen_ids:
            raise DataError(where, f"duplicated id {record['id']!r}", row=i)
        seen_ids.add(record["id"])
        for key in ("label", "answer", "category"):
            if row.get(key) is not None:
                record[key] = _metadata_text(row[key], key, where, i, scored=require_label and key == "label")
        if kind in ("records", "alpaca") and (task_input := text_field(row, "input", where, i, required=False)).strip():
            record["input"] = task_input  # Alpaca's input, kept apart for the template's with-input form
        if require_label:
            if "label" not in record and not response.strip():
                raise DataError(where, "task records need a 'label' (or a non-empty response)", row=i)
            if "label" in record and numeric_labels is False and _is_number(row["label"]):
                raise DataError(
                    where,
                    f"field 'label' is a number ({row['label']!r}); answers are compared with it as text, so give "
                    f"the text the model should answer (e.g. {str(row['label'])!r}), or set eval.accuracy_mode: "
                    "number",
                    row=i,
                )
            record.setdefault("label", response.strip())
        out.append(record)
        out.origins.append((where, i))
    return out


def detect_layout(row: Record) -> str:
    if "messages" in row:
        return "messages"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "completion" in row:
        return "prompt_completion"
    return "records"


def text_field(row: Record, key: str, where: str, i: int, *, required: bool = True) -> str:
    """The text in ``row[key]``; a missing or null (when required) or non-text field is a DataError naming the row."""
    value = row.get(key)
    if value is None:
        if not required:
            return ""
        if key in row:
            raise DataError(where, f"field '{key}' is null; it must be text", row=i)
        present = ", ".join(sorted(map(str, row))) or "none"
        raise DataError(where, f"missing field '{key}' (fields present: {present})", row=i)
    if not isinstance(value, str):
        raise DataError(where, f"field '{key}' must be text, got {_kind(value)}", row=i)
    return value


def prompt_text(record: Record) -> str:
    """The whole request of a record: its instruction, then its ``input`` (if any) after a blank line."""
    return user_message(record["prompt"], record.get("input", ""))


# ------------------------------------------------------------------------------------------------- fields
def _record_id(row: Record, k: int, where: str, i: int) -> str:
    value = row.get("id")
    if value is None:
        return str(k)  # the position among the rows, from 0 (stable: part of the data fingerprints)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(where, f"field 'id' must be text or an integer, got {_kind(value)}", row=i)
    return str(value)


def _metadata_text(value: Any, key: str, where: str, i: int, *, scored: bool) -> str:
    if isinstance(value, str):
        return value
    if _is_number(value):
        return _number_text(value)
    what = "true/false" if isinstance(value, bool) else _kind(value)
    hint = " (the text the model should answer, e.g. 'positive')" if scored else ""
    raise DataError(where, f"field '{key}' must be text{hint}, got {what}", row=i)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    return {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)


# ------------------------------------------------------------------------------------------------ layouts
def _records_layout(row: Record, where: str, i: int) -> tuple[str, str]:
    return text_field(row, "prompt", where, i), text_field(row, "response", where, i, required="label" not in row)


def _prompt_completion_layout(row: Record, where: str, i: int) -> tuple[str, str]:
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, list):  # conversational prompt/completion
        roles, texts = _messages(prompt, "prompt", where, i)
        if roles != ["user"]:
            raise DataError(where, f"field 'prompt' must hold one 'user' message, got roles {roles}", row=i)
        if isinstance(completion, str):
            return texts[0], completion
        answer_roles, answers = _messages(completion, "completion", where, i)
        if answer_roles != ["assistant"]:
            raise DataError(where, f"field 'completion' must hold one 'assistant' message, got {answer_roles}", row=i)
        return texts[0], answers[0]
    return text_field(row, "prompt", where, i), text_field(row, "completion", where, i)


def _messages_layout(row: Record, where: str, i: int) -> tuple[str, str]:
    roles, texts = _messages(row.get("messages"), "messages", where, i)
    if roles == ["user", "assistant"]:
        return texts[0], texts[1]
    if roles == ["user"]:  # a prompt without an answer (evaluation prompts)
        return texts[0], ""
    if "user" not in roles:
        raise DataError(where, "no 'user' message before the answer", row=i)
    raise DataError(
        where,
        f"multi-turn conversations are not supported (roles {roles}); give one user turn and at most one "
        "assistant answer",
        row=i,
    )


def _alpaca_layout(row: Record, where: str, i: int) -> tuple[str, str]:
    return text_field(row, "instruction", where, i), text_field(row, "output", where, i)


def _messages(value: Any, key: str, where: str, i: int) -> tuple[list[str], list[str]]:
    """(roles, texts) of a list of ``{role, content}`` messages; only 'user' and 'assistant' roles."""
    if value is None:
        raise DataError(where, f"field '{key}' is null; it must be a list of {{role, content}} messages", row=i)
    if not isinstance(value, list) or not value:
        raise DataError(
            where, f"field '{key}' must be a non-empty list of {{role, content}} messages, got {_kind(value)}", row=i
        )
    roles, texts = [], []
    for n, message in enumerate(value, start=1):
        here = f"{key}[{n}]"
        if not isinstance(message, dict):
            raise DataError(where, f"{here} must be a {{role, content}} object, got {_kind(message)}", row=i)
        role = message.get("role")
        if role == "system":
            raise DataError(
                where,
                f"{here}: 'system' messages are not supported (the prompt template has one user turn); put its "
                "text into the user message or leave it out",
                row=i,
            )
        if role not in ("user", "assistant"):
            raise DataError(where, f"{here}: role must be 'user' or 'assistant', got {role!r}", row=i)
        roles.append(role)
        texts.append(_content_text(message.get("content"), f"{here}.content", where, i))
    return roles, texts


def _content_text(content: Any, here: str, where: str, i: int) -> str:
    """A message's text: a string, or the OpenAI list of parts whose text parts are joined by a newline."""
    if isinstance(content, str):
        return content
    if content is None:
        raise DataError(where, f"{here} is null or missing; it must be text", row=i)
    if not isinstance(content, list):
        raise DataError(where, f"{here} must be text or a list of text parts, got {_kind(content)}", row=i)
    texts = []
    for n, part in enumerate(content, start=1):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            got = repr(kind) if isinstance(part, dict) else _kind(part)
            raise DataError(
                where, f"{here}[{n}]: only {{type: 'text', text: ...}} parts are supported, got {got}", row=i
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise DataError(where, f"{here}[{n}].text must be text, got {_kind(text)}", row=i)
        texts.append(text)
    return "\n".join(texts)


_LAYOUTS: dict[str, Callable[[Record, str, int], tuple[str, str]]] = {
    "records": _records_layout,
    "prompt_completion": _prompt_completion_layout,
    "messages": _messages_layout,
    "alpaca": _alpaca_layout,
}
