"""Paths in the stage store's records: relative to the store, so that a moved or copied store keeps working.

A ``stage.json`` names files of its own and of other stages (``model_dir``, ``adapter_dir``, ``input_stage_dir``,
the input model's path). Recorded as absolute paths they would tie a store to the place it was computed in: a
copy would read the original's models while the original exists, and break when it is gone. Paths that point
into the store are therefore recorded relative to it (the ``output_dir``); paths outside it (a user's model
directory) are kept as given. Records of an older tuneguard (absolute paths, no ``store_relative`` list) are
read by looking each stage file up in the store where the record now lies.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

STAGE_NAMES = ("align", "finetune", "repair", "eval")
# stage.json fields that hold paths (dotted: inside a mapping). Those that point into the store are recorded
# relative to it and listed under "store_relative"; records without that list are from an older tuneguard.
PATH_FIELDS = ("model_dir", "adapter_dir", "input_stage_dir", "input_model.model_name_or_path")
_STAGE_DIR_NAME = re.compile(r"[\w.-]+-[0-9a-f]{12}")


def store_root(directory: str | Path) -> Path:
    """The store (``output_dir``) that the stage directory ``<output_dir>/<stage>/<method>-<key12>`` belongs to."""
    return Path(directory).parent.parent


def store_relative_paths(info: dict[str, Any], directory: Path) -> dict[str, Any]:
    """``info`` with each path field (:data:`PATH_FIELDS`) that points into the store made relative to it (POSIX
    form) and listed under ``store_relative``; paths outside the store (a user's model) stay as they are."""
    root = store_root(directory).resolve()
    record = copy.deepcopy(info)
    relative = []
    for name in PATH_FIELDS:
        value = _field(record, name)
        if not value or not isinstance(value, str | Path) or not Path(value).exists():
            continue  # not a path (a hub id, offline:tiny) or nothing there
        path = Path(value).resolve()
        if path.is_relative_to(root):
            _set_field(record, name, path.relative_to(root).as_posix())
            relative.append(name)
    record["store_relative"] = relative
    return record


def resolve_paths(record: dict[str, Any], directory: Path) -> dict[str, Any]:
    """The path fields of a ``stage.json`` record as paths for the store where ``directory`` now lies.

    Fields listed under ``store_relative`` are joined to the store. A record without that list was written by an
    older tuneguard with absolute paths: each path of a stage file is taken from this store
    (:func:`relocate_store_path`), whether or not the store it was written in still exists, so a moved or copied
    store uses its own files, never the original's (a file the copy lacks is then an error, not a silent read)."""
    root = store_root(directory)
    info = copy.deepcopy(record)
    relative = record.get("store_relative")
    for name in PATH_FIELDS:
        value = _field(info, name)
        if not value or not isinstance(value, str):
            continue
        if relative is not None:
            if name in relative:
                _set_field(info, name, str(root / value))
        elif Path(value).is_absolute() and (name != "input_model.model_name_or_path" or record.get("input_stage_dir")):
            _set_field(info, name, str(relocate_store_path(value, root)))  # not a user's model: a stage's file
    return info


def store_path(path: str | Path, root: str | Path) -> str:
    """How to record ``path`` in a file of the store at ``root``: relative to it (POSIX form) when inside it."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    return resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else str(path)


def resolve_store_path(value: str | Path, root: str | Path) -> Path:
    """The inverse of :func:`store_path`: a relative path is joined to the store; an absolute one (recorded by an
    older tuneguard) goes through :func:`relocate_store_path`."""
    path = Path(value)
    return relocate_store_path(path, Path(root)) if path.is_absolute() else Path(root) / path


def relocate_store_path(path: str | Path, root: Path) -> Path:
    """An absolute path from an older record, in the store at ``root``: a stage directory or one of its files
    (``.../<stage>/<method>-<key12>[/...]``, the stage key in its name) is the same place under ``root``; any other
    path is returned unchanged."""
    parts = Path(path).parts
    for i in range(len(parts) - 2, -1, -1):  # from the right: the store's own folders may have any names
        if parts[i] in STAGE_NAMES and _STAGE_DIR_NAME.fullmatch(parts[i + 1]):
            return root.joinpath(*parts[i:])
    return Path(path)


def _field(record: dict[str, Any], dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _set_field(record: dict[str, Any], dotted: str, value: Any) -> None:
    *head, last = dotted.split(".")
    for part in head:
        record = record[part]
    record[last] = value
