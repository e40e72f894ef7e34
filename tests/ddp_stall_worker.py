"""A two-rank gloo run whose rank 1 stops itself (SIGSTOP) after step 2, as a wedged peer would.

Usage: RANK=r WORLD_SIZE=2 LOCAL_RANK=r MASTER_ADDR=127.0.0.1 MASTER_PORT=p python tests/ddp_stall_worker.py
OUT_DIR DDP_TIMEOUT. For tests/test_reliability.py: rank 0 must end itself within about DDP_TIMEOUT seconds.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.config import DistillationConfig  # noqa: E402
from distill.trainer import CounterfactualDistillationTrainer  # noqa: E402
from tests.assets import gpt2_tokenizer, tiny_gpt2  # noqa: E402
from tests.test_trainer import padded_dataset  # noqa: E402


class StopRankOne(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if args.process_index == 1 and state.global_step == 2:
            print("rank 1: stopping (SIGSTOP)", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)


def main() -> None:
    out, timeout = Path(sys.argv[1]), int(sys.argv[2])
    tok = gpt2_tokenizer()
    args = DistillationConfig(
        output_dir=str(out),
        per_device_train_batch_size=2,
        max_steps=10_000,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        ddp_timeout=timeout,
        disable_tqdm=True,
    )
    trainer = CounterfactualDistillationTrainer(
        model=tiny_gpt2(n_layer=1, seed=2),
        teacher_model=tiny_gpt2(n_layer=1, seed=1),
        args=args,
        train_dataset=padded_dataset(tok),
        processing_class=tok,
        callbacks=[StopRankOne()],
    )
    trainer.train()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
