"""Read the rows of data files and hub data sets (``data/loading.py`` turns them into records).

One reader per format (JSONL, JSON, CSV, Parquet), each accepting every valid form of its format and nothing
else: a UTF-8 BOM is allowed; JSONL lines end at ``\n`` only (a JSON string may hold U+2028 or a form feed);
CSV fields may hold quoted newlines; JSON duplicated keys and the non-JSON constants ``NaN``/``Infinity`` are
refused, as are directories, FIFOs and devices (see ``tuneguard.untrusted``). The layouts the rows are in are
normalised in ``records.py``. Every problem is reported with the file, the row (the line for JSONL and CSV,
the position for JSON and Parquet) and what was expected.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from tuneguard.data.records import (  # noqa: F401  (re-exported: the readers' public names)
    DataError,
    Record,
    prompt_text,
)
from tuneguard.untrusted import file_problem, os_problem

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
CSV_FIELD_LIMIT = 1 << 26  # 64 MiB per field (the csv module's default, 128 KiB, would refuse long documents)


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
