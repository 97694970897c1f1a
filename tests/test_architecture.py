"""The package's import structure (docs/architecture.md): no import cycle in src/tuneguard, not even one hidden
inside a function; every import points down the layers; no core module imports a plug-in (the offline world plugs
in like a third-party package).

Run as a script to print the graph's numbers: ``python tests/test_architecture.py``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PLUGIN_PACKAGES = ("tuneguard.world",)
# The layers of docs/architecture.md, bottom first: a module may import its own layer and those below it.
LAYERS = (
    (
        "tuneguard",
        "tuneguard.store",
        "tuneguard.store_paths",
        "tuneguard.config",
        "tuneguard.presets",
        "tuneguard.registry",
        "tuneguard.plugins",
        "tuneguard.model_resolvers",
        "tuneguard.untrusted",
        "tuneguard.installed",
    ),
    ("tuneguard.data", "tuneguard.models", "tuneguard.callbacks", "tuneguard.progress", "tuneguard.report"),
    ("tuneguard.eval",),
    ("tuneguard.methods",),
    ("tuneguard.stages", "tuneguard.roles"),
    ("tuneguard.preflight",),
    ("tuneguard.pipeline",),
    (
        "tuneguard.grid",
        "tuneguard.grid_records",
        "tuneguard.gridexec.settings",
        "tuneguard.results",
        "tuneguard.report_page",
        "tuneguard.plots",
    ),
    ("tuneguard.cli", "tuneguard.serve", "tuneguard.gridexec", "tuneguard.demo"),
    PLUGIN_PACKAGES,
)


def module_imports(src: Path = SRC) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> tuneguard modules imported at module level, module -> those imported inside functions);
    imports under ``if TYPE_CHECKING:`` are left out (they never run)."""
    files = {}
    for path in src.rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    top: dict[str, set[str]] = {m: set() for m in files}
    inner: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        _walk(tree, module, path.name == "__init__.py", files, top, inner, in_function=False)
    return top, inner


def _walk(node, module, is_package, files, top, inner, *, in_function) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            for target in _targets(child, module, is_package, files):
                if target != module:
                    (inner if in_function else top)[module].add(target)
        nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        _walk(child, module, is_package, files, top, inner, in_function=nested)


def _targets(node, module: str, is_package: bool, files) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".") if is_package else module.split(".")[:-1]
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join([*parts, *([node.module] if node.module else [])])
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
    out = []
    for name in names:
        while name not in files and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in files and name.startswith("tuneguard"):
            out.append(name)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer_of(module: str) -> int:
    """The index in LAYERS of the longest prefix that names ``module`` (or a package above it)."""
    best = max(
        (
            (len(prefix), index)
            for index, layer in enumerate(LAYERS)
            for prefix in layer
            if module == prefix or module.startswith(prefix + ".")
        ),
    )
    return best[1]


def _all_edges() -> dict[str, set[str]]:
    top, inner = module_imports()
    return {m: top[m] | inner[m] for m in top}


def test_no_import_cycle_not_even_through_imports_inside_functions():
    # An import moved into a function to dodge a cycle still closes the cycle at run time: counted here.
    assert cycles(_all_edges()) == []


def test_every_import_points_down_the_layers():
    upward = [
        (module, target)
        for module, targets in _all_edges().items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert upward == []


def test_no_core_module_imports_a_plugin():
    edges = _all_edges()
    core = [m for m in edges if not m.startswith(PLUGIN_PACKAGES)]
    offenders = {m: sorted(t for t in edges[m] if t.startswith(PLUGIN_PACKAGES)) for m in core}
    assert {m: t for m, t in offenders.items() if t} == {}


if __name__ == "__main__":
    top, inner = module_imports()
    print(f"modules: {len(top)}")
    print(f"module-level tuneguard imports: {sum(map(len, top.values()))}")
    print(f"function-level tuneguard imports: {sum(map(len, inner.values()))}")
    print(f"import cycles (counting function-level imports): {cycles(_all_edges())}")
    if "-v" in sys.argv:
        for module in sorted(inner):
            if inner[module]:
                print(f"  {module} -> {', '.join(sorted(inner[module]))}")
