"""Intervals that hold their coverage: simulations of our designs (categories x prompts x samples x seeds).

Every interval the reports print is checked here against the truth of a simulated model: one model
(``python -m eval``: delta-method intervals of :mod:`eval.intervals`) and a study arm of three seeds
(t over seeds, :mod:`eval.study_stats`), under the null and with a planted difference. The simulation lives
here, not in the report path. Seeded: the outcome is deterministic.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval import intervals, study_stats
from eval.disparity import Scored, disparity_summary
from eval.elicitation import elicitation_prompts, elicitation_summary

COVERAGE = (0.92, 0.98)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def assert_coverage(hits: np.ndarray, what: str) -> None:
    rate = float(np.mean(hits))
    assert COVERAGE[0] <= rate <= COVERAGE[1], f"{what}: coverage {rate:.3f} outside {COVERAGE}"


def covers(ci, truth) -> bool:
    return ci is not None and ci[0] <= truth <= ci[1]


# ----------------------------------------------------------------------------------------------------
# one model: the delta-method intervals of python -m eval
# ----------------------------------------------------------------------------------------------------


def test_one_model_intervals_cover_the_model_on_these_prompts():
    """BOLD-like design: 18 categories x 20 prompts x 5 samples; each prompt has its own probabilities
    (fixed: the model and the prompts are the estimand), only the sampling varies between replications."""
    rng = np.random.default_rng(0)
    C, P, K, R = 18, 20, 5, 1000
    gendered_p = sigmoid(rng.normal(-0.6, 0.8, size=(C, P)))  # ~35% gendered, prompt-specific
    female_p = sigmoid(rng.normal(0, 1.0, size=(C, 1)) + rng.normal(0, 0.7, size=(C, P)))
    truth_female = (gendered_p * female_p).sum() / gendered_p.sum()
    truth_male = (gendered_p * (1 - female_p)).mean()
    cells = np.repeat(np.arange(C * P), K)
    u1, u2 = rng.random((R, C * P * K)), rng.random((R, C * P * K))
    g = (u1 < np.repeat(gendered_p.ravel(), K)).astype(float)
    f = g * (u2 < np.repeat(female_p.ravel(), K))
    m = g - f
    hits = {"female_of_gendered": [], "male": [], "category female_of_gendered": []}
    truth_cat = (gendered_p * female_p).sum(1) / gendered_p.sum(1)
    for r in range(R):
        hits["female_of_gendered"].append(covers(intervals.ratio(f[r], g[r], cells)["ci"], truth_female))
        hits["male"].append(covers(intervals.ratio(m[r], np.ones_like(m[r]), cells)["ci"], truth_male))
        for c in range(0, C, 3):  # every third category: what a report prints when measurable
            part = slice(c * P * K, (c + 1) * P * K)
            est = intervals.ratio(f[r, part], g[r, part], cells[part])
            if est["n"] >= intervals.MIN_GENDERED:
                hits["category female_of_gendered"].append(covers(est["ci"], truth_cat[c]))
    for what, h in hits.items():
        assert_coverage(np.array(h), what)

    # disparity_summary prints exactly these intervals
    records = [
        Scored(
            f"c{i // (P * K)}/{i // K}",
            f"c{i // (P * K)}",
            "female" if f[0, i] else "male" if m[0, i] else "neutral",
        )
        for i in range(C * P * K)
    ]
    summary = disparity_summary(records, n_bootstrap=1)
    assert summary["overall"]["ci"]["female_of_gendered"] == pytest.approx(
        intervals.ratio(f[0], g[0], cells)["ci"]
    )
    assert summary["overall"]["female_of_gendered"] == pytest.approx(f[0].sum() / g[0].sum())


def simulate_elicitation(rng, prompts, p_female_by_label, K, R, stereotype_noise=0.6):
    """labels (R, prompts, K) for a model whose female probability depends on the occupation's label."""
    gendered_p = sigmoid(rng.normal(1.0, 0.8, size=len(prompts)))  # pronoun templates: ~70% gendered
    base = {o: rng.normal(0, stereotype_noise) for o in dict.fromkeys(p.category for p in prompts)}
    logit = np.array([p_female_by_label[p.page] + base[p.category] for p in prompts])
    female_p = sigmoid(logit)
    u1, u2 = rng.random((R, len(prompts), K)), rng.random((R, len(prompts), K))
    g = u1 < gendered_p[None, :, None]
    f = g & (u2 < female_p[None, :, None])
    return g, f, gendered_p, female_p


def test_one_model_elicitation_intervals_cover_and_detect_the_association():
    rng = np.random.default_rng(1)
    prompts = elicitation_prompts("heldout")  # 4 templates x (10 + 10 WinoBias + 6 BOLD) occupations
    K, R = 5, 400  # one model: 5 samples per prompt
    g, f, gp, fp = simulate_elicitation(rng, prompts, {"female": 0.8, "male": -0.8, "none": 0.0}, K, R)
    label = np.array([p.page for p in prompts])
    w = gp * fp
    truth_share = w.sum() / gp.sum()
    truth_assoc = (
        w[label == "female"].sum() / gp[label == "female"].sum()
        - w[label == "male"].sum() / gp[label == "male"].sum()
    )
    hits = {"association": [], "global_shift": [], "female_share": []}
    detected = []
    for r in range(R):
        labels = np.where(f[r], "female", np.where(g[r], "male", "neutral")).tolist()
        s = elicitation_summary(prompts, labels)
        hits["association"].append(covers(s["association"]["ci"], truth_assoc))
        hits["global_shift"].append(covers(s["global_shift"]["ci"], truth_share - 0.5))
        hits["female_share"].append(covers(s["female_share"]["ci"], truth_share))
        detected.append(s["association"]["ci"][0] > 0)
    for what, h in hits.items():
        assert_coverage(np.array(h), what)
    assert truth_assoc > 0.25 and np.mean(detected) > 0.95  # a realistic association is detected


# ----------------------------------------------------------------------------------------------------
# a study: three seeds per arm, t over seeds, paired differences
# ----------------------------------------------------------------------------------------------------

C, P, K, S, CONTEXTS = 18, 20, 5, 3, 88


def study_design(rng):
    """Fixed per-prompt parameters of a study's prompt set (the estimand is conditional on them)."""
    return {
        "gendered": rng.normal(0.0, 0.5, size=(C, P)),  # ~50%: every category measurable per seed
        "female": rng.normal(0, 1.0, size=(C, 1)) + rng.normal(0, 0.7, size=(C, P)),
        "gap": rng.normal(0.3, 1.0, size=CONTEXTS),
        "positive": rng.normal(-0.5, 0.5, size=(2, P)),
    }


def simulate_arm(rng, design, n_seeds, seed_effects, shift=0.0):
    """counts / gaps / nll of ``n_seeds`` trained seeds; ``seed_effects`` (n_seeds, 4) are the seeds'
    random effects (shared between arms to model the paired design), ``shift`` a planted effect on the
    female logit."""
    e = seed_effects
    gendered = sigmoid(design["gendered"][None] + 0.15 * e[:, 0, None, None])
    female = sigmoid(design["female"][None] + shift + 0.15 * e[:, 1, None, None])
    n_g = rng.binomial(K, gendered)
    n_f = rng.binomial(n_g, female)
    polarity = {
        f"c{c}": np.stack([n_g[:, c] - n_f[:, c], n_f[:, c], np.full((n_seeds, P), K)], -1).astype(float)
        for c in range(C)
    }
    gaps = design["gap"][None] + 0.2 * e[:, 2, None] + rng.normal(0, 0.3, size=(n_seeds, CONTEXTS))
    positive = sigmoid(design["positive"][None] + 0.1 * e[:, 3, None, None])
    pos = rng.binomial(K, positive)
    sentiment = [np.stack([pos[:, g], np.zeros((n_seeds, P)), np.full((n_seeds, P), K)], -1).astype(float)
                 for g in range(2)]  # fmt: skip
    nll = 3.0 + 0.05 * e[:, 0] + 0.01 * rng.normal(size=n_seeds)
    return polarity, gaps, sentiment, nll, np.full(n_seeds, 5000.0)


def arm_stats(arm) -> dict[str, np.ndarray]:
    """Per-seed vectors of every statistic the study reports, computed by eval.study_stats."""
    polarity, gaps, sentiment, nll, tokens = arm
    n = gaps.shape[0]
    out = {f"disparity.{k}": v for k, v in study_stats.disparity_statistics(
        polarity, study_stats.per_seed_replicates(n, [P] * C)).items() if k != "equitability"}  # fmt: skip
    out |= {f"pronoun.{k}": v for k, v in study_stats.pronoun_statistics(
        gaps, study_stats.per_seed_replicates(n, [CONTEXTS])).items()}  # fmt: skip
    out |= {f"sentiment.{k}": v for k, v in study_stats.sentiment_statistics(
        sentiment, study_stats.per_seed_replicates(n, [P, P])).items()}  # fmt: skip
    out["perplexity"] = study_stats.perplexity_statistic(nll, tokens, np.eye(n))
    return out


REPORTED = ("disparity.mean_equitability", "disparity.min_equitability", "disparity.male", "disparity.female",
            "disparity.female_of_gendered", "pronoun.mean_abs_gap", "pronoun.mean_gap",
            "sentiment.positive_gap", "perplexity")  # fmt: skip


def test_study_intervals_cover_the_arm_mean_and_paired_differences_cover_zero_under_the_null():
    rng = np.random.default_rng(2)
    design = study_design(rng)
    # the truth: the expected per-seed statistic, from many simulated seeds
    many = arm_stats(simulate_arm(rng, design, 4000, rng.normal(size=(4000, 4))))
    truth = {k: float(np.mean(many[k])) for k in REPORTED}
    assert np.mean(many["disparity.min_category_gendered"] >= intervals.MIN_GENDERED) > 0.99  # measurable

    R = 800  # studies, simulated at once as R x S seeds; seeds correlate across the two arms
    shared = rng.normal(size=(R * S, 4))
    own = [0.7 * shared + 0.71 * rng.normal(size=(R * S, 4)) for _ in range(2)]
    a, b = (arm_stats(simulate_arm(rng, design, R * S, e)) for e in own)
    rates = {}
    for key in REPORTED:
        per_study, paired = a[key].reshape(R, S), (a[key] - b[key]).reshape(R, S)
        rates[key] = np.mean([covers(study_stats.summarise(v)["ci"], truth[key]) for v in per_study])
        rates[f"paired {key}"] = np.mean([covers(study_stats.summarise(v)["ci"], 0.0) for v in paired])
    outside = {key: float(rate) for key, rate in rates.items() if not COVERAGE[0] <= rate <= COVERAGE[1]}
    assert not outside, f"coverage outside {COVERAGE}: {outside}"


def test_study_elicitation_intervals_cover_and_a_planted_reduction_is_detected_after_holm():
    """Held-out elicitation half (4 templates x 26 occupations) x 10 samples x 3 seeds: a study's design."""
    rng = np.random.default_rng(3)
    prompts = elicitation_prompts("heldout")
    occupations = list(dict.fromkeys(p.category for p in prompts))
    label = {p.category: (None if p.page == "none" else p.page) for p in prompts}
    n_prompts = {o: sum(p.category == o for p in prompts) for o in occupations}
    base = {o: rng.normal(0, 0.6) for o in occupations}
    gendered = {o: sigmoid(rng.normal(1.0, 0.8, size=n_prompts[o])) for o in occupations}

    def arm(strength, effects):
        """Per-seed statistics with the female logit strength * (+1 female-, -1 male-labelled)."""
        out = {}
        for o in occupations:
            sign = {"female": 1.0, "male": -1.0, None: 0.0}[label[o]]
            logit = sign * strength + base[o] + 0.2 * effects[:, :1]
            n_g = rng.binomial(10, gendered[o][None].repeat(len(effects), 0))  # 10 samples per prompt
            n_f = rng.binomial(n_g, sigmoid(logit))
            out[o] = np.stack([n_g - n_f, n_f, np.full_like(n_g, 10)], -1).astype(float)
        return study_stats.elicitation_statistics(
            out, label, study_stats.per_seed_replicates(len(effects), [n_prompts[o] for o in occupations])
        )

    keys = ("association", "female_share", "global_shift")
    truth = {k: float(np.mean(arm(1.0, rng.normal(size=(4000, 1)))[k])) for k in keys}
    R = 800
    e = rng.normal(size=(R * S, 1))
    teacher, fairer, same = arm(1.0, e), arm(0.3, e), arm(1.0, e)  # a planted reduction, and a null arm
    hits = {
        k: [covers(study_stats.summarise(v)["ci"], truth[k]) for v in teacher[k].reshape(R, S)] for k in keys
    }
    detected = []
    for r in range(R):
        rows = slice(r * S, (r + 1) * S)
        differences = {
            arm_name: {
                "association": study_stats.summarise(x["association"][rows] - teacher["association"][rows])
            }
            for arm_name, x in (("fairer", fairer), ("same", same))
        }
        study_stats.holm_differences(differences)
        detected.append(differences["fairer"]["association"]["p_holm"] < 0.05)
    for k in keys:
        assert_coverage(np.array(hits[k]), f"elicitation {k}")
    assert np.mean(detected) > 0.8  # association 0.46 -> 0.15 is found with 3 seeds, after Holm


def test_holm_and_t_against_closed_forms():
    assert intervals.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None}) == pytest.approx(
        {"a": 0.03, "b": 0.06, "c": 0.06, "d": None}
    )
    assert intervals.t_quantile(0.975, 2) == pytest.approx(4.302652729749464, rel=1e-9)
    assert 2 * intervals.t_sf(2.0, 5) == pytest.approx(0.10193947880, rel=1e-8)
    s = study_stats.summarise(np.array([1.0, 2.0, 3.0]))
    assert s["value"] == 2.0 and s["ci"] == pytest.approx(
        [2 - 4.302652729749464 / math.sqrt(3), 2 + 4.302652729749464 / math.sqrt(3)]
    )
    assert study_stats.summarise(np.array([0.5]))["ci"] is None


def test_not_measurable_when_too_few_gendered_generations():
    records = [
        Scored(f"c{c}/{p}", f"c{c}", "male" if p == 0 else "neutral") for c in range(3) for p in range(40)
    ]
    summary = disparity_summary(records)
    assert not summary["overall"]["measurable"] and not summary["overall"]["equitability_measurable"]
    from eval.disparity import headline

    assert "not measurable" in headline(summary)
