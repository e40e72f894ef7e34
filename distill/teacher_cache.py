"""Offline top-k teacher cache: run the teacher once, then train any number of epochs and sweeps from disk.

The teacher is frozen, so its predictions on a fixed training set never change; a run that repeats
epochs, or a sweep over perturbation modes, temperatures or students, recomputes the same teacher
forward passes (two per gendered block with role reversal). :func:`write_teacher_cache` runs the teacher
once per block and stores, with ``datasets`` (Arrow, ``save_to_disk``), what the KD target needs:

* for every position ``t`` of a block (the ``T - 1`` positions that predict a next token), the
  teacher's **top-k token ids** (int32) and **log-probabilities** (float16 by default, or float32) of the
  next-token distribution on the original text, and the **log of the probability mass left outside**
  the stored tokens, at temperature 1 and at each training temperature asked for (default 1 and 2);
* with a pair map (role reversal): the log-probabilities at **every gendered token**
  (``pair_map.gendered_ids``, a few hundred ids, stored once per row), because role reversal needs them
  exactly (``q(w) = p̃(σ(w))`` and the split of " her" between " his"/" him" read the gendered tokens);
  and for the rows the token swap changes, the same three things for the **counterfactual** view (the
  teacher on the gender-swapped block), in its own token space. Rows the swap leaves alone store no
  counterfactual entries: their counterfactual is the original, as in the live trainer.

The log-probabilities are ``log_softmax`` of the teacher logits **at temperature 1**, so one cache serves
every perturbation mode (``max``/``mean``/``expMean``), scope, KD divergence and temperature: they are
applied at read time.

Reading (:func:`cached_target`) rebuilds dense teacher logits over the vocabulary for each view at the
training temperature T: the stored tokens (top-k ∪ gendered) keep their exact probabilities, and **the
remaining mass at T (known exactly when T was stored) is spread uniformly over the other tokens** (their
identities are not stored, so uniform is the least committal choice). Then the target is computed by
the same code as the live path: plain KD uses them as the teacher's logits, and role reversal calls
:func:`distill.losses.role_reversal` on the two rebuilt views with the original and counterfactual rows
aligned exactly as ``CounterfactualDistillationTrainer`` aligns them. With ``k = V`` nothing is
approximated and the target equals the live one to float precision (tested). At a stored temperature
the stored tokens get exactly their dense probabilities; at another one the temperature-1 tail is
spread, then softened, which over-weights the tail when T > 1.

Why a uniform residual rather than renormalising over the stored tokens (DistillKit style): it keeps a
full-support target, so reverse KL / JSD (``kd_beta > 0``) stay finite and ``expMean`` keeps the mass
of tokens outside one view's top-k; and at a stored temperature its total-variation distance to the
dense target (half the L1 error of the forward-KL gradient) is never larger than renormalising's, which
is exactly the tail mass.
What top-k costs depends on how much mass the teacher leaves in its tail, which grows with T:
``bench/bench_teacher_cache.py`` measures it. :func:`truncate_teacher_cache` derives a smaller-k cache
from a larger one without the teacher.

Rows travel with their cache: :func:`attach_teacher_cache` adds the cache as extra columns of the
training dataset (``teacher_topk_ids``, ...) after checking it was written for exactly these blocks
(a fingerprint of every token id), this teacher, vocabulary and pair map, so Trainer's shuffling and
DDP sharding move a block and its teacher predictions together. :class:`TeacherCacheCollator` stacks
them into tensors (the counterfactual ones only for the rows that have them, with their row indices
in ``teacher_cf_rows``), and ``CounterfactualDistillationTrainer.compute_loss`` builds the target from
a batch that carries them without running the teacher (which may then be ``None``). The hidden-state
cosine term (``alpha_cos``) needs the teacher's hidden states, which are not cached: it is refused.

Python::

    from distill.teacher_cache import write_teacher_cache, attach_teacher_cache
    write_teacher_cache(teacher, packed_train, "cache/train", k=32, pair_map=pair_map, teacher_name="gpt2")
    train = attach_teacher_cache(packed_train, "cache/train", pair_map=pair_map, vocab_size=50257)
    # args: a DistillationConfig with remove_unused_columns=False (or teacher_cache set, which does it)
    trainer = CounterfactualDistillationTrainer(model=student, teacher_model=None, args=args,
                                                train_dataset=train, processing_class=tokenizer)

From a recipe (writes ``DIR/train`` and, when the recipe holds out an eval split, ``DIR/eval``; then
train with ``teacher_cache: DIR`` in the recipe or ``--teacher_cache DIR``)::

    python -m distill.teacher_cache --config recipes/smollm2-offline.yaml --out runs/cache --k 32
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase, default_data_collator
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor

from .losses import role_reversal
from .models import resolve_dtype

if TYPE_CHECKING:  # datasets / pyarrow are imported where used: training without a cache needs neither
    from datasets import Dataset, Features

    from counterfactuals import PairMap

__all__ = [
    "CACHE_COLUMNS",
    "MANIFEST_NAME",
    "TeacherCacheCollator",
    "TeacherCacheError",
    "attach_teacher_cache",
    "cache_split_dir",
    "cached_target",
    "cached_teacher_targets",
    "dataset_fingerprint",
    "has_teacher_cache",
    "pair_map_fingerprint",
    "read_manifest",
    "rebuild_log_probs",
    "truncate_teacher_cache",
    "write_teacher_cache",
]

FORMAT = "fairdistill-teacher-cache"
VERSION = 1
MANIFEST_NAME = "teacher_cache.json"
DTYPES = {"float16": torch.float16, "float32": torch.float32}

# Per-row columns. "positions" is the block length minus one (position t predicts token t+1).
TOPK_IDS = "teacher_topk_ids"  # (positions, k) int32
TOPK_LOGPROBS = "teacher_topk_logprobs"  # (positions, k)
# (positions, n_T): at each stored temperature T, log sum over the tokens not stored of p(w)^(1/T)
REST_LOGMASS = "teacher_rest_logmass"
REST_TEMPERATURES = "teacher_rest_temperatures"  # (n_T,) float32: those temperatures, 1 first
GENDERED_IDS = "teacher_gendered_ids"  # (G,) int32, pair_map.gendered_ids (with a pair map only)
GENDERED_LOGPROBS = "teacher_gendered_logprobs"  # (positions, G)
# the counterfactual view: (positions, ...) in the rows the swap changed, (0, ...) in the others
CF_TOPK_IDS = "teacher_cf_topk_ids"
CF_TOPK_LOGPROBS = "teacher_cf_topk_logprobs"
CF_REST_LOGMASS = "teacher_cf_rest_logmass"
CF_GENDERED_LOGPROBS = "teacher_cf_gendered_logprobs"
CF_ROWS = "teacher_cf_rows"  # collated batches only: (R,) rows that carry a counterfactual view
CACHE_COLUMNS = (
    TOPK_IDS,
    TOPK_LOGPROBS,
    REST_LOGMASS,
    REST_TEMPERATURES,
    GENDERED_IDS,
    GENDERED_LOGPROBS,
    CF_TOPK_IDS,
    CF_TOPK_LOGPROBS,
    CF_REST_LOGMASS,
    CF_GENDERED_LOGPROBS,
)
_REWRITE = (
    "rewrite it with `python -m distill.teacher_cache --config <recipe> --out DIR` (or write_teacher_cache)"
)


class TeacherCacheError(ValueError):
    """A cache that does not fit the run (other data, teacher, vocabulary or pair map) or is damaged;
    the message says what differs and how to fix it."""


# ----------------------------------------------------------------------------------------------------
# Fingerprints
# ----------------------------------------------------------------------------------------------------


def dataset_fingerprint(dataset: Dataset, rows_per_chunk: int = 4096) -> str:
    """SHA-256 of every row's ``input_ids`` (and ``attention_mask``), in row order: equal only for the
    same blocks in the same order, whatever their ``datasets`` history (cache files, CDA, slicing)."""
    import pyarrow.compute as pc

    columns = [name for name in ("input_ids", "attention_mask") if name in dataset.column_names]
    if "input_ids" not in columns:
        raise ValueError(
            f"the dataset has no input_ids column (columns: {dataset.column_names}); the teacher cache is "
            "written for tokenized blocks: use distill.data.tokenize_and_pack or prepare_lm_datasets"
        )
    digest = hashlib.sha256(f"{len(dataset)}".encode())
    table = dataset.with_format("arrow")
    for start in range(0, len(dataset), rows_per_chunk):
        chunk = table[start : start + rows_per_chunk]
        for name in columns:
            column = chunk.column(name)
            lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
            values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
            digest.update(name.encode())
            digest.update(np.asarray(lengths, dtype=np.int64).tobytes())
            digest.update(np.asarray(values, dtype=np.int64).tobytes())
    return digest.hexdigest()


def pair_map_fingerprint(pair_map: PairMap) -> str:
    """SHA-256 of every tensor of the pair map: which rows swap, how, and how mass maps back."""
    digest = hashlib.sha256()
    for field in dataclasses.fields(pair_map):
        value = getattr(pair_map, field.name)
        if isinstance(value, torch.Tensor):
            digest.update(f"{field.name}{tuple(value.shape)}{value.dtype}".encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------


def _vocab_size(teacher: torch.nn.Module) -> int:
    return teacher.get_output_embeddings().weight.shape[0]


def _encode_view(
    log_probs: torch.Tensor,
    k: int,
    gendered_ids: torch.Tensor | None,
    dtype: torch.dtype,
    temperatures: Sequence[float],
) -> dict[str, np.ndarray]:
    """Top-k, gendered block and residual of ``(rows, positions, V)`` float32 log-probabilities.

    ``log_probs`` is overwritten (its stored entries are set to -inf to sum the rest in place)."""
    values, ids = log_probs.topk(k, dim=-1)  # sorted: the first k' of a top-k are the top-k'
    out = {"topk_ids": ids.to(torch.int32), "topk_logprobs": values.to(dtype)}
    if gendered_ids is not None:
        out["gendered_logprobs"] = log_probs.index_select(-1, gendered_ids).to(dtype)
    # the exact mass outside the stored tokens at each temperature (-inf when everything is stored)
    log_probs.scatter_(-1, ids, -math.inf)
    if gendered_ids is not None:
        log_probs.index_fill_(-1, gendered_ids, -math.inf)
    rest = [torch.logsumexp(log_probs / t if t != 1.0 else log_probs, dim=-1) for t in temperatures]
    out["rest_logmass"] = torch.stack(rest, dim=-1).to(dtype)
    return {name: tensor.cpu().numpy() for name, tensor in out.items()}


def _teacher_views(
    teacher: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    pair_map: PairMap | None,
    joint_pass: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(original logits, counterfactual logits of the changed rows or None, changed row indices), the
    teacher reading the batch exactly as ``CounterfactualDistillationTrainer._teacher_targets`` does."""
    rows = torch.zeros(0, dtype=torch.long, device=input_ids.device)
    if pair_map is not None:
        swapped_ids, changed = pair_map.swap_ids(input_ids, attention_mask)
        rows = changed.nonzero().squeeze(-1)
    if rows.numel() and joint_pass:
        both_ids = torch.cat([input_ids, swapped_ids[rows]])
        both_mask = None if attention_mask is None else torch.cat([attention_mask, attention_mask[rows]])
        logits = teacher(input_ids=both_ids, attention_mask=both_mask, use_cache=False).logits
        return logits[: len(input_ids)], logits[len(input_ids) :], rows
    logits = teacher(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    cf_logits = None
    if rows.numel():
        mask_rows = None if attention_mask is None else attention_mask[rows]
        cf_logits = teacher(input_ids=swapped_ids[rows], attention_mask=mask_rows, use_cache=False).logits
    return logits, cf_logits, rows


def _features(k: int, n_gendered: int | None, dtype: str, n_temperatures: int) -> Features:
    from datasets import Array2D, Features, List, Value

    columns = {
        TOPK_IDS: Array2D(shape=(None, k), dtype="int32"),
        TOPK_LOGPROBS: Array2D(shape=(None, k), dtype=dtype),
        REST_LOGMASS: Array2D(shape=(None, n_temperatures), dtype=dtype),
        REST_TEMPERATURES: List(Value("float32")),
    }
    if n_gendered is not None:
        columns.update(
            {
                GENDERED_IDS: List(Value("int32")),
                GENDERED_LOGPROBS: Array2D(shape=(None, n_gendered), dtype=dtype),
                CF_TOPK_IDS: Array2D(shape=(None, k), dtype="int32"),
                CF_TOPK_LOGPROBS: Array2D(shape=(None, k), dtype=dtype),
                CF_REST_LOGMASS: Array2D(shape=(None, n_temperatures), dtype=dtype),
                CF_GENDERED_LOGPROBS: Array2D(shape=(None, n_gendered), dtype=dtype),
            }
        )
    return Features(columns)


def _row_batches(dataset: Dataset, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    columns = [name for name in ("input_ids", "attention_mask") if name in dataset.column_names]
    view = dataset.with_format("numpy", columns=columns)
    for start in range(0, len(dataset), batch_size):
        batch = view[start : start + batch_size]
        ids = batch["input_ids"]
        if ids.dtype == object:  # rows of different lengths come back as an array of arrays
            lengths = sorted({len(row) for row in ids})
            raise ValueError(
                f"rows {start}..{start + len(ids) - 1} have different lengths {lengths[:5]}: the cache "
                "stores one entry per position of equal-length blocks; pack the text (distill.data."
                "tokenize_and_pack) or pad every row to one length before writing the cache"
            )
        mask = batch.get("attention_mask")
        yield (
            torch.from_numpy(np.asarray(ids, dtype=np.int64)),
            None if mask is None else torch.from_numpy(np.asarray(mask, dtype=np.int64)),
        )


def write_teacher_cache(
    teacher: torch.nn.Module,
    dataset: Dataset,
    out_dir: str | Path,
    *,
    k: int = 32,
    pair_map: PairMap | None = None,
    batch_size: int = 8,
    dtype: str = "float16",
    teacher_name: str | None = None,
    temperatures: Sequence[float] = (1.0, 2.0),
    joint_teacher_pass: bool = True,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run ``teacher`` once over ``dataset`` (equal-length token blocks with ``input_ids``, optional
    ``attention_mask``) and save its top-k cache to ``out_dir``; returns the manifest (also written to
    ``out_dir/teacher_cache.json``).

    Args:
        teacher: the frozen teacher, on the device and in the dtype it should run in (as the trainer
            would prepare it: see ``teacher_dtype``).
        dataset: the training (or eval) blocks, in the order training will see them before shuffling
            (the cache is checked against their token ids when attached).
        out_dir: a new or empty directory.
        k: tokens kept per position (1..V); ``k = V`` stores the whole distribution (exact, large).
        pair_map: the token swap; given, the gendered block and the counterfactual view of every row the
            swap changes are stored too (needed for ``perturbation``), else plain KD only.
        batch_size: blocks per teacher forward pass.
        dtype: ``float16`` (default) or ``float32`` for the stored log-probabilities.
        teacher_name: what the run calls the teacher (``teacher_name_or_path``); recorded and checked.
        temperatures: the training temperatures to store the exact tail mass for (1 is always stored):
            at these the rebuilt target is exact on the stored tokens; at others the tail mass at
            temperature 1 is spread instead (a rougher approximation).
        joint_teacher_pass: original and swapped rows in one forward pass (as the trainer's option).
        verbose: print one line per 50 batches.
    """
    from datasets import Dataset

    if not isinstance(dataset, Dataset):
        raise TypeError(
            f"dataset must be a datasets.Dataset of token blocks, got {type(dataset).__name__} (an "
            "IterableDataset cannot be cached: its rows have no stable order)"
        )
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: use one of {', '.join(DTYPES)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if len(dataset) == 0:
        raise ValueError("the dataset has no rows: nothing to cache")
    temperatures = _check_temperatures(temperatures)
    vocab = _vocab_size(teacher)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab:
        raise ValueError(f"k must be an int in [1, {vocab}] (the teacher's vocabulary), got {k!r}")
    if pair_map is not None and pair_map.vocab_size != vocab:
        raise ValueError(
            f"the pair map covers {pair_map.vocab_size} tokens but the teacher has {vocab}; build it with "
            "build_pair_map(tokenizer, vocab_size=teacher.config.vocab_size)"
        )
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; remove it or choose another --out")
    fingerprint = dataset_fingerprint(dataset)
    parameter = next(teacher.parameters())
    device = parameter.device
    moved_pair_map = pair_map.to(device) if pair_map is not None else None
    gendered = moved_pair_map.gendered_ids if moved_pair_map is not None else None
    gendered_np = None if gendered is None else gendered.cpu().numpy().astype(np.int32)
    torch_dtype = DTYPES[dtype]
    stats = {"rows": 0, "tokens": 0, "counterfactual_rows": 0, "row_lengths": set()}
    was_training = teacher.training
    teacher.eval()

    def rows() -> Iterator[dict[str, Any]]:
        for number, (input_ids, attention_mask) in enumerate(_row_batches(dataset, batch_size)):
            input_ids = input_ids.to(device)
            attention_mask = None if attention_mask is None else attention_mask.to(device)
            with torch.inference_mode():
                logits, cf_logits, changed = _teacher_views(
                    teacher, input_ids, attention_mask, moved_pair_map, joint_teacher_pass
                )
                original = _encode_view(
                    F.log_softmax(logits[:, :-1].float(), dim=-1), k, gendered, torch_dtype, temperatures
                )
                counterfactual = None
                if cf_logits is not None:
                    counterfactual = _encode_view(
                        F.log_softmax(cf_logits[:, :-1].float(), dim=-1),
                        k,
                        gendered,
                        torch_dtype,
                        temperatures,
                    )
            del logits, cf_logits
            cf_index = {int(row): i for i, row in enumerate(changed.tolist())}
            stats["rows"] += len(input_ids)
            stats["tokens"] += input_ids.numel()
            stats["counterfactual_rows"] += len(cf_index)
            stats["row_lengths"].add(input_ids.shape[1])
            for row in range(len(input_ids)):
                example = {
                    TOPK_IDS: original["topk_ids"][row],
                    TOPK_LOGPROBS: original["topk_logprobs"][row],
                    REST_LOGMASS: original["rest_logmass"][row],
                    REST_TEMPERATURES: np.asarray(temperatures, dtype=np.float32),
                }
                if gendered is not None:
                    example[GENDERED_IDS] = gendered_np
                    example[GENDERED_LOGPROBS] = original["gendered_logprobs"][row]
                    if row in cf_index:
                        i = cf_index[row]
                        example[CF_TOPK_IDS] = counterfactual["topk_ids"][i]
                        example[CF_TOPK_LOGPROBS] = counterfactual["topk_logprobs"][i]
                        example[CF_REST_LOGMASS] = counterfactual["rest_logmass"][i]
                        example[CF_GENDERED_LOGPROBS] = counterfactual["gendered_logprobs"][i]
                    else:  # the swap left the row alone: its counterfactual is the original
                        example[CF_TOPK_IDS] = np.zeros((0, k), dtype=np.int32)
                        example[CF_TOPK_LOGPROBS] = np.zeros((0, k), dtype=original["topk_logprobs"].dtype)
                        example[CF_REST_LOGMASS] = np.zeros(
                            (0, len(temperatures)), dtype=original["rest_logmass"].dtype
                        )
                        example[CF_GENDERED_LOGPROBS] = np.zeros(
                            (0, len(gendered_np)), dtype=original["topk_logprobs"].dtype
                        )
                yield example
            if verbose and (number + 1) % 50 == 0:
                print(f"[teacher_cache] {stats['rows']}/{len(dataset)} rows", file=sys.stderr)

    features = _features(k, None if gendered is None else len(gendered_np), dtype, len(temperatures))
    length = dataset_row_length(dataset) or 1024
    start = time.perf_counter()
    try:
        _save_rows(
            rows, features, out_dir, seed=fingerprint, row_bytes=_row_bytes(length, k, gendered_np, dtype)
        )
    finally:
        teacher.train(was_training)
    seconds = time.perf_counter() - start
    lengths = sorted(stats["row_lengths"])
    size = _size(out_dir)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "teacher": teacher_name,
        "teacher_class": type(teacher).__name__,
        "teacher_dtype": str(parameter.dtype).removeprefix("torch."),
        "vocab_size": vocab,
        "k": k,
        "dtype": dtype,
        "logprobs": "log_softmax of the teacher logits at temperature 1; temperature, perturbation and "
        "divergence are applied when the target is rebuilt",
        "residual": "uniform: the mass outside the stored tokens at the training temperature (stored "
        "exactly for rest_temperatures, else derived from temperature 1) is spread evenly over them",
        "rest_temperatures": list(temperatures),
        "counterfactual": pair_map is not None,
        "pair_map_fingerprint": None if pair_map is None else pair_map_fingerprint(pair_map),
        "gendered_tokens": None if gendered_np is None else len(gendered_np),
        "dataset_fingerprint": fingerprint,
        "rows": stats["rows"],
        "tokens": stats["tokens"],
        "row_length": lengths[0] if len(lengths) == 1 else None,
        "counterfactual_rows": stats["counterfactual_rows"],
        "bytes": size,
        "bytes_per_token": size / max(stats["tokens"], 1),
        "seconds": seconds,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "versions": {name: _version(name) for name in ("torch", "transformers", "datasets")},
    }
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _check_temperatures(temperatures: Sequence[float]) -> tuple[float, ...]:
    values = [float(t) for t in temperatures]
    if not all(math.isfinite(t) and t > 0 for t in values):
        raise ValueError(f"temperatures must be positive numbers, got {list(temperatures)}")
    # temperature 1 first: the fallback for any other temperature
    return (1.0, *sorted({t for t in values if t != 1.0}))


def _row_bytes(length: int, k: int, gendered: np.ndarray | None, dtype: str) -> int:
    """Upper bound of one row's bytes (both views)."""
    size = DTYPES[dtype].itemsize
    per_position = k * (4 + size) + 4 * size + (0 if gendered is None else len(gendered) * size)
    return 2 * length * per_position


def _save_rows(
    rows: Callable[[], Iterator[dict[str, Any]]],
    features: Features,
    out_dir: Path,
    *,
    seed: str,
    row_bytes: int,
) -> None:
    """``Dataset.from_generator`` into a scratch folder beside ``out_dir``, then ``save_to_disk``."""
    from datasets import Dataset

    # one Arrow record batch of rows at a time in memory: bounded to ~64 MB whatever k
    writer_batch_size = int(max(1, min(1000, (64 << 20) // max(row_bytes, 1))))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".teacher-cache-") as scratch:
        cache = Dataset.from_generator(
            rows,
            features=features,
            cache_dir=scratch,
            # a fresh id: the teacher's outputs are not a function of anything datasets could hash
            fingerprint=hashlib.sha256(f"{seed}{time.time_ns()}".encode()).hexdigest()[:32],
            writer_batch_size=writer_batch_size,
        )
        cache.save_to_disk(str(out_dir))
        del cache


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


def truncate_teacher_cache(cache_dir: str | Path, out_dir: str | Path, k: int) -> dict[str, Any]:
    """A cache of the same blocks with only the ``k`` most likely tokens of each position, derived from a
    cache written with a larger k, without the teacher: the top-k lists are sorted, so the first ``k``
    entries are the top-k, and the dropped entries' mass joins the stored residual (dropped gendered
    tokens stay in the gendered block). Returns the new manifest. With float16 storage the residual is
    summed from the stored (rounded) values, so it can differ from a direct write in the 3rd digit."""
    cache_dir, out_dir = Path(cache_dir), Path(out_dir)
    manifest = read_manifest(cache_dir)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < manifest["k"]:
        raise ValueError(f"k must be an int in [1, {manifest['k']}) (the cache's k), got {k!r}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; remove it or choose another")
    from datasets import load_from_disk

    source = load_from_disk(str(cache_dir))
    source.set_format("numpy", output_all_columns=True)
    dtype = manifest["dtype"]
    store = np.dtype(dtype)
    gendered_count = manifest["gendered_tokens"]

    def keep(ids, logprobs, rest, gendered, temperatures) -> tuple:
        dropped_ids, dropped = ids[:, k:], logprobs[:, k:].astype(np.float64)
        if gendered is not None:  # a dropped gendered token is still stored in the gendered block
            dropped = np.where(np.isin(dropped_ids, gendered), -np.inf, dropped)
        new_rest = np.empty(rest.shape, dtype=np.float64)
        for j, t in enumerate(temperatures):
            both = np.concatenate([rest[:, j : j + 1].astype(np.float64), dropped / t], axis=1)
            top = both.max(axis=1, keepdims=True)
            safe = np.where(np.isfinite(top), top, 0.0)
            with np.errstate(divide="ignore"):
                new_rest[:, j] = (np.log(np.exp(both - safe).sum(axis=1, keepdims=True)) + safe)[:, 0]
        return ids[:, :k].astype(np.int32), logprobs[:, :k].astype(store), new_rest.astype(store)

    def rows() -> Iterator[dict[str, Any]]:
        for row in source:
            gendered = row.get(GENDERED_IDS)
            example = dict(row)
            views = [(TOPK_IDS, TOPK_LOGPROBS, REST_LOGMASS)]
            if gendered is not None:
                views.append((CF_TOPK_IDS, CF_TOPK_LOGPROBS, CF_REST_LOGMASS))
            for ids_name, lp_name, rest_name in views:
                ids, logprobs, rest = keep(
                    row[ids_name], row[lp_name], row[rest_name], gendered, row[REST_TEMPERATURES]
                )
                example[ids_name], example[lp_name], example[rest_name] = ids, logprobs, rest
            for name, value in example.items():
                if name not in (TOPK_IDS, CF_TOPK_IDS, GENDERED_IDS, REST_TEMPERATURES):
                    example[name] = np.asarray(value, dtype=store)
            yield example

    start = time.perf_counter()
    length = manifest["row_length"] or 1024
    gendered_stub = None if gendered_count is None else np.zeros(gendered_count)
    _save_rows(
        rows,
        _features(k, gendered_count, dtype, len(manifest["rest_temperatures"])),
        out_dir,
        seed=manifest["dataset_fingerprint"],
        row_bytes=_row_bytes(length, k, gendered_stub, dtype),
    )
    size = _size(out_dir)
    derived = {
        **manifest,
        "k": k,
        "derived_from": {"path": str(cache_dir), "k": manifest["k"]},
        "bytes": size,
        "bytes_per_token": size / max(manifest["tokens"], 1),
        "seconds": time.perf_counter() - start,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }
    (out_dir / MANIFEST_NAME).write_text(json.dumps(derived, indent=2) + "\n", encoding="utf-8")
    return derived


def dataset_row_length(dataset: Dataset) -> int | None:
    """Length of the first row's ``input_ids`` (None for an empty dataset)."""
    return len(dataset[0]["input_ids"]) if len(dataset) else None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------------------------------
# Reading: manifest checks and attaching the cache to the dataset
# ----------------------------------------------------------------------------------------------------


def read_manifest(cache_dir: str | Path) -> dict[str, Any]:
    """The manifest of one cache directory (one split); a missing or foreign one is a
    :class:`TeacherCacheError` naming the fix."""
    path = Path(cache_dir) / MANIFEST_NAME
    if not path.is_file():
        raise TeacherCacheError(f"{cache_dir} is not a teacher cache (no {MANIFEST_NAME}); {_REWRITE}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TeacherCacheError(f"{path} is not valid JSON ({err}); {_REWRITE}") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise TeacherCacheError(
            f"{path} is format {manifest.get('format')!r} version {manifest.get('version')!r}, this code "
            f"reads {FORMAT!r} version {VERSION}; {_REWRITE}"
        )
    return manifest


def cache_split_dir(root: str | Path, split: str) -> Path:
    """``root/split`` as written by the command line; a single-split cache directory also serves as
    the ``train`` split."""
    root = Path(root)
    if (root / split / MANIFEST_NAME).is_file():
        return root / split
    if split == "train" and (root / MANIFEST_NAME).is_file():
        return root
    raise TeacherCacheError(
        f"no {split} split in the teacher cache {root} (expected {root / split / MANIFEST_NAME}); write it "
        f"from the same recipe with `python -m distill.teacher_cache --config <recipe> --out {root}`"
    )


def check_manifest(
    manifest: dict[str, Any],
    where: str | Path,
    *,
    dataset: Dataset | None = None,
    vocab_size: int | None = None,
    pair_map: PairMap | None = None,
    teacher_name: str | None = None,
    teacher_dtype: str | None = None,
) -> None:
    """Refuse a cache written for other data, another vocabulary, pair map, teacher or teacher dtype."""
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
    if teacher_name is not None and manifest.get("teacher") not in (None, teacher_name):
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
    teacher_dtype: str | None = None,
    temperature: float | None = None,
) -> Dataset:
    """``dataset`` with the cache in ``cache_dir`` as extra columns (cache columns as numpy, the rest
    unchanged), after :func:`check_manifest`. Attach before any shuffle or selection: the rows must be
    the ones the cache was written for, in the same order (checked). Give ``pair_map`` when training
    with ``perturbation``, so a cache without counterfactuals or from another swap is refused; give the
    training ``temperature`` to be warned when the cache has no exact tail mass for it."""
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
        teacher_dtype=teacher_dtype,
    )
    clash = [name for name in dataset.column_names if name in CACHE_COLUMNS]
    if clash:
        raise ValueError(f"the dataset already has teacher-cache columns {clash}; attach a cache only once")
    from datasets import concatenate_datasets, load_from_disk

    cache = load_from_disk(str(cache_dir))
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


# ----------------------------------------------------------------------------------------------------
# Command line: write the cache of a recipe's data
# ----------------------------------------------------------------------------------------------------


def run_teacher_dtype(config: Any) -> torch.dtype | None:
    """The dtype ``CounterfactualDistillationTrainer`` runs the teacher in for ``config`` (None: as
    loaded), so the cache is written as the live run would compute it."""
    dtype = resolve_dtype(config.teacher_dtype)
    if dtype == "auto":
        dtype = torch.bfloat16 if config.bf16 else torch.float16 if config.fp16 else None
    return dtype


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """``python -m distill.teacher_cache --config recipe.yaml --out DIR [--k 32] [--key value ...]``."""
    from counterfactuals import build_pair_map

    from .models import load_causal_lm, load_tokenizer, resolve_model_path
    from .train import parse_config, prepare_data

    parser = argparse.ArgumentParser(
        prog="python -m distill.teacher_cache",
        description="Run a recipe's teacher once over its training (and eval) blocks and save the top-k "
        "cache; then train with --teacher_cache DIR. Other --key value pairs override the recipe, as for "
        "distill.train.",
    )
    parser.add_argument("--out", type=Path, required=True, help="new directory; gets train/ and eval/")
    parser.add_argument("--k", type=int, default=32, help="tokens kept per position (default 32)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="stored log-probabilities")
    parser.add_argument("--batch-size", type=int, default=8, help="blocks per teacher forward pass")
    parser.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=None,
        help="temperatures to store the exact tail mass for (default: 1 and the recipe's temperature)",
    )
    parser.add_argument(
        "--counterfactual",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="store the gendered block and counterfactual view (default: when the recipe sets perturbation)",
    )
    ours, rest = parser.parse_known_args(argv)
    config = parse_config(rest)
    if config.teacher_cache is not None:
        parser.error("the recipe sets teacher_cache: drop it from the recipe to write a new cache")
    teacher_path = resolve_model_path(config.teacher_name_or_path)
    tokenizer = load_tokenizer(teacher_path)
    teacher = load_causal_lm(teacher_path, dtype="float32")
    dtype = run_teacher_dtype(config)
    if dtype is not None:
        teacher = teacher.to(dtype)
    device = torch.device("cuda" if torch.cuda.is_available() and not config.use_cpu else "cpu")
    teacher.to(device).eval().requires_grad_(False)
    data = prepare_data(config, tokenizer)
    counterfactual = config.perturbation is not None if ours.counterfactual is None else ours.counterfactual
    pair_map = (
        build_pair_map(tokenizer, names=config.swap_names, vocab_size=_vocab_size(teacher))
        if counterfactual
        else None
    )
    manifests = []
    for split, dataset in (("train", data.train), ("eval", data.eval)):
        if dataset is None:
            continue
        manifest = write_teacher_cache(
            teacher,
            dataset,
            ours.out / split,
            k=ours.k,
            pair_map=pair_map,
            batch_size=ours.batch_size,
            dtype=ours.dtype,
            teacher_name=config.teacher_name_or_path,
            temperatures=ours.temperatures or (1.0, config.temperature),
            joint_teacher_pass=config.joint_teacher_pass,
            verbose=True,
        )
        manifests.append(manifest)
        cf = manifest["counterfactual_rows"] / manifest["rows"]
        print(
            f"[teacher_cache] {split}: {manifest['rows']} blocks of {manifest['row_length']} tokens, "
            f"k={ours.k} {ours.dtype}, counterfactual view for {cf:.0%} of them; "
            f"{manifest['bytes'] / 1e6:.1f} MB, {manifest['bytes_per_token']:.0f} bytes/token; "
            f"teacher pass {manifest['seconds']:.1f} s -> {ours.out / split}"
        )
    print(f"[teacher_cache] train with: --teacher_cache {ours.out}")
    return manifests


def cli() -> None:
    try:
        main()
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
