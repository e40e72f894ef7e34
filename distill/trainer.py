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
(``teacher_prefix_sharing``; see :func:`teacher_logits_with_counterfactuals`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from collections import defaultdict
from typing import Any, NamedTuple

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.utils import logging

try:  # transformers >= 4.56: caches made of per-layer objects
    from transformers.cache_utils import DynamicLayer
except ImportError:  # older caches are never cut: the counterfactual pass then runs in full
    DynamicLayer = None

from counterfactuals import PairMap, build_pair_map

from .config import DistillationConfig
from .guards import (
    NonFiniteError,
    StallWatchdog,
    describe_positions,
    nonfinite_parameters,
    nonfinite_positions,
    redact_mapping,
)
from .losses import (
    CounterfactualSuffix,
    causal_lm_loss,
    hidden_cosine_loss,
    kd_loss,
    role_reversal,
    role_reversal_reference,
)
from .models import ensure_pad_token, resolve_dtype
from .teacher_cache import TeacherCacheCollator, cached_teacher_targets, has_teacher_cache
from .trainer_data import prepare_dataset

RESOLVED_CONFIG_NAME = "fairdistill_config.json"
logger = logging.get_logger(__name__)


def output_vocab_size(model: torch.nn.Module) -> int:
    """Rows of the model's output embedding (the logits' last dimension)."""
    return model.get_output_embeddings().weight.shape[0]


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


class TeacherLogits(NamedTuple):
    """What the teacher passes of one batch give :func:`role_reversal`."""

    logits: torch.Tensor  # (B, T, V) on the original rows
    suffixes: list[CounterfactualSuffix]  # counterfactual logits on the target's positions (:-1)
    hidden: torch.Tensor | None  # (B, T, H) last hidden state on the original rows, when asked for
    changed_rows: int  # rows the swap changed


def teacher_logits_with_counterfactuals(
    teacher: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    swapped_ids: torch.Tensor,
    changed: torch.Tensor,
    *,
    need_hidden: bool = False,
    joint: bool = True,
    prefix_sharing: bool = True,
    max_suffix_passes: int = 4,
) -> TeacherLogits:
    """The teacher's logits on ``input_ids`` and, for the rows the swap changed, on ``swapped_ids``.

    Without ``prefix_sharing`` every changed row is read again in full, in the same forward pass as the
    originals when ``joint`` (one larger pass), else in a second one. With it, the counterfactual pass
    of a row starts at its first swapped token f: a causal teacher's logits at positions < f read the
    same context in both views, so they are the original's and are not recomputed, and the original
    pass's key/value cache, cut to the first f positions, stands in for the shared prefix. Rows are
    grouped by f (at most ``max_suffix_passes`` groups, each starting at its smallest f, chosen to run
    the fewest teacher tokens); rows whose first swap is at position 0 are read in full (in the
    original pass when ``joint``), and rows whose only swap is the last token need no pass at all (the
    target stops one position before it). Teachers whose cache cannot be cut (sliding-window layers)
    get full passes. Under ``torch.inference_mode`` the result equals the full passes' up to float
    rounding: tests/test_fast_paths.py checks that on GPT-2 and Llama teachers with padding.
    """
    n_rows, length = input_ids.shape
    rows = changed.nonzero().squeeze(-1)  # host sync: which rows (and how many) need a second view
    changed_rows = rows.numel()
    groups: list[tuple[torch.Tensor, int]] = []
    if rows.numel() and prefix_sharing:
        first_swap = (swapped_ids[rows] != input_ids[rows]).int().argmax(dim=-1)
        needed = first_swap < length - 1
        rows, first_swap = rows[needed], first_swap[needed]
        for members, start in _suffix_groups(first_swap.tolist(), length, max_suffix_passes):
            groups.append((rows[members], start))
    elif rows.numel():
        groups.append((rows, 0))
    # rows read from position 0 (one group at most: splitting rows of equal start only adds passes)
    full_groups = [group_rows for group_rows, start in groups if start == 0]
    full = torch.cat(full_groups) if full_groups else None
    shared = [(group_rows, start) for group_rows, start in groups if start > 0]
    in_original_pass = joint and full is not None

    ids, mask = input_ids, attention_mask
    if in_original_pass:
        ids = torch.cat([input_ids, swapped_ids[full]])
        mask = None if attention_mask is None else torch.cat([attention_mask, attention_mask[full]])
    out = teacher(
        input_ids=ids, attention_mask=mask, output_hidden_states=need_hidden, use_cache=bool(shared)
    )
    suffixes: list[CounterfactualSuffix] = []
    if in_original_pass:
        suffixes.append(CounterfactualSuffix(full, 0, out.logits[n_rows:, :-1]))
    elif full is not None:
        cf = teacher(
            input_ids=swapped_ids[full], attention_mask=_rows_of(attention_mask, full), use_cache=False
        )
        suffixes.append(CounterfactualSuffix(full, 0, cf.logits[:, :-1]))
    layers = _croppable_cache_layers(getattr(out, "past_key_values", None)) if shared else None
    for group_rows, start in shared:
        group_mask = _rows_of(attention_mask, group_rows)
        if layers is None:  # no cache to share: the full pass, of which only the suffix is used
            cf = teacher(input_ids=swapped_ids[group_rows], attention_mask=group_mask, use_cache=False)
            suffixes.append(CounterfactualSuffix(group_rows, start, cf.logits[:, start:-1]))
            continue
        prefix = DynamicCache()
        for index, (keys, values) in enumerate(layers):
            prefix.update(keys[group_rows, :, :start], values[group_rows, :, :start], index)
        # the mask covers prefix and suffix; position ids follow from the cache length, as in generation
        cf = teacher(
            input_ids=swapped_ids[group_rows, start:],
            attention_mask=group_mask,
            past_key_values=prefix,
            use_cache=True,
        )
        suffixes.append(CounterfactualSuffix(group_rows, start, cf.logits[:, :-1]))
    hidden = out.hidden_states[-1][:n_rows] if need_hidden else None
    return TeacherLogits(out.logits[:n_rows], suffixes, hidden, changed_rows)


def _rows_of(attention_mask: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    return None if attention_mask is None else attention_mask[rows]


def _suffix_groups(first_swap: list[int], length: int, max_groups: int) -> list[tuple[list[int], int]]:
    """Groups of row indices and the position each group's counterfactual pass starts at (its smallest
    first swap), chosen so that the teacher reads the fewest tokens: a group of n rows starting at s
    reads n * (length - s). At most ``max_groups`` groups (passes), and a further one only where it
    saves a token. Dynamic programme over the rows sorted by first swap (exact; O(max_groups * n^2)
    for n swapped rows, nothing next to a forward pass at per-device batch sizes)."""
    if not first_swap:
        return []
    order = sorted(range(len(first_swap)), key=first_swap.__getitem__)
    starts = [first_swap[i] for i in order]
    n = len(starts)
    # best[j]: fewest tokens covering the first j sorted rows; cut[k][j]: where its last group begins
    best = [0.0] + [math.inf] * n
    cuts: list[list[int]] = []
    for _ in range(max_groups):
        new, cut = [0.0] + [math.inf] * n, [0] * (n + 1)
        for j in range(1, n + 1):
            for i in range(j):
                cost = best[i] + (j - i) * (length - starts[i]) + 1  # + 1: fewer passes on ties
                if cost < new[j]:
                    new[j], cut[j] = cost, i
        if new[n] >= best[n]:
            break
        best = new
        cuts.append(cut)
    groups, j = [], n
    for cut in reversed(cuts):
        i = cut[j]
        groups.append(([order[k] for k in range(i, j)], starts[i]))
        j = i
        if j == 0:
            break
    return groups[::-1]


def _croppable_cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Per layer (keys, values) of shape (rows, heads, positions, head dim), when the cache holds every
    position of a plain attention layer (transformers' DynamicLayer); else None (sliding windows,
    linear attention, caches of older transformers)."""
    layers = getattr(cache, "layers", None)
    if not layers or not all(type(layer) is DynamicLayer and layer.is_initialized for layer in layers):
        return None
    return [(layer.keys, layer.values) for layer in layers]


def reference_teacher_target(
    teacher: torch.nn.Module,
    pair_map: PairMap,
    args: DistillationConfig,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    joint: bool = False,
) -> torch.Tensor:
    """The role-reversal KD target computed the plain way: a full teacher pass over the originals and
    over every swapped row (one pass over both when ``joint``, as the trainer did before prefix
    sharing), the counterfactual logits of unchanged rows copied from the originals, and
    :func:`role_reversal_reference`. The ground truth tests and benchmarks hold the trainer's fast paths
    to; never used in training."""
    with torch.inference_mode():
        swapped_ids, changed = pair_map.swap_ids(input_ids, attention_mask)
        rows = changed.nonzero().squeeze(-1)
        if joint and rows.numel():
            mask = None if attention_mask is None else torch.cat([attention_mask, attention_mask[rows]])
            both = teacher(
                input_ids=torch.cat([input_ids, swapped_ids[rows]]), attention_mask=mask, use_cache=False
            )
            logits, cf = both.logits[: len(input_ids)], both.logits[len(input_ids) :]
        else:
            logits = teacher(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            cf = None
            if rows.numel():
                cf = teacher(
                    input_ids=swapped_ids[rows],
                    attention_mask=_rows_of(attention_mask, rows),
                    use_cache=False,
                ).logits
        logits = logits[:, :-1]
        counterfactual = logits if cf is None else logits.index_copy(0, rows, cf[:, :-1])
        return role_reversal_reference(
            logits,
            counterfactual,
            pair_map,
            args.perturbation,
            temperature=args.temperature,
            scope=args.perturbation_scope,
            context_ids=input_ids[:, :-1],
            chunk_size=args.kd_chunk_size,
        )


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
        if args.perturbation is not None and pair_map is None:
            if processing_class is None:
                raise ValueError("perturbation needs the tokenizer (processing_class=...) or a pair_map")
            pair_map = build_pair_map(processing_class, names=args.swap_names, vocab_size=teacher_vocab)
        if pair_map is not None and pair_map.vocab_size != teacher_vocab:
            raise ValueError(
                f"the pair map covers {pair_map.vocab_size} tokens but the teacher has {teacher_vocab}; "
                "build it with build_pair_map(tokenizer, vocab_size=teacher.config.vocab_size)"
            )
        if isinstance(processing_class, PreTrainedTokenizerBase):
            # the default collator pads, and refuses a tokenizer without a pad token (GPT-2's has none)
            ensure_pad_token(processing_class)
        for key, is_train in (("train_dataset", True), ("eval_dataset", False)):  # text in: see trainer_data
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

    @torch.inference_mode()
    def _teacher_targets(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, need_hidden: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """(KD target for positions [:, :-1], teacher last hidden state or None, share of rows swapped).

        The target is raw teacher logits without perturbation, else role-reversal log-probabilities."""
        args = self.args
        if self.pair_map is None:
            out = self.teacher(
                input_ids=input_ids,
                attention_mask=attention_mask,
                output_hidden_states=need_hidden,
                use_cache=False,
            )
            return out.logits[:, :-1], out.hidden_states[-1] if need_hidden else None, 0.0
        swapped_ids, changed = self.pair_map.swap_ids(input_ids, attention_mask)
        passes = teacher_logits_with_counterfactuals(
            self.teacher,
            input_ids,
            attention_mask,
            swapped_ids,
            changed,
            need_hidden=need_hidden,
            joint=self._joint_teacher_pass,
            prefix_sharing=self._prefix_sharing,
            max_suffix_passes=args.teacher_suffix_passes,
        )
        target = role_reversal(
            passes.logits[:, :-1],
            None,  # rows and positions no suffix covers read a neutral (unchanged) context
            self.pair_map,
            args.perturbation,
            temperature=args.temperature,
            scope=args.perturbation_scope,
            context_ids=input_ids[:, :-1],
            chunk_size=args.kd_chunk_size,
            counterfactual_suffixes=passes.suffixes,
        )
        return target, passes.hidden, passes.changed_rows / len(input_ids)

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
        # --- offline teacher cache (distill/teacher_cache.py): the batch carries the teacher's top-k ---
        if self.teacher is None or has_teacher_cache(inputs):
            target, teacher_hidden, changed_share = cached_teacher_targets(
                inputs, args, self.pair_map, vocab_size=outputs.logits.shape[-1], need_hidden=need_hidden
            )
        else:
            target, teacher_hidden, changed_share = self._teacher_targets(
                input_ids, attention_mask, need_hidden
            )
        # --- end of the teacher-cache hook --------------------------------------------------------------

        terms: dict[str, torch.Tensor] = {}
        if args.alpha_kd > 0:
            terms["kd"] = kd_loss(
                outputs.logits[:, :-1],
                target,
                mask,
                temperature=args.temperature,
                beta=args.kd_beta,
                scale_by_temperature_squared=args.scale_kd_by_temperature_squared,
                num_items_in_batch=num_items_in_batch,
                chunk_size=args.kd_chunk_size,
                teacher_is_log_probs=self.pair_map is not None,
            )
        if args.alpha_clm > 0 or not model.training:  # at eval it is logged for the perplexity
            terms["clm"] = causal_lm_loss(outputs.logits, labels, num_items_in_batch=num_items_in_batch)
        if need_hidden:
            # the hidden state at position t is the one that predicts token t+1: same mask as KD
            terms["cos"] = hidden_cosine_loss(
                outputs.hidden_states[-1][:, :-1], teacher_hidden[:, :-1], mask, num_items_in_batch
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
        if self.pair_map is not None:
            self._metrics[mode]["counterfactual_row_share"].append(torch.tensor(changed_share))

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
            if self.teacher is None or has_teacher_cache(inputs):
                target = cached_teacher_targets(
                    inputs, self.args, self.pair_map, vocab_size=logits.shape[-1], need_hidden=False
                )[0]
            else:
                target = self._teacher_targets(input_ids, mask, need_hidden=False)[0]
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
