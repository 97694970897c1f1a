"""One rank of the 2-process CPU/gloo run of tests/test_lisa_ddp.py (started by ``accelerate launch``), or the
one-process reference it is compared with: ``lisa_ddp_worker.py OUT GRAD_ACCUM``.

Fine-tunes with SFT, Lisa and BSO for a few steps each and writes ``<out>/<method>-rank<r>.json``: what every
micro-batch of this rank saw and at which step, the final trainable weights and the training logs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from tuneguard.data.tokenize import SFTDataCollator
from tuneguard.methods.lisa import BSOParams, LisaParams, LisaTrainer

sys.path.insert(0, str(Path(__file__).parent))
from conftest import PAD, make_records, tiny_llama, training_args  # noqa: E402
from test_lisa import ALIGN, USER, RecordingLisa, RecordingSFT  # noqa: E402

torch.set_num_threads(1)
SCHEDULE = {"alignment_steps": 1, "finetune_steps": 2}
PARAMS = {
    "sft": None,
    "lisa": LisaParams(**SCHEDULE, rho=1.0, proximal_warmup_ratio=0.0),
    "bso": BSOParams(**SCHEDULE),
}


def main(out: Path, grad_accum: int) -> None:
    for name, params in PARAMS.items():
        common = dict(
            model=tiny_llama(),  # no dropout: the ranks' RNG streams differ from one process's
            args=training_args(
                out / name, max_steps=8, logging_steps=2, gradient_accumulation_steps=grad_accum, ddp_backend="gloo"
            ),
            train_dataset=make_records(USER, 16, seed=0),
            data_collator=SFTDataCollator(PAD),
        )
        if params is None:
            trainer = RecordingSFT(**common)
        else:
            trainer = RecordingLisa(**common, alignment_dataset=make_records(ALIGN, 8, seed=1), lisa_params=params)
            assert isinstance(trainer, LisaTrainer)
        trainer.seen, trainer.weights_at = [], {}
        trainer.train()
        rank = trainer.args.process_index
        record = {
            "world_size": trainer.args.world_size,
            "seen": trainer.seen,
            "weights": {k: v.detach().tolist() for k, v in trainer.model.named_parameters() if v.requires_grad},
            "logs": [h for h in trainer.state.log_history if "loss" in h],
        }
        (out / f"{name}-rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
