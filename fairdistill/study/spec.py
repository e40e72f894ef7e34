"""The study recipe (``recipes/study-*.yaml``): what is trained, how it is measured, what counts as success.

A recipe is read once, checked completely (one line per problem, before anything runs) and travels with
the results: the report prints its design, primary measure and success rule as written *before* the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError, check_path_name, read_text

REPO = Path(__file__).resolve().parents[2]
TEACHER = "teacher"
START = "start"  # the shared healed student, measured before any arm trains
KEYS = {"design", "train_recipe", "train", "heal", "seeds", "arms", "reference", "primary", "success",
        "data", "eval", "teacher_cache"}  # fmt: skip
# the measures a study can name as primary: arm-level statistics of eval/study_stats and friends
MEASURES = ("association", "global_shift", "pronoun_mean_abs_gap", "mean_equitability", "winobias_pro_share",
            "crows_stereotype_share", "perplexity_in_domain", "perplexity_other_domain")  # fmt: skip


class StudyError(UserError):
    """A study recipe that cannot run; the message says what to change."""


@dataclass
class EvalSpec:
    """How every model (teacher and students) is measured; the same settings for all."""

    elicitation_split: str = "heldout"  # templates x occupations never used to choose anything
    elicitation_samples: int = 10  # continuations per elicitation prompt
    elicitation_max_new_tokens: int = 12
    bold_per_category: int = 3  # BOLD profession prompts per category (equitability, secondary)
    bold_samples: int = 3
    bold_max_new_tokens: int = 20
    likelihood_max_pairs: int = 200  # WinoBias: first pairs per type (test split); CrowS-Pairs: first pairs
    crows_pairs: bool = True  # CrowS-Pairs, gender pairs (evaluation only)
    perplexity_chars: int = 10_000  # of each held-out text
    perplexity_window: int = 256
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.elicitation_split not in ("heldout", "dev", "all"):
            raise StudyError(
                f"eval: elicitation_split must be heldout, dev or all, got {self.elicitation_split!r}"
            )
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(spec.default, int) and not isinstance(spec.default, bool):
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise StudyError(f"eval: {spec.name} must be an integer >= 1, got {value!r}")


@dataclass
class StudySpec:
    train_recipe: str
    design: str = ""
    train: dict[str, Any] = field(default_factory=dict)
    heal: dict[str, Any] | None = None  # a shared plain-KD healing run every arm starts from
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    reference: str = "plain_kd"
    primary: str = "association"
    success: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    eval: EvalSpec = field(default_factory=EvalSpec)
    teacher_cache: bool = True  # one offline teacher pass per distinct (data, token swap), shared by seeds


def _fail(path: Path, message: str) -> StudyError:
    return StudyError(f"study recipe {path}: {message}")


def load_spec(path: str | Path) -> StudySpec:
    """Read and check a study recipe; every problem is a :class:`StudyError` naming the key to change."""
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
        raise _fail(path, f"must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise _fail(path, f"unknown keys {unknown}; known: {sorted(KEYS)}")
    if "train_recipe" not in raw:
        raise _fail(path, "set train_recipe (the training recipe every arm shares)")
    kinds = {"arms": dict, "train": dict, "heal": dict, "data": dict, "eval": dict, "seeds": list,
             "train_recipe": str, "reference": str, "primary": str, "success": str, "design": str,
             "teacher_cache": bool}  # fmt: skip
    for key, kind in kinds.items():
        if raw.get(key) is not None and not isinstance(raw[key], kind):
            raise _fail(path, f"{key} must be a {kind.__name__}, got {raw[key]!r}")
    eval_raw = raw.pop("eval", None) or {}
    unknown = sorted(set(eval_raw) - {f.name for f in fields(EvalSpec)})
    if unknown:
        raise _fail(path, f"unknown eval keys {unknown}")
    spec = StudySpec(**{k: v for k, v in raw.items() if v is not None}, eval=EvalSpec(**eval_raw))
    recipe = Path(spec.train_recipe)
    if not recipe.is_absolute() and not recipe.exists():
        spec.train_recipe = str(REPO / recipe)
    if not Path(spec.train_recipe).is_file():
        raise _fail(path, f"train_recipe {spec.train_recipe} does not exist")
    if not spec.arms:
        raise _fail(path, "no arms; list them under arms: (name: training-recipe overrides)")
    if {TEACHER, START, "heal"} & set(spec.arms):
        raise _fail(path, f"'{TEACHER}', '{START}' and 'heal' are reserved names; rename that arm")
    for name, overrides in spec.arms.items():  # arm names become folders: runs/<arm>/
        check_path_name(name, f"study recipe {path}: arm name", StudyError)
        if not isinstance(overrides, dict):
            raise _fail(path, f"arm {name}: give a mapping of training-recipe overrides (or {{}})")
        for where, settings in ((f"arm {name}", overrides), ("train", spec.train), ("heal", spec.heal or {})):
            if "seed" in settings:
                raise _fail(path, f"{where}: the seed comes from seeds:, not from overrides")
    if not spec.seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in spec.seeds):
        raise _fail(path, f"seeds must be distinct integers, got {spec.seeds}")
    if len(set(spec.seeds)) != len(spec.seeds):
        raise _fail(path, f"seeds must be distinct integers, got {spec.seeds}")
    if spec.reference not in spec.arms:
        raise _fail(path, f"reference: {spec.reference!r} is not an arm; name the plain-KD arm")
    if spec.primary not in MEASURES:
        raise _fail(path, f"primary: {spec.primary!r} is not a measure; use one of {', '.join(MEASURES)}")
    return spec
