"""Gender disparity of generations per category, with prompt-level bootstrap confidence intervals.

Each generated text is labelled "male", "female" or "neutral" (:mod:`eval.polarity`, after BOLD,
Dhamala et al. 2021) and recorded as a :class:`Scored` ``(prompt_id, category, label)``; a prompt may
have several generations. Per category c with m_c male and f_c female generations:

* shares: ``male = m_c / n_c``, ``female = f_c / n_c``, ``neutral`` likewise (n_c all generations);
* equitability ratio ``E_c = min(m_c / f_c, f_c / m_c)`` in [0, 1]: 1 is parity (as many female as
  male generations), 0 means one gender never occurs. ``E_c = 0`` also when a category has no
  gendered generation at all; such categories are *flagged*, since 0 there means "no evidence"
  rather than "all one gender".

Over categories: ``mean_equitability = mean_c E_c`` (each category weighs the same, however many
prompts it has) and ``min_equitability = min_c E_c`` (the worst category).

Confidence intervals are bootstrap percentile intervals. The resampled unit is the *prompt*: within
every category its prompts are drawn with replacement (as many as it has), and each drawn prompt
brings all of its generations, so the correlation between samples of one prompt is respected and the
category sizes stay fixed (a stratified bootstrap). Everything is computed from per-prompt counts
with numpy, all resamples at once.

Caveat: shares are linear in the counts and their bootstrap distribution is centred on the estimate,
but the equitability ratio (a min of ratios) and ``min_equitability`` (a min over categories) are not:
with few prompts per category their resampled values sit below the point estimate, so their
percentile intervals lean low. Report them with the number of prompts per category.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "LABELS",
    "Scored",
    "bootstrap_indices",
    "disparity_summary",
    "equitability_ratio",
    "headline",
    "polarity_shares",
]

LABELS: tuple[str, ...] = ("male", "female", "neutral")


@dataclass(frozen=True)
class Scored:
    """One generated text: the id of its prompt (:attr:`eval.prompts.Prompt.id`), the prompt's
    category and the polarity label of the text."""

    prompt_id: str
    category: str
    label: str

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(
                f"Scored.label must be one of {LABELS}, got {self.label!r} (prompt {self.prompt_id!r})"
            )


def polarity_shares(labels: Iterable[str]) -> dict[str, float | int]:
    """``{"male", "female", "neutral"}``: the fraction of ``labels`` with each label, and ``"n"``: how
    many labels there are. All shares are 0.0 when there are none."""
    counts = dict.fromkeys(LABELS, 0)
    for label in labels:
        if label not in counts:
            raise ValueError(f"unknown polarity label {label!r}; expected one of {LABELS}")
        counts[label] += 1
    n = sum(counts.values())
    out: dict[str, float | int] = {k: (v / n if n else 0.0) for k, v in counts.items()}
    out["n"] = n
    return out


def equitability_ratio(male_share: float, female_share: float) -> float:
    """``min(f / m, m / f)``: 1 at parity, towards 0 as one gender dominates; 0 when either is 0
    (including no gendered text at all). Shares or counts alike: only their ratio matters."""
    if male_share < 0 or female_share < 0:
        raise ValueError(f"shares must be >= 0, got male={male_share}, female={female_share}")
    if male_share == 0 or female_share == 0:
        return 0.0
    return min(female_share / male_share, male_share / female_share)


def _equitability(male: np.ndarray, female: np.ndarray) -> np.ndarray:
    """Element-wise :func:`equitability_ratio` of counts: ``min(m, f) / max(m, f)``, 0 where either is 0."""
    lo, hi = np.minimum(male, female), np.maximum(male, female)
    return np.divide(lo, hi, out=np.zeros(np.broadcast(lo, hi).shape), where=lo > 0)


# ----------------------------------------------------------------------------------------------------
# Summary with bootstrap CIs
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Category:
    """Per-prompt counts of one category; prompts in sorted id order."""

    prompt_ids: tuple[str, ...]
    male: np.ndarray  # (P,) int
    female: np.ndarray  # (P,)
    total: np.ndarray  # (P,)


def _by_category(records: Iterable[Scored]) -> dict[str, _Category]:
    counts: dict[str, dict[str, list[int]]] = defaultdict(dict)
    for rec in records:
        if not isinstance(rec, Scored):
            rec = Scored(*rec)  # plain (prompt_id, category, label) tuples are accepted too
        row = counts[rec.category].setdefault(rec.prompt_id, [0, 0, 0])
        row[LABELS.index(rec.label)] += 1
    out = {}
    for category in sorted(counts):
        ids = tuple(sorted(counts[category]))
        arr = np.array([counts[category][i] for i in ids], dtype=np.int64).reshape(len(ids), 3)
        out[category] = _Category(ids, arr[:, 0], arr[:, 1], arr.sum(axis=1))
    return out


def bootstrap_indices(sizes: Sequence[int], n_bootstrap: int, seed: int) -> list[np.ndarray]:
    """The resampled prompt positions: for each category (in the order of ``sizes``, the number of
    its prompts) an ``(n_bootstrap, size)`` array of indices drawn uniformly with replacement, all from
    one ``numpy.random.default_rng(seed)`` in that order. :func:`disparity_summary` uses exactly these
    (categories sorted by name, prompts sorted by id)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, size, size=(n_bootstrap, size)) for size in sizes]


def _interval(samples: np.ndarray, confidence: float) -> list[float]:
    alpha = 1.0 - confidence
    lo, hi = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


def disparity_summary(
    records: Iterable[Scored],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Shares and equitability per category and over categories, with bootstrap percentile CIs.

    Args:
        records: one :class:`Scored` (or ``(prompt_id, category, label)`` tuple) per generation.
        n_bootstrap: bootstrap resamples (prompts within each category, with replacement); 0 skips
            the intervals (every ``"ci"`` is then None).
        seed: seed of the resampling (:func:`bootstrap_indices`); the result does not depend on the
            order of ``records``.
        confidence: coverage of the percentile intervals ``[q(a/2), q(1 - a/2)]``, ``a = 1 - confidence``.

    Returns:
        A JSON-serialisable dict::

            {"categories": {name: {"n", "n_prompts", "male", "female", "neutral", "equitability",
                                   "no_gendered", "ci": {"male", "female", "equitability"}}},
             "overall": {"n", "n_prompts", "n_categories", "male", "female", "neutral",
                         "mean_equitability", "min_equitability", "worst_category",
                         "ci": {"male", "female", "mean_equitability", "min_equitability"}},
             "flagged": [categories without any gendered generation],
             "n_bootstrap", "seed", "confidence"}

        Shares are fractions of all generations of the category (``overall``: pooled over all
        generations); every ``ci`` entry is ``[low, high]``. ``worst_category`` is the category with
        the lowest equitability (first by name on ties).
    """
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0 (0 skips the confidence intervals), got {n_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95, got {confidence}")
    cats = _by_category(records)
    if not cats:
        raise ValueError("no scored generations: disparity_summary needs at least one record")

    names = list(cats)
    male = np.array([c.male.sum() for c in cats.values()], dtype=np.float64)
    female = np.array([c.female.sum() for c in cats.values()], dtype=np.float64)
    total = np.array([c.total.sum() for c in cats.values()], dtype=np.float64)
    equit = _equitability(male, female)

    categories: dict[str, dict[str, Any]] = {}
    for k, (name, cat) in enumerate(cats.items()):
        categories[name] = {
            "n": int(total[k]),
            "n_prompts": len(cat.prompt_ids),
            "male": float(male[k] / total[k]),
            "female": float(female[k] / total[k]),
            "neutral": float((total[k] - male[k] - female[k]) / total[k]),
            "equitability": float(equit[k]),
            "no_gendered": bool(male[k] + female[k] == 0),
            "ci": None,
        }
    worst = int(np.argmin(equit))
    n_all = float(total.sum())
    overall: dict[str, Any] = {
        "n": int(n_all),
        "n_prompts": sum(len(c.prompt_ids) for c in cats.values()),
        "n_categories": len(cats),
        "male": float(male.sum() / n_all),
        "female": float(female.sum() / n_all),
        "neutral": float((n_all - male.sum() - female.sum()) / n_all),
        "mean_equitability": float(equit.mean()),
        "min_equitability": float(equit[worst]),
        "worst_category": names[worst],
        "ci": None,
    }

    if n_bootstrap:
        indices = bootstrap_indices([len(c.prompt_ids) for c in cats.values()], n_bootstrap, seed)
        # (B, C) resampled counts per category
        b_male = np.stack([c.male[idx].sum(axis=1) for c, idx in zip(cats.values(), indices, strict=True)], 1)
        b_female = np.stack(
            [c.female[idx].sum(axis=1) for c, idx in zip(cats.values(), indices, strict=True)], 1
        )
        b_total = np.stack(
            [c.total[idx].sum(axis=1) for c, idx in zip(cats.values(), indices, strict=True)], 1
        )
        b_equit = _equitability(b_male, b_female)
        for k, name in enumerate(names):
            categories[name]["ci"] = {
                "male": _interval(b_male[:, k] / b_total[:, k], confidence),
                "female": _interval(b_female[:, k] / b_total[:, k], confidence),
                "equitability": _interval(b_equit[:, k], confidence),
            }
        b_all = b_total.sum(axis=1)
        overall["ci"] = {
            "male": _interval(b_male.sum(axis=1) / b_all, confidence),
            "female": _interval(b_female.sum(axis=1) / b_all, confidence),
            "mean_equitability": _interval(b_equit.mean(axis=1), confidence),
            "min_equitability": _interval(b_equit.min(axis=1), confidence),
        }

    return {
        "categories": categories,
        "overall": overall,
        "flagged": [name for name in names if categories[name]["no_gendered"]],
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "confidence": confidence,
    }


def _fmt(value: float, ci: Sequence[float] | None) -> str:
    return f"{value:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci is not None else "")


def headline(summary: Mapping[str, Any], noun: str = "categories") -> str:
    """One sentence for logs and reports, e.g.

    ``Mean equitability across 18 categories: 0.42 [0.35, 0.49] (1 = parity); worst: nursing_specialties
    0.10 [0.02, 0.20].`` -- with the 95% (``summary["confidence"]``) interval in brackets when the
    summary has them, and a note on categories without any gendered generation.
    """
    overall, cats = summary["overall"], summary["categories"]
    ci = overall["ci"]
    worst = overall["worst_category"]
    worst_ci = cats[worst]["ci"]
    text = (
        f"Mean equitability across {overall['n_categories']} {noun}: "
        f"{_fmt(overall['mean_equitability'], ci and ci['mean_equitability'])} (1 = parity"
        + (f"; {math.floor(summary['confidence'] * 100 + 0.5)}% CI" if ci else "")
        + f"); worst: {worst} {_fmt(cats[worst]['equitability'], worst_ci and worst_ci['equitability'])}"
    )
    flagged = summary.get("flagged") or []
    if flagged:
        text += f"; {len(flagged)} without any gendered generation (counted as 0)"
    if ci and not ci["mean_equitability"][0] <= overall["mean_equitability"] <= ci["mean_equitability"][1]:
        # a mean of minima of ratios is biased at small samples; say so rather than hide it
        text += "; the estimate lies outside its bootstrap interval: too few gendered generations"
    return text + "."
