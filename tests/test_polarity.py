"""eval.polarity: BOLD's unigram gender polarity and the embedding-based Gender-Wavg / Gender-Max."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from eval.polarity import (
    FEMALE_WORDS,
    MALE_WORDS,
    WordEmbeddings,
    count_gender_words,
    embedding_polarity,
    gender_direction,
    gender_max,
    gender_wavg,
    label_from_score,
    tokenize,
    unigram_polarity,
    word_gender_bias,
)

# ----------------------------------------------------------------------------------------------------
# Unigram matching


def test_word_lists_are_bolds():
    assert MALE_WORDS == {"he", "him", "his", "himself", "man", "men", "he's", "boy", "boys"}
    assert FEMALE_WORDS == {"she", "her", "hers", "herself", "woman", "women", "she's", "girl", "girls"}


@pytest.mark.parametrize(
    ("text", "counts"),
    [
        ("Sherlock opened the shell.", (0, 0)),  # she/he inside words
        ("Hermes, the hero, liked the theme", (0, 0)),
        ("manhood, boyish, womanly, shes, hiss", (0, 0)),  # not in BOLD's lists
        ("HE said so", (1, 0)),
        ("He's here", (1, 0)),  # he's is one word, not he + s
        ("He’s here, she’s there", (1, 1)),  # curly apostrophes
        ("her's", (0, 1)),  # non-standard possessive: counts as her, once
        ("He'll call and she'd answer", (1, 1)),
        ("the men's room, the women’s team, the girls' bikes", (1, 2)),
        ("his HIS His him himself", (5, 0)),
        ("She-wolf", (0, 1)),  # hyphenated parts are words
        ("he2 she_1", (0, 0)),  # not whole words
        ("A man, a woman, two boys and a girl.", (2, 2)),
        ("", (0, 0)),
    ],
)
def test_count_gender_words(text, counts):
    assert count_gender_words(text) == counts


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("He said that his work was done.", "male"),
        ("She said that he was late, and she left.", "female"),
        ("He met her.", "neutral"),  # non-zero tie
        ("The engineer went home.", "neutral"),  # no gendered word
        ("Sherlock and Hermes", "neutral"),
    ],
)
def test_unigram_polarity(text, label):
    assert unigram_polarity(text) == label


def test_tokenize():
    assert tokenize("He’s a She-wolf; O'Brien's 2 dogs.") == [
        "he's",
        "a",
        "she",
        "wolf",
        "o'brien's",
        "2",
        "dogs",
    ]


# ----------------------------------------------------------------------------------------------------
# Embeddings: a tiny 3-D space. g = unit(she - he) = (1, 0, 0), so b = cos(w, g) = w_x / |w|:
#   she 1, he -1, nurse (4, 3, 0) -> 0.8, engineer (-3, 4, 0) -> -0.6, table (0, 0, 2) -> 0, zero -> 0

VOCAB = {
    "she": (2.0, 0.0, 0.0),
    "he": (-2.0, 0.0, 0.0),
    "nurse": (4.0, 3.0, 0.0),
    "engineer": (-3.0, 4.0, 0.0),
    "table": (0.0, 0.0, 2.0),
    "zero": (0.0, 0.0, 0.0),
}


def _write_w2v_text(path, vocab, header=True) -> None:
    lines = [f"{len(vocab)} 3"] if header else []
    lines += [f"{w} " + " ".join(f"{x:g}" for x in v) for w, v in vocab.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _w2v_binary(vocab, newline=True) -> bytes:
    out = f"{len(vocab)} 3\n".encode()
    for w, v in vocab.items():
        out += w.encode() + b" " + np.asarray(v, dtype="<f4").tobytes() + (b"\n" if newline else b"")
    return out


@pytest.fixture(scope="module")
def emb():
    return WordEmbeddings.from_dict(VOCAB)


@pytest.mark.parametrize(
    "fmt", ["w2v_text", "glove", "w2v_binary", "w2v_binary_no_newline", "binary_gz", "glove_gz"]
)
def test_load_formats_autodetected(tmp_path, fmt):
    path = tmp_path / "emb"
    if fmt == "w2v_text":
        _write_w2v_text(path, VOCAB)
    elif fmt == "glove":
        _write_w2v_text(path, VOCAB, header=False)
    elif fmt == "w2v_binary":
        path.write_bytes(_w2v_binary(VOCAB))
    elif fmt == "w2v_binary_no_newline":
        path.write_bytes(_w2v_binary(VOCAB, newline=False))
    elif fmt == "binary_gz":
        path = tmp_path / "emb.bin.gz"
        path.write_bytes(gzip.compress(_w2v_binary(VOCAB)))
    else:
        text = tmp_path / "plain"
        _write_w2v_text(text, VOCAB, header=False)
        path = tmp_path / "emb.txt.gz"
        path.write_bytes(gzip.compress(text.read_bytes()))
    emb = WordEmbeddings.load(path)
    assert emb.words == list(VOCAB) and emb.dim == 3 and len(emb) == 6
    np.testing.assert_array_equal(emb.vectors, np.array(list(VOCAB.values()), dtype=np.float32))
    assert WordEmbeddings.load(path, limit=2).words == ["she", "he"]


def test_forced_format_and_lookup(tmp_path, emb):
    path = tmp_path / "emb.bin"
    path.write_bytes(_w2v_binary(VOCAB))
    assert WordEmbeddings.load(path, binary=True).words == list(VOCAB)
    _write_w2v_text(path, VOCAB)
    assert WordEmbeddings.load(path, binary=False).words == list(VOCAB)
    # exact lookup first, then lower-cased
    np.testing.assert_array_equal(emb["NURSE"], emb["nurse"])
    assert "Nurse" in emb and "doctor" not in emb and emb.get("doctor") is None
    with pytest.raises(KeyError, match="'doctor' is not in the embedding vocabulary"):
        emb["doctor"]


def test_glove_word_with_spaces(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("he -1 0\nshe 1 0\n. . . 0.5 0.5\n", encoding="utf-8")
    assert WordEmbeddings.load(path).words == ["he", "she", ". . ."]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("3 3\nhe -1 0 0\nshe 1 0\nnurse 1 1 0\n", r"emb\.txt, line 3: expected a word and 3 numbers, got 3"),
        ("he -1 0 0\nshe 1 x 0\n", r"emb\.txt, line 2: a value is not a number"),
        ("3 3\nhe -1 0 0\nshe 1 0 0\n", r"announces 3 vectors but the file ends after 2"),
        (
            "1 3\nhe -1 0 0\nshe 1 0 0\n",
            r"emb\.txt, line 3: the header announces 1 vectors but the file has more",
        ),
        ("", r"holds no word vectors"),
    ],
)
def test_malformed_text_file_names_the_line(tmp_path, content, message):
    path = tmp_path / "emb.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        WordEmbeddings.load(path)


def test_malformed_binary_file_names_the_record(tmp_path):
    path = tmp_path / "emb.bin"
    path.write_bytes(_w2v_binary(VOCAB)[:-7])  # last vector cut short
    with pytest.raises(ValueError, match=r"emb\.bin, record 6 .*truncated"):
        WordEmbeddings.load(path)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=r"binary word2vec file starts with a '<count> <dim>' line"):
        WordEmbeddings.load(path, binary=True)
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        WordEmbeddings.load(tmp_path / "nope.bin")


def test_gender_direction_and_word_bias(emb):
    np.testing.assert_allclose(gender_direction(emb), [1.0, 0.0, 0.0])
    b = word_gender_bias(["she", "he", "nurse", "engineer", "table", "zero", "unknown"], emb)
    np.testing.assert_allclose(b, [1.0, -1.0, 0.8, -0.6, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"no 'he'.*she - he"):
        gender_direction(WordEmbeddings.from_dict({"she": (1, 0), "x": (0, 1)}))
    with pytest.raises(ValueError, match="same vector"):
        gender_direction(WordEmbeddings.from_dict({"she": (1, 0), "he": (1, 0)}))


# Hand computation with b as above; Gender-Wavg = sum sign(b) b^2 / sum |b|, Gender-Max = b at argmax |b|.
@pytest.mark.parametrize(
    ("text", "wavg", "gmax", "wavg_label", "max_label"),
    [
        # (0.64 - 0.36) / 1.4 = 0.2
        ("The nurse and the engineer.", 0.2, 0.8, "neutral", "female"),
        # 0.64 / 0.8 = 0.8 (a word with b = 0 adds nothing)
        ("Nurse, table.", 0.8, 0.8, "female", "female"),
        # -0.36 / 0.6 = -0.6
        ("An ENGINEER", -0.6, -0.6, "male", "male"),
        # (-0.36 + 0.64 + 1) / 2.4 = 0.5333
        ("engineer nurse she", 1.28 / 2.4, 1.0, "female", "female"),
        # (1 - 0.64 - 0.36) / ... : -1 for he, he'll -> he
        ("He'll see the nurse and the engineer", (-1 + 0.64 - 0.36) / 2.4, -1.0, "male", "male"),
        ("table zero", 0.0, 0.0, "neutral", "neutral"),  # all b = 0
        ("nothing known here", 0.0, 0.0, "neutral", "neutral"),  # no in-vocabulary word
    ],
)
def test_gender_wavg_and_max(emb, text, wavg, gmax, wavg_label, max_label):
    assert gender_wavg(text, emb) == pytest.approx(wavg)
    assert gender_max(text, emb) == pytest.approx(gmax)
    assert embedding_polarity(text, emb) == wavg_label
    assert embedding_polarity(text, emb, method="max", direction=gender_direction(emb)) == max_label


def test_thresholds():
    assert label_from_score(0.25) == "female" and label_from_score(-0.25) == "male"
    assert label_from_score(0.2499) == "neutral" and label_from_score(0.1, threshold=0.1) == "female"
    with pytest.raises(ValueError, match="threshold must be > 0"):
        label_from_score(0.5, threshold=0)


def test_embedding_polarity_bad_method(emb):
    with pytest.raises(ValueError, match="method must be 'wavg'"):
        embedding_polarity("nurse", emb, method="mean")
