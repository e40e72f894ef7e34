"""The teacher cache's on-disk format: column names and Arrow schema, the manifest
(``teacher_cache.json``: what was cached, from which teacher, for which blocks) and the fingerprints that
identify the data and the token swap a cache was written for."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..models import resolve_dtype

if TYPE_CHECKING:
    from datasets import Dataset, Features

    from counterfactuals import PairMap

FORMAT = "fairdistill-teacher-cache"
VERSION = 2  # 2: file checksums and the teacher's weight hashes in the manifest
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
    columns = [name for name in ("input_ids", "attention_mask") if name in dataset.column_names]
    if "input_ids" not in columns:
        raise ValueError(
            f"the dataset has no input_ids column (columns: {dataset.column_names}); the teacher cache is "
            "written for tokenized blocks: use distill.data.tokenize_and_pack or prepare_lm_datasets"
        )
    import pyarrow.compute as pc

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


def _features(k: int, n_gendered: int | None, dtype: str, n_temperatures: int) -> Features:
    """The Arrow schema of a cache's rows."""
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


def dataset_row_length(dataset: Dataset) -> int | None:
    """Length of the first row's ``input_ids`` (None for an empty dataset)."""
    return len(dataset[0]["input_ids"]) if len(dataset) else None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------------------------------
# The manifest
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


def run_teacher_dtype(config: Any) -> torch.dtype | None:
    """The dtype ``CounterfactualDistillationTrainer`` runs the teacher in for ``config`` (None: as
    loaded), so the cache is written as the live run would compute it."""
    dtype = resolve_dtype(config.teacher_dtype)
    if dtype == "auto":
        dtype = torch.bfloat16 if config.bf16 else torch.float16 if config.fp16 else None
    return dtype
