"""Reading untrusted files: configs, presets, grid files and data files come from users, or from whoever shared
them, and are read with bounds.

- Only regular files are read. A directory, a FIFO or device (reading ``/dev/zero`` would never end), a broken
  symbolic link or a symbolic link loop is named as what it is, not reported as "file not found".
- Config-like files (experiment configs, presets, grid files) are at most :data:`MAX_CONFIG_BYTES`.
- YAML is parsed in three passes: the event stream (iterative, so a deeply nested file cannot overflow the stack)
  bounds the nesting depth; the node graph bounds the size after alias expansion (a "billion laughs" file of a
  few hundred bytes expands to 10^9 nodes) and refuses duplicated keys, which YAML forbids and PyYAML would
  silently resolve to the last one; only then is the document built. Anchors, aliases and merge keys within
  the bounds are valid YAML and are accepted.
- Names that become file or directory names (presets, grids) must be plain names that stay inside their folder.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB; configs, presets and grid files are a few KB
MAX_YAML_DEPTH = 64  # nested mappings / lists; the deepest shipped config has 5
MAX_YAML_NODES = 100_000  # after alias expansion; the largest shipped config has ~200

ErrorFactory = Callable[[str], Exception]
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a regular file, as a short phrase ("is a directory"), or None if it can."""
    try:
        info = path.stat()  # follows symbolic links
    except FileNotFoundError:
        if path.is_symlink():
            return f"is a broken symbolic link (to {os.readlink(path)})"
        return "file not found"
    except OSError as exc:
        return os_problem(exc)
    if stat.S_ISDIR(info.st_mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a FIFO, socket or device)"
    return None


def os_problem(exc: OSError) -> str:
    """A short phrase for an OS error met while reading a path."""
    if exc.errno == errno.ELOOP:
        return "is a symbolic link loop"
    return f"cannot be read: {os_reason(exc)}"


def os_reason(exc: OSError) -> str:
    """Why an OS call on a path failed, in words."""
    reasons = {
        errno.ELOOP: "a symbolic link loop",
        errno.ENOTDIR: "a folder on its path is a file",
        errno.ENAMETOOLONG: "a name on its path is too long for the file system",
        errno.EACCES: "permission denied",
        errno.EROFS: "the file system is read-only",
        errno.ENOSPC: "the disk is full",
    }
    return reasons.get(exc.errno or 0, exc.strerror or str(exc))


def check_readable_file(path: Path, error: ErrorFactory) -> None:
    """Raise ``error(message)`` (the message names the path) unless ``path`` is a readable regular file."""
    if (problem := file_problem(path)) is not None:
        raise error(f"{path}: {problem}")


def read_config_text(path: Path, error: ErrorFactory, *, max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of a config-like file (a BOM is allowed), refusing what is not a regular file or is too large."""
    check_readable_file(path, error)
    size = path.stat().st_size
    if size > max_bytes:
        raise error(f"{path}: {size} bytes; a config file is at most {max_bytes} bytes")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: {os_problem(exc)}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(f"{path}: not valid UTF-8 (byte {exc.start}, line {line})") from None


def load_yaml(text: str, where: str, error: ErrorFactory) -> Any:
    """Parse YAML text within :data:`MAX_YAML_DEPTH` and :data:`MAX_YAML_NODES`; every problem is ``error(msg)``
    with ``where`` (a file name or "override ...") in the message."""
    try:
        _check_depth(text, where, error)
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_graph(node, where, error)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise error(f"{where}: not valid YAML: {exc}") from None


def _check_depth(text: str, where: str, error: ErrorFactory) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else "?"
                raise error(f"{where}: nested more than {MAX_YAML_DEPTH} levels deep (line {line})")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _check_graph(root: yaml.Node, where: str, error: ErrorFactory) -> None:
    """Expanded size (aliases counted at every use, each node's size computed once) and duplicated keys."""
    size: dict[int, int] = {}
    open_nodes: set[int] = set()  # entered, children not yet sized: an alias to one of them is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in size:
            continue
        children = _children(node)
        if not children_done:
            if id(node) in open_nodes:
                raise error(f"{where}: an alias refers to a value that contains it (line {node.start_mark.line + 1})")
            open_nodes.add(id(node))
            if isinstance(node, yaml.MappingNode):
                _check_unique_keys(node, where, error)
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in size)
            continue
        open_nodes.discard(id(node))
        size[id(node)] = 1 + sum(size[id(child)] for child in children)
        if size[id(node)] > MAX_YAML_NODES:
            raise error(
                f"{where}: expands to more than {MAX_YAML_NODES} values (aliases repeat what they refer to); "
                "a config is far smaller"
            )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_unique_keys(node: yaml.MappingNode, where: str, error: ErrorFactory) -> None:
    seen: set[tuple[str, str]] = set()
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        ident = (key.tag, key.value)
        if ident in seen:
            raise error(f"{where}: key {key.value!r} appears twice in one mapping (line {key.start_mark.line + 1})")
        seen.add(ident)


def check_plain_name(name: str, what: str, error: ErrorFactory) -> str:
    """``name`` if it is a plain file name (letters, digits, ``_ . -``; not starting with a dot) that stays
    inside the folder it is joined to; otherwise ``error``."""
    if not _PLAIN_NAME.fullmatch(name) or len(name) > 200:
        raise error(
            f"{what} {name!r} is not a plain name: use letters, digits, '_', '.' and '-' (not starting with '.' "
            "or '-', at most 200 characters), no '/'"
        )
    return name


def make_writable_dir(path: Path, what: str, error: ErrorFactory, *, room: int = 0) -> Path:
    """Create the directory ``path`` (``what`` names it in errors: a config key or an environment variable) and
    check that it is writable and leaves ``room`` bytes of path length for the files below it."""
    path = path.expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise error(f"{what}: is a file, not a directory") from None
    except OSError as exc:
        raise error(f"{what}: cannot be created: {os_reason(exc)}") from None
    try:
        limit = os.pathconf(path, "PC_PATH_MAX")
    except (OSError, ValueError):
        limit = 4096
    if len(str(path.resolve())) + room > limit:
        raise error(f"{what}: too long: the files below it would exceed the {limit}-byte path limit")
    probe = path / f".write-test.{os.getpid()}"  # one per process: ranks of one run may probe at once
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise error(f"{what}: cannot write into it: {os_reason(exc)}") from None
    return path
