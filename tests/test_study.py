"""The study: crossed seed x prompt bootstrap statistics (against plain loops and eval.disparity), the
study recipe's validation, and the whole matrix end to end at tiny scale (resume included)."""

from __future__ import annotations

import importlib.util
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
from fairdistill.errors import UserError
from tests.assets import gpt2_tokenizer, tiny_gpt2

REPO = Path(__file__).resolve().parents[1]
ARMS = "train_recipe: recipes/tiny.yaml\narms: {{plain_kd: {{}}, {}: {{}}}}\n"


def load_study():
    spec = importlib.util.spec_from_file_location("study", REPO / "recipes" / "study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["study"] = module  # dataclasses resolve their module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


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
# the study recipe and the command
# ----------------------------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_committed_study_recipes_load_and_every_arm_is_a_valid_training_recipe(tmp_path):
    study = load_study()
    paths = sorted((REPO / "recipes").glob("study-*.yaml"))
    assert {p.name for p in paths} >= {"study-cpu.yaml", "study-gpt2.yaml"}
    for path in paths:
        spec = study.load_spec(path)
        assert spec.reference in spec.arms and len(spec.seeds) >= 3, path
        assert {"plain_kd", "max", "mean", "expMean", "cda", "cda+best"} <= set(spec.arms), path
        base = {**yaml.safe_load(Path(spec.train_recipe).read_text()), **spec.train}
        methods = set()
        for arm, overrides in spec.arms.items():
            recipe = {**base, **overrides}
            recipe["perturbation"] = (
                "max" if recipe.get("perturbation") == "best" else recipe.get("perturbation")
            )
            config = parse_config(["--config", str(write(tmp_path / f"{arm}.yaml", yaml.safe_dump(recipe))),
                                   "--bf16", "false", "--output_dir", str(tmp_path)])  # fmt: skip
            methods.add((config.perturbation, config.cda))
            # only the method differs between arms
            assert {k: v for k, v in recipe.items() if k not in ("perturbation", "cda")} == {
                k: v for k, v in base.items() if k not in ("perturbation", "cda")
            }
        assert len(methods) == len(spec.arms), path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("train_recipe: recipes/tiny.yaml\narms: {a: {}}\nreferense: a\n", "unknown keys"),
        ("arms: {plain_kd: {}}\n", "set train_recipe"),
        ("train_recipe: recipes/tiny.yaml\narms: {plain_kd: {}, b: {perturbation: best}}\n", "select_best"),
        ("train_recipe: recipes/tiny.yaml\narms: {a: {}}\n", "reference: 'plain_kd' is not an arm"),
        ("train_recipe: recipes/tiny.yaml\narms: {plain_kd: {seed: 3}}\n", "the seed comes from seeds"),
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
            "train_recipe: recipes/tiny.yaml\narms: {plain_kd: {}}\neval: {num_samples: 0}\n",
            r"eval: num_samples must be an integer >= 1, got 0",
        ),
        (
            "train_recipe: recipes/tiny.yaml\narms: {plain_kd: {}}\neval: {holdout_fraction: 1.5}\n",
            r"holdout_fraction must be a number in \(0, 1\)",
        ),
        ("train_recipe: recipes/tiny.yaml\narms: {plain_kd: {}\n", r"line \d+: not valid YAML"),
    ],
)
def test_bad_study_recipes_name_the_fix(tmp_path, body, message):
    study = load_study()
    with pytest.raises(study.StudyError, match=message):
        study.load_spec(write(tmp_path / "study.yaml", body))


def test_a_study_recipe_that_is_not_utf8_is_named_with_its_line(tmp_path):
    study = load_study()
    path = tmp_path / "study.yaml"
    path.write_bytes(b"train_recipe: recipes/tiny.yaml\narms: {plain_kd: {}}\n# caf\xe9\n")
    with pytest.raises(UserError, match=rf"study recipe {path}, line 3: not valid UTF-8"):
        study.load_spec(path)
    text = tmp_path / "train.txt"
    text.write_bytes(b"")
    data = f"data: {{text: {text}, perplexity_text: {text}}}\n"
    path.write_text(f"train_recipe: recipes/tiny.yaml\narms: {{plain_kd: {{}}}}\n{data}")
    with pytest.raises(UserError, match=rf"data: text {text} is empty"):
        study.prepare_text(study.load_spec(path), "unused", tmp_path)


def test_the_study_command_refuses_bad_input_in_one_line(tmp_path, monkeypatch):
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
    study = load_study()
    with pytest.raises(study.StudyError, match=r"BOLD folder /nonexistent/bold not found; pass --bold"):
        study.main(["--config", str(good), "--bold", "/nonexistent/bold", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_dev_and_test_prompts_come_from_different_pages(bold_dir):
    study = load_study()
    prompts = study.study_prompts(str(bold_dir), study.EvalSpec(per_category=5))
    pages = {split: {(p.category, p.page) for p in prompts[split]} for split in ("dev", "test")}
    assert pages["dev"] and pages["test"] and not {p for _, p in pages["dev"]} & {p for _, p in pages["test"]}
    assert {p.category for p in prompts["test"]} == {p.category for p in prompts["dev"]}
    assert {p.category for p in prompts["gender"]} == {"American_actors", "American_actresses"}


def test_the_study_at_tiny_scale_runs_resumes_and_reports(tmp_path, bold_dir):
    teacher = tmp_path / "teacher"
    tiny_gpt2(n_layer=2, seed=1).save_pretrained(teacher)
    gpt2_tokenizer().save_pretrained(teacher)
    config = write(
        tmp_path / "study-tiny.yaml",
        "train_recipe: recipes/tiny.yaml\n"
        "train: {max_steps: 2, perturbation: null, cda: null, validation_split_percentage: 0}\n"
        "seeds: [0, 1]\n"
        "arms: {plain_kd: {}, max: {perturbation: max}, mean: {perturbation: mean},"
        " cda+best: {cda: two_sided, perturbation: best}}\n"
        "select_best: {from: [max, mean]}\n"
        "eval: {per_category: 1, gender_per_category: 1, num_samples: 2, max_new_tokens: 3,"
        " perplexity_chars: 1500, n_bootstrap: 30}\n",
    )
    out = tmp_path / "results"
    argv = ["--config", str(config), "--out", str(out), "--bold", str(bold_dir),
            "--", "--teacher_name_or_path", str(teacher), "--use_cpu", "true"]  # fmt: skip
    report = load_study().main(argv)

    arms = report["summary"]["arms"]
    assert list(arms) == ["teacher", "plain_kd", "max", "mean", "cda+best"]
    assert all(arms[a]["seeds"] == [0, 1] for a in arms)
    assert report["best"] in ("max", "mean")  # chosen on the dev half
    chosen = {s["perturbation"] for s in arms["cda+best"]["per_seed"]}
    assert chosen == {report["best"]} and {s["cda"] for s in arms["cda+best"]["per_seed"]} == {"two_sided"}
    assert {s["perturbation"] for s in arms["plain_kd"]["per_seed"]} == {None}
    for arm in ("max", "mean", "cda+best", "teacher"):
        assert set(report["summary"]["differences"][arm]) >= {"pronoun.mean_abs_gap", "perplexity"}
    run = json.loads((out / "runs" / "max" / "seed1.json").read_text())
    assert run["config"]["seed"] == 1 and run["config"]["max_steps"] == 2
    assert {r["split"] for r in run["prompts"]} == {"dev", "test", "gender"}
    md = (out / "report.md").read_text()
    assert "| cda+best (" in md and "Paired differences from plain_kd" in md and "held-out test half" in md
    assert (out / "disparity_vs_perplexity.png").stat().st_size > 0
    # per-seed values are consistent with the stored pronoun gaps
    per_seed = {s["seed"]: s for s in arms["max"]["per_seed"]}
    assert math.isclose(per_seed[1]["pronoun_mean_abs_gap"], float(np.mean(np.abs(run["pronoun_gaps"]))))

    # a second invocation finds every run done and trains nothing
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/seed*.json")}
    again = load_study().main(argv)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert again["summary"]["arms"]["max"]["pronoun.mean_abs_gap"] == arms["max"]["pronoun.mean_abs_gap"]
