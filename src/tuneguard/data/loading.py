"""Load records ``{id, prompt, response, [label]}`` from a file, a hub data set or a registered source.

One reader per format (JSONL, JSON, CSV, Parquet) reads the rows (``readers.py``); registered sources convert
their own rows (``registry.py``); the rows' layouts are normalised and validated in ``records.py``; then the
``DataSource``'s selection applies (``rows``, ``exclude``, ``responses``, ``num_samples``). Every problem is a
``DataError`` naming the file or source, the row where there is one, and what was expected.
"""

from __future__ import annotations

import difflib
import random
from pathlib import Path
from typing import Any

from tuneguard.config import DataSource
from tuneguard.data.derive import normalize_prompt, with_refusals
from tuneguard.data.readers import FILE_SUFFIXES, read_hub, read_numbered
from tuneguard.data.records import DataError, Records, normalize, prompt_text
from tuneguard.data.registry import load_source, names_a_source, registered_sources


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
    for other in spec.exclude:
        excluded = {normalize_prompt(prompt_text(r)) for r in load_records(other)}
        records = records.select([k for k, r in enumerate(records) if normalize_prompt(prompt_text(r)) not in excluded])
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
    if names_a_source(spec.source) and not Path(spec.source).exists():
        return load_source(spec), None
    if spec.path is not None:
        raise DataError(where, "'path' is for registered sources (see `tuneguard sources`); give the file as source")
    path = Path(spec.source).expanduser()
    if path.suffix.lower() in FILE_SUFFIXES or path.exists() or path.is_symlink():
        return read_numbered(path)
    if "/" in spec.source and not spec.source.startswith((".", "/", "~")):
        return read_hub(spec.source, spec.split or "train"), None
    families = sorted({src.family for src in registered_sources()})
    close = difflib.get_close_matches(spec.source, families, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; `tuneguard sources` lists the registered names"
    raise DataError(where, "file not found (expected a .jsonl/.json/.csv/.parquet file or a hub id)" + hint)
