"""role_reversal: the perturbed teacher target, against closed forms and its invariants."""

from __future__ import annotations

import pytest
import torch

from counterfactuals import build_pair_map
from distill.losses import COMBINE_MODES, role_reversal

HE, SHE, HE_CAP, SHE_CAP = 339, 673, 1544, 3347


@pytest.fixture(scope="module")
def pair_map(gpt2_tok):
    return build_pair_map(gpt2_tok)


def logits(*shape, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, 50257, generator=g, dtype=torch.float64) * scale


def one_to_one_pairs(pair_map):
    """(token, σ(token)) for every token whose swap is a two-way, context-free pair."""
    sigma, n = pair_map.sigma, pair_map.vocab_size
    single = torch.bincount(pair_map.edge_src, minlength=n) == 1
    tokens = (
        (sigma != torch.arange(n)) & (sigma[sigma] == torch.arange(n)) & single & single[sigma]
    ).nonzero()
    return tokens.squeeze(-1), sigma[tokens.squeeze(-1)]


@pytest.mark.parametrize("scope", ["all", "gendered"])
@pytest.mark.parametrize("mode", COMBINE_MODES)
def test_target_is_a_distribution(pair_map, mode, scope):
    target = role_reversal(
        logits(2, 3, seed=0), logits(2, 3, seed=1), pair_map, mode, temperature=2.0, scope=scope
    )
    assert target.shape == (2, 3, 50257) and target.dtype == torch.float64
    torch.testing.assert_close(
        target.exp().sum(-1), torch.ones(2, 3, dtype=torch.float64), rtol=0, atol=1e-10
    )


@pytest.mark.parametrize("scope", ["all", "gendered"])
@pytest.mark.parametrize("mode", COMBINE_MODES)
def test_neutral_context_gives_every_pair_equal_probability(pair_map, mode, scope):
    teacher = logits(4, seed=2)
    teacher[:, HE] += 4.0  # a teacher that strongly prefers "he" in a neutral context
    for counterfactual in (None, teacher.clone()):
        target = role_reversal(teacher, counterfactual, pair_map, mode, scope=scope)
        males, females = one_to_one_pairs(pair_map)
        assert len(males) > 100
        torch.testing.assert_close(target[:, males], target[:, females], rtol=1e-9, atol=1e-12)
        assert torch.allclose(target[:, HE], target[:, SHE])
    # and the plain teacher target is far from parity, so the test can fail
    plain = torch.log_softmax(teacher, -1)
    assert (plain[:, HE] - plain[:, SHE]).abs().min() > 1.0


def reference_target(teacher, counterfactual, pair_map, mode, temperature=1.0, scope="all"):
    """Plain full-vocabulary formula, written out for comparison."""
    p = torch.softmax(teacher / temperature, -1)
    p_cf = torch.softmax(counterfactual / temperature, -1)
    q = pair_map.map_back(p_cf, p)
    combined = {"max": torch.maximum(p, q), "mean": (p + q) / 2, "expMean": (p * q).sqrt()}[mode]
    if scope == "gendered":
        keep = torch.ones(p.shape[-1], dtype=torch.bool)
        keep[pair_map.gendered_ids] = False
        combined = torch.where(keep, p, combined)
    return (combined / combined.sum(-1, keepdim=True)).log()


@pytest.mark.parametrize("scope", ["all", "gendered"])
@pytest.mark.parametrize("mode", COMBINE_MODES)
def test_matches_the_closed_form_and_is_chunk_invariant(pair_map, mode, scope):
    teacher, counterfactual = logits(3, 5, seed=3), logits(3, 5, seed=4)
    expected = reference_target(teacher, counterfactual, pair_map, mode, temperature=1.5, scope=scope)
    for chunk_size in (1, 4, 1024):
        got = role_reversal(
            teacher, counterfactual, pair_map, mode, temperature=1.5, scope=scope, chunk_size=chunk_size
        )
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    # one-to-one pairs read the counterfactual through σ: q(he) = p̃(she)
    p, p_cf = torch.softmax(teacher / 1.5, -1), torch.softmax(counterfactual / 1.5, -1)
    if mode == "mean" and scope == "all":
        torch.testing.assert_close(got.exp()[..., HE], (p[..., HE] + p_cf[..., SHE]) / 2)


def test_gendered_scope_leaves_other_tokens_untouched_up_to_renormalisation(pair_map):
    teacher, counterfactual = logits(2, seed=5), logits(2, seed=6)
    target = role_reversal(teacher, counterfactual, pair_map, "max", scope="gendered")
    keep = torch.ones(50257, dtype=torch.bool)
    keep[pair_map.gendered_ids] = False
    shift = target[:, keep] - torch.log_softmax(teacher, -1)[:, keep]
    torch.testing.assert_close(shift, shift[:, :1].expand_as(shift))  # one constant per row
    everywhere = role_reversal(teacher, counterfactual, pair_map, "max", scope="all")
    assert not torch.allclose(
        everywhere[:, keep] - everywhere[:, keep][:, :1], target[:, keep] - target[:, keep][:, :1]
    )


def test_low_precision_inputs_give_fp32_targets(pair_map):
    teacher, counterfactual = logits(2, 3, seed=7).bfloat16(), logits(2, 3, seed=8).bfloat16()
    target = role_reversal(teacher, counterfactual, pair_map, "expMean")
    assert target.dtype == torch.float32
    expected = reference_target(teacher.double(), counterfactual.double(), pair_map, "expMean")
    torch.testing.assert_close(target.double(), expected, rtol=1e-4, atol=1e-4)


def test_bad_input(pair_map):
    teacher = logits(2, seed=9)
    with pytest.raises(ValueError, match="unknown perturbation mode 'median'; use one of max, mean, expMean"):
        role_reversal(teacher, None, pair_map, "median")
    with pytest.raises(ValueError, match="unknown perturbation scope"):
        role_reversal(teacher, None, pair_map, "max", scope="pronouns")
    with pytest.raises(ValueError, match="the swap keeps sequence lengths"):
        role_reversal(teacher, logits(3, seed=1), pair_map, "max")
    with pytest.raises(ValueError, match="vocab_size=teacher.config.vocab_size"):
        role_reversal(torch.zeros(2, 100), None, pair_map, "max")
    with pytest.raises(ValueError, match="temperature"):
        role_reversal(teacher, None, pair_map, "max", temperature=0.0)
