"""From a recipe to what a run trains on: parse a YAML recipe plus ``--key value`` overrides into a
:class:`DistillationConfig`, and prepare the recipe's packed train/eval blocks.

Library code, shared by the launcher (``distill/train.py``), the teacher-cache writer and the
application layer; it never starts a run.
"""

from __future__ import annotations

import argparse
import difflib
import warnings
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import torch
import yaml

from counterfactuals import Lexicon, PairMap, load_lexicon

from .config import DistillationConfig, config_parser
from .data import PreparedData, prepare_lm_datasets
from .guards import first_vocabulary_difference, vocabulary_fingerprint

__all__ = [
    "RecipeError",
    "check_student_tokenizer",
    "gendered_share",
    "parse_config",
    "prepare_data",
    "recipe_lexicon",
    "warn_if_little_gendered_text",
]


class RecipeError(ValueError):
    """A recipe or override the parser cannot use; the message says which key and what to do."""


def parse_config(argv: Sequence[str] | None = None) -> DistillationConfig:
    """``--config FILE.yaml`` gives the defaults; every other ``--key value`` overrides them."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    known, overrides = pre.parse_known_args(argv)
    parser = config_parser()  # --help lists --config and every field, with its allowed values
    if known.config is not None:
        recipe = _read_recipe(known.config)
        parser.set_defaults(**recipe)
        # a recipe may provide what the parser would otherwise require on the command line
        for action in parser._actions:
            if action.dest in recipe:
                action.required = False
    (config,) = parser.parse_args_into_dataclasses(args=list(overrides))
    if config.teacher_name_or_path is None:
        raise RecipeError("no teacher: set teacher_name_or_path in the recipe or pass --teacher_name_or_path")
    if config.dataset_name is None:
        raise RecipeError("no training text: set dataset_name in the recipe or pass --dataset_name")
    return config


def _read_recipe(path: Path) -> dict:
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise RecipeError(f"recipe {path} does not exist; recipes live in recipes/*.yaml") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {path} is not valid YAML: {err}") from None
    if not isinstance(recipe, dict):
        raise RecipeError(
            f"recipe {path} must be a mapping of DistillationConfig fields, got {type(recipe).__name__}"
        )
    known = {f.name for f in fields(DistillationConfig)}
    for key in recipe:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise RecipeError(f"recipe {path}: unknown key '{key}'{hint}")
    return recipe


def recipe_lexicon(config: DistillationConfig) -> Lexicon | None:
    """The custom lexicon of ``--lexicon`` (None: the built-in one); errors name the file and line."""
    return None if config.lexicon is None else load_lexicon(config.lexicon)


def prepare_data(config: DistillationConfig, tokenizer) -> PreparedData:
    """The recipe's packed train/eval blocks: one function, so that a teacher cache
    (``python -m distill.teacher_cache``) is written for exactly the blocks a run trains on."""
    return prepare_lm_datasets(
        dataset_name=config.dataset_name,
        tokenizer=tokenizer,
        block_size=config.block_size,
        text_column=config.text_column,
        dataset_config_name=config.dataset_config_name,
        train_split=config.train_split,
        eval_split=config.eval_split,
        validation_split_percentage=config.validation_split_percentage,
        max_train_samples=config.max_train_samples,
        max_eval_samples=config.max_eval_samples,
        cda=config.cda,
        cda_names=config.swap_names,
        cda_lexicon=recipe_lexicon(config) if config.cda is not None else None,
        num_proc=config.preprocessing_num_workers,
        seed=config.seed,
        main_process_first=config.main_process_first,
    )


def check_student_tokenizer(teacher_tokenizer, student_tokenizer, student: str) -> None:
    """Refuse a student whose tokenizer maps tokens to ids differently from the teacher's: the KD target
    is a distribution over the teacher's ids, so equal sizes are not enough."""
    if vocabulary_fingerprint(teacher_tokenizer) != vocabulary_fingerprint(student_tokenizer):
        raise ValueError(
            f"the student's tokenizer ({student}) is not the teacher's: "
            f"{first_vocabulary_difference(teacher_tokenizer, student_tokenizer)}. Distillation needs the "
            "teacher's vocabulary: use student_init=layers/lora/config, or a student trained with it"
        )


GENDERED_SAMPLE_BLOCKS = 2000
LOW_GENDERED_SHARE = 0.01


def gendered_share(blocks, pair_map: PairMap, limit: int = GENDERED_SAMPLE_BLOCKS) -> float:
    """Share of (the first ``limit``) packed blocks in which the pair map swaps at least one token."""
    n = min(len(blocks), limit)
    if n == 0:
        return 0.0
    ids = torch.tensor(blocks.select(range(n))["input_ids"])
    return float(pair_map.swap_ids(ids)[1].float().mean())


def warn_if_little_gendered_text(config: DistillationConfig, data: PreparedData, pair_map) -> None:
    """Perturbation and CDA act only on gendered text: say so, once, when the corpus has (almost) none."""
    shares = {}
    if config.perturbation is not None and pair_map is not None:
        shares[f"perturbation={config.perturbation}: training blocks with a gendered token"] = gendered_share(
            data.train, pair_map
        )
    if config.cda is not None and "cda_swapped_share" in data.stats:
        shares[f"cda={config.cda}: documents the swap changes"] = data.stats["cda_swapped_share"]
    for what, share in shares.items():
        if share < LOW_GENDERED_SHARE:
            warnings.warn(
                f"{what}: {share:.1%} of the training data ({config.dataset_name}); with so little gendered "
                "text the counterfactual method barely changes the run. Check the corpus and the lexicon",
                stacklevel=2,
            )
