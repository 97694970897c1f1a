"""Read records ``{id, prompt, response, [label]}`` from files, hub data sets and registered sources.

One reader per format (JSONL, JSON, CSV, Parquet), each accepting every valid form of its format and nothing
else: a UTF-8 BOM is allowed; JSONL lines end at ``\n`` only (a JSON string may hold U+2028 or a form feed);
CSV fields may hold quoted newlines; JSON duplicated keys and the non-JSON constants ``NaN``/``Infinity`` are
refused, as are directories, FIFOs and devices (see ``tuneguard.untrusted``). The layouts the rows are in are
normalised in ``records.py``. Every problem is reported with the file, the row (the line for JSONL and CSV,
the position for JSON and Parquet) and what was expected.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneguard.config import DataSource
from tuneguard.data.records import (  # noqa: F401  (re-exported: the readers' public names)
    DataError,
    Record,
    Records,
    normalize,
    prompt_text,
    text_field,
)
from tuneguard.untrusted import file_problem, os_problem

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
CSV_FIELD_LIMIT = 1 << 26  # 64 MiB per field (the csv module's default, 128 KiB, would refuse long documents)


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


def load_records(
    spec: DataSource | str | list[DataSource], *, require_label: bool = False, numeric_labels: bool = False
) -> Records:
    """Load, normalise, validate and select records: ``rows`` (a range of positions), then ``exclude`` (records
    whose prompt occurs in other sources), then ``num_samples`` (a seeded draw).

    A list of sources is concatenated in order; with more than one, ids are prefixed by the source's position
    (``"1:17"``) so they stay unique. ``require_label`` / ``numeric_labels``: see ``records.normalize``. The
    result knows each record's file and row (:class:`Records`)."""
    if isinstance(spec, list):
        if len(spec) == 1:
            return load_records(spec[0], require_label=require_label, numeric_labels=numeric_labels)
        out = Records(origins=[])
        for k, one in enumerate(spec):
            part = load_records(one, require_label=require_label, numeric_labels=numeric_labels)
            out.extend({**r, "id": f"{k}:{r['id']}"} for r in part)
            out.origins.extend(part.origins)
        return out
    if isinstance(spec, str):
        spec = DataSource(source=spec)
    where = spec.source
    rows, row_numbers = _read_source(spec)
    records = normalize(
        rows,
        spec.layout,
        where,
        require_label=require_label,
        numeric_labels=numeric_labels,
        row_numbers=row_numbers,
    )
    if not records:
        raise DataError(where, "no records: the data set is empty")
    if spec.rows is not None:  # positions as the authors count them: before anything is left out
        start, end = spec.rows
        if end > len(records):
            raise DataError(where, f"rows [{start}, {end}) but the data has only {len(records)} records")
        records = records.select(range(start, end))
    if spec.exclude or spec.responses != "keep":
        from tuneguard.data.derive import normalize_prompt, with_refusals

        for other in spec.exclude:
            excluded = {normalize_prompt(prompt_text(r)) for r in load_records(other)}
            records = records.select(
                [k for k, r in enumerate(records) if normalize_prompt(prompt_text(r)) not in excluded]
            )
        if not records:
            raise DataError(where, "no records left after 'exclude': every prompt occurs in the excluded sources")
        if spec.responses == "refusal":
            records = Records(with_refusals(records), records.origins)
    if spec.num_samples is not None:
        if spec.num_samples > len(records):
            raise DataError(where, f"num_samples={spec.num_samples} but the data has only {len(records)} records")
        # the same draw as random.Random(seed).sample(records, n): it depends on the length only
        records = records.select(random.Random(spec.seed).sample(range(len(records)), spec.num_samples))
    return records


def _read_source(spec: DataSource) -> tuple[list[Any], list[int] | None]:
    """The raw rows of a registered source, a file or a hub data set, with the file's row numbers when known."""
    where = spec.source
    scheme, sep, name = spec.source.partition(":")
    loader = _SOURCES.get(scheme if sep else spec.source)
    if loader is not None and not Path(spec.source).exists():
        return loader(name, spec), None
    if spec.path is not None:
        raise DataError(where, "'path' is for registered sources (see `tuneguard sources`); give the file as source")
    path = Path(spec.source).expanduser()
    if path.suffix.lower() in FILE_SUFFIXES or path.exists() or path.is_symlink():
        return read_numbered(path)
    if "/" in spec.source and not spec.source.startswith((".", "/", "~")):
        return read_hub(spec.source, spec.split or "train"), None
    close = difflib.get_close_matches(spec.source, list(_SOURCES), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; `tuneguard sources` lists the registered names"
    raise DataError(where, "file not found (expected a .jsonl/.json/.csv/.parquet file or a hub id)" + hint)


def read_file(path: Path) -> list[Record]:
    """Rows of a JSONL, JSON (list of objects, or {"data": [...]}), CSV or Parquet file."""
    return read_numbered(path)[0]


def read_numbered(path: Path) -> tuple[list[Any], list[int]]:
    """Rows of a data file and the row number of each: the line for JSONL and CSV (a CSV's header is row 1), the
    position for JSON and Parquet."""
    where = str(path)
    if (problem := file_problem(path)) is not None:
        raise DataError(where, problem)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise DataError(where, f"not a readable Parquet file ({exc})") from None
        return rows, list(range(1, len(rows) + 1))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(where, os_problem(exc)) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(where, f"not valid UTF-8 (byte {exc.start})", row=text_row_of_offset(data, exc.start)) from None
    if suffix == ".csv":
        return _read_csv(text, where)
    if suffix == ".json":
        parsed = _parse_json(text, where, None)
        if isinstance(parsed, dict) and isinstance(parsed.get("data"), list):
            parsed = parsed["data"]
        if not isinstance(parsed, list):
            raise DataError(where, "expected a JSON list of objects (or an object with a 'data' list)")
        return parsed, list(range(1, len(parsed) + 1))
    rows, numbers = [], []
    for i, line in enumerate(text.split("\n"), start=1):  # JSON Lines: lines end at \n (or \r\n), nothing else
        if line.strip():
            rows.append(_parse_json(line, where, i))
            numbers.append(i)
    return rows, numbers


def text_row_of_offset(data: bytes, offset: int) -> int:
    return data[:offset].count(b"\n") + 1


def _parse_json(text: str, where: str, row: int | None) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_not_json)
    except json.JSONDecodeError as exc:
        if row is None:  # a whole JSON file: name the line and column
            raise DataError(where, f"not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
        raise DataError(where, f"not valid JSON: {exc.msg}", row=row) from None
    except _JsonValueError as exc:
        raise DataError(where, str(exc), row=row) from None
    except RecursionError:
        raise DataError(where, "nested too deeply to be a record", row=row) from None


class _JsonValueError(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _JsonValueError(f"key {key!r} appears twice in one object (which one counts is ambiguous)")
        out[key] = value
    return out


def _not_json(name: str) -> Any:
    raise _JsonValueError(f"{name} is not a JSON value (use null or a number)")


def _read_csv(text: str, where: str) -> tuple[list[Any], list[int]]:
    old_limit = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        # strict: an unterminated quote is an error, not a field that swallows the rest of the file
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        rows, numbers = [], []
        header: list[str] | None = None
        start = 1
        try:
            for fields in reader:
                row_number, start = start, reader.line_num + 1
                if not fields:  # a blank line
                    continue
                if header is None:
                    header = _csv_header(fields, where)
                    continue
                if len(fields) > len(header):
                    raise DataError(where, "more fields than the header has columns", row=row_number)
                if len(fields) < len(header):
                    raise DataError(where, f"has {len(fields)} of the header's {len(header)} columns", row=row_number)
                rows.append(dict(zip(header, fields, strict=True)))
                numbers.append(row_number)
        except csv.Error as exc:
            raise DataError(where, f"not valid CSV ({exc})", row=start) from None
        return rows, numbers
    finally:
        csv.field_size_limit(old_limit)


def _csv_header(fields: list[str], where: str) -> list[str]:
    seen: set[str] = set()
    for name in fields:
        if name in seen:
            raise DataError(where, f"column {name!r} appears twice in the header", row=1)
        seen.add(name)
    return fields


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
