"""Plain reference implementations: the ground truth the package's fast paths are held to.

Written the obvious way -- whole-vocabulary softmaxes, autograd, full teacher passes -- and never used in
training. Tests and benchmarks import them from here (``from tests.references import ...``); they live
next to the tests, not in the package, as Liger keeps its references.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from counterfactuals import PairMap
from distill.config import DistillationConfig
from distill.losses import _as_item_count, _check_kd_inputs, _check_role_reversal, _compute_dtype

__all__ = ["kd_loss_reference", "reference_teacher_target", "role_reversal_reference"]


def kd_loss_reference(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    beta: float = 0.0,
    scale_by_temperature_squared: bool = True,
    num_items_in_batch: int | torch.Tensor | None = None,
    teacher_is_log_probs: bool = False,
) -> torch.Tensor:
    """Plain, unchunked, full-vocabulary implementation of ``distill.losses.kd_loss`` (same semantics).

    Written the obvious way with ``log_softmax`` / ``F.kl_div`` (mirroring TRL's ``generalized_jsd_loss``)
    and differentiated by autograd. It materialises several ``(B*T, V)`` float32 tensors and keeps them
    alive for backward, so it is meant only as the ground truth that tests and benchmarks check the
    chunked ``kd_loss`` against.
    """
    _check_kd_inputs(student_logits, teacher_logits, mask, temperature, beta, chunk_size=1)
    items = _as_item_count(num_items_in_batch)
    dtype = _compute_dtype(student_logits)

    log_ps = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    teacher = teacher_logits.detach().to(device=student_logits.device, dtype=dtype)
    log_pt = teacher if teacher_is_log_probs else F.log_softmax(teacher / temperature, dim=-1)

    # F.kl_div(input, target, log_target=True) = exp(target) * (target - input) = KL(target || input).
    if beta == 0.0:
        per_position = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(-1)
    elif beta == 1.0:
        per_position = F.kl_div(log_pt, log_ps, reduction="none", log_target=True).sum(-1)
    else:
        log_m = torch.logsumexp(torch.stack([log_ps + math.log(1.0 - beta), log_pt + math.log(beta)]), dim=0)
        kl_teacher = F.kl_div(log_m, log_pt, reduction="none", log_target=True).sum(-1)
        kl_student = F.kl_div(log_m, log_ps, reduction="none", log_target=True).sum(-1)
        per_position = beta * kl_teacher + (1.0 - beta) * kl_student

    if mask is not None:
        counted = mask.to(per_position.device) != 0
        per_position = torch.where(counted, per_position, 0.0)
        count = int(counted.sum())
    else:
        count = per_position.numel()
    normaliser = items if items is not None else float(count)
    if normaliser == 0:
        return per_position.sum() * 0.0
    scale = float(temperature) ** 2 if scale_by_temperature_squared else 1.0
    return per_position.sum() * (scale / normaliser)


def role_reversal_reference(
    teacher_logits: torch.Tensor,
    counterfactual_logits: torch.Tensor | None,
    pair_map: PairMap,
    mode: str,
    *,
    temperature: float = 1.0,
    scope: str = "all",
    context_ids: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Plain implementation of ``distill.losses.role_reversal`` (same semantics): both softmaxes,
    ``map_back`` and the combination over the whole vocabulary at every position, written the obvious
    way. Meant only as the ground truth that tests and benchmarks check ``role_reversal`` (and the fused
    ``role_reversal_kd_loss``) against."""
    _check_role_reversal(
        teacher_logits, counterfactual_logits, pair_map, mode, temperature, scope, chunk_size
    )
    dtype = _compute_dtype(teacher_logits)
    vocab = teacher_logits.shape[-1]
    lead = teacher_logits.shape[:-1]
    teacher = teacher_logits.detach().reshape(-1, vocab)
    counterfactual = (
        None if counterfactual_logits is None else counterfactual_logits.detach().reshape(-1, vocab)
    )
    context = None if context_ids is None else context_ids.reshape(-1).to(teacher.device)
    if pair_map.sigma.device != teacher.device:
        pair_map = pair_map.to(teacher.device)
    gendered = pair_map.gendered_ids
    out = torch.empty(teacher.shape, dtype=dtype, device=teacher.device)
    with torch.no_grad():
        for start in range(0, teacher.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            log_p = F.log_softmax(teacher[rows].to(dtype) / temperature, dim=-1)
            p = log_p.exp()
            p_cf = (
                p
                if counterfactual is None
                else F.softmax(counterfactual[rows].to(dtype) / temperature, dim=-1)
            )
            q = pair_map.map_back(p_cf, p, None if context is None else context[rows])
            if scope == "gendered":
                # only the gendered tokens are combined; everything else keeps the original teacher's p
                log_r = log_p.clone()
                log_r[:, gendered] = _combined_log(mode, p[:, gendered], q[:, gendered], log_p[:, gendered])
            else:
                log_r = _combined_log(mode, p, q, log_p)
            out[rows] = log_r - torch.logsumexp(log_r, dim=-1, keepdim=True)
    return out.reshape(*lead, vocab)


def _combined_log(mode: str, p: torch.Tensor, q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """Unnormalised log of the combined distribution, in probability space (the package's
    ``distill.losses.combine`` works in log space: two ways of writing the rule, held to each other)."""
    if mode == "max":
        return torch.maximum(p, q).log()
    if mode == "mean":
        return ((p + q) * 0.5).log()
    return 0.5 * (log_p + q.log())  # expMean: geometric mean; a token q gives no mass stays at 0


def reference_teacher_target(
    teacher: torch.nn.Module,
    pair_map: PairMap,
    args: DistillationConfig,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    joint: bool = False,
) -> torch.Tensor:
    """The role-reversal KD target computed the plain way: a full teacher pass over the originals and
    over every swapped row (one pass over both when ``joint``, as the trainer did before prefix
    sharing), the counterfactual logits of unchanged rows copied from the originals, and
    :func:`role_reversal_reference`. The ground truth tests and benchmarks hold the trainer's fast paths
    to."""
    with torch.inference_mode():
        swapped_ids, changed = pair_map.swap_ids(input_ids, attention_mask)
        rows = changed.nonzero().squeeze(-1)
        if joint and rows.numel():
            mask = None if attention_mask is None else torch.cat([attention_mask, attention_mask[rows]])
            both = teacher(
                input_ids=torch.cat([input_ids, swapped_ids[rows]]), attention_mask=mask, use_cache=False
            )
            logits, cf = both.logits[: len(input_ids)], both.logits[len(input_ids) :]
        else:
            logits = teacher(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            cf = None
            if rows.numel():
                cf = teacher(
                    input_ids=swapped_ids[rows],
                    attention_mask=None if attention_mask is None else attention_mask[rows],
                    use_cache=False,
                ).logits
        logits = logits[:, :-1]
        counterfactual = logits if cf is None else logits.index_copy(0, rows, cf[:, :-1])
        return role_reversal_reference(
            logits,
            counterfactual,
            pair_map,
            args.perturbation,
            temperature=args.temperature,
            scope=args.perturbation_scope,
            context_ids=input_ids[:, :-1],
            chunk_size=args.kd_chunk_size,
        )
