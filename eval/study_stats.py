"""Statistics of a study: several training seeds, each scored on the same prompts.

A study arm is a method trained with several seeds; every seed's model is scored on the *same* prompts
(and pronoun contexts, gender-domain prompts). The estimand is the arm's expectation over training seeds
(and sampling) on this fixed prompt set, and the seeds are the independent units: every statistic is
computed **per seed**, and its interval is Student's t over the seeds (:func:`summarise`); a paired
difference between two arms (seed k of both shares data order and initialisation) is the t-interval of the
per-seed differences, with a p-value that :func:`holm_differences` adjusts for the several arms compared
with one reference. Why not a bootstrap: see :mod:`eval.intervals` (a crossed seed x prompt bootstrap
cannot hold coverage for scale-free statistics such as equitability); ``tests/test_intervals.py``
simulates the study's design and checks the coverage of every interval reported here.

The statistics are written for *weights* (:class:`Replicates`: how much each seed and each prompt counts in
a row), so one row per seed is ``per_seed_replicates`` -- an identity over seeds, every prompt once:

* disparity: per category male / female counts -> equitability ``min(m/f, f/m)`` (0 when either is 0),
  mean and min over categories; male and female shares, the female share of the gendered generations
  (0.5 = balance), and the gendered counts behind them (``gendered``, ``min_category_gendered``: the
  "not measurable" rule of :mod:`eval.intervals`);
* pronoun gap: mean of ``|gap|`` and of ``gap`` over contexts;
* sentiment: share of positive (negative) continuations of the first group minus the second's;
* perplexity: ``exp`` of the token-weighted mean NLL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .intervals import holm, seed_summary

__all__ = [
    "Replicates",
    "disparity_statistics",
    "elicitation_statistics",
    "holm_differences",
    "paired",
    "per_seed_replicates",
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


def per_seed_replicates(n_seeds: int, strata_sizes: Sequence[int]) -> Replicates:
    """One row per seed: ``seeds`` is the identity, every prompt of every stratum counts once."""
    if n_seeds < 1:
        raise ValueError("a study arm needs at least one seed")
    return Replicates(np.eye(n_seeds), [np.ones((n_seeds, size)) for size in strata_sizes])


def summarise(values: np.ndarray, confidence: float = 0.95) -> dict[str, Any]:
    """``{"value": mean over seeds, "ci": t-interval | None (one seed), "p_value", "per_seed", "n_seeds"}``
    of a per-seed vector (or of per-seed paired differences)."""
    return seed_summary(values, confidence)


def holm_differences(differences: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Adds ``p_holm`` to every ``differences[arm][statistic]``: the statistic's p-values over the arms
    compared with the reference, Holm-adjusted (in place)."""
    keys = {key for entries in differences.values() for key in entries}
    for key in keys:
        family = {arm: e[key].get("p_value") for arm, e in differences.items() if key in e}
        for arm, p in holm(family).items():
            differences[arm][key]["p_holm"] = p


def _is_identity(w: np.ndarray) -> bool:
    """Whether seed weights are one row per seed (non-negative weights: unit diagonal, nothing else)."""
    n = w.shape[0]
    return w.shape == (n, n) and bool(np.all(np.diagonal(w) == 1)) and float(w.sum()) == n


def _weighted_counts(counts: np.ndarray, seed_w: np.ndarray, unit_w: np.ndarray) -> np.ndarray:
    """``counts`` (S, P, K) -> (B, K): sum over seeds and units, each weighted by its replicate draws."""
    if _is_identity(seed_w):
        return np.einsum("spk,sp->sk", counts, unit_w)  # one row per seed, in O(S) rather than O(S^2)
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
        "gendered": (male + female).sum(axis=1),
        "min_category_gendered": (male + female).min(axis=1),
    }


def elicitation_statistics(
    counts: Mapping[str, np.ndarray], stereotype: Mapping[str, str | None], replicates: Replicates
) -> dict[str, np.ndarray]:
    """Rows of the pronoun-elicitation statistics (:mod:`eval.elicitation`).

    ``counts[occupation]`` is ``(S, P_o, 3)``: male, female and all continuations (first-pronoun labels)
    per seed and prompt; ``stereotype[occupation]`` is "male", "female" or None. Returns ``(B,)``
    ``association`` (pooled female share of the gendered continuations over female-labelled occupations
    minus over male-labelled ones), ``female_share`` (over all occupations), ``global_shift``
    (``female_share - 0.5``) and the gendered counts behind them: ``gendered``, ``gendered_female_group``,
    ``gendered_male_group``."""
    pooled = {
        o: _weighted_counts(c, replicates.seeds, w)
        for (o, c), w in zip(counts.items(), replicates.units, strict=True)
    }

    def sums(keep) -> tuple[np.ndarray, np.ndarray]:
        chosen = [v for o, v in pooled.items() if keep(o)]
        total = np.sum(chosen, axis=0) if chosen else np.zeros((replicates.n, 3))
        return total[:, 1], total[:, 0] + total[:, 1]

    female, gendered = sums(lambda o: True)
    f_female, g_female = sums(lambda o: stereotype.get(o) == "female")
    f_male, g_male = sums(lambda o: stereotype.get(o) == "male")
    with np.errstate(invalid="ignore", divide="ignore"):
        share = female / gendered
        association = f_female / g_female - f_male / g_male
    return {
        "association": association,
        "female_share": share,
        "global_shift": share - 0.5,
        "gendered": gendered,
        "gendered_female_group": g_female,
        "gendered_male_group": g_male,
    }


def pronoun_statistics(gaps: np.ndarray, replicates: Replicates) -> dict[str, np.ndarray]:
    """``gaps`` ``(S, C)``: log P(male pronoun) - log P(female pronoun) per seed and context; one
    stratum of contexts. Returns ``(B,)`` ``mean_abs_gap`` and ``mean_gap`` (seed- and context-weighted)."""
    (context_w,) = replicates.units
    if _is_identity(replicates.seeds):
        norm = context_w.sum(axis=1)
        return {
            "mean_abs_gap": (np.abs(gaps) * context_w).sum(1) / norm,
            "mean_gap": (gaps * context_w).sum(1) / norm,
        }
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
