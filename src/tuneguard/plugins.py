"""Plug-ins: modules that register methods, judges, data sources or model resolvers from outside the core.

A plug-in is a module whose import registers its entries in the registries (``tuneguard.registry``). tuneguard
imports, once, before the first registry lookup:

- the plug-ins that ship with tuneguard (``BUILTIN_PLUGINS``: the offline world), and
- every module named by an entry point in the ``tuneguard.plugins`` group of an installed distribution, e.g. in
  a third party's pyproject.toml::

      [project.entry-points."tuneguard.plugins"]
      mydata = "mypackage.tuneguard_plugin"

No core module imports a plug-in itself: the offline world registers its data sources, its judge and its model
resolver exactly as a third-party package would.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "tuneguard.plugins"
BUILTIN_PLUGINS = ("tuneguard.world.plugin",)

_loaded: list[str] = []


def load_plugins() -> list[str]:
    """Import the built-in plug-ins and the installed ones (once); return the modules imported so far."""
    if _loaded:
        return list(_loaded)
    _loaded.append("<loading>")  # re-entrant calls (a plug-in that looks a name up while registering) return
    try:
        names = list(BUILTIN_PLUGINS)
        for point in entry_points(group=ENTRY_POINT_GROUP):
            if point.value not in names:
                names.append(point.value)
        for name in names:
            importlib.import_module(name)
            logger.debug("plug-in %s loaded", name)
        _loaded[:] = names
    except BaseException:
        _loaded.clear()  # a plug-in that fails to import fails again, with its traceback, on the next lookup
        raise
    return list(_loaded)
