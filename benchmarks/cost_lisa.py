"""What Lisa costs over plain SFT: step time and peak memory on the same model, batch and LoRA adapter.

Each measurement runs in a fresh process (clean memory peaks), SFT and Lisa alternating ``--repeats`` times.
Step time = median wall time between consecutive optimizer-step ends after ``--warmup`` steps, so it includes
data fetching (Lisa's alignment batches and its skipped user batches), the proximal gradient and logging.
Memory: CUDA peak allocated bytes; on CPU the process's peak RSS (ru_maxrss), reported as the whole peak and as
its rise above the RSS just before ``train()`` (the training-time part, which the whole peak dilutes).
Lisa runs with K_a/K_f = 2/8 and no proximal warm-up, so every timed step pays the proximal term.

    .venv/bin/python benchmarks/cost_lisa.py            # CPU
    .venv/bin/python benchmarks/cost_lisa.py --device cuda --steps 100

Targets (issue 3): time ratio <= 1.05, memory ratio <= 1.1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per method, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--worker", choices=["sft", "lisa"], help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        print(json.dumps(measure(options.worker, options)))
        return

    results: dict[str, list[dict]] = {"sft": [], "lisa": []}
    for _ in range(options.repeats):
        for method in ("sft", "lisa"):
            command = [sys.executable, __file__, "--worker", method] + [
                f"--{k}={getattr(options, k)}" for k in ("device", "steps", "warmup", "threads")
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            results[method].append(json.loads(done.stdout.strip().splitlines()[-1]))
    report(results, options)


def measure(method: str, options: argparse.Namespace) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from tuneguard.data.tokenize import SFTDataCollator
    from tuneguard.methods.lisa import LisaParams, LisaTrainer

    torch.set_num_threads(options.threads)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=2048,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=256,
    )
    model = LlamaForCausalLM(config)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    if options.device == "cuda":
        model = model.cuda()

    def records(n: int, seed: int) -> list[dict]:
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(3, config.vocab_size, (n, 128), generator=generator).tolist()
        return [{"input_ids": x, "attention_mask": [1] * 128, "labels": [-100] * 64 + x[64:]} for x in ids]

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            if options.device == "cuda":
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    clock = StepClock()
    args = TrainingArguments(
        output_dir="/tmp/tuneguard_cost_lisa",
        per_device_train_batch_size=8,
        max_steps=options.warmup + options.steps,
        learning_rate=1e-4,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        use_cpu=options.device == "cpu",
        disable_tqdm=True,
        seed=0,
    )
    common = dict(
        model=model,
        args=args,
        train_dataset=records(512, 0),
        data_collator=SFTDataCollator(0),
        callbacks=[clock],
    )
    if method == "sft":
        trainer = Trainer(**common)
    else:
        params = LisaParams(alignment_steps=2, finetune_steps=8, rho=1.0, proximal_warmup_ratio=0.0)
        trainer = LisaTrainer(**common, alignment_dataset=records(256, 1), lisa_params=params)

    rss_before = _rss_mib()
    if options.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        allocated_before = torch.cuda.memory_allocated() / 2**20
    trainer.train()
    intervals = [b - a for a, b in zip(clock.ends[options.warmup - 1 :], clock.ends[options.warmup :], strict=False)]
    result = {
        "method": method,
        "step_s": statistics.median(intervals),
        "peak_mib": _rss_mib(),
        "training_mib": _rss_mib() - rss_before,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "params": sum(p.numel() for p in model.parameters()),
    }
    if options.device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        result.update(peak_mib=peak, training_mib=peak - allocated_before, gpu=torch.cuda.get_device_name())
    return result


def _rss_mib() -> float:
    # ru_maxrss is in KiB on Linux: the peak resident set of this process so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(results: dict[str, list[dict]], options: argparse.Namespace) -> None:
    def median(method: str, key: str) -> float:
        return statistics.median(r[key] for r in results[method])

    first = results["sft"][0]
    memory = "CUDA max allocated" if options.device == "cuda" else "peak RSS"
    print(
        f"Lisa vs SFT | Llama 4x256, {first['params'] / 1e6:.1f} M params, LoRA r=8 q/v "
        f"({first['trainable'] / 1e3:.0f} k trainable), batch 8 x 128 tokens | device {options.device}"
        f"{' (' + first['gpu'] + ')' if 'gpu' in first else f', {options.threads} thread(s)'} | "
        f"{options.steps} timed steps x {options.repeats} runs, medians"
    )
    print(f"{'':28}{'SFT':>10}{'Lisa':>10}{'ratio':>8}  target")
    rows = [
        ("step time (ms)", "step_s", 1000.0, "<= 1.05"),
        (f"{memory}, whole (MiB)", "peak_mib", 1.0, "<= 1.10"),
        (f"{memory}, training (MiB)", "training_mib", 1.0, ""),
    ]
    for label, key, scale, target in rows:
        sft, lisa = median("sft", key) * scale, median("lisa", key) * scale
        ratio = lisa / sft if sft > 0 else float("nan")
        print(f"{label:28}{sft:10.1f}{lisa:10.1f}{ratio:8.3f}  {target}")


if __name__ == "__main__":
    main()
