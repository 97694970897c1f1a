"""Pre-training of the world's tiny Llama (its "base pre-training", not a defense), with a disk cache."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tuneguard.models import cache_root
from tuneguard.world.generator import WORLD_VERSION, build_pools, pretrain_texts, world_fingerprint
from tuneguard.world.tokenizer import build_tokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """Hyper-parameters of the base model and its pre-training (part of the cache key)."""

    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    max_position_embeddings: int = 64
    steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    max_length: int = 48

    def key(self) -> str:
        """Short hash of the hyper-parameters, the world version and the vocabulary."""
        blob = json.dumps({"cfg": asdict(self), "version": WORLD_VERSION, "world": world_fingerprint()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


DEFAULT_PRETRAIN = PretrainConfig()


def default_cache_dir() -> Path:
    """``$TUNEGUARD_CACHE`` or ``~/.cache/tuneguard`` (the one cache root of tuneguard)."""
    return cache_root()


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def build_model(vocab_size: int, cfg: PretrainConfig = DEFAULT_PRETRAIN, pad_id: int = 0, eos_id: int = 1):
    """A freshly initialised tiny ``LlamaForCausalLM`` (random weights) for the world's vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config)


def pretrain(out_dir: Path, seed: int = 0, cfg: PretrainConfig = DEFAULT_PRETRAIN) -> None:
    """Pre-train the tiny Llama on the world's corpus and save model + tokenizer into ``out_dir``."""
    tok = build_tokenizer()
    pools = build_pools(seed)
    pairs = pretrain_texts(pools, cfg.steps * cfg.batch_size, seed)
    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        + a
        + " "
        + tok.eos_token
        for p, a in pairs
    ]
    enc = tok(
        texts,
        add_special_tokens=False,
        padding="max_length",
        truncation=True,
        max_length=cfg.max_length,
        return_tensors="pt",
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    labels = ids.masked_fill(mask == 0, -100)
    torch.manual_seed(seed)
    model = build_model(len(tok), cfg, tok.pad_token_id, tok.eos_token_id)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) * max(0.05, 1 - s / cfg.steps)
    )
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "pre-training world model seed=%d (%d params, %d steps x batch %d)",
        seed,
        n_params,
        cfg.steps,
        cfg.batch_size,
    )
    t0 = time.time()
    for step in range(cfg.steps):
        sl = slice(step * cfg.batch_size, (step + 1) * cfg.batch_size)
        width = int(mask[sl].sum(1).max())
        out = model(input_ids=ids[sl, :width], attention_mask=mask[sl, :width], labels=labels[sl, :width])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % 100 == 0 or step == 0:
            logger.info(
                "pre-train step %d/%d loss %.4f (%.1f s)",
                step + 1,
                cfg.steps,
                out.loss.item(),
                time.time() - t0,
            )
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    (out_dir / "world.json").write_text(
        json.dumps(
            {
                "world_version": WORLD_VERSION,
                "seed": seed,
                "pretrain": asdict(cfg),
                "seconds": round(time.time() - t0, 1),
            },
            indent=2,
        )
    )


def pretrained_model_path(
    cache_dir: str | Path | None = None, seed: int = 0, cfg: PretrainConfig = DEFAULT_PRETRAIN
) -> Path:
    """Directory with the pre-trained world model (pre-trains on first use, then cached).

    The directory is ``<cache>/world-v<WORLD_VERSION>-seed<seed>-<hash>``; it is written atomically (trained
    into a temporary directory next to it, then renamed), so an interrupted run never leaves a half cache. The
    pre-training holds an OS file lock beside it: processes that need the same model at once (parallel test
    workers, a grid's cells) wait for the one that trains it instead of each training it again.
    """
    from filelock import FileLock

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / f"world-v{WORLD_VERSION}-seed{seed}-{cfg.key()}"
    if (final / "world.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{final.name}.lock")):
        if not (final / "world.json").is_file():  # another process may have trained it while this one waited
            _pretrain_into(final, seed, cfg)
    return final


def _pretrain_into(final: Path, seed: int, cfg: PretrainConfig) -> None:
    """Pre-train into a temporary directory beside ``final``, then rename it into place (the caller holds the lock)."""
    root = final.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        with _threads(max(1, min(os.cpu_count() or 1, 4))):
            pretrain(tmp, seed=seed, cfg=cfg)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "world.json").is_file():  # lost a race only if the winner finished
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("world model ready at %s", final)
