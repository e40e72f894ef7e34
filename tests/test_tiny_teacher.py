"""``tiny:gpt2`` / ``tiny:llama``: tiny random-init teachers built offline on first use, so that
recipes/tiny.yaml runs with no Hub (its 2-process run is in tests/test_train.py)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from distill.models import (
    GPT2_VOCAB_SIZE,
    gpt2_tokenizer_offline,
    load_causal_lm,
    load_tokenizer,
    resolve_model_path,
    tiny_teacher_dir,
)
from tests.assets import gpt2_tokenizer

TEXT = "He thanked his aunt, and she smiled at the nurse."


def test_the_offline_gpt2_tokenizer_is_gpt2s():
    tokenizer = gpt2_tokenizer_offline()
    assert len(tokenizer) == GPT2_VOCAB_SIZE and tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer(TEXT)["input_ids"] == gpt2_tokenizer()(TEXT)["input_ids"]
    assert tokenizer.model_max_length == 1024


def test_tiny_teacher_is_built_once_and_the_same_everywhere(tmp_path, monkeypatch):
    first = tiny_teacher_dir("gpt2", cache_dir=tmp_path / "a")
    weights = first / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert tiny_teacher_dir("gpt2", cache_dir=tmp_path / "a") == first and weights.stat().st_mtime_ns == stamp
    other = load_file(tiny_teacher_dir("gpt2", cache_dir=tmp_path / "b") / "model.safetensors")
    mine = load_file(weights)
    assert mine.keys() == other.keys() and all(torch.equal(mine[k], other[k]) for k in mine)  # seeded

    monkeypatch.setenv("FAIRDISTILL_CACHE", str(tmp_path / "a"))
    assert resolve_model_path("tiny:gpt2") == str(first)
    teacher, tokenizer = load_causal_lm(first), load_tokenizer(first)
    assert teacher.config.n_layer == 12 and teacher.config.vocab_size == len(tokenizer) == GPT2_VOCAB_SIZE
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    assert teacher(ids).logits.shape == (1, ids.shape[1], GPT2_VOCAB_SIZE)

    llama = load_causal_lm(resolve_model_path("tiny:llama"))
    assert type(llama).__name__ == "LlamaForCausalLM" and llama.config.num_hidden_layers == 12


def test_unknown_tiny_teacher_and_a_foreign_folder_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny teacher tiny:bert; use one of tiny:gpt2, tiny:llama"):
        resolve_model_path("tiny:bert")
    (tmp_path / "tiny-gpt2").mkdir()
    (tmp_path / "tiny-gpt2" / "mine.txt").write_text("not a model")
    with pytest.raises(FileExistsError, match="is not a fairdistill tiny teacher"):
        tiny_teacher_dir("gpt2", cache_dir=tmp_path)
    assert (tmp_path / "tiny-gpt2" / "mine.txt").read_text() == "not a model"  # never deleted
