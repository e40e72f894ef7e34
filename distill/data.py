"""Training data for causal-LM distillation: load a text corpus, optionally augment it with gender
counterfactuals, tokenize it and pack it into fixed-length blocks (the ``run_clm`` recipe).

Over 600 lines: loading, CDA, packing and their file:line error reporting share one set of helpers; the
split into loading and packing modules is planned (ARCHITECTURE.md).

Three layers, each usable on its own:

* :func:`load_text_dataset` -- a Hub dataset id or a local file/directory, one split (slicing such as
  ``"train[:1000]"`` included), with the text column checked and clear errors for the usual mistakes.
* :func:`tokenize_and_pack` -- tokenize every document, join them with EOS and cut the stream into
  blocks of exactly ``block_size`` tokens. The packing is *global*: no token is lost at batch or
  worker boundaries and the blocks do not depend on ``num_proc``.
* :func:`prepare_lm_datasets` -- the whole pipeline for a training script, with counterfactual data
  augmentation (CDA) of the train split only, returning a :class:`PreparedData`.

This module knows about text and tokens only; evaluation data sets (BOLD, ...) live elsewhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
from datasets import (
    Dataset,
    DatasetDict,
    IterableDataset,
    IterableDatasetDict,
    ReadInstruction,
    concatenate_datasets,
    is_caching_enabled,
    load_dataset,
    load_from_disk,
)
from datasets.fingerprint import Hasher
from transformers import PreTrainedTokenizerBase

from counterfactuals import Lexicon
from counterfactuals.cda import COUNTERFACTUAL, MODES, SOURCE_COLUMN, SWAPPED_COLUMN, augment_dataset

__all__ = [
    "PreparedData",
    "augment_training_documents",
    "cda_stats",
    "load_text_dataset",
    "prepare_lm_datasets",
    "tokenize_and_pack",
]

logger = logging.getLogger(__name__)

# File suffix -> `datasets` packaged builder. Compressed variants (".jsonl.gz", ...) are read by the same
# builders, so the compression suffix is stripped before the lookup.
_BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".arrow": "arrow",
}
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip"}
_PACKED_COLUMNS = ("input_ids", "attention_mask", "labels")
# Tokenizers without a known limit report a huge sentinel (transformers' VERY_LARGE_INTEGER = 1e30).
_UNSET_MODEL_MAX_LENGTH = 10**9


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


def load_text_dataset(
    name_or_path: str,
    *,
    split: str = "train",
    config_name: str | None = None,
    text_column: str = "text",
    data_files: str | Sequence[str] | dict[str, Any] | None = None,
    streaming: bool = False,
) -> Dataset | IterableDataset:
    """Load one split of a text corpus from the Hub or from local files.

    ``name_or_path`` is either

    * a Hub dataset id (``"Skylion007/openwebtext"``, ``"wikitext"`` with ``config_name=
      "wikitext-103-raw-v1"``) or a ``datasets`` packaged builder name with ``data_files``
      (``"json"``, ``data_files="shards/*.jsonl"``); or
    * a local path: a ``.txt`` file (one document per line; blank lines are dropped, because an empty
      line is a paragraph break, not a document), a ``.jsonl``/``.json``/``.parquet``/``.csv``/``.arrow``
      file (optionally compressed), a directory of such files (``datasets`` infers the builder and the
      splits from the file names, as on the Hub), or a directory written by ``save_to_disk``.

    ``split`` accepts the ``datasets`` slicing syntax for every source (``"train[:1000]"``,
    ``"train[:5%]"``, ``"train[:10]+validation[:10]"``). For text files the slice counts documents
    *after* blank lines are dropped. A directory saved from a single ``Dataset`` (not a ``DatasetDict``)
    is exposed as the split ``"train"``, so that asking it for ``"validation"`` fails instead of
    silently evaluating on the training data.

    With ``streaming=True`` an ``IterableDataset`` is returned; only absolute slices
    (``"train[:1000]"``, ``"train[100:200]"``) are supported then.

    Raises ``FileNotFoundError`` for a missing local path, ``ConnectionError`` when the Hub is
    unreachable (e.g. ``HF_DATASETS_OFFLINE=1``) and the dataset is not cached, and ``ValueError`` for
    a missing split or text column and for an empty result; every message names the fix.
    """
    source = str(name_or_path)
    path = Path(source).expanduser()
    if path.exists():
        splits, is_text = _load_local(
            path, config_name=config_name, data_files=data_files, streaming=streaming, text_column=text_column
        )
    elif _looks_like_path(source):
        raise FileNotFoundError(
            f"local dataset path {str(path)!r} does not exist; check the path (relative paths are resolved "
            f"against the working directory {os.getcwd()!r})"
        )
    else:
        splits, is_text = _load_hub(
            source, config_name=config_name, data_files=data_files, streaming=streaming
        )

    if not splits:
        raise ValueError(f"{source!r} contains no data (no splits); check the path or dataset id")
    if is_text:  # the line-per-document builder: its only column is "text"
        _check_text_column(next(iter(splits.values())), text_column, source)
        splits = {name: _drop_blank_lines(part, text_column, name) for name, part in splits.items()}

    dataset = _select_split(splits, split, source, streaming=streaming)
    _check_text_column(dataset, text_column, source)
    if isinstance(dataset, Dataset) and len(dataset) == 0:
        after = " after dropping blank lines" if is_text else ""
        raise ValueError(f"{source!r} split {split!r} has no rows{after}; check the file or the split slice")
    return dataset


def _looks_like_path(name: str) -> bool:
    """Whether a non-existent ``name`` was meant as a local path rather than a Hub id ("user/name")."""
    if name.startswith(("/", "./", "../", "~", ".\\")) or os.path.isabs(name):
        return True
    if name.count("/") >= 2 or "\\" in name:  # Hub ids have at most one slash
        return True
    return _builder_for(Path(name)) is not None


def _builder_for(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    return _BUILDERS.get(suffixes[-1]) if suffixes else None


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _load_local(
    path: Path, *, config_name: str | None, data_files: Any, streaming: bool, text_column: str = "text"
) -> tuple[dict[str, Any], bool]:
    """The splits of a local file/directory, and whether they came from the line-per-document builder."""
    if path.is_dir() and _is_saved_dataset(path):
        if data_files is not None or config_name is not None:
            raise ValueError(
                f"{str(path)!r} was written by save_to_disk; data_files/config_name do not apply to it -- "
                "drop them, or point at a directory of raw data files instead"
            )
        saved = load_from_disk(str(path))
        splits = dict(saved) if isinstance(saved, DatasetDict) else {"train": saved}
        return splits, False

    if path.is_file():
        builder = _builder_for(path)
        if builder is None:
            supported = ", ".join(sorted(set(_BUILDERS)))
            raise ValueError(
                f"cannot tell the format of {str(path)!r} from its extension; supported: {supported} "
                "(optionally compressed, e.g. .jsonl.gz) -- rename the file or convert it"
            )
        if data_files is not None or config_name is not None:
            raise ValueError(
                f"{str(path)!r} is a single file; data_files/config_name only apply to Hub ids and "
                "directories -- drop them"
            )
        if path.stat().st_size == 0:
            raise ValueError(f"data file {str(path)!r} is empty; point at a file with data")
        with _readable(path):
            loaded = load_dataset(builder, data_files={"train": str(path)}, streaming=streaming)
        if not streaming:
            _check_no_null_text(loaded["train"], text_column, path, builder)
        return dict(loaded), builder == "text"

    files = [p for p in path.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.parts)]
    if data_files is None:
        if not files:
            raise ValueError(f"directory {str(path)!r} contains no data files; point at the files' directory")
        if all(p.stat().st_size == 0 for p in files):
            raise ValueError(f"every file in {str(path)!r} is empty; point at a directory with data")
    with _readable(path):
        loaded = load_dataset(str(path), config_name, data_files=data_files, streaming=streaming)
    return dict(loaded), _builder_name(loaded) == "text"


@contextlib.contextmanager
def _readable(path: Path) -> Iterator[None]:
    """Turn the opaque ``DatasetGenerationError`` of an unreadable file into a ValueError that says which
    file (and for invalid UTF-8 which line) and what to do."""
    from datasets.exceptions import DatasetGenerationError

    try:
        yield
    except DatasetGenerationError as err:
        cause = err.__cause__ or err.__context__
        while cause is not None and not isinstance(cause, UnicodeDecodeError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                line = _first_invalid_utf8_line(file)
                if line is not None:
                    raise ValueError(
                        f"{file}:{line}: not valid UTF-8 ({cause.reason}); save the file as UTF-8 "
                        "(e.g. iconv -f latin1 -t utf-8) or remove the line"
                    ) from None
        reason = err.__cause__ or err
        raise ValueError(
            f"could not read the data in {path}: {reason}; check that the file matches its extension"
        ) from None


def _first_invalid_utf8_line(file: Path) -> int | None:
    if _builder_for(file) is None or file.suffix.lower() in _COMPRESSION_SUFFIXES:
        return None  # binary or compressed: no line to point at
    with open(file, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def _check_no_null_text(dataset: Dataset, text_column: str, path: Path, builder: str) -> None:
    """A null text refused at load time, by its line in the file (not by its index after a shuffle)."""
    if text_column not in (dataset.column_names or []):
        return  # the missing column is reported with the available ones later
    nulls = np.flatnonzero(pc.is_null(dataset.data.column(text_column)).to_numpy(zero_copy_only=False))
    if nulls.size:
        row = int(nulls[0])
        where = f"{path}:{_line_of_row(path, row, builder)}" if builder in ("json", "csv") else str(path)
        more = f"; {nulls.size - 1} more null rows follow" if nulls.size > 1 else ""
        raise ValueError(
            f"{where}: {text_column!r} is null in data row {row + 1}{more}; fill in its text or remove it"
        )


def _line_of_row(path: Path, row: int, builder: str) -> int | str:
    """The file line of data row ``row`` (0-based) of a JSON-lines or CSV file (one row per line)."""
    if builder == "csv":
        return row + 2  # after the header line
    with open(path, "rb") as handle:
        seen = -1
        for number, raw in enumerate(handle, 1):
            if raw.strip():
                seen += 1
                if seen == row:
                    return number
    return "?"


def _load_hub(
    name: str, *, config_name: str | None, data_files: Any, streaming: bool
) -> tuple[dict[str, Any], bool]:
    from datasets import config as datasets_config
    from datasets.exceptions import DatasetNotFoundError

    try:
        loaded = load_dataset(name, config_name, data_files=data_files, streaming=streaming)
    except ConnectionError as err:
        if os.environ.get("HF_DATASETS_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
            why, how = "HF_DATASETS_OFFLINE=1", "load it once with HF_DATASETS_OFFLINE unset"
        elif datasets_config.HF_HUB_OFFLINE:
            why, how = "HF_HUB_OFFLINE=1", "load it once with HF_HUB_OFFLINE unset"
        else:
            why, how = "no connection", "load it once on a machine with access, sharing HF_DATASETS_CACHE"
        raise ConnectionError(
            f"{name!r} is not a local file/dir and the Hub is unreachable ({why}): download it first or "
            f"pass a local path ({how}, or save it with Dataset.save_to_disk and pass that directory)"
        ) from err
    except DatasetNotFoundError as err:
        raise FileNotFoundError(
            f"{name!r} is not a local file/dir and not a dataset on the Hub ({err}); check the spelling, "
            "log in for a gated/private dataset (hf auth login), or pass a local path"
        ) from err
    return dict(loaded), _builder_name(loaded) == "text"


def _builder_name(loaded: Any) -> str | None:
    parts = loaded.values() if isinstance(loaded, (DatasetDict, IterableDatasetDict)) else [loaded]
    for part in parts:
        info = getattr(part, "info", None)
        return getattr(info, "builder_name", None)
    return None


def _is_not_blank(texts: list[Any]) -> list[bool]:
    return [not isinstance(t, str) or bool(t.strip()) for t in texts]


def _drop_blank_lines(part: Any, text_column: str, split_name: str) -> Any:
    kwargs: dict[str, Any] = {"batched": True, "input_columns": [text_column]}
    if not isinstance(part, IterableDataset):  # lazy datasets take no progress-bar description
        kwargs["desc"] = f"Dropping blank lines ({split_name})"
    return part.filter(_is_not_blank, **kwargs)


def _check_text_column(dataset: Any, text_column: str, source: str) -> None:
    columns = getattr(dataset, "column_names", None)
    if columns is None or text_column in columns:  # None: a streaming dataset with unknown features
        return
    features = getattr(dataset, "features", None) or {}
    strings = [
        name
        for name, feature in features.items()
        if getattr(feature, "dtype", None) in ("string", "large_string")
    ]
    hint = f"; pass --text_column {strings[0]}" if strings else "; pass --text_column with one of them"
    raise ValueError(
        f"text column {text_column!r} not found in {source!r}; available columns: {columns}{hint}"
    )


_STREAMING_SPLIT = re.compile(r"^\s*([\w.-]+)\s*(?:\[\s*(\d*)\s*:\s*(\d*)\s*\])?\s*$")


def _select_split(splits: dict[str, Any], spec: str, source: str, *, streaming: bool) -> Any:
    """Apply a split spec ("train", "train[:10]", "train[:5%]+test[:5%]") to loaded splits."""
    available = list(splits)
    missing_hint = (
        f"split {{name!r}} not found in {source!r}; available splits: {available} -- pass one of them "
        "(to hold out evaluation data from the train split use --validation_split_percentage)"
    )
    if streaming:
        match = _STREAMING_SPLIT.match(spec)
        if match is None:
            raise ValueError(
                f"streaming supports a split name with an optional absolute slice (e.g. 'train[:1000]'), "
                f"got {spec!r}; use absolute row numbers or load without streaming"
            )
        name, start, stop = match.group(1), match.group(2), match.group(3)
        if name not in splits:
            raise ValueError(missing_hint.format(name=name))
        dataset = splits[name]
        start_n = int(start) if start else 0
        if start_n:
            dataset = dataset.skip(start_n)
        if stop:
            dataset = dataset.take(max(0, int(stop) - start_n))
        return dataset

    try:
        instruction = ReadInstruction.from_spec(spec)
    except (ValueError, AssertionError, AttributeError) as err:
        raise ValueError(
            f"invalid split {spec!r} ({err}); use e.g. 'train', 'train[:1000]', 'train[10%:]'"
        ) from err
    try:
        absolute = instruction.to_absolute({name: len(part) for name, part in splits.items()})
    except (KeyError, ValueError) as err:
        unknown = re.search(r"Unknown split \"([^\"]*)\"", str(err))
        if unknown or isinstance(err, KeyError):
            raise ValueError(missing_hint.format(name=unknown.group(1) if unknown else spec)) from err
        raise ValueError(f"invalid split {spec!r} for {source!r}: {err}") from err
    parts = []
    for piece in absolute:
        part = splits[piece.splitname]
        if not (piece.from_ == 0 and piece.to == len(part)):
            part = part.select(range(piece.from_, piece.to))
        parts.append(part)
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


# ----------------------------------------------------------------------------------------------------
# Tokenizing and packing
# ----------------------------------------------------------------------------------------------------


class _Tokenize:
    """Batched ``map`` function: token ids of each document (no special tokens) plus EOS.

    A class rather than a closure so that it pickles for ``num_proc`` workers and hashes
    deterministically for the ``datasets`` cache (every DDP rank computes the same fingerprint).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        text_column: str,
        eos_token_id: int | None,
        keep_columns: Sequence[str],
    ) -> None:
        self.tokenizer = tokenizer
        self.text_column = text_column
        self.eos = [] if eos_token_id is None else [int(eos_token_id)]
        self.keep_columns = tuple(keep_columns)

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        texts = batch[self.text_column]
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(
                    f"column {self.text_column!r} holds {type(text).__name__} ({text!r:.60}) in row {i} of a "
                    f"batch, not str; drop such rows first, e.g. "
                    f"dataset.filter(lambda r: isinstance(r[{self.text_column!r}], str))"
                )
        # Blank documents contribute nothing -- not even an EOS, which would be a stray empty "document".
        keep = [i for i, text in enumerate(texts) if text.strip()]
        ids: list[list[int]] = [[] for _ in texts]
        if keep:
            # verbose=False: documents longer than model_max_length are expected here (they are cut into
            # blocks next), so the "Token indices sequence length is longer than ..." warning is noise.
            encoded = self.tokenizer(
                [texts[i] for i in keep],
                add_special_tokens=False,
                return_attention_mask=False,
                verbose=False,
            )["input_ids"]
            for i, doc in zip(keep, encoded, strict=True):
                ids[i] = list(doc) + self.eos
        out: dict[str, list[Any]] = {"input_ids": ids}
        for name in self.keep_columns:
            out[name] = list(batch[name])
        return out


class _PackBlocks:
    """Batched ``map`` function over block numbers: block ``k`` is tokens ``[k*B, (k+1)*B)`` of the
    concatenation of all documents' token ids, read from the tokenized dataset by row range.

    Mapping over block numbers instead of documents is what makes packing global: a block that spans
    two ``map`` batches or two worker shards of the documents is still cut in the same place.
    """

    def __init__(
        self, tokenized: Dataset, offsets: np.ndarray, block_size: int, keep_columns: Sequence[str]
    ) -> None:
        self.tokenized = tokenized
        self.offsets = offsets
        self.block_size = block_size
        self.keep_columns = tuple(keep_columns)

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, Any]:
        size, offsets = self.block_size, self.offsets
        blocks = np.asarray(batch["block"], dtype=np.int64)
        first, last = int(blocks.min()), int(blocks.max())
        start, end = first * size, (last + 1) * size
        row0 = int(np.searchsorted(offsets, start, side="right")) - 1  # the row holding token `start`
        row1 = int(np.searchsorted(offsets, end, side="left"))  # rows [row0, row1) cover [start, end)
        table = self.tokenized.with_format("arrow")[row0:row1]
        flat = pc.list_flatten(table.column("input_ids")).to_numpy()
        base = int(offsets[row0])
        window = np.asarray(flat[start - base : end - base], dtype=np.int64).reshape(-1, size)
        input_ids = window[blocks - first]
        out: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": np.ones_like(input_ids),
            "labels": input_ids.copy(),  # causal LM: the model shifts labels itself
        }
        if self.keep_columns:
            values = {name: table.column(name).to_pylist() for name in self.keep_columns}
            lengths = np.diff(offsets[row0 : row1 + 1])
            for name in self.keep_columns:
                out[name] = []
            for k in blocks:
                lo = int(np.searchsorted(offsets, k * size, side="right")) - 1
                hi = int(np.searchsorted(offsets, (k + 1) * size, side="left"))
                rows = [r - row0 for r in range(lo, hi) if lengths[r - row0] > 0]
                for name in self.keep_columns:
                    out[name].append([values[name][r] for r in rows])
        return out


def tokenize_and_pack(
    dataset: Dataset | IterableDataset,
    tokenizer: PreTrainedTokenizerBase,
    *,
    block_size: int,
    text_column: str = "text",
    num_proc: int | None = None,
    add_eos: bool = True,
    keep_columns: Sequence[str] = (),
) -> Dataset | IterableDataset:
    """Tokenize ``text_column`` and pack the token stream into blocks of exactly ``block_size``.

    The ``run_clm`` recipe, made exact: documents are tokenized without special tokens, each non-blank
    document is followed by ``tokenizer.eos_token_id`` when ``add_eos`` (so that documents do not run
    together and the model learns where one ends), everything is concatenated in row order and cut into
    ``len(stream) // block_size`` blocks; the tail shorter than a block is dropped. Unlike ``run_clm``,
    packing is global rather than per ``map`` batch, so no tokens are lost at batch boundaries and the
    result is the same for every ``num_proc``.

    Output columns: ``input_ids``, ``attention_mask`` (all ones), ``labels`` (a copy of ``input_ids``;
    the model shifts them). Each column in ``keep_columns`` is carried along as, per block, the list of
    that column's values for the documents that contribute tokens to the block (``Trainer`` drops such
    extra columns before the forward pass when ``remove_unused_columns=True``, its default).

    An ``IterableDataset`` is packed lazily with the same rule (``num_proc`` is ignored then).
    Raises ``ValueError`` for an invalid ``block_size`` and when the data is too short for one block.
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
        raise ValueError(
            f"block_size must be an int >= 2 (an input token and its target), got {block_size!r}"
        )
    max_length = getattr(tokenizer, "model_max_length", None)
    if isinstance(max_length, int) and max_length < _UNSET_MODEL_MAX_LENGTH and block_size > max_length:
        raise ValueError(
            f"block_size={block_size} exceeds the tokenizer's model_max_length={max_length}; "
            f"pass a smaller --block_size (at most {max_length})"
        )
    eos_token_id = None
    if add_eos:
        eos_token_id = getattr(tokenizer, "eos_token_id", None)
        if eos_token_id is None:
            raise ValueError(
                f"add_eos=True but {type(tokenizer).__name__} has no eos_token; set tokenizer.eos_token "
                "or pass add_eos=False"
            )
    keep_columns = tuple(keep_columns)
    clash = [name for name in keep_columns if name in _PACKED_COLUMNS]
    if clash:
        raise ValueError(f"keep_columns may not include {clash}: those are the packed output columns")
    if num_proc is not None and (isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1):
        raise ValueError(f"num_proc must be a positive int or None, got {num_proc!r}")

    columns = dataset.column_names
    if columns is not None:
        _check_text_column(dataset, text_column, "the dataset")
        missing = [name for name in keep_columns if name not in columns]
        if missing:
            raise ValueError(f"keep_columns {missing} not in the dataset; available columns: {columns}")

    tokenize = _Tokenize(tokenizer, text_column, eos_token_id, keep_columns)
    if isinstance(dataset, IterableDataset):
        return IterableDataset.from_generator(
            _stream_blocks,
            gen_kwargs={"dataset": dataset, "tokenize": tokenize, "block_size": block_size},
        )

    if len(dataset) == 0:
        raise ValueError(_too_short_message(0, 0, block_size))
    if num_proc is not None:
        num_proc = min(num_proc, len(dataset))
    tokenized = dataset.map(
        tokenize,
        batched=True,
        num_proc=num_proc,
        remove_columns=[name for name in columns if name not in keep_columns],
        desc=f"Tokenizing column {text_column!r}",
    )
    return _pack(tokenized, block_size=block_size, num_proc=num_proc, keep_columns=keep_columns)


def _too_short_message(total: int, documents: int, block_size: int) -> str:
    return (
        f"packing produced 0 blocks: the data has {total} tokens in {documents} non-blank documents, fewer "
        f"than block_size={block_size}; use more data (a larger split or max_*_samples) or a smaller "
        "--block_size"
    )


def _pack(
    tokenized: Dataset, *, block_size: int, num_proc: int | None, keep_columns: tuple[str, ...]
) -> Dataset:
    lengths = pc.fill_null(pc.list_value_length(tokenized.with_format("arrow")["input_ids"]), 0)
    lengths = np.asarray(lengths.to_numpy(), dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    num_blocks = total // block_size
    if num_blocks == 0:
        raise ValueError(_too_short_message(total, int(np.count_nonzero(lengths)), block_size))

    # The block numbers are an in-memory table, so map would not cache its output by itself: name the
    # cache file after the tokenized data (which `datasets` fingerprints deterministically), so that a
    # second run -- or the other DDP ranks under main_process_first -- reuse it.
    fingerprint = Hasher.hash(("fairdistill-pack-v1", tokenized._fingerprint, block_size, keep_columns))
    cache_kwargs: dict[str, Any] = {"new_fingerprint": fingerprint}
    if is_caching_enabled() and tokenized.cache_files:
        cache_dir = os.path.dirname(tokenized.cache_files[0]["filename"])
        cache_kwargs["cache_file_name"] = os.path.join(cache_dir, f"packed-{fingerprint}.arrow")

    numbers = Dataset.from_dict({"block": np.arange(num_blocks, dtype=np.int64)})
    return numbers.map(
        _PackBlocks(tokenized, offsets, block_size, keep_columns),
        batched=True,
        batch_size=max(1, min(1000, 2**20 // block_size)),
        remove_columns=["block"],
        num_proc=None if num_proc is None else min(num_proc, num_blocks),
        desc=f"Packing {total} tokens into {num_blocks} blocks of {block_size}",
        **cache_kwargs,
    )


def _stream_blocks(
    dataset: IterableDataset, tokenize: _Tokenize, block_size: int
) -> Iterator[dict[str, Any]]:
    """The streaming twin of :class:`_PackBlocks`: the same blocks, produced on the fly."""
    ids: list[int] = []
    docs: list[tuple[int, int, dict[str, Any]]] = []  # (start, end) of each doc in `ids`, kept values
    for batch in dataset.iter(batch_size=1000):
        encoded = tokenize(batch)
        for i, doc in enumerate(encoded["input_ids"]):
            if doc:
                kept = {name: encoded[name][i] for name in tokenize.keep_columns}
                docs.append((len(ids), len(ids) + len(doc), kept))
                ids.extend(doc)
        while len(ids) >= block_size:
            block = ids[:block_size]
            example: dict[str, Any] = {
                "input_ids": block,
                "attention_mask": [1] * block_size,
                "labels": block[:],
            }
            for name in tokenize.keep_columns:
                example[name] = [kept[name] for start, _, kept in docs if start < block_size]
            yield example
            del ids[:block_size]
            docs = [
                (start - block_size, end - block_size, kept) for start, end, kept in docs if end > block_size
            ]


# ----------------------------------------------------------------------------------------------------
# The whole pipeline
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedData:
    """What :func:`prepare_lm_datasets` returns: the packed splits and statistics for logging.

    Iterates as ``(train, eval)`` so that ``train_ds, eval_ds = prepare_lm_datasets(...)`` works.

    ``stats`` (plain ints/floats, ready for ``trainer.log``/wandb): ``train_documents`` and
    ``eval_documents`` (non-blank source rows, before CDA), ``train_blocks``/``train_tokens`` and
    ``eval_blocks``/``eval_tokens`` (after truncation to max_*_samples), ``block_size``, and with CDA the
    :func:`cda_stats` of the augmented train split with a ``cda_`` prefix (``cda_rows``,
    ``cda_counterfactual_rows``, ``cda_original_rows``, ``cda_swapped_share``).
    """

    train: Dataset
    eval: Dataset | None
    stats: dict[str, int | float] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Dataset | None]:
        return iter((self.train, self.eval))


def cda_stats(dataset: Dataset) -> dict[str, int | float]:
    """Counts of a CDA-augmented dataset (the output of ``augment_dataset``, before packing).

    ``rows``; ``counterfactual_rows`` (rows added in two-sided mode, rows replaced in one-sided mode);
    ``original_rows``; ``swapped_share``: the share of rows with ``cda_swapped`` set, i.e. rows whose text
    the swap changes -- a low share means the corpus has little gendered text for CDA to act on.
    """
    columns = dataset.column_names or []
    missing = [name for name in (SOURCE_COLUMN, SWAPPED_COLUMN) if name not in columns]
    if missing:
        raise ValueError(
            f"dataset has no {missing} column(s); cda_stats needs the output of "
            "counterfactuals.cda.augment_dataset, before tokenize_and_pack drops them"
        )
    rows = len(dataset)
    table = dataset.with_format("arrow")
    counterfactual = pc.sum(pc.equal(table[SOURCE_COLUMN], COUNTERFACTUAL)).as_py() or 0
    swapped = pc.sum(pc.cast(table[SWAPPED_COLUMN], "int64")).as_py() or 0
    return {
        "rows": rows,
        "counterfactual_rows": int(counterfactual),
        "original_rows": rows - int(counterfactual),
        "swapped_share": float(swapped) / rows if rows else 0.0,
    }


def prepare_lm_datasets(
    *,
    dataset_name: str,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    text_column: str = "text",
    dataset_config_name: str | None = None,
    train_split: str = "train",
    eval_split: str | None = None,
    validation_split_percentage: float = 0.0,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    cda: str | None = None,
    cda_names: bool = False,
    cda_lexicon: Lexicon | None = None,
    num_proc: int | None = None,
    seed: int = 42,
    main_process_first: Callable[..., contextlib.AbstractContextManager[Any]] | None = None,
) -> PreparedData:
    """Load, split, augment (train only), tokenize and pack a corpus for causal-LM training.

    Order matters and is fixed:

    1. load ``train_split`` (and ``eval_split`` if given) with :func:`load_text_dataset`;
    2. otherwise, with ``validation_split_percentage > 0``, hold out that share of the train documents
       (``train_test_split(seed=seed)``) -- *before* augmentation, so that the counterfactual of an
       evaluation document can never land in the training data;
    3. with ``cda`` (``"two_sided"`` or ``"one_sided"``), augment the train split only
       (``counterfactuals.cda.augment_dataset``; ``cda_names`` also swaps first names, ``cda_lexicon``
       replaces the built-in pairs). Two-sided CDA
       places each counterfactual right after its original; the train documents are then shuffled
       (``seed``) before packing, or a block would often hold a document *and* its mirror image, and
       the student would learn to copy-and-swap within the context instead of seeing the two
       independently. The evaluation split stays unaugmented: it measures the real distribution;
    4. :func:`tokenize_and_pack` both splits;
    5. keep the first ``max_train_samples``/``max_eval_samples`` blocks. These count blocks, after
       tokenization of the whole split; to save tokenization time on a large corpus, slice the split
       instead (``train_split="train[:10000]"``).

    ``main_process_first`` is a context-manager factory such as ``TrainingArguments.main_process_first``:
    the whole preparation runs inside ``main_process_first(desc=...)``, so under DDP rank 0 builds the
    ``datasets`` cache and the other ranks load it.

    Returns a :class:`PreparedData` (``train``, ``eval`` or None, ``stats``), which also unpacks as
    ``train, eval``.
    """
    if cda is not None and cda not in MODES:
        raise ValueError(f"unknown cda mode {cda!r}; use one of {list(MODES)} or None (no augmentation)")
    validation_split_percentage = float(validation_split_percentage or 0.0)
    if not 0.0 <= validation_split_percentage < 100.0:
        raise ValueError(
            f"validation_split_percentage must be in [0, 100), got {validation_split_percentage!r}"
        )
    if eval_split is not None and validation_split_percentage > 0:
        raise ValueError(
            f"both eval_split={eval_split!r} and validation_split_percentage={validation_split_percentage} "
            "are set; pass only one (an existing evaluation split, or a share held out from train)"
        )
    if eval_split is not None and eval_split == train_split:
        raise ValueError(
            f"eval_split and train_split are both {train_split!r}: evaluation would run on training data; "
            "pass disjoint slices (e.g. 'train[:95%]' and 'train[95%:]') or use validation_split_percentage"
        )
    for name, value in (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")

    context = (
        main_process_first(desc="fairdistill dataset preparation")
        if main_process_first is not None
        else contextlib.nullcontext()
    )
    with context:
        train_docs = load_text_dataset(
            dataset_name, split=train_split, config_name=dataset_config_name, text_column=text_column
        )
        eval_docs = None
        if eval_split is not None:
            eval_docs = load_text_dataset(
                dataset_name, split=eval_split, config_name=dataset_config_name, text_column=text_column
            )
        elif validation_split_percentage > 0:
            if len(train_docs) < 2:
                raise ValueError(
                    f"cannot hold out {validation_split_percentage}% of {len(train_docs)} document(s); "
                    "use more data or pass an eval_split"
                )
            parts = train_docs.train_test_split(test_size=validation_split_percentage / 100, seed=seed)
            train_docs, eval_docs = parts["train"], parts["test"]

        stats: dict[str, int | float] = {"train_documents": len(train_docs), "block_size": block_size}
        if eval_docs is not None:
            stats["eval_documents"] = len(eval_docs)
        if cda is not None:
            train_docs, augmented = augment_training_documents(
                train_docs,
                cda,
                text_column=text_column,
                names=cda_names,
                lexicon=cda_lexicon,
                num_proc=num_proc,
                seed=seed,
            )
            stats.update(augmented)

        train = _pack_split(train_docs, "train", dataset_name, tokenizer, block_size, text_column, num_proc)
        if max_train_samples is not None and max_train_samples < len(train):
            train = train.select(range(max_train_samples))
        stats.update(train_blocks=len(train), train_tokens=len(train) * block_size)

        eval_ = None
        if eval_docs is not None:
            eval_ = _pack_split(eval_docs, "eval", dataset_name, tokenizer, block_size, text_column, num_proc)
            if max_eval_samples is not None and max_eval_samples < len(eval_):
                eval_ = eval_.select(range(max_eval_samples))
            stats.update(eval_blocks=len(eval_), eval_tokens=len(eval_) * block_size)

    logger.info("Prepared LM data from %r: %s", dataset_name, stats)
    return PreparedData(train=train, eval=eval_, stats=stats)


def augment_training_documents(
    docs: Dataset | IterableDataset,
    cda: str,
    *,
    text_column: str = "text",
    names: bool = False,
    lexicon: Lexicon | None = None,
    num_proc: int | None = None,
    seed: int = 42,
) -> tuple[Dataset | IterableDataset, dict[str, int | float]]:
    """CDA of training documents before packing (step 3 of :func:`prepare_lm_datasets`, also used by
    the trainer on a raw-text dataset): the augmented documents, shuffled after two-sided CDA (see
    there why), and their :func:`cda_stats` with a ``cda_`` prefix (none for a lazy dataset)."""
    docs = augment_dataset(
        docs, mode=cda, text_column=text_column, names=names, lexicon=lexicon, num_proc=num_proc
    )
    stats: dict[str, int | float] = {}
    if isinstance(docs, Dataset):
        stats = {f"cda_{key}": value for key, value in cda_stats(docs).items()}
    if cda == "two_sided":
        docs = docs.shuffle(seed=seed)
    return docs, stats


def _pack_split(
    docs: Dataset,
    which: str,
    dataset_name: str,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    text_column: str,
    num_proc: int | None,
) -> Dataset:
    try:
        return tokenize_and_pack(
            docs, tokenizer, block_size=block_size, text_column=text_column, num_proc=num_proc
        )
    except ValueError as err:
        raise ValueError(f"{which} split of {dataset_name!r}: {err}") from err
