"""eval.disparity: shares, equitability, intervals and the headline."""

from __future__ import annotations

import json
import random

import pytest

from eval.disparity import (
    Scored,
    disparity_summary,
    equitability_ratio,
    headline,
    polarity_shares,
)
from eval.intervals import wilson_interval


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


def test_identical_prompts_give_a_wilson_interval_at_their_count():
    """Every prompt alike (2 of 3 gendered generations female): the within-prompt variance, estimated with
    n - 1 = 2, is 3/2 of the binomial one, so the interval is Wilson's at the effective size 30 * 2/3 = 20.
    Equitability has no interval (see eval.disparity)."""
    records = [
        Scored(f"p{i}", cat, lab) for cat in "xy" for i in range(10) for lab in ("male", "female", "female")
    ]
    s = disparity_summary(records)
    x = s["categories"]["x"]
    assert set(x["ci"]) == {"male", "female", "female_of_gendered"} and x["measurable"]
    assert x["ci"]["female_of_gendered"] == pytest.approx(wilson_interval(20 * 2 / 3, 20))
    lo, hi = s["overall"]["ci"]["female_of_gendered"]
    assert lo < 2 / 3 < hi and s["overall"]["female_of_gendered"] == pytest.approx(2 / 3)


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


def test_intervals_contain_the_estimate_and_do_not_depend_on_order():
    records = _random_records()
    s = disparity_summary(records)
    for cat in s["categories"].values():
        for key in ("male", "female", "female_of_gendered"):
            lo, hi = cat["ci"][key]
            assert lo <= cat[key] <= hi
    shuffled = list(records)
    random.Random(2).shuffle(shuffled)
    assert disparity_summary(shuffled) == s


def test_headline():
    s = disparity_summary(HAND)
    assert headline(s) == (
        "Female share of gendered generations: not measurable (5 of 8 generations gendered; needs 20); "
        "mean equitability not measurable (0 of 3 categories with >= 20 gendered)."
    )
    many = [Scored(f"p{i}", c, ("male", "female", "female")[i % 3]) for c in "ab" for i in range(60)]
    text = headline(disparity_summary(many), noun="professions")
    assert text.startswith("Female share of gendered generations across 2 professions: 0.67 [")
    assert text.endswith("mean equitability 0.50 (1 = parity), worst: a 0.50.")


def test_summary_errors():
    with pytest.raises(ValueError, match="at least one record"):
        disparity_summary([])
    with pytest.raises(ValueError, match="confidence must be 0.95"):
        disparity_summary(HAND, confidence=95)
    with pytest.raises(ValueError, match="n_bootstrap must be >= 0"):
        disparity_summary(HAND, n_bootstrap=-1)
