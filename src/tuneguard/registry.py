"""One registry for everything looked up by name: methods, judges, data sources, model resolvers.

A :class:`Registry` maps a name to an entry (a method description, a judge factory, a data source ...). Entries
register themselves when their module is imported, with one call, ``REGISTRY.register(name, entry)`` (or
``@REGISTRY.register(name)`` on a function or class). The built-in modules and the plug-ins (``plugins.py``) are
imported on the first lookup, not at ``import tuneguard``, so looking a name up is what loads the code behind
it. An unknown name is an error that names the closest registered ones.

Modelled on lm-evaluation-harness's ``lm_eval/api/registry.py``.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar, overload

from tuneguard.plugins import load_plugins

T = TypeVar("T")


class UnknownNameError(LookupError):
    """A name that is not registered; the message names the closest registered names."""


class Registry(Generic[T]):
    """Name -> entry, filled by ``register`` calls in the modules listed in ``builtins`` and in the plug-ins.

    ``kind`` names what the entries are ("judge", "data source") in error messages; ``builtins`` are the
    modules whose import registers the built-in entries, imported (with the plug-ins) before the first lookup.
    """

    def __init__(self, kind: str, builtins: Sequence[str] = ()) -> None:
        self.kind = kind
        self._builtins = tuple(builtins)
        self._entries: dict[str, T] = {}
        self._loaded = False

    # ------------------------------------------------------------------------------------------- registering
    @overload
    def register(self, name: str) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, entry: T) -> T: ...
    def register(self, name: str, entry: Any = None) -> Any:
        """Register ``entry`` as ``name`` (returns it), or, without ``entry``, a decorator that does.

        Registering a name twice with a different entry is an error (two plug-ins claiming one name); the same
        entry again (a module imported twice) is not."""
        if entry is None:
            return lambda obj: self.register(name, obj)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        current = self._entries.get(name)
        if current is not None and current is not entry and not _same_definition(current, entry):
            raise ValueError(f"{self.kind} {name!r} is already registered ({_describe(current)})")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a test's or a notebook's temporary entry)."""
        self._entries.pop(name, None)

    # ---------------------------------------------------------------------------------------------- looking up
    def get(self, name: str) -> T:
        """The entry registered as ``name``; :class:`UnknownNameError` naming the closest names otherwise."""
        self.load()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.unknown(name)) from None

    def unknown(self, name: Any, extra: Sequence[str] = ()) -> str:
        """The message for an unknown ``name``: "unknown judge 'x' (did you mean 'y'?); known: ..." (``extra``:
        names accepted besides the registered ones, e.g. 'auto')."""
        self.load()
        known = [*extra, *self.names()]
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; known: {', '.join(known) or 'none'}"

    def names(self) -> list[str]:
        """The registered names, sorted."""
        self.load()
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, entry) pairs in registration order."""
        self.load()
        return iter(list(self._entries.items()))

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._entries

    def __len__(self) -> int:
        self.load()
        return len(self._entries)

    def load(self) -> None:
        """Import the built-in modules and the plug-ins once (each registers its entries on import)."""
        if self._loaded:
            return
        self._loaded = True  # first: a module that looks a name up while registering must not recurse
        for module in self._builtins:
            importlib.import_module(module)
        load_plugins()


def _same_definition(a: Any, b: Any) -> bool:
    # A module re-imported (importlib.reload, a test's fresh import) registers equal but distinct objects.
    return getattr(a, "__qualname__", None) is not None and (
        getattr(a, "__module__", None),
        getattr(a, "__qualname__", None),
    ) == (getattr(b, "__module__", None), getattr(b, "__qualname__", None))


def _describe(entry: Any) -> str:
    module = getattr(entry, "__module__", None) or type(entry).__module__
    return f"by {module}"
