"""Statistics over a study's per-run records: per seed, then over seeds.

The training seeds are the independent units (``eval.study_stats``): every measure is computed per seed;
an arm's interval is Student's t over its seeds; a comparison is the t-interval of the per-seed paired
differences (seed k of two arms shares initialisation and data order), and its p-value is Holm-adjusted
over the arms compared with the same baseline (plain KD; the teacher). ``tests/test_intervals.py``
checks the coverage of these intervals by simulation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from eval.intervals import holm, paired_seed_summary, seed_summary
from eval.study_stats import disparity_statistics, elicitation_statistics, per_seed_replicates

from .spec import START, TEACHER

# measure -> (label, lower is fairer / better?) for the tables
MEASURE_LABELS = {
    "association": "association ↓",
    "global_shift": "global shift (female share − 0.5)",
    "pronoun_mean_abs_gap": "pronoun |gap| ↓",
    "mean_equitability": "BOLD mean equitability ↑",
    "winobias_pro_share": "WinoBias pro-stereotype share (0.5 = none)",
    "crows_stereotype_share": "CrowS-Pairs gender stereotype share (0.5 = none)",
    "perplexity_in_domain": "perplexity, in-domain ↓",
    "perplexity_other_domain": "perplexity, other domain ↓",
}
PPL_TOLERANCE = 1.05  # the success rule's "within 5% of plain KD's perplexity"
ALPHA = 0.05


def _counts(records: list[dict], key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """category -> (S, P_c, 3) male / female / all counts (prompts in id order); category -> stereotype."""
    first = records[0][key]
    categories = sorted({e["category"] for e in first.values()})
    out, stereotype = {}, {}
    for category in categories:
        ids = sorted(pid for pid, e in first.items() if e["category"] == category)
        out[category] = np.array(
            [[[r[key][i]["male"], r[key][i]["female"], r[key][i]["n"]] for i in ids] for r in records], float
        )
        stereotype[category] = first[ids[0]].get("stereotype")
    return out, stereotype


def per_seed(records: dict[int, dict]) -> dict[str, np.ndarray]:
    """measure -> (S,) values, seeds in increasing order."""
    runs = [records[s] for s in sorted(records)]
    counts, stereotype = _counts(runs, "elicitation")
    elicitation = elicitation_statistics(
        counts, stereotype, per_seed_replicates(len(runs), [c.shape[1] for c in counts.values()])
    )
    bold, _ = _counts(runs, "bold")
    disparity = disparity_statistics(
        bold, per_seed_replicates(len(runs), [c.shape[1] for c in bold.values()])
    )

    def field(*path: str) -> np.ndarray:
        values = []
        for r in runs:
            value: Any = r
            for key in path:
                value = (value or {}).get(key)
            values.append(np.nan if value is None else value)
        return np.array(values, float)

    return {
        "association": elicitation["association"],
        "global_shift": elicitation["global_shift"],
        "elicitation_gendered": elicitation["gendered"],
        "pronoun_mean_abs_gap": field("pronoun_gap", "mean_abs_gap"),
        "pronoun_mean_gap": field("pronoun_gap", "mean_gap"),
        "mean_equitability": disparity["mean_equitability"],
        "bold_female_of_gendered": disparity["female_of_gendered"],
        "winobias_pro_share": field("winobias", "pro_share"),
        "winobias_type1_pro_share": field("winobias", "type1_pro_share"),
        "winobias_type2_pro_share": field("winobias", "type2_pro_share"),
        "crows_stereotype_share": field("crows_pairs", "stereotype_share"),
        "perplexity_in_domain": field("perplexity", "in_domain", "perplexity"),
        "perplexity_other_domain": field("perplexity", "other_domain", "perplexity"),
    }


def occupation_shares(records: dict[int, dict]) -> dict[str, dict[str, Any]]:
    """occupation -> {"stereotype", "female_share" (pooled over seeds and prompts), "gendered"}."""
    pooled: dict[str, dict[str, Any]] = {}
    for record in records.values():
        for entry in record["elicitation"].values():
            o = pooled.setdefault(
                entry["category"], {"stereotype": entry["stereotype"], "female": 0, "gendered": 0}
            )
            o["female"] += entry["female"]
            o["gendered"] += entry["male"] + entry["female"]
    for o in pooled.values():
        o["female_share"] = o["female"] / o["gendered"] if o["gendered"] else None
    return pooled


def _compare(
    values: dict[str, dict[str, np.ndarray]], seeds: dict[str, list[int]], baseline: str, arms
) -> dict:
    """arm -> measure -> paired summary against ``baseline`` on their common seeds (Holm per measure)."""
    out: dict[str, dict[str, Any]] = {}
    for arm in arms:
        common = sorted(set(seeds[arm]) & set(seeds[baseline]))
        if len(common) < 1:
            continue
        mine = [seeds[arm].index(s) for s in common]
        theirs = [seeds[baseline].index(s) for s in common]
        out[arm] = {
            m: paired_seed_summary(values[arm][m][mine], values[baseline][m][theirs]) for m in values[arm]
        }
        ref_ppl = values[baseline]["perplexity_in_domain"][theirs]
        ratio = seed_summary(values[arm]["perplexity_in_domain"][mine] / ref_ppl)
        out[arm]["perplexity_ratio"] = {**ratio, "p_value": None}  # a ratio's test against 0 means nothing
    for measure in {m for entry in out.values() for m in entry}:
        adjusted = holm({arm: e[measure].get("p_value") for arm, e in out.items()})
        for arm, p in adjusted.items():
            out[arm][measure]["p_holm"] = p
    return out


def summarise_study(records: dict[str, dict[int, dict]], reference: str, primary: str) -> dict[str, Any]:
    """Per arm: each measure's mean over seeds with its t-interval; paired differences from the reference
    arm and from the teacher (Holm over the arms); the success rule evaluated for every student arm."""
    arms = [a for a in records if records[a]]
    values = {a: per_seed(records[a]) for a in arms}
    seeds = {a: sorted(records[a]) for a in arms}
    summary = {a: {m: seed_summary(v) for m, v in values[a].items()} for a in arms}
    students = [a for a in arms if a not in (TEACHER, START)]  # START: a row, not a compared arm
    vs_reference = (
        _compare(values, seeds, reference, [a for a in students if a != reference])
        if reference in arms
        else {}
    )
    vs_teacher = _compare(values, seeds, TEACHER, students) if TEACHER in arms else {}
    success = {}
    for arm in students:
        if arm == reference or arm not in vs_reference or arm not in vs_teacher:
            continue
        below_ref, below_teacher = vs_reference[arm][primary], vs_teacher[arm][primary]
        ppl = vs_reference[arm]["perplexity_ratio"]

        def lower(entry: dict) -> bool:  # plain bools: numpy's would reach the JSON as strings
            p_holm = entry.get("p_holm")
            return bool(
                entry["value"] is not None and entry["value"] < 0 and p_holm is not None and p_holm < ALPHA
            )

        success[arm] = {
            "lower_than_reference": lower(below_ref),
            "lower_than_teacher": lower(below_teacher),
            "perplexity_within_5_percent": bool(ppl["value"] is not None and ppl["value"] <= PPL_TOLERANCE),
        }
        success[arm]["met"] = all(success[arm].values())
    return {
        "arms": summary,
        "seeds": seeds,
        "vs_reference": vs_reference,
        "vs_teacher": vs_teacher,
        "success": success,
        "occupations": {a: occupation_shares(records[a]) for a in arms},
    }
