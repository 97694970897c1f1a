"""Presets: named experiment configs that ship with tuneguard (``tuneguard presets`` lists them).

Each is a YAML file in this folder whose leading comment says what it reproduces and where every default comes
from. Anywhere a config file is accepted, ``preset:NAME`` names one, e.g.
``tuneguard run preset:smollm2-offline finetune.user_data.poison_ratio=0``.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from tuneguard.untrusted import check_plain_name

PRESET_SCHEME = "preset:"
PRESETS_DIR = Path(__file__).resolve().parent


class UnknownPresetError(ValueError):
    """A ``preset:NAME`` that does not exist; the message lists the close names."""


def list_presets() -> list[tuple[str, str]]:
    """(name, one-line summary) of every preset, sorted by name; the summary is the file's first comment line."""
    out = []
    for path in sorted(PRESETS_DIR.glob("*.yaml")):
        first = next((line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")), "#")
        out.append((path.stem, first.lstrip("# ").strip()))
    return out


def preset_path(name: str) -> Path:
    """The YAML file of preset ``name`` (with or without the ``preset:`` prefix); only the files of this folder
    are presets (``preset:../x`` names none)."""
    name = check_plain_name(name.removeprefix(PRESET_SCHEME), "preset", UnknownPresetError)
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        names = [n for n, _ in list_presets()]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UnknownPresetError(f"unknown preset {name!r}; {hint}`tuneguard presets` lists: {', '.join(names)}")
    return path


def resolve_config_path(path: str | Path) -> Path:
    """A config argument as a file: ``preset:NAME`` becomes the preset's file, anything else a path."""
    text = str(path)
    return preset_path(text) if text.startswith(PRESET_SCHEME) else Path(path)
