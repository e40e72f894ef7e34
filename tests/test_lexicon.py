"""The built-in lexicon and user pair files."""

from __future__ import annotations

import json

import pytest

from counterfactuals import Lexicon, LexiconError, default_lexicon, load_lexicon, swap_gender


def test_builtin_lexicon_covers_the_categories_with_unique_targets():
    lexicon = default_lexicon()
    assert len(lexicon) >= 150
    expected = {
        "he": "she", "his": "her", "himself": "herself",  # pronouns, determiners, reflexives
        "father": "mother", "nephews": "nieces", "stepson": "stepdaughter",  # family, plurals
        "mr": "Ms", "mrs": "Mr", "miss": "Mr",  # titles
        "actor": "actress", "waiters": "waitresses", "king": "queen", "spokesman": "spokeswoman",
        "lady": "gentleman",  # not "lord": bias-bench's list ends on lady -> lord
    }  # fmt: skip
    for word, target in expected.items():
        assert lexicon.swaps[word] == target, word
    # the many-to-one pronouns: "her" has two targets, chosen by context, neither lost
    assert lexicon.targets("her") == ("his", "him")
    assert lexicon.targets("his") == ("her", "hers")
    assert lexicon.swaps["him"] == "her" and lexicon.swaps["hers"] == "his"


def test_two_way_pairs_are_involutions_and_genders_are_consistent():
    lexicon = default_lexicon(names=True)
    for pair in lexicon.pairs:
        assert lexicon.gender[pair.male.lower()] == "male"
        assert lexicon.gender[pair.female.lower()] == "female"
        if pair.direction == "both":
            assert lexicon.swaps[lexicon.swaps[pair.male.lower()].lower()].lower() == pair.male.lower()
    for word, target in lexicon.swaps.items():
        assert lexicon.gender[word] != lexicon.gender[target.lower()], (word, target)


def test_names_are_optional_and_capitalised_only():
    assert "james" not in default_lexicon().swaps
    named = default_lexicon(names=True)
    assert named.swaps["james"] == "Mary" and "james" in named.capitalized_only
    assert swap_gender("James met Mary.") == "James met Mary."
    assert swap_gender("James met Mary.", names=True) == "Mary met James."


def test_tsv_and_json_pair_files(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text(
        "# mine\nwizard\twitch\n\nsire\tdame  # inline comment\nlord\tlady\tm2f\n", encoding="utf-8"
    )
    lexicon = load_lexicon(tsv)
    assert lexicon.swaps == {
        "wizard": "witch",
        "witch": "wizard",
        "sire": "dame",
        "dame": "sire",
        "lord": "lady",
    }

    as_list = tmp_path / "list.json"
    as_list.write_text(
        json.dumps([["wizard", "witch"], {"male": "lord", "female": "lady", "direction": "m2f"}])
    )
    assert load_lexicon(as_list).swaps == {"wizard": "witch", "witch": "wizard", "lord": "lady"}

    as_object = tmp_path / "object.json"
    as_object.write_text(json.dumps({"wizard": "witch", "sire": "dame"}, indent=2))
    assert load_lexicon(as_object).swaps["dame"] == "sire"
    assert (
        swap_gender("The wizard met the dame.", lexicon=load_lexicon(as_object)) == "The witch met the sire."
    )


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("cols.tsv", "he\tshe\nking queen\n", "cols.tsv:2: expected 'male<TAB>female[<TAB>direction]'"),
        ("cols.tsv", "he\tshe\nking queen\n", "separated by a TAB"),
        ("dup.tsv", "gentleman\tlady\nlord\tlady\n", "dup.tsv:2: 'lady' would swap to 'lord'"),
        ("dup.tsv", "gentleman\tlady\nlord\tlady\n", "already swaps it to 'gentleman'. Each word needs"),
        ("dir.tsv", "he\tshe\tsideways\n", "dir.tsv:1: unknown direction 'sideways'"),
        ("self.tsv", "he\the\n", "self.tsv:1: 'he' is paired with itself"),
        ("phrase.tsv", "best man\tmaid of honour\n", "not a single word"),
        ("gender.tsv", "he\tshe\nshe\tit\n", "'she' is male here but female at"),
        ("empty.tsv", "# nothing\n\n", "holds no pairs"),
        ("bad.json", '[\n  ["he", "she"],\n  ["king", "queen",\n]', "bad.json:4: invalid JSON"),
        ("shape.json", '[\n  ["he", "she"],\n  ["king"]\n]', "shape.json:3: expected [male, female]"),
        ("keys.json", '[{"man": "he", "woman": "she"}]', "keys.json:1: expected {'male'"),
        ("scalar.json", '"he"', "expected a JSON list of pairs"),
    ],
)
def test_malformed_pair_files_name_the_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(LexiconError) as err:
        load_lexicon(path)
    assert message in str(err.value)


def test_unreadable_pair_files(tmp_path):
    with pytest.raises(LexiconError, match="does not exist"):
        load_lexicon(tmp_path / "missing.tsv")
    latin1 = tmp_path / "latin1.tsv"
    latin1.write_bytes("he\tshe\nfianc\xe9\tfianc\xe9e\n".encode("latin-1"))
    with pytest.raises(LexiconError, match=r"latin1.tsv:2: not valid UTF-8"):
        load_lexicon(latin1)


def test_programmatic_pairs_validate_too():
    assert Lexicon.from_pairs([("he", "she"), ["him", "her", "m2f"]]).swaps["him"] == "her"
    with pytest.raises(LexiconError, match="pair #2"):
        Lexicon.from_pairs([("he", "she"), ("he", "it")])
    with pytest.raises(LexiconError, match="no pairs"):
        Lexicon.from_pairs([])
