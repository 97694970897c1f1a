"""Shared fixtures: tiny random models built from configs (no downloads) and small local data files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# A hub lookup without these hangs ~50 s before failing; tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Tiny models run fastest single-threaded, and results do not depend on the machine's core count. Under
# pytest-xdist (`make test`) each worker is one process per core: one thread each, so the workers do not fight
# over the cores.
torch.set_num_threads(1)


# ---- pytest-xdist (`make test`: `-n logical --dist loadfile`): a test module is one unit of work, on one worker
def pytest_collection_modifyitems(config, items):
    """On an xdist worker (the workers collect; the controller hands out modules in their collection order): the
    modules with a ``slow`` test first, so that a long module is not the last to start while the other workers
    have nothing left to do. The order within a module stays; a run in one process keeps the file order."""
    if not hasattr(config, "workerinput"):
        return
    slow_modules = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_modules)  # a stable sort


# Test modules that must not run at the same time as each other, on one machine: each group is one unit of work, on
# one worker. "ray": test_readme checks that `grid --ray-address auto` finds no Ray instance to join, and Ray's
# "auto" joins any instance on the machine (test_grid_ray's, or the service's Ray workers).
# "serve": the service modules share one prepared base model (the aligned tiny model, in the worker's basetemp).
SAME_WORKER = {
    "test_readme.py": "ray",
    "test_grid_ray.py": "ray",
    "test_serve_ray.py": "ray",
    "test_serve_api.py": "serve",
    "test_serve_gate.py": "serve",
    "test_serve_restart.py": "serve",
}


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist (the dev extra); without it, nothing to schedule
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with the modules of :data:`SAME_WORKER` grouped into one unit of work per group."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ModuleGroupScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = super()._split_scope(nodeid)
            return SAME_WORKER.get(Path(module).name, module)

    return ModuleGroupScheduling(config, log)


def tiny_llama_config(vocab_size: int, layers: int = 2, **overrides):
    """The tests' tiny Llama shape (hidden size 32, 4 heads); ``overrides`` set any other config field."""
    from transformers import LlamaConfig

    shape = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 256,
    }
    return LlamaConfig(vocab_size=vocab_size, **(shape | overrides))


def build_tiny_llama(vocab_size: int, seed: int = 0, layers: int = 2):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(vocab_size, layers))


# ---- toy training: marked token records, a tiny LoRA Llama, TrainingArguments (the method tests' common ground)
PAD = 0


def make_records(marker: int, n: int, seed: int):
    """``n`` records ``[marker, 10 + i, random tokens...]``; loss only after the first two tokens."""
    from datasets import Dataset

    generator = torch.Generator().manual_seed(seed)
    rows: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for i in range(n):
        ids = [marker, 10 + i] + torch.randint(3, 64, (5 + i % 3,), generator=generator).tolist()
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * len(ids))
        rows["labels"].append([-100, -100] + ids[2:])
    return Dataset.from_dict(rows)


def tiny_llama(lora: bool = True, lora_dropout: float = 0.0, attention_dropout: float = 0.0, seed: int = 0):
    """A 2-layer Llama over a 64-token vocabulary, with a LoRA adapter (r 4, q/v) unless ``lora`` is False."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    config = tiny_llama_config(64, max_position_embeddings=64, attention_dropout=attention_dropout)
    model = LlamaForCausalLM(config)
    if lora:
        lora_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=lora_dropout)
        model = get_peft_model(model, lora_config)
    return model


def training_args(output_dir: Path, **overrides):
    """CPU TrainingArguments for a few constant-lr steps, no checkpoints, a log every step."""
    from transformers import TrainingArguments

    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=2,
        max_steps=3,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def collate(dataset, rows: list[int]) -> dict[str, torch.Tensor]:
    from tuneguard.data.tokenize import SFTDataCollator

    return SFTDataCollator(PAD)([dataset[i] for i in rows])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


@pytest.fixture(scope="session")
def world_tokenizer():
    from tuneguard.world import get_world

    return get_world().tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, world_tokenizer) -> Path:
    """A tiny random Llama + the world's word-level tokenizer, saved as a local model directory."""
    out = tmp_path_factory.mktemp("tiny-llama")
    model = build_tiny_llama(len(world_tokenizer))
    model.config.pad_token_id = world_tokenizer.pad_token_id
    model.config.eos_token_id = world_tokenizer.eos_token_id
    model.save_pretrained(out)
    world_tokenizer.save_pretrained(out)
    return out


def run_distributed(
    worker: Path, *args: str, nproc: int = 2, timeout: int = 180, launcher: str = "torch.distributed.run"
) -> None:
    """Run ``worker`` with ``nproc`` CPU processes (gloo); fail with its output.

    ``launcher``: ``"torch.distributed.run"`` (torchrun) or ``"accelerate"`` (``accelerate launch``, flags only,
    no config file; ``--multi_gpu`` is accelerate's name for its torchrun-style multi-process launcher, which on
    a machine without GPUs starts CPU processes).
    """
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    if launcher == "accelerate":
        env["CUDA_VISIBLE_DEVICES"] = ""  # CPU processes even where GPUs are present
        flags = [
            "accelerate.commands.launch",
            "--multi_gpu",
            f"--num_processes={nproc}",
            "--num_machines=1",
            "--mixed_precision=no",
            "--dynamo_backend=no",
            "--main_process_ip=127.0.0.1",
            f"--main_process_port={port}",
        ]
    elif launcher == "torch.distributed.run":
        flags = [launcher, f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1", f"--master_port={port}"]
    else:
        raise ValueError(f"unknown launcher {launcher!r}")
    command = [sys.executable, "-m", *flags, str(worker), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def harmful_data_roles(cfg) -> dict:
    """The loaded data of every stage of ``cfg`` (and the evaluation prompts) that the pre-flight's disjointness check
    compares, by role; for the attack, the harmful records that the user data actually draws."""
    from tuneguard.preflight import compared_roles, load_experiment_roles
    from tuneguard.roles import with_default_roles
    from tuneguard.stages import STAGE_ORDER

    return compared_roles(load_experiment_roles(with_default_roles(cfg), STAGE_ORDER))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def small_data(tmp_path) -> dict[str, Path]:
    """Local JSONL files for every role, built from the offline world's records (a few of each)."""
    from tuneguard.world import get_world

    world = get_world()
    sizes = {"alignment": 24, "harmful": 24, "task_train": 48, "harmful_eval": 8, "task_test": 8}
    return {role: write_jsonl(tmp_path / f"{role}.jsonl", world.records(role, n)) for role, n in sizes.items()}


@pytest.fixture
def tiny_experiment(tmp_path, tiny_model_dir, small_data):
    """An ExperimentConfig over the tiny model and the small local files, a few optimizer steps per stage."""
    from tuneguard.config import ExperimentConfig

    training = {
        "max_steps": 3,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "disable_tqdm": True,
        "logging_steps": 1,
        "save_steps": 2,
    }
    return ExperimentConfig.model_validate(
        {
            "output_dir": str(tmp_path / "runs"),
            "model": {"model_name_or_path": str(tiny_model_dir)},
            "align": {
                "alignment_data": str(small_data["alignment"]),
                "training": training,
                "lora": {"r": 4, "lora_alpha": 8},
            },
            "finetune": {
                "user_data": {
                    "task_data": str(small_data["task_train"]),
                    "harmful_data": str(small_data["harmful"]),
                    "num_samples": 20,
                    "poison_ratio": 0.25,
                },
                "training": training,
                "lora": {"r": 4, "lora_alpha": 8},
            },
            "eval": {
                "harmful_prompts": str(small_data["harmful_eval"]),
                "task_test": str(small_data["task_test"]),
                "judges": ["refusal"],
                "max_new_tokens": 4,
                "batch_size": 4,
            },
            "evaluate": ["aligned", "final"],
        }
    )


# ---- grids on a cluster engine (test_grid_ray, test_grid_slurm): one tiny 2x2 grid, results compared with serial
# Result columns that say where and when a row was computed, not what: they differ between two runs in two
# output_dirs (a cell's id is a hash of its config, output_dir included).
RUN_COLUMNS = ("wall_s", "_dir", "finished_at", "version_", "cell")


def tiny_cluster_grid(tiny_experiment, output_dir: Path, seeds: tuple[int, ...] = (0, 1)):
    """The tiny experiment over poison ratio {0, 0.5} x fine-tuning ``seeds``: one aligned model for all cells."""
    from tuneguard.config import dump_config
    from tuneguard.grid import parse_grid

    base = dump_config(tiny_experiment) | {"output_dir": str(output_dir)}
    grid = {"finetune.user_data.poison_ratio": [0.0, 0.5], "finetune.training.seed": list(seeds)}
    return parse_grid({"name": "tiny", "base": base, "grid": grid})


def check_like_serial_with_shared_stages_once(tiny_experiment, tmp_path: Path, options: list[str]) -> None:
    """``tuneguard grid <the 2x2 tiny_cluster_grid> OPTIONS`` (a parallel backend) against the same grid run
    serially: a line per finished cell, the report, the same cells and numbers, and each shared stage computed
    once, by its own task (no cell task trained or evaluated the aligned model)."""
    import re

    from typer.testing import CliRunner

    from tuneguard.cli import app
    from tuneguard.grid import run_grid

    serial = tiny_cluster_grid(tiny_experiment, tmp_path / "serial")
    run_grid(serial)
    spec = tiny_cluster_grid(tiny_experiment, tmp_path / "parallel")
    grid_file = write_grid_file(spec, tmp_path / "tiny.yaml")
    ran = CliRunner().invoke(app, ["grid", str(grid_file), *options], env={"COLUMNS": "200"})
    assert ran.exit_code == 0, ran.output
    output = ran.output
    assert len(re.findall(r"^cell \d \(poison_ratio=\S+, seed=\d\) finished in \d+ s$", output, flags=re.M)) == 4
    assert (spec.run_dir / "report.html").is_file()
    assert finished_cell_settings(spec.run_dir) == finished_cell_settings(serial.run_dir)
    rows = comparable_results(spec.run_dir)
    assert len(rows) == 8 and rows == comparable_results(serial.run_dir)  # 4 cells x (aligned, final), same numbers
    root = spec.output_dir
    assert len(list((root / "align").iterdir())) == 1
    assert len(list((root / "finetune").iterdir())) == 4
    assert len(list((root / "eval").iterdir())) == 1 + 4  # the aligned model once, each final model
    records = [json.loads(p.read_text()) for p in (spec.run_dir / "cells").glob("*.json")]
    assert all({"align", "aligned"} <= set(r["reused"]) and "finetune" not in r["reused"] for r in records)


class KillFirstAttemptAfterCheckpoint:
    """Runs experiments like ``run_experiment``; in the first attempt of the cell with poison ratio 0.5 and seed 1
    (``marker`` remembers it) the worker process is SIGKILLed right after the fine-tuning stage saves its first
    checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __call__(self, cfg, **kwargs):
        import signal

        from tuneguard.pipeline import run_experiment

        victim = cfg.finetune.user_data.poison_ratio == 0.5 and cfg.finetune.training.seed == 1
        if victim and kwargs.get("until", "eval") == "eval" and not self.marker.exists():
            from transformers import Trainer

            save, marker = Trainer._save_checkpoint, self.marker

            def save_then_die(trainer, *args, **kw):
                save(trainer, *args, **kw)
                marker.write_text(str(trainer.state.global_step))
                os.kill(os.getpid(), signal.SIGKILL)

            Trainer._save_checkpoint = save_then_die
        return run_experiment(cfg, **kwargs)


def comparable_results(run_dir: Path) -> list[dict]:
    """The rows of a grid's results store without the columns that say where and when they were computed."""
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not any(part in k for part in RUN_COLUMNS)} for r in rows]


def finished_cell_settings(run_dir: Path) -> list[tuple]:
    """(index, axis values, variant) of each finished cell of a grid run directory."""
    records = [json.loads(p.read_text()) for p in (run_dir / "cells").glob("*.json")]
    return sorted((r["index"], json.dumps(r["values"]), r["variant"]) for r in records)


def write_grid_file(spec, path: Path, **keys) -> Path:
    """A grid file with the base and axes of ``spec`` (and further top-level ``keys``, e.g. ``slurm``)."""
    import yaml

    axes = {a.name: list(a.values) for a in spec.axes}
    path.write_text(yaml.safe_dump({"name": spec.name, "base": spec.base, "grid": axes, **keys}, sort_keys=False))
    return path


def run_refused(config: dict, path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> str:
    """Write ``config`` to ``path`` and run ``tuneguard run`` on it: it must stop with exit code 2 and exactly one
    ``error:`` line, no traceback; returns stderr."""
    import sys

    from tuneguard.cli import main

    path.write_text(json.dumps(config))
    monkeypatch.setattr(sys, "argv", ["tuneguard", "run", str(path)])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("error:") == 1 and "Traceback" not in err, err
    return err
