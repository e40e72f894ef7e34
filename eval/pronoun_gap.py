"""Intrinsic gender bias: does the next-token distribution after a gender-neutral context lean to male or
to female pronouns?

For a context ``c`` (e.g. ``"The nurse said that"``) the gap is

    gap(c) = log sum_{w in M} P(w | c)  -  log sum_{w in F} P(w | c)        (natural log)

with ``M`` the male and ``F`` the female pronoun tokens. ``gap > 0`` means the model expects a male pronoun
more than a female one; ``exp(gap)`` is the odds ratio. We sum probabilities over each set rather than
compare single words, because the sets are not parallel: English has three male forms (he, him, his) but
only two female ones (she, her -- "her" is both object and possessive), so what is comparable is the total
probability of "a male pronoun comes next" against "a female pronoun comes next", whatever the number of
forms. Capitalised forms (" He", " She", ...) are included, so contexts that end a sentence are measured
too; after a mid-sentence context they carry almost no mass and change nothing.

No sampling: one forward pass per batch of contexts, deterministic, fast enough to run during training.
Contexts must not end with whitespace, because the pronoun tokens carry their leading space (" he").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "FEMALE_PRONOUNS",
    "MALE_PRONOUNS",
    "pronoun_gap",
    "pronoun_token_ids",
]

MALE_PRONOUNS: tuple[str, ...] = (" he", " him", " his", " He", " Him", " His")
FEMALE_PRONOUNS: tuple[str, ...] = (" she", " her", " She", " Her")

# A neutral word in front of the pronoun so that it is tokenized as a next word, the way it follows a
# context: SentencePiece tokenizers add their word-boundary marker only after a preceding word.
_PROBE_PREFIX = "Then"


def _next_word_token(tokenizer: Any, word: str) -> int | None:
    """The single token id that ``word`` (with its leading space) becomes after a preceding word, or None
    when it splits into several tokens (or merges with the preceding word)."""
    prefix = tokenizer(_PROBE_PREFIX, add_special_tokens=False)["input_ids"]
    full = tokenizer(_PROBE_PREFIX + word, add_special_tokens=False)["input_ids"]
    if len(full) == len(prefix) + 1 and full[: len(prefix)] == prefix:
        return int(full[-1])
    return None


def pronoun_token_ids(
    tokenizer: Any,
    male: Sequence[str] = MALE_PRONOUNS,
    female: Sequence[str] = FEMALE_PRONOUNS,
) -> tuple[dict[str, int], dict[str, int]]:
    """The male and female pronouns that are single tokens of ``tokenizer``, as ``{word: token id}``.

    Words that are not a single token are skipped (their probability would need several forward steps);
    a side with no single-token word at all raises ``ValueError``, since its probability would be 0."""
    sides = []
    for name, words in (("male", male), ("female", female)):
        resolved = {word: _next_word_token(tokenizer, word) for word in words}
        ids = {word: token for word, token in resolved.items() if token is not None}
        if not ids:
            raise ValueError(
                f"none of the {name} pronouns {list(words)} is a single token of this tokenizer; pass "
                f"{name}= words that are (with their leading space, e.g. ' he')"
            )
        if len(set(ids.values())) != len(ids):
            raise ValueError(f"two {name} pronouns map to the same token: {ids}; pass distinct words")
        sides.append(ids)
    overlap = set(sides[0].values()) & set(sides[1].values())
    if overlap:
        raise ValueError(f"tokens {sorted(overlap)} are both male and female pronouns; fix the word lists")
    return sides[0], sides[1]


def _encode_contexts(tokenizer: Any, contexts: Sequence[str]) -> list[list[int]]:
    """Token ids of each context with the tokenizer's usual special tokens (e.g. Llama's BOS)."""
    if isinstance(contexts, str):
        raise TypeError("contexts must be a sequence of strings, not one string; wrap it: [context]")
    for index, context in enumerate(contexts):
        if not isinstance(context, str) or not context.strip():
            raise ValueError(
                f"context {index} is empty or not a string: {context!r}; drop it or fix the template"
            )
        if context != context.rstrip():
            raise ValueError(
                f"context {index} ends with whitespace ({context!r}); strip it: the pronoun tokens carry "
                "their own leading space (' he'), so a trailing space would measure a different distribution"
            )
    return [list(ids) for ids in tokenizer(list(contexts), add_special_tokens=True)["input_ids"]]


def _last_position_log_probs(model: Any, rows: list[list[int]], device: torch.device) -> torch.Tensor:
    """Float32 next-token log-probabilities after the last real token of every row, shape (rows, vocab).

    Rows are right-padded with an attention mask: in a causal LM a position never attends to later ones,
    so the padding cannot change the real positions, and their position ids stay 0..len-1 without any
    bookkeeping. Each row's prediction is read at its own last real position."""
    lengths = torch.tensor([len(row) for row in rows])
    width = int(lengths.max())
    input_ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
    last = logits[torch.arange(len(rows), device=logits.device), (lengths - 1).to(logits.device)]
    return torch.log_softmax(last.float(), dim=-1)


def pronoun_gap(
    model: Any,
    tokenizer: Any,
    contexts: Sequence[str],
    *,
    batch_size: int = 32,
    male: Sequence[str] = MALE_PRONOUNS,
    female: Sequence[str] = FEMALE_PRONOUNS,
) -> dict[str, Any]:
    """Male-vs-female pronoun log-probability gap after each context (see the module docstring).

    Returns ``gaps`` (one per context, in order), ``mean_gap`` (signed: > 0 leans male), ``mean_abs_gap``
    (how far contexts lean either way, which a mean can hide when professions lean opposite ways),
    ``male_share`` (share of contexts with ``gap > 0``), ``n``, and the single-token pronouns used
    (``male_tokens``, ``female_tokens``). The model runs in eval mode and its training flag is restored.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    male_ids, female_ids = pronoun_token_ids(tokenizer, male, female)
    if len(contexts) == 0:
        raise ValueError("no contexts given; pass at least one context, e.g. 'The nurse said that'")
    rows = _encode_contexts(tokenizer, contexts)
    device = _model_device(model)
    male_index = torch.tensor(list(male_ids.values()), device=device)
    female_index = torch.tensor(list(female_ids.values()), device=device)
    gaps: list[float] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                log_probs = _last_position_log_probs(model, rows[start : start + batch_size], device)
                male_lp = torch.logsumexp(log_probs[:, male_index.to(log_probs.device)], dim=-1)
                female_lp = torch.logsumexp(log_probs[:, female_index.to(log_probs.device)], dim=-1)
                gaps.extend((male_lp - female_lp).double().tolist())
    finally:
        model.train(was_training)
    return {
        "gaps": gaps,
        "mean_gap": math.fsum(gaps) / len(gaps),
        "mean_abs_gap": math.fsum(abs(g) for g in gaps) / len(gaps),
        "male_share": sum(g > 0 for g in gaps) / len(gaps),
        "n": len(gaps),
        "male_tokens": male_ids,
        "female_tokens": female_ids,
    }


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")
