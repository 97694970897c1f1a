"""Read records ``{id, prompt, [input], response, [label]}`` from files, hub data sets and registered sources.

``input`` is an Alpaca-style task input kept apart from the instruction (SST-2's sentence, AG News' article), so
that the Alpaca template renders its with-input form; :func:`prompt_text` is the whole request (instruction, blank
line, input), which chat templates, judges and the disjointness checks see.

One reader per format; one normaliser per layout (tuneguard records, TRL ``prompt``/``completion`` and
``messages``, Alpaca ``instruction``/``input``/``output``). Every problem is reported with the file, the row
(1-based, as a person counts lines) and what was expected.
"""

from __future__ import annotations

import csv
import difflib
import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tuneguard.config import DataSource
from tuneguard.data.templates import user_message

Record = dict[str, Any]
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


class DataError(ValueError):
    """A data problem, with the file (or source) and row that caused it."""

    def __init__(self, where: str, message: str, row: int | None = None) -> None:
        self.where, self.row = where, row
        location = f"{where}, row {row}" if row is not None else where
        super().__init__(f"{location}: {message}")


# Registered sources by scheme ("offline:alignment" -> scheme "offline") or by whole name ("sst2"); each
# returns raw records. The named data sets (BeaverTails, SST-2, HarmBench, ...) are in data/registry.py.
_SOURCES: dict[str, Callable[[str, DataSource], list[Record]]] = {}


def register_source(scheme: str) -> Callable[[Callable[[str, DataSource], list[Record]]], Any]:
    """Register a loader for ``scheme:name`` sources, or for the bare name ``scheme`` (one entry adds a source).

    The loader is called with the part after the colon (empty for a bare name) and the ``DataSource``."""

    def wrap(fn: Callable[[str, DataSource], list[Record]]) -> Callable[[str, DataSource], list[Record]]:
        _SOURCES[scheme] = fn
        return fn

    return wrap


@register_source("offline")
def _offline_source(name: str, spec: DataSource) -> list[Record]:
    from tuneguard.world import get_world

    world = get_world()
    try:
        return world.records(name)
    except (KeyError, ValueError) as exc:
        raise DataError(f"offline:{name}", str(exc)) from None


def load_records(spec: DataSource | str | list[DataSource], *, require_label: bool = False) -> list[Record]:
    """Load, normalise, validate and select records: ``rows`` (a range of positions), then ``exclude`` (records
    whose prompt occurs in other sources), then ``num_samples`` (a seeded draw).

    A list of sources is concatenated in order; with more than one, ids are prefixed by the source's position
    (``"1:17"``) so they stay unique."""
    if isinstance(spec, list):
        if len(spec) == 1:
            return load_records(spec[0], require_label=require_label)
        return [
            {**r, "id": f"{k}:{r['id']}"}
            for k, one in enumerate(spec)
            for r in load_records(one, require_label=require_label)
        ]
    if isinstance(spec, str):
        spec = DataSource(source=spec)
    where = spec.source
    scheme, sep, name = spec.source.partition(":")
    loader = _SOURCES.get(scheme if sep else spec.source)
    if loader is not None and not Path(spec.source).exists():
        rows = loader(name, spec)
    else:
        if spec.path is not None:
            raise DataError(
                where, "'path' is for registered sources (see `tuneguard sources`); give the file as source"
            )
        path = Path(spec.source).expanduser()
        if path.suffix.lower() in FILE_SUFFIXES or path.exists():
            rows = read_file(path)
        elif "/" in spec.source and not spec.source.startswith((".", "/", "~")):
            rows = read_hub(spec.source, spec.split or "train")
        else:
            close = difflib.get_close_matches(spec.source, list(_SOURCES), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "; `tuneguard sources` lists the registered names"
            raise DataError(where, "file not found (expected a .jsonl/.json/.csv/.parquet file or a hub id)" + hint)
    records = normalize(rows, spec.layout, where, require_label=require_label)
    if not records:
        raise DataError(where, "no records: the data set is empty")
    if spec.rows is not None:  # positions as the authors count them: before anything is left out
        start, end = spec.rows
        if end > len(records):
            raise DataError(where, f"rows [{start}, {end}) but the data has only {len(records)} records")
        records = records[start:end]
    if spec.exclude or spec.responses != "keep":
        from tuneguard.data.derive import with_refusals, without_prompts

        for other in spec.exclude:
            records = without_prompts(records, (prompt_text(r) for r in load_records(other)))
        if not records:
            raise DataError(where, "no records left after 'exclude': every prompt occurs in the excluded sources")
        if spec.responses == "refusal":
            records = with_refusals(records)
    if spec.num_samples is not None:
        if spec.num_samples > len(records):
            raise DataError(where, f"num_samples={spec.num_samples} but the data has only {len(records)} records")
        records = random.Random(spec.seed).sample(records, spec.num_samples)
    return records


def read_file(path: Path) -> list[Record]:
    """Rows of a JSONL, JSON (list of objects, or {"data": [...]}), CSV or Parquet file."""
    where = str(path)
    if not path.is_file():
        raise DataError(where, "file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise DataError(where, f"not a readable Parquet file ({exc})") from None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        row = text_row_of_offset(path.read_bytes(), exc.start)
        raise DataError(where, f"not valid UTF-8 (byte {exc.start})", row=row) from None
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        rows = []
        for i, row in enumerate(reader, start=2):  # row 1 is the header
            if None in row:
                raise DataError(where, "more fields than the header has columns", row=i)
            rows.append(dict(row))
        return rows
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(where, f"not valid JSON: {exc.msg}", row=exc.lineno) from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(where, "expected a JSON list of objects (or an object with a 'data' list)")
        return data
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(where, f"not valid JSON: {exc.msg}", row=i) from None
    return rows


def text_row_of_offset(data: bytes, offset: int) -> int:
    return data[:offset].count(b"\n") + 1


def read_hub(repo: str, split: str, config: str | None = None, data_files: str | None = None) -> list[Record]:
    """Rows of a ``datasets`` hub data set (``config`` = its subset; ``data_files`` = one file of the repo, read
    with the generic builder, whose only split is 'train')."""
    import datasets

    try:
        if data_files is not None:
            ds = datasets.load_dataset(repo, data_files=data_files, split="train")
        else:
            ds = datasets.load_dataset(repo, config, split=split)
    except Exception as exc:  # network, missing split, gated repo...
        raise DataError(repo, f"could not load the hub data set ({type(exc).__name__}: {exc})") from None
    return list(ds)


# ------------------------------------------------------------------------------------------------- layouts
def detect_layout(row: Record) -> str:
    if "messages" in row:
        return "messages"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "completion" in row:
        return "prompt_completion"
    return "records"


def normalize(rows: Iterable[Any], layout: str, where: str, *, require_label: bool = False) -> list[Record]:
    """Turn raw rows into tuneguard records; raise DataError naming the row on the first bad one."""
    out: list[Record] = []
    seen_ids: set[str] = set()
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(where, f"expected an object with fields, got {type(row).__name__}", row=i)
        kind = detect_layout(row) if layout == "auto" else layout
        prompt, response = _LAYOUTS[kind](row, where, i)
        if not prompt.strip():
            raise DataError(where, "empty prompt", row=i)
        record: Record = {"id": str(row.get("id", i - 1)), "prompt": prompt, "response": response}
        if record["id"] in seen_ids:
            raise DataError(where, f"duplicated id {record['id']!r}", row=i)
        seen_ids.add(record["id"])
        for key in ("label", "answer", "category"):
            if row.get(key) is not None:
                record[key] = str(row[key])
        if kind in ("records", "alpaca") and (task_input := text_field(row, "input", where, i, required=False)).strip():
            record["input"] = task_input  # Alpaca's input, kept apart for the template's with-input form
        if require_label and "label" not in record:
            if not response.strip():
                raise DataError(where, "task records need a 'label' (or a non-empty response)", row=i)
            record["label"] = response.strip()
        out.append(record)
    return out


def text_field(row: Record, key: str, where: str, i: int, *, required: bool = True) -> str:
    """The text in ``row[key]``; a missing (when required) or non-text field is a DataError naming the row."""
    value = row.get(key)
    if value is None:
        if required:
            present = ", ".join(sorted(map(str, row))) or "none"
            raise DataError(where, f"missing field '{key}' (fields present: {present})", row=i)
        return ""
    if not isinstance(value, str):
        raise DataError(where, f"field '{key}' must be text, got {type(value).__name__}", row=i)
    return value


def _records_layout(row: Record, where: str, i: int) -> tuple[str, str]:
    return text_field(row, "prompt", where, i), text_field(row, "response", where, i, required="label" not in row)


def _prompt_completion_layout(row: Record, where: str, i: int) -> tuple[str, str]:
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, list):  # conversational prompt/completion
        return _user_text(prompt, where, i), _assistant_text(completion, where, i)
    return text_field(row, "prompt", where, i), text_field(row, "completion", where, i)


def _messages_layout(row: Record, where: str, i: int) -> tuple[str, str]:
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(where, "field 'messages' must be a non-empty list of {role, content}", row=i)
    if messages[-1].get("role") != "assistant":
        return _user_text(messages, where, i), ""
    return _user_text(messages[:-1], where, i), _assistant_text(messages[-1:], where, i)


def _alpaca_layout(row: Record, where: str, i: int) -> tuple[str, str]:
    return text_field(row, "instruction", where, i), text_field(row, "output", where, i)


def prompt_text(record: Record) -> str:
    """The whole request of a record: its instruction, then its ``input`` (if any) after a blank line."""
    return user_message(record["prompt"], record.get("input", ""))


def _user_text(messages: Any, where: str, i: int) -> str:
    if not isinstance(messages, list):
        raise DataError(where, "expected a list of messages", row=i)
    users = [m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise DataError(where, "no 'user' message before the answer", row=i)
    if len(users) > 1:
        raise DataError(where, "multi-turn conversations are not supported; give one user turn", row=i)
    return str(users[0])


def _assistant_text(messages: Any, where: str, i: int) -> str:
    if isinstance(messages, str):
        return messages
    if not isinstance(messages, list) or not messages or messages[-1].get("role") != "assistant":
        raise DataError(where, "expected the answer as an 'assistant' message", row=i)
    return str(messages[-1].get("content", ""))


_LAYOUTS: dict[str, Callable[[Record, str, int], tuple[str, str]]] = {
    "records": _records_layout,
    "prompt_completion": _prompt_completion_layout,
    "messages": _messages_layout,
    "alpaca": _alpaca_layout,
}
