"""Intervals that hold their coverage in the designs we run, and the "not measurable" rule.

Two designs, two estimands, one rule each:

* **One model** (``python -m eval``, the training callback). The model and the prompt set are fixed; the
  only randomness is sampling, and the samples of a prompt are independent draws given the model. The
  estimand is the statistic's value on this prompt set with infinitely many samples. Statistics are ratios
  of sums (a share of gendered outputs, a difference of two such shares), so their standard error comes
  from the linearisation (delta method) ``z_i = (y_i - R g_i) / sum(g)`` of every sample ``i``, with the
  variance estimated *within each prompt* (prompts are strata with their own probabilities):
  ``Var(R) = sum_prompts n_p s_p^2(z)`` (``s_p^2`` with ``n_p - 1``: unbiased). A share's 95% interval is
  Wilson's at the effective sample size ``R(1 - R) / se^2`` (it stays in [0, 1] and behaves near 0 and
  1); a difference is ``estimate +- 1.96 se``. (A bootstrap over prompts would add the prompts'
  heterogeneity, which is not part of this estimand, and over-cover; one over samples within a prompt of
  5 samples under-covers by (n-1)/n.)
* **A study arm** (several training seeds, each scored on the same prompts). The estimand is the arm's
  expectation over training seeds (and sampling) on this fixed prompt set. Seeds are the independent
  units: each seed gives one estimate, and the interval is Student's t over seeds,
  ``mean +- t_{S-1} sd / sqrt(S)``, which is exact for normal per-seed estimates and robust for the means
  of many counts we compute. A paired difference between two arms is the t-interval of the per-seed
  differences (seed k of both arms shares data order and initialisation), with its two-sided p-value.
  Several arms against one reference: p-values adjusted by Holm's step-down method (:func:`holm`).
  (The earlier crossed seed x prompt bootstrap could not hold coverage: equitability is scale-free, so a
  replicate that draws one seed three times scores that seed alone.)

**Not measurable**: an estimate resting on fewer than :data:`MIN_GENDERED` gendered outputs (per seed,
for a study) is reported as "not measurable", not as a number: with fewer than 20, a share's 95% interval
is wider than +-0.2 and a ratio such as min(m/f, f/m) is decided by one or two counts.

``tests/test_intervals.py`` simulates both designs (categories x prompts x samples x seeds) and checks
that every interval reported here covers the truth 92-98% of the time and detects a planted difference.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "MIN_GENDERED",
    "Z_95",
    "difference_of_ratios",
    "holm",
    "paired_seed_summary",
    "ratio",
    "seed_summary",
    "wilson_interval",
]

MIN_GENDERED = 20
Z_95 = 1.959963984540054


def wilson_interval(successes: float, n: float, z: float = Z_95) -> list[float] | None:
    """Wilson's score interval for a binomial proportion (``n`` may be an effective sample size);
    None when ``n`` is 0."""
    if not n > 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _stratified_variance(z: np.ndarray, cells: np.ndarray) -> float:
    """``sum_cells n_c s_c^2(z)``; when some cell has a single sample, the unstratified ``n s^2(z)``
    (which also counts the cells' differences: conservative)."""
    _, inverse, counts = np.unique(cells, return_inverse=True, return_counts=True)
    if z.size < 2:
        return float("nan")
    if counts.min() < 2:
        return float(z.size * z.var(ddof=1))
    sums = np.bincount(inverse, weights=z)
    squares = np.bincount(inverse, weights=z * z)
    within = (squares - sums**2 / counts) / (counts - 1)  # s_c^2 per cell
    return float((counts * within).sum())


def ratio(num: np.ndarray, den: np.ndarray, cells: np.ndarray) -> dict[str, Any]:
    """``R = sum(num) / sum(den)`` over samples (``num``, ``den`` per sample, ``cells`` their prompt) with
    its delta-method standard error and Wilson interval at the effective sample size; ``n`` = sum(den).
    ``value`` and ``ci`` are None when ``sum(den)`` is 0."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    total = den.sum()
    if total == 0:
        return {"value": None, "se": None, "ci": None, "n": 0}
    r = num.sum() / total
    se = math.sqrt(_stratified_variance((num - r * den) / total, np.asarray(cells)))
    n_eff = r * (1 - r) / se**2 if se > 0 else total
    return {"value": float(r), "se": se, "ci": wilson_interval(r * n_eff, n_eff), "n": int(total)}


def difference_of_ratios(
    num: np.ndarray, den: np.ndarray, cells: np.ndarray, group: np.ndarray
) -> dict[str, Any]:
    """``R_1 - R_2`` with ``R_g = sum(num[group == g]) / sum(den[group == g])`` (``group`` is 1, 2 or 0 for
    samples in neither), its delta-method standard error and ``value +- 1.96 se``; ``n`` = the smaller
    group's sum(den). None values when a group has no denominator."""
    num, den, group = (np.asarray(a, dtype=np.float64) for a in (num, den, group))
    totals = [den[group == g].sum() for g in (1, 2)]
    if min(totals) == 0:
        return {"value": None, "se": None, "ci": None, "n": int(min(totals))}
    r = [num[group == g].sum() / totals[g - 1] for g in (1, 2)]
    z = np.zeros_like(num)
    for g, sign in ((1, 1.0), (2, -1.0)):
        mask = group == g
        z[mask] = sign * (num[mask] - r[g - 1] * den[mask]) / totals[g - 1]
    se = math.sqrt(_stratified_variance(z, np.asarray(cells)))
    value = r[0] - r[1]
    return {
        "value": float(value),
        "se": se,
        "ci": [value - Z_95 * se, value + Z_95 * se],
        "n": int(min(totals)),
    }


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (Numerical Recipes, 6.4)."""
    qab, qap, qam, c, d = a + b, a + 1.0, a - 1.0, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
    h = d
    for m in range(1, 300):
        for aa in (m * (b - m) * x / ((qam + 2 * m) * (a + 2 * m)),
                   -(a + m) * (qab + m) * x / ((a + 2 * m) * (qap + 2 * m))):  # fmt: skip
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
            c = 1.0 + aa / c if abs(1.0 + aa / c) > 1e-300 else 1e-300
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def t_sf(t: float, df: int) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom (``t >= 0``): I_x(df/2, 1/2) / 2."""
    if t <= 0 or t * t / (df + t * t) == 0.0:
        return 0.5
    x = df / (df + t * t)
    a, b = df / 2.0, 0.5
    front = math.exp(
        math.lgamma(a + b)
        - math.lgamma(a)
        - math.lgamma(b)
        + a * math.log(x)
        + b * math.log(t * t / (df + t * t))
    )
    ibeta = (
        front * _betacf(a, b, x) / a if x < (a + 1) / (a + b + 2) else 1 - front * _betacf(b, a, 1 - x) / b
    )
    return 0.5 * ibeta


@functools.lru_cache(maxsize=256)
def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile (q > 0.5) of Student's t, by bisection on :func:`t_sf`."""
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_sf(mid, df) > 1 - q else (lo, mid)
    return (lo + hi) / 2


def seed_summary(per_seed: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean over seeds and Student's t interval (``S - 1`` degrees of freedom); ``ci`` None for one seed
    or a non-finite value; ``p_value`` tests mean 0 (two-sided), for paired differences."""
    values = np.asarray(per_seed, dtype=np.float64)
    out: dict[str, Any] = {
        "value": float(values.mean()) if values.size else None,
        "ci": None,
        "p_value": None,
        "per_seed": [float(v) for v in values],
        "n_seeds": int(values.size),
    }
    if values.size < 2 or not np.all(np.isfinite(values)):
        return out
    se = values.std(ddof=1) / math.sqrt(values.size)
    t = t_quantile(0.5 + confidence / 2, values.size - 1)
    out["ci"] = [float(values.mean() - t * se), float(values.mean() + t * se)]
    if se > 0:
        out["p_value"] = 2 * t_sf(abs(values.mean()) / se, values.size - 1)
    else:
        out["p_value"] = 1.0 if values.mean() == 0 else 0.0
    return out


def paired_seed_summary(arm: Sequence[float], reference: Sequence[float], confidence: float = 0.95):
    """:func:`seed_summary` of the per-seed differences ``arm - reference`` (same seeds, same order)."""
    a, b = np.asarray(arm, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired differences need the same seeds: {a.size} values against {b.size}")
    return seed_summary(a - b, confidence)


def holm(p_values: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjustment of a family of p-values (None entries stay None and are not counted):
    the k-th smallest of m is multiplied by ``m - k + 1``, made monotone and capped at 1."""
    known = sorted(((p, k) for k, p in p_values.items() if p is not None), key=lambda item: item[0])
    m, running, out = len(known), 0.0, dict.fromkeys(p_values)
    for rank, (p, key) in enumerate(known):
        running = max(running, min(1.0, (m - rank) * p))
        out[key] = running
    return out
