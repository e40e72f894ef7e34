"""The teacher-target contract (distill/teacher_targets.py) and the decisions the trainer takes once:
the source of targets, "perturbation on", a pair map without a mode, and no deprecated transformers API
on the counterfactual hot path."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from counterfactuals import build_pair_map
from distill.config import DistillationConfig
from distill.teacher_targets import (
    CachedTeacherTargets,
    LiveTeacherTargets,
    TeacherTarget,
    teacher_logits_with_counterfactuals,
)
from distill.trainer import CounterfactualDistillationTrainer
from tests.assets import tiny_gpt2, tiny_llama
from tests.references import reference_teacher_target

NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
TEXTS = [
    "The committee met on Tuesday to discuss the budget for the new library; then she left.",
    "Rain fell on the old town all afternoon.",
    "He thanked his aunt for the present.",
]


def config(**overrides) -> DistillationConfig:
    base = {"output_dir": str(Path("/tmp") / "fairdistill-test-targets"), "report_to": [], "use_cpu": True}
    return DistillationConfig(**{**base, "temperature": 2.0, "kd_chunk_size": 8, **overrides})


def make_trainer(tok, teacher=None, **overrides) -> CounterfactualDistillationTrainer:
    return CounterfactualDistillationTrainer(
        model=tiny_gpt2(n_layer=1, seed=2, **NO_DROPOUT),
        teacher_model=teacher,
        args=config(**overrides),
        processing_class=tok,
    )


def test_the_trainer_holds_one_source_of_targets(gpt2_tok):
    live = make_trainer(gpt2_tok, tiny_gpt2(n_layer=2, seed=1, **NO_DROPOUT), perturbation="max")
    assert isinstance(live.teacher_targets, LiveTeacherTargets)
    cached = make_trainer(gpt2_tok, None, perturbation="max")
    assert isinstance(cached.teacher_targets, CachedTeacherTargets)


def test_a_pair_map_without_a_mode_is_refused_at_construction(gpt2_tok):
    with pytest.raises(ValueError, match="a pair_map was given but perturbation is unset"):
        CounterfactualDistillationTrainer(
            model=tiny_gpt2(n_layer=1),
            teacher_model=tiny_gpt2(),
            args=config(),
            pair_map=build_pair_map(gpt2_tok),
            processing_class=gpt2_tok,
        )


def test_the_target_says_what_it_holds(gpt2_tok):
    """Live targets hold logits (with the role reversal to apply in the loss when perturbation is on);
    turning perturbation off on the config is read at the next call."""
    teacher = tiny_gpt2(n_layer=2, seed=1, **NO_DROPOUT)
    trainer = make_trainer(gpt2_tok, teacher, perturbation="expMean", perturbation_scope="gendered")
    inputs = dict(gpt2_tok(TEXTS, padding=True, return_tensors="pt"))
    target = trainer.teacher_targets(inputs, need_hidden=False)
    assert not target.is_log_probs and target.role_reversal is not None
    assert target.role_reversal.mode == "expMean" and target.role_reversal.scope == "gendered"
    assert target.counterfactual_row_share == pytest.approx(2 / 3)
    want = reference_teacher_target(
        teacher, trainer.pair_map, trainer.args, inputs["input_ids"], inputs["attention_mask"]
    )
    torch.testing.assert_close(target.log_probs(2.0, 8), want, rtol=0, atol=1e-5)
    trainer.args.perturbation = None
    plain = trainer.teacher_targets(inputs, need_hidden=False)
    assert plain.role_reversal is None and not plain.is_log_probs and plain.counterfactual_row_share == 0
    with pytest.raises(ValueError, match="role reversal applies to teacher logits"):
        TeacherTarget(want, is_log_probs=True, role_reversal=target.role_reversal)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_no_deprecation_warning_on_a_counterfactual_step(gpt2_tok, arch):
    """A CF step with prefix sharing (the suffix passes run on the original pass's cache) raises no
    FutureWarning or DeprecationWarning: the cache is passed under transformers 5's name."""
    teacher = (
        tiny_gpt2(n_layer=2, seed=1, **NO_DROPOUT) if arch == "gpt2" else tiny_llama(vocab_size=50257, seed=1)
    )
    trainer = make_trainer(gpt2_tok, teacher, perturbation="max", teacher_suffix_passes=2, alpha_cos=0.1)
    inputs = dict(gpt2_tok(TEXTS, padding=True, return_tensors="pt"))
    inputs["labels"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    swapped, changed = trainer.pair_map.swap_ids(inputs["input_ids"], inputs["attention_mask"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        with torch.inference_mode():
            passes = teacher_logits_with_counterfactuals(
                trainer.teacher, inputs["input_ids"], inputs["attention_mask"], swapped, changed
            )
        assert any(suffix.start > 0 for suffix in passes.suffixes)  # a suffix pass ran on a shared cache
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
    assert torch.isfinite(loss)
