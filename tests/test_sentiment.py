"""eval.sentiment: VADER labels, group shares and gaps, and the local regard-classifier wrapper."""

from __future__ import annotations

import functools

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

from eval.sentiment import (
    BOLD_THRESHOLD,
    RegardClassifier,
    sentiment_by_group,
    vader_compound,
    vader_labels,
)
from tests.assets import gpt2_tokenizer

POSITIVE = "She is a wonderful, brilliant and kind doctor."
NEGATIVE = "He was a cruel, violent and hateful man."
NEUTRAL = "The meeting is at noon in room 4."
MILD = "The food was okay."  # compound 0.23: positive at +-0.05, neutral at BOLD's +-0.5

REGARD_LABELS = {0: "negative", 1: "neutral", 2: "positive", 3: "other"}


def test_vader_labels_on_clear_sentences():
    assert vader_labels([POSITIVE, NEGATIVE, NEUTRAL, ""]) == ["positive", "negative", "neutral", "neutral"]
    compound = vader_compound([POSITIVE, NEGATIVE, NEUTRAL])
    assert compound[0] > 0.5 and compound[1] < -0.5 and compound[2] == 0.0


def test_vader_thresholds():
    assert vader_labels([MILD]) == ["positive"]
    assert vader_labels([MILD], positive_threshold=BOLD_THRESHOLD, negative_threshold=-BOLD_THRESHOLD) == [
        "neutral"
    ]
    with pytest.raises(ValueError, match="must be below"):
        vader_labels([MILD], positive_threshold=0.1, negative_threshold=0.2)
    with pytest.raises(TypeError, match="not one string"):
        vader_labels(MILD)


def test_group_shares_and_gaps_by_hand():
    texts = {
        "American_actors": [POSITIVE, POSITIVE, NEGATIVE, NEUTRAL],  # 2/4 positive, 1/4 negative
        "American_actresses": [POSITIVE, NEUTRAL, NEUTRAL, NEGATIVE, NEGATIVE],  # 1/5 positive, 2/5 negative
    }
    result = sentiment_by_group(texts)
    actors, actresses = result["groups"]["American_actors"], result["groups"]["American_actresses"]
    assert actors == {"n": 4, "positive": 0.5, "negative": 0.25, "neutral": 0.25}
    assert actresses == {"n": 5, "positive": 0.2, "negative": 0.4, "neutral": 0.4}
    assert result["gap_groups"] == ["American_actors", "American_actresses"]
    assert result["positive_gap"] == pytest.approx(0.5 - 0.2)
    assert result["negative_gap"] == pytest.approx(0.25 - 0.4)
    # the order of the mapping decides the sign
    swapped = sentiment_by_group({"b": texts["American_actresses"], "a": texts["American_actors"]})
    assert swapped["positive_gap"] == pytest.approx(-0.3)


def test_custom_labels_extra_label_and_three_groups():
    def fake(texts):
        return [t.split()[0] for t in texts]  # the first word is the label

    result = sentiment_by_group(
        {"x": ["positive a", "other b", "other c"], "y": ["neutral d"], "z": ["negative e", "positive f"]},
        label_fn=fake,
    )
    assert result["groups"]["x"] == {
        "n": 3,
        "positive": 1 / 3,
        "negative": 0.0,
        "neutral": 0.0,
        "other": 2 / 3,
    }
    assert result["groups"]["y"]["other"] == 0.0  # every group lists every label
    assert "positive_gap" not in result and "gap_groups" not in result

    bold = functools.partial(
        vader_labels, positive_threshold=BOLD_THRESHOLD, negative_threshold=-BOLD_THRESHOLD
    )
    assert sentiment_by_group({"g": [MILD]}, label_fn=bold)["groups"]["g"]["neutral"] == 1.0


def test_group_errors():
    with pytest.raises(ValueError, match="no groups"):
        sentiment_by_group({})
    with pytest.raises(ValueError, match="group 'b' has no texts"):
        sentiment_by_group({"a": [POSITIVE], "b": []})
    with pytest.raises(ValueError, match="returned 1 labels for 2 texts"):
        sentiment_by_group({"a": [POSITIVE, NEGATIVE]}, label_fn=lambda texts: ["positive"])


@pytest.fixture(scope="module")
def regard_dir(tmp_path_factory):
    """A tiny randomly initialised 4-label GPT-2 classifier saved with the real GPT-2 tokenizer."""
    path = tmp_path_factory.mktemp("regard")
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=1,
        n_embd=16,
        n_head=2,
        n_positions=64,
        num_labels=4,
        id2label=REGARD_LABELS,
        label2id={v: k for k, v in REGARD_LABELS.items()},
        pad_token_id=gpt2_tokenizer().eos_token_id,
    )
    GPT2ForSequenceClassification(config).save_pretrained(path)
    gpt2_tokenizer().save_pretrained(path)
    return path


def test_regard_classifier_on_a_tiny_local_model(regard_dir):
    classifier = RegardClassifier(regard_dir, batch_size=2)
    assert classifier.label_set == ["negative", "neutral", "positive", "other"]
    texts = [POSITIVE, NEGATIVE, NEUTRAL, "word " * 200]  # the last one is truncated to 64 positions
    labels = classifier.labels(texts)
    assert len(labels) == len(texts) and set(labels) <= set(classifier.label_set)
    for scores in classifier.scores(texts):
        assert set(scores) == set(classifier.label_set) and sum(scores.values()) == pytest.approx(
            1.0, abs=1e-5
        )
    assert classifier.labels(["", "  "]) == ["neutral", "neutral"]
    assert classifier.labels([]) == []
    result = sentiment_by_group(
        {"a": [POSITIVE, ""], "b": [NEGATIVE]}, label_fn=classifier.labels, label_set=classifier.label_set
    )
    assert list(result["groups"]["a"]) == ["n", "positive", "negative", "neutral", "other"]
    assert result["groups"]["a"]["neutral"] >= 0.5 and "positive_gap" in result


def test_regard_classifier_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; download it first"):
        RegardClassifier(tmp_path / "regardv3")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        RegardClassifier(tmp_path)
