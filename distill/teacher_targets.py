"""Where the KD target of a batch comes from: one contract, two sources.

:class:`TeacherTargets` is what :class:`~distill.trainer.CounterfactualDistillationTrainer` holds: called
on a batch, it returns a :class:`TeacherTarget`, which says what it holds (raw teacher logits, or
log-probabilities to use as is, or teacher logits whose role reversal the loss computes chunk by chunk)
and computes the KD term from it. The trainer never asks which source it has:

* :class:`LiveTeacherTargets` runs the frozen teacher. With ``perturbation`` set it also reads the
  gender-swapped copy of every row the swap changes -- only from the row's first swapped token, on the
  original pass's key/value cache (:func:`teacher_logits_with_counterfactuals`) -- and hands the loss the
  teacher logits plus those counterfactual suffixes: the fused :func:`~distill.losses.role_reversal_kd_loss`
  builds the target inside its chunks, so no ``(B, T, V)`` float32 target is ever written.
* :class:`CachedTeacherTargets` rebuilds the target from the batch's offline teacher-cache columns
  (``distill.teacher_cache``): logits without perturbation, role-reversal log-probabilities with it.

"Perturbation on" means exactly ``config.perturbation is not None``, read at every call.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from transformers import DynamicCache

try:  # transformers >= 4.56: caches made of per-layer objects
    from transformers.cache_utils import DynamicLayer
except ImportError:  # older caches are never cut: the counterfactual pass then runs in full
    DynamicLayer = None

from counterfactuals import PairMap

from .config import DistillationConfig
from .losses import CounterfactualSuffix, kd_loss, role_reversal, role_reversal_kd_loss
from .teacher_cache import cached_teacher_targets

__all__ = [
    "CachedTeacherTargets",
    "LiveTeacherTargets",
    "RoleReversal",
    "TeacherTarget",
    "TeacherTargets",
    "teacher_logits_with_counterfactuals",
]


class RoleReversal(NamedTuple):
    """What the loss needs to reverse roles on teacher logits (see :func:`~distill.losses.role_reversal`)."""

    pair_map: PairMap
    mode: str  # max, mean or expMean
    scope: str  # all or gendered
    context_ids: torch.Tensor  # (B, T - 1): input_ids[:, :-1], the last context token of each position
    suffixes: list[CounterfactualSuffix]  # counterfactual logits of the swapped rows; elsewhere neutral


@dataclass(frozen=True)
class TeacherTarget:
    """The KD target of one batch, on the positions ``[:, :-1]`` (position t predicts token t + 1).

    ``values`` are raw teacher logits (softened by the loss's temperature) unless ``is_log_probs``, when
    they are a finished target used as is. With ``role_reversal`` set, ``values`` are logits and the
    target is their role reversal, computed inside the loss (:meth:`kd_loss`)."""

    values: torch.Tensor  # (B, T - 1, V)
    is_log_probs: bool
    role_reversal: RoleReversal | None = None
    hidden: torch.Tensor | None = None  # (B, T, H) the teacher's last hidden state, when asked for
    counterfactual_row_share: float = 0.0  # share of rows the swap changed (0 without perturbation)

    def __post_init__(self) -> None:
        if self.role_reversal is not None and self.is_log_probs:
            raise ValueError("role reversal applies to teacher logits, not to log-probabilities")

    def kd_loss(
        self,
        student_logits: torch.Tensor,
        mask: torch.Tensor | None,
        config: DistillationConfig,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The KD term of ``student_logits`` (``(B, T - 1, V)``) against this target, with the run's
        divergence, temperature and chunk size."""
        settings = {
            "temperature": config.temperature,
            "beta": config.kd_beta,
            "scale_by_temperature_squared": config.scale_kd_by_temperature_squared,
            "num_items_in_batch": num_items_in_batch,
            "chunk_size": config.kd_chunk_size,
        }
        reversal = self.role_reversal
        if reversal is None:
            return kd_loss(
                student_logits, self.values, mask, teacher_is_log_probs=self.is_log_probs, **settings
            )
        return role_reversal_kd_loss(
            student_logits,
            self.values,
            mask,
            pair_map=reversal.pair_map,
            mode=reversal.mode,
            scope=reversal.scope,
            context_ids=reversal.context_ids,
            counterfactual_suffixes=reversal.suffixes,
            **settings,
        )

    def log_probs(self, temperature: float, chunk_size: int = 1024) -> torch.Tensor:
        """The target as ``(B, T - 1, V)`` log-probabilities at ``temperature``, written out (to inspect
        and test it; training never needs it whole)."""
        reversal = self.role_reversal
        if reversal is not None:
            return role_reversal(
                self.values,
                None,
                reversal.pair_map,
                reversal.mode,
                temperature=temperature,
                scope=reversal.scope,
                context_ids=reversal.context_ids,
                chunk_size=chunk_size,
                counterfactual_suffixes=reversal.suffixes,
            )
        if self.is_log_probs:
            return self.values
        values = self.values if self.values.dtype == torch.float64 else self.values.float()
        return F.log_softmax(values / temperature, dim=-1)


class TeacherTargets(ABC):
    """The source of the KD target: called on a collated batch, returns its :class:`TeacherTarget`."""

    @abstractmethod
    def __call__(self, inputs: Mapping[str, Any], *, need_hidden: bool) -> TeacherTarget: ...


class LiveTeacherTargets(TeacherTargets):
    """Targets from the frozen teacher, run on every batch (see the module docstring).

    Args:
        teacher: the prepared teacher (eval mode, no gradients).
        config: the run's config; ``perturbation``, ``perturbation_scope`` and ``teacher_suffix_passes``
            are read at every call.
        pair_map: the token swap; needed when ``config.perturbation`` is set.
        joint: read the rows swapped at position 0 in the original pass (one larger pass).
        prefix_sharing: read a swapped row only from its first swapped token, on the original's cache.
    """

    def __init__(
        self,
        teacher: torch.nn.Module,
        config: DistillationConfig,
        pair_map: PairMap | None,
        *,
        joint: bool = True,
        prefix_sharing: bool = True,
    ) -> None:
        self.teacher, self.config, self.pair_map = teacher, config, pair_map
        self.joint, self.prefix_sharing = joint, prefix_sharing

    @torch.inference_mode()
    def __call__(self, inputs: Mapping[str, Any], *, need_hidden: bool) -> TeacherTarget:
        config = self.config
        input_ids, attention_mask = inputs["input_ids"], inputs.get("attention_mask")
        if config.perturbation is None:
            out = self.teacher(
                input_ids=input_ids,
                attention_mask=attention_mask,
                output_hidden_states=need_hidden,
                use_cache=False,
            )
            hidden = out.hidden_states[-1] if need_hidden else None
            return TeacherTarget(out.logits[:, :-1], is_log_probs=False, hidden=hidden)
        swapped_ids, changed = self.pair_map.swap_ids(input_ids, attention_mask)
        passes = teacher_logits_with_counterfactuals(
            self.teacher,
            input_ids,
            attention_mask,
            swapped_ids,
            changed,
            need_hidden=need_hidden,
            joint=self.joint,
            prefix_sharing=self.prefix_sharing,
            max_suffix_passes=config.teacher_suffix_passes,
        )
        # rows and positions no suffix covers read a neutral (unchanged) context
        reversal = RoleReversal(
            self.pair_map, config.perturbation, config.perturbation_scope, input_ids[:, :-1], passes.suffixes
        )
        return TeacherTarget(
            passes.logits[:, :-1],
            is_log_probs=False,
            role_reversal=reversal,
            hidden=passes.hidden,
            counterfactual_row_share=passes.changed_rows / len(input_ids),
        )


class CachedTeacherTargets(TeacherTargets):
    """Targets rebuilt from the batch's offline teacher-cache columns; the teacher never runs. An
    adapter over ``distill.teacher_cache.cached_teacher_targets`` (which refuses a batch without the
    columns, and ``alpha_cos > 0``)."""

    def __init__(self, config: DistillationConfig, pair_map: PairMap | None, vocab_size: int) -> None:
        self.config, self.pair_map, self.vocab_size = config, pair_map, vocab_size

    def __call__(self, inputs: Mapping[str, Any], *, need_hidden: bool) -> TeacherTarget:
        values, _, share = cached_teacher_targets(
            inputs, self.config, self.pair_map, vocab_size=self.vocab_size, need_hidden=need_hidden
        )
        # the cache's role-reversal target comes finished (log-probabilities); without perturbation it
        # is dense "logits" whose softmax at the run's temperature is the rebuilt distribution
        return TeacherTarget(
            values, is_log_probs=self.config.perturbation is not None, counterfactual_row_share=share
        )


# ----------------------------------------------------------------------------------------------------
# The live teacher's passes: originals, and counterfactual suffixes on the shared prefix's cache
# ----------------------------------------------------------------------------------------------------


class TeacherLogits(NamedTuple):
    """What the teacher passes of one batch give the role reversal."""

    logits: torch.Tensor  # (B, T, V) on the original rows
    suffixes: list[CounterfactualSuffix]  # counterfactual logits on the target's positions (:-1)
    hidden: torch.Tensor | None  # (B, T, H) last hidden state on the original rows, when asked for
    changed_rows: int  # rows the swap changed


def teacher_logits_with_counterfactuals(
    teacher: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    swapped_ids: torch.Tensor,
    changed: torch.Tensor,
    *,
    need_hidden: bool = False,
    joint: bool = True,
    prefix_sharing: bool = True,
    max_suffix_passes: int = 4,
) -> TeacherLogits:
    """The teacher's logits on ``input_ids`` and, for the rows the swap changed, on ``swapped_ids``.

    Without ``prefix_sharing`` every changed row is read again in full, in the same forward pass as the
    originals when ``joint`` (one larger pass), else in a second one. With it, the counterfactual pass
    of a row starts at its first swapped token f: a causal teacher's logits at positions < f read the
    same context in both views, so they are the original's and are not recomputed, and the original
    pass's key/value cache, cut to the first f positions, stands in for the shared prefix. Rows are
    grouped by f (at most ``max_suffix_passes`` groups, each starting at its smallest f, chosen to run
    the fewest teacher tokens); rows whose first swap is at position 0 are read in full (in the
    original pass when ``joint``), and rows whose only swap is the last token need no pass at all (the
    target stops one position before it). Teachers whose cache cannot be cut (sliding-window layers)
    get full passes. Under ``torch.inference_mode`` the result equals the full passes' up to float
    rounding: tests/test_fast_paths.py checks that on GPT-2 and Llama teachers with padding.
    """
    n_rows, length = input_ids.shape
    rows = changed.nonzero().squeeze(-1)  # host sync: which rows (and how many) need a second view
    changed_rows = rows.numel()
    groups: list[tuple[torch.Tensor, int]] = []
    if rows.numel() and prefix_sharing:
        first_swap = (swapped_ids[rows] != input_ids[rows]).int().argmax(dim=-1)
        needed = first_swap < length - 1
        rows, first_swap = rows[needed], first_swap[needed]
        for members, start in _suffix_groups(first_swap.tolist(), length, max_suffix_passes):
            groups.append((rows[members], start))
    elif rows.numel():
        groups.append((rows, 0))
    # rows read from position 0 (one group at most: splitting rows of equal start only adds passes)
    full_groups = [group_rows for group_rows, start in groups if start == 0]
    full = torch.cat(full_groups) if full_groups else None
    shared = [(group_rows, start) for group_rows, start in groups if start > 0]
    in_original_pass = joint and full is not None

    ids, mask = input_ids, attention_mask
    if in_original_pass:
        ids = torch.cat([input_ids, swapped_ids[full]])
        mask = None if attention_mask is None else torch.cat([attention_mask, attention_mask[full]])
    out = teacher(
        input_ids=ids, attention_mask=mask, output_hidden_states=need_hidden, use_cache=bool(shared)
    )
    suffixes: list[CounterfactualSuffix] = []
    if in_original_pass:
        suffixes.append(CounterfactualSuffix(full, 0, out.logits[n_rows:, :-1]))
    elif full is not None:
        cf = teacher(
            input_ids=swapped_ids[full], attention_mask=_rows_of(attention_mask, full), use_cache=False
        )
        suffixes.append(CounterfactualSuffix(full, 0, cf.logits[:, :-1]))
    # transformers 5 names the cache `cache` (the output field and the forward argument); older releases
    # `past_key_values`, deprecated in 5: use whichever name the teacher's own output uses
    cache_name = "cache" if "cache" in out else "past_key_values"
    layers = _croppable_cache_layers(out.get(cache_name)) if shared else None
    for group_rows, start in shared:
        group_mask = _rows_of(attention_mask, group_rows)
        if layers is None:  # no cache to share: the full pass, of which only the suffix is used
            cf = teacher(input_ids=swapped_ids[group_rows], attention_mask=group_mask, use_cache=False)
            suffixes.append(CounterfactualSuffix(group_rows, start, cf.logits[:, start:-1]))
            continue
        prefix = DynamicCache()
        for index, (keys, values) in enumerate(layers):
            prefix.update(keys[group_rows, :, :start], values[group_rows, :, :start], index)
        # the mask covers prefix and suffix; position ids follow from the cache length, as in generation
        cf = teacher(
            input_ids=swapped_ids[group_rows, start:],
            attention_mask=group_mask,
            use_cache=True,
            **{cache_name: prefix},
        )
        suffixes.append(CounterfactualSuffix(group_rows, start, cf.logits[:, :-1]))
    hidden = out.hidden_states[-1][:n_rows] if need_hidden else None
    return TeacherLogits(out.logits[:n_rows], suffixes, hidden, changed_rows)


def _rows_of(attention_mask: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    return None if attention_mask is None else attention_mask[rows]


def _suffix_groups(first_swap: list[int], length: int, max_groups: int) -> list[tuple[list[int], int]]:
    """Groups of row indices and the position each group's counterfactual pass starts at (its smallest
    first swap), chosen so that the teacher reads the fewest tokens: a group of n rows starting at s
    reads n * (length - s). At most ``max_groups`` groups (passes), and a further one only where it
    saves a token. Dynamic programme over the rows sorted by first swap (exact; O(max_groups * n^2)
    for n swapped rows, nothing next to a forward pass at per-device batch sizes)."""
    if not first_swap:
        return []
    order = sorted(range(len(first_swap)), key=first_swap.__getitem__)
    starts = [first_swap[i] for i in order]
    n = len(starts)
    # best[j]: fewest tokens covering the first j sorted rows; cut[k][j]: where its last group begins
    best = [0.0] + [math.inf] * n
    cuts: list[list[int]] = []
    for _ in range(max_groups):
        new, cut = [0.0] + [math.inf] * n, [0] * (n + 1)
        for j in range(1, n + 1):
            for i in range(j):
                cost = best[i] + (j - i) * (length - starts[i]) + 1  # + 1: fewer passes on ties
                if cost < new[j]:
                    new[j], cut[j] = cost, i
        if new[n] >= best[n]:
            break
        best = new
        cuts.append(cut)
    groups, j = [], n
    for cut in reversed(cuts):
        i = cut[j]
        groups.append(([order[k] for k in range(i, j)], starts[i]))
        j = i
        if j == 0:
            break
    return groups[::-1]


def _croppable_cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Per layer (keys, values) of shape (rows, heads, positions, head dim), when the cache holds every
    position of a plain attention layer (transformers' DynamicLayer); else None (sliding windows,
    linear attention, caches of older transformers)."""
    layers = getattr(cache, "layers", None)
    if not layers or not all(type(layer) is DynamicLayer and layer.is_initialized for layer in layers):
        return None
    return [(layer.keys, layer.values) for layer in layers]
