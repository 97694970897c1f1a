"""One rank of the 2-process CPU/gloo Lisa run of tests/test_lisa_ddp.py (started by torch.distributed.run).

Writes ``<out>/rank<r>.json``: what every micro-batch of this rank saw, the step at which it saw it, and the
final trainable weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import TrainingArguments

from tuneguard.data.tokenize import SFTDataCollator
from tuneguard.methods.lisa import LisaParams, LisaTrainer

sys.path.insert(0, str(Path(__file__).parent))
from test_lisa import ALIGN, PAD, USER, RecordingLisa, make_records, tiny_model  # noqa: E402

torch.set_num_threads(1)


def main(out: Path) -> None:
    args = TrainingArguments(
        output_dir=str(out / "run"),
        per_device_train_batch_size=2,
        max_steps=8,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        logging_steps=2,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        ddp_backend="gloo",
        disable_tqdm=True,
        seed=0,
    )
    trainer = RecordingLisa(
        model=tiny_model(),
        args=args,
        train_dataset=make_records(USER, 16, seed=0),
        data_collator=SFTDataCollator(PAD),
        alignment_dataset=make_records(ALIGN, 8, seed=1),
        lisa_params=LisaParams(alignment_steps=1, finetune_steps=2, rho=1.0, proximal_warmup_ratio=0.0),
    )
    assert isinstance(trainer, LisaTrainer)
    trainer.seen = []
    trainer.train()
    rank = trainer.args.process_index
    weights = {k: v.detach().tolist() for k, v in trainer.model.named_parameters() if v.requires_grad}
    record = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "seen": trainer.seen,
        "weights": weights,
        "logs": [h for h in trainer.state.log_history if "loss" in h],
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
