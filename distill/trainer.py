"""``CounterfactualDistillationTrainer``: a ``transformers.Trainer`` that distils a frozen teacher into a
student, optionally against the counterfactually perturbed teacher target (Gupta et al., 2022).

Only ``compute_loss`` (and logging) is overridden; optimisation, checkpoints, resume, DDP, FSDP,
DeepSpeed and W&B are the Trainer's. The loss is

    alpha_kd * KD(student || target) + alpha_clm * CE(student, labels) + alpha_cos * cosine(hidden states)

where the target is the teacher's softened distribution, or with ``perturbation`` set, its role
reversal: the teacher also reads the gender-swapped copy of every row that has a gendered token, its
counterfactual distribution is mapped back through σ and combined with the original (max / mean /
expMean). Rows the swap leaves alone reuse the original distribution (no second teacher pass), and a
swapped row is read again only from its first swapped token, on the original pass's key/value cache
(``teacher_prefix_sharing``; see :func:`distill.teacher_targets.teacher_logits_with_counterfactuals`). The
target comes from a :class:`~distill.teacher_targets.TeacherTargets` -- the live teacher, or an offline
teacher cache when there is no teacher -- and the role reversal is computed inside the KD loss's chunks.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import time
from collections import defaultdict
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from transformers.utils import logging

from counterfactuals import PairMap

from .config import DistillationConfig
from .guards import (
    STAGING_DIR,
    NonFiniteError,
    StallWatchdog,
    commit_checkpoint,
    describe_positions,
    nonfinite_parameters,
    nonfinite_positions,
    redact_mapping,
)
from .losses import causal_lm_loss, hidden_cosine_loss
from .models import ensure_pad_token, resolve_dtype
from .teacher_cache import TeacherCacheCollator
from .teacher_targets import CachedTeacherTargets, LiveTeacherTargets, TeacherTargets
from .token_swap import run_pair_map

RESOLVED_CONFIG_NAME = "fairdistill_config.json"
logger = logging.get_logger(__name__)


def output_vocab_size(model: torch.nn.Module) -> int:
    """Rows of the model's output embedding (the logits' last dimension)."""
    return model.get_output_embeddings().weight.shape[0]


def _is_datasets_object(value: Any) -> bool:
    """A ``datasets`` dataset, or a dict holding one (text the trainer prepares itself)."""
    values = value.values() if isinstance(value, dict) else [value]
    return any(type(v).__module__.split(".")[0] == "datasets" for v in values)


class SaveResolvedConfigCallback(TrainerCallback):
    """Writes the resolved run configuration (JSON, no pickle) next to every checkpoint, so a
    checkpoint says how it was made."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(folder):
                write_resolved_config(args, folder)


def write_resolved_config(args: DistillationConfig, folder: str) -> str:
    path = os.path.join(folder, RESOLVED_CONFIG_NAME)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(args.to_dict(), f, indent=2, sort_keys=True, default=str)
    return path


class CounterfactualDistillationTrainer(Trainer):
    """Distils ``teacher_model`` into ``model``; see the module docstring for the loss.

    Args:
        model: the student (a ``PreTrainedModel`` or a PEFT model).
        teacher_model: the teacher; frozen, in eval mode, never wrapped in DDP.
        args: a :class:`DistillationConfig`.
        pair_map: the token swap; built from ``processing_class`` when ``args.perturbation`` is set
            and none is given.
        processing_class: the tokenizer (teacher and student must share it). One without a pad token
            gets its EOS token as pad token.
        train_dataset, eval_dataset: tokenized blocks, or a ``datasets.Dataset`` of raw text
            (``args.text_column``) or of chat ``messages``, which the trainer augments (``args.cda``,
            training split only), tokenizes and packs itself (``args.block_size``); see
            :mod:`distill.trainer_data`.
        Other keyword arguments go to ``transformers.Trainer``.
    """

    def __init__(
        self,
        model: PreTrainedModel | torch.nn.Module,
        teacher_model: PreTrainedModel | None,
        args: DistillationConfig,
        pair_map: PairMap | None = None,
        processing_class=None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(args, DistillationConfig):
            raise TypeError(f"args must be a DistillationConfig, got {type(args).__name__}")
        # teacher_model=None: every target comes from an offline teacher cache (distill/teacher_cache.py)
        student_vocab = output_vocab_size(model)
        teacher_vocab = student_vocab if teacher_model is None else output_vocab_size(teacher_model)
        if student_vocab != teacher_vocab:
            raise ValueError(
                f"vocabulary sizes differ: student V={student_vocab}, teacher V={teacher_vocab}. "
                "The KD target is a distribution over the teacher's tokens, so both must share the "
                "tokenizer: build the student from the teacher (student_init=layers or lora) or resize its "
                "embeddings to the teacher's vocabulary"
            )
        if pair_map is not None and args.perturbation is None:
            raise ValueError(
                "a pair_map was given but perturbation is unset: set perturbation (max, mean or expMean) to "
                "distil against the role-reversal target, or pass no pair_map for plain KD"
            )
        if args.perturbation is not None and pair_map is None:
            if processing_class is None:
                raise ValueError("perturbation needs the tokenizer (processing_class=...) or a pair_map")
            pair_map = run_pair_map(args, processing_class, teacher_vocab)
        if pair_map is not None and pair_map.vocab_size != teacher_vocab:
            raise ValueError(
                f"the pair map covers {pair_map.vocab_size} tokens but the teacher has {teacher_vocab}; "
                "build it with build_pair_map(tokenizer, vocab_size=teacher.config.vocab_size)"
            )
        if isinstance(processing_class, PreTrainedTokenizerBase):
            # the default collator pads, and refuses a tokenizer without a pad token (GPT-2's has none)
            ensure_pad_token(processing_class)
        for key, is_train in (("train_dataset", True), ("eval_dataset", False)):  # text in: see trainer_data
            if _is_datasets_object(kwargs.get(key)):  # `datasets` is imported only when one is passed
                from .trainer_data import prepare_dataset

                kwargs[key] = prepare_dataset(kwargs.get(key), processing_class, args, train=is_train)
        callbacks = list(kwargs.pop("callbacks", None) or []) + [SaveResolvedConfigCallback()]
        # Trainer's default collator, plus tensors for teacher-cache columns when a dataset carries them
        kwargs["data_collator"] = kwargs.get("data_collator") or TeacherCacheCollator(processing_class)
        super().__init__(
            model=model, args=args, processing_class=processing_class, callbacks=callbacks, **kwargs
        )
        # Our compute_loss normalises by the step's token count itself: Trainer must count it
        # (num_items_in_batch) and must not divide by the accumulation steps again.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True
        # and count only the shifted labels (position t predicts t+1), whatever the model's loss type
        self._loss_shifts_labels = True
        if self.args.n_gpu > 1:
            raise ValueError(
                f"{self.args.n_gpu} GPUs are visible to one process (torch DataParallel), which this trainer "
                "does not support: launch with `accelerate launch` (one process per GPU) or set "
                "CUDA_VISIBLE_DEVICES to one GPU"
            )
        # a sharded teacher (FSDP, ZeRO-3) must run the same number of forward passes on every rank
        sharded = self.is_fsdp_enabled or (self.is_deepspeed_enabled and _zero_stage(self.accelerator) == 3)
        self._joint_teacher_pass = args.joint_teacher_pass or sharded
        # a suffix pass per group of rows would vary the number of passes between ranks
        self._prefix_sharing = args.teacher_prefix_sharing and not sharded
        self.teacher = None if teacher_model is None else self._prepare_teacher(teacher_model)
        self.pair_map = pair_map.to(self.args.device) if pair_map is not None else None
        # the one source of KD targets: the live teacher, or (no teacher) the batches' teacher-cache columns
        self.teacher_targets: TeacherTargets = (
            CachedTeacherTargets(args, self.pair_map, vocab_size=student_vocab)
            if self.teacher is None
            else LiveTeacherTargets(
                self.teacher,
                args,
                self.pair_map,
                joint=self._joint_teacher_pass,
                prefix_sharing=self._prefix_sharing,
            )
        )
        self._tokens_since_log, self._last_log_time = 0, time.perf_counter()
        # non-finite loss terms (issue 18): flags of the last micro-batch, steps skipped so far
        self._finite_terms: tuple[list[str], torch.Tensor] | None = None
        self._skip_this_step, self.nonfinite_skipped_steps = False, 0
        if args.nonfinite_policy == "skip_step":
            self.add_callback(_SkipNonFiniteStep(self))
        if self.accelerator.num_processes > 1:  # a stopped peer must end the run, not hang it
            self.add_callback(StallWatchdog(args.ddp_timeout, rank=args.process_index))
        self._metrics: dict[str, dict[str, list[torch.Tensor]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }

    # --- teacher -------------------------------------------------------------------------------------

    def _prepare_teacher(self, teacher: PreTrainedModel) -> torch.nn.Module:
        dtype = resolve_dtype(self.args.teacher_dtype)
        if dtype == "auto":  # follow the run's mixed precision; in fp32 runs keep the loaded dtype
            dtype = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else None
        if dtype is not None:
            teacher = teacher.to(dtype)
        teacher.eval()
        teacher.requires_grad_(False)
        if self.is_deepspeed_enabled:
            return _prepare_deepspeed_teacher(teacher, self.accelerator)
        if self.is_fsdp_enabled:
            return _prepare_fsdp_teacher(teacher, self.accelerator)
        # evaluation_mode: placed on the device, never wrapped in DDP (it has no gradients to sync)
        return self.accelerator.prepare_model(teacher, evaluation_mode=True)

    # --- loss ----------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        input_ids, labels = inputs["input_ids"], inputs["labels"]
        attention_mask = inputs.get("attention_mask")
        need_hidden = args.alpha_cos > 0
        outputs = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=need_hidden,
            use_cache=False,
        )
        mask = labels[:, 1:] != -100  # position t predicts token t+1
        target = self.teacher_targets(inputs, need_hidden=need_hidden)

        terms: dict[str, torch.Tensor] = {}
        if args.alpha_kd > 0:
            terms["kd"] = target.kd_loss(outputs.logits[:, :-1], mask, args, num_items_in_batch)
        if args.alpha_clm > 0 or not model.training:  # at eval it is logged for the perplexity
            terms["clm"] = causal_lm_loss(outputs.logits, labels, num_items_in_batch=num_items_in_batch)
        if need_hidden:
            # the hidden state at position t is the one that predicts token t+1: same mask as KD
            terms["cos"] = hidden_cosine_loss(
                outputs.hidden_states[-1][:, :-1], target.hidden[:, :-1], mask, num_items_in_batch
            )
        weights = {"kd": args.alpha_kd, "clm": args.alpha_clm, "cos": args.alpha_cos}
        loss = sum(weights[name] * term for name, term in terms.items())
        if model.training:  # one fused check, read by training_step (no host sync here)
            self._finite_terms = (
                list(terms),
                torch.isfinite(torch.stack([t.detach() for t in terms.values()])),
            )

        mode = "train" if model.training else "eval"
        if mode == "train":
            self._tokens_since_log += input_ids.numel()
        # Each term is normalised by the whole step's token count (all micro-batches, all ranks); for
        # logging, keep this call's token-weighted sum and count, so log() reports sum / count.
        counted = mask.sum()
        normaliser = counted if num_items_in_batch is None else num_items_in_batch
        self._metrics[mode]["_tokens"].append(counted.detach().float())
        for name, term in terms.items():
            self._metrics[mode][f"loss_{name}"].append(term.detach() * normaliser)
        if args.perturbation is not None:
            self._metrics[mode]["counterfactual_row_share"].append(
                torch.tensor(target.counterfactual_row_share)
            )

        if args.average_tokens_across_devices and num_items_in_batch is not None:
            # num_items_in_batch counts every rank's tokens and DDP averages gradients over ranks
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    # --- non-finite losses and weights (issue 18) -------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        names, finite = self._finite_terms
        # the one host sync this check costs; Trainer's logging_nan_inf_filter reads the step loss right
        # after, which waits for the same backward pass, so with it on (the default) nothing is added
        if not bool(finite.all()):
            bad = [name for name, ok in zip(names, finite.tolist(), strict=True) if not ok]
            message = self._describe_nonfinite(model, inputs, bad)
            if self.args.nonfinite_policy == "error":
                raise NonFiniteError(
                    f"{message}. Check the teacher and the data (--nonfinite_policy skip_step skips them)"
                )
            self._skip_this_step = True
            logger.warning("%s; skipping this optimizer step (nonfinite_policy=skip_step)", message)
            loss = torch.zeros_like(loss)
        return loss

    @torch.no_grad()
    def _describe_nonfinite(self, model, inputs, bad_terms: list[str]) -> str:
        """Which loss terms, at which step, and which rows of the micro-batch: the student's logits and
        the teacher's target are computed again (only now, after the failure) to find the rows."""
        where = []
        input_ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits[:, :-1]
        sources = {"student logits": logits}
        if "kd" in bad_terms:
            target = self.teacher_targets(inputs, need_hidden=False).log_probs(self.args.temperature)
            sources["teacher target"] = target
        for source, values in sources.items():
            positions = nonfinite_positions(values)
            if positions:
                where.append(f"{source} non-finite at {describe_positions(positions)}")
        terms = ", ".join(f"loss_{name}" for name in bad_terms)
        found = "; ".join(where) or "no non-finite logit or target found (look at the loss settings)"
        return f"non-finite {terms} at step {self.state.global_step + 1} (rows of this micro-batch): {found}"

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the mean of each loss term (and the share of rows the swap changed) since the last log,
        and at evaluation the student's perplexity."""
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        metrics = self._metrics[mode]
        if metrics.get("_tokens"):
            # one gather for everything: per-rank sums of every value, then totals over ranks
            names = [name for name in metrics if name != "_tokens"]
            sums = torch.stack([torch.stack(metrics[n]).float().sum().to(self.args.device) for n in names])
            tokens = torch.stack(metrics["_tokens"]).sum().to(self.args.device)
            totals = self.accelerator.gather(torch.cat([sums, tokens.reshape(1)]).reshape(1, -1)).sum(0)
            for name, total in zip(names, totals[:-1], strict=True):
                if name.startswith("loss_"):
                    logs[f"{prefix}{name}"] = (total / totals[-1].clamp(min=1)).item()  # per token
                else:
                    logs[f"{prefix}{name}"] = (
                        total / (len(metrics[name]) * self.accelerator.num_processes)
                    ).item()
        metrics.clear()
        if mode == "train" and self.args.nonfinite_policy == "skip_step":
            logs["nonfinite_skipped_steps"] = self.nonfinite_skipped_steps
        if "eval_loss_clm" in logs:  # the student's own next-token loss on the eval blocks, as perplexity
            logs["eval_perplexity"] = math.exp(min(logs["eval_loss_clm"], 50.0))
        if mode == "train" and "loss" in logs:
            # throughput since the last log, all ranks together (packed blocks: every token is real)
            now = time.perf_counter()
            tokens = self._tokens_since_log * self.accelerator.num_processes
            logs["tokens_per_second"] = tokens / max(now - self._last_log_time, 1e-9)
            self._tokens_since_log, self._last_log_time = 0, now
        super().log(logs, start_time)

    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_DIR) if getattr(self, "_staging_checkpoint", False) else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        """Atomic checkpoints: Trainer writes checkpoint-N under ``tmp-checkpoints/`` (it asks
        ``_get_output_dir`` where), and the folder is renamed into place only once every rank has written
        its files (weights, optimizer, scheduler, RNG states, trainer_state.json). A run killed mid-save
        leaves the previous checkpoints as they were and no half-written checkpoint-N."""
        run_dir = self._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged, final = os.path.join(run_dir, STAGING_DIR, name), os.path.join(run_dir, name)
        if self.state.best_global_step:  # Trainer looks for the best checkpoint beside the staged one
            best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}")
            if os.path.isdir(best):
                self.state.best_model_checkpoint = best
        if self.args.should_save and os.path.isdir(staged):
            shutil.rmtree(staged)  # left by a save of this step that was killed
        self.accelerator.wait_for_everyone()
        self._staging_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_checkpoint = False
        self.accelerator.wait_for_everyone()  # every rank's files are in
        if self.args.should_save:
            if self.state.best_model_checkpoint == staged:  # this step is the best: name its final place
                self.state.best_model_checkpoint = final
                self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
            commit_checkpoint(staged, final)
            # Trainer rotated the staging folder; the limit applies to the run's checkpoints
            rotate_checkpoints(
                run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True
            )
        self.accelerator.wait_for_everyone()

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        folder = output_dir or self.args.output_dir
        named = state_dict.items() if state_dict is not None else self.model.named_parameters()
        broken = nonfinite_parameters(named)
        if broken:  # never a model (or checkpoint) with NaN/inf weights
            shown = ", ".join(broken[:5]) + (f" and {len(broken) - 5} more" if len(broken) > 5 else "")
            raise NonFiniteError(
                f"refusing to save {folder}: non-finite weights in {shown} "
                f"(step {self.state.global_step}); nothing was written"
            )
        # Trainer's _save also pickles the whole TrainingArguments (hub_token included) into
        # training_args.bin; the resolved JSON config (secrets redacted) says how the run was made, and
        # resuming does not read the pickle. Secrets are blanked while it is written, then it is removed.
        secrets = {f.name: getattr(self.args, f.name) for f in dataclasses.fields(self.args)}
        secrets = {name: secrets[name] for name, v in redact_mapping(secrets).items() if v != secrets[name]}
        try:
            for name in secrets:
                object.__setattr__(self.args, name, None)
            super()._save(output_dir, state_dict)
        finally:
            for name, value in secrets.items():
                object.__setattr__(self.args, name, value)
        if self.args.should_save:  # Trainer calls _save on every rank; only the saving one writes
            pickle = os.path.join(folder, TRAINING_ARGS_NAME)
            if os.path.exists(pickle):
                os.remove(pickle)
            write_resolved_config(self.args, folder)


class _SkipNonFiniteStep(TrainerCallback):
    """nonfinite_policy=skip_step: drops the gradients of a step whose loss was not finite, so the
    optimizer leaves every weight as it was (torch optimizers skip parameters without a gradient). Under
    DDP the ranks agree first: one all-reduce of a flag per step, only with this policy."""

    def __init__(self, trainer: CounterfactualDistillationTrainer) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer
        skip = trainer._skip_this_step
        if trainer.accelerator.num_processes > 1:
            flag = torch.tensor([float(skip)], device=args.device)
            skip = bool(trainer.accelerator.reduce(flag, reduction="sum").item() > 0)
        if skip:
            for parameter in trainer.model.parameters():
                parameter.grad = None
            trainer.nonfinite_skipped_steps += 1
        trainer._skip_this_step = False


def _prepare_deepspeed_teacher(teacher: PreTrainedModel, accelerator) -> torch.nn.Module:
    """Wrap the frozen teacher in a DeepSpeed inference engine sharing the student's ZeRO stage
    (as TRL does for reference models), so a ZeRO-3 teacher is partitioned too."""
    import deepspeed

    plugin = accelerator.state.deepspeed_plugin
    config = copy.deepcopy(plugin.deepspeed_config)
    if config["zero_optimization"]["stage"] != 3:
        config["zero_optimization"]["stage"] = 0  # lower stages gain nothing for a model without optimiser
    hidden = getattr(teacher.config, "hidden_size", None)
    if hidden is not None and config["zero_optimization"]["stage"] == 3:
        config["zero_optimization"].update(
            {
                "reduce_bucket_size": hidden * hidden,
                "stage3_param_persistence_threshold": 10 * hidden,
                "stage3_prefetch_bucket_size": 0.9 * hidden * hidden,
            }
        )
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()
    return engine


def _prepare_fsdp_teacher(teacher: PreTrainedModel, accelerator) -> torch.nn.Module:
    """Shard the frozen teacher with the run's FSDP plugin settings. ``prepare_model(...,
    evaluation_mode=True)`` would only move it to the device, leaving a full copy per GPU."""
    plugin = accelerator.state.fsdp_plugin
    if plugin.fsdp_version == 2:
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        return fsdp2_prepare_model(accelerator, teacher)
    from torch.distributed.fsdp import FullyShardedDataParallel

    plugin.set_auto_wrap_policy(teacher)
    return FullyShardedDataParallel(
        teacher,
        sharding_strategy=plugin.sharding_strategy or plugin.reshard_after_forward,
        cpu_offload=plugin.cpu_offload,
        auto_wrap_policy=plugin.auto_wrap_policy,
        mixed_precision=plugin.mixed_precision_policy,
        sync_module_states=plugin.sync_module_states,
        backward_prefetch=plugin.backward_prefetch,
        forward_prefetch=plugin.forward_prefetch,
        use_orig_params=plugin.use_orig_params,
        param_init_fn=plugin.param_init_fn,
        ignored_modules=plugin.ignored_modules,
        limit_all_gathers=plugin.limit_all_gathers,
        device_id=accelerator.device,
    )


def _zero_stage(accelerator) -> int:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return int(plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0)) if plugin else 0
