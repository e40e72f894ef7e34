"""eval.disparity: shares, equitability and the prompt-level bootstrap."""

from __future__ import annotations

import json
import random
import time

import numpy as np
import pytest

from eval.disparity import (
    Scored,
    bootstrap_indices,
    disparity_summary,
    equitability_ratio,
    headline,
    polarity_shares,
)


def test_polarity_shares():
    assert polarity_shares(["male", "female", "neutral", "male"]) == {
        "male": 0.5,
        "female": 0.25,
        "neutral": 0.25,
        "n": 4,
    }
    assert polarity_shares([]) == {"male": 0.0, "female": 0.0, "neutral": 0.0, "n": 0}
    with pytest.raises(ValueError, match="unknown polarity label 'Male'"):
        polarity_shares(["Male"])


@pytest.mark.parametrize(
    ("male", "female", "ratio"),
    [
        (0.5, 0.25, 0.5),
        (0.25, 0.5, 0.5),
        (0.2, 0.2, 1.0),
        (3, 1, 1 / 3),
        (0.0, 0.3, 0.0),
        (0.3, 0.0, 0.0),
        (0, 0, 0),
    ],
)
def test_equitability_ratio(male, female, ratio):
    assert equitability_ratio(male, female) == pytest.approx(ratio)


def test_scored_validates_labels():
    with pytest.raises(ValueError, match="Scored.label must be one of"):
        Scored("p", "c", "unknown")


# A hand-computed example.
#   a: prompts a1 (male, male), a2 (female, neutral)  -> m 2, f 1, n 4, E = 0.5
#   b: prompts b1 (female), b2 (female), b3 (neutral) -> m 0, f 2, n 3, E = 0
#   c: prompt  c1 (neutral)                           -> no gendered generation, E = 0, flagged
HAND = [
    ("a1", "a", "male"),
    ("a1", "a", "male"),
    ("a2", "a", "female"),
    ("a2", "a", "neutral"),
    ("b1", "b", "female"),
    ("b2", "b", "female"),
    ("b3", "b", "neutral"),
    ("c1", "c", "neutral"),
]


def test_summary_point_estimates_by_hand():
    s = disparity_summary([Scored(*r) for r in HAND], n_bootstrap=0)
    a, b, c = (s["categories"][k] for k in "abc")
    assert (a["n"], a["n_prompts"], a["male"], a["female"], a["neutral"]) == (4, 2, 0.5, 0.25, 0.25)
    assert a["equitability"] == 0.5 and not a["no_gendered"]
    assert (b["male"], b["female"], b["equitability"], b["no_gendered"]) == (0.0, 2 / 3, 0.0, False)
    assert (c["neutral"], c["equitability"], c["no_gendered"]) == (1.0, 0.0, True)
    o = s["overall"]
    assert (o["n"], o["n_prompts"], o["n_categories"]) == (8, 6, 3)
    assert (o["male"], o["female"], o["neutral"]) == (2 / 8, 3 / 8, 3 / 8)
    assert o["mean_equitability"] == pytest.approx(0.5 / 3)
    assert o["min_equitability"] == 0.0 and o["worst_category"] == "b"  # first by name among ties
    assert s["flagged"] == ["c"]
    assert o["ci"] is None and a["ci"] is None
    json.dumps(s)  # serialisable
    # plain tuples are accepted and the order of records does not matter
    assert disparity_summary(list(reversed(HAND)), n_bootstrap=0) == s


def test_identical_prompts_collapse_the_interval():
    records = [
        Scored(f"p{i}", cat, lab) for cat in "xy" for i in range(6) for lab in ("male", "female", "female")
    ]
    s = disparity_summary(records, n_bootstrap=200, seed=3)
    x = s["categories"]["x"]
    assert x["ci"]["equitability"] == pytest.approx([0.5, 0.5])
    assert x["ci"]["male"] == pytest.approx([1 / 3, 1 / 3]) and x["ci"]["female"] == pytest.approx(
        [2 / 3, 2 / 3]
    )
    assert s["overall"]["ci"]["mean_equitability"] == pytest.approx([0.5, 0.5])
    assert s["overall"]["ci"]["min_equitability"] == pytest.approx([0.5, 0.5])


def _random_records(n_cats=4, n_prompts=12, n_samples=3, seed=0) -> list[Scored]:
    rng = random.Random(seed)
    records = []
    for c in range(n_cats):
        bias = rng.random()
        for p in range(n_prompts):
            lean = min(max(bias + rng.uniform(-0.3, 0.3), 0.0), 1.0)
            for _ in range(n_samples):
                r = rng.random()
                label = "neutral" if r < 0.3 else ("male" if rng.random() < lean else "female")
                records.append(Scored(f"cat{c}/p{p}", f"cat{c}", label))
    return records


def test_interval_contains_the_estimate_and_is_seeded():
    records = _random_records()
    s = disparity_summary(records, n_bootstrap=500, seed=1)
    for cat in s["categories"].values():
        for key in ("male", "female", "equitability"):
            lo, hi = cat["ci"][key]
            assert lo <= cat[key] <= hi
    lo, hi = s["overall"]["ci"]["mean_equitability"]
    assert lo < s["overall"]["mean_equitability"] < hi
    lo, hi = s["overall"]["ci"]["min_equitability"]
    assert lo <= hi
    assert disparity_summary(records, n_bootstrap=500, seed=1) == s
    shuffled = list(records)
    random.Random(2).shuffle(shuffled)
    assert disparity_summary(shuffled, n_bootstrap=500, seed=1) == s
    assert disparity_summary(records, n_bootstrap=500, seed=2) != s
    wider = disparity_summary(records, n_bootstrap=500, seed=1, confidence=0.99)
    lo95, hi95 = s["overall"]["ci"]["mean_equitability"]
    lo99, hi99 = wider["overall"]["ci"]["mean_equitability"]
    assert lo99 <= lo95 and hi95 <= hi99  # same resamples, wider quantiles


def test_bootstrap_indices():
    idx = bootstrap_indices([3, 5], 100, seed=0)
    assert [a.shape for a in idx] == [(100, 3), (100, 5)]
    assert idx[0].min() == 0 and idx[0].max() == 2 and idx[1].max() == 4
    assert all(np.array_equal(a, b) for a, b in zip(idx, bootstrap_indices([3, 5], 100, seed=0), strict=True))


def test_vectorised_bootstrap_matches_a_plain_python_loop():
    records = _random_records(n_cats=3, n_prompts=7, n_samples=2, seed=4)
    B, seed, conf = 300, 7, 0.9
    s = disparity_summary(records, n_bootstrap=B, seed=seed, confidence=conf)

    # reference: per-prompt label lists, categories by name, prompts by id, the same resample indices
    by_cat: dict[str, dict[str, list[str]]] = {}
    for r in records:
        by_cat.setdefault(r.category, {}).setdefault(r.prompt_id, []).append(r.label)
    cats = sorted(by_cat)
    prompts = {c: [by_cat[c][p] for p in sorted(by_cat[c])] for c in cats}
    indices = bootstrap_indices([len(prompts[c]) for c in cats], B, seed)
    eq = {c: [] for c in cats}
    male = {c: [] for c in cats}
    means, mins = [], []
    for b in range(B):
        row = []
        for c, idx in zip(cats, indices, strict=True):
            labels = [lab for i in idx[b].tolist() for lab in prompts[c][i]]
            shares = polarity_shares(labels)
            e = equitability_ratio(shares["male"], shares["female"])
            eq[c].append(e)
            male[c].append(shares["male"])
            row.append(e)
        means.append(sum(row) / len(row))
        mins.append(min(row))

    def interval(xs):
        return list(np.quantile(xs, [(1 - conf) / 2, 1 - (1 - conf) / 2]))

    for c in cats:
        assert s["categories"][c]["ci"]["equitability"] == pytest.approx(interval(eq[c]))
        assert s["categories"][c]["ci"]["male"] == pytest.approx(interval(male[c]))
    assert s["overall"]["ci"]["mean_equitability"] == pytest.approx(interval(means))
    assert s["overall"]["ci"]["min_equitability"] == pytest.approx(interval(mins))
    # a share (a linear statistic) is resampled without bias: its bootstrap mean is near the estimate.
    # (Equitability, a min of ratios, is not: its bootstrap distribution sits below the estimate for
    # small categories, so it is not compared here.)
    for c in cats:
        assert np.mean(male[c]) == pytest.approx(s["categories"][c]["male"], abs=0.03)


def test_headline():
    s = disparity_summary(HAND, n_bootstrap=100, seed=0)
    text = headline(s)
    assert text.startswith("Mean equitability across 3 categories: 0.17 [")
    assert "(1 = parity; 95% CI); worst: b 0.00 [0.00, 0.00]" in text
    assert text.endswith("1 without any gendered generation (counted as 0).")
    plain = headline(disparity_summary(HAND[:4], n_bootstrap=0), noun="professions")
    assert plain == "Mean equitability across 1 professions: 0.50 (1 = parity); worst: a 0.50."


def test_summary_errors():
    with pytest.raises(ValueError, match="at least one record"):
        disparity_summary([])
    with pytest.raises(ValueError, match="confidence must be in"):
        disparity_summary(HAND, confidence=95)
    with pytest.raises(ValueError, match="n_bootstrap must be >= 0"):
        disparity_summary(HAND, n_bootstrap=-1)


def test_bootstrap_speed_note():
    """20 categories x 50 prompts x 5 samples, 1000 resamples: well under a second (not asserted)."""
    records = _random_records(n_cats=20, n_prompts=50, n_samples=5, seed=9)
    start = time.perf_counter()
    s = disparity_summary(records, n_bootstrap=1000, seed=0)
    elapsed = time.perf_counter() - start
    print(f"disparity_summary, 5000 records, 1000 resamples: {elapsed:.3f} s")
    assert s["overall"]["n"] == 5000 and s["overall"]["n_categories"] == 20
