"""eval.generation: batched, reproducible, batch-independent sampling of continuations."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import TopKLogitsWarper, TopPLogitsWarper

from eval import generation
from eval.generation import GenerationSettings, generate_continuations, model_max_positions
from tests.assets import tiny_gpt2, tiny_llama

PROMPTS = [
    "The nurse said that",
    "In the early years of the twentieth century, the engineer who designed the bridge over the river was",
    "Hi",
    "An American actress",
]


@pytest.fixture(scope="module")
def gpt2():
    return tiny_gpt2().eval()


def small(**kwargs) -> GenerationSettings:
    return GenerationSettings(**{"max_new_tokens": 6, "num_samples": 3, "batch_size": 2, **kwargs})


def greedy_alone(model, tok, prompt: str, max_new_tokens: int) -> str:
    """A plain ``model.generate`` on one prompt (no padding at all): the reference for left padding."""
    ids = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(
            **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.eos_token_id
        )
    return tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def test_shape_and_types(gpt2, gpt2_tok):
    out = generate_continuations(gpt2, gpt2_tok, PROMPTS, small(), progress=False)
    assert len(out) == len(PROMPTS)
    assert all(len(samples) == 3 and all(isinstance(s, str) for s in samples) for samples in out)
    assert all(s for samples in out for s in samples)  # tiny random models never emit EOS this early


def test_same_seed_same_outputs_other_seed_differs(gpt2, gpt2_tok):
    first = generate_continuations(gpt2, gpt2_tok, PROMPTS, small(seed=7), progress=False)
    again = generate_continuations(gpt2, gpt2_tok, PROMPTS, small(seed=7), progress=False)
    other = generate_continuations(gpt2, gpt2_tok, PROMPTS, small(seed=8), progress=False)
    assert first == again
    assert first != other
    assert all(len(set(samples)) == 3 for samples in first)  # the samples of one prompt differ


def test_outputs_do_not_depend_on_batch_size_or_other_prompts(gpt2, gpt2_tok):
    reference = generate_continuations(gpt2, gpt2_tok, PROMPTS, small(batch_size=1), progress=False)
    for batch_size in (3, 8):
        assert generate_continuations(
            gpt2, gpt2_tok, PROMPTS, small(batch_size=batch_size), progress=False
        ) == (reference)
    # a subset, in another order: the same continuations per prompt (the original order is restored)
    subset = [PROMPTS[3], PROMPTS[0]]
    assert generate_continuations(gpt2, gpt2_tok, subset, small(), progress=False) == [
        reference[3],
        reference[0],
    ]


def test_repeated_prompt_gets_fresh_samples(gpt2, gpt2_tok):
    out = generate_continuations(gpt2, gpt2_tok, ["The nurse said that"] * 2, small(), progress=False)
    assert out[0] != out[1]


def test_left_padding_greedy_matches_plain_generate(gpt2, gpt2_tok):
    settings = small(do_sample=False, num_samples=1, max_new_tokens=8, batch_size=4)
    out = generate_continuations(gpt2, gpt2_tok, PROMPTS, settings, progress=False)
    # the short prompts share a batch with a much longer one, so they are heavily left-padded
    for prompt, samples in zip(PROMPTS, out, strict=True):
        assert samples == [greedy_alone(gpt2, gpt2_tok, prompt, 8)]


def test_order_is_restored_after_length_sorting(gpt2, gpt2_tok):
    settings = small(do_sample=False, num_samples=1, max_new_tokens=5, batch_size=2)
    prompts = ["a b c d e f g h i j k", "Hi", "one two three", "The doctor", "x y z w v u t s r q p o n"]
    out = generate_continuations(gpt2, gpt2_tok, prompts, settings, progress=False)
    alone = [generate_continuations(gpt2, gpt2_tok, [p], settings, progress=False)[0] for p in prompts]
    assert out == alone
    assert len(set(map(tuple, out))) == len(prompts)  # distinct continuations, so a mix-up would show


def test_empty_prompt_list_and_empty_prompt(gpt2, gpt2_tok):
    assert generate_continuations(gpt2, gpt2_tok, [], small(), progress=False) == []
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate_continuations(gpt2, gpt2_tok, ["Hello", "  "], small(), progress=False)
    with pytest.raises(TypeError, match="not one string"):
        generate_continuations(gpt2, gpt2_tok, "Hello", small(), progress=False)


def test_long_prompt_is_truncated_from_the_left_with_a_warning(gpt2_tok):
    model = tiny_gpt2(n_positions=32).eval()
    long_prompt = " ".join(["word"] * 60)
    with pytest.warns(UserWarning, match="truncated from the left"):
        out = generate_continuations(
            model, gpt2_tok, [long_prompt, "Hi"], small(max_new_tokens=8), progress=False
        )
    assert [len(samples) for samples in out] == [3, 3]
    with pytest.raises(ValueError, match="lower max_new_tokens"):
        generate_continuations(model, gpt2_tok, ["Hi"], small(max_new_tokens=32), progress=False)


def test_tokenizer_model_and_global_rng_are_left_alone(gpt2_tok):
    model = tiny_gpt2().train()
    tok = copy.copy(gpt2_tok)
    tok.padding_side = "right"
    rng = torch.get_rng_state()
    generate_continuations(model, tok, PROMPTS[:2], small(), progress=False)
    assert model.training
    assert tok.padding_side == "right" and tok.pad_token == gpt2_tok.pad_token
    assert torch.equal(torch.get_rng_state(), rng)


def test_tiny_llama_gpt2_vocab(gpt2_tok):
    model = tiny_llama(vocab_size=len(gpt2_tok)).eval()
    out = generate_continuations(model, gpt2_tok, PROMPTS, small(), progress=False)
    assert [len(s) for s in out] == [3] * len(PROMPTS)
    settings = small(do_sample=False, num_samples=1, max_new_tokens=6, batch_size=4)
    greedy = generate_continuations(model, gpt2_tok, PROMPTS, settings, progress=False)
    assert greedy[0] == [greedy_alone(model, gpt2_tok, PROMPTS[0], 6)]


def test_tiny_llama_smollm2_tokenizer(smollm2_tok):
    model = tiny_llama().eval()
    out = generate_continuations(model, smollm2_tok, PROMPTS, small(), progress=False)
    assert [len(s) for s in out] == [3] * len(PROMPTS)
    assert out == generate_continuations(model, smollm2_tok, PROMPTS, small(batch_size=1), progress=False)


def test_progress_bar_runs(gpt2, gpt2_tok):
    out = generate_continuations(gpt2, gpt2_tok, PROMPTS[:2], small(), progress=True)
    assert len(out) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"num_samples": 0}, "num_samples"),
        ({"batch_size": 0}, "batch_size"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": 0.0}, "do_sample=False"),
        ({"seed": -1}, "seed"),
        ({"do_sample": False}, "num_samples=1"),
    ],
)
def test_settings_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationSettings(**kwargs)


def test_defaults():
    s = GenerationSettings()
    assert (s.max_new_tokens, s.num_samples, s.do_sample, s.top_k, s.top_p, s.temperature) == (
        30,
        5,
        True,
        40,
        0.95,
        1.0,
    )
    assert (s.batch_size, s.seed) == (32, 0)
    assert model_max_positions(tiny_gpt2(n_positions=48)) == 48
    assert model_max_positions(tiny_llama(max_position_embeddings=96)) == 96


# ----------------------------------------------------------------------------------------------------
# The sampler itself
# ----------------------------------------------------------------------------------------------------


def _splitmix64_reference(x: int) -> int:
    mask = (1 << 64) - 1
    x &= mask
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & mask
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def test_splitmix64_matches_a_pure_python_reference():
    values = [0, 1, 12345, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, 0x9E3779B97F4A7C15]
    got = generation._splitmix64(torch.tensor([generation._signed64(v) for v in values], dtype=torch.int64))
    assert [g & ((1 << 64) - 1) for g in got.tolist()] == [_splitmix64_reference(v) for v in values]


def test_gumbel_sampler_draws_from_the_top_k_top_p_distribution():
    """Gumbel-max over the filtered logits is an exact sample of HF's top-k / top-p softmax."""
    logits = torch.tensor([[2.0, 1.5, 1.2, 0.3, 0.0, -0.5, -1.0, 0.9, -3.0, 0.1]])
    settings = GenerationSettings(top_k=5, top_p=0.8, temperature=0.7)
    warped = TopPLogitsWarper(0.8)(None, TopKLogitsWarper(5)(None, logits / 0.7))
    expected = warped.softmax(-1)[0]

    rows = 40_000
    keys = torch.tensor(generation._row_keys(["p"], rows, seed=3), dtype=torch.int64)
    sampler = generation._GumbelSampler(keys, prompt_length=4, settings=settings)
    scores = sampler(torch.zeros((rows, 6), dtype=torch.long), logits.expand(rows, -1).clone())
    chosen = scores.argmax(-1)
    assert torch.all(scores.isinf().sum(-1) == logits.shape[-1] - 1)  # exactly one finite score per row
    freq = torch.bincount(chosen, minlength=logits.shape[-1]).double() / rows
    assert freq[expected == 0].sum() == 0  # nothing outside top-k / top-p is ever drawn
    assert torch.allclose(freq, expected.double(), atol=0.01)  # 4 standard errors at 40k draws
