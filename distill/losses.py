"""Distillation losses as pure functions of tensors (no model, no Trainer state).

Everything here takes logits / hidden states and returns a scalar loss, so it can be unit-tested on
hand-made tensors and reused by any trainer. Conventions shared by every function:

* **Reduction.** ``sum over counted positions / normaliser``. The normaliser is ``num_items_in_batch``
  when given -- the number of target tokens in the *whole optimizer step* (all gradient-accumulation
  micro-batches, all DDP ranks), exactly what ``transformers.Trainer`` passes to ``compute_loss`` -- and
  otherwise the number of counted positions in this call. Normalising by the step-wide count makes the
  accumulated gradient identical to one big batch, whatever the split into micro-batches.
* **Empty batches.** A normaliser of 0 (everything masked, or ``num_items_in_batch == 0``) gives a loss
  of exactly 0 that is still attached to the autograd graph (zero gradients), never NaN.
* **Precision.** The math runs in float32 whatever the input dtype (float64 inputs stay float64, which
  the tests use for tight comparisons); the returned loss is float32 (or float64).
* **Frozen teacher.** Teacher tensors are treated as constants: no gradient ever flows into them.

Longer than our ~600-line guide on purpose: ``kd_loss`` and the fused ``role_reversal_kd_loss`` share one
chunked autograd function (``_ChunkedKDFunction``, reading its target rows through ``_TeacherRows``), and
the role-reversal target is built by the same per-chunk code whether it is written whole
(``role_reversal``) or consumed by the loss. Sections, in order: validation, the KD divergence, the
hard-label and hidden-state losses, role reversal (alone and fused).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

if TYPE_CHECKING:
    from counterfactuals import PairMap

__all__ = [
    "COMBINE_MODES",
    "IGNORE_INDEX",
    "SCOPES",
    "causal_lm_loss",
    "combine",
    "hidden_cosine_loss",
    "kd_loss",
    "CounterfactualSuffix",
    "role_reversal",
    "role_reversal_kd_loss",
]

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------------


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    # bf16/fp16 softmaxes over a 50k-150k vocabulary lose too much precision (and the KL of two nearly
    # equal distributions is a difference of nearly equal numbers), so the math is always done in fp32.
    # fp64 is kept so that tests and gradcheck can compare at ~1e-12.
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _as_item_count(num_items_in_batch: int | float | torch.Tensor | None) -> float | None:
    """Validate ``num_items_in_batch`` and return it as a Python number (None if not given)."""
    if num_items_in_batch is None:
        return None
    if isinstance(num_items_in_batch, torch.Tensor):
        if num_items_in_batch.numel() != 1:
            raise ValueError(
                f"num_items_in_batch must be a scalar token count, got a tensor of shape "
                f"{tuple(num_items_in_batch.shape)}"
            )
        # One host sync per step; transformers already syncs on this value for logging.
        num_items_in_batch = num_items_in_batch.item()
    if not math.isfinite(num_items_in_batch) or num_items_in_batch < 0:
        raise ValueError(
            f"num_items_in_batch must be a non-negative token count (the number of target tokens in the "
            f"whole optimizer step), got {num_items_in_batch}"
        )
    return float(num_items_in_batch)


def _check_mask(mask: torch.Tensor | None, positions_shape: torch.Size, what: str) -> None:
    if mask is not None and tuple(mask.shape) != tuple(positions_shape):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match the {what} shape without its last dim "
            f"{tuple(positions_shape)}; the mask marks which positions count (e.g. shifted labels != -100) "
            f"and must be shifted/sliced exactly like the {what}"
        )


def _check_kd_inputs(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None,
    temperature: float,
    beta: float,
    chunk_size: int,
) -> None:
    if student_logits.dim() not in (2, 3):
        raise ValueError(
            f"student_logits must have shape (batch, seq, vocab) or (positions, vocab), "
            f"got shape {tuple(student_logits.shape)}"
        )
    if not student_logits.is_floating_point() or not teacher_logits.is_floating_point():
        raise ValueError(
            f"logits must be floating point, got student {student_logits.dtype} "
            f"and teacher {teacher_logits.dtype}"
        )
    if student_logits.shape != teacher_logits.shape:
        s_shape, t_shape = tuple(student_logits.shape), tuple(teacher_logits.shape)
        if s_shape[:-1] == t_shape[:-1]:
            raise ValueError(
                f"vocab sizes differ: student V={s_shape[-1]}, teacher V={t_shape[-1]}; teacher and student "
                f"must share the tokenizer/vocabulary -- distill with a student built on the teacher's "
                f"tokenizer (if both use the same tokenizer and only one embedding matrix is padded, "
                f"slice both logits to len(tokenizer) before calling)"
            )
        raise ValueError(
            f"student_logits shape {s_shape} and teacher_logits shape {t_shape} differ; both must be "
            f"computed on the same input_ids with the same tokenizer/vocabulary, and sliced/shifted "
            f"the same way"
        )
    _check_mask(mask, student_logits.shape[:-1], "logits")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if not (isinstance(beta, (int, float)) and 0.0 <= beta <= 1.0):
        raise ValueError(
            f"beta must be in [0, 1] (0 = forward KL, 1 = reverse KL, in between = generalized JSD), "
            f"got {beta!r}"
        )
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1 (positions per chunk), got {chunk_size!r}")


# ----------------------------------------------------------------------------------------------------
# Knowledge-distillation divergence
# ----------------------------------------------------------------------------------------------------


def _log_softmax_in_place(logits: torch.Tensor, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    """``log_softmax(logits / temperature)`` in ``dtype``, written over ``logits`` when it already has that
    dtype (the caller must not need it afterwards), else over its one converted copy."""
    x = logits.to(dtype)
    if temperature != 1.0:
        x.div_(temperature)
    return x.sub_(torch.logsumexp(x, dim=-1, keepdim=True))


def _chunk_divergence(
    student_chunk: torch.Tensor,
    teacher_chunk: torch.Tensor,
    temperature: float,
    beta: float,
    teacher_is_log_probs: bool,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row divergence L and its closed-form gradient dL/dz for one chunk of rows.

    ``z = s / tau`` are the softened student logits, ``p_S = softmax(z)``, ``p_T`` the softened teacher
    distribution. Returns ``(L, dL/dz)`` with shapes ``(c,)`` and ``(c, V)`` in ``dtype``; the caller
    applies the chain-rule factor ``1 / tau`` and the loss scale. Gradients (``p = p_S``):

    * forward KL  ``L = sum p_T log(p_T/p)``:  ``dL/dz = p - p_T``
    * reverse KL  ``L = sum p log(p/p_T)``:    ``dL/dz = p * (log(p/p_T) - L)``
    * generalized JSD, ``m = beta p_T + (1-beta) p``,
      ``L = beta KL(p_T||m) + (1-beta) KL(p||m)``:  ``dL/dz = (1-beta) p * (log(p/m) - KL(p||m))``
      (writing ``L = beta sum p_T log p_T + (1-beta) sum p log p - sum m log m`` gives
      ``g_i = dL/dp_i = (1-beta) log(p_i/m_i)``; the softmax Jacobian maps ``g`` to ``p * (g - <p, g>)``).

    Both chunks are rows gathered for this call alone, and are overwritten: working in place keeps the
    peak at about three ``(c, V)`` tensors in ``dtype`` for forward KL (the trainer's default), which is
    what sets the loss's forward peak next to the student-shaped gradient buffer.
    """
    log_ps = _log_softmax_in_place(student_chunk, temperature, dtype)
    del student_chunk
    log_pt = teacher_chunk.to(dtype)
    del teacher_chunk
    if not teacher_is_log_probs:  # a log-probability target is used as is (the caller softened it)
        log_pt = _log_softmax_in_place(log_pt, temperature, dtype)

    if beta == 0.0:
        pt = log_pt.exp()
        # p_T (log p_T - log p_S), with 0 log 0 = 0: tokens the teacher rules out (log p_T = -inf, possible
        # with teacher_is_log_probs) contribute nothing instead of 0 * -inf = NaN. A NaN p_T stays NaN.
        terms = log_pt.sub_(log_ps).mul_(pt).masked_fill_(pt == 0, 0.0)
        row = terms.sum(-1)
        del terms, log_pt
        dz = log_ps.exp_().sub_(pt)
        return row, dz

    ps = log_ps.exp()
    if beta == 1.0:
        log_ratio = log_ps.sub_(log_pt)
        del log_pt
        row = (ps * log_ratio).sum(-1)
        dz = log_ratio.sub_(row.unsqueeze(-1)).mul_(ps)
        return row, dz
    # log m = logaddexp(log(1-beta) + log p_S, log(beta) + log p_T): the mixture is never formed in
    # probability space, which would underflow for tiny probabilities.
    log_m = torch.logaddexp(log_ps + math.log1p(-beta), log_pt + math.log(beta))
    pt = log_pt.exp()
    kl_t = torch.where(pt > 0, pt * (log_pt - log_m), 0.0).sum(-1)
    del pt, log_pt
    log_ps_over_m = log_ps.sub_(log_m)  # log_ps is no longer needed: reuse its buffer
    del log_m
    kl_s = (ps * log_ps_over_m).sum(-1)
    row = beta * kl_t + (1.0 - beta) * kl_s
    dz = log_ps_over_m.sub_(kl_s.unsqueeze(-1)).mul_(ps).mul_(1.0 - beta)
    return row, dz


class _TeacherRows:
    """The rows of a teacher tensor, as given (raw logits, or log-probabilities used as is), that
    :class:`_ChunkedKDFunction` reads a chunk at a time. The fused role-reversal loss reads its target
    through the same two methods (:class:`_RoleReversalRows`)."""

    def __init__(self, teacher: torch.Tensor, is_log_probs: bool) -> None:
        self.teacher, self.is_log_probs = teacher, is_log_probs

    def groups(
        self, pos_b: torch.Tensor, pos_t: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor, Any]]:
        """The counted positions split into groups whose rows are built alike: here, one group."""
        return [(pos_b, pos_t, None)]

    def rows(self, b: torch.Tensor, t: torch.Tensor, group: Any, device: torch.device) -> torch.Tensor:
        # The teacher may live on another device (e.g. offloaded to CPU): one chunk is moved at a time.
        where = self.teacher.device
        return self.teacher[b.to(where), t.to(where)].to(device)


class _ChunkedKDFunction(torch.autograd.Function):
    """Chunked KD divergence whose forward also produces d(loss)/d(student logits).

    Only that gradient (one tensor shaped and typed like the student logits) is kept for backward; the
    float32 softmaxes of a chunk are freed before the next chunk starts. Backward is a multiplication by
    ``grad_output``. This is the Liger-kernel pattern: it trades nothing in FLOPs (the gradient has to be
    computed anyway) for never holding ``(B*T, V)`` float32 activations. ``teacher`` gives the target
    rows of each chunk (:class:`_TeacherRows`, or :class:`_RoleReversalRows`, which builds them).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        student: torch.Tensor,
        teacher: _TeacherRows,
        pos_b: torch.Tensor,
        pos_t: torch.Tensor,
        normaliser: float,
        temperature: float,
        beta: float,
        scale: float,
        chunk_size: int,
    ) -> torch.Tensor:
        dtype = _compute_dtype(student)
        ctx.student_meta = (student.shape, student.dtype, student.device)
        n_positions = pos_b.numel()
        if n_positions == 0 or normaliser == 0:
            # Nothing counts: the loss is an exact 0 and the gradient is all zeros (built lazily in backward).
            ctx.has_grad = False
            return torch.zeros((), dtype=dtype, device=student.device)

        # zeros, not empty: masked positions must receive exactly zero gradient. fp16 gradients already
        # divided by the token count underflow before a loss scaler multiplies them in backward, so an
        # fp16 student keeps an fp32 buffer; at eval (no gradient wanted) there is no buffer at all.
        keep_grad = ctx.needs_input_grad[0]
        grad_dtype = torch.float32 if student.dtype == torch.float16 else student.dtype
        grad = torch.zeros(student.shape, dtype=grad_dtype, device=student.device) if keep_grad else None
        loss_sum = torch.zeros((), dtype=dtype, device=student.device)
        # loss = scale / normaliser * sum_rows L(s / tau)  =>  dloss/ds = scale / (tau * normaliser) * dL/dz
        grad_coef = scale / (temperature * normaliser)
        for group_b, group_t, group in teacher.groups(pos_b, pos_t):
            for start in range(0, group_b.numel(), chunk_size):
                b, t = group_b[start : start + chunk_size], group_t[start : start + chunk_size]
                # Gathering rows (instead of reshaping the whole tensor) keeps non-contiguous inputs such as
                # logits[:, :-1] copy-free and skips masked positions entirely. Advanced indexing gathers
                # copies, which _chunk_divergence may overwrite; passed without a name here so that the
                # callee holds the only reference and can free them as it goes.
                row, dz = _chunk_divergence(
                    student[b, t],
                    teacher.rows(b, t, group, student.device),
                    temperature,
                    beta,
                    teacher.is_log_probs,
                    dtype,
                )
                loss_sum += row.sum()
                if keep_grad:
                    grad[b, t] = dz.mul_(grad_coef).to(grad_dtype)
                del row, dz

        ctx.has_grad = keep_grad
        ctx.scaled_in_place = False
        if keep_grad:
            ctx.save_for_backward(grad)
        return loss_sum * (scale / normaliser)

    @staticmethod
    @once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor) -> tuple:  # type: ignore[override]
        n_no_grad = 8  # the teacher rows (frozen), pos_b, pos_t and the five Python arguments get no gradient
        if not ctx.has_grad:
            shape, dtype, device = ctx.student_meta
            return (torch.zeros(shape, dtype=dtype, device=device),) + (None,) * n_no_grad
        if ctx.scaled_in_place:
            raise RuntimeError(
                "kd_loss ran backward a second time (retain_graph=True) after its first backward scaled the "
                "stored gradient in place (grad_output was not 1): run backward once per forward, or "
                "backward a loss whose kd_loss term has weight 1 (then any number of backward calls works)"
            )
        (grad,) = ctx.saved_tensors
        factor = grad_output.item()
        # The stored buffer *is* the gradient handed back: backward never makes a second student-sized
        # tensor (in the trainer the gradient flows on into the LM head, so this lowers the step's peak).
        # At factor 1 (loss.backward() on an unweighted term) it is returned as is, so backward can run
        # again. Otherwise it is scaled in place -- by a Python float, so a bf16 buffer is multiplied in
        # fp32 inside the kernel -- and a second backward, which would see the scaled values, is refused.
        if factor != 1.0:
            grad.mul_(factor)
            ctx.scaled_in_place = True
        return (grad.to(ctx.student_meta[1]),) + (None,) * n_no_grad


def _positions(
    positions_shape: torch.Size, mask: torch.Tensor | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch index, time index) of every position that counts, in row-major order."""
    n_b, n_t = positions_shape
    if mask is None:
        flat = torch.arange(n_b * n_t, device=device)
    else:
        flat = mask.reshape(-1).to(device).nonzero().squeeze(1)  # nonzero entries count (bool or 0/1)
    return flat // n_t, flat % n_t


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    beta: float = 0.0,
    scale_by_temperature_squared: bool = True,
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_size: int = 1024,
    teacher_is_log_probs: bool = False,
) -> torch.Tensor:
    r"""Token-level distillation divergence between a frozen teacher and the student, chunked.

    With softened distributions :math:`p_S = \mathrm{softmax}(s/\tau)` and
    :math:`p_T = \mathrm{softmax}(t/\tau)` at every position, the per-position divergence ``L`` follows
    TRL's ``GKDTrainer.generalized_jsd_loss`` (Agarwal et al. 2024, "On-Policy Distillation of Language
    Models", Eq. 1) exactly:

    * ``beta == 0``: forward KL :math:`KL(p_T \| p_S) = \sum_v p_T \log(p_T / p_S)` -- the classic
      Hinton / DistilGPT-2 objective (mean-seeking);
    * ``beta == 1``: reverse KL :math:`KL(p_S \| p_T)` (mode-seeking);
    * ``0 < beta < 1``: generalized JSD with mixture :math:`m = \beta p_T + (1-\beta) p_S`,
      :math:`L = \beta\,KL(p_T \| m) + (1-\beta)\,KL(p_S \| m)`; ``beta = 0.5`` is the usual symmetric
      JSD, bounded by :math:`\log 2`.

    Note the endpoints are special cases, not limits: as ``beta -> 0`` the JSD tends to 0 like
    :math:`\beta\,KL(p_T \| p_S)` (and like :math:`(1-\beta)\,KL(p_S \| p_T)` as ``beta -> 1``), so
    ``beta = 1e-3`` is *not* a drop-in replacement for forward KL -- it is ~1000x smaller.

    The loss is

    .. math:: \text{loss} = c \cdot \frac{1}{N} \sum_{\text{counted positions}} L,
              \qquad c = \tau^2 \text{ if scale\_by\_temperature\_squared else } 1,

    where the :math:`\tau^2` factor (Hinton et al. 2015) keeps gradient magnitudes comparable across
    temperatures, and :math:`N` is ``num_items_in_batch`` if given, else the number of counted positions.

    Args:
        student_logits: ``(B, T, V)`` or ``(N, V)`` student logits, any float dtype; may be a
            non-contiguous view such as ``logits[:, :-1]`` (it is never copied whole).
        teacher_logits: same shape as ``student_logits``. Raw logits, or log-probabilities when
            ``teacher_is_log_probs``. May live on another device (moved one chunk at a time). Treated as
            a constant: the teacher is frozen and never receives a gradient.
        mask: ``(B, T)`` (or ``(N,)``) bool / 0-1 tensor of positions that count, e.g. shifted
            ``labels != -100``; nonzero entries count. None counts every position.
        temperature: softmax temperature :math:`\tau > 0`, applied to the student and to raw teacher logits.
        beta: divergence interpolation in ``[0, 1]``, see above.
        scale_by_temperature_squared: multiply by :math:`\tau^2` (default True).
        num_items_in_batch: normaliser -- the token count of the whole optimizer step across
            gradient-accumulation micro-batches and DDP ranks, as ``transformers.Trainer`` passes it to
            ``compute_loss`` (int or 1-element tensor). When None, the number of counted positions here.
            ``0`` gives a zero loss. (Scaling by the DDP world size, as ``Trainer`` does when
            ``average_tokens_across_devices`` is on, stays the caller's job.)
        chunk_size: positions processed at a time; peak extra memory is a few ``(chunk_size, V)`` fp32
            buffers.
        teacher_is_log_probs: the teacher target is already a log-distribution (e.g. a perturbed /
            counterfactual target) and is used **as is**: the temperature is *not* applied to it again --
            the caller is responsible for any softening. The student is still divided by ``temperature``
            and the :math:`\tau^2` factor still applies.

    Returns:
        Scalar float32 tensor (float64 for float64 inputs). Exactly 0 -- with a graph giving zero
        gradients, never NaN -- when nothing is counted or ``num_items_in_batch == 0``.

    Memory: the forward pass runs the divergence over ``chunk_size`` positions at a time and, in the same
    pass, writes the closed-form gradient w.r.t. the student logits into one buffer of the student's
    shape and dtype. That buffer is the only thing saved for backward, so neither the forward nor the
    backward pass ever holds the full ``(B*T, V)`` float32 softmaxes (which a plain implementation keeps
    several of alive in its autograd graph). Double backward is not supported.
    """
    _check_kd_inputs(student_logits, teacher_logits, mask, temperature, beta, chunk_size)
    if student_logits.dim() == 2:
        # (N, V) is a batch of one sequence; unsqueeze is a view, so gradients still land on the input.
        student_logits, teacher_logits = student_logits.unsqueeze(0), teacher_logits.unsqueeze(0)
        mask = mask.unsqueeze(0) if mask is not None else None
    teacher = _TeacherRows(teacher_logits, bool(teacher_is_log_probs))
    return _chunked_kd(
        student_logits,
        teacher,
        mask,
        temperature,
        beta,
        scale_by_temperature_squared,
        num_items_in_batch,
        chunk_size,
    )


def _chunked_kd(
    student_logits: torch.Tensor,
    teacher: _TeacherRows,
    mask: torch.Tensor | None,
    temperature: float,
    beta: float,
    scale_by_temperature_squared: bool,
    num_items_in_batch: int | torch.Tensor | None,
    chunk_size: int,
) -> torch.Tensor:
    """The normaliser, the counted positions and the autograd call shared by both KD entry points."""
    items = _as_item_count(num_items_in_batch)
    pos_b, pos_t = _positions(student_logits.shape[:-1], mask, student_logits.device)
    normaliser = items if items is not None else float(pos_b.numel())
    scale = float(temperature) ** 2 if scale_by_temperature_squared else 1.0
    return _ChunkedKDFunction.apply(
        student_logits, teacher, pos_b, pos_t, normaliser, float(temperature), float(beta), scale, chunk_size
    )


# ----------------------------------------------------------------------------------------------------
# Hard-label and hidden-state losses
# ----------------------------------------------------------------------------------------------------


def _normalise(total: torch.Tensor, count: torch.Tensor, items: float | None) -> torch.Tensor:
    """``total / (items or count)`` with a 0 normaliser giving a graph-attached exact 0."""
    if items is None:
        # total is already 0 when count is 0 (every term was masked), so clamping only avoids 0/0,
        # and it does so without a host sync.
        return total / count.clamp(min=1).to(total.dtype)
    if items == 0:
        return total * 0.0
    return total / items


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    r"""Next-token cross-entropy on the student's own labels (the "hard" part of the distillation loss).

    .. math:: \text{loss} = \frac{1}{N} \sum_{b,t:\,y_{b,t+1} \ne \text{ignore}}
              -\log \mathrm{softmax}(x_{b,t})_{y_{b,t+1}}

    with :math:`N` = ``num_items_in_batch`` if given, else the number of non-ignored shifted labels --
    the same normalisation as ``transformers``' ``ForCausalLMLoss``, so it composes with gradient
    accumulation the same way.

    Args:
        logits: ``(B, T, V)`` logits, any float dtype (upcast to float32).
        labels: ``(B, T)`` token ids aligned with ``input_ids`` (as passed to HF models); the shift by
            one is done here. ``ignore_index`` marks positions that do not count.
        num_items_in_batch: step-wide token count, see :func:`kd_loss`.
        ignore_index: label value to ignore.

    Returns:
        Scalar float32 loss; exactly 0 (graph-attached) when no label counts.
    """
    if logits.dim() != 3 or tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"expected logits (batch, seq, vocab) and labels (batch, seq) aligned with input_ids, got logits "
            f"{tuple(logits.shape)} and labels {tuple(labels.shape)}; pass unshifted labels, "
            f"the shift is done here"
        )
    items = _as_item_count(num_items_in_batch)
    vocab = logits.shape[-1]
    shift_labels = labels[:, 1:].to(logits.device)
    # Upcasting the (non-contiguous) shifted view makes the one contiguous fp32 copy that reshape then views.
    shift_logits = logits[:, :-1, :].to(_compute_dtype(logits)).reshape(-1, vocab)
    total = F.cross_entropy(
        shift_logits, shift_labels.reshape(-1), ignore_index=ignore_index, reduction="sum"
    )
    return _normalise(total, (shift_labels != ignore_index).sum(), items)


def hidden_cosine_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    mask: torch.Tensor | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Cosine-embedding loss between student and teacher hidden states (DistilBERT / DistilGPT-2).

    :math:`\text{loss} = \frac{1}{N} \sum_{\text{counted positions}} \bigl(1 - \cos(h_S, h_T)\bigr)`,
    cosine along the hidden dimension, so it is 0 for aligned states and 2 for opposite ones. :math:`N`
    is ``num_items_in_batch`` if given, else the number of counted positions.

    Args:
        student_hidden: ``(..., H)`` student hidden states (e.g. ``(B, T, H)``), any float dtype.
        teacher_hidden: same shape; treated as a constant (frozen teacher, detached).
        mask: bool / 0-1 tensor shaped like the hidden states without ``H``; nonzero entries count.
        num_items_in_batch: step-wide count, see :func:`kd_loss`.

    Returns:
        Scalar float32 loss; exactly 0 (graph-attached) when nothing is counted.
    """
    if student_hidden.shape[-1] != teacher_hidden.shape[-1]:
        raise ValueError(
            f"hidden sizes differ: student H={student_hidden.shape[-1]}, "
            f"teacher H={teacher_hidden.shape[-1]}; add a learned projection (e.g. nn.Linear(student H, "
            f"teacher H)) on the student hidden states, or pick a student with the teacher's hidden size"
        )
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"student_hidden shape {tuple(student_hidden.shape)} and teacher_hidden shape "
            f"{tuple(teacher_hidden.shape)} differ; both must come from the same input_ids"
        )
    _check_mask(mask, student_hidden.shape[:-1], "hidden states")
    items = _as_item_count(num_items_in_batch)
    teacher = teacher_hidden.detach().to(device=student_hidden.device)
    if teacher.is_inference():  # made under torch.inference_mode: autograd may not save it as is
        teacher = teacher.clone()
    dtype = _compute_dtype(student_hidden)
    per_position = 1.0 - F.cosine_similarity(student_hidden.to(dtype), teacher.to(dtype), dim=-1)
    if mask is None:
        count = torch.tensor(per_position.numel(), device=per_position.device)
    else:
        counted = mask.to(per_position.device) != 0
        per_position = torch.where(counted, per_position, 0.0)
        count = counted.sum()
    return _normalise(per_position.sum(), count, items)


# ----------------------------------------------------------------------------------------------------
# Counterfactual role reversal: the perturbed teacher target, alone or fused into the KD loss
# ----------------------------------------------------------------------------------------------------

COMBINE_MODES = ("max", "mean", "expMean")
SCOPES = ("all", "gendered")
_LOG_2 = math.log(2.0)


def combine(
    mode: str, log_p: torch.Tensor, log_q: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """The combination rule of role reversal, in log space: the log of the unnormalised combined
    distribution r of the original view p and the mapped-back counterfactual view q --
    ``max``: max(p, q); ``mean``: (p + q) / 2; ``expMean``: sqrt(p q), the geometric mean (a token q
    gives no mass stays at 0). The one place the rule is written: the gendered columns, the whole
    vocabulary (scope ``all``), the fused loss and the teacher cache all come here. ``out`` may be
    ``log_p`` itself (in place)."""
    if mode == "max":
        return torch.maximum(log_p, log_q, out=out)
    if mode == "mean":
        return torch.logaddexp(log_p, log_q, out=out).sub_(_LOG_2)
    # expMean: add and halve, not lerp, which would turn -inf + -inf into NaN
    return torch.add(log_p, log_q, out=out).mul_(0.5)


class CounterfactualSuffix(NamedTuple):
    """Counterfactual teacher logits of some rows, from one position on.

    A row's swapped context equals the original up to (not including) its first swapped token, so a
    causal teacher's counterfactual distribution before that position *is* the original one: only
    positions ``start:`` need counterfactual logits (the trainer's prefix sharing computes no others).
    """

    rows: torch.Tensor  # (n,) long: the batch rows these logits belong to
    start: int  # first position (on the logits' time axis) whose counterfactual context differs
    logits: torch.Tensor  # (n, T - start, V): counterfactual logits at positions start, ..., T - 1


def role_reversal(
    teacher_logits: torch.Tensor,
    counterfactual_logits: torch.Tensor | None,
    pair_map: PairMap,
    mode: str,
    *,
    temperature: float = 1.0,
    scope: str = "all",
    context_ids: torch.Tensor | None = None,
    chunk_size: int = 1024,
    counterfactual_suffixes: Sequence[CounterfactualSuffix] | None = None,
) -> torch.Tensor:
    r"""The perturbed teacher target of Gupta et al. (2022) as log-probabilities, shape ``(..., V)``.

    With :math:`p = \mathrm{softmax}(t/\tau)` the teacher's next-token distribution on the original
    context and :math:`\tilde p = \mathrm{softmax}(\tilde t/\tau)` on the gender-swapped one, the
    counterfactual view is mapped back to the original's vocabulary roles,
    :math:`q(w) = \tilde p(\sigma(w))` (``pair_map.map_back``: mass-conserving for the many-to-one
    pairs, " her" split between " his"/" him" as :math:`p` weighs them), then combined
    (:func:`combine`):

    * ``max``: :math:`r = \max(p, q)`; ``mean``: :math:`r = (p + q)/2`;
      ``expMean``: :math:`r = \sqrt{p\,q}` (geometric mean);
    * ``scope="all"`` combines over the whole vocabulary; ``scope="gendered"`` only over the tokens
      the pair map touches, every other token keeping :math:`p`;

    and renormalised: the result is :math:`\log(r / \sum r)`. In a gender-neutral context
    (``counterfactual_logits`` None or equal to ``teacher_logits``) every one-to-one pair gets equal
    probability under every mode: that is what evens out "the nurse said that [he|she]".

    Computes what ``tests/references.py``'s ``role_reversal_reference`` computes (up to float rounding;
    the tests hold it to that), with fewer passes over the vocabulary. The swap moves mass only between
    the gendered tokens ``G`` (``pair_map.gendered_ids``, about 2% of GPT-2's vocabulary), so
    :math:`q = \tilde p` outside ``G`` and ``map_back`` and the combination run on the ``G`` columns
    only. Where the context is neutral (:math:`\tilde p = p`) or ``scope="gendered"``, every other token
    keeps :math:`p`, so the normaliser is :math:`1 - \sum_G p + \sum_G r` and the whole position costs
    one ``logsumexp`` and one subtraction over the vocabulary (positions whose ``G`` mass exceeds 1/2,
    where that difference would lose precision, are renormalised exactly). :func:`role_reversal_kd_loss`
    computes the same target a chunk at a time inside the KD loss, never writing it whole.

    Args:
        teacher_logits: ``(..., V)`` teacher logits on the original context.
        counterfactual_logits: same shape, on the swapped context; None means the context has no
            gendered token, so :math:`\tilde p = p` (the trainer's rows that the swap left alone).
        pair_map: the token swap (``counterfactuals.build_pair_map``) of the tokenizer.
        mode: one of ``max``, ``mean``, ``expMean``.
        temperature: softmax temperature applied to both teacher views (the target is then used as is
            by :func:`kd_loss` with ``teacher_is_log_probs=True``).
        scope: ``all`` or ``gendered``.
        context_ids: ``(...)`` the last context token of each position (``input_ids`` aligned with the
            logits), so word pieces such as "Samp|son" are not swapped (see ``PairMap.map_back``).
        chunk_size: positions processed at a time, bounding the fp32 temporaries.
        counterfactual_suffixes: instead of ``counterfactual_logits``, for ``(B, T, V)`` teacher
            logits: the counterfactual logits of the rows the swap changed, each from the position where
            its context first differs (:class:`CounterfactualSuffix`; a row in at most one). Every
            position no suffix covers is a neutral context (:math:`\tilde p = p`). No ``(B, T, V)``
            counterfactual tensor is ever assembled.

    Returns:
        float32 (float64 for float64 input) log-probabilities, no gradient (the teacher is frozen).
    """
    lead, vocab = teacher_logits.shape[:-1], teacher_logits.shape[-1]
    if counterfactual_suffixes is None:
        # any leading shape: one row of N positions (a full counterfactual tensor is a suffix from 0)
        teacher_logits = teacher_logits.reshape(1, -1, vocab)
        if context_ids is not None and context_ids.numel() == teacher_logits.shape[1]:
            context_ids = context_ids.reshape(1, -1)
        if counterfactual_logits is not None and counterfactual_logits.shape[:-1] == lead:
            counterfactual_logits = counterfactual_logits.reshape(1, -1, vocab)
    target = _RoleReversalRows(
        teacher_logits,
        counterfactual_logits,
        counterfactual_suffixes,
        pair_map,
        mode,
        temperature=temperature,
        scope=scope,
        context_ids=context_ids,
        chunk_size=chunk_size,
        lead=lead,
    )
    n_rows, length = teacher_logits.shape[:2]
    out = torch.empty(n_rows * length, vocab, dtype=target.dtype, device=teacher_logits.device)
    positions = torch.arange(n_rows * length, device=teacher_logits.device)
    with torch.no_grad():
        for group_b, group_t, group in target.groups(positions // length, positions % length):
            for start in range(0, group_b.numel(), chunk_size):
                b, t = group_b[start : start + chunk_size], group_t[start : start + chunk_size]
                out[b * length + t] = target.rows(b, t, group, out.device)
    return out.reshape(*lead, vocab)


def role_reversal_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    pair_map: PairMap,
    mode: str,
    scope: str = "all",
    context_ids: torch.Tensor | None = None,
    counterfactual_logits: torch.Tensor | None = None,
    counterfactual_suffixes: Sequence[CounterfactualSuffix] | None = None,
    temperature: float = 1.0,
    beta: float = 0.0,
    scale_by_temperature_squared: bool = True,
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    r"""KD against the role-reversal target, fused: what

        ``kd_loss(student_logits, role_reversal(teacher_logits, counterfactual_logits, pair_map, mode,
        temperature=..., scope=..., context_ids=..., counterfactual_suffixes=...), mask,
        temperature=..., teacher_is_log_probs=True, ...)``

    computes (value and student gradient, up to float rounding; ``tests/test_fused_kd.py`` holds it to
    that), without the ``(B, T, V)`` float32 target: each chunk of counted positions builds its rows of
    the target from the teacher logits (and the counterfactual logits of the rows the swap changed) and
    feeds them straight to the divergence, so the target is never written to memory and read back.
    Positions the mask drops are never built.

    Args:
        student_logits: ``(B, T, V)`` student logits, as in :func:`kd_loss`.
        teacher_logits: ``(B, T, V)`` raw teacher logits on the original context.
        mask, temperature, beta, scale_by_temperature_squared, num_items_in_batch, chunk_size: as in
            :func:`kd_loss`; ``temperature`` also softens both teacher views, as in :func:`role_reversal`.
        pair_map, mode, scope, context_ids, counterfactual_logits, counterfactual_suffixes: as in
            :func:`role_reversal` (``counterfactual_logits`` ``(B, T, V)`` or ``counterfactual_suffixes``;
            neither: every context is neutral).
    """
    if student_logits.dim() != 3:
        raise ValueError(
            f"student_logits must have shape (batch, seq, vocab), got {tuple(student_logits.shape)}"
        )
    _check_kd_inputs(student_logits, teacher_logits, mask, temperature, beta, chunk_size)
    target = _RoleReversalRows(
        teacher_logits,
        counterfactual_logits,
        counterfactual_suffixes,
        pair_map,
        mode,
        temperature=temperature,
        scope=scope,
        context_ids=context_ids,
        chunk_size=chunk_size,
        lead=teacher_logits.shape[:-1],
    )
    return _chunked_kd(
        student_logits,
        target,
        mask,
        temperature,
        beta,
        scale_by_temperature_squared,
        num_items_in_batch,
        chunk_size,
    )


class _RoleReversalRows(_TeacherRows):
    """Rows of the role-reversal target (log-probabilities), built a chunk of positions at a time
    from ``(B, T, V)`` teacher logits and the counterfactual logits of the rows the swap changed.

    :meth:`groups` splits the positions asked for into the neutral ones (no counterfactual view:
    :math:`\tilde p = p`) and, per :class:`CounterfactualSuffix`, the ones it covers, so that every chunk
    is built one way; :meth:`rows` builds a chunk (:func:`_reversed_rows`)."""

    is_log_probs = True

    def __init__(
        self,
        teacher_logits: torch.Tensor,
        counterfactual_logits: torch.Tensor | None,
        suffixes: Sequence[CounterfactualSuffix] | None,
        pair_map: PairMap,
        mode: str,
        *,
        temperature: float,
        scope: str,
        context_ids: torch.Tensor | None,
        chunk_size: int,
        lead: torch.Size,
    ) -> None:
        _check_role_reversal(
            teacher_logits, counterfactual_logits, pair_map, mode, temperature, scope, chunk_size
        )
        if suffixes is not None and counterfactual_logits is not None:
            raise ValueError("give counterfactual_logits or counterfactual_suffixes, not both")
        if teacher_logits.dim() != 3:
            raise ValueError(
                "counterfactual_suffixes need (batch, seq, vocab) teacher logits, got "
                f"{tuple(teacher_logits.shape)}"
            )
        if counterfactual_logits is not None:  # the whole tensor: every row from position 0
            rows = torch.arange(teacher_logits.shape[0], device=teacher_logits.device)
            suffixes = [CounterfactualSuffix(rows, 0, counterfactual_logits)]
        self.teacher, self.suffixes = (
            teacher_logits.detach(),
            [s._replace(logits=s.logits.detach()) for s in suffixes or ()],
        )
        self.dtype = _compute_dtype(teacher_logits)
        self.mode, self.scope, self.temperature = mode, scope, float(temperature)
        device = teacher_logits.device
        if (
            context_ids is not None
            and context_ids.numel() != teacher_logits.shape[0] * teacher_logits.shape[1]
        ):
            raise ValueError(
                f"context_ids shape {tuple(context_ids.shape)} must be the logits' leading shape "
                f"{tuple(lead)}"
            )
        self.context = (
            None if context_ids is None else context_ids.reshape(teacher_logits.shape[:2]).to(device)
        )
        self.pair_map = pair_map if pair_map.sigma.device == device else pair_map.to(device)
        self.on_gendered = _restricted_to_gendered(self.pair_map)
        # per batch row: the suffix covering it (-1: none), its row in that suffix, its first position
        self.start_of_row, self.suffix_of_row, self.row_in_suffix = _suffix_index(
            teacher_logits, self.suffixes
        )

    def groups(
        self, pos_b: torch.Tensor, pos_t: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor, Any]]:
        if not self.suffixes:
            return [(pos_b, pos_t, None)]
        device = pos_b.device
        start = self.start_of_row.to(device)[pos_b]
        suffix = torch.where(pos_t >= start, self.suffix_of_row.to(device)[pos_b], -1)
        out = []
        for index in range(-1, len(self.suffixes)):
            chosen = (suffix == index).nonzero().squeeze(-1)
            if chosen.numel():
                out.append((pos_b[chosen], pos_t[chosen], None if index < 0 else index))
        return out

    def rows(self, b: torch.Tensor, t: torch.Tensor, group: Any, device: torch.device) -> torch.Tensor:
        where = self.teacher.device
        b, t = b.to(where), t.to(where)
        counterfactual = None
        if group is not None:
            suffix = self.suffixes[group]
            counterfactual = suffix.logits[self.row_in_suffix.to(where)[b], t - suffix.start]
        target = _reversed_rows(
            self.teacher[b, t],
            counterfactual,
            None if self.context is None else self.context[b, t],
            self,
        )
        return target.to(device)


def _reversed_rows(
    teacher: torch.Tensor,
    counterfactual: torch.Tensor | None,
    context: torch.Tensor | None,
    spec: _RoleReversalRows,
) -> torch.Tensor:
    """The role-reversal target (log-probabilities, ``spec.dtype``) of ``(c, V)`` gathered teacher rows
    and, where the context differs, their counterfactual rows (None: a neutral context). Both are
    copies made for this call and are overwritten."""
    gendered = spec.pair_map.gendered_ids
    # log_softmax, not x - logsumexp(x): one fused pass (~2x faster on CPU) and the reference's rounding
    log_p = F.log_softmax(_softened(teacher, spec.temperature, spec.dtype), dim=-1)
    del teacher
    log_p_g = log_p.index_select(-1, gendered)
    p_g = log_p_g.exp()
    log_cf = None
    if counterfactual is None:
        p_cf_g = p_g
    else:
        log_cf = F.log_softmax(_softened(counterfactual, spec.temperature, spec.dtype), dim=-1)
        del counterfactual
        p_cf_g = log_cf.index_select(-1, gendered).exp_()
    q_g = spec.on_gendered.map_back(p_cf_g, p_g, context)
    log_r_g = combine(spec.mode, log_p_g, q_g.log_())
    if log_cf is not None and spec.scope == "all":
        # outside G, q is the counterfactual p itself: combine over the whole vocabulary, renormalise
        combine(spec.mode, log_p, log_cf, out=log_p)
        del log_cf
        log_p.index_copy_(-1, gendered, log_r_g)
        return F.log_softmax(log_p, dim=-1)
    # every token outside G keeps p, so sum r = (1 - sum_G p) + sum_G r: one subtraction normalises
    mass = p_g.sum(-1, keepdim=True)
    log_z = ((1.0 - mass).clamp_min_(0.0) + log_r_g.exp().sum(-1, keepdim=True)).log_()
    log_p.sub_(log_z).index_copy_(-1, gendered, log_r_g.sub_(log_z))
    # 1 - sum_G p loses relative precision as sum_G p nears 1: renormalise those rows exactly
    # (one host sync per chunk; only those rows pay for it)
    uncertain = (mass.squeeze(-1) > 0.5).nonzero().squeeze(-1)
    if uncertain.numel():
        rows = log_p.index_select(0, uncertain)
        log_p.index_copy_(0, uncertain, rows.sub_(torch.logsumexp(rows, dim=-1, keepdim=True)))
    return log_p


def _softened(logits: torch.Tensor, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    """``logits / temperature`` in ``dtype``, in place: ``logits`` is a gathered copy the caller gives up."""
    logits = logits.to(dtype)
    return logits if temperature == 1.0 else logits.div_(temperature)


def _check_role_reversal(
    teacher_logits: torch.Tensor,
    counterfactual_logits: torch.Tensor | None,
    pair_map: PairMap,
    mode: str,
    temperature: float,
    scope: str,
    chunk_size: int,
) -> None:
    if mode not in COMBINE_MODES:
        raise ValueError(f"unknown perturbation mode {mode!r}; use one of {', '.join(COMBINE_MODES)}")
    if scope not in SCOPES:
        raise ValueError(f"unknown perturbation scope {scope!r}; use one of {', '.join(SCOPES)}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    if counterfactual_logits is not None and counterfactual_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"counterfactual_logits {tuple(counterfactual_logits.shape)} must have the teacher logits' "
            f"shape {tuple(teacher_logits.shape)}: the swap keeps sequence lengths"
        )
    vocab = teacher_logits.shape[-1]
    if vocab != pair_map.vocab_size:
        raise ValueError(
            f"teacher vocabulary V={vocab} but the pair map covers {pair_map.vocab_size} tokens; build it "
            "with build_pair_map(tokenizer, vocab_size=teacher.config.vocab_size)"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _suffix_index(
    teacher_logits: torch.Tensor, suffixes: Sequence[CounterfactualSuffix]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per batch row: the first position a suffix covers (T: none), which suffix (-1: none) and the
    row's index inside it. Checks the suffixes' shapes and that no row is in two."""
    n_rows, length, vocab = teacher_logits.shape
    start_of_row = [length] * n_rows
    suffix_of_row, row_in_suffix = [-1] * n_rows, [0] * n_rows
    for index, suffix in enumerate(suffixes):
        rows = suffix.rows.tolist()
        expected = (len(rows), length - suffix.start, vocab)
        if not 0 <= suffix.start <= length or tuple(suffix.logits.shape) != expected:
            raise ValueError(
                f"a counterfactual suffix from position {suffix.start} of {len(rows)} rows must have logits "
                f"of shape {expected} (rows, positions start..{length - 1}, vocab), got "
                f"{tuple(suffix.logits.shape)}"
            )
        for i, row in enumerate(rows):
            if not 0 <= row < n_rows or suffix_of_row[row] >= 0:
                raise ValueError(
                    f"counterfactual suffix row {row}: rows must lie in [0, {n_rows}) and appear in one "
                    "suffix at most"
                )
            start_of_row[row], suffix_of_row[row], row_in_suffix[row] = suffix.start, index, i
    device = teacher_logits.device
    return tuple(torch.tensor(v, device=device) for v in (start_of_row, suffix_of_row, row_in_suffix))


def _restricted_to_gendered(pair_map: PairMap) -> PairMap:
    """``pair_map`` on the vocabulary cut down to its gendered tokens: column j is token
    ``gendered_ids[j]``. Every edge of the swap starts and ends on a gendered token, so ``map_back`` of
    the gendered columns of p̃ and p is exactly q on those columns (q = p̃ on all others). Only the
    fields ``PairMap.map_back`` reads are remapped; ``ends_word`` stays whole, as it is indexed by the
    context's token ids (tests check this against the full ``map_back``)."""
    gendered = pair_map.gendered_ids
    return dataclasses.replace(
        pair_map,
        sigma=torch.arange(gendered.numel(), device=gendered.device),  # map_back reads only its size
        edge_src=torch.searchsorted(gendered, pair_map.edge_src),
        edge_dst=torch.searchsorted(gendered, pair_map.edge_dst),
        source_ids=torch.searchsorted(gendered, pair_map.source_ids),
        starts_word=pair_map.starts_word[gendered],
    )
