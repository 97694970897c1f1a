"""The check of an uploaded training file: JSONL, one chat or prompt/completion example per line (read by the
library's readers through the engine), each with an answer, within the policy's limits. The first bad line is
named, so the user can fix it."""

from __future__ import annotations

import json
from dataclasses import dataclass

from tuneguard.serve.engine import parse_example


class UploadError(ValueError):
    """An uploaded training file the service cannot use; ``line`` is 1-based (None: the whole file)."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message)


@dataclass(frozen=True)
class FileSummary:
    examples: int
    layouts: tuple[str, ...]  # 'chat', 'prompt/completion'


def check_training_file(data: bytes, *, max_examples: int, min_examples: int) -> FileSummary:
    """Validate a JSONL training file line by line; raises :class:`UploadError` naming the first bad line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UploadError("not valid UTF-8 text", data[: exc.start].count(b"\n") + 1) from None
    lines = text.split("\n")  # not splitlines(): U+2028 inside a JSON string is not a line break
    if lines and not lines[-1].strip():
        lines.pop()
    layouts: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if number > max_examples:
            raise UploadError(f"more than {max_examples} examples (limits.max_examples)", number)
        if not line.strip():
            raise UploadError("empty line; every line must hold one JSON example", number)
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UploadError(f"not valid JSON ({exc.msg}, column {exc.colno})", number) from None
        if not isinstance(row, dict):
            raise UploadError(f"expected a JSON object, got {type(row).__name__}", number)
        try:
            layout, record = parse_example(row)
        except ValueError as exc:
            raise UploadError(str(exc), number) from None
        if not record["response"].strip():
            raise UploadError(
                "the example has no answer to train on (an empty assistant message or completion)", number
            )
        layouts.add(layout)
    if len(lines) < min_examples:
        raise UploadError(f"{len(lines)} examples; a training file needs at least {min_examples} (limits.min_examples)")
    return FileSummary(examples=len(lines), layouts=tuple(sorted(layouts)))
