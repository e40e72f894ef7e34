"""Statistics of a study: several training seeds, each scored on the same prompts.

A study arm is a method trained with several seeds; every seed's model is scored on the *same* prompts
(and pronoun contexts, gender-domain prompts). Its numbers vary for two reasons: the training seed and
which prompts happened to be drawn. The intervals here resample both, crossed: one bootstrap replicate
draws the seeds with replacement *and*, independently, the prompts with replacement (within each
category, so category sizes stay fixed, as in :mod:`eval.disparity`); every drawn prompt brings all
generations of every drawn seed.

A replicate is a pair of weight vectors: how many times each seed was drawn and how many times each
prompt was drawn. Every statistic is a function of weighted counts, so the point estimate is the same
function at weights of one, and a *paired* difference between two arms (same seeds, same prompts) uses
the same replicate for both arms, which cancels the prompt-to-prompt variation they share.

Statistics (all pooled over seeds before the non-linear step, because a single seed of a small study has
few gendered generations per category):

* disparity: per category pooled male / female counts -> equitability ``min(m/f, f/m)`` (0 when either is
  0), then mean and min over categories; pooled male and female shares, and the female share of the
  gendered generations (0.5 = balance);
* pronoun gap: mean of ``|gap|`` and of ``gap`` over seeds x contexts;
* sentiment: share of positive (negative) continuations of the first group minus the second's;
* perplexity: ``exp`` of the token-weighted mean NLL over seeds (seeds are the only resampled unit).

Percentile intervals, as elsewhere in :mod:`eval`; with 3 seeds the seed part of an interval is coarse
(a resample of 3 seeds has only 10 distinct multisets), so reports should also give the per-seed values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Replicates",
    "crossed_replicates",
    "disparity_statistics",
    "interval",
    "paired",
    "perplexity_statistic",
    "pronoun_statistics",
    "sentiment_statistics",
    "summarise",
]


@dataclass(frozen=True)
class Replicates:
    """Bootstrap weights: ``seeds`` is ``(B, S)`` (times each seed was drawn), ``units[g]`` is
    ``(B, P_g)`` for stratum ``g`` (times each prompt of the stratum was drawn). Row 0 of every array
    is all ones: the point estimate."""

    seeds: np.ndarray
    units: list[np.ndarray]

    @property
    def n(self) -> int:
        return self.seeds.shape[0]


def _draw_weights(rng: np.random.Generator, n_bootstrap: int, size: int) -> np.ndarray:
    weights = np.ones((n_bootstrap + 1, size))
    if n_bootstrap and size:
        draws = rng.integers(0, size, size=(n_bootstrap, size))
        weights[1:] = np.stack([np.bincount(row, minlength=size) for row in draws])
    return weights


def crossed_replicates(n_seeds: int, strata_sizes: Sequence[int], n_bootstrap: int, seed: int) -> Replicates:
    """Row 0: all ones; rows 1..n_bootstrap: seeds drawn with replacement, and independently the units
    of every stratum drawn with replacement within the stratum. Deterministic in ``seed``."""
    if n_seeds < 1:
        raise ValueError("a study arm needs at least one seed")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    rng = np.random.default_rng(seed)
    seeds = _draw_weights(rng, n_bootstrap, n_seeds)
    units = [_draw_weights(rng, n_bootstrap, size) for size in strata_sizes]
    return Replicates(seeds, units)


def interval(samples: np.ndarray, confidence: float = 0.95) -> list[float] | None:
    """Percentile interval of the bootstrap rows (row 0, the estimate, excluded); None without any."""
    samples = np.asarray(samples, dtype=np.float64)[1:]
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return None
    alpha = 1.0 - confidence
    lo, hi = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


def summarise(values: np.ndarray, confidence: float = 0.95) -> dict[str, Any]:
    """``{"value": estimate, "ci": [lo, hi] | None}`` from a replicate vector (row 0 = estimate)."""
    return {"value": float(values[0]), "ci": interval(values, confidence)}


def _weighted_counts(counts: np.ndarray, seed_w: np.ndarray, unit_w: np.ndarray) -> np.ndarray:
    """``counts`` (S, P, K) -> (B, K): sum over seeds and units, each weighted by its replicate draws."""
    return np.einsum("bs,spk,bp->bk", seed_w, counts, unit_w)


def _equitability(male: np.ndarray, female: np.ndarray) -> np.ndarray:
    lo, hi = np.minimum(male, female), np.maximum(male, female)
    return np.divide(lo, hi, out=np.zeros(np.broadcast(lo, hi).shape), where=lo > 0)


def disparity_statistics(counts: Mapping[str, np.ndarray], replicates: Replicates) -> dict[str, np.ndarray]:
    """Replicate vectors of the pooled disparity statistics.

    ``counts[category]`` is ``(S, P_c, 3)``: male, female and all generations of each seed on each prompt
    of the category; ``replicates.units`` follows the order of ``counts``. Returns ``(B,)`` arrays
    ``mean_equitability``, ``min_equitability``, ``male``, ``female`` (shares of all generations),
    ``female_of_gendered`` (female / (male + female), pooled over categories) and
    ``(B, C)`` ``equitability`` per category, and ``(B,)`` ``no_gendered``: categories without any
    gendered generation."""
    if len(counts) != len(replicates.units):
        raise ValueError(f"{len(counts)} categories but replicates for {len(replicates.units)} strata")
    pairs = zip(counts.values(), replicates.units, strict=True)
    per_category = [_weighted_counts(c, replicates.seeds, w) for c, w in pairs]
    stacked = np.stack(per_category, axis=1)  # (B, C, 3)
    male, female, total = stacked[..., 0], stacked[..., 1], stacked[..., 2]
    equitability = _equitability(male, female)
    all_generations = total.sum(axis=1)
    return {
        "mean_equitability": equitability.mean(axis=1),
        "min_equitability": equitability.min(axis=1),
        "male": male.sum(axis=1) / all_generations,
        "female": female.sum(axis=1) / all_generations,
        # of the gendered generations, the female share (0.5 = balance): a ratio of sums over every
        # category, so it stays well-behaved where per-category equitability has too few counts
        "female_of_gendered": female.sum(axis=1) / np.maximum(male.sum(axis=1) + female.sum(axis=1), 1e-12),
        "equitability": equitability,
        "no_gendered": (male + female == 0).sum(axis=1).astype(np.float64),
    }


def pronoun_statistics(gaps: np.ndarray, replicates: Replicates) -> dict[str, np.ndarray]:
    """``gaps`` ``(S, C)``: log P(male pronoun) - log P(female pronoun) per seed and context; one
    stratum of contexts. Returns ``(B,)`` ``mean_abs_gap`` and ``mean_gap`` (seed- and context-weighted)."""
    (context_w,) = replicates.units
    norm = replicates.seeds.sum(axis=1) * context_w.sum(axis=1)
    return {
        "mean_abs_gap": np.einsum("bs,sc,bc->b", replicates.seeds, np.abs(gaps), context_w) / norm,
        "mean_gap": np.einsum("bs,sc,bc->b", replicates.seeds, gaps, context_w) / norm,
    }


def sentiment_statistics(counts: Sequence[np.ndarray], replicates: Replicates) -> dict[str, np.ndarray]:
    """``counts`` = [first group, second group], each ``(S, P_g, 3)``: positive, negative and all
    continuations per seed and prompt. Returns ``(B,)`` ``positive_gap`` and ``negative_gap`` (first
    group's share minus the second's), and the groups' shares ``positive_0`` ... ``negative_1``."""
    if len(counts) != 2:
        raise ValueError(f"sentiment gaps compare two groups, got {len(counts)}")
    out: dict[str, np.ndarray] = {}
    shares = []
    for g, (c, w) in enumerate(zip(counts, replicates.units, strict=True)):
        pooled = _weighted_counts(c, replicates.seeds, w)
        shares.append((pooled[:, 0] / pooled[:, 2], pooled[:, 1] / pooled[:, 2]))
        out[f"positive_{g}"], out[f"negative_{g}"] = shares[-1]
    out["positive_gap"] = shares[0][0] - shares[1][0]
    out["negative_gap"] = shares[0][1] - shares[1][1]
    return out


def perplexity_statistic(nll: np.ndarray, tokens: np.ndarray, seed_weights: np.ndarray) -> np.ndarray:
    """``exp`` of the token-weighted mean NLL over (drawn) seeds; ``nll`` and ``tokens`` are ``(S,)``."""
    total = seed_weights @ (nll * tokens)
    return np.exp(total / (seed_weights @ tokens))


def paired(
    statistic: Callable[[Any], dict[str, np.ndarray]], arm: Any, reference: Any
) -> dict[str, np.ndarray]:
    """``statistic(arm) - statistic(reference)`` key by key (same replicates inside ``statistic``)."""
    a, b = statistic(arm), statistic(reference)
    return {key: a[key] - b[key] for key in a}
