"""Running a study: one shared healing run, the teacher, then every arm with every seed.

Order: the text is built once; the *heal* run (plain KD from the measured layer selection, when the recipe
has ``heal:``) makes the one student every arm starts from -- identical initialisation in every arm and
seed; the teacher is measured once per sampling seed; then seed-major over the arms, so an interrupted
study holds complete seeds first. Every finished (arm, seed) is written at once to
``<out>/runs/<arm>/seed<k>.json`` with a fingerprint of its settings: a rerun skips what is done and redoes
what changed. Heavy files (text, teacher caches, the healed student, per-run output folders, deleted after
measuring) live in the work folder, never in ``<out>``, which is committed.

With ``teacher_cache: true`` the teacher runs once per distinct (training blocks, token swap): arms and
seeds that share them share one offline cache (``distill.teacher_cache``; top-k log-probabilities plus the
exact tail mass and, with a perturbation, the counterfactual view).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..errors import read_text
from .measure import measure
from .spec import REPO, START, TEACHER, StudyError, StudySpec

HEAL = "heal"
HEAL_SEED = 1000  # the healing run's seed: not one of the arms' seeds
LAYER_KEYS = (
    "student_layers",
    "student_num_layers",
    "student_layer_selection",
    "layer_selection_tokens",
    "layer_selection_block",
)
# recipe settings that decide a teacher cache's content (the blocks and the token swap)
CACHE_KEYS = (
    "teacher_name_or_path",
    "dataset_name",
    "train_split",
    "block_size",
    "max_train_samples",
    "cda",
    "swap_names",
    "lexicon",
    "text_column",
    "teacher_dtype",
)

RECORDED_SETTINGS = (
    "perturbation",
    "perturbation_scope",
    "cda",
    "lexicon",
    "swap_names",
    "alpha_kd",
    "alpha_clm",
    "max_steps",
    "learning_rate",
    "max_train_samples",
    "train_split",
    "block_size",
    "per_device_train_batch_size",
)


def say(message: str) -> None:
    print(f"[study] {message}", flush=True)


def fingerprint(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_digest(path: str | None) -> str | None:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if path and Path(path).is_file() else None


def read_recipe(path: str) -> dict:
    try:
        raw = yaml.safe_load(read_text(path, "training recipe")) or {}
    except yaml.YAMLError as err:
        raise StudyError(f"training recipe {path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise StudyError(f"training recipe {path} must be a mapping of settings, got {type(raw).__name__}")
    return raw


def write_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    os.replace(tmp, path)  # a killed study never leaves half a record


class Study:
    def __init__(self, spec: StudySpec, out: Path, work: Path, bold: str, passthrough: Sequence[str]):
        self.spec, self.out, self.work, self.bold = spec, out, work, bold
        self.passthrough = list(passthrough)
        self.base = {**read_recipe(spec.train_recipe), **spec.train}
        self.heal_record: dict | None = None  # set by run_all: the shared starting point's record

    def prepare(self) -> None:
        """Training text and the two held-out texts: the recipe's ``data:`` (text, perplexity_text,
        other_domain_text: local files or Hub datasets) or, by default, BOLD-derived text built once into the
        work folder."""
        from eval.perplexity import load_text_for_perplexity

        from ..bold_text import build_text, other_domain_text

        chars, data = self.spec.eval.perplexity_chars, self.spec.data
        if data.get("text"):
            missing = [k for k in ("perplexity_text", "other_domain_text") if not data.get(k)]
            if missing:
                raise StudyError(f"data: text is set; also set data: {' and '.join(missing)} (held-out text)")
            self.data_stats, self.train_text = {}, data["text"]
            loaded = {k: load_text_for_perplexity(data[v]) for k, v in
                      (("in_domain", "perplexity_text"), ("other_domain", "other_domain_text"))}  # fmt: skip
            self.texts = {k: (t if isinstance(t, str) else "\n\n".join(t))[:chars] for k, t in loaded.items()}
        else:
            folder = self.work / "data"
            if not (folder / "stats.json").is_file():
                stats = build_text(Path(self.bold), folder)
                (folder / "stats.json").write_text(json.dumps(stats, indent=1), encoding="utf-8")
            self.data_stats = json.loads((folder / "stats.json").read_text(encoding="utf-8"))
            self.train_text = str(folder / "train.jsonl")
            self.texts = {
                "in_domain": (folder / "heldout.txt").read_text(encoding="utf-8")[:chars],
                "other_domain": other_domain_text(Path(self.bold), chars),
            }
        self.eval_key = fingerprint({"eval": vars(self.spec.eval), "texts": self.texts})

    # -- records ---------------------------------------------------------------------------------------

    def run_path(self, arm: str, seed: int) -> Path:
        return self.out / "runs" / arm / f"seed{seed}.json"

    def _done(self, path: Path, key: str) -> dict | None:
        if path.is_file():
            record = json.loads(path.read_text(encoding="utf-8"))
            if record.get("fingerprint") == key:
                return record
            say(f"{path} was made with other settings; running it again")
        return None

    def load_records(self) -> dict[str, dict[int, dict]]:
        records: dict[str, dict[int, dict]] = {}
        for path in sorted((self.out / "runs").glob("*/seed*.json")):
            record = json.loads(path.read_text(encoding="utf-8"))
            records.setdefault(record["arm"], {})[record["seed"]] = record
        return records

    # -- training --------------------------------------------------------------------------------------

    def _train(self, recipe: dict, name: str) -> tuple[Any, dict, float]:
        """Train one recipe (written to the work folder, then parsed as the launcher would)."""
        from distill.pipeline import run
        from distill.recipe import parse_config

        path = self.work / "recipes" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(recipe, sort_keys=True), encoding="utf-8")
        config = parse_config(["--config", str(path), *self.passthrough])
        if Path(config.output_dir).exists():
            shutil.rmtree(config.output_dir)  # a leftover of an interrupted run of the same name
        started = time.perf_counter()
        trainer, _ = run(config)
        return trainer, config.to_dict(), time.perf_counter() - started

    def heal(self) -> dict | None:
        """The shared starting point (``heal:`` in the recipe), trained once; None without ``heal:``."""
        if self.spec.heal is None:
            return None
        recipe = {
            **self.base,
            **self.spec.heal,
            "seed": HEAL_SEED,
            "dataset_name": self.train_text,
            "output_dir": str(self.work / HEAL),
            "save_strategy": "no",
            "report_to": "none",
            "disable_tqdm": True,
            "perturbation": None,
            "cda": None,
            "teacher_cache": None,
        }
        key = fingerprint({"recipe": recipe, "passthrough": self.passthrough})
        path = self.out / "runs" / f"{HEAL}.json"
        record = self._done(path, key)
        if record is not None and (self.work / HEAL / "config.json").is_file():
            return record
        say(f"healing the student once with plain KD ({recipe.get('max_steps')} steps)")
        trainer, config, seconds = self._train(recipe, HEAL)
        log = [e for e in trainer.state.log_history if "loss_kd" in e]
        record = {
            "arm": HEAL,
            "fingerprint": key,
            "train_seconds": seconds,
            "config": config,
            "layer_selection": config.get("student_layer_selection_record"),
            "loss_kd": [[e["step"], e["loss_kd"]] for e in log],
        }
        del trainer
        gc.collect()
        write_atomic(path, record)
        return record

    def arm_recipe(self, arm: str, seed: int) -> dict:
        recipe = {**self.base, **self.spec.arms[arm]}
        if self.spec.heal is not None:
            for key in LAYER_KEYS:
                recipe.pop(key, None)
            recipe.update(student_init="pretrained", student_name_or_path=str(self.work / HEAL))
        recipe.update(
            seed=seed,
            dataset_name=self.train_text,
            output_dir=str(self.work / "checkpoints" / arm / f"seed{seed}"),
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
        )
        return recipe

    def teacher_cache(self, recipe: dict, name: str) -> tuple[str | None, float]:
        """The offline cache this recipe trains from (written on first need), and the seconds spent writing
        it now (0 when it already existed). None when the recipe does not read a teacher."""
        if not self.spec.teacher_cache or float(recipe.get("alpha_kd", 1.0)) == 0.0:
            return None, 0.0
        content = {k: recipe.get(k) for k in CACHE_KEYS}
        content |= {
            "perturbation": recipe.get("perturbation") is not None,
            "lexicon": _file_digest(recipe.get("lexicon")),
            "seed": recipe["seed"] if recipe.get("cda") else None,
            "passthrough": self.passthrough,
        }
        folder = self.work / "caches" / fingerprint(content)
        if (folder / "train" / "teacher_cache.json").is_file():
            return str(folder), 0.0
        from distill.teacher_cache.__main__ import main as write_cache

        if folder.exists():
            shutil.rmtree(folder)  # an interrupted write
        path = self.work / "recipes" / f"{name}-cache.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump({**recipe, "teacher_cache": None}, sort_keys=True), encoding="utf-8")
        started = time.perf_counter()
        write_cache(["--out", str(folder), "--config", str(path), *self.passthrough])
        return str(folder), time.perf_counter() - started

    def student(self, arm: str, seed: int) -> dict:
        recipe = self.arm_recipe(arm, seed)
        heal = self.heal_record
        key = fingerprint(
            {
                "recipe": recipe,
                "eval": self.eval_key,
                "passthrough": self.passthrough,
                "heal": heal and heal["fingerprint"],
                "teacher_cache": self.spec.teacher_cache,
            }
        )
        if (record := self._done(self.run_path(arm, seed), key)) is not None:
            return record
        cache, cache_seconds = self.teacher_cache(recipe, f"{arm}-seed{seed}")
        recipe["teacher_cache"] = cache
        say(
            f"{arm}, seed {seed}: training ({recipe.get('max_steps')} steps"
            + (", cached teacher)" if cache else ")")
        )
        trainer, config, train_seconds = self._train(recipe, f"{arm}-seed{seed}")
        student = trainer.accelerator.unwrap_model(trainer.model)
        log = [e for e in trainer.state.log_history if "loss_kd" in e or "loss_clm" in e]
        say(f"{arm}, seed {seed}: measuring")
        scores = measure(
            student, trainer.processing_class, self.spec.eval, bold=self.bold, texts=self.texts, seed=seed
        )
        record = {
            "arm": arm,
            "seed": seed,
            "fingerprint": key,
            "train_seconds": train_seconds,
            "cache_seconds": cache_seconds,
            "teacher_cache": Path(cache).name if cache else None,
            "config": {k: config.get(k) for k in RECORDED_SETTINGS},
            "log": [{k: e.get(k) for k in ("step", "loss_kd", "loss_clm", "tokens_per_second")} for e in log],
            **scores,
        }
        shutil.rmtree(recipe["output_dir"], ignore_errors=True)  # the weights are not kept: the record is
        del trainer, student
        gc.collect()
        write_atomic(self.run_path(arm, seed), record)
        return record

    def _measure_saved(self, name: str, model_id: str, key_payload: dict, seed: int) -> dict:
        """Measure a model that is not trained here (the teacher, the shared starting point)."""
        from distill.models import load_causal_lm, load_tokenizer, resolve_model_path

        key = fingerprint({**key_payload, "eval": self.eval_key})
        if (record := self._done(self.run_path(name, seed), key)) is not None:
            return record
        shown = display_path(Path(model_id)) if Path(model_id).exists() else model_id
        say(f"{name} ({shown}), sampling seed {seed}: measuring")
        path = resolve_model_path(model_id)
        model, tokenizer = load_causal_lm(path, dtype="float32"), load_tokenizer(path)
        scores = measure(model, tokenizer, self.spec.eval, bold=self.bold, texts=self.texts, seed=seed)
        record = {"arm": name, "seed": seed, "fingerprint": key, "model": model_id, "train_seconds": 0.0,
                  "cache_seconds": 0.0, **scores}  # fmt: skip
        write_atomic(self.run_path(name, seed), record)
        return record

    def teacher(self, seed: int) -> dict:
        teacher_id = self.base["teacher_name_or_path"]
        if "--teacher_name_or_path" in self.passthrough[:-1]:  # a pass-through teacher replaces the recipe's
            teacher_id = self.passthrough[self.passthrough.index("--teacher_name_or_path") + 1]
        return self._measure_saved(TEACHER, teacher_id, {"teacher": teacher_id}, seed)

    def start(self, seed: int) -> dict | None:
        """The healed student before any arm's own steps: what every arm moves away from."""
        if self.heal_record is None:
            return None
        return self._measure_saved(
            START, str(self.work / HEAL), {"start": self.heal_record["fingerprint"]}, seed
        )

    def run_all(self, arms: Sequence[str], seeds: Sequence[int]) -> None:
        self.prepare()
        self.heal_record = self.heal()
        for seed in seeds:
            self.teacher(seed)
            self.start(seed)
        for seed in seeds:  # seed-major: a complete picture of one seed comes first
            for arm in arms:
                self.student(arm, seed)

    # -- the invocation log ----------------------------------------------------------------------------

    def log_invocation(self, command: str, wall_seconds: float, arms, seeds) -> None:
        """``invocations.jsonl``: which commands made the runs and how long they took, kept for the report
        even when it is rebuilt later with ``--report-only``."""
        finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        entry = {
            "command": command,
            "finished": finished,
            "wall_seconds": round(wall_seconds, 1),
            "arms": list(arms),
            "seeds": list(seeds),
        }
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / "invocations.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def invocations(self) -> list[dict]:
        path = self.out / "invocations.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def display_path(path: Path) -> str:
    path = Path(path).resolve()
    return os.path.relpath(path, REPO) if path.is_relative_to(REPO) else str(path)
