"""eval.pronoun_gap: male-vs-female next-pronoun log-probability gap, checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from eval.pronoun_gap import FEMALE_PRONOUNS, MALE_PRONOUNS, pronoun_gap, pronoun_token_ids
from tests.assets import tiny_gpt2, tiny_llama

CONTEXTS = [
    "The nurse said that",
    "After the long shift at the hospital, the surgeon told the family that",
    "The engineer",
    "When the secretary finished the report,",
    "Everyone agreed that the new teacher at the primary school on the hill was kind, because",
]


@pytest.fixture(scope="module")
def model():
    return tiny_gpt2().eval()


def manual_gap(model, tok, context: str) -> float:
    """Softmax of the last position's logits, probabilities summed over each pronoun set."""
    ids = tok(context, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(model(ids).logits[0, -1].double(), dim=-1)
    male = sum(probs[tok.encode(w)[0]] for w in MALE_PRONOUNS)
    female = sum(probs[tok.encode(w)[0]] for w in FEMALE_PRONOUNS)
    return math.log(male) - math.log(female)


def test_gpt2_pronouns_are_single_tokens(gpt2_tok):
    male, female = pronoun_token_ids(gpt2_tok)
    assert list(male) == list(MALE_PRONOUNS) and list(female) == list(FEMALE_PRONOUNS)
    assert male[" he"] == gpt2_tok.encode(" he")[0] and female[" she"] == gpt2_tok.encode(" she")[0]


def test_matches_manual_computation(model, gpt2_tok):
    result = pronoun_gap(model, gpt2_tok, CONTEXTS)
    expected = [manual_gap(model, gpt2_tok, c) for c in CONTEXTS]
    assert result["n"] == len(CONTEXTS)
    assert result["gaps"] == pytest.approx(expected, abs=1e-5)
    assert result["mean_gap"] == pytest.approx(sum(expected) / len(expected), abs=1e-5)
    assert result["mean_abs_gap"] == pytest.approx(sum(map(abs, expected)) / len(expected), abs=1e-5)
    assert result["male_share"] == sum(g > 0 for g in expected) / len(expected)


def test_padding_does_not_change_the_gaps(model, gpt2_tok):
    batched = pronoun_gap(model, gpt2_tok, CONTEXTS, batch_size=5)["gaps"]
    alone = [pronoun_gap(model, gpt2_tok, [c], batch_size=1)["gaps"][0] for c in CONTEXTS]
    assert batched == pytest.approx(alone, abs=1e-5)
    assert pronoun_gap(model, gpt2_tok, CONTEXTS, batch_size=2)["gaps"] == pytest.approx(alone, abs=1e-5)


def rigged(token_id: int, vocab_size: int, boost: float = 30.0):
    """A tiny GPT-2 whose lm_head adds ``boost`` to one token's logit at every position."""
    model = tiny_gpt2(vocab_size=vocab_size).eval()
    bias = torch.zeros(vocab_size)
    bias[token_id] = boost
    model.lm_head.register_forward_hook(lambda module, inputs, output: output + bias)
    return model


def test_rigged_models_lean_the_right_way(gpt2_tok):
    she = rigged(gpt2_tok.encode(" she")[0], len(gpt2_tok))
    result = pronoun_gap(she, gpt2_tok, CONTEXTS)
    assert result["mean_gap"] < -10 and result["male_share"] == 0.0
    assert result["mean_abs_gap"] == pytest.approx(-result["mean_gap"])

    he = rigged(gpt2_tok.encode(" he")[0], len(gpt2_tok))
    result = pronoun_gap(he, gpt2_tok, CONTEXTS)
    assert result["mean_gap"] > 10 and result["male_share"] == 1.0


def test_tiny_llama_with_smollm2_tokenizer(smollm2_tok):
    male, female = pronoun_token_ids(smollm2_tok)
    assert len(male) == len(MALE_PRONOUNS) and len(female) == len(FEMALE_PRONOUNS)
    model = tiny_llama().train()
    result = pronoun_gap(model, smollm2_tok, CONTEXTS, batch_size=2)
    alone = [pronoun_gap(model, smollm2_tok, [c])["gaps"][0] for c in CONTEXTS]
    assert result["gaps"] == pytest.approx(alone, abs=1e-5)
    assert model.training  # the training flag is restored


def test_word_lists(gpt2_tok):
    male, female = pronoun_token_ids(gpt2_tok, male=[" he", " heeeeeeeeeeey"], female=[" she"])
    assert male == {" he": gpt2_tok.encode(" he")[0]}  # multi-token words are skipped
    with pytest.raises(ValueError, match="none of the female pronouns"):
        pronoun_token_ids(gpt2_tok, female=[" shhhhhhhhhhhhhhhhh"])
    with pytest.raises(ValueError, match="both male and female"):
        pronoun_token_ids(gpt2_tok, male=[" he"], female=[" he", " she"])


def test_context_errors(model, gpt2_tok):
    with pytest.raises(ValueError, match="context 1 ends with whitespace"):
        pronoun_gap(model, gpt2_tok, ["The nurse said", "The doctor said "])
    with pytest.raises(ValueError, match="context 0 is empty"):
        pronoun_gap(model, gpt2_tok, [""])
    with pytest.raises(ValueError, match="no contexts"):
        pronoun_gap(model, gpt2_tok, [])
    with pytest.raises(TypeError, match="not one string"):
        pronoun_gap(model, gpt2_tok, "The nurse said")
