"""CounterfactualDistillationTrainer on real parts: tiny GPT-2s with the real GPT-2 tokenizer."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from distill.config import DistillationConfig
from distill.trainer import RESOLVED_CONFIG_NAME, CounterfactualDistillationTrainer
from tests.assets import tiny_gpt2

REPO = Path(__file__).resolve().parents[1]
TEXTS = [
    "He thanked his aunt for the present, and she smiled at her brother.",
    "The doctor said that the results were fine.",
    "The nurse told him that her shift was over at midnight.",
    "The actor rehearsed his lines while the waitress brought coffee.",
    "Rain fell on the old town all afternoon.",
    "My grandmother and her sisters ran the bakery for forty years.",
    "The engineer checked the bridge before the storm.",
    "The king thanked the queen and his sons.",
]
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def padded_dataset(tok, texts=TEXTS, max_length=20) -> Dataset:
    """Rows of different lengths, right-padded, labels -100 on padding: the token count per
    micro-batch varies, so normalisation mistakes show."""
    enc = tok(list(texts), padding="max_length", max_length=max_length, truncation=True)
    labels = [
        [t if m else -100 for t, m in zip(ids, mask, strict=True)]
        for ids, mask in zip(enc["input_ids"], enc["attention_mask"], strict=True)
    ]
    return Dataset.from_dict(
        {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
    )


def make_args(tmp_path, **overrides) -> DistillationConfig:
    base = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 4,
        "max_steps": 3,
        "learning_rate": 1e-3,
        "report_to": [],
        "logging_steps": 1,
        "save_strategy": "no",
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
    }
    return DistillationConfig(**{**base, **overrides})


@pytest.mark.parametrize("perturbation", [None, "max", "mean", "expMean"])
def test_each_mode_trains(tmp_path, gpt2_tok, perturbation):
    teacher, student = tiny_gpt2(n_layer=2, seed=1), tiny_gpt2(n_layer=1, seed=2)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    args = make_args(tmp_path, perturbation=perturbation, alpha_clm=0.5, alpha_cos=0.1)
    trainer = CounterfactualDistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=padded_dataset(gpt2_tok),
        processing_class=gpt2_tok,
    )
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    logged = [entry for entry in trainer.state.log_history if "loss_kd" in entry]
    assert len(logged) == 3
    for entry in logged:
        assert all(math.isfinite(entry[k]) for k in ("loss", "loss_kd", "loss_clm", "loss_cos"))
        assert entry["loss"] == pytest.approx(
            entry["loss_kd"] + 0.5 * entry["loss_clm"] + 0.1 * entry["loss_cos"], rel=1e-3
        )
        assert ("counterfactual_row_share" in entry) == (perturbation is not None)
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in student_before.items())
    # the teacher is frozen and untouched
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert not any(p.requires_grad for p in trainer.teacher.parameters()) and not trainer.teacher.training


def test_perturbation_changes_the_target_only_through_gendered_rows(tmp_path, gpt2_tok):
    """On gender-free text, role reversal with a neutral context still equalises pairs, but the
    swap changes no row, so no counterfactual pass runs (share 0)."""
    neutral = padded_dataset(gpt2_tok, [TEXTS[1], TEXTS[4], TEXTS[6]] * 2)
    args = make_args(tmp_path, perturbation="max", max_steps=1, per_device_train_batch_size=6)
    trainer = CounterfactualDistillationTrainer(
        model=tiny_gpt2(n_layer=1, seed=2),
        teacher_model=tiny_gpt2(n_layer=2, seed=1),
        args=args,
        train_dataset=neutral,
        processing_class=gpt2_tok,
    )
    trainer.train()
    assert trainer.state.log_history[0]["counterfactual_row_share"] == 0.0


def first_step(tmp_path, tok, *, batch, accumulation, name, joint=True):
    """Loss of the first optimizer step and the student's weights after it (plain SGD)."""
    student = tiny_gpt2(n_layer=1, seed=2, **NO_DROPOUT)
    args = make_args(
        tmp_path / name,
        perturbation="mean",
        alpha_clm=0.3,
        alpha_cos=0.2,
        max_steps=1,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        optim="sgd",
        learning_rate=1.0,
        max_grad_norm=0.0,
        lr_scheduler_type="constant",
        joint_teacher_pass=joint,
    )
    trainer = CounterfactualDistillationTrainer(
        model=student,
        teacher_model=tiny_gpt2(n_layer=2, seed=1, **NO_DROPOUT),
        args=args,
        train_dataset=padded_dataset(tok),
        processing_class=tok,
    )
    trainer.train()
    return trainer.state.log_history[0], {k: v.clone() for k, v in student.state_dict().items()}


def test_gradient_accumulation_gives_the_same_step(tmp_path, gpt2_tok):
    log_one, weights_one = first_step(tmp_path, gpt2_tok, batch=8, accumulation=1, name="1x8")
    log_four, weights_four = first_step(tmp_path, gpt2_tok, batch=2, accumulation=4, name="4x2", joint=False)
    assert log_four["loss"] == pytest.approx(log_one["loss"], rel=1e-5)
    for term in ("loss_kd", "loss_clm", "loss_cos"):  # logged per token, whatever the micro-batching
        assert log_four[term] == pytest.approx(log_one[term], rel=1e-5)
    weighted = log_one["loss_kd"] + 0.3 * log_one["loss_clm"] + 0.2 * log_one["loss_cos"]
    assert weighted == pytest.approx(log_one["loss"], rel=1e-4)
    for key, value in weights_one.items():
        torch.testing.assert_close(weights_four[key], value, rtol=1e-5, atol=1e-6)
    initial = tiny_gpt2(n_layer=1, seed=2, **NO_DROPOUT).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in weights_one.items())  # the step did something


def test_eval_clm_loss_is_the_per_token_cross_entropy(tmp_path, gpt2_tok):
    """Trainer must count shifted labels (GPT-2 has no loss type telling it so): the logged eval CE is
    exactly the mean next-token NLL over every predicted, unpadded token."""
    from distill.losses import causal_lm_loss

    data = padded_dataset(gpt2_tok)
    student = tiny_gpt2(n_layer=1, seed=2, **NO_DROPOUT)
    trainer = CounterfactualDistillationTrainer(
        model=student,
        teacher_model=tiny_gpt2(n_layer=2, seed=1, **NO_DROPOUT),
        args=make_args(tmp_path, per_device_eval_batch_size=3),
        eval_dataset=data,
        processing_class=gpt2_tok,
    )
    metrics = trainer.evaluate()
    batch = data.with_format("torch")[:]
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert metrics["eval_loss_clm"] == pytest.approx(causal_lm_loss(logits, batch["labels"]).item(), rel=1e-5)


def test_data_parallel_in_one_process_is_refused(tmp_path, gpt2_tok):
    args = make_args(tmp_path)
    args._n_gpu = 2  # what torch DataParallel on a 2-GPU machine without a launcher looks like
    with pytest.raises(ValueError, match="accelerate launch"):
        CounterfactualDistillationTrainer(
            model=tiny_gpt2(n_layer=1), teacher_model=tiny_gpt2(), args=args, processing_class=gpt2_tok
        )


def test_vocabulary_mismatch_fails_at_start(tmp_path, gpt2_tok):
    with pytest.raises(ValueError, match=r"student V=1000, teacher V=50257.*share the tokenizer"):
        CounterfactualDistillationTrainer(
            model=tiny_gpt2(vocab_size=1000),
            teacher_model=tiny_gpt2(),
            args=make_args(tmp_path),
            train_dataset=padded_dataset(gpt2_tok),
            processing_class=gpt2_tok,
        )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"perturbation": "median"}, "perturbation='median': use one of max, mean, expMean"),
        ({"perturbation_scope": "nouns"}, "perturbation_scope='nouns'"),
        ({"cda": "both"}, "cda='both'"),
        ({"alpha_kd": 0.0}, "at least one > 0"),
        ({"kd_beta": 2.0}, "kd_beta must lie in"),
        ({"student_init": "pretrained"}, "needs --student_name_or_path"),
        ({"student_init": "lora", "student_num_layers": 3}, "only apply to student_init=layers"),
        ({"temperature": 0}, "temperature must be > 0"),
    ],
)
def test_config_validation(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_args(tmp_path, **overrides)


class StopAfter(TrainerCallback):
    """Simulates an interrupted run: stops after ``step`` (once its checkpoint is written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resolved_config_is_saved_with_checkpoints_and_resume_matches(tmp_path, gpt2_tok):
    def run(output_dir, resume=None, callbacks=()):
        args = make_args(
            tmp_path,
            output_dir=str(output_dir),
            perturbation="max",
            max_steps=4,
            per_device_train_batch_size=2,
            save_strategy="steps",
            save_steps=2,
        )
        trainer = CounterfactualDistillationTrainer(
            model=tiny_gpt2(n_layer=1, seed=2, **NO_DROPOUT),
            teacher_model=tiny_gpt2(n_layer=2, seed=1, **NO_DROPOUT),
            args=args,
            train_dataset=padded_dataset(gpt2_tok),
            processing_class=gpt2_tok,
            callbacks=list(callbacks),
        )
        trainer.train(resume_from_checkpoint=resume)
        return {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}

    full = run(tmp_path / "full")
    interrupted_dir = tmp_path / "interrupted"
    assert max(run(interrupted_dir, callbacks=[StopAfter(2)])) == 2
    checkpoint = interrupted_dir / "checkpoint-2"
    saved = json.loads((checkpoint / RESOLVED_CONFIG_NAME).read_text())
    assert saved["perturbation"] == "max" and saved["save_steps"] == 2
    assert not list(interrupted_dir.rglob("training_args.bin"))  # no pickle; resuming does not need it
    resumed = run(interrupted_dir, resume=str(checkpoint))
    assert resumed[3] == pytest.approx(full[3], rel=1e-6)
    assert resumed[4] == pytest.approx(full[4], rel=1e-6)


def test_two_process_ddp_matches_one_process(tmp_path):
    """accelerate launch with 2 gloo processes on CPU: the same first-step loss as one process on the
    same global batch, and identical weights on both ranks."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
    }
    worker = REPO / "tests" / "ddp_worker.py"
    single = tmp_path / "single"
    subprocess.run(
        [sys.executable, str(worker), str(single), "8"], check=True, env=env, cwd=REPO, timeout=300
    )
    ddp = tmp_path / "ddp"
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", "29517", str(worker), str(ddp), "4",
    ]  # fmt: skip
    subprocess.run(launch, check=True, env=env, cwd=REPO, timeout=300)
    one = json.loads((single / "rank0.json").read_text())
    ranks = [json.loads((ddp / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    assert ranks[0]["loss"] == pytest.approx(one["loss"], abs=1e-5)
    assert ranks[0]["loss_kd"] == pytest.approx(one["loss_kd"], rel=1e-5)  # logged per token over all ranks
    assert ranks[0]["loss_clm"] == pytest.approx(one["loss_clm"], rel=1e-5)
    assert ranks[0]["config_saved"] and one["config_saved"]  # the checkpoint save ran on both ranks
    assert ranks[0]["weights_sha"] == ranks[1]["weights_sha"]
    for key, value in one["weights"].items():
        assert ranks[0]["weights"][key] == pytest.approx(value, abs=1e-5)
