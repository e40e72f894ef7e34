"""Unit tests for distill/losses.py: closed forms, chunked == reference, gradients, edge cases. CPU, fast."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import causal_lm_loss, hidden_cosine_loss, kd_loss
from tests.references import kd_loss_reference

BETAS = [0.0, 0.3, 0.5, 1.0]


def _logits(
    *shape: int, dtype: torch.dtype = torch.float64, seed: int = 0, scale: float = 3.0
) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def _mask(b: int, t: int, seed: int = 1, keep: float = 0.7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, t, generator=gen) < keep
    mask[0, 0] = True  # never accidentally all-masked
    return mask


def _kl(p: torch.Tensor, q: torch.Tensor) -> float:
    return float((p * (p / q).log()).sum())


# ----------------------------------------------------------------------------------------------------
# Closed forms
# ----------------------------------------------------------------------------------------------------


def test_two_token_forward_and_reverse_kl_closed_form():
    teacher = torch.tensor([[[0.0, 0.0]]], dtype=torch.float64)  # p_T = (0.5, 0.5)
    student = torch.tensor([[[0.0, math.log(3.0)]]], dtype=torch.float64)  # p_S = (0.25, 0.75)
    forward = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    reverse = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    for fn in (kd_loss, kd_loss_reference):
        assert fn(student, teacher, beta=0.0).item() == pytest.approx(forward, abs=1e-12)
        assert fn(student, teacher, beta=1.0).item() == pytest.approx(reverse, abs=1e-12)


def test_two_token_generalized_jsd_closed_form():
    p_t = torch.tensor([0.5, 0.5], dtype=torch.float64)
    p_s = torch.tensor([0.25, 0.75], dtype=torch.float64)
    teacher, student = p_t.log().view(1, 1, 2), p_s.log().view(1, 1, 2)
    for beta in (0.3, 0.5, 0.8):
        m = beta * p_t + (1 - beta) * p_s
        expected = beta * _kl(p_t, m) + (1 - beta) * _kl(p_s, m)
        assert kd_loss(student, teacher, beta=beta).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("beta", BETAS)
def test_identical_distributions_give_zero_loss_and_zero_grad(beta):
    logits = _logits(2, 5, 50).requires_grad_()
    loss = kd_loss(logits, logits.detach().clone(), beta=beta, temperature=1.7)
    (grad,) = torch.autograd.grad(loss, logits)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert grad.abs().max().item() < 1e-12


@pytest.mark.parametrize("beta", BETAS)
def test_temperature_squared_scaling(beta):
    student, teacher = _logits(2, 6, 40, seed=2), _logits(2, 6, 40, seed=3)
    tau = 2.0
    at_tau = kd_loss(student, teacher, beta=beta, temperature=tau)
    pre_softened = kd_loss(student / tau, teacher / tau, beta=beta, temperature=1.0)
    unscaled = kd_loss(student, teacher, beta=beta, temperature=tau, scale_by_temperature_squared=False)
    torch.testing.assert_close(at_tau, tau**2 * pre_softened)
    torch.testing.assert_close(unscaled, pre_softened)


def test_reverse_kl_is_forward_kl_with_roles_swapped():
    student, teacher = _logits(3, 4, 30, seed=4), _logits(3, 4, 30, seed=5)
    for tau in (1.0, 2.5):
        torch.testing.assert_close(
            kd_loss(student, teacher, beta=1.0, temperature=tau),
            kd_loss(teacher, student, beta=0.0, temperature=tau),
        )


def test_jsd_half_is_symmetric_and_bounded_by_log2():
    student, teacher = _logits(3, 4, 30, seed=6), _logits(3, 4, 30, seed=7)
    torch.testing.assert_close(kd_loss(student, teacher, beta=0.5), kd_loss(teacher, student, beta=0.5))
    # Near-disjoint supports push the JSD up to (but never above) log 2.
    disjoint_s = torch.tensor([[[50.0, -50.0]]], dtype=torch.float64)
    disjoint_t = torch.tensor([[[-50.0, 50.0]]], dtype=torch.float64)
    value = kd_loss(disjoint_s, disjoint_t, beta=0.5).item()
    assert value == pytest.approx(math.log(2.0), abs=1e-9)
    assert value <= math.log(2.0)
    assert 0.0 <= kd_loss(student, teacher, beta=0.5).item() <= math.log(2.0)


def test_jsd_endpoints_follow_trl_convention():
    """JSD(beta) ~ beta * KL(p_T||p_S) near 0, (1 - beta) * KL(p_S||p_T) near 1: not the KLs themselves."""
    student, teacher = _logits(2, 3, 20, seed=8, scale=1.0), _logits(2, 3, 20, seed=9, scale=1.0)
    eps = 1e-5
    forward, reverse = kd_loss(student, teacher, beta=0.0), kd_loss(student, teacher, beta=1.0)
    torch.testing.assert_close(kd_loss(student, teacher, beta=eps) / eps, forward, rtol=1e-3, atol=0)
    torch.testing.assert_close(kd_loss(student, teacher, beta=1 - eps) / eps, reverse, rtol=1e-3, atol=0)


# ----------------------------------------------------------------------------------------------------
# Chunked fast path == plain reference
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_chunked_matches_reference_fp64(beta, temperature):
    # N = 2 * 23 = 46 positions, chunk_size 7 does not divide the ~32 counted ones; V ~ 1000.
    student, teacher, mask = _logits(2, 23, 1000, seed=10), _logits(2, 23, 1000, seed=11), _mask(2, 23)
    student.requires_grad_()
    kwargs = {"temperature": temperature, "beta": beta}
    fast = kd_loss(student, teacher, mask, chunk_size=7, **kwargs)
    ref = kd_loss_reference(student, teacher, mask, **kwargs)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-9)
    # A grad_output other than 1 (e.g. the alpha weighting of the combined loss) must scale correctly.
    upstream = torch.tensor(0.37, dtype=torch.float64)
    (g_fast,) = torch.autograd.grad(fast, student, upstream)
    (g_ref,) = torch.autograd.grad(ref, student, upstream)
    torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=1e-9)
    assert g_fast[~mask].abs().max().item() == 0.0  # masked positions get exactly no gradient


@pytest.mark.parametrize("beta", BETAS)
def test_chunked_matches_reference_fp32(beta):
    student, teacher, mask = (
        _logits(2, 19, 1000, dtype=torch.float32, seed=12),
        _logits(2, 19, 1000, dtype=torch.float32, seed=13),
        _mask(2, 19),
    )
    student.requires_grad_()
    fast = kd_loss(student, teacher, mask, beta=beta, temperature=2.0, chunk_size=5)
    ref = kd_loss_reference(student, teacher, mask, beta=beta, temperature=2.0)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    (g_fast,) = torch.autograd.grad(fast, student)
    (g_ref,) = torch.autograd.grad(ref, student)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 17, 1000])
def test_result_does_not_depend_on_chunk_size(chunk_size):
    student, teacher = _logits(2, 8, 64, seed=14), _logits(2, 8, 64, seed=15)
    expected = kd_loss_reference(student, teacher, beta=0.5)
    torch.testing.assert_close(kd_loss(student, teacher, beta=0.5, chunk_size=chunk_size), expected)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.long, torch.float32])
def test_mask_dtypes_and_2d_inputs(mask_dtype):
    student, teacher, mask = _logits(2, 9, 50, seed=16), _logits(2, 9, 50, seed=17), _mask(2, 9)
    expected = kd_loss_reference(student, teacher, mask, beta=0.3)
    torch.testing.assert_close(
        kd_loss(student, teacher, mask.to(mask_dtype), beta=0.3, chunk_size=4), expected
    )
    # (N, V) logits with an (N,) mask are the same computation.
    flat = kd_loss(
        student.reshape(18, 50), teacher.reshape(18, 50), mask.reshape(18).to(mask_dtype), beta=0.3
    )
    torch.testing.assert_close(flat, expected)


def test_non_contiguous_shifted_views():
    full_student = _logits(2, 10, 60, seed=18).requires_grad_()
    full_teacher = _logits(2, 10, 60, seed=19)
    student, teacher = full_student[:, :-1], full_teacher[:, :-1]  # the usual next-token shift
    assert not student.is_contiguous()
    fast = kd_loss(student, teacher, chunk_size=4)
    ref = kd_loss_reference(student, teacher)
    torch.testing.assert_close(fast, ref)
    (g_fast,) = torch.autograd.grad(fast, full_student)
    (g_ref,) = torch.autograd.grad(ref, full_student)
    torch.testing.assert_close(g_fast, g_ref)
    assert g_fast[:, -1].abs().max().item() == 0.0


def test_teacher_gets_no_gradient():
    student = _logits(1, 4, 10, seed=20).requires_grad_()
    teacher = _logits(1, 4, 10, seed=21).requires_grad_()
    kd_loss(student, teacher, beta=0.5).backward()
    assert student.grad is not None and teacher.grad is None


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_gradcheck_custom_function(beta):
    student = _logits(2, 3, 5, seed=22, scale=1.0).requires_grad_()
    teacher = _logits(2, 3, 5, seed=23, scale=1.0)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    assert torch.autograd.gradcheck(
        lambda s: kd_loss(s, teacher, mask, beta=beta, temperature=1.5, chunk_size=2), (student,)
    )


def test_backward_twice_with_retain_graph_at_weight_one():
    student, teacher = _logits(1, 5, 20, seed=24).requires_grad_(), _logits(1, 5, 20, seed=25)
    loss = kd_loss(student, teacher, beta=0.3)
    (first,) = torch.autograd.grad(loss, student, retain_graph=True)
    first = first.clone()
    (second,) = torch.autograd.grad(loss, student)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_weighted_backward_scales_the_stored_gradient_in_place_and_refuses_a_second_backward():
    """The memory contract of backward: the gradient handed back is the buffer saved in forward, scaled
    in place -- never a second student-sized tensor -- and it equals the weighted reference gradient."""
    student, teacher = _logits(2, 5, 20, seed=24).requires_grad_(), _logits(2, 5, 20, seed=25)
    kd = kd_loss(student, teacher, beta=0.3)
    (stored,) = kd.grad_fn.saved_tensors
    loss = 2.5 * kd
    (grad,) = torch.autograd.grad(loss, student, retain_graph=True)
    assert grad.data_ptr() == stored.data_ptr()
    reference = student.detach().clone().requires_grad_()
    (expected,) = torch.autograd.grad(2.5 * kd_loss_reference(reference, teacher, beta=0.3), reference)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(RuntimeError, match="second time.*weight 1"):
        torch.autograd.grad(loss, student)


def test_only_a_student_shaped_gradient_is_saved_for_backward():
    """The memory contract: no (B*T, V) float32 activations survive the forward pass."""
    student = _logits(2, 16, 300, dtype=torch.bfloat16, seed=26).requires_grad_()
    teacher = _logits(2, 16, 300, dtype=torch.bfloat16, seed=27)

    def saved_by(fn):
        saved = []

        def pack(t):
            saved.append((t.dtype, t.numel()))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(student, teacher, beta=0.5, temperature=2.0)
        return saved

    assert saved_by(lambda *a, **k: kd_loss(*a, chunk_size=8, **k)) == [(torch.bfloat16, student.numel())]
    # The plain implementation keeps several full-size float32 tensors alive (what the chunking avoids).
    big_fp32 = [
        n for dtype, n in saved_by(kd_loss_reference) if dtype == torch.float32 and n >= student.numel()
    ]
    assert len(big_fp32) >= 3


def test_inf_teacher_log_probs_are_handled_for_forward_kl_and_jsd():
    # A counterfactual target may rule tokens out entirely (log p = -inf): 0 * log 0 must count as 0.
    teacher = torch.tensor([[[0.0, float("-inf"), 0.0]]], dtype=torch.float64)
    teacher = teacher - torch.logsumexp(teacher, dim=-1, keepdim=True)  # p_T = (0.5, 0, 0.5)
    student = _logits(1, 1, 3, seed=28).requires_grad_()
    p_s, p_t = student.detach().softmax(-1).flatten(), teacher.exp().flatten()
    expected_forward = sum(float(p_t[i] * (p_t[i] / p_s[i]).log()) for i in (0, 2))
    for beta in (0.0, 0.5):
        loss = kd_loss(student, teacher, beta=beta, teacher_is_log_probs=True)
        (grad,) = torch.autograd.grad(loss, student)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert kd_loss(student, teacher, teacher_is_log_probs=True).item() == pytest.approx(expected_forward)


# ----------------------------------------------------------------------------------------------------
# Precision, empty batches, normalisation
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_bf16_inputs_give_fp32_loss_close_to_fp32_reference(beta):
    student = _logits(2, 12, 500, dtype=torch.bfloat16, seed=29).requires_grad_()
    teacher = _logits(2, 12, 500, dtype=torch.bfloat16, seed=30)
    loss = kd_loss(student, teacher, beta=beta, temperature=2.0, chunk_size=5)
    assert loss.dtype == torch.float32
    student_fp32 = student.detach().float().requires_grad_()
    ref = kd_loss_reference(student_fp32, teacher.float(), beta=beta, temperature=2.0)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(loss, student)
    (grad_ref,) = torch.autograd.grad(ref, student_fp32)
    assert grad.dtype == torch.bfloat16
    # Only the final rounding of the gradient to bf16 differs.
    torch.testing.assert_close(grad.float(), grad_ref, rtol=1e-2, atol=1e-6)


@pytest.mark.parametrize("beta", BETAS)
def test_all_masked_is_exact_zero_with_zero_grads(beta):
    student = _logits(2, 4, 30, dtype=torch.bfloat16, seed=31).requires_grad_()
    teacher = _logits(2, 4, 30, dtype=torch.bfloat16, seed=32)
    none_count = torch.zeros(2, 4, dtype=torch.bool)
    for fn in (kd_loss, kd_loss_reference):
        for kwargs in (
            {"mask": none_count},
            {"mask": none_count, "num_items_in_batch": 10},
            {"num_items_in_batch": 0},
        ):
            loss = fn(student, teacher, beta=beta, **kwargs)
            assert loss.item() == 0.0 and not torch.isnan(loss)
            assert loss.dtype == torch.float32
            loss.backward()
            assert student.grad is not None and student.grad.abs().max().item() == 0.0
            student.grad = None


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_num_items_in_batch_makes_micro_batches_sum_to_the_full_batch(beta):
    student, teacher, mask = _logits(4, 11, 80, seed=33), _logits(4, 11, 80, seed=34), _mask(4, 11, seed=35)
    student.requires_grad_()
    total = int(mask.sum())
    kwargs = {"beta": beta, "temperature": 2.0, "chunk_size": 6}
    # Micro-batches of unequal token counts: a per-call mean would weight their tokens differently.
    parts = [
        kd_loss(student[:1], teacher[:1], mask[:1], num_items_in_batch=total, **kwargs),
        kd_loss(student[1:], teacher[1:], mask[1:], num_items_in_batch=torch.tensor(total), **kwargs),
    ]
    whole = kd_loss(student, teacher, mask, **kwargs)
    torch.testing.assert_close(parts[0] + parts[1], whole)
    (g_parts,) = torch.autograd.grad(parts[0] + parts[1], student)
    (g_whole,) = torch.autograd.grad(whole, student)
    torch.testing.assert_close(g_parts, g_whole)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_teacher_log_probs_are_used_as_is(temperature):
    student, teacher = _logits(2, 5, 40, seed=36), _logits(2, 5, 40, seed=37)
    from_logits = kd_loss(student, teacher, beta=0.3, temperature=temperature)
    # The caller softens the target itself; the temperature is not applied to it a second time.
    pre_softened = F.log_softmax(teacher / temperature, dim=-1)
    for fn in (kd_loss, kd_loss_reference):
        torch.testing.assert_close(
            fn(student, pre_softened, beta=0.3, temperature=temperature, teacher_is_log_probs=True),
            from_logits,
        )


# ----------------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"teacher": torch.zeros(2, 3, 11)}, "vocab sizes differ: student V=10, teacher V=11"),
        ({"teacher": torch.zeros(2, 4, 10)}, "teacher_logits shape (2, 4, 10) differ"),
        ({"mask": torch.ones(2, 4, dtype=torch.bool)}, "mask shape (2, 4) does not match"),
        ({"temperature": 0.0}, "temperature must be a finite number > 0"),
        ({"temperature": -1.0}, "temperature must be a finite number > 0"),
        ({"beta": 1.5}, "beta must be in [0, 1]"),
        ({"beta": -0.1}, "beta must be in [0, 1]"),
        ({"chunk_size": 0}, "chunk_size must be an integer >= 1"),
        ({"num_items_in_batch": -3}, "num_items_in_batch must be a non-negative token count"),
    ],
)
def test_bad_inputs_raise_helpful_value_errors(kwargs, message):
    kwargs = dict(kwargs)
    student = torch.zeros(2, 3, 10)
    teacher = kwargs.pop("teacher", torch.zeros(2, 3, 10))
    with pytest.raises(ValueError) as info:
        kd_loss(student, teacher, **kwargs)
    assert message in str(info.value)
    if "chunk_size" not in kwargs:
        with pytest.raises(ValueError):
            kd_loss_reference(student, teacher, **kwargs)


def test_vocab_mismatch_message_is_actionable():
    with pytest.raises(ValueError) as info:
        kd_loss(torch.zeros(1, 2, 50257), torch.zeros(1, 2, 32000))
    text = str(info.value)
    assert "student V=50257, teacher V=32000" in text
    assert "student built on the teacher's tokenizer" in text


def test_wrong_rank_raises():
    with pytest.raises(ValueError, match="student_logits must have shape"):
        kd_loss(torch.zeros(10), torch.zeros(10))


# ----------------------------------------------------------------------------------------------------
# Hard-label and hidden-state losses
# ----------------------------------------------------------------------------------------------------


def test_causal_lm_loss_matches_manual_shift():
    logits = _logits(3, 7, 25, dtype=torch.float32, seed=38).requires_grad_()
    labels = torch.randint(0, 25, (3, 7), generator=torch.Generator().manual_seed(39))
    labels[0, :4] = -100  # prompt tokens
    labels[2, 5:] = -100  # padding
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 25), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(causal_lm_loss(logits, labels), expected)
    total = int((labels[:, 1:] != -100).sum())
    split = causal_lm_loss(logits[:1], labels[:1], total) + causal_lm_loss(logits[1:], labels[1:], total)
    torch.testing.assert_close(split, expected)
    assert causal_lm_loss(logits.bfloat16(), labels).dtype == torch.float32


def test_causal_lm_loss_all_ignored_and_bad_shapes():
    logits = _logits(2, 5, 9, dtype=torch.float32, seed=40).requires_grad_()
    labels = torch.full((2, 5), -100)
    loss = causal_lm_loss(logits, labels)
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad.abs().max().item() == 0.0
    assert causal_lm_loss(logits, torch.zeros(2, 5, dtype=torch.long), num_items_in_batch=0).item() == 0.0
    with pytest.raises(ValueError, match="labels"):
        causal_lm_loss(logits, torch.zeros(2, 4, dtype=torch.long))


def test_hidden_cosine_loss_closed_forms():
    h = _logits(2, 3, 16, dtype=torch.float32, seed=41)
    assert hidden_cosine_loss(h, h).item() == pytest.approx(0.0, abs=1e-6)
    assert hidden_cosine_loss(h, -h).item() == pytest.approx(2.0, abs=1e-6)
    orthogonal_s = torch.tensor([[[1.0, 0.0]]])
    orthogonal_t = torch.tensor([[[0.0, 3.0]]])
    assert hidden_cosine_loss(orthogonal_s, orthogonal_t).item() == pytest.approx(1.0)
    # Mask: only the counted (opposite) positions contribute; mean over them.
    teacher = h.clone()
    teacher[0] = -h[0]
    mask = torch.tensor([[True, True, True], [False, False, False]])
    assert hidden_cosine_loss(h, teacher, mask).item() == pytest.approx(2.0, abs=1e-6)
    assert hidden_cosine_loss(h, teacher, mask, num_items_in_batch=6).item() == pytest.approx(1.0, abs=1e-6)


def test_hidden_cosine_loss_all_masked_and_errors():
    h = _logits(2, 3, 8, dtype=torch.bfloat16, seed=42).requires_grad_()
    loss = hidden_cosine_loss(h, h.detach() + 1, torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.dtype == torch.float32
    loss.backward()
    assert h.grad.abs().max().item() == 0.0
    with pytest.raises(ValueError) as info:
        hidden_cosine_loss(torch.zeros(1, 2, 768), torch.zeros(1, 2, 1024))
    assert "hidden sizes differ: student H=768, teacher H=1024" in str(info.value)
    assert "projection" in str(info.value) and "teacher's hidden size" in str(info.value)
    with pytest.raises(ValueError, match="mask shape"):
        hidden_cosine_loss(torch.zeros(1, 2, 8), torch.zeros(1, 2, 8), torch.ones(2, 2))


def test_fp16_student_gradients_survive_a_loss_scaler():
    """An fp16 student (DeepSpeed fp16): the stored gradient is already divided by the token count, so
    it is kept in fp32 until backward multiplies it by the loss scale; in fp16 it would underflow."""
    torch.manual_seed(0)
    student = (torch.randn(1, 4096, 64) * 2).half().requires_grad_()
    teacher = torch.randn(1, 4096, 64) * 2
    (kd_loss(student, teacher) * 65536.0).backward()
    reference = student.detach().float().requires_grad_()
    (kd_loss_reference(reference, teacher) * 65536.0).backward()
    assert student.grad.dtype == torch.float16
    assert (student.grad != 0).float().mean() > 0.99
    torch.testing.assert_close(student.grad.float(), reference.grad, rtol=2e-2, atol=2e-3)
