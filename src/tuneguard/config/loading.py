"""Configs from YAML files (or ``preset:NAME``) and ``key.sub=value`` overrides, validated into the settings
models, with one line per problem naming the file and the key path (and a did-you-mean for an unknown key).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tuneguard.config.settings import ConfigError, ExperimentConfig
from tuneguard.presets import UnknownPresetError, resolve_config_path
from tuneguard.untrusted import file_problem, load_yaml, read_config_text


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    cls: type[BaseModel] = ExperimentConfig,
) -> Any:
    """Read a YAML file or ``preset:NAME`` (or start from defaults), apply ``key.sub=value`` overrides, validate
    into ``cls``.

    The file is untrusted input (``tuneguard.untrusted``): a regular file of at most 1 MiB, YAML of bounded depth
    and size. A file without settings (empty, or comments only) is refused: running the default experiment in
    its place would be a surprise."""
    raw: dict[str, Any] = {}
    where = "<defaults>"
    if path is not None:
        where = str(path)
        try:
            p = resolve_config_path(path)
        except UnknownPresetError as exc:
            raise ConfigError(str(exc)) from None
        raw = read_yaml_mapping(p, "an experiment config")
    for item in overrides or []:
        apply_override(raw, item)
    return validate_config(raw, cls, where)


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """The top-level mapping of a config-like YAML file; every problem is a ConfigError naming the file."""
    if file_problem(path) == "file not found":
        raise ConfigError(f"config file not found: {path}")
    loaded = load_yaml(read_config_text(path, ConfigError), str(path), ConfigError)
    if loaded is None or loaded == {}:
        raise ConfigError(
            f"{path}: no settings (the file is empty); {what} needs at least one key "
            "(`tuneguard presets demo` prints a complete one)"
        )
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(loaded).__name__}")
    return loaded


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML (numbers, lists, null, true)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    key, _, text = item.partition("=")
    parts = [k for k in key.strip().split(".") if k]
    if not parts:
        raise ConfigError(f"override {item!r} has an empty key")
    value = load_yaml(text, f"override {key.strip()}", ConfigError) if text.strip() else ""
    node = raw
    for k in parts[:-1]:
        child = node.get(k)
        if not isinstance(child, dict):
            child = {}
            node[k] = child
        node = child
    node[parts[-1]] = value


# Keys that would hold a credential. Secrets come from the environment only (HF_TOKEN, WANDB_API_KEY, ...):
# a config is written, resolved, into every stage.json.
SECRET_KEYS = frozenset({"token", "hf_token", "hub_token", "use_auth_token", "api_key", "access_token", "password"})


def validate_config(raw: dict[str, Any], cls: type[BaseModel], where: str = "<config>") -> Any:
    """Validate a raw mapping; errors name the file and the key path, with suggestions for unknown keys."""
    if secret := _find_secret_key(raw):
        raise ConfigError(
            f"{where}: {secret}: secrets are not read from configs (they would be saved with every result); "
            "set them in the environment instead (HF_TOKEN for the Hugging Face hub)"
        )
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{where}: invalid configuration", *(f"  {p}" for p in validation_problems(exc, cls))]
        raise ConfigError("\n".join(lines)) from None


def validation_problems(exc: ValidationError, cls: type[BaseModel]) -> list[str]:
    """One 'key.path: message' line per error (each once), with a did-you-mean for unknown keys and the value
    given for a bad scalar (``got nan``, ``got null``)."""
    problems: list[str] = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"] if not _is_union_branch(x))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            hint = _suggest(cls, err["loc"])
            msg = "unknown key" + (f" (did you mean '{hint}'?)" if hint else "")
        elif err["type"] == "missing":
            msg = "required, but missing"
        else:
            msg = msg.removeprefix("Value error, ") + _given(err)
        line = f"{loc}: {msg}" if loc else msg
        if line not in problems:
            problems.append(line)
    return problems


def _given(err: Any) -> str:
    if "input" not in err or isinstance(err["input"], dict | list):
        return ""
    value = err["input"]
    if value is None:
        return " (got null)"
    text = repr(value)
    return f" (got {text if len(text) <= 60 else text[:57] + '...'})"


def _is_union_branch(part: Any) -> bool:
    # pydantic names the branch of a union it tried ("int", "float", "DataSource", "list[DataSource]"); config keys
    # are lower-case names, so these never clash with one.
    return isinstance(part, str) and (part in {"int", "float", "str", "bool"} or "[" in part or part[:1].isupper())


def _find_secret_key(node: Any, path: str = "") -> str | None:
    """The dotted path of the first key in ``node`` (nested mappings) that names a secret, if any."""
    if not isinstance(node, dict):
        return None
    for key, value in node.items():
        here = f"{path}.{key}" if path else str(key)
        if str(key).lower() in SECRET_KEYS:
            return here
        if found := _find_secret_key(value, here):
            return found
    return None


def _suggest(cls: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    """Closest valid key for an unknown key at ``loc`` (walks nested model types)."""
    model: Any = cls
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        model = _model_type(field.annotation)
        if model is None:
            return None
    names = list(getattr(model, "model_fields", {}))
    match = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    return match[0] if match else None


def _model_type(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_type(arg)
        if found is not None:
            return found
    return None


def dump_config(cfg: BaseModel) -> dict[str, Any]:
    """The fully resolved config as plain JSON-able data."""
    return cfg.model_dump(mode="json")
