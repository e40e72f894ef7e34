"""eval.perplexity: exact token-weighted strided perplexity, checked against direct computations."""

from __future__ import annotations

import json
import math

import pytest
import torch

from eval.perplexity import _windows, load_text_for_perplexity, strided_perplexity
from tests.assets import tiny_gpt2, tiny_llama

TEXT = (
    "The committee met on Tuesday to discuss the budget for the coming year. After a long debate, the "
    "members agreed to fund the new library, the repairs to the old bridge and a summer program for "
    "children. The mayor thanked everyone and closed the meeting shortly before nine in the evening."
)


@pytest.fixture(scope="module")
def model():
    return tiny_gpt2(n_positions=64).eval()


def token_ids(tok, text: str = TEXT) -> torch.Tensor:
    return torch.tensor(tok(text)["input_ids"])


def summed_loss(model, ids: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[float, int]:
    """Sum of the model's own shifted cross-entropy over the labelled positions, and their count."""
    labels = ids.clone() if labels is None else labels
    with torch.no_grad():
        loss = model(input_ids=ids[None], labels=labels[None]).loss.item()
    count = int((labels[1:] != -100).sum())
    return loss * count, count


def test_short_text_equals_one_forward(model, gpt2_tok):
    ids = token_ids(gpt2_tok, "The nurse said that the doctor was late again.")
    result = strided_perplexity(model, gpt2_tok, "The nurse said that the doctor was late again.")
    with torch.no_grad():
        loss = model(input_ids=ids[None], labels=ids[None]).loss.item()
    assert result["tokens"] == len(ids) - 1
    assert (result["max_length"], result["stride"], result["windows"]) == (64, 32, 1)
    assert result["nll"] == pytest.approx(loss, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)


def test_disjoint_windows_equal_token_weighted_chunks(model, gpt2_tok):
    ids = token_ids(gpt2_tok)
    assert len(ids) > 3 * 16
    total, count = 0.0, 0
    for start in range(0, len(ids), 16):
        chunk = ids[start : start + 16]
        if len(chunk) >= 2:
            chunk_total, chunk_count = summed_loss(model, chunk)
            total, count = total + chunk_total, count + chunk_count
    result = strided_perplexity(model, gpt2_tok, TEXT, max_length=16, stride=16)
    assert result["tokens"] == count
    assert result["nll"] == pytest.approx(total / count, rel=1e-5)


def test_overlapping_windows_score_every_token_once(model, gpt2_tok):
    ids = token_ids(gpt2_tok)
    n, max_length, stride = len(ids), 16, 5
    # reference: the transformers recipe with labels -100 on the overlap, but counting the labels that the
    # model's shifted loss actually predicts (all valid labels except a window's very first token)
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        window = ids[begin:end]
        labels = window.clone()
        labels[: max(prev_end - begin, 1)] = -100
        window_total, window_count = summed_loss(model, window, labels)
        total, count, prev_end = total + window_total, count + window_count, end
        if end == n:
            break
    result = strided_perplexity(model, gpt2_tok, TEXT, max_length=max_length, stride=stride)
    assert count == n - 1
    assert result["tokens"] == n - 1
    assert result["nll"] == pytest.approx(total / count, rel=1e-5)


def test_windows_cover_each_token_exactly_once():
    for n, max_length, stride in [(100, 16, 5), (100, 16, 15), (17, 16, 1), (1000, 64, 63), (33, 8, 7)]:
        scored = [t for w in _windows(n, max_length, stride) for t in range(w.first, w.end)]
        assert scored == list(range(1, n)), (n, max_length, stride)
        assert all(
            w.end - w.begin <= max_length and w.first > w.begin for w in _windows(n, max_length, stride)
        )
    disjoint = _windows(50, 16, 16)
    assert [(w.begin, w.first) for w in disjoint] == [(0, 1), (16, 17), (32, 33), (48, 49)]


@pytest.mark.parametrize(("max_length", "stride"), [(16, 5), (16, 16), (24, 7)])
def test_batched_windows_equal_one_at_a_time(model, gpt2_tok, max_length, stride):
    one = strided_perplexity(model, gpt2_tok, TEXT, max_length=max_length, stride=stride, batch_size=1)
    many = strided_perplexity(model, gpt2_tok, TEXT, max_length=max_length, stride=stride, batch_size=4)
    assert many["tokens"] == one["tokens"]
    assert many["nll"] == pytest.approx(one["nll"], rel=1e-5)


def test_list_of_texts_is_joined_with_blank_lines(model, gpt2_tok):
    parts = ["First paragraph about trains.", "Second one, about boats.", "", "Last."]
    joined = strided_perplexity(model, gpt2_tok, "\n\n".join(parts), max_length=16, stride=8)
    assert strided_perplexity(model, gpt2_tok, parts, max_length=16, stride=8) == joined


def test_model_without_logits_to_keep(model, gpt2_tok):
    class Plain(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids):
            return self.inner(input_ids=input_ids)

    reference = strided_perplexity(model, gpt2_tok, TEXT, max_length=16, stride=5)
    assert strided_perplexity(Plain(model), gpt2_tok, TEXT, max_length=16, stride=5)["nll"] == pytest.approx(
        reference["nll"], rel=1e-6
    )


def test_tiny_llama_and_training_flag(gpt2_tok):
    model = tiny_llama(vocab_size=len(gpt2_tok), max_position_embeddings=32).train()
    result = strided_perplexity(model, gpt2_tok, TEXT, stride=8, batch_size=2)
    assert result["max_length"] == 32 and result["tokens"] == len(token_ids(gpt2_tok)) - 1
    assert math.isfinite(result["perplexity"]) and result["perplexity"] > 1
    assert model.training


def test_argument_errors(model, gpt2_tok):
    with pytest.raises(ValueError, match="stride must be"):
        strided_perplexity(model, gpt2_tok, TEXT, max_length=16, stride=17)
    with pytest.raises(ValueError, match="exceeds the model's 64 positions"):
        strided_perplexity(model, gpt2_tok, TEXT, max_length=65)
    with pytest.raises(ValueError, match="at least 2"):
        strided_perplexity(model, gpt2_tok, "Hi")
    with pytest.raises(ValueError, match="batch_size"):
        strided_perplexity(model, gpt2_tok, TEXT, batch_size=0)


# ----------------------------------------------------------------------------------------------------
# load_text_for_perplexity
# ----------------------------------------------------------------------------------------------------


def test_load_txt_and_jsonl(tmp_path):
    txt = tmp_path / "corpus.txt"
    txt.write_text("line one\n\nline two\n", encoding="utf-8")
    assert load_text_for_perplexity(str(txt)) == "line one\n\nline two\n"
    assert load_text_for_perplexity(str(txt), max_chars=4) == "line"

    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text('{"text": "alpha"}\n\n{"text": "beta gamma", "id": 2}\n', encoding="utf-8")
    assert load_text_for_perplexity(str(jsonl)) == ["alpha", "beta gamma"]
    assert load_text_for_perplexity(str(jsonl), max_chars=8) == ["alpha", "bet"]

    other = tmp_path / "body.jsonl"
    other.write_text(json.dumps({"body": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="text_column"):
        load_text_for_perplexity(str(other))
    assert load_text_for_perplexity(str(other), text_column="body") == ["x"]


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text_for_perplexity(str(tmp_path / "missing.txt"))
    (tmp_path / "data.csv").write_text("text\nhello\n")
    with pytest.raises(ValueError, match=r"not a \.txt or \.jsonl"):
        load_text_for_perplexity(str(tmp_path / "data.csv"))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="no text"):
        load_text_for_perplexity(str(tmp_path / "empty.txt"))


def test_hub_dataset_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="not a local file"):
        load_text_for_perplexity("fairdistill-no-such-dataset:some-config")
