"""Reading a teacher cache: attach it to the training blocks after checking it fits
(:func:`attach_teacher_cache`), collate its columns into tensors (:class:`TeacherCacheCollator`) and
rebuild the KD target from them (:func:`cached_target`, the trainer's :func:`cached_teacher_targets`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase, default_data_collator
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor

from ..losses import role_reversal
from .format import (
    _REWRITE,
    CACHE_COLUMNS,
    CF_GENDERED_LOGPROBS,
    CF_REST_LOGMASS,
    CF_ROWS,
    CF_TOPK_IDS,
    CF_TOPK_LOGPROBS,
    GENDERED_IDS,
    GENDERED_LOGPROBS,
    REST_LOGMASS,
    REST_TEMPERATURES,
    TOPK_IDS,
    TOPK_LOGPROBS,
    TeacherCacheError,
    dataset_fingerprint,
    pair_map_fingerprint,
    read_manifest,
)
from .integrity import check_teacher_weights, load_verified_cache, local_teacher_path

if TYPE_CHECKING:
    from datasets import Dataset

    from counterfactuals import PairMap


def check_manifest(
    manifest: dict[str, Any],
    where: str | Path,
    *,
    dataset: Dataset | None = None,
    vocab_size: int | None = None,
    pair_map: PairMap | None = None,
    teacher_name: str | None = None,
    teacher_path: str | Path | None = None,
    teacher_dtype: str | None = None,
) -> None:
    """Refuse a cache written for other data, another vocabulary, pair map, teacher or teacher dtype.

    The teacher is compared by the content of its weight files when both the cache and the run have them
    (``teacher_path``, else the local files of ``teacher_name``), else by name."""
    if dataset is not None:
        if manifest["rows"] != len(dataset):
            raise TeacherCacheError(
                f"teacher cache {where} has {manifest['rows']} rows but the dataset has {len(dataset)}: it "
                f"was written for other data (dataset, block_size, CDA, max_*_samples or seed differ); "
                f"{_REWRITE}"
            )
        if manifest["dataset_fingerprint"] != dataset_fingerprint(dataset):
            raise TeacherCacheError(
                f"teacher cache {where} was written for other token blocks (same row count, different "
                "token ids or order: the text, tokenizer, block_size, CDA or seed differ, or the dataset "
                f"was shuffled before attaching -- attach before any shuffle); {_REWRITE}"
            )
    if vocab_size is not None and manifest["vocab_size"] != vocab_size:
        raise TeacherCacheError(
            f"teacher cache {where} covers a vocabulary of {manifest['vocab_size']} tokens but the student "
            f"has {vocab_size}: it was written with another teacher/tokenizer; {_REWRITE}"
        )
    if pair_map is not None:
        if not manifest["counterfactual"]:
            raise TeacherCacheError(
                f"teacher cache {where} has no counterfactual view (written without a pair map), which "
                "perturbation needs: write it with a pair map (the command line does when the recipe sets "
                "perturbation, or pass --counterfactual), or train without perturbation"
            )
        if manifest["pair_map_fingerprint"] != pair_map_fingerprint(pair_map):
            raise TeacherCacheError(
                f"teacher cache {where} was written with another token swap (pair map: other tokenizer, "
                f"lexicon or swap_names setting), so its counterfactual rows do not match; {_REWRITE}"
            )
    if teacher_path is None:
        teacher_path = local_teacher_path(teacher_name)
    same_weights = teacher_path is not None and check_teacher_weights(manifest, where, teacher_path)
    if not same_weights and teacher_name is not None and manifest.get("teacher") not in (None, teacher_name):
        raise TeacherCacheError(
            f"teacher cache {where} was written from teacher {manifest['teacher']!r}, the run's teacher is "
            f"{teacher_name!r}; {_REWRITE}"
        )
    if teacher_dtype is not None and manifest.get("teacher_dtype") != teacher_dtype:
        raise TeacherCacheError(
            f"teacher cache {where} was written with the teacher in {manifest.get('teacher_dtype')}, the run "
            f"would run it in {teacher_dtype} (teacher_dtype, bf16, fp16); set teacher_dtype to match or "
            f"{_REWRITE}"
        )


def attach_teacher_cache(
    dataset: Dataset,
    cache_dir: str | Path,
    *,
    vocab_size: int | None = None,
    pair_map: PairMap | None = None,
    teacher_name: str | None = None,
    teacher_path: str | Path | None = None,
    teacher_dtype: str | None = None,
    temperature: float | None = None,
) -> Dataset:
    """``dataset`` with the cache in ``cache_dir`` as extra columns (cache columns as numpy, the rest
    unchanged), after :func:`check_manifest`. Attach before any shuffle or selection: the rows must be
    the ones the cache was written for, in the same order (checked). Give ``pair_map`` when training
    with ``perturbation``, so a cache without counterfactuals or from another swap is refused; give the
    training ``temperature`` to be warned when the cache has no exact tail mass for it. The teacher is
    checked by the content of its weight files (``teacher_path``, else the local files of
    ``teacher_name``) when the cache recorded them, and every cache file against its checksum."""
    manifest = read_manifest(cache_dir)
    stored = manifest.get("rest_temperatures", [1.0])
    if temperature is not None and not any(abs(t - temperature) < 1e-6 for t in stored):
        warnings.warn(
            f"teacher cache {cache_dir} stores the tail mass at temperatures {stored}, not at the "
            f"training temperature {temperature}: the tail is approximated from temperature 1 (rougher). "
            f"Write the cache with --temperatures {' '.join(f'{t:g}' for t in stored)} {temperature:g}",
            stacklevel=2,
        )
    check_manifest(
        manifest,
        cache_dir,
        dataset=dataset,
        vocab_size=vocab_size,
        pair_map=pair_map,
        teacher_name=teacher_name,
        teacher_path=teacher_path,
        teacher_dtype=teacher_dtype,
    )
    clash = [name for name in dataset.column_names if name in CACHE_COLUMNS]
    if clash:
        raise ValueError(f"the dataset already has teacher-cache columns {clash}; attach a cache only once")
    from datasets import concatenate_datasets

    cache = load_verified_cache(cache_dir, manifest)
    if len(cache) != len(dataset):
        raise TeacherCacheError(
            f"teacher cache {cache_dir} holds {len(cache)} rows, its manifest {manifest['rows']}; {_REWRITE}"
        )
    merged = concatenate_datasets([dataset, cache], axis=1)
    merged.set_format("numpy", columns=list(cache.column_names), output_all_columns=True)
    return merged


# ----------------------------------------------------------------------------------------------------
# Collating
# ----------------------------------------------------------------------------------------------------


class TeacherCacheCollator:
    """Wraps a collator: the teacher-cache columns, when the features carry them, become tensors (see the
    module docstring); everything else goes to ``base``. Without cache columns it is ``base``.

    ``base`` defaults to what ``transformers.Trainer`` would use: ``DataCollatorWithPadding(tokenizer)``
    for a tokenizer, else ``default_data_collator``. ``CounterfactualDistillationTrainer`` installs it
    when no ``data_collator`` is given; wrap your own collator in it otherwise."""

    def __init__(self, tokenizer: Any = None, base: Any = None) -> None:
        if base is None:
            is_processor = isinstance(tokenizer, (PreTrainedTokenizerBase, SequenceFeatureExtractor))
            base = DataCollatorWithPadding(tokenizer) if is_processor else default_data_collator
        self.base = base

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not features or TOPK_IDS not in features[0]:
            return self.base(features)
        plain = [{name: value for name, value in f.items() if name not in CACHE_COLUMNS} for f in features]
        batch = self.base(plain)
        batch.update(collate_cache(features))
        return batch


def _stack(features: Sequence[Mapping[str, Any]], name: str, dtype: type) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(f[name], dtype=dtype) for f in features]))


def collate_cache(features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """The cache columns of a list of rows as tensors: ``(B, positions, ...)`` for the original view,
    ``(R, positions, ...)`` for the ``R`` rows with a counterfactual view (listed in ``teacher_cf_rows``)."""
    lengths = {len(f[TOPK_IDS]) for f in features}
    if len(lengths) > 1:
        raise ValueError(
            f"teacher-cache rows of one batch have different lengths {sorted(lengths)}: the cache needs "
            "equal-length blocks (packed data, or rows padded to one length)"
        )
    batch = {
        TOPK_IDS: _stack(features, TOPK_IDS, np.int64),
        TOPK_LOGPROBS: _stack(features, TOPK_LOGPROBS, np.float32),
        REST_LOGMASS: _stack(features, REST_LOGMASS, np.float32),
        REST_TEMPERATURES: torch.from_numpy(np.asarray(features[0][REST_TEMPERATURES], dtype=np.float32)),
    }
    if GENDERED_IDS not in features[0]:
        return batch
    gendered = np.asarray(features[0][GENDERED_IDS], dtype=np.int64)
    if any(not np.array_equal(np.asarray(f[GENDERED_IDS]), gendered) for f in features[1:]):
        raise ValueError(
            "teacher-cache rows of one batch list different gendered tokens: they come from "
            "different caches; write one cache for the whole dataset"
        )
    batch[GENDERED_IDS] = torch.from_numpy(gendered)
    batch[GENDERED_LOGPROBS] = _stack(features, GENDERED_LOGPROBS, np.float32)
    rows = [i for i, f in enumerate(features) if len(f[CF_TOPK_IDS])]
    batch[CF_ROWS] = torch.tensor(rows, dtype=torch.long)
    picked = [features[i] for i in rows]
    positions, k, n_gendered = (*batch[TOPK_IDS].shape[1:], len(gendered))
    empty = {
        CF_TOPK_IDS: ((0, positions, k), torch.long),
        CF_TOPK_LOGPROBS: ((0, positions, k), torch.float32),
        CF_REST_LOGMASS: ((0, positions, batch[REST_LOGMASS].shape[-1]), torch.float32),
        CF_GENDERED_LOGPROBS: ((0, positions, n_gendered), torch.float32),
    }
    for name, (shape, dtype) in empty.items():
        if picked:
            batch[name] = _stack(picked, name, np.int64 if dtype == torch.long else np.float32)
        else:
            batch[name] = torch.zeros(shape, dtype=dtype)
    return batch


# ----------------------------------------------------------------------------------------------------
# Rebuilding the target
# ----------------------------------------------------------------------------------------------------


def has_teacher_cache(batch: Mapping[str, Any]) -> bool:
    """Whether a collated batch carries teacher-cache tensors."""
    return TOPK_IDS in batch


def rebuild_log_probs(
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    rest_logmass: torch.Tensor,
    vocab_size: int,
    gendered_ids: torch.Tensor | None = None,
    gendered_logprobs: torch.Tensor | None = None,
    *,
    rest_temperatures: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Dense float32 teacher "logits" ``(..., V)`` of one cached view, such that
    ``softmax(x / temperature)`` is the rebuilt distribution at ``temperature``: the stored tokens keep
    their (softened) probabilities, and the mass of the other tokens at that temperature is spread
    evenly over them (none when all ``V`` are stored). The stored tokens' entries are their
    temperature-1 log-probabilities, so at temperature 1 ``x`` is a log-distribution summing to 1.

    ``rest_logmass`` is ``(..., n_T)`` for the temperatures ``rest_temperatures`` (1 first); at a
    temperature without its own column the temperature-1 mass is spread, then softened."""
    if int(topk_ids.max()) >= vocab_size or int(topk_ids.min()) < 0:
        raise TeacherCacheError(
            f"the teacher cache holds token ids up to {int(topk_ids.max())}, outside the vocabulary of "
            f"{vocab_size}: it was written for another teacher/tokenizer; {_REWRITE}"
        )
    lead = topk_ids.shape[:-1]
    stored = torch.zeros(*lead, vocab_size, dtype=torch.bool, device=topk_ids.device)
    stored.scatter_(-1, topk_ids, True)
    if gendered_ids is not None:
        stored.index_fill_(-1, gendered_ids, True)
    others = vocab_size - stored.sum(-1)
    column, scale = 0, 1.0  # temperature 1: spread the mass, the caller softens
    if rest_temperatures is not None:
        matches = (rest_temperatures.float() - temperature).abs() < 1e-6
        if bool(matches.any()):  # spread the mass at this temperature: x / T is its log, hence the T
            column, scale = int(matches.nonzero()[0, 0]), float(temperature)
    rest = rest_logmass.float()
    rest = rest[..., column] if rest.dim() == topk_ids.dim() else rest
    # log(rest / others); no other token (k = V) or no rest mass: -inf, nothing is spread
    fill = torch.where(others > 0, (rest - others.clamp(min=1).float().log()) * scale, -math.inf)
    dense = fill.unsqueeze(-1).expand(*lead, vocab_size).clone()
    dense.scatter_(-1, topk_ids, topk_logprobs.float())
    if gendered_ids is not None:
        dense.index_copy_(-1, gendered_ids, gendered_logprobs.float())
    return dense


def cached_target(
    batch: Mapping[str, torch.Tensor],
    *,
    vocab_size: int,
    pair_map: PairMap | None = None,
    mode: str | None = None,
    temperature: float = 1.0,
    scope: str = "all",
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, float]:
    """(KD target for positions ``[:, :-1]``, share of rows with a counterfactual view) from a collated
    batch: what ``CounterfactualDistillationTrainer`` computes from the live teacher (exactly when the
    cache holds all V tokens).

    Without ``pair_map`` the target is the original view rebuilt for ``temperature``, to be used as
    teacher *logits* (``kd_loss(..., temperature=temperature, teacher_is_log_probs=False)``). With
    ``pair_map`` and ``mode`` it is the role-reversal target (log-probabilities at ``temperature``) of
    :func:`distill.losses.role_reversal`.
    """
    input_ids = batch["input_ids"]
    topk_ids = batch[TOPK_IDS]
    if topk_ids.shape[:2] != (input_ids.shape[0], input_ids.shape[1] - 1):
        raise TeacherCacheError(
            f"teacher-cache entries of shape {tuple(topk_ids.shape[:2])} do not fit a batch of input_ids "
            f"{tuple(input_ids.shape)} (expected (batch, length - 1)): the cache was written for other "
            f"blocks; {_REWRITE}"
        )
    gendered = batch.get(GENDERED_IDS)
    original = rebuild_log_probs(
        topk_ids,
        batch[TOPK_LOGPROBS],
        batch[REST_LOGMASS],
        vocab_size,
        gendered,
        batch.get(GENDERED_LOGPROBS),
        rest_temperatures=batch.get(REST_TEMPERATURES),
        temperature=temperature,
    )
    if pair_map is None:
        return original, 0.0
    if mode is None:
        raise ValueError("a pair map needs a perturbation mode (max, mean or expMean)")
    if gendered is None:
        raise TeacherCacheError(
            "perturbation needs the counterfactual view, but this teacher cache was written without a pair "
            f"map; write it with one (--counterfactual) or train without perturbation; {_REWRITE}"
        )
    expected = pair_map.gendered_ids
    if gendered.shape != expected.shape or not torch.equal(gendered.to(expected.device), expected):
        raise TeacherCacheError(
            f"the teacher cache's {gendered.numel()} gendered tokens are not the pair map's "
            f"{expected.numel()}: it was written with another token swap (tokenizer, lexicon or swap_names); "
            f"{_REWRITE}"
        )
    rows = batch[CF_ROWS]
    counterfactual = None  # no row has a gendered token: every counterfactual context is the original
    if rows.numel():  # rows the swap left alone reuse their original distribution
        cf = rebuild_log_probs(
            batch[CF_TOPK_IDS],
            batch[CF_TOPK_LOGPROBS],
            batch[CF_REST_LOGMASS],
            vocab_size,
            gendered,
            batch[CF_GENDERED_LOGPROBS],
            rest_temperatures=batch.get(REST_TEMPERATURES),
            temperature=temperature,
        )
        counterfactual = original.index_copy(0, rows, cf)
    target = role_reversal(
        original,
        counterfactual,
        pair_map,
        mode,
        temperature=temperature,
        scope=scope,
        context_ids=input_ids[:, :-1],
        chunk_size=chunk_size,
    )
    return target, rows.numel() / len(input_ids)


def cached_teacher_targets(
    batch: Mapping[str, Any], args: Any, pair_map: PairMap | None, *, vocab_size: int, need_hidden: bool
) -> tuple[torch.Tensor, None, float]:
    """The trainer's hook: ``(target, teacher hidden state (None), changed-row share)`` like
    ``CounterfactualDistillationTrainer._teacher_targets``, from the batch's cache columns. ``args`` is
    the run's :class:`~distill.config.DistillationConfig`."""
    if need_hidden:
        raise ValueError(
            "alpha_cos > 0 needs the teacher's hidden states, which a teacher cache does not hold: set "
            "alpha_cos to 0, or train with the live teacher (no teacher cache)"
        )
    if not has_teacher_cache(batch):
        raise ValueError(
            "this batch carries no teacher cache and the trainer has no teacher: attach the cache to every "
            "dataset the trainer reads (train and eval) with attach_teacher_cache, keep "
            "remove_unused_columns=False, and use TeacherCacheCollator (the default collator) -- or pass "
            "teacher_model"
        )
    target, share = cached_target(
        batch,
        vocab_size=vocab_size,
        pair_map=pair_map,
        mode=args.perturbation,
        temperature=args.temperature,
        scope=args.perturbation_scope,
        chunk_size=args.kd_chunk_size,
    )
    return target, None, share
