"""The offline top-k teacher cache (distill/teacher_cache/) against the live teacher it replaces.

Real parts throughout: the real GPT-2 tokenizer and pair map, a tiny random GPT-2 teacher whose larger
initialisation makes its next-token distributions peaked (so dropping the tail matters), blocks of text
with and without gendered words, and the real Trainer. A cache with k = V must reproduce the live target
exactly; with k < V it must be a distribution that keeps the stored tokens' probabilities.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset

from counterfactuals import build_pair_map
from distill.config import DistillationConfig
from distill.data import prepare_lm_datasets, tokenize_and_pack
from distill.losses import role_reversal
from distill.teacher_cache import (
    CF_ROWS,
    CF_TOPK_IDS,
    MANIFEST_NAME,
    TOPK_IDS,
    TeacherCacheCollator,
    TeacherCacheError,
    attach_teacher_cache,
    cached_target,
    truncate_teacher_cache,
    write_teacher_cache,
)
from distill.trainer import CounterfactualDistillationTrainer
from tests.assets import GPT2_VOCAB_SIZE, tiny_gpt2

REPO = Path(__file__).resolve().parents[1]
V = GPT2_VOCAB_SIZE
TEXTS = [
    "He thanked his aunt for the present, and she smiled at her brother.",
    "The doctor said that the results were fine.",
    "Rain fell on the old town all afternoon.",
    "The nurse told him that her shift was over at midnight.",
    "The engineer checked the bridge before the storm.",
    "The actor rehearsed his lines while the waitress brought coffee.",
    "A train left the station at noon and arrived late.",
    "My grandmother and her sisters ran the bakery for forty years.",
    "The committee approved the budget after a long debate.",
]
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def make_teacher() -> torch.nn.Module:
    # initializer_range 0.2 (GPT-2's default is 0.02): peaked distributions, so top-k truncation matters
    return tiny_gpt2(n_layer=2, seed=1, initializer_range=0.2, **NO_DROPOUT).eval()


@pytest.fixture(scope="module")
def pair_map(gpt2_tok):
    return build_pair_map(gpt2_tok)


@pytest.fixture(scope="module")
def blocks(gpt2_tok, pair_map):
    data = tokenize_and_pack(Dataset.from_dict({"text": TEXTS}), gpt2_tok, block_size=12)
    _, changed = pair_map.swap_ids(torch.tensor(data["input_ids"]))
    # the tests need both kinds of row: with and without a gendered token
    assert 0 < int(changed.sum()) < len(data), changed
    return data


@pytest.fixture(scope="module")
def teacher():
    return make_teacher()


@pytest.fixture(scope="module")
def full_cache(tmp_path_factory, teacher, blocks, pair_map):
    """k = V, float32: the whole distribution is stored."""
    out = tmp_path_factory.mktemp("cache") / "full"
    write_teacher_cache(teacher, blocks, out, k=V, pair_map=pair_map, dtype="float32", batch_size=4)
    return out


def collate(dataset: Dataset, tok) -> dict:
    return TeacherCacheCollator(tok)([dataset[i] for i in range(len(dataset))])


@torch.inference_mode()
def live_target(teacher, batch, pair_map, mode, temperature, scope="all"):
    """The slow path, as CounterfactualDistillationTrainer computes it: raw teacher logits without
    perturbation, else the role-reversal target of the original and swapped blocks."""
    ids, mask = batch["input_ids"], batch.get("attention_mask")
    logits = teacher(input_ids=ids, attention_mask=mask).logits[:, :-1]
    if mode is None:
        return logits
    swapped, changed = pair_map.swap_ids(ids, mask)
    rows = changed.nonzero().squeeze(-1)
    counterfactual = None
    if rows.numel():
        cf = teacher(input_ids=swapped[rows], attention_mask=mask[rows]).logits[:, :-1]
        counterfactual = logits.index_copy(0, rows, cf)
    return role_reversal(
        logits, counterfactual, pair_map, mode, temperature=temperature, scope=scope, context_ids=ids[:, :-1]
    )


def as_distribution(target: torch.Tensor, mode: str | None, temperature: float) -> torch.Tensor:
    """Log-probabilities of the target kd_loss uses: a plain target is logits softened by temperature."""
    return F.log_softmax(target / temperature, dim=-1) if mode is None else target


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize(
    ("mode", "scope"),
    [(None, "all"), ("max", "all"), ("mean", "all"), ("expMean", "all"), ("max", "gendered")],
)
def test_full_vocabulary_cache_rebuilds_the_live_target(
    gpt2_tok, teacher, blocks, pair_map, full_cache, mode, scope, temperature
):
    batch = collate(attach_teacher_cache(blocks, full_cache, pair_map=pair_map, vocab_size=V), gpt2_tok)
    assert 0 < batch[CF_ROWS].numel() < len(blocks)  # rows with and without a counterfactual view
    live = as_distribution(live_target(teacher, batch, pair_map, mode, temperature, scope), mode, temperature)
    cached, share = cached_target(
        batch,
        vocab_size=V,
        pair_map=None if mode is None else pair_map,
        mode=mode,
        temperature=temperature,
        scope=scope,
    )
    cached = as_distribution(cached, mode, temperature)
    torch.testing.assert_close(cached, live, rtol=1e-5, atol=2e-5)
    assert share == (0.0 if mode is None else batch[CF_ROWS].numel() / len(blocks))


def kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position, 0 log 0 = 0."""
    p = p_log.exp()
    return torch.where(p > 0, p * (p_log - q_log), 0.0).sum(-1)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_top_k_cache_is_a_distribution_that_keeps_the_stored_tokens(
    tmp_path, gpt2_tok, teacher, blocks, pair_map, full_cache, dtype
):
    out = tmp_path / "k8"
    manifest = write_teacher_cache(teacher, blocks, out, k=8, pair_map=pair_map, dtype=dtype, batch_size=4)
    batch = collate(attach_teacher_cache(blocks, out, pair_map=pair_map, vocab_size=V), gpt2_tok)
    full = collate(attach_teacher_cache(blocks, full_cache, pair_map=pair_map, vocab_size=V), gpt2_tok)
    # log-probabilities down to about -20: float32 rounding ~1e-6 relative; float16 has an 11-bit mantissa
    tol = {"float32": 1e-4, "float16": 2e-2}[dtype]
    sum_tol = {"float32": 1e-5, "float16": 2e-3}[dtype]
    ids = batch[TOPK_IDS]
    dense_logits = live_target(teacher, batch, pair_map, None, 1.0)
    assert full[TOPK_IDS].shape[-1] == V and ids.shape[-1] == 8

    # plain KD at T = 1: the stored residual makes the rebuilt distribution sum to 1 and keeps the
    # top-k tokens' probabilities exactly (up to the stored dtype)
    dense = F.log_softmax(dense_logits, dim=-1)
    raw = cached_target(batch, vocab_size=V)[0]
    cached = F.log_softmax(raw, dim=-1)
    torch.testing.assert_close(raw.exp().sum(-1), torch.ones(raw.shape[:-1]), rtol=0, atol=sum_tol)
    torch.testing.assert_close(cached.gather(-1, ids), dense.gather(-1, ids), rtol=0, atol=tol)
    assert (cached.argmax(-1) == dense.argmax(-1)).all()
    # T = 2 is stored (the default temperatures are 1 and 2): exact on the top-k tokens too
    dense2 = F.log_softmax(dense_logits / 2, dim=-1)
    cached2 = F.log_softmax(cached_target(batch, vocab_size=V, temperature=2.0)[0] / 2, dim=-1)
    torch.testing.assert_close(cached2.gather(-1, ids), dense2.gather(-1, ids), rtol=0, atol=tol)
    # T = 1.5 is not: the tail comes from T = 1, so the top-k agree up to one constant per position
    dense15 = F.log_softmax(dense_logits / 1.5, dim=-1)
    cached15 = F.log_softmax(cached_target(batch, vocab_size=V, temperature=1.5)[0] / 1.5, dim=-1)
    offset = cached15.gather(-1, ids) - dense15.gather(-1, ids)
    torch.testing.assert_close(offset, offset[..., :1].expand_as(offset), rtol=0, atol=tol)
    assert offset.abs().max() > 0.05  # ... and that constant is not 0: the rougher fallback

    # role reversal (max) at a stored temperature: gendered tokens are stored exactly in both views, so
    # on them the target agrees with the dense one up to the renormalisation constant of each position
    for temperature in (1.0, 2.0):
        live = live_target(teacher, batch, pair_map, "max", temperature)
        target, _ = cached_target(batch, vocab_size=V, pair_map=pair_map, mode="max", temperature=temperature)
        # a sum of V = 50257 float32 probabilities: rounding alone reaches a few 1e-5
        torch.testing.assert_close(target.exp().sum(-1), torch.ones(target.shape[:-1]), rtol=0, atol=1e-4)
        gendered = pair_map.gendered_ids
        offset = target[..., gendered] - live[..., gendered]
        torch.testing.assert_close(offset, offset[..., :1].expand_as(offset), rtol=0, atol=tol)

    # the quality cost, KL(dense || cached) per token: finite and > 0 here, ~0 for the full cache
    live = live_target(teacher, batch, pair_map, "max", 1.0)
    target, _ = cached_target(batch, vocab_size=V, pair_map=pair_map, mode="max")
    loss = kl(live, target).mean().item()
    exact = kl(live, cached_target(full, vocab_size=V, pair_map=pair_map, mode="max")[0]).mean().item()
    print(
        f"\n{dtype} k=8: KL(dense || cached) {loss:.2e} nats/token (k=V: {exact:.1e}); {manifest['bytes']} B"
    )
    assert math.isfinite(loss) and loss > 0 and abs(exact) < 1e-5


def test_truncating_a_cache_equals_writing_the_smaller_k(
    tmp_path, gpt2_tok, teacher, blocks, pair_map, full_cache
):
    """Write once with a large k, derive smaller ones without the teacher: the same cache (float32)."""
    written = write_teacher_cache(teacher, blocks, tmp_path / "k8", k=8, pair_map=pair_map, dtype="float32")
    derived = truncate_teacher_cache(full_cache, tmp_path / "k8-derived", 8)
    assert derived["k"] == 8 and derived["derived_from"]["k"] == V
    assert derived["bytes"] == pytest.approx(written["bytes"], rel=0.02)
    direct = collate(attach_teacher_cache(blocks, tmp_path / "k8", pair_map=pair_map), gpt2_tok)
    cut = collate(attach_teacher_cache(blocks, tmp_path / "k8-derived", pair_map=pair_map), gpt2_tok)
    assert direct.keys() == cut.keys()
    for name, value in direct.items():
        if value.is_floating_point():
            torch.testing.assert_close(cut[name], value, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(cut[name], value), name
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 8\)"):
        truncate_teacher_cache(tmp_path / "k8", tmp_path / "k9", 9)


def test_rows_without_a_swap_store_no_counterfactual(tmp_path, gpt2_tok, teacher, blocks, pair_map):
    out = tmp_path / "c"
    manifest = write_teacher_cache(teacher, blocks, out, k=4, pair_map=pair_map, batch_size=3)
    _, changed = pair_map.swap_ids(torch.tensor(blocks["input_ids"]))
    cache = attach_teacher_cache(blocks, out, pair_map=pair_map, vocab_size=V)
    lengths = [len(cache[i][CF_TOPK_IDS]) for i in range(len(cache))]
    assert lengths == [11 if c else 0 for c in changed.tolist()]
    assert manifest["counterfactual_rows"] == int(changed.sum()) and manifest["rows"] == len(blocks)
    batch = collate(cache, gpt2_tok)
    assert batch[CF_ROWS].tolist() == changed.nonzero().squeeze(-1).tolist()
    assert batch[CF_TOPK_IDS].shape == (int(changed.sum()), 11, 4)
    # a batch of rows without any swap: empty counterfactual tensors, and the share is 0
    plain = TeacherCacheCollator(gpt2_tok)([cache[i] for i in range(len(cache)) if not changed[i]])
    assert plain[CF_TOPK_IDS].shape == (0, 11, 4)
    assert cached_target(plain, vocab_size=V, pair_map=pair_map, mode="mean")[1] == 0.0


def test_a_cache_that_does_not_fit_is_refused(tmp_path, gpt2_tok, teacher, blocks, pair_map, full_cache):
    fix = "python -m distill.teacher_cache"
    with pytest.raises(TeacherCacheError, match=f"other token blocks.*attach before any shuffle.*{fix}"):
        attach_teacher_cache(blocks.shuffle(seed=1), full_cache)
    with pytest.raises(TeacherCacheError, match=f"has {len(blocks)} rows but the dataset has.*{fix}"):
        attach_teacher_cache(blocks.select(range(len(blocks) - 1)), full_cache)
    with pytest.raises(TeacherCacheError, match=f"vocabulary of {V} tokens but the student has {V + 1}"):
        attach_teacher_cache(blocks, full_cache, vocab_size=V + 1)
    with pytest.raises(TeacherCacheError, match=f"another token swap.*{fix}"):
        attach_teacher_cache(blocks, full_cache, pair_map=build_pair_map(gpt2_tok, names=True))
    out = tmp_path / "plain"
    write_teacher_cache(teacher, blocks, out, k=4, teacher_name="my-teacher")  # no pair map
    with pytest.raises(TeacherCacheError, match="no counterfactual view.*--counterfactual"):
        attach_teacher_cache(blocks, out, pair_map=pair_map)
    with pytest.raises(
        TeacherCacheError, match=f"from teacher 'my-teacher', the run's teacher is 'gpt2'.*{fix}"
    ):
        attach_teacher_cache(blocks, out, teacher_name="gpt2")
    with pytest.raises(TeacherCacheError, match="teacher in float32, the run would run it in bfloat16"):
        attach_teacher_cache(blocks, out, teacher_dtype="bfloat16")
    with pytest.warns(UserWarning, match="not at the training temperature 1.5.*--temperatures 1 2 1.5"):
        attach_teacher_cache(blocks, out, temperature=1.5)
    # a plain cache rebuilds plain targets; perturbation on it says what is missing
    batch = collate(attach_teacher_cache(blocks, out), gpt2_tok)
    assert cached_target(batch, vocab_size=V)[0].shape == (len(blocks), 11, V)
    with pytest.raises(TeacherCacheError, match="written without a pair map"):
        cached_target(batch, vocab_size=V, pair_map=pair_map, mode="max")
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    (out / MANIFEST_NAME).write_text(json.dumps({**manifest, "version": 0}))
    with pytest.raises(TeacherCacheError, match=f"version 0, this code reads.*{fix}"):
        attach_teacher_cache(blocks, out)
    with pytest.raises(TeacherCacheError, match="is not a teacher cache"):
        attach_teacher_cache(blocks, tmp_path)
    with pytest.raises(FileExistsError, match="not empty"):
        write_teacher_cache(teacher, blocks, out, k=4)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 50257\]"):
        write_teacher_cache(teacher, blocks, tmp_path / "k0", k=0)


# ----------------------------------------------------------------------------------------------------
# Integrity: the stored bytes and the teacher's weights
# ----------------------------------------------------------------------------------------------------


def test_a_damaged_cache_file_is_refused_by_name(tmp_path, teacher, blocks):
    """A flipped byte loads without complaint from Arrow; the manifest's checksums catch it, and a
    truncated file gives one clear error instead of pyarrow's."""
    from datasets import load_from_disk

    out = tmp_path / "cache"
    manifest = write_teacher_cache(teacher, blocks, out, k=4)
    (arrow,) = out.glob("*.arrow")
    assert manifest["files"][arrow.name]["bytes"] == arrow.stat().st_size
    original = arrow.read_bytes()
    flipped = bytearray(original)
    middle = len(flipped) // 2
    flipped[middle : middle + 8] = bytes(b ^ 0xFF for b in flipped[middle : middle + 8])
    arrow.write_bytes(bytes(flipped))
    assert len(load_from_disk(str(out))) == len(blocks)  # what a reader without checksums accepts
    with pytest.raises(TeacherCacheError, match=rf"{arrow.name} is corrupted: its SHA-256 differs.*distill"):
        attach_teacher_cache(blocks, out)
    with pytest.raises(TeacherCacheError, match=rf"{arrow.name} is corrupted"):
        truncate_teacher_cache(out, tmp_path / "k2", 2)

    arrow.write_bytes(original[: len(original) // 2])
    with pytest.raises(
        TeacherCacheError,
        match=rf"{arrow.name} is truncated .*: {len(original) // 2} bytes, its manifest records "
        rf"{len(original)}; rewrite it with `python -m distill.teacher_cache",
    ):
        attach_teacher_cache(blocks, out)
    arrow.write_bytes(original)
    attach_teacher_cache(blocks, out)  # restored: accepted again
    state = (out / "state.json").read_bytes()
    (out / "state.json").unlink()
    with pytest.raises(TeacherCacheError, match=r"state.json is missing"):
        attach_teacher_cache(blocks, out)
    (out / "state.json").write_bytes(state)
    files = {**manifest["files"], "../teacher_cache.json": manifest["files"][arrow.name]}
    (out / MANIFEST_NAME).write_text(json.dumps({**manifest, "files": files}))
    with pytest.raises(TeacherCacheError, match=r"lists '../teacher_cache.json', outside the cache"):
        attach_teacher_cache(blocks, out)


def test_the_teacher_is_identified_by_its_weights_not_its_path(tmp_path, blocks, monkeypatch):
    from distill.teacher_cache import integrity

    teacher_dir = tmp_path / "teacher"
    make_teacher().save_pretrained(teacher_dir)
    out = tmp_path / "cache"
    manifest = write_teacher_cache(
        make_teacher(), blocks, out, k=4, teacher_name=str(teacher_dir), teacher_path=teacher_dir
    )
    assert list(manifest["teacher_weights"]["files"]) == ["model.safetensors"]
    hashed = []
    real_sha256 = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda path: hashed.append(Path(path)) or real_sha256(path))
    attach_teacher_cache(blocks, out, teacher_name=str(teacher_dir))
    assert not [p for p in hashed if teacher_dir in p.parents]  # unchanged since written: not read again
    # the same weights at another path (and under another name): the same teacher
    moved = tmp_path / "moved"
    shutil.copytree(teacher_dir, moved)
    attach_teacher_cache(blocks, out, teacher_name=str(moved))
    assert [p.name for p in hashed if moved in p.parents] == ["model.safetensors"]
    # new weights at the same path: refused, with the file and the reason
    tiny_gpt2(n_layer=2, seed=7, initializer_range=0.2, **NO_DROPOUT).save_pretrained(teacher_dir)
    with pytest.raises(
        TeacherCacheError,
        match=r"other teacher weights: .*teacher/model.safetensors has SHA-256 .*new weights at the same",
    ):
        attach_teacher_cache(blocks, out, teacher_name=str(teacher_dir))
    with pytest.raises(FileNotFoundError, match="holds no weight file"):
        write_teacher_cache(make_teacher(), blocks, tmp_path / "c2", k=4, teacher_path=tmp_path / "cache")


# ----------------------------------------------------------------------------------------------------
# Training from the cache
# ----------------------------------------------------------------------------------------------------


def train_args(tmp_path, **overrides) -> DistillationConfig:
    base = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "max_steps": 2,
        "optim": "sgd",
        "learning_rate": 0.5,
        "max_grad_norm": 0.0,
        "lr_scheduler_type": "constant",
        "report_to": [],
        "logging_steps": 1,
        "save_strategy": "no",
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
        "alpha_clm": 0.3,
        "remove_unused_columns": False,  # the cache columns must reach compute_loss
        "swap_names": False,  # as the module's pair_map fixture (the word lexicon only)
    }
    return DistillationConfig(**{**base, **overrides})


@pytest.mark.parametrize("perturbation", [None, "max", "expMean"])
def test_training_from_a_full_cache_matches_the_live_teacher(tmp_path, gpt2_tok, pair_map, perturbation):
    """CDA-augmented, shuffled training blocks and an eval split: two SGD steps and an evaluation from a
    k = V cache give the live teacher's losses and the same student weights."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    data = prepare_lm_datasets(
        dataset_name=str(corpus),
        tokenizer=gpt2_tok,
        block_size=10,
        validation_split_percentage=25,
        cda="two_sided",
        max_train_samples=8,
        max_eval_samples=4,
        seed=0,
    )
    teacher = make_teacher()
    swap_map = pair_map if perturbation else None
    for split, dataset in (("train", data.train), ("eval", data.eval)):
        write_teacher_cache(teacher, dataset, tmp_path / split, k=V, pair_map=swap_map, dtype="float32")
    cached_train = attach_teacher_cache(data.train, tmp_path / "train", pair_map=swap_map, vocab_size=V)
    cached_eval = attach_teacher_cache(data.eval, tmp_path / "eval", pair_map=swap_map, vocab_size=V)

    def run(teacher_model, train, evaluation, name):
        student = tiny_gpt2(n_layer=1, seed=2, **NO_DROPOUT)
        trainer = CounterfactualDistillationTrainer(
            model=student,
            teacher_model=teacher_model,
            args=train_args(tmp_path / name, perturbation=perturbation),
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=gpt2_tok,
        )
        trainer.train()
        metrics = trainer.evaluate()
        logs = [entry for entry in trainer.state.log_history if "loss_kd" in entry]
        return logs, metrics, student.state_dict()

    live_logs, live_metrics, live_weights = run(make_teacher(), data.train, data.eval, "live")
    logs, metrics, weights = run(None, cached_train, cached_eval, "cached")
    assert len(logs) == len(live_logs) == 2
    for entry, live in zip(logs, live_logs, strict=True):
        for key in ("loss", "loss_kd", "loss_clm", "counterfactual_row_share"):
            if key in live:
                assert entry[key] == pytest.approx(live[key], rel=1e-5, abs=1e-7), key
    for key in ("eval_loss_kd", "eval_loss_clm"):
        assert metrics[key] == pytest.approx(live_metrics[key], rel=1e-5), key
    if perturbation:
        assert 0 < live_logs[0]["counterfactual_row_share"] or 0 < live_logs[1]["counterfactual_row_share"]
    for key, value in live_weights.items():
        torch.testing.assert_close(weights[key], value, rtol=1e-5, atol=1e-6)
    initial = tiny_gpt2(n_layer=1, seed=2, **NO_DROPOUT).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in weights.items())  # the steps did something


def test_cache_needs_its_columns_and_no_hidden_states(tmp_path, gpt2_tok, blocks, pair_map, full_cache):
    with pytest.raises(ValueError, match="alpha_cos > 0 needs the teacher's hidden states"):
        DistillationConfig(output_dir=str(tmp_path), teacher_cache=str(full_cache), alpha_cos=0.5)
    config = DistillationConfig(output_dir=str(tmp_path), teacher_cache=str(full_cache))
    assert config.remove_unused_columns is False
    student = tiny_gpt2(n_layer=1, seed=2)
    cached = attach_teacher_cache(blocks, full_cache, pair_map=pair_map, vocab_size=V)
    # Trainer's default remove_unused_columns drops the cache columns: without a teacher that is an error
    args = train_args(tmp_path / "a", remove_unused_columns=True, max_steps=1)
    trainer = CounterfactualDistillationTrainer(
        model=student, teacher_model=None, args=args, train_dataset=cached, processing_class=gpt2_tok
    )
    with pytest.raises(ValueError, match="carries no teacher cache.*remove_unused_columns=False"):
        trainer.train()
    args = train_args(tmp_path / "b", alpha_cos=0.5, max_steps=1)
    trainer = CounterfactualDistillationTrainer(
        model=student, teacher_model=None, args=args, train_dataset=cached, processing_class=gpt2_tok
    )
    with pytest.raises(ValueError, match="alpha_cos > 0 needs the teacher's hidden states"):
        trainer.train()


# ----------------------------------------------------------------------------------------------------
# From a recipe: the command line writes the cache, distill.train uses it
# ----------------------------------------------------------------------------------------------------


def test_recipe_cache_command_and_training_run(tmp_path, gpt2_tok):
    """`python -m distill.teacher_cache` on the tiny recipe (CDA, perturbation max, an eval split), then
    `distill.train` with --teacher_cache: no teacher runs, and the losses are the live run's."""
    from distill.pipeline import run
    from distill.recipe import parse_config
    from distill.teacher_cache.__main__ import main as write_cache_of_recipe

    teacher_dir = tmp_path / "teacher"
    tiny_gpt2(n_layer=2, seed=1, initializer_range=0.2, **NO_DROPOUT).save_pretrained(teacher_dir)
    gpt2_tok.save_pretrained(teacher_dir)
    recipe = [
        "--config",
        str(REPO / "recipes" / "tiny.yaml"),
        "--teacher_name_or_path",
        str(teacher_dir),
        "--dataset_name",
        str(REPO / "recipes" / "data" / "sample_corpus.txt"),
        "--block_size",
        "12",
        "--max_train_samples",
        "4",
        "--max_eval_samples",
        "2",
        "--use_cpu",
        "true",
        "--disable_tqdm",
        "true",
    ]
    manifests = write_cache_of_recipe(
        [*recipe, "--out", str(tmp_path / "cache"), "--k", str(V), "--dtype", "float32"]
    )
    assert [m["rows"] for m in manifests] == [4, 2] and all(m["counterfactual"] for m in manifests)
    assert all(list(m["teacher_weights"]["files"]) == ["model.safetensors"] for m in manifests)

    live, live_metrics = run(
        parse_config([*recipe, "--max_steps", "2", "--output_dir", str(tmp_path / "live")])
    )
    cached, metrics = run(
        parse_config(
            [
                *recipe,
                "--max_steps",
                "2",
                "--output_dir",
                str(tmp_path / "c"),
                "--teacher_cache",
                str(tmp_path / "cache"),
            ]
        )
    )
    assert cached.teacher is None and live.teacher is not None
    assert metrics["eval_loss_kd"] == pytest.approx(live_metrics["eval_loss_kd"], rel=1e-5)
    logs = [e["loss"] for e in cached.state.log_history if "loss" in e]
    live_logs = [e["loss"] for e in live.state.log_history if "loss" in e]
    assert logs == pytest.approx(live_logs, rel=1e-5) and len(logs) == 2
    # another token swap (first names off; the default swaps them) changes the text and σ: refused
    with pytest.raises(TeacherCacheError, match="python -m distill.teacher_cache"):
        run(
            parse_config(
                [
                    *recipe,
                    "--swap_names",
                    "false",
                    "--teacher_cache",
                    str(tmp_path / "cache"),
                    "--output_dir",
                    str(tmp_path / "s"),
                ]
            )
        )


def test_the_package_imports_without_datasets():
    """Reading the format or the collator needs neither ``datasets`` nor ``pyarrow`` at import time."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('datasets', 'pyarrow'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import distill.teacher_cache, distill.teacher_cache.__main__\n"
        "from distill.teacher_cache import TeacherCacheCollator, read_manifest, write_teacher_cache\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_cache_command_says_what_is_wrong_in_one_line(tmp_path, monkeypatch, capsys):
    from distill.teacher_cache.__main__ import cli

    argv = ["teacher_cache", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.delenv("FAIRDISTILL_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli()
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and "nope.yaml" in lines[0] and lines[0].startswith("error: ")
    assert lines[1:] == ["(set FAIRDISTILL_DEBUG=1 to see the traceback)"]
    monkeypatch.setenv("FAIRDISTILL_DEBUG", "1")
    with pytest.raises(ValueError, match="nope.yaml"):
        cli()


def test_python_m_distill_teacher_cache_still_runs():
    done = subprocess.run(
        [sys.executable, "-m", "distill.teacher_cache", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0 and "--out OUT" in done.stdout, done.stderr
    assert "RuntimeWarning" not in done.stderr  # the package does not import its own __main__
