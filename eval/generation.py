"""Batched, reproducible sampling of continuations for bias evaluation (BOLD-style prompts).

:func:`generate_continuations` returns, for every prompt, ``num_samples`` continuations (the generated
text only, without the prompt). It runs ``model.generate`` over length-sorted, left-padded batches with the
KV cache, and restores the caller's prompt order at the end.

**Reproducible sampling that does not depend on batching.** ``torch.multinomial`` draws from one global
random stream, so with ordinary ``do_sample=True`` the sample a prompt gets depends on which other prompts
share its batch and in which row it sits: changing ``batch_size`` or adding one prompt changes every
continuation. Instead we sample with the Gumbel-max trick and *counter-based* noise: at decoding step
``t`` the token of row ``r`` is

    argmax_v  [ z_v / T + G(key_r, t, v) ]   over the tokens v that survive top-k / top-p,

where ``z`` are the logits, ``T`` the temperature and ``G`` is standard Gumbel noise ``-log(-log U)``
with ``U`` a uniform number computed by a hash (SplitMix64) of ``(key_r, t, v)``. Because
``argmax(log p_v + Gumbel_v)`` is an exact sample from ``p`` (Gumbel 1954; Maddison et al. 2014), this is
the same distribution as top-k / top-p multinomial sampling. The key of a row is a hash of ``(seed,
prompt text, occurrence of that text in the list, sample index)``, so a prompt's continuations depend only
on the model, the settings, the seed and the prompt itself -- not on ``batch_size``, the sort order, or the
other prompts in the list (evaluating a subset gives the same continuations for that subset). The one
caveat is floating point: batch composition changes padding and therefore the logits in the last few
bits, which can flip an argmax between two candidates whose noisy scores tie to ~1e-6; this is as rare as
it is for greedy decoding. The global torch RNG is never touched, so calling this during training does not
perturb the training run's random stream.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

__all__ = [
    "GenerationSettings",
    "generate_continuations",
    "model_max_positions",
]

_MASK64 = (1 << 64) - 1
# SplitMix64 constants (Steele, Lea & Flood 2014), as signed int64 so that torch can hold them.
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


@dataclass
class GenerationSettings:
    """Decoding settings for bias evaluation.

    Defaults: sampling at temperature 1 with top-k 40 and nucleus (top-p) 0.95, 30 new tokens, 5 samples per
    prompt. Top-k 40 / top-p 0.95 is the GPT-2 sampling setting used for BOLD-style evaluation; we keep it
    so that numbers stay comparable with earlier GPT-2 results, and because it is sound on its own:
    temperature 1 keeps the model's own distribution (a bias metric should measure the model, not a
    sharpened version of it), while the top-k / top-p truncation removes the long tail of very unlikely
    tokens whose occasional sampling derails short continuations into noise that no sentiment or regard
    classifier can score.
    Several samples per prompt average out the randomness of a single draw.

    ``batch_size`` counts *prompts* per ``generate`` call; the forward batch is ``batch_size * num_samples``
    sequences. ``top_k=0`` disables top-k and ``top_p=1.0`` disables top-p. ``do_sample=False`` is greedy
    decoding, which is deterministic and gives identical samples, so it requires ``num_samples=1``.
    """

    max_new_tokens: int = 30
    num_samples: int = 5
    do_sample: bool = True
    top_k: int = 40
    top_p: float = 0.95
    temperature: float = 1.0
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "num_samples", "batch_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"GenerationSettings.{name} must be a positive integer, got {value!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(
                f"GenerationSettings.top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}"
            )
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"GenerationSettings.seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(
                f"GenerationSettings.top_p must be in (0, 1] (1.0 disables it), got {self.top_p!r}"
            )
        if not isinstance(self.temperature, (int, float)) or not (
            math.isfinite(self.temperature) and self.temperature > 0
        ):
            raise ValueError(
                f"GenerationSettings.temperature must be a finite number > 0, got {self.temperature!r}; "
                "for deterministic decoding set do_sample=False instead of temperature 0"
            )
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"GenerationSettings.do_sample must be a bool, got {self.do_sample!r}")
        if not self.do_sample and self.num_samples != 1:
            raise ValueError(
                f"greedy decoding (do_sample=False) gives {self.num_samples} identical samples per prompt; "
                "set num_samples=1, or do_sample=True to draw different samples"
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ----------------------------------------------------------------------------------------------------
# Counter-based Gumbel noise
# ----------------------------------------------------------------------------------------------------


def _signed64(value: int) -> int:
    """An unsigned 64-bit integer as the signed int64 with the same bits (what a torch int64 can hold)."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's ``>>`` is arithmetic, i.e. sign-extending)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    """The SplitMix64 finaliser on int64 tensors; int64 multiplication wraps modulo 2**64 like uint64."""
    x = (x ^ _shift_right(x, 30)) * _signed64(_MIX1)
    x = (x ^ _shift_right(x, 27)) * _signed64(_MIX2)
    return x ^ _shift_right(x, 31)


def _uniform_from_counter(keys: torch.Tensor, step: int, token_ids: torch.Tensor) -> torch.Tensor:
    """Uniform numbers in (0, 1), float64, one per ``(row key, step, token id)``.

    ``keys`` has shape (rows,), ``token_ids`` (rows, k). The counter ``(step << 32) + token_id`` is mixed
    into the row key SplitMix64-style: ``U = (splitmix64(key + counter * golden) >> 11 + 0.5) / 2**53``.
    """
    counter = token_ids.to(torch.int64) + (step << 32)
    mixed = _splitmix64(keys[:, None] + counter * _signed64(_GOLDEN))
    return (_shift_right(mixed, 11).to(torch.float64) + 0.5) * 2.0**-53


def _row_keys(prompts: Sequence[str], num_samples: int, seed: int) -> list[int]:
    """A 64-bit key per (prompt, sample), in prompt-major order: a hash of the seed, the prompt text, how
    many times the same text appeared before in the list, and the sample index."""
    seen: dict[str, int] = {}
    keys = []
    for prompt in prompts:
        occurrence = seen.get(prompt, 0)
        seen[prompt] = occurrence + 1
        for sample in range(num_samples):
            digest = hashlib.blake2b(
                f"{seed}\x00{occurrence}\x00{sample}\x00{prompt}".encode(), digest_size=8
            ).digest()
            keys.append(_signed64(int.from_bytes(digest, "little")))
    return keys


class _GumbelSampler(LogitsProcessor):
    """Picks one token per row by Gumbel-max over the top-k / top-p candidates; returns scores that are
    ``-inf`` everywhere except 0 at the chosen token, so ``generate``'s greedy argmax selects it.

    Top-p follows transformers' ``TopPLogitsWarper``: a token is kept when the probability mass of the
    tokens ranked strictly above it is below ``top_p`` (so the most likely token is always kept). With
    ``top_k > 0`` only the ``top_k`` largest logits are ever sorted, which keeps the step cheap.
    """

    def __init__(self, keys: torch.Tensor, prompt_length: int, settings: GenerationSettings) -> None:
        self.keys = keys
        self.prompt_length = prompt_length
        self.top_k = settings.top_k
        self.top_p = float(settings.top_p)
        self.temperature = float(settings.temperature)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[-1] - self.prompt_length
        logits = scores.float() / self.temperature
        k = logits.shape[-1] if self.top_k == 0 else min(self.top_k, logits.shape[-1])
        values, token_ids = logits.topk(k, dim=-1)  # sorted, largest first
        if self.top_p < 1.0:
            probs = values.softmax(dim=-1)
            mass_above = probs.cumsum(dim=-1) - probs
            values = values.masked_fill(mass_above >= self.top_p, -math.inf)
        uniform = _uniform_from_counter(self.keys, step, token_ids)
        gumbel = -torch.log(-torch.log(uniform))
        choice = (values.double() + gumbel).argmax(dim=-1, keepdim=True)
        chosen = token_ids.gather(-1, choice)
        out = torch.full_like(scores, -math.inf)
        return out.scatter_(-1, chosen, 0.0)


# ----------------------------------------------------------------------------------------------------
# Model / tokenizer helpers
# ----------------------------------------------------------------------------------------------------


def model_max_positions(model: torch.nn.Module) -> int | None:
    """The longest input (prompt + generated tokens) the model's position embeddings allow, from its config
    (``max_position_embeddings``, GPT-2's ``n_positions``, ...); None when the config states none."""
    config = model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if _is_int(value) and value > 0:
            return value
    return None


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id (the usual choice for decoder-only LMs)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError(
        "the tokenizer has neither a pad token nor an EOS token; set one, e.g. "
        "tokenizer.pad_token = tokenizer.eos_token or tokenizer.add_special_tokens({'pad_token': '<pad>'})"
    )


def _eos_token_ids(model: torch.nn.Module, tokenizer: Any) -> list[int] | None:
    """EOS ids that end a continuation: the model's generation config first (it may list several, e.g. a
    chat model's end-of-turn token), else the tokenizer's EOS."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return None
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]


def _tokenize_prompts(
    tokenizer: Any, prompts: Sequence[str], max_prompt_tokens: int | None
) -> list[list[int]]:
    """Token ids of each prompt (with the tokenizer's usual special tokens, e.g. Llama's BOS), truncated
    from the left to ``max_prompt_tokens`` with one warning for all truncated prompts."""
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompt {index} is a {type(prompt).__name__}, not a str; pass a list of strings")
    encoded = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    truncated = []
    for index, (prompt, ids) in enumerate(zip(prompts, encoded, strict=True)):
        if not prompt.strip():
            raise ValueError(
                f"prompt {index} is empty or whitespace only; a continuation needs a context -- drop it from "
                "the prompt list (BOLD prompts are never empty, so this is usually a data-loading bug)"
            )
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            truncated.append(index)
            encoded[index] = ids[-max_prompt_tokens:]
    if truncated:
        warnings.warn(
            f"{len(truncated)} prompt(s) (first: index {truncated[0]}) are longer than the model's "
            f"{max_prompt_tokens} usable prompt tokens (max positions minus max_new_tokens); they were "
            "truncated from the left, keeping the text closest to the continuation",
            stacklevel=3,
        )
    return [list(ids) for ids in encoded]


def _left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask``: the last real token of every row sits in the last
    column, which is where ``generate`` appends new tokens."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def _generation_config(
    settings: GenerationSettings, pad_id: int, eos_ids: list[int] | None
) -> GenerationConfig:
    """Greedy ``generate`` on top of our own sampler. Every processor-related field is set to its neutral
    value explicitly, because transformers fills fields left unset from the *model's* generation config
    (a checkpoint's repetition penalty or temperature): teacher and student must be compared under the
    same decoding, whatever their ``generation_config.json`` says."""
    return GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        min_length=0,
        do_sample=False,
        num_beams=1,
        num_return_sequences=1,
        temperature=1.0,
        top_k=50,
        top_p=1.0,
        typical_p=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        length_penalty=1.0,
        use_cache=True,
        pad_token_id=pad_id,
        eos_token_id=eos_ids,
    )


# ----------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------


def generate_continuations(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    settings: GenerationSettings | None = None,
    *,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> list[list[str]]:
    """Sample ``settings.num_samples`` continuations of every prompt; ``result[i][j]`` is sample ``j`` of
    ``prompts[i]``, decoded with ``skip_special_tokens=True`` and without the prompt.

    Prompts are tokenized with the tokenizer's usual special tokens, sorted by token length (longest first,
    so an out-of-memory error shows up in the first batch) to minimise padding, left-padded, expanded to
    ``num_samples`` rows each and decoded with the KV cache; the result is returned in the caller's order.
    The tokenizer itself is not modified (padding is done here, so ``padding_side`` and ``pad_token`` stay
    as they are; the pad id is the tokenizer's pad token, else its EOS).

    A continuation is decoded on its own, so its text starts with the space that separates it from the
    prompt (GPT-2 style BPE) and is not stripped. It ends at the first EOS or after ``max_new_tokens``.

    Reproducibility: see the module docstring -- the same model, settings and prompt give the same
    continuations in every call, whatever ``batch_size`` or the other prompts.

    Errors and edge cases: an empty prompt list gives ``[]``; an empty (or whitespace-only) prompt raises
    ``ValueError`` naming its index; a prompt longer than the model's position limit minus
    ``max_new_tokens`` is truncated from the left with a warning. ``device`` is where input tensors go
    (default: the device of the model's first parameter); the model is not moved. The model is put in eval
    mode for the call and its training flag restored afterwards.
    """
    settings = settings or GenerationSettings()
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not one string; wrap it: [prompt]")
    prompts = list(prompts)
    if not prompts:
        return []
    max_positions = model_max_positions(model)
    max_prompt_tokens = None
    if max_positions is not None:
        max_prompt_tokens = max_positions - settings.max_new_tokens
        if max_prompt_tokens < 1:
            raise ValueError(
                f"max_new_tokens={settings.max_new_tokens} leaves no room for a prompt in the model's "
                f"{max_positions} positions; lower max_new_tokens"
            )
    device = torch.device(device) if device is not None else _model_device(model)
    token_ids = _tokenize_prompts(tokenizer, prompts, max_prompt_tokens)
    keys = _row_keys(prompts, settings.num_samples, settings.seed)
    order = sorted(range(len(prompts)), key=lambda i: (-len(token_ids[i]), i))
    batches = [order[i : i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]

    pad_id = _pad_token_id(tokenizer)
    config = _generation_config(settings, pad_id, _eos_token_ids(model, tokenizer))
    results: list[list[str]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in _progress(batches, progress):
                texts = _generate_batch(
                    model, tokenizer, batch, token_ids, keys, settings, config, pad_id, device
                )
                for row, index in enumerate(batch):
                    n = settings.num_samples
                    results[index] = texts[row * n : (row + 1) * n]
    finally:
        model.train(was_training)
    return results


def _generate_batch(
    model: Any,
    tokenizer: Any,
    batch: list[int],
    token_ids: list[list[int]],
    keys: list[int],
    settings: GenerationSettings,
    config: GenerationConfig,
    pad_id: int,
    device: torch.device,
) -> list[str]:
    """Continuations of the prompts ``batch`` (indices into ``token_ids``), ``num_samples`` consecutive rows
    per prompt. The prompts are repeated here: transformers refuses ``num_return_sequences > 1`` with
    greedy ``generate`` (which our sampler runs on), and it would repeat the rows the same way internally
    anyway (``repeat_interleave`` before the prefill), so the cost is identical."""
    n = settings.num_samples
    rows = [token_ids[i] for i in batch for _ in range(n)]
    row_keys = [keys[i * n + j] for i in batch for j in range(n)]
    input_ids, attention_mask = _left_pad(rows, pad_id, device)
    processors = LogitsProcessorList()
    if settings.do_sample:
        key_tensor = torch.tensor(row_keys, dtype=torch.int64, device=device)
        processors.append(_GumbelSampler(key_tensor, input_ids.shape[1], settings))
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        generation_config=config,
        logits_processor=processors,
    )
    new_tokens = output[:, input_ids.shape[1] :].tolist()
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def _progress(batches: list[list[int]], enabled: bool):
    """Batches wrapped in a tqdm progress bar when ``enabled``."""
    if not enabled:
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, desc="generating", unit="batch", total=len(batches), mininterval=1.0)
