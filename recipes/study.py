"""The study: does counterfactual role reversal make the student fairer, and at what cost?

One command runs an ablation matrix described by a study recipe (``recipes/study-*.yaml``) and writes
one report (Markdown, JSON, PNG):

    python recipes/study.py --config recipes/study-cpu.yaml --out results/study-cpu

Arms: the teacher itself, and students distilled with plain KD, with the teacher-prediction
perturbation (``max``, ``mean``, ``expMean``), with CDA alone, and with CDA plus the best perturbation.
Every student arm shares the training recipe (student initialisation, data, steps, batch, learning rate)
and differs only in ``perturbation`` / ``cda``; every arm runs with every seed in ``seeds``; every model is
scored with the same prompts and settings (the seed also seeds its sampling).

No tuning on the headline prompts: BOLD's profession prompts are split by Wikipedia page into a *dev*
half and a held-out *test* half (``eval.prompts.split_prompts``). "Best perturbation" is chosen on the
dev half only (``select_best``); every number in the report's tables is measured on the test half.

Each (arm, seed) is stored in ``<out>/runs/<arm>/seed<k>.json`` as soon as it is done (polarity labels,
VADER scores, pronoun gaps, perplexity, timings; a fingerprint of its settings): an interrupted study
resumes where it stopped, and ``--report-only`` rebuilds the report from what is there.
Intervals: Student's t over seeds; paired differences Holm-adjusted (``eval.study_stats``).

Options after ``--`` go to every training run, e.g. ``-- --use_cpu true``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distill.models import load_causal_lm, load_tokenizer, resolve_model_path  # noqa: E402
from distill.student import merge_lora  # noqa: E402
from distill.train import parse_config, run  # noqa: E402
from eval import study_stats  # noqa: E402
from eval.generation import GenerationSettings, generate_continuations, model_max_positions  # noqa: E402
from eval.perplexity import load_text_for_perplexity, strided_perplexity  # noqa: E402
from eval.polarity import unigram_polarity  # noqa: E402
from eval.prompts import Prompt, load_bold_prompts, profession_contexts, split_prompts  # noqa: E402
from eval.pronoun_gap import pronoun_gap  # noqa: E402
from eval.sentiment import VADER_THRESHOLD, vader_compound  # noqa: E402
from fairdistill.errors import UserError, check_path_name, check_text_file, read_text, run_cli  # noqa: E402

TEACHER = "teacher"
BEST = "best"  # an arm's ``perturbation: best`` is resolved on the dev prompts after the other arms ran
GENDER_GROUPS = ("American_actors", "American_actresses")
SELECTION_CRITERIA = ("dev_mean_equitability", "pronoun_mean_abs_gap")
SPEC_KEYS = {"train_recipe", "train", "seeds", "arms", "select_best", "reference", "data", "eval"}


class StudyError(UserError):
    """A study recipe that cannot run; the message says what to change."""


def say(message: str) -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------------------------------
# The study recipe
# ----------------------------------------------------------------------------------------------------


@dataclass
class EvalSpec:
    holdout_fraction: float = 0.5  # share of profession pages held out as the test half
    split_seed: int = 0
    per_category: int = 8  # profession prompts per category, in each half
    gender_per_category: int = 8  # gender-domain prompts (actors, actresses) for the sentiment gap
    num_samples: int = 3
    max_new_tokens: int = 20
    batch_size: int = 32
    perplexity_chars: int = 10_000  # of the held-out text
    perplexity_window: int = 256
    n_bootstrap: int = 1000
    bootstrap_seed: int = 0

    def __post_init__(self) -> None:
        """Each value has its default's type (an int where an int is expected) and a sensible range."""
        for spec in fields(self):
            value, default = getattr(self, spec.name), spec.default
            if isinstance(default, bool) or not isinstance(default, (int, float)):
                continue
            kinds = (int,) if isinstance(default, int) else (int, float)
            low = 0 if spec.name.endswith("seed") or spec.name == "n_bootstrap" else 1
            if isinstance(default, float):
                share = spec.name == "holdout_fraction"
                ok = isinstance(value, kinds) and not isinstance(value, bool)
                ok = ok and (0 < value < 1 if share else 0 < value < float("inf"))
                expected = "a number in (0, 1)" if share else "a positive number"
            else:
                ok = isinstance(value, kinds) and not isinstance(value, bool) and value >= low
                expected = f"an integer >= {low}"
            if not ok:
                raise StudyError(f"eval: {spec.name} must be {expected}, got {value!r}")


@dataclass
class StudySpec:
    train_recipe: str
    train: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    select_best: dict[str, Any] = field(default_factory=dict)
    reference: str = "plain_kd"
    data: dict[str, Any] = field(default_factory=dict)
    eval: EvalSpec = field(default_factory=EvalSpec)

    @property
    def best_candidates(self) -> list[str]:
        return list(self.select_best.get("from", []))

    @property
    def selection_criterion(self) -> str:
        return self.select_best.get("by", "dev_mean_equitability")


def load_spec(path: str | Path) -> StudySpec:
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study recipe {path} does not exist; study recipes are recipes/study-*.yaml")
    try:
        raw = yaml.safe_load(read_text(path, "study recipe")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise StudyError(
            f"study recipe {path}{where}: not valid YAML ({getattr(err, 'problem', err)})"
        ) from None
    if not isinstance(raw, dict):
        raise StudyError(f"study recipe {path} must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - SPEC_KEYS)
    if unknown:
        raise StudyError(f"study recipe {path}: unknown keys {unknown}; known: {sorted(SPEC_KEYS)}")
    if "train_recipe" not in raw:
        raise StudyError(f"study recipe {path}: set train_recipe (the training recipe every arm shares)")
    eval_raw = raw.pop("eval", None) or {}
    for key, kind in (("arms", dict), ("train", dict), ("select_best", dict), ("data", dict), ("eval", dict),
                      ("seeds", list), ("train_recipe", str), ("reference", str)):  # fmt: skip
        value = eval_raw if key == "eval" else raw.get(key)
        if value is not None and not isinstance(value, kind):
            raise StudyError(f"study recipe {path}: {key} must be a {kind.__name__}, got {value!r}")
    known_eval = set(EvalSpec.__dataclass_fields__)
    if set(eval_raw) - known_eval:
        raise StudyError(f"study recipe {path}: unknown eval keys {sorted(set(eval_raw) - known_eval)}")
    spec = StudySpec(**raw, eval=EvalSpec(**eval_raw))
    recipe = Path(spec.train_recipe)
    if not recipe.is_absolute():
        spec.train_recipe = str(REPO / recipe) if not recipe.exists() else str(recipe)
    if not spec.arms:
        raise StudyError(f"study recipe {path}: no arms; list them under arms: (name: overrides)")
    if TEACHER in spec.arms:
        raise StudyError(f"study recipe {path}: '{TEACHER}' is always evaluated; do not list it as an arm")
    for name in spec.arms:  # arm names become folders under --out: runs/<arm>/, checkpoints/<arm>/
        check_path_name(name, f"study recipe {path}: arm name", StudyError)
    if not Path(spec.train_recipe).is_file():
        raise StudyError(f"study recipe {path}: train_recipe {spec.train_recipe} does not exist")
    if any(isinstance(s, bool) or not isinstance(s, int) for s in spec.seeds):
        raise StudyError(f"study recipe {path}: seeds must be distinct integers, got {spec.seeds}")
    if not spec.seeds or len(set(spec.seeds)) != len(spec.seeds):
        raise StudyError(f"study recipe {path}: seeds must be distinct integers, got {spec.seeds}")
    for name, overrides in spec.arms.items():
        if not isinstance(overrides, dict):
            raise StudyError(f"arm {name}: give a mapping of training-recipe overrides (or {{}})")
        if "seed" in overrides or "seed" in spec.train:
            raise StudyError(f"arm {name}: the seed comes from seeds:, not from the arm or train: overrides")
        if overrides.get("perturbation") == BEST and not spec.best_candidates:
            raise StudyError(f"arm {name} uses perturbation: best; list the candidates in select_best: from:")
    for candidate in spec.best_candidates:
        if candidate not in spec.arms:
            raise StudyError(f"select_best: from: names {candidate!r}, which is not an arm")
    if spec.selection_criterion not in SELECTION_CRITERIA:
        raise StudyError(f"select_best: by: {spec.selection_criterion!r}; use one of {SELECTION_CRITERIA}")
    if spec.reference not in spec.arms:
        raise StudyError(f"reference: {spec.reference!r} is not an arm; name the plain-KD arm")
    return spec


# ----------------------------------------------------------------------------------------------------
# Data and prompts
# ----------------------------------------------------------------------------------------------------


def _load_main_job():
    import importlib.util

    spec = importlib.util.spec_from_file_location("main_job", REPO / "recipes" / "main_job.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare_text(spec: StudySpec, bold: str, out: Path) -> tuple[str, str, dict]:
    """(training text, held-out text, stats): the recipe's ``data.text`` / ``data.perplexity_text`` when
    given, else the main job's BOLD-derived text (training pages disjoint from every evaluation prompt)."""
    if spec.data.get("text"):
        if not spec.data.get("perplexity_text"):
            raise StudyError("data: text is set; also set data: perplexity_text (held-out text)")
        for key in ("text", "perplexity_text"):
            path = Path(spec.data[key])
            if path.exists() or path.suffix in (".txt", ".jsonl", ".json"):  # else a Hub dataset id
                check_text_file(path, f"data: {key}")
        return spec.data["text"], spec.data["perplexity_text"], {}
    if not Path(bold).is_dir():
        raise StudyError(
            f"BOLD folder {bold} not found; pass --bold DIR, or set data: text and perplexity_text"
        )
    data = out / "data"
    stats_path = data / "stats.json"
    if not stats_path.is_file():
        stats = _load_main_job().build_text(Path(bold), data)
        stats_path.write_text(json.dumps(stats, indent=2), encoding="utf-8")
    return str(data / "train.jsonl"), str(data / "heldout.txt"), json.loads(stats_path.read_text())


def study_prompts(bold: str, ev: EvalSpec) -> dict[str, list[Prompt]]:
    """dev / test halves of the profession prompts (split by Wikipedia page, then subsampled per
    category) and the gender-domain prompts for the sentiment gap."""
    professions = load_bold_prompts(bold, domains=("profession",))
    dev, test = split_prompts(professions, ev.holdout_fraction, seed=ev.split_seed)
    gender = load_bold_prompts(
        bold, domains=("gender",), categories=GENDER_GROUPS, per_category=ev.gender_per_category, seed=0
    )
    return {
        "dev": _per_category(dev, ev.per_category, seed=1),
        "test": _per_category(test, ev.per_category, seed=2),
        "gender": gender,
    }


def _per_category(prompts: list[Prompt], n: int, seed: int) -> list[Prompt]:
    import random

    by_category: dict[str, list[Prompt]] = {}
    for p in prompts:
        by_category.setdefault(p.category, []).append(p)
    kept = []
    for category in sorted(by_category):
        group = sorted(by_category[category], key=lambda p: p.id)
        random.Random(f"{seed}/{category}").shuffle(group)
        kept.extend(sorted(group[:n], key=lambda p: p.id))
    return kept


# ----------------------------------------------------------------------------------------------------
# One model, scored
# ----------------------------------------------------------------------------------------------------


def evaluate(
    model, tokenizer, prompts: dict[str, list[Prompt]], perplexity_text: str, ev: EvalSpec, seed: int
) -> dict[str, Any]:
    """Raw per-prompt scores of one model: what the statistics need, and nothing averaged away."""
    model = model.float().eval()
    flat = [(split, p) for split, ps in prompts.items() for p in ps]
    settings = GenerationSettings(
        max_new_tokens=ev.max_new_tokens, num_samples=ev.num_samples, batch_size=ev.batch_size, seed=seed
    )
    started = time.perf_counter()
    texts = [p.text for _, p in flat]
    continuations = generate_continuations(model, tokenizer, texts, settings, progress=False)
    generation_seconds = time.perf_counter() - started
    records, samples = [], []
    for (split, prompt), texts in zip(flat, continuations, strict=True):
        record = {"id": prompt.id, "split": split, "category": prompt.category}
        record["polarity"] = [unigram_polarity(t) for t in texts]
        if split == "gender":
            record["vader"] = [round(v, 4) for v in vader_compound(texts)]
        records.append(record)
        if sum(s["category"] == prompt.category for s in samples) < 1 and split != "dev":
            # the prompt by id only: BOLD's text stays out of committed results (CC BY-SA, not ours)
            samples.append({"category": prompt.category, "prompt_id": prompt.id, "continuation": texts[0]})
    gaps = pronoun_gap(model, tokenizer, [c.text for c in profession_contexts()])["gaps"]
    window = min(ev.perplexity_window, model_max_positions(model) or ev.perplexity_window)
    text = load_text_for_perplexity(perplexity_text)
    text = (text if isinstance(text, str) else "\n\n".join(text))[: ev.perplexity_chars]
    ppl = strided_perplexity(model, tokenizer, text, max_length=window, stride=window // 2)
    return {
        "prompts": records,
        "pronoun_gaps": [round(g, 6) for g in gaps],
        "perplexity": {"nll": ppl["nll"], "tokens": ppl["tokens"], "perplexity": ppl["perplexity"]},
        "samples": samples,
        "generation_seconds": generation_seconds,
    }


# ----------------------------------------------------------------------------------------------------
# Running the matrix
# ----------------------------------------------------------------------------------------------------


def _fingerprint(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_yaml(path: str) -> dict:
    try:
        raw = yaml.safe_load(read_text(path, "training recipe")) or {}
    except yaml.YAMLError as err:
        raise StudyError(f"training recipe {path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise StudyError(f"training recipe {path} must be a mapping of settings, got {type(raw).__name__}")
    return raw


class Study:
    def __init__(self, spec: StudySpec, out: Path, bold: str, passthrough: Sequence[str], config_path: str):
        self.spec, self.out, self.bold, self.passthrough = spec, out, bold, list(passthrough)
        self.config_path = config_path
        self.text, self.perplexity_text, self.data_stats = prepare_text(spec, bold, out)
        self.prompts = study_prompts(bold, spec.eval)
        self.prompt_ids = {split: [p.id for p in ps] for split, ps in self.prompts.items()}
        self.base = {**_read_yaml(spec.train_recipe), **spec.train}
        self._teacher = None

    def run_path(self, arm: str, seed: int) -> Path:
        return self.out / "runs" / arm / f"seed{seed}.json"

    def training_recipe(self, arm: str, seed: int, perturbation_best: str | None) -> dict:
        recipe = {**self.base, **self.spec.arms[arm]}
        if recipe.get("perturbation") == BEST:
            recipe["perturbation"] = perturbation_best
        recipe.update(
            seed=seed,
            dataset_name=self.text,
            output_dir=str(self.out / "checkpoints" / arm / f"seed{seed}"),
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
        )
        return recipe

    def _fingerprint_of(self, what: dict) -> str:
        return _fingerprint({**what, "eval": vars(self.spec.eval), "prompts": self.prompt_ids,
                             "passthrough": self.passthrough})  # fmt: skip

    def done(self, arm: str, seed: int, fingerprint: str) -> dict | None:
        path = self.run_path(arm, seed)
        if path.is_file():
            record = json.loads(path.read_text(encoding="utf-8"))
            if record.get("fingerprint") == fingerprint:
                return record
            say(f"[study] {path} was made with other settings; running it again")
        return None

    def _save(self, record: dict) -> dict:
        path = self.run_path(record["arm"], record["seed"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, path)  # a killed study never leaves half a record behind
        return record

    def teacher(self, seed: int) -> dict:
        teacher_id = self.base["teacher_name_or_path"]
        for i, arg in enumerate(self.passthrough[:-1]):  # a pass-through teacher replaces the recipe's
            if arg == "--teacher_name_or_path":
                teacher_id = self.passthrough[i + 1]
        fingerprint = self._fingerprint_of({"teacher": teacher_id})
        if (record := self.done(TEACHER, seed, fingerprint)) is not None:
            return record
        say(f"[study] teacher ({teacher_id}), sampling seed {seed}: evaluating")
        if self._teacher is None:
            path = resolve_model_path(teacher_id)
            self._teacher = (load_causal_lm(path, dtype="float32"), load_tokenizer(path))
        model, tokenizer = self._teacher
        started = time.perf_counter()
        scores = evaluate(model, tokenizer, self.prompts, self.perplexity_text, self.spec.eval, seed)
        return self._save({
            "arm": TEACHER, "seed": seed, "fingerprint": fingerprint, "teacher": teacher_id,
            "train_seconds": 0.0, "eval_seconds": time.perf_counter() - started, **scores,
        })  # fmt: skip

    def student(self, arm: str, seed: int, perturbation_best: str | None) -> dict:
        recipe = self.training_recipe(arm, seed, perturbation_best)
        fingerprint = self._fingerprint_of({"recipe": recipe})
        if (record := self.done(arm, seed, fingerprint)) is not None:
            return record
        recipe_path = self.out / "recipes" / f"{arm}-seed{seed}.yaml"
        recipe_path.parent.mkdir(parents=True, exist_ok=True)
        recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=True), encoding="utf-8")
        config = parse_config(["--config", str(recipe_path), *self.passthrough])
        say(
            f"[study] {arm}, seed {seed}: perturbation={config.perturbation}, cda={config.cda}, "
            f"{config.max_steps} steps"
        )
        started = time.perf_counter()
        trainer, _ = run(config)
        train_seconds = time.perf_counter() - started
        student = trainer.accelerator.unwrap_model(trainer.model)
        if hasattr(student, "merge_and_unload"):
            student = merge_lora(student)  # plain weights generate faster than adapters on top
        tokenizer = trainer.processing_class
        log = [e for e in trainer.state.log_history if "loss_kd" in e]
        started = time.perf_counter()
        scores = evaluate(student, tokenizer, self.prompts, self.perplexity_text, self.spec.eval, seed)
        record = {
            "arm": arm, "seed": seed, "fingerprint": fingerprint, "config": config.to_dict(),
            "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - started,
            "loss_kd": [e["loss_kd"] for e in log],
            "tokens_per_second": [e.get("tokens_per_second") for e in log],
            **scores,
        }  # fmt: skip
        del trainer, student
        gc.collect()
        return self._save(record)

    def run_all(self, arms: Sequence[str], seeds: Sequence[int]) -> dict[str, dict[int, dict]]:
        records: dict[str, dict[int, dict]] = {TEACHER: {}}
        for seed in seeds:
            records[TEACHER][seed] = self.teacher(seed)
        self._teacher = None
        deferred = [a for a in arms if self.spec.arms[a].get("perturbation") == BEST]
        for seed in seeds:  # seed-major: a complete picture of one seed comes first
            for arm in arms:
                if arm not in deferred:
                    records.setdefault(arm, {})[seed] = self.student(arm, seed, None)
        if deferred:
            best = select_best(self.spec, records)
            say(f"[study] best perturbation on the dev prompts ({self.spec.selection_criterion}): {best}")
            for seed in seeds:
                for arm in deferred:
                    records.setdefault(arm, {})[seed] = self.student(arm, seed, best)
        return records

    def log_invocation(self, command: str, wall_seconds: float, arms, seeds) -> None:
        """Appends to ``invocations.jsonl``: the report states which commands made its runs, and how long
        they took, even when it is rebuilt later with ``--report-only``."""
        finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        entry = {"command": command, "finished": finished, "wall_seconds": round(wall_seconds, 1),
                 "arms": list(arms), "seeds": list(seeds)}  # fmt: skip
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / "invocations.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def invocations(self) -> list[dict]:
        path = self.out / "invocations.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def load_records(self) -> dict[str, dict[int, dict]]:
        records: dict[str, dict[int, dict]] = {}
        for path in sorted((self.out / "runs").glob("*/seed*.json")):
            record = json.loads(path.read_text(encoding="utf-8"))
            records.setdefault(record["arm"], {})[record["seed"]] = record
        return records


# ----------------------------------------------------------------------------------------------------
# Statistics over records
# ----------------------------------------------------------------------------------------------------


def _polarity_counts(records: list[dict], split: str) -> dict[str, np.ndarray]:
    """category -> (S, P_c, 3) male / female / all generations; prompts in id order."""
    first = [r for r in records[0]["prompts"] if r["split"] == split]
    categories = sorted({r["category"] for r in first})
    out = {}
    for category in categories:
        ids = sorted(r["id"] for r in first if r["category"] == category)
        per_seed = []
        for record in records:
            by_id = {r["id"]: r for r in record["prompts"] if r["split"] == split}
            labels = [by_id[i]["polarity"] for i in ids]
            per_seed.append([[ls.count("male"), ls.count("female"), len(ls)] for ls in labels])
        out[category] = np.array(per_seed, dtype=np.float64)
    return out


def _sentiment_counts(records: list[dict]) -> list[np.ndarray]:
    out = []
    for group in GENDER_GROUPS:
        first = records[0]["prompts"]
        ids = sorted(r["id"] for r in first if r["split"] == "gender" and r["category"] == group)
        per_seed = []
        for record in records:
            by_id = {r["id"]: r for r in record["prompts"] if r["split"] == "gender"}
            per_seed.append([
                [sum(v >= VADER_THRESHOLD for v in by_id[i]["vader"]),
                 sum(v <= -VADER_THRESHOLD for v in by_id[i]["vader"]), len(by_id[i]["vader"])]
                for i in ids
            ])  # fmt: skip
        out.append(np.array(per_seed, dtype=np.float64))
    return out


def arm_statistics(records: list[dict], ev: EvalSpec, split: str = "test") -> dict[str, Any]:
    """Per-seed vectors (one row per seed) of every reported statistic of one arm."""
    n_seeds = len(records)  # one row per seed: intervals are t over seeds (eval.study_stats)
    polarity = _polarity_counts(records, split)
    reps = study_stats.per_seed_replicates(n_seeds, [c.shape[1] for c in polarity.values()])
    out = {f"disparity.{k}": v for k, v in study_stats.disparity_statistics(polarity, reps).items()}
    out["categories"] = list(polarity)
    gaps = np.array([r["pronoun_gaps"] for r in records])
    reps = study_stats.per_seed_replicates(n_seeds, [gaps.shape[1]])
    out |= {f"pronoun.{k}": v for k, v in study_stats.pronoun_statistics(gaps, reps).items()}
    sentiment = _sentiment_counts(records)
    if all(c.size for c in sentiment):
        reps = study_stats.per_seed_replicates(n_seeds, [c.shape[1] for c in sentiment])
        out |= {f"sentiment.{k}": v for k, v in study_stats.sentiment_statistics(sentiment, reps).items()}
    nll = np.array([r["perplexity"]["nll"] for r in records])
    tokens = np.array([r["perplexity"]["tokens"] for r in records], dtype=np.float64)
    reps = study_stats.per_seed_replicates(n_seeds, [])
    out["perplexity"] = study_stats.perplexity_statistic(nll, tokens, reps.seeds)
    return out


HEADLINE = (
    "disparity.mean_equitability",
    "disparity.min_equitability",
    "disparity.male",
    "disparity.female",
    "disparity.female_of_gendered",
    "pronoun.mean_abs_gap",
    "pronoun.mean_gap",
    "sentiment.positive_gap",
    "sentiment.negative_gap",
    "perplexity",
)


def select_best(spec: StudySpec, records: dict[str, dict[int, dict]]) -> str:
    """The candidate perturbation arm with the best dev-half score (never the test half)."""
    scores = {}
    for arm in spec.best_candidates:
        runs = [records[arm][s] for s in sorted(records[arm])]
        if spec.selection_criterion == "dev_mean_equitability":
            stats = arm_statistics(runs, spec.eval, split="dev")
            scores[arm] = float(stats["disparity.mean_equitability"].mean())  # higher is fairer
        else:
            scores[arm] = -float(np.mean(np.abs([r["pronoun_gaps"] for r in runs])))
    arm = max(scores, key=lambda a: (scores[a], -spec.best_candidates.index(a)))
    return spec.arms[arm]["perturbation"]


def summarise_study(spec: StudySpec, records: dict[str, dict[int, dict]]) -> dict[str, Any]:
    ev = spec.eval
    arms = [a for a in (TEACHER, *spec.arms) if records.get(a)]
    stats = {a: arm_statistics([records[a][s] for s in sorted(records[a])], ev) for a in arms}
    summary: dict[str, Any] = {"arms": {}, "differences": {}, "dev": {}}
    for arm in arms:
        runs = [records[arm][s] for s in sorted(records[arm])]
        entry = {key: study_stats.summarise(stats[arm][key]) for key in HEADLINE if key in stats[arm]}
        entry["seeds"] = sorted(records[arm])
        no_bootstrap = replace(ev, n_bootstrap=0)
        entry["per_seed"] = [
            {
                "seed": r["seed"],
                "mean_equitability": float(
                    arm_statistics([r], no_bootstrap)["disparity.mean_equitability"][0]
                ),
                "pronoun_mean_abs_gap": float(np.mean(np.abs(r["pronoun_gaps"]))),
                "perplexity": r["perplexity"]["perplexity"],
                "train_seconds": r["train_seconds"],
                "eval_seconds": r["eval_seconds"],
                "perturbation": (r.get("config") or {}).get("perturbation"),
                "cda": (r.get("config") or {}).get("cda"),
            }
            for r in runs
        ]
        entry["categories"] = {
            c: study_stats.summarise(stats[arm]["disparity.equitability"][:, k])
            for k, c in enumerate(stats[arm]["categories"])
        }
        test_labels = [p["polarity"] for r in runs for p in r["prompts"] if p["split"] == "test"]
        entry["gendered_generations"] = sum(ls.count("male") + ls.count("female") for ls in test_labels)
        entry["generations"] = sum(len(ls) for ls in test_labels)
        entry["categories_without_gendered"] = int(stats[arm]["disparity.no_gendered"].max())
        entry["estimate_outside_ci"] = [
            key for key in HEADLINE if key in entry and entry[key]["ci"] and not
            entry[key]["ci"][0] <= entry[key]["value"] <= entry[key]["ci"][1]
        ]  # fmt: skip
        summary["arms"][arm] = entry
        if arm in spec.best_candidates or arm == spec.reference:
            dev = arm_statistics(runs, ev, split="dev")
            summary["dev"][arm] = study_stats.summarise(dev["disparity.mean_equitability"])
    reference = spec.reference
    if reference in stats:
        for arm in arms:
            if arm == reference or sorted(records[arm]) != sorted(records[reference]):
                continue  # paired differences need the same seeds (the same replicates)
            summary["differences"][arm] = {
                key: study_stats.summarise(stats[arm][key] - stats[reference][key])
                for key in HEADLINE
                if key in stats[arm] and key in stats[reference]
            }
        study_stats.holm_differences(summary["differences"])  # several arms against one reference
    return summary


# ----------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------

LABELS = {
    "disparity.mean_equitability": "mean equitability ↑",
    "disparity.min_equitability": "worst category ↑",
    "disparity.male": "male share",
    "disparity.female": "female share",
    "disparity.female_of_gendered": "female / gendered (0.5 = balance)",
    "pronoun.mean_abs_gap": "pronoun \\|gap\\| ↓",
    "pronoun.mean_gap": "pronoun gap (signed)",
    "sentiment.positive_gap": "sentiment + gap",
    "sentiment.negative_gap": "sentiment − gap",
    "perplexity": "perplexity ↓",
}


def _cell(entry: dict | None, digits: int = 3) -> str:
    if not entry:
        return "—"
    ci = entry.get("ci")
    value = f"{entry['value']:.{digits}f}"
    return value if not ci else f"{value} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _arm_label(arm: str, summary: dict) -> str:
    per_seed = summary["arms"][arm]["per_seed"]
    modes = {s["perturbation"] for s in per_seed if s["perturbation"]}
    return f"{arm} ({', '.join(sorted(modes))})" if modes and arm not in modes else arm


def markdown(report: dict) -> str:
    summary, spec = report["summary"], report["spec"]
    keys = [k for k in HEADLINE if any(k in e for e in summary["arms"].values())]
    lines = [
        f"# Study: {report['name']}",
        "",
        "Does counterfactual role reversal make the distilled student fairer, and at what cost? "
        "All numbers below are on the **held-out test half** of BOLD's profession prompts (split by "
        "Wikipedia page; the best perturbation was chosen on the dev half). Means over seeds with "
        "Student-t 95% intervals over seeds; paired differences also give Holm-adjusted p-values "
        "(several arms against one reference).",
        "",
        f"Reproduce: `python recipes/study.py --config {report['spec']['config']} --out {report['out']}` "
        "(runs already in the output folder with the same settings are reused).  ",
        "Runs made by: "
        + (
            "; ".join(
                f"`{i['command']}` ({i['wall_seconds'] / 60:.1f} min wall, finished {i['finished']})"
                for i in report["invocations"]
            )
            or "(no invocation log)"
        )
        + f". Training + evaluation time recorded over all runs: {report['run_seconds'] / 60:.1f} min.  ",
        f"This report: `{report['command']}`, {report['created']}.  ",
        f"Hardware: {report['environment']['hardware']}.  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["environment"]["versions"].items()) + ".",
        "",
        "## Results (test prompts)",
        "",
        "| arm | seeds | " + " | ".join(LABELS[k] for k in keys) + " |",
        "|---|---:|" + "---:|" * len(keys),
    ]
    for arm, entry in summary["arms"].items():
        digits = {"perplexity": 2}
        cells = [_cell(entry.get(k), digits.get(k, 3)) for k in keys]
        lines.append(f"| {_arm_label(arm, summary)} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    if summary["differences"]:
        lines += [
            "",
            f"## Paired differences from {spec['reference']} (same seeds, same resampled prompts)",
            "",
            "An interval that excludes 0 is a difference this study can detect.",
            "",
            "| arm | " + " | ".join(LABELS[k] for k in keys) + " |",
            "|---|" + "---:|" * len(keys),
        ]
        for arm, diff in summary["differences"].items():
            lines.append(
                f"| {_arm_label(arm, summary)} − {spec['reference']} | "
                + " | ".join(_cell(diff.get(k), 2 if k == "perplexity" else 3) for k in keys)
                + " |"
            )
    if summary["dev"]:
        lines += [
            "",
            "## Selection of the best perturbation (dev prompts only)",
            "",
            f"Criterion: `{spec['select_best'].get('by', 'dev_mean_equitability')}`; chosen: "
            f"**{report.get('best') or 'not yet run'}**.",
            "",
            "| arm | dev mean equitability |",
            "|---|---:|",
        ]
        lines += [f"| {arm} | {_cell(entry)} |" for arm, entry in summary["dev"].items()]
    lines += [
        "",
        "## Per seed",
        "",
        "| arm | seed | mean equitability | pronoun \\|gap\\| | perplexity | train s | eval s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, entry in summary["arms"].items():
        for s in entry["per_seed"]:
            lines.append(
                f"| {arm} | {s['seed']} | {s['mean_equitability']:.3f} | {s['pronoun_mean_abs_gap']:.3f} | "
                f"{s['perplexity']:.2f} | {s['train_seconds']:.0f} | {s['eval_seconds']:.0f} |"
            )
    lines += [
        "",
        "## How to read it",
        "",
        "- *mean equitability*: per profession category, min(male/female, female/male) of the pooled "
        "counts of continuations labelled male / female by BOLD's unigram lists, averaged over the "
        "categories (1 = parity; 0 = one gender never appears, also when no continuation is gendered). "
        "*worst category*: the minimum. Shares: of all continuations; *female / gendered*: female share of "
        "the continuations that are gendered, pooled over categories. The equitabilities are a mean / min "
        "of minima of "
        "ratios of small counts: their bootstrap replicates sit below the estimate, so a percentile "
        "interval can exclude its own estimate ("
        + (
            ", ".join(
                f"{arm}: {', '.join(LABELS[k] for k in e['estimate_outside_ci'])}"
                for arm, e in summary["arms"].items()
                if e["estimate_outside_ci"]
            )
            or "none here"
        )
        + "); read the paired differences and the shares instead.",
        "- Profession categories without a single gendered continuation (equitability 0 by definition), "
        "of "
        + str(report["prompts"]["categories"])
        + ": "
        + ", ".join(f"{arm} {e['categories_without_gendered']}" for arm, e in summary["arms"].items())
        + ".",
        '- *pronoun |gap|*: mean over templated profession contexts ("The nurse said that") of '
        "|log P(he, him, his…) − log P(she, her…)| for the next token (0 = no preference).",
        "- *sentiment gaps*: VADER (±0.05) positive (negative) share of continuations of BOLD's American "
        "actors prompts minus the actresses'.",
        "- *perplexity*: held-out BOLD Wikipedia pages (never trained on), 256-token windows, stride 128.",
        "- Gendered continuations on the test prompts: "
        + ", ".join(
            f"{arm} {e['gendered_generations']}/{e['generations']}" for arm, e in summary["arms"].items()
        )
        + ". Few gendered continuations make the equitability intervals wide.",
        "",
        "## Setup",
        "",
        f"- Training recipe shared by every arm: `{spec['train_recipe_name']}` with overrides "
        f"`{json.dumps(spec['train'])}`; arms: "
        + "; ".join(f"`{a}` {json.dumps(o)}" for a, o in spec["arms"].items())
        + ".",
        f"- Seeds: {spec['seeds']} (training seed and sampling seed). Evaluation: "
        f"`{json.dumps(spec['eval'])}`.",
        f"- Prompts: {report['prompts']['dev']} dev and {report['prompts']['test']} test profession "
        f"prompts ({report['prompts']['categories']} categories), {report['prompts']['gender']} "
        "gender-domain prompts.",
    ]
    if report.get("data"):
        lines.append(f"- Training text: {json.dumps(report['data'])}.")
    lines += ["", "![disparity vs perplexity](disparity_vs_perplexity.png)", ""]
    return "\n".join(lines)


def _error_bar(entry: dict) -> list[list[float]] | None:
    """matplotlib's asymmetric error bar; clipped at 0, since the percentile interval of a min-type
    statistic can sit beside its estimate."""
    if not entry["ci"]:
        return None
    return [[max(entry["value"] - entry["ci"][0], 0.0)], [max(entry["ci"][1] - entry["value"], 0.0)]]


def plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    # the female share of gendered continuations, not the equitability: at small counts the latter's
    # intervals can exclude its own estimate (see the report), the former is a ratio of pooled sums
    panels = (("disparity.female_of_gendered", "female / gendered continuations (0.5 = balance)"),
              ("pronoun.mean_abs_gap", "pronoun |gap| (0 = no preference)"))  # fmt: skip
    for ax, (key, label) in zip(axes, panels, strict=True):
        for arm, entry in report["summary"]["arms"].items():
            x, y = entry["perplexity"], entry.get(key)
            if not y:
                continue
            xerr, yerr = _error_bar(x), _error_bar(y)
            ax.errorbar([x["value"]], [y["value"]], xerr=xerr, yerr=yerr, fmt="o", capsize=3, label=arm)
            ax.annotate(arm, (x["value"], y["value"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xlabel("held-out perplexity (lower is better)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].axhline(0.5, color="grey", linestyle="--", linewidth=1)
    axes[0].set_title("Gender balance of generations vs perplexity (test prompts)")
    axes[1].set_title("Pronoun gap vs perplexity")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def environment() -> dict[str, Any]:
    import torch

    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers", "accelerate", "peft", "datasets"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    hardware = f"{os.cpu_count()} CPU cores ({cpu})"
    if torch.cuda.is_available():
        hardware += f", GPU {torch.cuda.get_device_name(0)}"
    return {"versions": versions, "hardware": hardware}


def _display_path(path: Path) -> str:
    path = path.resolve()
    return os.path.relpath(path, REPO) if path.is_relative_to(REPO) else str(path)


def write_study_report(
    study: Study, spec: StudySpec, records, *, command: str, wall_seconds: float, best: str | None
) -> dict:
    summary = summarise_study(spec, records)
    report = {
        "name": study.out.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command,
        "out": _display_path(study.out),
        "invocations": study.invocations(),
        "wall_seconds": wall_seconds,
        "run_seconds": sum(
            r["train_seconds"] + r["eval_seconds"] for runs in records.values() for r in runs.values()
        ),
        "environment": environment(),
        "spec": {
            "config": study.config_path,
            "train_recipe_name": os.path.relpath(spec.train_recipe, REPO),
            "train": spec.train, "seeds": spec.seeds, "arms": spec.arms, "select_best": spec.select_best,
            "reference": spec.reference, "eval": vars(spec.eval),
        },
        "prompts": {
            "dev": len(study.prompts["dev"]), "test": len(study.prompts["test"]),
            "gender": len(study.prompts["gender"]),
            "categories": len({p.category for p in study.prompts["test"]}),
        },
        "data": study.data_stats,
        "best": best,
        "summary": summary,
        "samples": {arm: runs[min(runs)]["samples"] for arm, runs in records.items() if runs},
    }  # fmt: skip
    study.out.mkdir(parents=True, exist_ok=True)
    (study.out / "results.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (study.out / "report.md").write_text(markdown(report), encoding="utf-8")
    plot(report, study.out / "disparity_vs_perplexity.png")
    return report


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="study recipe, e.g. recipes/study-cpu.yaml")
    parser.add_argument("--out", type=Path, default=None, help="default: results/<config name>")
    default_bold = os.environ.get("FAIRDISTILL_BOLD_DIR", str(REPO.parent / "shared" / "data" / "bold"))
    parser.add_argument("--bold", default=default_bold, help="local BOLD folder")
    parser.add_argument("--arms", nargs="*", default=None, help="run only these arms (default: all)")
    parser.add_argument("--seeds", nargs="*", type=int, default=None, help="run only these seeds")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from saved runs")
    return parser.parse_args(argv), passthrough


def main(argv: Sequence[str] | None = None) -> dict:
    args, passthrough = parse_args(argv)
    started = time.perf_counter()
    spec = load_spec(args.config)
    if not Path(args.bold).is_dir():  # the prompts come from BOLD even when data: text is given
        raise StudyError(
            f"BOLD folder {args.bold} not found; pass --bold DIR (the folder with prompts/ and wikipedia/) "
            "or set FAIRDISTILL_BOLD_DIR"
        )
    out = args.out or REPO / "results" / Path(args.config).stem
    study = Study(spec, out, args.bold, passthrough, args.config)
    arms = args.arms if args.arms is not None else list(spec.arms)
    for arm in arms:
        if arm not in spec.arms:
            raise StudyError(f"--arms {arm}: not an arm of {args.config}; arms: {', '.join(spec.arms)}")
    seeds = args.seeds if args.seeds is not None else spec.seeds
    command = "python recipes/study.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if not args.report_only:
        study.run_all(arms, seeds)
        study.log_invocation(command, time.perf_counter() - started, arms, seeds)
    records = study.load_records()
    records = {a: runs for a, runs in records.items() if a == TEACHER or a in spec.arms}
    best = None
    if spec.best_candidates and all(records.get(a) for a in spec.best_candidates):
        best = select_best(spec, records)
    report = write_study_report(
        study, spec, records, command=command, wall_seconds=time.perf_counter() - started, best=best
    )
    say(f"[study] report: {out / 'report.md'}")
    say(markdown(report).split("\n## Per seed")[0])
    return report


if __name__ == "__main__":
    run_cli(main)
