"""Utility metric: token-weighted perplexity with a sliding window (strided perplexity).

The recipe is the one of https://huggingface.co/docs/transformers/perplexity: the evaluation texts are
joined with ``"\\n\\n"`` and tokenized once into a stream ``x_0 .. x_{n-1}``; windows of ``max_length``
tokens start every ``stride`` tokens, and each window scores only the tokens that no earlier window has
scored, so that every scored token is predicted from up to ``max_length - 1`` tokens of context:

    PPL = exp( (1 / N) * sum_{t in S} -log p(x_t | x_{b(t)} .. x_{t-1}) ),   N = |S|,

where ``S`` is the set of scored positions and ``b(t)`` the start of the window that scores ``x_t``.
Unlike the doc's snippet, this is computed *exactly*: per-token negative log-likelihoods are summed over
all scored tokens and divided by their count. (The doc multiplies each window's mean loss by the number of
valid labels minus one; that weight is exact without overlap but one token short for every window that
overlaps its predecessor, and older versions of the doc averaged window means, which over-weights a short
last window.)

Which tokens are scored: a window ``[b, e)`` can predict ``x_t`` only for ``t > b`` (the window's first
token has no context inside it). With overlap (``stride < max_length``) window ``k`` scores ``[e_{k-1},
e_k)`` and every token except the very first of the stream is scored exactly once, ``N = n - 1``. Without
overlap (``stride == max_length``) the windows are disjoint chunks and each chunk's first token is not
scored (it would need context from the previous chunk), ``N = n - (number of chunks)``.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from eval.generation import model_max_positions

__all__ = [
    "DEFAULT_MAX_LENGTH_CAP",
    "DEFAULT_STRIDE",
    "load_text_for_perplexity",
    "strided_perplexity",
]

# Default window when max_length is not given: the model's position limit, but at most this many tokens;
# a window's logits cost max_length * vocab * 4 bytes (8192 x 49152 would be 1.6 GB on its own).
DEFAULT_MAX_LENGTH_CAP = 2048
# Default stride: the transformers recipe's 512 (half of GPT-2's 1024-token window), or half the window
# when the window is shorter than 1024 tokens.
DEFAULT_STRIDE = 512


class _Window(NamedTuple):
    """Tokens ``[begin, end)`` go into the model; tokens ``[first, end)`` are scored (``first > begin``)."""

    begin: int
    end: int
    first: int


def _windows(n_tokens: int, max_length: int, stride: int) -> list[_Window]:
    """The sliding windows over a stream of ``n_tokens`` tokens (see the module docstring)."""
    windows, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        first = max(prev_end, begin + 1)
        if first < end:
            windows.append(_Window(begin, end, first))
        prev_end = end
        if end == n_tokens:
            break
    return windows


def _batches(windows: list[_Window], batch_size: int) -> list[list[_Window]]:
    """Consecutive windows of the same length, at most ``batch_size`` per batch (full windows stack; the
    shorter last window runs on its own), so no padding is ever needed."""
    batches: list[list[_Window]] = []
    for window in windows:
        last = batches[-1] if batches else None
        if last and len(last) < batch_size and last[0].end - last[0].begin == window.end - window.begin:
            last.append(window)
        else:
            batches.append([window])
    return batches


def _accepts_logits_to_keep(model: Any) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _batch_nll(
    model: Any, ids: torch.Tensor, batch: list[_Window], device: torch.device
) -> tuple[float, int]:
    """Sum of ``-log p(x_t | window context)`` over the scored tokens of ``batch``, and their count.

    Only the logits that predict scored tokens are needed (positions ``first-1 .. end-2`` of each window),
    so when the model supports ``logits_to_keep`` only the last ``keep`` positions are projected onto the
    vocabulary. Cross-entropy is computed in float32 whatever the model dtype and summed in float64."""
    length = batch[0].end - batch[0].begin
    keep = max(w.end - w.first for w in batch) + 1  # +1: the last position's logits come along
    input_ids = torch.stack([ids[w.begin : w.end] for w in batch]).to(device)
    if _accepts_logits_to_keep(model):
        logits = model(input_ids=input_ids, logits_to_keep=keep).logits
    else:
        logits = model(input_ids=input_ids).logits[:, -keep:]
    offset = length - keep  # logits[:, j] belongs to window position offset + j
    total, count = 0.0, 0
    for row, w in enumerate(batch):
        start = w.first - 1 - w.begin - offset
        stop = w.end - 1 - w.begin - offset
        targets = input_ids[row, w.first - w.begin : w.end - w.begin]
        nll = F.cross_entropy(logits[row, start:stop].float(), targets, reduction="none")
        total += nll.double().sum().item()
        count += targets.numel()
    return total, count


def _resolve_window(model: Any, max_length: int | None, stride: int | None) -> tuple[int, int]:
    """The window size and stride, defaulted and validated (see :func:`strided_perplexity`)."""
    limit = model_max_positions(model)
    if max_length is None:
        max_length = min(limit or DEFAULT_MAX_LENGTH_CAP, DEFAULT_MAX_LENGTH_CAP)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2 (tokens per window), got {max_length!r}")
    if limit is not None and max_length > limit:
        raise ValueError(
            f"max_length={max_length} exceeds the model's {limit} positions; pass max_length <= {limit}"
        )
    if stride is None:
        stride = min(DEFAULT_STRIDE, max(max_length // 2, 1))
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= max_length:
        raise ValueError(
            f"stride must be an integer in [1, max_length={max_length}], got {stride!r}; stride == "
            "max_length means disjoint windows (fastest, least context), smaller strides give every token "
            "more context"
        )
    return max_length, stride


def strided_perplexity(
    model: Any,
    tokenizer: Any,
    texts: str | Sequence[str],
    *,
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 1,
    progress: bool = False,
) -> dict[str, float | int]:
    """Token-weighted sliding-window perplexity of ``model`` on ``texts`` (a string, or a list joined with
    ``"\\n\\n"``), tokenized once with the tokenizer's usual special tokens (e.g. Llama's BOS at the start).

    ``max_length`` is the window size in tokens (default: the model's position limit, capped at
    :data:`DEFAULT_MAX_LENGTH_CAP`); ``stride`` how far the window moves (default: 512, or
    ``max_length // 2`` for shorter windows; ``stride == max_length``: disjoint windows). ``batch_size``
    windows of full length run in one forward; the result does not depend on it.

    Returns ``perplexity`` (``exp(nll)``), ``nll`` (mean negative log-likelihood per scored token, nats),
    ``tokens`` (number of scored tokens), ``max_length``, ``stride`` and ``windows``. Raises ``ValueError``
    when the text has fewer than 2 tokens. The model runs in eval mode under ``torch.inference_mode`` and
    its training flag is restored afterwards.
    """
    max_length, stride = _resolve_window(model, max_length, stride)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    text = texts if isinstance(texts, str) else "\n\n".join(texts)
    ids = torch.tensor(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"], dtype=torch.long)
    if ids.numel() < 2:
        raise ValueError(
            f"the text has {ids.numel()} token(s); perplexity needs at least 2 (one to condition on, one to "
            "score) -- check that the evaluation text was loaded"
        )
    windows = _windows(ids.numel(), max_length, stride)
    batches = _batches(windows, batch_size)
    device = _model_device(model)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in _progress(batches, progress):
                batch_total, batch_count = _batch_nll(model, ids, batch, device)
                total, count = total + batch_total, count + batch_count
    finally:
        model.train(was_training)
    nll = total / count
    return {
        "perplexity": math.exp(nll),
        "nll": nll,
        "tokens": count,
        "max_length": max_length,
        "stride": stride,
        "windows": len(windows),
    }


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _progress(batches: list[list[_Window]], enabled: bool):
    if not enabled:
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, desc="perplexity", unit="batch", total=len(batches), mininterval=1.0)


# ----------------------------------------------------------------------------------------------------
# Evaluation text
# ----------------------------------------------------------------------------------------------------


def load_text_for_perplexity(
    source: str,
    *,
    split: str = "test",
    text_column: str = "text",
    max_chars: int | None = None,
) -> str | list[str]:
    """The evaluation text for :func:`strided_perplexity`.

    ``source`` is a local ``.txt`` file (returned whole, as one string), a local ``.jsonl`` file (the
    ``text_column`` of every line, as a list), or a Hub dataset id with an optional config after a colon,
    e.g. ``"wikitext:wikitext-103-raw-v1"`` (the ``text_column`` of ``split``, as a list; empty rows are
    kept, as in the transformers perplexity recipe, so numbers stay comparable). ``max_chars`` keeps only
    the first ``max_chars`` characters of text (for a list: documents in order, the last one cut).

    Offline (``HF_DATASETS_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``) a Hub dataset that is not cached fails at
    once with a ``ConnectionError`` naming the fix; without those variables and without a network,
    ``datasets`` retries for a while before failing the same way.
    """
    if max_chars is not None and (
        isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1
    ):
        raise ValueError(f"max_chars must be a positive integer or None, got {max_chars!r}")
    path = Path(source).expanduser()
    if path.exists():
        try:
            result: str | list[str] = _read_local(path, text_column)
        except UnicodeDecodeError:
            raise ValueError(_not_utf8(path)) from None
    elif _looks_like_path(source):
        raise FileNotFoundError(
            f"{str(path)!r} does not exist; check the path (relative paths are resolved against "
            f"{os.getcwd()!r}), or pass a Hub dataset id such as 'wikitext:wikitext-2-raw-v1'"
        )
    else:
        result = _read_hub(source, split, text_column)
    result = _cap_chars(result, max_chars)
    if not (result if isinstance(result, str) else "".join(result)).strip():
        raise ValueError(f"{source!r} contains no text (column {text_column!r}, split {split!r})")
    return result


def _not_utf8(path: Path) -> str:
    """Where a file stops being UTF-8, for the error message (the decoder's offset is per chunk)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        return f"{path} is not valid UTF-8; save it as UTF-8"
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        return f"{path}, line {line}: not valid UTF-8 (byte offset {err.start}); save it as UTF-8"


def _looks_like_path(source: str) -> bool:
    """Whether a non-existent ``source`` was meant as a local file rather than a Hub id ("user/name")."""
    if source.startswith(("/", "./", "../", "~")) or os.path.isabs(source) or "\\" in source:
        return True
    return source.count("/") >= 2 or Path(source).suffix.lower() in (".txt", ".jsonl", ".json")


def _read_local(path: Path, text_column: str) -> str | list[str]:
    suffix = path.suffix.lower()
    if path.is_dir() or suffix not in (".txt", ".jsonl"):
        raise ValueError(
            f"{str(path)!r} is not a .txt or .jsonl file; pass a plain-text file, a JSON-lines file with a "
            f"{text_column!r} field, or a Hub dataset id"
        )
    if suffix == ".txt":
        return path.read_text(encoding="utf-8")
    texts = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            value = record.get(text_column) if isinstance(record, dict) else None
            if not isinstance(value, str):
                raise ValueError(
                    f"{str(path)}:{line_number} has no string field {text_column!r}; pass text_column= the "
                    "name of the field that holds the text"
                )
            texts.append(value)
    return texts


def _read_hub(source: str, split: str, text_column: str) -> list[str]:
    from datasets import load_dataset

    name, _, config = source.partition(":")
    try:
        dataset = load_dataset(name, config or None, split=split)
    except ConnectionError as err:
        raise ConnectionError(
            f"{source!r} is not a local file and the Hub cannot be reached ({err}); download it once with "
            "network access (it is then cached in HF_DATASETS_CACHE), or pass a local .txt/.jsonl file"
        ) from err
    if text_column not in dataset.column_names:
        raise ValueError(
            f"{source!r} split {split!r} has no column {text_column!r} (columns: {dataset.column_names}); "
            "pass text_column="
        )
    return list(dataset[text_column])


def _cap_chars(text: str | list[str], max_chars: int | None) -> str | list[str]:
    if max_chars is None:
        return text
    if isinstance(text, str):
        return text[:max_chars]
    kept, left = [], max_chars
    for doc in text:
        if left <= 0:
            break
        kept.append(doc[:left])
        left -= len(kept[-1])
    return kept
