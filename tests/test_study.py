"""The study: crossed seed x prompt bootstrap statistics (against plain loops and eval.disparity), the
study's statistics against eval.elicitation and its success rule, the study recipe's validation, and the
whole matrix end to end at tiny scale (shared healing run, teacher cache, resume, --report-only)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from distill.recipe import parse_config
from eval import study_stats
from eval.disparity import Scored, disparity_summary
from eval.elicitation import elicitation_summary
from eval.prompts import Prompt
from fairdistill.errors import UserError
from fairdistill.study import StudyError, load_spec
from fairdistill.study.cli import main as study_main
from fairdistill.study.runner import Study
from fairdistill.study.stats import per_seed, summarise_study
from tests.assets import gpt2_tokenizer, tiny_gpt2

REPO = Path(__file__).resolve().parents[1]
ARMS = "train_recipe: recipes/tiny.yaml\narms: {{plain_kd: {{}}, {}: {{}}}}\n"

PLACEBO = REPO / "recipes" / "data" / "placebo_pairs.tsv"
METHOD_KEYS = {"perturbation", "perturbation_scope", "cda", "lexicon", "swap_names", "alpha_kd", "alpha_clm"}


# ----------------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------------


def random_counts(rng, n_seeds=3, sizes=(4, 2, 5, 1), samples=3):
    """category -> (S, P, 3) male / female / all counts of `samples` generations per prompt."""
    out = {}
    for c, size in enumerate(sizes):
        labels = rng.integers(0, 3, size=(n_seeds, size, samples))  # 0 male, 1 female, 2 neutral
        if c == 3:
            labels[:] = 2  # a category without any gendered generation
        out[f"cat{c}"] = np.stack(
            [(labels == 0).sum(-1), (labels == 1).sum(-1), np.full((n_seeds, size), samples)], -1
        ).astype(float)
    return out


def test_per_seed_replicates_are_one_row_per_seed():
    reps = study_stats.per_seed_replicates(3, [4, 2])
    assert reps.n == 3 and np.array_equal(reps.seeds, np.eye(3))
    assert [u.shape for u in reps.units] == [(3, 4), (3, 2)] and all(np.all(u == 1) for u in reps.units)


def test_pooled_point_estimate_matches_eval_disparity():
    rng = np.random.default_rng(1)
    counts = random_counts(rng)
    pooled = study_stats.Replicates(np.ones((1, 3)), [np.ones((1, c.shape[1])) for c in counts.values()])
    stats = study_stats.disparity_statistics(counts, pooled)
    records = []  # the same generations as Scored records, seeds pooled
    for category, c in counts.items():
        for s in range(c.shape[0]):
            for p in range(c.shape[1]):
                male, female, total = (int(x) for x in c[s, p])
                labels = ["male"] * male + ["female"] * female + ["neutral"] * (total - male - female)
                records += [Scored(f"{category}/{p}", category, label) for label in labels]
    summary = disparity_summary(records, n_bootstrap=0)
    overall = summary["overall"]
    assert stats["no_gendered"][0] == len(summary["flagged"])
    assert math.isclose(stats["mean_equitability"][0], overall["mean_equitability"], abs_tol=1e-12)
    assert math.isclose(stats["min_equitability"][0], overall["min_equitability"], abs_tol=1e-12)
    assert math.isclose(stats["male"][0], overall["male"]) and math.isclose(
        stats["female"][0], overall["female"]
    )


def test_every_replicate_matches_a_plain_loop_over_the_drawn_seeds_and_prompts():
    rng = np.random.default_rng(2)
    counts = random_counts(rng)
    gaps = rng.normal(size=(3, 7))
    draw = np.random.default_rng(3)
    seeds = draw.integers(0, 3, size=3)
    prompts = [draw.integers(0, c.shape[1], size=c.shape[1]) for c in counts.values()]
    contexts = draw.integers(0, 7, size=7)
    # the replicate as weights (times drawn), exactly what crossed_replicates produces per row
    reps = study_stats.Replicates(
        np.bincount(seeds, minlength=3)[None].astype(float),
        [
            np.bincount(p, minlength=c.shape[1])[None].astype(float)
            for p, c in zip(prompts, counts.values(), strict=True)
        ],
    )
    stats = study_stats.disparity_statistics(counts, reps)
    equitabilities, male_all, female_all, n_all = [], 0.0, 0.0, 0.0
    for c, drawn in zip(counts.values(), prompts, strict=True):
        m = sum(c[s, p, 0] for s in seeds for p in drawn)
        f = sum(c[s, p, 1] for s in seeds for p in drawn)
        n = sum(c[s, p, 2] for s in seeds for p in drawn)
        equitabilities.append(0.0 if min(m, f) == 0 else min(m / f, f / m))
        male_all, female_all, n_all = male_all + m, female_all + f, n_all + n
    assert math.isclose(stats["mean_equitability"][0], sum(equitabilities) / len(equitabilities))
    assert math.isclose(stats["min_equitability"][0], min(equitabilities))
    assert math.isclose(stats["male"][0], male_all / n_all) and math.isclose(
        stats["female"][0], female_all / n_all
    )
    assert math.isclose(stats["female_of_gendered"][0], female_all / (male_all + female_all))

    pronoun_reps = study_stats.Replicates(
        reps.seeds, [np.bincount(contexts, minlength=7)[None].astype(float)]
    )
    pronoun = study_stats.pronoun_statistics(gaps, pronoun_reps)
    drawn = [gaps[s, c] for s in seeds for c in contexts]
    assert math.isclose(pronoun["mean_abs_gap"][0], sum(abs(g) for g in drawn) / len(drawn))
    assert math.isclose(pronoun["mean_gap"][0], sum(drawn) / len(drawn))

    nll, tokens = np.array([2.0, 3.0, 2.5]), np.array([100.0, 50.0, 80.0])
    expected = math.exp(sum(nll[s] * tokens[s] for s in seeds) / sum(tokens[s] for s in seeds))
    assert math.isclose(study_stats.perplexity_statistic(nll, tokens, reps.seeds)[0], expected)


def test_sentiment_gap_against_a_loop():
    rng = np.random.default_rng(4)
    groups = []
    for size in (3, 4):
        labels = rng.integers(0, 3, size=(2, size, 5))  # 0 positive, 1 negative, 2 neutral
        groups.append(
            np.stack([(labels == 0).sum(-1), (labels == 1).sum(-1), np.full((2, size), 5)], -1).astype(float)
        )
    reps = study_stats.per_seed_replicates(2, [3, 4])
    stats = study_stats.sentiment_statistics(groups, reps)
    for b in range(reps.n):
        shares = []
        for g, counts in enumerate(groups):
            w = reps.seeds[b][:, None] * reps.units[g][b][None, :]
            shares.append(((w * counts[..., 0]).sum() / (w * counts[..., 2]).sum(),
                           (w * counts[..., 1]).sum() / (w * counts[..., 2]).sum()))  # fmt: skip
        assert math.isclose(stats["positive_gap"][b], shares[0][0] - shares[1][0])
        assert math.isclose(stats["negative_gap"][b], shares[0][1] - shares[1][1])


def test_per_seed_statistics_match_one_seed_at_a_time_and_summaries_are_t_intervals():
    rng = np.random.default_rng(5)
    counts = random_counts(rng)
    sizes = [c.shape[1] for c in counts.values()]
    stats = study_stats.disparity_statistics(counts, study_stats.per_seed_replicates(3, sizes))
    for seed in range(3):
        alone = {k: c[seed : seed + 1] for k, c in counts.items()}
        one = study_stats.disparity_statistics(alone, study_stats.per_seed_replicates(1, sizes))
        assert math.isclose(stats["mean_equitability"][seed], one["mean_equitability"][0])
        assert math.isclose(stats["female"][seed], one["female"][0])
    a = stats["female"]
    summary = study_stats.summarise(a)
    half = 4.302652729749464 * a.std(ddof=1) / math.sqrt(3)
    assert summary["value"] == pytest.approx(a.mean()) and summary["ci"] == pytest.approx(
        [a.mean() - half, a.mean() + half]
    )
    assert study_stats.summarise(a - a)["ci"] == [0.0, 0.0]  # an arm against itself
    assert study_stats.summarise(np.array([0.5]))["ci"] is None  # one seed, no interval


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="at least one seed"):
        study_stats.per_seed_replicates(0, [2])
    with pytest.raises(ValueError, match="two groups"):
        study_stats.sentiment_statistics([np.ones((1, 1, 3))], study_stats.per_seed_replicates(1, [1]))


# ----------------------------------------------------------------------------------------------------
# the study's statistics over run records
# ----------------------------------------------------------------------------------------------------


def synthetic_record(rng, *, female_bias: float, ppl: float, samples: int = 6) -> dict:
    """A run record with elicitation counts drawn at a female share of 0.5 +/- female_bias (female- vs
    male-labelled occupations), and fixed other measures."""
    elicitation = {}
    for o, stereotype in (("nurse", "female"), ("clerk", "female"), ("driver", "male"), ("cook", "male")):
        share = 0.5 + (female_bias if stereotype == "female" else -female_bias)
        for t in range(3):
            female = int(rng.binomial(samples, share))
            elicitation[f"e/{o}/{t}"] = {"category": o, "stereotype": stereotype, "male": samples - female,
                                         "female": female, "n": samples + 1}  # fmt: skip
    bold = {f"b/{c}": {"category": c, "male": 2, "female": 1, "n": 3} for c in ("a", "b")}
    perplexity = {"in_domain": {"perplexity": ppl}, "other_domain": {"perplexity": 2 * ppl}}
    return {"elicitation": elicitation, "bold": bold, "pronoun_gap": {"mean_abs_gap": 0.5, "mean_gap": 0.1},
            "winobias": {"pro_share": 0.6}, "crows_pairs": {"stereotype_share": 0.55},
            "perplexity": perplexity}  # fmt: skip


def test_per_seed_association_is_eval_elicitations_statistic_on_each_record():
    rng = np.random.default_rng(0)
    records = {seed: synthetic_record(rng, female_bias=0.2, ppl=30.0) for seed in (0, 1, 2)}
    values = per_seed(records)
    for k, record in records.items():
        entries = list(record["elicitation"].values())
        prompts = [Prompt(f"The {e['category']} said that", "elicitation", e["category"], e["stereotype"],
                          "elicitation", i) for i, e in enumerate(entries)]  # fmt: skip
        labels = [
            ["male"] * e["male"] + ["female"] * e["female"] + ["neutral"] * (e["n"] - e["male"] - e["female"])
            for e in entries
        ]
        summary = elicitation_summary(prompts, labels)
        assert math.isclose(values["association"][k], summary["association"]["value"], abs_tol=1e-12)
        assert math.isclose(values["global_shift"][k], summary["global_shift"]["value"], abs_tol=1e-12)
    assert values["perplexity_in_domain"].tolist() == [30.0] * 3


@pytest.mark.parametrize(("bias", "ppl", "met"), [(0.0, 30.0, True), (0.0, 33.0, False), (0.4, 30.0, False)])
def test_the_success_rule_needs_lower_association_than_both_baselines_and_the_perplexity(bias, ppl, met):
    """A planted association of +0.4 (teacher, plain KD) against `bias` (the arm): the rule holds only when
    the arm is lower than both with Holm-adjusted p < 0.05 and its perplexity within 5% of plain KD's."""
    rng = np.random.default_rng(1)
    records = {
        "teacher": {s: synthetic_record(rng, female_bias=0.4, ppl=25.0, samples=200) for s in range(4)},
        "plain_kd": {s: synthetic_record(rng, female_bias=0.4, ppl=30.0, samples=200) for s in range(4)},
        "max": {s: synthetic_record(rng, female_bias=bias, ppl=ppl, samples=200) for s in range(4)},
    }
    summary = json.loads(json.dumps(summarise_study(records, "plain_kd", "association"), default=str))
    assert summary["success"]["max"]["met"] is met  # JSON booleans, as results.json holds them
    assert summary["success"]["max"]["perplexity_within_5_percent"] is (ppl <= 31.5)
    assert all(isinstance(v, bool) for v in summary["success"]["max"].values())
    assert set(summary["vs_teacher"]) == {"plain_kd", "max"} and set(summary["vs_reference"]) == {"max"}
    assert summary["vs_reference"]["max"]["association"]["p_holm"] is not None


# ----------------------------------------------------------------------------------------------------
# the study recipe and the command
# ----------------------------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["study-cpu-v2.yaml", "study-gpt2.yaml", "study-gpu.yaml"])
def test_committed_study_recipes_load_and_arms_differ_only_by_method(tmp_path, name):
    spec = load_spec(REPO / "recipes" / name)
    assert spec.reference == "plain_kd" and len(spec.seeds) >= 3 and spec.primary == "association"
    assert {"plain_kd", "max", "cda", "cda_max", "placebo_max", "lm_only"} <= set(spec.arms)
    assert spec.design.strip() and spec.success.strip()
    study = Study(spec, tmp_path / "out", tmp_path / "work", "unused", [])
    study.train_text = str(REPO / "recipes" / "data" / "sample_corpus.txt")  # prepare() would build it
    recipes = {arm: study.arm_recipe(arm, seed=0) for arm in spec.arms}
    shared = {k: v for k, v in recipes["plain_kd"].items() if k not in METHOD_KEYS and k != "output_dir"}
    for arm, recipe in recipes.items():
        assert {k: v for k, v in recipe.items() if k not in METHOD_KEYS and k != "output_dir"} == shared, arm
        config = parse_config(["--config", str(write(tmp_path / f"{arm}.yaml", yaml.safe_dump(recipe))),
                               "--bf16", "false", "--student_name_or_path", str(tmp_path)])  # fmt: skip
        assert config.alpha_clm == (1.0 if arm == "lm_only" else 0.0)  # KD only, but the LM-only arm
        assert config.student_init == "pretrained"  # every arm starts from the shared healed student
    assert recipes["placebo_max"]["lexicon"].endswith("placebo_pairs.tsv")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("train_recipe: recipes/tiny.yaml\narms: {a: {}}\nreferense: a\n", "unknown keys"),
        ("arms: {plain_kd: {}}\n", "set train_recipe"),
        ("train_recipe: recipes/tiny.yaml\narms: {a: {}}\n", "reference: 'plain_kd' is not an arm"),
        ("train_recipe: recipes/tiny.yaml\narms: {plain_kd: {seed: 3}}\n", "the seed comes from seeds"),
        (
            "train_recipe: recipes/tiny.yaml\narms: {plain_kd: {}}\nheal: {seed: 3}\n",
            "the seed comes from seeds",
        ),
        ("train_recipe: recipes/tiny.yaml\narms: {plain_kd: {}, heal: {}}\n", "reserved names"),
        ("train_recipe: recipes/tiny.yaml\narms: {plain_kd: {}, start: {}}\n", "reserved names"),
        ("train_recipe: recipes/tiny.yaml\narms: {plain_kd: {}}\nprimary: fairness\n", "is not a measure"),
        (
            "train_recipe: recipes/tiny.yaml\narms: {plain_kd: {}}\neval: {per_categry: 2}\n",
            "unknown eval keys",
        ),
        # arm names become folders under --out: nothing may lead outside it (issue 18)
        (ARMS.format("../../../x"), r"arm name '../../../x' contains a path separator"),
        (ARMS.format("/tmp/abs"), r"arm name '/tmp/abs' contains a path separator"),
        (ARMS.format("'..'"), r"arm name '..' is not a plain name"),
        (ARMS.format("''"), r"arm name '' is empty"),
        (ARMS.format("'a\\\\b'"), r"contains a path separator"),
        ("train_recipe: recipes/tiny.yaml\narms: {plain_kd: {}}\nseeds: 3\n", "seeds must be a list"),
        ("train_recipe: recipes/tiny.yaml\narms: {plain_kd: {}}\nseeds: [0, 0.5]\n", "distinct integers"),
        ("train_recipe: recipes/tiny.yaml\narms: [plain_kd]\n", "arms must be a dict"),
        (
            "train_recipe: recipes/nope.yaml\narms: {plain_kd: {}}\n",
            "train_recipe .*nope.yaml does not exist",
        ),
        (
            "train_recipe: recipes/tiny.yaml\narms: {plain_kd: {}}\neval: {elicitation_samples: 0}\n",
            r"eval: elicitation_samples must be an integer >= 1, got 0",
        ),
        ("train_recipe: recipes/tiny.yaml\narms: {plain_kd: {}\n", r"line \d+: not valid YAML"),
    ],
)
def test_bad_study_recipes_name_the_fix(tmp_path, body, message):
    with pytest.raises(StudyError, match=message):
        load_spec(write(tmp_path / "study.yaml", body))


def test_a_study_recipe_that_is_not_utf8_is_named_with_its_line(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_bytes(b"train_recipe: recipes/tiny.yaml\narms: {plain_kd: {}}\n# caf\xe9\n")
    with pytest.raises(UserError, match=rf"study recipe {path}, line 3: not valid UTF-8"):
        load_spec(path)


def test_the_study_command_refuses_bad_input_in_one_line(tmp_path):
    """Exit 2, the message and the hint, no traceback; the BOLD folder is checked before anything runs."""
    bad = write(tmp_path / "study.yaml", ARMS.format("../../../x"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    env.pop("FAIRDISTILL_DEBUG", None)
    command = [sys.executable, str(REPO / "recipes" / "study.py"), "--config", str(bad)]
    done = subprocess.run([*command, "--out", str(tmp_path / "o")], env=env, capture_output=True, text=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("error: ") and "'../../../x' contains a path separator" in lines[0]
    assert lines[1:] == ["(set FAIRDISTILL_DEBUG=1 to see the traceback)"]
    assert not (tmp_path / "o").exists() and not (tmp_path.parent / "x").exists()
    good = write(tmp_path / "ok.yaml", "train_recipe: recipes/tiny.yaml\narms: {plain_kd: {}}\n")
    with pytest.raises(StudyError, match=r"BOLD folder /nonexistent/bold not found; pass --bold"):
        study_main(["--config", str(good), "--bold", "/nonexistent/bold", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
    with pytest.raises(StudyError, match=r"no run records under"):
        study_main(["--config", str(good), "--report-only", "--out", str(tmp_path / "o")])


def test_the_study_at_tiny_scale_heals_once_caches_the_teacher_resumes_and_rebuilds_its_report(
    tmp_path, bold_dir
):
    teacher = tmp_path / "teacher"
    tiny_gpt2(n_layer=2, seed=1).save_pretrained(teacher)
    gpt2_tokenizer().save_pretrained(teacher)
    heldout = write(tmp_path / "heldout.txt", "The committee met on Tuesday and agreed on the budget. " * 12)
    other = write(tmp_path / "other.txt", "A carpenter builds houses, tables and chairs from wood. " * 12)
    config = write(
        tmp_path / "study-tiny.yaml",
        f"data: {{text: {REPO}/recipes/data/sample_corpus.txt, perplexity_text: {heldout},"
        f" other_domain_text: {other}}}\n"
        "design: a tiny run\nsuccess: none expected\ntrain_recipe: recipes/tiny.yaml\n"
        "train: {max_steps: 2, perturbation: null, cda: null, validation_split_percentage: 0, alpha_clm: 0.0,"
        " max_train_samples: 6}\n"
        "heal: {student_init: layers, student_num_layers: 1, max_steps: 2}\n"
        "seeds: [0, 1]\n"
        "arms: {plain_kd: {}, max: {perturbation: max}, cda_max: {cda: two_sided, perturbation: max},"
        f" placebo_max: {{perturbation: max, lexicon: {PLACEBO}, swap_names: false}},"
        " lm_only: {alpha_kd: 0.0, alpha_clm: 1.0}}\n"
        "eval: {elicitation_samples: 1, elicitation_max_new_tokens: 3, bold_per_category: 1, bold_samples: 1,"
        " bold_max_new_tokens: 3, likelihood_max_pairs: 3, perplexity_chars: 800}\n",
    )
    out, work = tmp_path / "results", tmp_path / "work"
    argv = ["--config", str(config), "--out", str(out), "--work", str(work), "--bold", str(bold_dir),
            "--", "--teacher_name_or_path", str(teacher), "--use_cpu", "true"]  # fmt: skip
    report = study_main(argv)

    summary = report["summary"]
    arms = ["teacher", "start", "plain_kd", "max", "cda_max", "placebo_max", "lm_only"]
    assert list(summary["arms"]) == arms
    assert "start" not in summary["vs_reference"] and "start" not in summary["success"]  # a row, not an arm
    assert all(summary["seeds"][a] == [0, 1] for a in summary["arms"])
    heal = json.loads((out / "runs" / "heal.json").read_text())
    assert heal["config"]["student_init"] == "layers" and heal["config"]["perturbation"] is None
    runs = {(a, s): json.loads((out / "runs" / a / f"seed{s}.json").read_text())
            for a in summary["arms"] if a not in ("teacher", "start") for s in (0, 1)}  # fmt: skip
    # one teacher pass per distinct (blocks, token swap): shared across seeds without CDA, per seed with it
    caches = {key: r["teacher_cache"] for key, r in runs.items()}
    assert caches[("plain_kd", 0)] == caches[("plain_kd", 1)] != caches[("max", 0)] == caches[("max", 1)]
    assert caches[("placebo_max", 0)] not in (caches[("max", 0)], caches[("plain_kd", 0)])
    assert caches[("cda_max", 0)] != caches[("cda_max", 1)] and caches[("lm_only", 0)] is None
    assert runs[("placebo_max", 1)]["config"]["lexicon"].endswith("placebo_pairs.tsv")
    assert (
        runs[("max", 1)]["config"]["perturbation"] == "max" and runs[("max", 1)]["config"]["alpha_clm"] == 0
    )
    assert not (work / "checkpoints" / "max" / "seed1").exists()  # weights are not kept; the record is
    assert report["timing"]["caches"] == 5 and report["timing"]["cached_runs"] == 8
    md = (out / "report.md").read_text()
    assert "a tiny run" in md and "**Success rule:** none expected" in md and "Paired differences from" in md
    assert all((out / png).stat().st_size > 0 for png in ("primary.png", "occupations.png",
                                                          "perplexity_vs_primary.png"))  # fmt: skip

    # a second invocation finds every run done and trains nothing; --report-only needs only the records
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.json")}
    again = study_main(argv)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    rebuilt = study_main(["--config", str(config), "--out", str(out), "--work", str(tmp_path / "none"),
                          "--bold", "/nonexistent", "--report-only"])  # fmt: skip
    as_text = [json.dumps(r["summary"], sort_keys=True) for r in (report, again, rebuilt)]  # NaN != NaN
    assert as_text[0] == as_text[1] == as_text[2]
