"""Writing a teacher cache: run the teacher once over the blocks and save the top-k entries
(:func:`write_teacher_cache`), or derive a smaller-k cache from a larger one without the teacher
(:func:`truncate_teacher_cache`)."""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from .format import (
    CF_GENDERED_LOGPROBS,
    CF_REST_LOGMASS,
    CF_TOPK_IDS,
    CF_TOPK_LOGPROBS,
    DTYPES,
    FORMAT,
    GENDERED_IDS,
    GENDERED_LOGPROBS,
    MANIFEST_NAME,
    REST_LOGMASS,
    REST_TEMPERATURES,
    TOPK_IDS,
    TOPK_LOGPROBS,
    VERSION,
    _features,
    _version,
    dataset_fingerprint,
    dataset_row_length,
    pair_map_fingerprint,
    read_manifest,
)
from .integrity import WEIGHT_SUFFIXES, cache_file_checksums, load_verified_cache, teacher_weights

if TYPE_CHECKING:
    from datasets import Dataset, Features

    from counterfactuals import PairMap

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
    teacher_path: str | Path | None = None,
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
        teacher_name: what the run calls the teacher (``teacher_name_or_path``); recorded, and checked
            when the teacher's weights cannot be.
        teacher_path: the folder (or ``.gguf`` file) ``teacher`` was loaded from: the SHA-256 of its
            weight files is recorded, and a run whose teacher files differ is refused, whatever their
            path. Without it (a teacher built in memory) only ``teacher_name`` identifies the teacher.
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
    weights = teacher_weights(teacher_path)  # before the long pass: a wrong path fails early
    if teacher_path is not None and weights is None:
        raise FileNotFoundError(
            f"teacher_path {teacher_path} holds no weight file ({', '.join(WEIGHT_SUFFIXES)}): give the "
            "folder the teacher was loaded from"
        )
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
        "teacher_weights": weights,
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
        "files": cache_file_checksums(out_dir),
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
    source = load_verified_cache(cache_dir, manifest)
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
        "files": cache_file_checksums(out_dir),
    }
    (out_dir / MANIFEST_NAME).write_text(json.dumps(derived, indent=2) + "\n", encoding="utf-8")
    return derived
