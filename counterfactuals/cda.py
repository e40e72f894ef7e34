"""Counterfactual data augmentation (CDA) of a ``datasets`` corpus with the text-level gender swap.

``augment_dataset(ds)`` returns ``ds`` plus, for every row the swap changes, its gender
counterfactual ("He thanked his aunt." -> "She thanked her uncle."); ``mode="one_sided"`` replaces
rows by their counterfactual instead. Two columns record what happened to each row:

``cda_source``
    ``"original"`` or ``"counterfactual"``.
``cda_swapped``
    For an original row: whether its counterfactual differs from it. For a counterfactual row: True.

Why rows whose swap is a no-op are not duplicated in two-sided mode: a gender-neutral sentence is its
own counterfactual, so a second copy adds no counterfactual signal and would only double the weight
of neutral text relative to gendered text. The output therefore has ``n + n_swapped`` rows, not
``2 n``.

Why each counterfactual comes directly after its original (instead of after the whole batch): the
result is then the same for every ``batch_size`` and ``num_proc`` — ``Dataset.map`` splits the data
into shards and batches, and a per-batch layout would change with them. Shuffle before training as
usual.

:class:`CounterfactualAugmenter` is the batched ``map`` function itself, for use in your own
pipelines: ``ds.map(CounterfactualAugmenter(), batched=True, num_proc=8)``. It pickles as its
settings (the compiled swapper is rebuilt in each worker) and its ``datasets`` fingerprint includes
a hash of the swap rules' source, so a cached ``map`` result is not reused after the lexicon or the
rules change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from .lexicon import Lexicon, default_lexicon
from .swap import TextSwapper

MODES = ("two_sided", "one_sided")
SOURCE_COLUMN = "cda_source"
SWAPPED_COLUMN = "cda_swapped"
ORIGINAL, COUNTERFACTUAL = "original", "counterfactual"


class CDAError(ValueError):
    """The data or the settings cannot be augmented; the message names the row or column and the fix."""


class CDATypeError(CDAError, TypeError):
    """A value of the text column is not a string."""


@cache
def rules_version() -> str:
    """Hash of the swap rules' source and the built-in pair files. Part of the augmenter's pickled
    state, so ``datasets`` gives a new fingerprint (no stale cache hit) when the rules change."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for path in (here / "swap.py", here / "lexicon.py", *sorted((here / "data").glob("*.tsv"))):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class CounterfactualAugmenter:
    """A batched ``Dataset.map`` function that adds (two-sided) or substitutes (one-sided) gender
    counterfactuals of ``text_column``; see the module docstring for the output layout.

    ``names=True`` also swaps the built-in first-name pairs (off by default here, on in training and
    ``fairdistill-cda``: see :mod:`counterfactuals.lexicon`); ``lexicon`` replaces the built-in pairs
    entirely (then ``names`` is ignored). The swapper is compiled once here and once per worker.
    """

    def __init__(
        self,
        mode: str = "two_sided",
        text_column: str = "text",
        names: bool = False,
        lexicon: Lexicon | None = None,
    ) -> None:
        if mode not in MODES:
            raise CDAError(f"unknown CDA mode {mode!r}; valid modes: {', '.join(MODES)}")
        if not isinstance(text_column, str) or not text_column:
            raise CDAError(f"text_column must be a column name (a non-empty str), got {text_column!r}")
        if lexicon is not None and not isinstance(lexicon, Lexicon):
            raise CDAError(
                f"lexicon must be a counterfactuals.Lexicon, got {type(lexicon).__name__}; "
                "build one with load_lexicon(path) or Lexicon.from_pairs([...])"
            )
        self.mode = mode
        self.text_column = text_column
        self.names = bool(names)
        self.lexicon = lexicon
        self._swapper = TextSwapper(lexicon if lexicon is not None else default_lexicon(self.names))

    def __repr__(self) -> str:
        lexicon = "default" if self.lexicon is None else f"{len(self.lexicon)} custom pairs"
        return (
            f"CounterfactualAugmenter(mode={self.mode!r}, text_column={self.text_column!r}, "
            f"names={self.names}, lexicon={lexicon})"
        )

    # Pickle the settings, not the compiled regex: small, plain-pickle safe, and deterministic for
    # the datasets fingerprint.
    def __getstate__(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "text_column": self.text_column,
            "names": self.names,
            "pairs": None if self.lexicon is None else self.lexicon.pairs,
            "rules_version": rules_version(),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        pairs = state["pairs"]
        self.__init__(  # type: ignore[misc]
            state["mode"], state["text_column"], state["names"], None if pairs is None else Lexicon(pairs)
        )

    def swap(self, text: str) -> str:
        """The counterfactual of one text."""
        return self._swapper(text)

    def __call__(
        self, batch: dict[str, Sequence[Any]], indices: Sequence[int] | None = None
    ) -> dict[str, list]:
        """Augment one batch (``{column: values}``). ``indices`` (from ``map(with_indices=True)``)
        only make error messages name the dataset row instead of the row within the batch."""
        column = self.text_column
        if column not in batch:
            raise CDAError(missing_column_message(column, batch))
        for name in (SOURCE_COLUMN, SWAPPED_COLUMN):
            if name in batch:
                raise CDAError(already_augmented_message(name))
        texts = list(batch[column])
        swapped: list[str] = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise CDATypeError(
                    _non_string_message(text, column, None if indices is None else int(indices[i]), i)
                )
            swapped.append(self._swapper(text))
        changed = [new != old for new, old in zip(swapped, texts, strict=True)]

        if self.mode == "one_sided":
            out = {name: list(values) for name, values in batch.items()}
            out[column] = swapped
            out[SOURCE_COLUMN] = [COUNTERFACTUAL if c else ORIGINAL for c in changed]
            out[SWAPPED_COLUMN] = changed
            return out

        # two-sided: each original, then its counterfactual when the swap changed it
        order: list[int] = []
        for i, c in enumerate(changed):
            order.append(i)
            if c:
                order.append(i)
        is_copy = [False] * len(order)
        for k in range(1, len(order)):
            is_copy[k] = order[k] == order[k - 1]
        out = {}
        for name, values in batch.items():
            if name == column:
                continue
            values = list(values)
            out[name] = [values[i] for i in order]
        out[column] = [swapped[i] if copy else texts[i] for i, copy in zip(order, is_copy, strict=True)]
        out[SOURCE_COLUMN] = [COUNTERFACTUAL if copy else ORIGINAL for copy in is_copy]
        out[SWAPPED_COLUMN] = [changed[i] for i in order]
        return out


def _non_string_message(value: Any, column: str, row: int | None, batch_row: int) -> str:
    where = f"row {row}" if row is not None else f"row {batch_row} of the batch"
    drop = f"dataset.filter(lambda r: isinstance(r[{column!r}], str))"
    if value is None:
        fill = f"dataset.map(lambda r: {{{column!r}: r[{column!r}] or ''}})"
        fix = f"drop such rows first with {drop}, or fill them with {fill}"
    else:
        cast = f"dataset.map(lambda r: {{{column!r}: str(r[{column!r}])}})"
        fix = f"cast them first with {cast}, or drop them with {drop}"
    return f"{where}: column {column!r} holds {type(value).__name__} ({value!r:.60}), not str; {fix}"


def missing_column_message(column: str, batch_or_columns: Any, string_columns: Sequence[str] = ()) -> str:
    """'column not found' with the available columns and a text_column=... suggestion."""
    columns = list(batch_or_columns)
    if not string_columns and isinstance(batch_or_columns, dict):
        string_columns = [
            name for name, values in batch_or_columns.items() if len(values) and isinstance(values[0], str)
        ]
    suggestion = string_columns[0] if string_columns else (columns[0] if columns else None)
    hint = f"; pass text_column={suggestion!r} (CLI: --text-column {suggestion})" if suggestion else ""
    return f"text column {column!r} not found; available columns: {columns}{hint}"


def already_augmented_message(name: str) -> str:
    return (
        f"the data already has a {name!r} column, so it looks augmented already; augmenting again would "
        f"add counterfactuals of counterfactuals. Use the original data, or drop the column first "
        f"(dataset.remove_columns([{SOURCE_COLUMN!r}, {SWAPPED_COLUMN!r}]))"
    )


def _string_columns(features: Any) -> list[str]:
    from datasets import Value

    return [
        name
        for name, feature in (features or {}).items()
        if isinstance(feature, Value) and feature.dtype in ("string", "large_string")
    ]


def _check_dataset(dataset: Any, text_column: str) -> None:
    """Fail before ``map`` starts (and before worker processes spawn) with the fix in the message."""
    columns = getattr(dataset, "column_names", None)
    if columns is None:  # an IterableDataset with unknown features: checked per batch instead
        return
    features = getattr(dataset, "features", None)
    if text_column not in columns:
        raise CDAError(missing_column_message(text_column, columns, _string_columns(features)))
    for name in (SOURCE_COLUMN, SWAPPED_COLUMN):
        if name in columns:
            raise CDAError(already_augmented_message(name))
    feature = (features or {}).get(text_column)
    from datasets import Value

    if isinstance(feature, Value) and feature.dtype not in ("string", "large_string", "null"):
        raise CDAError(
            f"column {text_column!r} has type {feature.dtype}, not string; cast it first with "
            f"dataset.cast_column({text_column!r}, datasets.Value('string'))"
        )
    if feature is not None and not isinstance(feature, Value):
        raise CDAError(
            f"column {text_column!r} is {type(feature).__name__} ({feature}), not a string per row; "
            "CDA swaps one text per row — flatten or join it into a string column first"
        )


def augment_dataset(
    dataset: Any,
    *,
    mode: str = "two_sided",
    text_column: str = "text",
    names: bool = False,
    lexicon: Lexicon | None = None,
    num_proc: int | None = None,
    batch_size: int = 1000,
    **map_kwargs: Any,
) -> Any:
    """Counterfactually augment a ``datasets.Dataset`` (or each split of a ``DatasetDict``; an
    ``IterableDataset`` is mapped lazily) — see the module docstring for the output layout.

    ``num_proc`` and ``batch_size`` are passed to ``Dataset.map`` (the result does not depend on
    them); further keyword arguments too (``load_from_cache_file``, ``keep_in_memory``, ...).
    Raises :class:`CDAError` naming the fix for a missing or non-string text column.
    """
    from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        return type(dataset)(
            {
                split: augment_dataset(
                    part,
                    mode=mode,
                    text_column=text_column,
                    names=names,
                    lexicon=lexicon,
                    num_proc=num_proc,
                    batch_size=batch_size,
                    **map_kwargs,
                )
                for split, part in dataset.items()
            }
        )
    if num_proc is not None and (not isinstance(num_proc, int) or num_proc < 1):
        raise CDAError(f"num_proc must be a positive int or None, got {num_proc!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise CDAError(f"batch_size must be a positive int, got {batch_size!r}")
    augmenter = CounterfactualAugmenter(mode, text_column, names=names, lexicon=lexicon)
    if isinstance(dataset, IterableDataset):
        _check_dataset(dataset, text_column)
        return dataset.map(augmenter, batched=True, batch_size=batch_size, with_indices=True, **map_kwargs)
    if not isinstance(dataset, Dataset):
        raise CDAError(
            f"expected a datasets.Dataset or DatasetDict, got {type(dataset).__name__}; "
            "wrap in-memory data with datasets.Dataset.from_dict({'text': [...]})"
        )
    _check_dataset(dataset, text_column)
    if num_proc is not None:
        num_proc = max(1, min(num_proc, len(dataset)))  # datasets warns and caps anyway
    sided = "two-sided" if mode == "two_sided" else "one-sided"
    map_kwargs.setdefault("desc", f"CDA ({sided}, column {text_column!r})")
    return dataset.map(
        augmenter,
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        num_proc=num_proc,
        **map_kwargs,
    )
