"""One rank of tests/test_fsdp_cpu.py (run under ``torchrun --nproc_per_node 2``, gloo, CPU).

Trains the same student twice for a few steps with ``CounterfactualDistillationTrainer`` (perturbation
max, the real GPT-2 tokenizer's pair map, a different batch on each rank): once against the plain
teacher, once against the same teacher sharded across the ranks by the trainer's own
``_prepare_fsdp_teacher`` (FSDP2: accelerate's ``fsdp2_prepare_model``, i.e. torch ``fully_shard``, with
the settings of recipes/accelerate/fsdp.yaml). accelerate 1.15 does not run FSDP on CPU: with
``use_cpu`` (or no GPU) its state becomes MULTI_CPU and the FSDP plugin is dropped without a message,
so the plugin is put on the state here, for the teacher only; the student stays in DDP. Both runs take
the path a sharded run takes (one joint teacher pass, no prefix sharing: every rank runs the same
number of teacher forwards). Writes each step's loss and the teacher's parameter type to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    import torch
    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers.utils import logging as hf_logging

    from distill.config import DistillationConfig
    from distill.trainer import CounterfactualDistillationTrainer, _prepare_fsdp_teacher
    from tests.assets import gpt2_tokenizer, tiny_gpt2

    hf_logging.set_verbosity_error()
    tokenizer = gpt2_tokenizer()
    teacher = tiny_gpt2(n_layer=2, n_embd=32, n_positions=32, seed=0).eval()
    student = tiny_gpt2(n_layer=1, n_embd=32, n_positions=32, seed=1)
    he, she = tokenizer(" he")["input_ids"][0], tokenizer(" she")["input_ids"][0]

    def rows(rank: int) -> list[dict]:
        generator = torch.Generator().manual_seed(100 + rank)
        out = []
        for i in range(args.steps * 2):
            ids = torch.randint(300, 5000, (16,), generator=generator)
            if i % 2 == 0:  # every other row gendered: the counterfactual pass has work to do
                ids[3], ids[9] = he, she
            out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
        return out

    class ShardedTeacherTrainer(CounterfactualDistillationTrainer):
        """Shards the teacher while the trainer prepares it (before anything holds it), with the FSDP2
        plugin on the accelerator state for that call only: the student is left to DDP."""

        def _prepare_teacher(self, teacher):
            teacher.eval().requires_grad_(False)
            state = self.accelerator.state
            state.fsdp_plugin = FullyShardedDataParallelPlugin(
                fsdp_version=2,
                auto_wrap_policy="transformer_based_wrap",
                reshard_after_forward=True,
                cpu_ram_efficient_loading=True,
                state_dict_type="SHARDED_STATE_DICT",
            )
            try:
                return _prepare_fsdp_teacher(teacher, self.accelerator)
            finally:
                state.fsdp_plugin = None

    results = {}
    for sharded in (False, True):
        config = DistillationConfig(
            output_dir=str(args.out.parent / f"run-{int(sharded)}"),
            use_cpu=True,
            report_to=[],
            disable_tqdm=True,
            per_device_train_batch_size=2,
            max_steps=args.steps,
            learning_rate=1e-3,
            perturbation="max",
            temperature=2.0,
            alpha_clm=0.5,
            logging_steps=1,
            save_strategy="no",
            seed=0,
            joint_teacher_pass=True,
            teacher_prefix_sharing=False,
        )
        trainer_class = ShardedTeacherTrainer if sharded else CounterfactualDistillationTrainer
        trainer = trainer_class(
            model=copy.deepcopy(student),
            teacher_model=copy.deepcopy(teacher),
            args=config,
            processing_class=tokenizer,
        )
        rank = trainer.accelerator.process_index
        trainer.train_dataset = _Rows(rows(rank))
        forwards = []  # the teacher the trainer holds is the one that runs
        trainer.teacher.register_forward_pre_hook(lambda module, inputs, calls=forwards: calls.append(1))
        # before any forward (FSDP2 leaves the root module's parameters gathered after one)
        params = list(trainer.teacher.parameters())
        local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in params)
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        kd = [entry["loss_kd"] for entry in trainer.state.log_history if "loss_kd" in entry]
        results["sharded" if sharded else "plain"] = {
            "losses": losses,
            "loss_kd": kd,
            "distributed_type": str(trainer.accelerator.state.distributed_type),
            "world_size": trainer.accelerator.num_processes,
            "teacher_type": type(trainer.teacher).__name__,
            "teacher_forwards": len(forwards),
            "teacher_sharded_params": sum(hasattr(p, "to_local") for p in params),
            "teacher_params": len(params),
            "teacher_local_numel": local,
            "teacher_numel": sum(p.numel() for p in teacher.parameters()),
        }
    if trainer.accelerator.is_main_process:
        args.out.write_text(json.dumps(results, indent=2))


class _Rows:
    """A map-style dataset over in-memory rows (no ``datasets`` needed)."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


if __name__ == "__main__":
    main()
