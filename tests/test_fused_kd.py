"""The fused role-reversal KD loss (``role_reversal_kd_loss``) computes what the plain path computes.

The plain path writes the whole target and then reads it back: ``kd_loss(student, role_reversal(teacher,
...), teacher_is_log_probs=True)``. The fused path builds each chunk's rows of the target inside the
loss. Held to each other in loss and student gradient, every mode and scope, with masks, counterfactual
suffixes (a row swapped from position 0, rows swapped later, a suffix that covers nothing) and padding,
in float64 (tight, and also against the plain references in ``tests/references.py``), float32 and
bfloat16 (their tolerance). Real GPT-2 pair map and vocabulary; hand-made logits.
"""

from __future__ import annotations

import pytest
import torch

from counterfactuals import build_pair_map
from distill.losses import (
    COMBINE_MODES,
    SCOPES,
    CounterfactualSuffix,
    kd_loss,
    role_reversal,
    role_reversal_kd_loss,
)
from tests.assets import GPT2_VOCAB_SIZE
from tests.references import kd_loss_reference, role_reversal_reference

HE, SHE, HIS, HER = 339, 673, 465, 607
B, T = 4, 9


@pytest.fixture(scope="module")
def pair_map(gpt2_tok):
    return build_pair_map(gpt2_tok)


def logits(*shape, seed, scale=3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, GPT2_VOCAB_SIZE, generator=g, dtype=torch.float64) * scale).to(dtype)


def case(dtype=torch.float64):
    """Student, teacher and counterfactual logits of a right-padded batch, the counterfactual suffixes the
    trainer would pass, the same counterfactual assembled whole, the mask and the context ids."""
    student = logits(B, T, seed=0, dtype=dtype)
    teacher, counterfactual = logits(B, T, seed=1, dtype=dtype), logits(B, T, seed=2, dtype=dtype)
    teacher[:, 0, HE] += 40.0  # almost all mass on gendered tokens: the exact-renormalisation rows
    teacher[:, 1, SHE] += 12.0
    teacher[:, 1, HE] += 11.0
    suffixes = [
        CounterfactualSuffix(torch.tensor([2]), 0, counterfactual[[2], 0:]),  # swapped at position 0
        CounterfactualSuffix(torch.tensor([3, 0]), 5, counterfactual[[3, 0], 5:]),
        CounterfactualSuffix(torch.tensor([1]), T, counterfactual[[1], T:]),  # covers nothing
    ]
    assembled = teacher.clone()
    assembled[2] = counterfactual[2]
    assembled[[3, 0], 5:] = counterfactual[[3, 0], 5:]
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 7:] = False  # padding at the end of rows 0 and 3
    mask[3, 4:] = False  # row 3's counted positions all lie before its suffix
    mask[1, 2] = False  # a label masked inside a row
    context = torch.randint(0, GPT2_VOCAB_SIZE, (B, T), generator=torch.Generator().manual_seed(3))
    context[:, 3] = 15  # "0", a token that ends a word: gendered word pieces after it are pinned
    context[:, 4] = HIS
    return student, teacher, counterfactual, suffixes, assembled, mask, context


def loss_and_grad(fn, student: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    student = student.detach().clone().requires_grad_()
    loss = fn(student, **kwargs)
    (grad,) = torch.autograd.grad(loss, student)
    return loss.detach(), grad


def fused(student, *, teacher, suffixes, pair_map, mode, scope, mask, context, **kd):
    return role_reversal_kd_loss(
        student,
        teacher,
        mask,
        pair_map=pair_map,
        mode=mode,
        scope=scope,
        context_ids=context,
        counterfactual_suffixes=suffixes,
        **kd,
    )


def plain(student, *, teacher, suffixes, pair_map, mode, scope, mask, context, chunk_size=1024, **kd):
    target = role_reversal(
        teacher,
        None,
        pair_map,
        mode,
        temperature=kd.get("temperature", 1.0),
        scope=scope,
        context_ids=context,
        chunk_size=chunk_size,
        counterfactual_suffixes=suffixes,
    )
    return kd_loss(student, target, mask, teacher_is_log_probs=True, chunk_size=chunk_size, **kd)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("mode", COMBINE_MODES)
def test_fused_equals_the_plain_path_and_the_references(pair_map, mode, scope):
    student, teacher, _, suffixes, assembled, mask, context = case()
    common = {"teacher": teacher, "suffixes": suffixes, "pair_map": pair_map, "mode": mode, "scope": scope}
    common |= {"mask": mask, "context": context, "temperature": 2.0}
    target = role_reversal_reference(
        teacher, assembled, pair_map, mode, temperature=2.0, scope=scope, context_ids=context
    )
    want_loss, want_grad = loss_and_grad(
        kd_loss_reference,
        student,
        teacher_logits=target,
        mask=mask,
        temperature=2.0,
        teacher_is_log_probs=True,
    )
    plain_loss, plain_grad = loss_and_grad(plain, student, chunk_size=5, **common)
    for chunk_size in (3, 1024):  # chunks that cut across the neutral / suffix groups, and one chunk
        loss, grad = loss_and_grad(fused, student, chunk_size=chunk_size, **common)
        assert loss.item() == pytest.approx(want_loss.item(), rel=1e-10)
        assert loss.item() == pytest.approx(plain_loss.item(), rel=1e-10)
        torch.testing.assert_close(grad, want_grad, rtol=1e-8, atol=1e-14)
        torch.testing.assert_close(grad, plain_grad, rtol=1e-8, atol=1e-14)
        assert (grad[~mask] == 0).all()  # masked positions get exactly no gradient
    # the counterfactual view matters: against the neutral target (no suffix) the loss differs
    neutral, _ = loss_and_grad(fused, student, chunk_size=7, **{**common, "suffixes": []})
    assert abs(neutral.item() - want_loss.item()) > 1e-4


@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_fused_jsd_and_reverse_kl_and_step_normaliser(pair_map, beta):
    student, teacher, counterfactual, _, _, mask, context = case()
    common = {"teacher": teacher, "pair_map": pair_map, "mode": "mean", "scope": "all", "mask": mask}
    common |= {"context": context, "temperature": 1.5, "beta": beta, "num_items_in_batch": 50}
    # a full counterfactual tensor (every row from position 0) instead of suffixes
    rows = torch.arange(B)
    suffixes = [CounterfactualSuffix(rows, 0, counterfactual)]
    want = loss_and_grad(plain, student, suffixes=suffixes, chunk_size=4, **common)
    got = loss_and_grad(
        lambda s, **k: fused(s, **k),
        student,
        suffixes=None,
        chunk_size=4,
        **{**common, "teacher": teacher},
    )
    whole = loss_and_grad(
        lambda s, **k: role_reversal_kd_loss(
            s,
            k["teacher"],
            k["mask"],
            pair_map=pair_map,
            mode="mean",
            context_ids=context,
            counterfactual_logits=counterfactual,
            temperature=1.5,
            beta=beta,
            num_items_in_batch=50,
            chunk_size=4,
        ),
        student,
        teacher=teacher,
        mask=mask,
    )
    assert whole[0].item() == pytest.approx(want[0].item(), rel=1e-10)
    torch.testing.assert_close(whole[1], want[1], rtol=1e-8, atol=1e-14)
    # and with no counterfactual at all: the neutral target
    neutral_plain = loss_and_grad(plain, student, suffixes=None, chunk_size=4, **common)
    assert got[0].item() == pytest.approx(neutral_plain[0].item(), rel=1e-10)


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-5)])
def test_fused_low_precision_inputs(pair_map, dtype, rtol):
    """fp32 and bf16 logits: the math runs in fp32 on both paths; the gradient comes back in the
    student's dtype. Held to the plain path at fp32 rounding."""
    student, teacher, _, suffixes, _, mask, context = case(dtype)
    for mode, scope in (("max", "all"), ("expMean", "gendered"), ("mean", "all")):
        common = {"teacher": teacher, "suffixes": suffixes, "pair_map": pair_map, "mode": mode}
        common |= {"scope": scope, "mask": mask, "context": context, "temperature": 2.0}
        want_loss, want_grad = loss_and_grad(plain, student, chunk_size=8, **common)
        loss, grad = loss_and_grad(fused, student, chunk_size=8, **common)
        assert loss.dtype == torch.float32 and grad.dtype == dtype
        assert loss.item() == pytest.approx(want_loss.item(), rel=rtol, abs=1e-6)
        scale = want_grad.float().abs().max()
        torch.testing.assert_close(grad.float(), want_grad.float(), rtol=0, atol=2e-3 * scale.item())


def test_fused_empty_mask_and_bad_input(pair_map):
    student, teacher, _, suffixes, _, mask, context = case(torch.float32)
    common = {"teacher": teacher, "suffixes": suffixes, "pair_map": pair_map, "mode": "max", "scope": "all"}
    loss, grad = loss_and_grad(fused, student, mask=torch.zeros_like(mask), context=context, **common)
    assert loss.item() == 0.0 and (grad == 0).all()
    with pytest.raises(ValueError, match="unknown perturbation mode 'median'"):
        loss_and_grad(fused, student, mask=mask, context=context, **{**common, "mode": "median"})
    with pytest.raises(ValueError, match="appear in one suffix at most"):
        loss_and_grad(fused, student, mask=mask, context=context, **{**common, "suffixes": suffixes[1:2] * 2})
    with pytest.raises(ValueError, match="not both"):
        role_reversal_kd_loss(
            student,
            teacher,
            pair_map=pair_map,
            mode="max",
            counterfactual_logits=teacher,
            counterfactual_suffixes=suffixes,
        )
    with pytest.raises(ValueError, match="vocab_size=teacher.config.vocab_size"):
        small = torch.zeros(2, 3, 100)
        role_reversal_kd_loss(small, small, pair_map=pair_map, mode="max")
