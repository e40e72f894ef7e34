"""Offline top-k teacher cache: run the teacher once, then train any number of epochs and sweeps from disk.

The teacher is frozen, so its predictions on a fixed training set never change; a run that repeats
epochs, or a sweep over perturbation modes, temperatures or students, recomputes the same teacher
forward passes (two per gendered block with role reversal). :func:`write_teacher_cache` runs the teacher
once per block and stores, with ``datasets`` (Arrow, ``save_to_disk``), what the KD target needs:

* for every position ``t`` of a block (the ``T - 1`` positions that predict a next token), the
  teacher's **top-k token ids** (int32) and **log-probabilities** (float16 by default, or float32) of the
  next-token distribution on the original text, and the **log of the probability mass left outside**
  the stored tokens, at temperature 1 and at each training temperature asked for (default 1 and 2);
* with a pair map (role reversal): the log-probabilities at **every gendered token**
  (``pair_map.gendered_ids``, a few hundred ids, stored once per row), because role reversal needs them
  exactly (``q(w) = p̃(σ(w))`` and the split of " her" between " his"/" him" read the gendered tokens);
  and for the rows the token swap changes, the same three things for the **counterfactual** view (the
  teacher on the gender-swapped block), in its own token space. Rows the swap leaves alone store no
  counterfactual entries: their counterfactual is the original, as in the live trainer.

The log-probabilities are ``log_softmax`` of the teacher logits **at temperature 1**, so one cache serves
every perturbation mode (``max``/``mean``/``expMean``), scope, KD divergence and temperature: they are
applied at read time.

Reading (:func:`cached_target`) rebuilds dense teacher logits over the vocabulary for each view at the
training temperature T: the stored tokens (top-k ∪ gendered) keep their exact probabilities, and **the
remaining mass at T (known exactly when T was stored) is spread uniformly over the other tokens** (their
identities are not stored, so uniform is the least committal choice). Then the target is computed by
the same code as the live path: plain KD uses them as the teacher's logits, and role reversal calls
:func:`distill.losses.role_reversal` on the two rebuilt views with the original and counterfactual rows
aligned exactly as ``CounterfactualDistillationTrainer`` aligns them. With ``k = V`` nothing is
approximated and the target equals the live one to float precision (tested). At a stored temperature
the stored tokens get exactly their dense probabilities; at another one the temperature-1 tail is
spread, then softened, which over-weights the tail when T > 1.

Why a uniform residual rather than renormalising over the stored tokens (DistillKit style): it keeps a
full-support target, so reverse KL / JSD (``kd_beta > 0``) stay finite and ``expMean`` keeps the mass
of tokens outside one view's top-k; and at a stored temperature its total-variation distance to the
dense target (half the L1 error of the forward-KL gradient) is never larger than renormalising's, which
is exactly the tail mass.
What top-k costs depends on how much mass the teacher leaves in its tail, which grows with T:
``bench/bench_teacher_cache.py`` measures it. :func:`truncate_teacher_cache` derives a smaller-k cache
from a larger one without the teacher.

Rows travel with their cache: :func:`attach_teacher_cache` adds the cache as extra columns of the
training dataset (``teacher_topk_ids``, ...) after checking it was written for exactly these blocks
(a fingerprint of every token id), this teacher, vocabulary and pair map, so Trainer's shuffling and
DDP sharding move a block and its teacher predictions together. :class:`TeacherCacheCollator` stacks
them into tensors (the counterfactual ones only for the rows that have them, with their row indices
in ``teacher_cf_rows``), and ``CounterfactualDistillationTrainer.compute_loss`` builds the target from
a batch that carries them without running the teacher (which may then be ``None``). The hidden-state
cosine term (``alpha_cos``) needs the teacher's hidden states, which are not cached: it is refused.

The package: ``format`` (columns, schema, manifest, fingerprints), ``write`` (the teacher pass),
``read`` (attaching, collating, rebuilding the target) and ``__main__`` (the command line).

Python::

    from distill.teacher_cache import write_teacher_cache, attach_teacher_cache
    write_teacher_cache(teacher, packed_train, "cache/train", k=32, pair_map=pair_map, teacher_name="gpt2")
    train = attach_teacher_cache(packed_train, "cache/train", pair_map=pair_map, vocab_size=50257)
    # args: a DistillationConfig with remove_unused_columns=False (or teacher_cache set, which does it)
    trainer = CounterfactualDistillationTrainer(model=student, teacher_model=None, args=args,
                                                train_dataset=train, processing_class=tokenizer)

From a recipe (writes ``DIR/train`` and, when the recipe holds out an eval split, ``DIR/eval``; then
train with ``teacher_cache: DIR`` in the recipe or ``--teacher_cache DIR``)::

    python -m distill.teacher_cache --config recipes/smollm2-offline.yaml --out runs/cache --k 32
"""

from __future__ import annotations

from .format import (
    CACHE_COLUMNS,
    CF_GENDERED_LOGPROBS,
    CF_REST_LOGMASS,
    CF_ROWS,
    CF_TOPK_IDS,
    CF_TOPK_LOGPROBS,
    DTYPES,
    FORMAT,
    GENDERED_IDS,
    GENDERED_LOGPROBS,
    MANIFEST_NAME,
    REST_LOGMASS,
    REST_TEMPERATURES,
    TOPK_IDS,
    TOPK_LOGPROBS,
    VERSION,
    TeacherCacheError,
    cache_split_dir,
    dataset_fingerprint,
    dataset_row_length,
    pair_map_fingerprint,
    read_manifest,
    run_teacher_dtype,
)
from .integrity import (
    cache_file_checksums,
    check_teacher_weights,
    sha256_file,
    teacher_weights,
    verify_cache_files,
)
from .read import (
    TeacherCacheCollator,
    attach_teacher_cache,
    cached_target,
    cached_teacher_targets,
    check_manifest,
    collate_cache,
    has_teacher_cache,
    rebuild_log_probs,
)
from .write import truncate_teacher_cache, write_teacher_cache

__all__ = [
    "CACHE_COLUMNS",
    "CF_GENDERED_LOGPROBS",
    "CF_REST_LOGMASS",
    "CF_ROWS",
    "CF_TOPK_IDS",
    "CF_TOPK_LOGPROBS",
    "DTYPES",
    "FORMAT",
    "GENDERED_IDS",
    "GENDERED_LOGPROBS",
    "MANIFEST_NAME",
    "REST_LOGMASS",
    "REST_TEMPERATURES",
    "TOPK_IDS",
    "TOPK_LOGPROBS",
    "VERSION",
    "TeacherCacheCollator",
    "TeacherCacheError",
    "attach_teacher_cache",
    "cache_split_dir",
    "cached_target",
    "cache_file_checksums",
    "cached_teacher_targets",
    "check_manifest",
    "check_teacher_weights",
    "collate_cache",
    "dataset_fingerprint",
    "dataset_row_length",
    "has_teacher_cache",
    "pair_map_fingerprint",
    "read_manifest",
    "rebuild_log_probs",
    "run_teacher_dtype",
    "sha256_file",
    "teacher_weights",
    "truncate_teacher_cache",
    "verify_cache_files",
    "write_teacher_cache",
]
