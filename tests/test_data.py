"""distill.data on real files in tmp_path and the real GPT-2 tokenizer: loading, exact global packing,
and the prepare pipeline with counterfactual augmentation of the train split only."""

from __future__ import annotations

import copy
import json
import math
import re
import time

import datasets
import pytest
from datasets import Dataset, DatasetDict

from counterfactuals.cda import augment_dataset
from distill.data import (
    PreparedData,
    cda_stats,
    load_text_dataset,
    prepare_lm_datasets,
    tokenize_and_pack,
)

EOS = 50256  # GPT-2 <|endoftext|>


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path, monkeypatch):
    """Each test gets its own `datasets` cache: no state shared between tests or with ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def gendered_corpus(n: int) -> list[str]:
    """Unique documents, each tagged with its number; the originals are all male ("He ... his uncle"),
    so a document starting with "She" can only be a counterfactual."""
    docs = []
    for i in range(n):
        if i % 4 == 3:
            docs.append(f"The weather at gate {i} was mild and the train was late.")
        else:
            docs.append(f"He met his uncle at gate {i} and they walked to the station together.")
    return docs


def reference_stream(tok, docs, add_eos=True) -> list[int]:
    stream: list[int] = []
    for doc in docs:
        if doc.strip():
            stream += tok(doc, add_special_tokens=False)["input_ids"] + ([EOS] if add_eos else [])
    return stream


def complete_docs(tok, blocks) -> list[str]:
    """Documents that lie wholly inside a block (between two EOS tokens), decoded."""
    docs = []
    for ids in blocks:
        cuts = [i for i, t in enumerate(ids) if t == EOS]
        for a, b in zip(cuts, cuts[1:], strict=False):
            docs.append(tok.decode(ids[a + 1 : b]))
    return docs


def gate_numbers(docs) -> set[int]:
    return {int(m.group(1)) for doc in docs for m in re.finditer(r"gate (\d+)", doc)}


# ----------------------------------------------------------------------------------------------------
# load_text_dataset
# ----------------------------------------------------------------------------------------------------


def test_txt_one_document_per_line_blank_lines_dropped(tmp_path):
    path = write_lines(tmp_path / "corpus.txt", ["first doc", "", "   ", "second doc", "", "third doc"])
    ds = load_text_dataset(str(path))
    assert isinstance(ds, Dataset)
    assert ds.column_names == ["text"]
    assert ds["text"][:] == ["first doc", "second doc", "third doc"]
    # the slice counts documents, not raw lines
    assert load_text_dataset(str(path), split="train[:2]")["text"][:] == ["first doc", "second doc"]
    assert load_text_dataset(str(path), split="train[1:]")["text"][:] == ["second doc", "third doc"]


ROWS = {"text": ["alpha doc", "beta doc", "gamma doc"], "id": [1, 2, 3]}


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_structured_files(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    source = Dataset.from_dict(ROWS)
    if suffix == ".parquet":
        source.to_parquet(str(path))
    elif suffix == ".csv":
        source.to_csv(str(path), index=False)
    else:
        source.to_json(str(path))  # JSON lines
    ds = load_text_dataset(str(path))
    assert sorted(ds.column_names) == ["id", "text"]
    assert ds["text"][:] == ROWS["text"]
    assert load_text_dataset(str(path), split="train[:2]")["text"][:] == ROWS["text"][:2]


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    Dataset.from_dict(ROWS).save_to_disk(str(tmp_path / "saved"))
    ds = load_text_dataset(str(tmp_path / "saved"), split="train[:2]")
    assert ds["text"][:] == ROWS["text"][:2]
    # a single saved Dataset is the split "train" -- nothing else, so it can't double as eval data
    with pytest.raises(ValueError, match=r"split 'validation' not found.*\['train'\]"):
        load_text_dataset(str(tmp_path / "saved"), split="validation")

    DatasetDict(
        {
            "train": Dataset.from_dict(ROWS),
            "validation": Dataset.from_dict({"text": ["v1", "v2"], "id": [7, 8]}),
        }
    ).save_to_disk(str(tmp_path / "saved_dict"))
    assert load_text_dataset(str(tmp_path / "saved_dict"), split="validation")["text"][:] == ["v1", "v2"]
    assert load_text_dataset(str(tmp_path / "saved_dict"), split="train[-1:]")["text"][:] == ["gamma doc"]


def test_directory_of_jsonl_files(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    for shard in ("a", "b"):
        with open(folder / f"{shard}.jsonl", "w", encoding="utf-8") as f:
            for i in range(3):
                f.write(json.dumps({"text": f"{shard}{i}", "meta": i}) + "\n")
    ds = load_text_dataset(str(folder))
    assert sorted(ds["text"][:]) == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert len(load_text_dataset(str(folder), split="train[:50%]")) == 3


def test_missing_text_column_lists_columns_and_suggests_the_flag(tmp_path):
    path = tmp_path / "data.jsonl"
    Dataset.from_dict({"content": ["x", "y"], "n": [1, 2]}).to_json(str(path))
    with pytest.raises(ValueError, match=r"'text' not found") as info:
        load_text_dataset(str(path))
    assert "content" in str(info.value) and "'n'" in str(info.value)
    assert "--text_column content" in str(info.value)
    assert load_text_dataset(str(path), text_column="content")["content"][:] == ["x", "y"]


def test_missing_local_path_is_named(tmp_path):
    missing = tmp_path / "nope" / "corpus.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_text_dataset(str(missing))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text_dataset("./no_such_corpus.txt")


def test_unknown_hub_id_offline_fails_fast_with_the_fix(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(ConnectionError) as info:
        load_text_dataset("fairdistill-test/no-such-dataset-xyz")
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "'fairdistill-test/no-such-dataset-xyz' is not a local file/dir" in message
    assert "Hub is unreachable (HF_DATASETS_OFFLINE=1)" in message
    assert "download it first or pass a local path" in message


def test_empty_inputs_are_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_text_dataset(str(tmp_path / "empty.txt"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_text_dataset(str(tmp_path / "empty.jsonl"))
    write_lines(tmp_path / "blank.txt", ["", "  ", ""])
    with pytest.raises(ValueError, match="no rows after dropping blank lines"):
        load_text_dataset(str(tmp_path / "blank.txt"))


def test_bad_split_names_the_available_ones(tmp_path):
    path = write_lines(tmp_path / "c.txt", ["a", "b"])
    with pytest.raises(
        ValueError, match=r"split 'test' not found.*\['train'\].*--validation_split_percentage"
    ):
        load_text_dataset(str(path), split="test[:1]")


def test_streaming_local_file(tmp_path):
    path = write_lines(tmp_path / "c.txt", ["a", "", "b", "c", "d"])
    ds = load_text_dataset(str(path), split="train[1:3]", streaming=True)
    assert isinstance(ds, datasets.IterableDataset)
    assert [row["text"] for row in ds] == ["b", "c"]


# ----------------------------------------------------------------------------------------------------
# tokenize_and_pack
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def many_docs() -> list[str]:
    # > 1000 rows and > 1000 blocks, so documents and blocks both cross `map` batch boundaries; varied
    # lengths, blank rows and a very long document (longer than several blocks) included
    docs = [f"Document {i} says" + " word" * (i % 13) + "." for i in range(1500)]
    docs[10] = ""
    docs[11] = "   "
    docs[500] = "long " * 300
    return docs


def test_packing_is_exact_and_global(gpt2_tok, many_docs):
    block_size = 7
    packed = tokenize_and_pack(Dataset.from_dict({"text": many_docs}), gpt2_tok, block_size=block_size)
    assert packed.column_names == ["input_ids", "attention_mask", "labels"]
    stream = reference_stream(gpt2_tok, many_docs)
    assert len(packed) == len(stream) // block_size > 1000
    blocks = packed["input_ids"][:]
    assert all(len(b) == block_size for b in blocks)
    flat = [t for b in blocks for t in b]
    assert flat == stream[: len(flat)]  # nothing lost or reordered but the tail shorter than a block
    assert len(stream) - len(flat) < block_size
    assert packed["labels"][:] == blocks
    assert all(m == [1] * block_size for m in packed["attention_mask"][:])
    # blank rows add nothing, not even an EOS
    assert not any(a == b == EOS for a, b in zip(flat, flat[1:], strict=False))


def test_num_proc_gives_identical_blocks(gpt2_tok, many_docs):
    ds = Dataset.from_dict({"text": many_docs})
    serial = tokenize_and_pack(ds, gpt2_tok, block_size=16)
    parallel = tokenize_and_pack(ds, gpt2_tok, block_size=16, num_proc=2)
    assert parallel["input_ids"][:] == serial["input_ids"][:]
    assert parallel["labels"][:] == serial["labels"][:]


def test_add_eos_false_and_keep_columns(gpt2_tok):
    docs = ["He thanked his aunt.", "The cat sat.", "She smiled at him."]
    ds = Dataset.from_dict({"text": docs, "doc": [0, 1, 2]})
    plain = tokenize_and_pack(ds, gpt2_tok, block_size=4, add_eos=False)
    stream = reference_stream(gpt2_tok, docs, add_eos=False)
    assert EOS not in stream
    assert [t for b in plain["input_ids"][:] for t in b] == stream[: len(plain) * 4]

    kept = tokenize_and_pack(ds, gpt2_tok, block_size=4, keep_columns=["doc"])
    # which documents contribute tokens to each block, in order
    lengths = [len(gpt2_tok(d, add_special_tokens=False)["input_ids"]) + 1 for d in docs]
    bounds = [sum(lengths[:i]) for i in range(len(docs) + 1)]
    expected = [
        [d for d in range(len(docs)) if bounds[d] < (k + 1) * 4 and bounds[d + 1] > k * 4]
        for k in range(len(kept))
    ]
    assert kept["doc"][:] == expected


def test_streaming_packs_the_same_blocks(gpt2_tok):
    docs = [f"Line {i} of the corpus" + " again" * (i % 5) for i in range(50)]
    ds = Dataset.from_dict({"text": docs, "i": list(range(50))})
    eager = tokenize_and_pack(ds, gpt2_tok, block_size=9, keep_columns=["i"])
    lazy = tokenize_and_pack(ds.to_iterable_dataset(), gpt2_tok, block_size=9, keep_columns=["i"])
    assert list(lazy) == list(eager)


def test_too_little_data_reports_the_numbers(gpt2_tok):
    ds = Dataset.from_dict({"text": ["Hello world.", "Bye."]})
    total = len(reference_stream(gpt2_tok, ["Hello world.", "Bye."]))
    with pytest.raises(ValueError, match=rf"0 blocks.*{total} tokens.*block_size=64.*smaller --block_size"):
        tokenize_and_pack(ds, gpt2_tok, block_size=64)


def test_block_size_is_validated(gpt2_tok):
    ds = Dataset.from_dict({"text": ["a b c d e f"]})
    with pytest.raises(ValueError, match="block_size must be an int >= 2"):
        tokenize_and_pack(ds, gpt2_tok, block_size=1)
    tok = copy.deepcopy(gpt2_tok)
    tok.model_max_length = 32
    with pytest.raises(
        ValueError, match=r"block_size=64 exceeds .*model_max_length=32.*smaller --block_size"
    ):
        tokenize_and_pack(ds, tok, block_size=64)


def test_long_documents_do_not_trigger_the_sequence_length_warning(gpt2_tok):
    tok = copy.deepcopy(gpt2_tok)
    tok.model_max_length = 16
    packed = tokenize_and_pack(Dataset.from_dict({"text": ["word " * 200]}), tok, block_size=16)
    assert len(packed) > 10
    assert "sequence-length-is-longer-than-the-specified-maximum" not in tok.deprecation_warnings


# ----------------------------------------------------------------------------------------------------
# prepare_lm_datasets
# ----------------------------------------------------------------------------------------------------


@pytest.fixture
def corpus_file(tmp_path):
    return write_lines(tmp_path / "corpus.txt", gendered_corpus(100))


def test_two_sided_cda_augments_train_only_and_never_leaks_into_eval(gpt2_tok, corpus_file):
    kwargs = dict(
        dataset_name=str(corpus_file), tokenizer=gpt2_tok, block_size=32, validation_split_percentage=20
    )
    plain = prepare_lm_datasets(**kwargs)
    cda = prepare_lm_datasets(**kwargs, cda="two_sided")
    assert isinstance(cda, PreparedData)

    # 75 of 100 documents are gendered: two-sided CDA adds a counterfactual for each train one
    stats = cda.stats
    assert stats["train_documents"] == 80 and stats["eval_documents"] == 20
    assert stats["cda_counterfactual_rows"] == stats["cda_rows"] - 80 > 50
    assert cda.stats["train_tokens"] > 1.6 * plain.stats["train_tokens"]
    assert len(cda.train) == stats["train_blocks"] and stats["train_tokens"] == 32 * len(cda.train)

    train_docs = complete_docs(gpt2_tok, cda.train["input_ids"][:])
    swapped = [d for d in train_docs if d.startswith("She met her aunt at gate")]
    assert swapped, "the counterfactual text should be in the packed training data"
    # each counterfactual mirrors an original train document ("He met his uncle at gate N ...")
    originals = gate_numbers(d for d in train_docs if d.startswith("He met his uncle"))
    assert gate_numbers(swapped) & originals
    assert not any(d.startswith("She") for d in complete_docs(gpt2_tok, plain.train["input_ids"][:]))

    # eval: the same held-out documents as without CDA, no counterfactual, no document shared with train
    assert cda.eval["input_ids"][:] == plain.eval["input_ids"][:]
    eval_docs = complete_docs(gpt2_tok, cda.eval["input_ids"][:])
    assert eval_docs and not any("She" in d or "her aunt" in d for d in eval_docs)
    all_train_tokens = [t for b in cda.train["input_ids"][:] for t in b]
    train_gates = gate_numbers([gpt2_tok.decode(all_train_tokens)])
    assert gate_numbers(eval_docs) and not gate_numbers(eval_docs) & train_gates


def test_one_sided_cda_replaces_instead_of_adding(gpt2_tok, corpus_file):
    prepared = prepare_lm_datasets(
        dataset_name=str(corpus_file), tokenizer=gpt2_tok, block_size=32, cda="one_sided"
    )
    assert prepared.eval is None
    assert prepared.stats["cda_rows"] == 100 and prepared.stats["cda_counterfactual_rows"] == 75
    docs = complete_docs(gpt2_tok, prepared.train["input_ids"][:])
    assert any(d.startswith("She met her aunt") for d in docs)
    assert not any(d.startswith("He met his uncle") for d in docs)


def test_validation_split_percentage_and_max_samples(gpt2_tok, corpus_file):
    full = prepare_lm_datasets(
        dataset_name=str(corpus_file), tokenizer=gpt2_tok, block_size=16, validation_split_percentage=10
    )
    assert full.stats["eval_documents"] == math.ceil(0.10 * 100) and full.stats["train_documents"] == 90
    train, eval_ = full  # unpacks like a (train, eval) tuple
    assert len(train) > 5 and len(eval_) > 5

    capped = prepare_lm_datasets(
        dataset_name=str(corpus_file),
        tokenizer=gpt2_tok,
        block_size=16,
        validation_split_percentage=10,
        max_train_samples=5,
        max_eval_samples=3,
    )
    assert len(capped.train) == 5 and len(capped.eval) == 3
    assert capped.train["input_ids"][:] == full.train["input_ids"][:5]
    assert capped.stats["train_blocks"] == 5 and capped.stats["eval_tokens"] == 3 * 16


def test_explicit_eval_split_and_argument_errors(gpt2_tok, tmp_path):
    DatasetDict(
        {
            "train": Dataset.from_dict({"text": gendered_corpus(40)}),
            "validation": Dataset.from_dict({"text": ["He waved at his niece."] * 10}),
        }
    ).save_to_disk(str(tmp_path / "dd"))
    prepared = prepare_lm_datasets(
        dataset_name=str(tmp_path / "dd"),
        tokenizer=gpt2_tok,
        block_size=8,
        eval_split="validation",
        cda="two_sided",
    )
    assert "niece" in gpt2_tok.decode(prepared.eval["input_ids"][0])
    assert "niece" not in gpt2_tok.decode([t for b in prepared.train["input_ids"][:] for t in b])

    common = dict(dataset_name=str(tmp_path / "dd"), tokenizer=gpt2_tok, block_size=8)
    with pytest.raises(ValueError, match="pass only one"):
        prepare_lm_datasets(**common, eval_split="validation", validation_split_percentage=5)
    with pytest.raises(ValueError, match="evaluation would run on training data"):
        prepare_lm_datasets(**common, eval_split="train")
    held_out = prepare_lm_datasets(**common, train_split="train[:75%]", eval_split="train[75%:]")
    assert held_out.stats["train_documents"] == 30 and held_out.stats["eval_documents"] == 10
    with pytest.raises(ValueError, match="unknown cda mode"):
        prepare_lm_datasets(**common, cda="both")
    with pytest.raises(ValueError, match=r"eval split of .*0 blocks"):
        prepare_lm_datasets(**{**common, "block_size": 512}, eval_split="validation")


def test_main_process_first_with_real_training_arguments(gpt2_tok, corpus_file, tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[])
    kwargs = dict(
        dataset_name=str(corpus_file), tokenizer=gpt2_tok, block_size=16, validation_split_percentage=10
    )
    first = prepare_lm_datasets(**kwargs, cda="two_sided", main_process_first=args.main_process_first)
    second = prepare_lm_datasets(**kwargs, cda="two_sided")
    assert first.train["input_ids"][:] == second.train["input_ids"][:]
    assert first.eval["input_ids"][:] == second.eval["input_ids"][:]
    # the second run (another DDP rank, or a restart) reuses the cached packed blocks
    assert first.train.cache_files and first.train.cache_files == second.train.cache_files


def test_cda_stats(gpt2_tok):
    ds = Dataset.from_dict({"text": ["He left.", "The sky.", "His aunt called."]})
    augmented = augment_dataset(ds, mode="two_sided")
    assert cda_stats(augmented) == {
        "rows": 5,
        "counterfactual_rows": 2,
        "original_rows": 3,
        "swapped_share": pytest.approx(4 / 5),
    }
    with pytest.raises(ValueError, match="augment_dataset"):
        cda_stats(ds)
