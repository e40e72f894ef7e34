"""Counterfactual data augmentation through datasets.Dataset.map (counterfactuals.cda)."""

from __future__ import annotations

import pickle

import pytest
from datasets import Dataset, DatasetDict, Features, Value
from datasets.fingerprint import Hasher

from counterfactuals import Lexicon, swap_gender
from counterfactuals.cda import CDAError, CDATypeError, CounterfactualAugmenter, augment_dataset

# Unambiguous sentences (no him/hers/Mrs/...), so swap(swap(x)) == x holds.
TEXTS = [
    "He thanked his aunt.",
    "The sky is blue.",
    "",
    "My sister is an actress.",
    "Trains leave every hour.",
    "She met her brother yesterday.",
]
CHANGED = [True, False, False, True, False, True]


@pytest.fixture()
def corpus() -> Dataset:
    return Dataset.from_dict({"text": TEXTS, "id": list(range(len(TEXTS))), "lang": ["en"] * len(TEXTS)})


def test_two_sided_keeps_originals_and_adds_changed_counterfactuals(corpus: Dataset) -> None:
    out = augment_dataset(corpus).to_list()

    assert len(out) == len(TEXTS) + sum(CHANGED)
    originals = [row for row in out if row["cda_source"] == "original"]
    assert [row["text"] for row in originals] == TEXTS
    assert [row["id"] for row in originals] == list(range(len(TEXTS)))
    assert [row["cda_swapped"] for row in originals] == CHANGED

    counterfactuals = [(k, row) for k, row in enumerate(out) if row["cda_source"] == "counterfactual"]
    assert [row["id"] for _, row in counterfactuals] == [i for i, c in enumerate(CHANGED) if c]
    for k, row in counterfactuals:
        before = out[k - 1]  # each counterfactual directly follows its original
        assert before["cda_source"] == "original" and before["id"] == row["id"]
        assert row["text"] == swap_gender(before["text"]) != before["text"]
        assert row["cda_swapped"] is True
        assert row["lang"] == "en"  # other columns copied
    assert out[1]["text"] == "She thanked her uncle."
    assert out[-1]["text"] == "He met his sister yesterday."
    # neutral and empty rows are not duplicated
    assert [row["text"] for row in out].count("") == 1
    assert [row["text"] for row in out].count("The sky is blue.") == 1


def test_swap_of_counterfactual_rows_gives_back_the_originals(corpus: Dataset) -> None:
    out = augment_dataset(corpus).to_list()
    pairs = [(out[k - 1], row) for k, row in enumerate(out) if row["cda_source"] == "counterfactual"]
    assert len(pairs) == sum(CHANGED)
    for original, counterfactual in pairs:
        assert swap_gender(counterfactual["text"]) == original["text"]


def test_one_sided_replaces_changed_rows(corpus: Dataset) -> None:
    out = augment_dataset(corpus, mode="one_sided").to_list()
    assert [row["text"] for row in out] == [swap_gender(t) for t in TEXTS]
    assert [row["id"] for row in out] == list(range(len(TEXTS)))
    assert [row["cda_source"] for row in out] == ["counterfactual" if c else "original" for c in CHANGED]
    assert [row["cda_swapped"] for row in out] == CHANGED


@pytest.mark.parametrize("mode", ["two_sided", "one_sided"])
def test_result_does_not_depend_on_num_proc_or_batch_size(corpus: Dataset, mode: str) -> None:
    reference = augment_dataset(corpus, mode=mode).to_list()
    assert augment_dataset(corpus, mode=mode, num_proc=2, batch_size=2).to_list() == reference
    assert augment_dataset(corpus, mode=mode, batch_size=1).to_list() == reference


def test_dataset_dict_maps_each_split(corpus: Dataset) -> None:
    out = augment_dataset(DatasetDict(train=corpus, test=corpus.select([0, 1])))
    assert out["train"].num_rows == len(TEXTS) + sum(CHANGED)
    assert out["test"]["text"] == ["He thanked his aunt.", "She thanked her uncle.", "The sky is blue."]


def test_custom_lexicon_and_names() -> None:
    ds = Dataset.from_dict({"text": ["The wizard met the witch.", "John met Mary."]})
    lexicon = Lexicon.from_pairs([("wizard", "witch")])
    assert augment_dataset(ds, lexicon=lexicon, mode="one_sided")["text"] == [
        "The witch met the wizard.",
        "John met Mary.",
    ]
    named = augment_dataset(ds, names=True, mode="one_sided")["text"]
    assert named[1] == swap_gender("John met Mary.", names=True) != "John met Mary."


def test_augmenter_pickles_and_fingerprints_deterministically() -> None:
    augmenter = CounterfactualAugmenter(mode="one_sided", text_column="body")
    clone = pickle.loads(pickle.dumps(augmenter))
    batch = {"body": ["He is here.", "Rain."], "n": [1, 2]}
    assert (
        clone(batch)
        == augmenter(batch)
        == {
            "body": ["She is here.", "Rain."],
            "n": [1, 2],
            "cda_source": ["counterfactual", "original"],
            "cda_swapped": [True, False],
        }
    )
    # datasets caches map results by this hash: same settings -> same hash, other settings -> other
    assert Hasher.hash(augmenter) == Hasher.hash(
        CounterfactualAugmenter(mode="one_sided", text_column="body")
    )
    assert Hasher.hash(augmenter) != Hasher.hash(
        CounterfactualAugmenter(mode="two_sided", text_column="body")
    )


def test_empty_dataset() -> None:
    ds = Dataset.from_dict({"text": []}, features=Features({"text": Value("string")}))
    assert augment_dataset(ds).num_rows == 0


# -- bad input: every message names the fix --------------------------------------------------------


def test_missing_text_column_names_the_columns(corpus: Dataset) -> None:
    ds = corpus.rename_column("text", "sentence")
    with pytest.raises(CDAError) as err:
        augment_dataset(ds)
    message = str(err.value)
    assert "'text' not found" in message
    assert "sentence" in message and "id" in message
    assert "text_column='sentence'" in message


def test_none_value_names_the_row() -> None:
    ds = Dataset.from_dict({"text": ["He ran.", None, "She ran."]})
    with pytest.raises(CDATypeError) as err:
        augment_dataset(ds)
    message = str(err.value)
    assert "row 1" in message and "NoneType" in message
    assert "dataset.filter" in message


def test_non_string_value_in_a_plain_batch_names_the_row_and_type() -> None:
    with pytest.raises(TypeError) as err:  # CDATypeError is a TypeError too
        CounterfactualAugmenter()({"text": ["He ran.", "ok", 42]})
    assert "row 2 of the batch" in str(err.value) and "int" in str(err.value)
    assert "str(r['text'])" in str(err.value)


def test_non_string_column_type_suggests_a_cast() -> None:
    with pytest.raises(CDAError, match=r"cast_column\('text'"):
        augment_dataset(Dataset.from_dict({"text": [1, 2]}))


def test_unknown_mode_lists_the_valid_ones(corpus: Dataset) -> None:
    with pytest.raises(CDAError, match="two_sided, one_sided"):
        augment_dataset(corpus, mode="both")
    with pytest.raises(CDAError, match="valid modes"):
        CounterfactualAugmenter(mode="two-sided")


def test_augmenting_twice_is_refused(corpus: Dataset) -> None:
    with pytest.raises(CDAError, match="augmented already"):
        augment_dataset(augment_dataset(corpus))


def test_bad_map_settings(corpus: Dataset) -> None:
    with pytest.raises(CDAError, match="num_proc"):
        augment_dataset(corpus, num_proc=0)
    with pytest.raises(CDAError, match="Dataset.from_dict"):
        augment_dataset({"text": ["He ran."]})
