"""One optimizer step of counterfactual distillation; run alone or under `accelerate launch`.

Usage: python tests/ddp_worker.py OUT_DIR PER_DEVICE_BATCH. Writes OUT_DIR/rank<k>.json with the logged
loss, a checksum of the student's weights and a few weight sums, for tests/test_trainer.py.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.config import DistillationConfig  # noqa: E402
from distill.trainer import CounterfactualDistillationTrainer  # noqa: E402
from tests.assets import gpt2_tokenizer, tiny_gpt2  # noqa: E402
from tests.test_trainer import NO_DROPOUT, padded_dataset  # noqa: E402


def main() -> None:
    out, batch = Path(sys.argv[1]), int(sys.argv[2])
    tok = gpt2_tokenizer()
    args = DistillationConfig(
        output_dir=str(out / "run"),
        per_device_train_batch_size=batch,
        max_steps=1,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        report_to=[],
        logging_steps=1,
        save_strategy="steps",
        save_steps=1,
        use_cpu=True,
        seed=0,
        perturbation="max",
        alpha_clm=0.3,
        disable_tqdm=True,
    )
    student = tiny_gpt2(n_layer=1, seed=2, **NO_DROPOUT)
    trainer = CounterfactualDistillationTrainer(
        model=student,
        teacher_model=tiny_gpt2(n_layer=2, seed=1, **NO_DROPOUT),
        args=args,
        train_dataset=padded_dataset(tok),
        processing_class=tok,
    )
    trainer.train()
    state = {k: v.detach().cpu() for k, v in student.state_dict().items()}
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest()
    logged = trainer.state.log_history[0]
    result = {
        "world_size": args.world_size,
        "loss": logged["loss"],
        "loss_kd": logged["loss_kd"],
        "loss_clm": logged["loss_clm"],
        "config_saved": (out / "run" / "checkpoint-1" / "fairdistill_config.json").is_file(),
        "weights_sha": digest,
        "weights": {k: float(v.double().sum()) for k, v in state.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{args.process_index}.json").write_text(json.dumps(result))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
