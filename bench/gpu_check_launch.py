#!/usr/bin/env python
"""The training driver ``bench/gpu_check.py`` starts under ``accelerate launch`` (FSDP2, DeepSpeed ZeRO-3):
the tiny recipe's settings (``recipes/tiny.yaml``: perturbation max, one-layer student made from the
teacher's layers, block size 32, 4 steps) on a random 2-layer GPT-2 teacher with the real GPT-2
tokenizer, trained by ``CounterfactualDistillationTrainer`` on in-memory blocks of the sample corpus
(the GPU machine has no ``datasets``, which ``distill.data`` reads text with), then saved.

    accelerate launch --config_file recipes/accelerate/fsdp.yaml --num_processes 1 \
        bench/gpu_check_launch.py --out DIR [--tokenizer-dir DIR] [--steps 4]

Prints one line ``GPU-CHECK-LAUNCH {json}`` (steps, losses, distributed type, world size) on the main
process when training and saving finished.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(REPO_ROOT))

# recipe keys about reading text from disk, which this driver replaces with in-memory blocks
DATA_KEYS = ("dataset_name", "validation_split_percentage", "cda", "teacher_name_or_path")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokenizer-dir", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=None, help="default: the recipe's max_steps")
    args = parser.parse_args(argv)

    import torch
    import yaml
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from bench._gpu_workload import Batches, BatchStream, gpt2_tokenizer
    from counterfactuals import build_pair_map
    from distill.config import DistillationConfig
    from distill.student import student_from_teacher_layers
    from distill.trainer import CounterfactualDistillationTrainer

    hf_logging.set_verbosity_warning()
    recipe = yaml.safe_load((REPO_ROOT / "recipes" / "tiny.yaml").read_text(encoding="utf-8"))
    for key in DATA_KEYS:
        recipe.pop(key, None)
    recipe.update({"output_dir": str(args.out), "report_to": [], "disable_tqdm": True})
    # the launch config's mixed precision (fsdp.yaml, deepspeed_zero3.yaml: bf16), as a recipe sets it
    recipe["bf16"] = os.environ.get("ACCELERATE_MIXED_PRECISION") == "bf16"
    if args.steps is not None:
        recipe["max_steps"] = args.steps
    config = DistillationConfig(**recipe)

    tokenizer, _ = gpt2_tokenizer(args.tokenizer_dir)
    torch.manual_seed(config.seed)
    teacher = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=2, n_positions=config.block_size)
    )
    student = student_from_teacher_layers(teacher, num_layers=config.student_num_layers)
    pair_map = build_pair_map(tokenizer, vocab_size=len(tokenizer))
    data = Batches(tokenizer, pair_map, config.block_size)
    rows = []
    n_rows = config.max_steps * config.per_device_train_batch_size * 8  # any world size up to 8
    for i in range(n_rows):
        ids = data.row(gendered=i % 2 == 0)
        rows.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    stage(f"models built: teacher 2 layers, student {config.student_num_layers}, V={len(tokenizer)}")
    trainer = CounterfactualDistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=config,
        processing_class=tokenizer,
        train_dataset=BatchStream(rows).dataset,
    )
    state = trainer.accelerator.state
    teacher_type = type(trainer.teacher).__name__
    # counted before any forward: FSDP2 leaves the root module's parameters gathered after one
    teacher_sharded = sum(hasattr(p, "to_local") for p in trainer.teacher.parameters())
    stage(
        f"trainer ready: {state.distributed_type}, {state.num_processes} process(es), teacher {teacher_type}"
    )
    result = trainer.train()
    stage(f"trained {trainer.state.global_step} steps")
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if not all(torch.isfinite(torch.tensor(losses))):
        raise RuntimeError(f"non-finite training loss: {losses}")
    trainer.save_model(str(args.out / "student"))
    saved_dir = args.out / "student"
    saved = sorted(p.name for p in saved_dir.iterdir()) if saved_dir.is_dir() else []
    stage(f"save_model wrote {saved}")
    if trainer.accelerator.is_main_process:
        summary = {
            "steps": trainer.state.global_step,
            "losses": losses,
            "train_loss": result.training_loss,
            "distributed_type": str(state.distributed_type),
            "world_size": state.num_processes,
            "mixed_precision": state.mixed_precision,
            "device": str(trainer.accelerator.device),
            "teacher_wrapper": type(trainer.teacher).__name__,
            "student_wrapper": type(trainer.model_wrapped).__name__,
            "teacher_sharded_params": teacher_sharded,
            "teacher_params": sum(1 for _ in trainer.teacher.parameters()),
            "saved": saved,
            # transformers' save_model writes no weights under FSDP's SHARDED_STATE_DICT
            "saved_weights": any(
                name.endswith((".safetensors", ".bin")) and "training_args" not in name for name in saved
            ),
        }
        print("GPU-CHECK-LAUNCH " + json.dumps(summary), flush=True)
    return 0


def stage(message: str) -> None:
    print(f"[gpu_check_launch] {message}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
