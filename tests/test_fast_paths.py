"""The fast paths of the counterfactual teacher target compute what the slow paths compute.

* ``role_reversal`` (G-column map_back, normaliser shortcut for neutral positions, suffix input) against
  ``role_reversal_reference`` (everything over the whole vocabulary);
* prefix sharing (the counterfactual teacher pass only from each row's first swapped token, on the
  original pass's KV cache) against two full teacher passes, on GPT-2 (learned positions) and Llama
  (RoPE) teachers, right and left padding;
* the trainer's target, loss and student gradients against ``reference_teacher_target`` (two full
  passes, index_copy, reference role reversal), with rows swapped at position 0, rows without a swap
  and a row whose only swap is its last token.

Everything is real: the GPT-2 tokenizer and pair map, texts with and without gendered words, tiny
random-init models.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM

from counterfactuals import build_pair_map
from distill.config import DistillationConfig
from distill.losses import COMBINE_MODES, CounterfactualSuffix, kd_loss, role_reversal
from distill.teacher_targets import (
    _croppable_cache_layers,
    _suffix_groups,
    teacher_logits_with_counterfactuals,
)
from distill.trainer import CounterfactualDistillationTrainer
from tests.assets import GPT2_VOCAB_SIZE, tiny_gpt2, tiny_llama
from tests.references import reference_teacher_target, role_reversal_reference

HE, SHE = 339, 673
# First swapped token late (a prefix to share: rows 0, 1), at position 0 (row 2, right-padded), none
# (rows 3, 5), and only the last token (row 4: with left padding its last position, so it needs no pass).
TEXTS = [
    "Rain fell on the old town all afternoon and the streets were empty, until the baker opened his door.",
    "The committee met on Tuesday to discuss the budget for the new library and the roads; then she left.",
    "He thanked his aunt for the present.",
    "The engineers checked every bolt of the long bridge before the storm arrived from the west.",
    "The prize for the best essay in the whole county this year went to her",
    "A quiet evening by the river.",
]
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


@pytest.fixture(scope="module")
def pair_map(gpt2_tok):
    return build_pair_map(gpt2_tok)


def teachers():
    """(name, tiny teacher) pairs: learned absolute positions and rotary positions."""
    return [
        ("gpt2", tiny_gpt2(n_layer=2, seed=1, **NO_DROPOUT).eval()),
        ("llama", tiny_llama(vocab_size=GPT2_VOCAB_SIZE, seed=1).eval()),
    ]


def batch(tok, side: str, texts=TEXTS) -> dict[str, torch.Tensor]:
    original, tok.padding_side = tok.padding_side, side  # the tokenizer is shared by the session
    try:
        return dict(tok(list(texts), padding=True, return_tensors="pt"))
    finally:
        tok.padding_side = original


def random_logits(*shape, seed, scale=3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, GPT2_VOCAB_SIZE, generator=g, dtype=torch.float64) * scale).to(dtype)


# --- role_reversal: fast against reference ------------------------------------------------------------


def peaked(logits: torch.Tensor) -> torch.Tensor:
    """Some positions put almost all mass on gendered tokens (the normaliser shortcut's hard case: its
    positions are renormalised exactly), others on a token whose counterpart has ~none."""
    logits = logits.clone()
    logits[..., 0, HE] += 40.0
    logits[..., 1, SHE] += 12.0
    logits[..., 1, HE] += 11.0
    return logits


@pytest.mark.parametrize("scope", ["all", "gendered"])
@pytest.mark.parametrize("mode", COMBINE_MODES)
def test_role_reversal_matches_the_reference(pair_map, mode, scope):
    teacher = peaked(random_logits(3, 7, seed=0))
    counterfactual = random_logits(3, 7, seed=1)
    context = torch.randint(0, GPT2_VOCAB_SIZE, (3, 7), generator=torch.Generator().manual_seed(2))
    context[0, 3] = 15  # "0", a token that ends a word: gendered word pieces after it are pinned
    for cf in (None, counterfactual, teacher.clone()):
        want = role_reversal_reference(
            teacher, cf, pair_map, mode, temperature=2.0, scope=scope, context_ids=context
        )
        for chunk_size in (4, 1024):
            got = role_reversal(
                teacher,
                cf,
                pair_map,
                mode,
                temperature=2.0,
                scope=scope,
                context_ids=context,
                chunk_size=chunk_size,
            )
            torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    # the counterfactual view matters, so agreeing with the reference is not agreeing with a constant
    neutral = role_reversal_reference(teacher, None, pair_map, mode, temperature=2.0, scope=scope)
    assert (
        neutral - role_reversal(teacher, counterfactual, pair_map, mode, temperature=2.0, scope=scope)
    ).abs().max() > 1e-3


@pytest.mark.parametrize("mode", COMBINE_MODES)
def test_role_reversal_suffixes_equal_the_assembled_counterfactual(pair_map, mode):
    """Suffix input: the rows' counterfactual from a position on, neutral elsewhere (what the trainer
    passes) = the full counterfactual tensor with the original logits copied in everywhere else."""
    teacher, counterfactual = peaked(random_logits(4, 9, seed=3)), random_logits(4, 9, seed=4)
    suffixes = [
        CounterfactualSuffix(torch.tensor([2]), 0, counterfactual[[2], 0:]),  # swapped at position 0
        CounterfactualSuffix(torch.tensor([3, 0]), 5, counterfactual[[3, 0], 5:]),
        CounterfactualSuffix(torch.tensor([1]), 9, counterfactual[[1], 9:]),  # empty: nothing differs
    ]
    assembled = teacher.clone()
    assembled[2] = counterfactual[2]
    assembled[[3, 0], 5:] = counterfactual[[3, 0], 5:]
    for scope in ("all", "gendered"):
        got = role_reversal(
            teacher,
            None,
            pair_map,
            mode,
            temperature=1.5,
            scope=scope,
            chunk_size=4,
            counterfactual_suffixes=suffixes,
        )
        want = role_reversal_reference(teacher, assembled, pair_map, mode, temperature=1.5, scope=scope)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_role_reversal_fp32_and_minus_infinity(pair_map):
    """fp32 input (fp32 tolerance), and teacher logits of -inf (a masked vocabulary slice) stay -inf in
    every mode instead of turning into NaN."""
    teacher = peaked(random_logits(2, 6, seed=5, dtype=torch.float32))
    counterfactual = random_logits(2, 6, seed=6, dtype=torch.float32)
    teacher[..., 50000:] = -math.inf
    counterfactual[..., 50000:] = -math.inf
    for mode in COMBINE_MODES:
        for cf in (None, counterfactual):
            got = role_reversal(teacher, cf, pair_map, mode, temperature=2.0)
            want = role_reversal_reference(teacher, cf, pair_map, mode, temperature=2.0)
            assert got.dtype == torch.float32 and not got.isnan().any()
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_role_reversal_rejects_bad_suffixes(pair_map):
    teacher = random_logits(2, 4, seed=7, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"must have logits of shape \(1, 2, 50257\)"):
        role_reversal(
            teacher,
            None,
            pair_map,
            "max",
            counterfactual_suffixes=[CounterfactualSuffix(torch.tensor([0]), 2, teacher[[0]])],
        )
    twice = [CounterfactualSuffix(torch.tensor([1]), 3, teacher[[1], 3:])] * 2
    with pytest.raises(ValueError, match="appear in one suffix at most"):
        role_reversal(teacher, None, pair_map, "max", counterfactual_suffixes=twice)
    with pytest.raises(ValueError, match="not both"):
        role_reversal(teacher, teacher, pair_map, "max", counterfactual_suffixes=twice[:1])


# --- grouping of rows by first swap ------------------------------------------------------------------


def brute_force_cost(first_swap: list[int], length: int, max_groups: int) -> float:
    """Least cost over every split of the sorted rows into at most max_groups contiguous groups."""
    starts, n, best = sorted(first_swap), len(first_swap), math.inf
    for k in range(1, max_groups + 1):
        for cuts in itertools.combinations(range(1, n), k - 1):
            bounds = (0, *cuts, n)
            cost = sum((j - i) * (length - starts[i]) + 1 for i, j in itertools.pairwise(bounds))
            best = min(best, cost)
    return best


def test_suffix_groups_are_optimal_and_cover_every_row():
    rng = torch.Generator().manual_seed(0)
    for trial in range(60):
        n, length = 1 + trial % 7, 64
        first_swap = torch.randint(0, length - 1, (n,), generator=rng).tolist()
        for max_groups in (1, 2, 4):
            groups = _suffix_groups(first_swap, length, max_groups)
            members = sorted(i for rows, _ in groups for i in rows)
            assert members == list(range(n)) and len(groups) <= max_groups
            for rows, start in groups:  # a group starts at its earliest first swap
                assert start == min(first_swap[i] for i in rows)
            cost = sum(len(rows) * (length - start) + 1 for rows, start in groups)
            assert cost == brute_force_cost(first_swap, length, max_groups)
    assert _suffix_groups([], 64, 4) == []
    assert _suffix_groups([5, 5, 5], 64, 4) == [([0, 1, 2], 5)]  # equal starts: one pass


# --- prefix sharing: suffix passes on the cut cache against full passes ------------------------------


@pytest.mark.parametrize("side", ["right", "left"])
def test_prefix_sharing_gives_the_full_pass_logits(gpt2_tok, pair_map, side):
    inputs = batch(gpt2_tok, side)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    swapped, changed = pair_map.swap_ids(ids, mask)
    for name, teacher in teachers():
        with torch.inference_mode():
            full = teacher(input_ids=swapped, attention_mask=mask, use_cache=False).logits[:, :-1]
            original = teacher(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
            for joint, passes in itertools.product((True, False), (1, 2, 4)):
                got = teacher_logits_with_counterfactuals(
                    teacher, ids, mask, swapped, changed, joint=joint, max_suffix_passes=passes
                )
                torch.testing.assert_close(got.logits[:, :-1], original, rtol=0, atol=1e-5)
                assert got.changed_rows == int(changed.sum()) == 4
                covered = set()
                for suffix in got.suffixes:
                    for i, row in enumerate(suffix.rows.tolist()):
                        covered.add(row)
                        real = mask[row, suffix.start + 1 :].bool()  # positions whose next token is real
                        torch.testing.assert_close(
                            suffix.logits[i][real], full[row, suffix.start :][real], rtol=0, atol=1e-5
                        )
                        # before the first swap the two views agree: nothing is lost by not computing them
                        torch.testing.assert_close(
                            full[row, : suffix.start], original[row, : suffix.start], rtol=0, atol=1e-5
                        )
                # every swapped row but the one swapped only at its last position has a suffix
                last_only = {4} if side == "left" else set()
                assert covered == set(changed.nonzero().squeeze(-1).tolist()) - last_only
                if passes > 1:
                    assert any(suffix.start > 0 for suffix in got.suffixes), name  # a prefix was shared
            # the counterfactual does differ from the original after the swap: the test can fail
            assert (full[0] - original[0]).abs().max() > 1e-3


def test_a_cache_that_cannot_be_cut_falls_back_to_full_passes(gpt2_tok, pair_map):
    """A sliding-window teacher's cache keeps only the window: it is not cut, the rows are read in
    full, and the target is still the reference's."""
    torch.manual_seed(1)
    config = MistralConfig(
        vocab_size=GPT2_VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        sliding_window=8,
    )
    teacher = MistralForCausalLM(config).eval()
    inputs = batch(gpt2_tok, "right")
    with torch.inference_mode():
        out = teacher(**inputs, use_cache=True)
    assert _croppable_cache_layers(out.past_key_values) is None
    args = config_for(perturbation="max")
    got = trainer_target(teacher, args, gpt2_tok, inputs)
    want = reference_teacher_target(teacher, pair_map, args, inputs["input_ids"], inputs["attention_mask"])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


# --- the trainer: target, loss and gradients against the plain path ----------------------------------


def config_for(**overrides) -> DistillationConfig:
    base = {
        "output_dir": str(Path("/tmp") / "fairdistill-test-fast-paths"),
        "report_to": [],
        "use_cpu": True,
        "temperature": 2.0,
        "kd_chunk_size": 16,
        "swap_names": False,  # as the module's pair_map fixture (the word lexicon only)
    }
    return DistillationConfig(**{**base, **overrides})


def make_trainer(teacher, args, tok, student=None) -> CounterfactualDistillationTrainer:
    return CounterfactualDistillationTrainer(
        model=student if student is not None else tiny_gpt2(n_layer=1, seed=2, **NO_DROPOUT),
        teacher_model=teacher,
        args=args,
        processing_class=tok,
    )


def trainer_target(teacher, args, tok, inputs) -> torch.Tensor:
    trainer = make_trainer(teacher, args, tok)
    target = trainer.teacher_targets(inputs, need_hidden=False)
    return target.log_probs(args.temperature, args.kd_chunk_size)


@pytest.mark.parametrize(
    ("sharing", "joint", "passes"), [(True, True, 4), (True, False, 1), (False, True, 4), (False, False, 4)]
)
def test_trainer_target_matches_two_full_passes(gpt2_tok, pair_map, sharing, joint, passes):
    """The trainer's target (and the teacher hidden state for the cosine term) under every setting of
    prefix sharing, joint pass and suffix passes = two full passes and the reference role reversal."""
    cases = [("max", "all"), ("mean", "gendered"), ("expMean", "all"), ("max", "gendered")]
    for name, teacher in teachers():
        args = config_for(
            perturbation="max",
            teacher_prefix_sharing=sharing,
            joint_teacher_pass=joint,
            teacher_suffix_passes=passes,
        )
        trainer = make_trainer(teacher, args, gpt2_tok)
        for side, (mode, scope) in itertools.product(("right", "left"), cases):
            trainer.args.perturbation, trainer.args.perturbation_scope = mode, scope
            ids, mask = batch(gpt2_tok, side).values()
            target = trainer.teacher_targets({"input_ids": ids, "attention_mask": mask}, need_hidden=True)
            got = target.log_probs(trainer.args.temperature, trainer.args.kd_chunk_size)
            hidden, share = target.hidden, target.counterfactual_row_share
            want = reference_teacher_target(teacher, pair_map, trainer.args, ids, mask)
            assert (got - want).abs().max() <= 1e-5, (name, side, mode, scope)
            assert share == 4 / 6
            with torch.inference_mode():
                plain = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            torch.testing.assert_close(hidden, plain.hidden_states[-1], rtol=0, atol=1e-5)


def test_trainer_loss_and_gradients_match_the_plain_path(gpt2_tok, pair_map):
    """compute_loss through the fast paths = KD against the reference target, in value and in every
    student gradient. In float64, so the comparison is tight: in fp32 the KL of two close
    distributions is a difference of close numbers, and target rounding (~1e-6) shows at ~1e-4."""
    inputs = batch(gpt2_tok, "right")
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    for name, teacher in teachers():
        teacher = teacher.double()
        args = config_for(perturbation="mean", teacher_suffix_passes=4)
        student = tiny_gpt2(n_layer=1, seed=2, **NO_DROPOUT).double()
        trainer = make_trainer(teacher, args, gpt2_tok, student)
        loss = trainer.compute_loss(student, {**inputs, "labels": labels})
        loss.backward()
        fast_grads = {k: p.grad.clone() for k, p in student.named_parameters()}

        student.zero_grad()
        target = reference_teacher_target(
            teacher, pair_map, args, inputs["input_ids"], inputs["attention_mask"]
        )
        logits = student(**inputs, use_cache=False).logits[:, :-1]
        mask = labels[:, 1:] != -100
        want = kd_loss(logits, target, mask, temperature=2.0, chunk_size=16, teacher_is_log_probs=True)
        want.backward()
        assert loss.dtype == torch.float64 and loss.item() == pytest.approx(want.item(), rel=1e-9), name
        for key, param in student.named_parameters():
            torch.testing.assert_close(fast_grads[key], param.grad, rtol=1e-7, atol=1e-12)
        assert any(g.abs().max() > 0 for g in fast_grads.values())


def test_teacher_suffix_passes_is_validated():
    with pytest.raises(ValueError, match="teacher_suffix_passes must be >= 1"):
        config_for(teacher_suffix_passes=0)


@pytest.mark.slow  # compiling even a one-layer GPT-2 takes minutes on a small CPU
def test_torch_compile_of_the_student_trains_to_the_same_first_step(tmp_path, gpt2_tok):
    """TrainingArguments.torch_compile works with this trainer (the student is compiled, the teacher
    and the custom-autograd KD loss are not): the first step's loss equals the eager one."""
    from datasets import Dataset

    enc = gpt2_tok(TEXTS, padding="max_length", max_length=24, truncation=True)
    labels = [
        [t if m else -100 for t, m in zip(ids, mask, strict=True)]
        for ids, mask in zip(enc["input_ids"], enc["attention_mask"], strict=True)
    ]
    data = Dataset.from_dict(
        {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
    )
    losses = {}
    for compiled in (False, True):
        args = config_for(
            output_dir=str(tmp_path / str(compiled)),
            perturbation="max",
            torch_compile=compiled,
            max_steps=1,
            per_device_train_batch_size=6,
            logging_steps=1,
            save_strategy="no",
            disable_tqdm=True,
            seed=0,
        )
        trainer = CounterfactualDistillationTrainer(
            model=tiny_gpt2(n_layer=1, seed=2, **NO_DROPOUT),
            teacher_model=tiny_gpt2(n_layer=2, seed=1, **NO_DROPOUT),
            args=args,
            train_dataset=data,
            processing_class=gpt2_tok,
        )
        trainer.train()
        assert ("OptimizedModule" in type(trainer.model_wrapped).__name__) == compiled
        losses[compiled] = trainer.state.log_history[0]["loss"]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
