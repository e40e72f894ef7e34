"""The test assets themselves: real tokenizers, tiny models, the BOLD data beside the repo."""

from __future__ import annotations

import json

import pytest
import torch

from tests.assets import tiny_gpt2, tiny_llama


@pytest.mark.parametrize(
    ("text", "ids"),
    [(" he", [339]), (" she", [673]), ("He", [1544]), ("She", [3347]), (" He", [679]), (" She", [1375])],
)
def test_gpt2_tokenizer_gendered_ids(gpt2_tok, text, ids):
    assert gpt2_tok.encode(text) == ids


def test_gpt2_tokenizer_round_trip_and_pad(gpt2_tok):
    text = "The nurse said that she would call her brother, and he answered."
    ids = gpt2_tok.encode(text)
    assert len(ids) > 5
    assert gpt2_tok.decode(ids) == text
    assert len(gpt2_tok) == 50257
    assert gpt2_tok.pad_token == gpt2_tok.eos_token == "<|endoftext|>"
    assert gpt2_tok.pad_token_id == 50256


@pytest.mark.parametrize(("build", "vocab"), [(tiny_gpt2, 50257), (tiny_llama, 49152)])
def test_tiny_model_forward_shape(build, vocab):
    model = build()
    assert model.config.vocab_size == vocab
    batch, seq = 3, 7
    input_ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    assert out.logits.shape == (batch, seq, vocab)
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama])
def test_tiny_model_seed_is_deterministic(build):
    a, b = build(seed=3).state_dict(), build(seed=3).state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    c = build(seed=4).state_dict()
    assert any(not torch.equal(a[name], c[name]) for name in a)


def test_tiny_model_custom_vocab():
    model = tiny_llama(vocab_size=100)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 100)


def test_smollm2_tokenizer(smollm2_tok):
    assert len(smollm2_tok) == 49152
    ids = smollm2_tok.encode(" he", add_special_tokens=False)
    assert len(ids) == 1
    text = "She is a doctor and he is a nurse."
    assert smollm2_tok.decode(smollm2_tok.encode(text, add_special_tokens=False)) == text


def test_bold_gender_prompts(bold_dir):
    path = bold_dir / "prompts" / "gender_prompt.json"
    assert path.is_file()
    data = json.loads(path.read_text(encoding="utf-8"))
    # {domain: {person: [prompt, ...]}}, the two gender domains of BOLD.
    assert set(data) == {"American_actors", "American_actresses"}
    prompts = [p for people in data.values() for ps in people.values() for p in ps]
    assert len(prompts) > 1000
    assert all(isinstance(p, str) and p.strip() for p in prompts)
