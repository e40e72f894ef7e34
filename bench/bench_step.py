#!/usr/bin/env python
"""Optimizer-step time of plain KD, CF-KD (perturbation) and CF-KD + CDA, by share of gendered rows.

Why: the counterfactual target costs a second teacher view of every row the swap changes and a role
reversal over the vocabulary at every position. Target (issue 17): a CF-KD step costs at most 1.20x a
plain KD step, even when every row is gendered, with a teacher of about 1.5-2x the student's compute.

    python bench/bench_step.py [--steps 5] [--batch-size 10] [--seq-len 128] [--compile] [--modes M ...]
        [--json PATH]

Measured in one run on one machine. One step = ``trainer.training_step`` (student forward, teacher
target, loss, backward) + ``optimizer.step()`` + ``zero_grad()``: what ``Trainer.train`` does per
step, without data loading. Every configuration has its own ``CounterfactualDistillationTrainer``
(AdamW, fp32) over copies of the same random-init student; the teacher is shared. The configurations
take turns step by step (round robin), so a change of load on the machine hits all of them alike;
each figure is the median of ``--steps`` steps after ``--warmup`` untimed ones, as wall time and as
the process's CPU time (steadier when other jobs share the cores).

Batches are real text: BOLD Wikipedia sentences (else the bundled sample corpus), GPT-2-tokenised,
packed into ``--seq-len`` blocks in reading order; a block is *gendered* when the token swap changes
it. A batch with gendered share s has round(s * B) gendered blocks and neutral blocks for the rest;
each step takes the next blocks of both pools, the same sequence for every configuration.

Configurations, per gendered share:

* plain KD: ``perturbation`` unset (one teacher pass, KD on the raw logits);
* CF-KD, fast paths off: the target as computed before the fast paths (one joint teacher pass over the
  originals and the swapped rows in full, the counterfactual tensor assembled with ``index_copy``,
  ``role_reversal_reference``): ``reference_teacher_target`` (both in ``tests/references.py``);
* CF-KD, no prefix sharing: the fused role reversal, swapped rows still read in full (joint pass);
* CF-KD, role reversal not fused: prefix sharing on, but the role-reversal target written whole
  (``role_reversal``) and read back by ``kd_loss`` -- the default before issue 17;
* CF-KD, fast paths on: the defaults (prefix sharing, joint pass, role reversal fused into the KD
  loss's chunks: ``role_reversal_kd_loss``);
* CF-KD + CDA: the defaults on batches whose gendered blocks come from the *swapped* text (two-sided
  CDA adds the swapped copy of every gendered example; the copies are gendered too, so at a given
  gendered share a CDA step costs what a CF-KD step costs: this row checks that on the copies' own
  first-swap positions);
* plain KD and CF-KD (fast paths on) with ``teacher_dtype=bfloat16`` (the teacher's weights in bf16,
  which CPUs with AMX and every recent GPU run faster; the target is then no longer the fp32 one, so
  these two compare with each other only).

The teacher and student are random-init GPT-2s (or Llamas) with GPT-2's 50,257-token vocabulary;
the teacher forward / student forward time ratio is measured and printed (target 1.5-2x).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from bench._common import format_load, load_average, machine  # noqa: E402
from distill.models import gpt2_tokenizer_offline  # noqa: E402
from fairdistill.demo import (  # noqa: E402
    BOLD_DOMAINS,
    SAMPLE_CORPUS,
    default_bold_dir,
    load_bold_sentences,
    load_sample_corpus,
)

TARGET_RATIO = 1.20
MODES = {
    "plain": "plain KD",
    "cf_reference": "CF-KD, fast paths off",
    "cf_no_sharing": "CF-KD, fused role reversal, prefix sharing off",
    "cf_unfused": "CF-KD, role reversal not fused (target written whole)",
    "cf_fast": "CF-KD, fast paths on",
    "cf_cda": "CF-KD + CDA, fast paths on",
    "plain_bf16": "plain KD, bf16 teacher",
    "cf_fast_bf16": "CF-KD, fast paths on, bf16 teacher",
    "plain_compiled": "plain KD, compiled student",  # with --compile only
    "cf_fast_compiled": "CF-KD, fast paths on, compiled student",  # with --compile only
}


# --- data ---------------------------------------------------------------------------------------------


def load_texts(bold_dir: Path) -> tuple[list[str], str]:
    try:
        rows = load_bold_sentences(bold_dir, BOLD_DOMAINS)
        return [row["text"] for row in rows], f"BOLD Wikipedia sentences, {len(BOLD_DOMAINS)} domains"
    except (OSError, ValueError) as err:
        print(f"note: BOLD not usable at {bold_dir} ({err}); using the sample corpus", file=sys.stderr)
    return [row["text"] for row in load_sample_corpus()], str(SAMPLE_CORPUS.relative_to(REPO_ROOT))


def pack(tokenizer, texts: list[str], length: int) -> torch.Tensor:
    """Texts tokenised and concatenated in order (EOS between them), cut into blocks of ``length``."""
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(tokenizer.eos_token_id)
    n_blocks = len(stream) // length
    return torch.tensor(stream[: n_blocks * length]).view(n_blocks, length)


def block_pools(tokenizer, pair_map, texts: list[str], length: int) -> dict[str, torch.Tensor]:
    """Neutral blocks, gendered blocks, and gendered blocks of the CDA copies (the swapped text)."""
    from counterfactuals import swap_gender

    blocks = pack(tokenizer, texts, length)
    _, changed = pair_map.swap_ids(blocks)
    # the swapped copies two-sided CDA adds: every text the swap changes, swapped
    copies = [swapped for text in texts if (swapped := swap_gender(text)) != text]
    cda_blocks = pack(tokenizer, copies, length)
    _, cda_changed = pair_map.swap_ids(cda_blocks)
    pools = {"neutral": blocks[~changed], "gendered": blocks[changed], "cda": cda_blocks[cda_changed]}
    # a fixed shuffle: blocks in reading order come a domain at a time, and the gendered share and the
    # first swapped positions of the "gender" domain's first blocks are not those of the whole text
    generator = torch.Generator().manual_seed(0)
    return {key: rows[torch.randperm(len(rows), generator=generator)] for key, rows in pools.items()}


def make_batch(pools: dict[str, torch.Tensor], share: float, size: int, step: int, cda: bool) -> dict:
    n_gendered = round(share * size)
    gendered = pools["cda" if cda else "gendered"]
    rows = [gendered[(step * size + i) % len(gendered)] for i in range(n_gendered)]
    rows += [pools["neutral"][(step * size + i) % len(pools["neutral"])] for i in range(size - n_gendered)]
    ids = torch.stack(rows)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def first_swap_summary(pair_map, pools: dict[str, torch.Tensor], key: str) -> dict[str, float]:
    blocks = pools[key]
    swapped, changed = pair_map.swap_ids(blocks)
    first = (swapped != blocks).int().argmax(-1)[changed].float()
    quantiles = torch.quantile(first, torch.tensor([0.1, 0.5, 0.9])).tolist()
    return {
        "blocks": len(blocks),
        "mean": first.mean().item(),
        "p10": quantiles[0],
        "median": quantiles[1],
        "p90": quantiles[2],
    }


# --- models and trainers ------------------------------------------------------------------------------


def build_model(arch: str, vocab: int, d_model: int, layers: int, heads: int, length: int, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab,
            n_embd=d_model,
            n_layer=layers,
            n_head=heads,
            n_positions=length,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        return GPT2LMHeadModel(config)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=d_model,
        intermediate_size=4 * d_model,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=length,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def make_trainers(args, teachers, student, tokenizer, pair_map, output_dir: Path) -> dict[str, Any]:
    from distill.config import DistillationConfig
    from distill.teacher_targets import TeacherTarget, TeacherTargets
    from distill.trainer import CounterfactualDistillationTrainer
    from tests.references import reference_teacher_target

    class ReferenceTargets(TeacherTargets):
        """The CF-KD target computed as before the fast paths (see the module docstring)."""

        def __init__(self, trainer) -> None:
            self.trainer = trainer

        def __call__(self, inputs, *, need_hidden):
            t = self.trainer
            target = reference_teacher_target(
                t.teacher, t.pair_map, t.args, inputs["input_ids"], inputs.get("attention_mask"), joint=True
            )
            return TeacherTarget(target, is_log_probs=True)

    class UnfusedTargets(TeacherTargets):
        """The live targets with the role-reversal target written whole, as before issue 17."""

        def __init__(self, live, args) -> None:
            self.live, self.args = live, args

        def __call__(self, inputs, *, need_hidden):
            target = self.live(inputs, need_hidden=need_hidden)
            with torch.inference_mode():
                values = target.log_probs(self.args.temperature, self.args.kd_chunk_size)
            return TeacherTarget(values, is_log_probs=True, hidden=target.hidden)

    common = {
        "output_dir": str(output_dir),
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
        "per_device_train_batch_size": args.batch_size,
        "learning_rate": 1e-4,
        "temperature": 2.0,
        "save_strategy": "no",
    }
    settings = {
        "plain": (CounterfactualDistillationTrainer, {}),
        "plain_bf16": (CounterfactualDistillationTrainer, {"teacher_dtype": "bfloat16"}),
        "cf_fast_bf16": (
            CounterfactualDistillationTrainer,
            {"perturbation": "max", "teacher_dtype": "bfloat16"},
        ),
        "cf_reference": (CounterfactualDistillationTrainer, {"perturbation": "max"}),
        "cf_unfused": (CounterfactualDistillationTrainer, {"perturbation": "max"}),
        "cf_no_sharing": (
            CounterfactualDistillationTrainer,
            {"perturbation": "max", "teacher_prefix_sharing": False},
        ),
        "cf_fast": (CounterfactualDistillationTrainer, {"perturbation": "max"}),
    }
    if args.compile:
        settings["plain_compiled"] = (CounterfactualDistillationTrainer, {"torch_compile": True})
        settings["cf_fast_compiled"] = (
            CounterfactualDistillationTrainer,
            {"perturbation": "max", "torch_compile": True},
        )
    trainers = {}
    for mode, (cls, extra) in settings.items():
        trainer = cls(
            model=copy.deepcopy(student),
            teacher_model=teachers["bfloat16" if "teacher_dtype" in extra else "float32"],
            args=DistillationConfig(**common, **extra),
            pair_map=pair_map if "perturbation" in extra else None,
            processing_class=tokenizer,
        )
        if mode == "cf_reference":
            trainer.teacher_targets = ReferenceTargets(trainer)
        elif mode == "cf_unfused":
            trainer.teacher_targets = UnfusedTargets(trainer.teacher_targets, trainer.args)
        trainer.create_optimizer()
        # what Trainer.train does through accelerate's prepare(): the student compiled, the optimiser
        # on its parameters; the teacher, the target and the KD loss stay eager
        trainer.step_model = torch.compile(trainer.model) if trainer.args.torch_compile else trainer.model
        trainers[mode] = trainer
    trainers["cf_cda"] = trainers["cf_fast"]  # same trainer, CDA batches
    return trainers


def modes_for(share: float, trainers: dict[str, Any], selected: list[str] | None = None) -> list[str]:
    """The configurations timed at this share: ``selected`` (default: all). Without gendered rows no
    row is swapped: prefix sharing has nothing to share and CDA changes no row, so those two would
    repeat the fast CF-KD figure."""
    skipped = ("cf_no_sharing", "cf_cda") if share == 0 else ()
    return [m for m in MODES if m in trainers and m not in skipped and (selected is None or m in selected)]


def resolve_modes(modes: list[str] | None, compile_student: bool) -> list[str] | None:
    """``--modes`` plus the plain KD configuration each one is divided by; None keeps them all."""
    if modes is None:
        return None
    chosen = set(modes) | {ratio_base(m) for m in modes}
    if any(m.endswith("_compiled") for m in chosen) and not compile_student:
        raise ValueError("the *_compiled configurations need --compile")
    return [m for m in MODES if m in chosen]


def ratio_base(mode: str) -> str:
    """Each CF-KD figure is divided by the plain KD figure with the same teacher dtype and student."""
    for suffix in ("_bf16", "_compiled"):
        if mode.endswith(suffix):
            return "plain" + suffix
    return "plain"


def kd_loss_on(target: torch.Tensor, logits: torch.Tensor, args) -> float:
    from distill.losses import kd_loss

    return kd_loss(
        logits, target, temperature=args.temperature, chunk_size=args.kd_chunk_size, teacher_is_log_probs=True
    ).item()


def optimizer_step(trainer, batch: dict[str, torch.Tensor]) -> None:
    model = trainer.step_model
    model.train()
    num_items = (batch["labels"][:, 1:] != -100).sum()
    trainer.training_step(model, batch, num_items_in_batch=num_items)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def cpu_median(fn, repeat: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def cost_breakdown(trainers: dict[str, Any], batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """CPU seconds of the pieces of the teacher target on one all-gendered batch (median of 3)."""
    from distill.losses import kd_loss, role_reversal, role_reversal_kd_loss
    from distill.teacher_targets import teacher_logits_with_counterfactuals
    from tests.references import role_reversal_reference

    trainer = trainers["cf_fast"]
    teacher, pair_map, args = trainer.teacher, trainer.pair_map, trainer.args
    ids = batch["input_ids"]

    def passes(sharing: bool):
        swapped, changed = pair_map.swap_ids(ids)
        return teacher_logits_with_counterfactuals(
            teacher,
            ids,
            None,
            swapped,
            changed,
            prefix_sharing=sharing,
            max_suffix_passes=args.teacher_suffix_passes,
        )

    def fast_reversal(out):
        return role_reversal(
            out.logits[:, :-1],
            None,
            pair_map,
            args.perturbation,
            temperature=args.temperature,
            context_ids=ids[:, :-1],
            chunk_size=args.kd_chunk_size,
            counterfactual_suffixes=out.suffixes,
        )

    def fused_loss(out, student):
        return role_reversal_kd_loss(
            student,
            out.logits[:, :-1],
            pair_map=pair_map,
            mode=args.perturbation,
            context_ids=ids[:, :-1],
            counterfactual_suffixes=out.suffixes,
            temperature=args.temperature,
            chunk_size=args.kd_chunk_size,
        )

    def unfused_loss(out, student):
        with torch.inference_mode():
            target = fast_reversal(out)
        return kd_loss(
            student,
            target,
            temperature=args.temperature,
            chunk_size=args.kd_chunk_size,
            teacher_is_log_probs=True,
        )

    with torch.inference_mode():
        shared, full = passes(True), passes(False)
    student = torch.randn(shared.logits[:, :-1].shape).requires_grad_()
    losses = {
        "KD loss forward + backward, role reversal fused (suffixes of the sharing passes)": cpu_median(
            lambda: fused_loss(shared, student).backward()
        ),
        "KD loss forward + backward, role reversal written whole, then kd_loss": cpu_median(
            lambda: unfused_loss(shared, student).backward()
        ),
        "KD loss forward + backward, plain KD (raw teacher logits)": cpu_median(
            lambda: kd_loss(
                student, shared.logits[:, :-1], temperature=args.temperature, chunk_size=args.kd_chunk_size
            ).backward()
        ),
    }
    with torch.inference_mode():
        counterfactual = full.suffixes[0].logits  # every row swapped: one suffix from position 0
        return losses | {
            "one teacher pass (plain KD's target)": cpu_median(
                lambda: teacher(input_ids=ids, use_cache=False)
            ),
            "teacher passes, prefix sharing on": cpu_median(lambda: passes(True)),
            "teacher passes, prefix sharing off (joint)": cpu_median(lambda: passes(False)),
            "role reversal, fast (suffixes of the sharing passes)": cpu_median(lambda: fast_reversal(shared)),
            "role reversal, fast (full counterfactual rows)": cpu_median(lambda: fast_reversal(full)),
            "role reversal, reference (index_copy + role_reversal_reference)": cpu_median(
                lambda: role_reversal_reference(
                    full.logits[:, :-1],
                    full.logits[:, :-1].index_copy(0, full.suffixes[0].rows, counterfactual),
                    pair_map,
                    args.perturbation,
                    temperature=args.temperature,
                    context_ids=ids[:, :-1],
                    chunk_size=args.kd_chunk_size,
                )
            ),
        }


class TokenCounter:
    """Counts the tokens the teachers read (forward pre-hook), to show what prefix sharing saves."""

    def __init__(self, *teachers: torch.nn.Module) -> None:
        self.tokens = 0
        for teacher in teachers:
            teacher.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.tokens += 0 if ids is None else ids.numel()


def forward_seconds(model, batch: dict[str, torch.Tensor], repeat: int) -> float:
    """Median CPU seconds of a no-grad forward pass."""
    times = []
    with torch.inference_mode():
        model(input_ids=batch["input_ids"], use_cache=False)
        for _ in range(repeat):
            start = time.process_time()
            model(input_ids=batch["input_ids"], use_cache=False)
            times.append(time.process_time() - start)
    return statistics.median(times)


# --- main ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=("gpt2", "llama"), default="gpt2")
    parser.add_argument("--d-model", type=int, default=384)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--teacher-layers", type=int, default=12)
    parser.add_argument("--student-layers", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=10, help="rows per step (10: 30%% is 3 rows)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument(
        "--shares", type=float, nargs="+", default=[0.0, 0.3, 1.0], help="gendered row shares"
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per configuration first")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time plain KD and CF-KD (fast) with torch_compile=True (compile time reported apart)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=list(MODES),
        default=None,
        help="time only these configurations (and the plain KD each is divided by); default: all. Fewer "
        "configurations in the round robin keep each one's memory churn from slowing the others",
    )
    parser.add_argument(
        "--bold-dir", type=Path, default=None, help="default: FAIRDISTILL_BOLD_DIR or ../shared"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    try:
        args.modes = resolve_modes(args.modes, args.compile)
    except ValueError as error:
        parser.error(f"--modes: {error}")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if any(not 0.0 <= s <= 1.0 for s in args.shares):
        parser.error("--shares must lie in [0, 1]")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import tempfile

    from transformers.utils import logging as hf_logging

    from counterfactuals import build_pair_map
    from tests.references import reference_teacher_target

    hf_logging.set_verbosity_error()
    info = machine()
    tokenizer = gpt2_tokenizer_offline()
    pair_map = build_pair_map(tokenizer)
    texts, source = load_texts(args.bold_dir or default_bold_dir())
    pools = block_pools(tokenizer, pair_map, texts, args.seq_len)
    vocab = len(tokenizer)
    teacher = build_model(
        args.arch, vocab, args.d_model, args.teacher_layers, args.heads, args.seq_len, seed=1
    )
    student = build_model(
        args.arch, vocab, args.d_model, args.student_layers, args.heads, args.seq_len, seed=2
    )
    teacher.eval()
    # its own copy: the trainer casts the teacher it is given in place
    teachers = {"float32": teacher, "bfloat16": copy.deepcopy(teacher)}
    counter = TokenCounter(*teachers.values())
    probe = make_batch(pools, 0.0, args.batch_size, 0, cda=False)
    teacher_s, student_s = forward_seconds(teacher, probe, 3), forward_seconds(student, probe, 3)
    print(
        f"teacher forward {teacher_s:.3f} s CPU, student forward {student_s:.3f} s CPU: "
        f"{teacher_s / student_s:.2f}x",
        file=sys.stderr,
    )

    times: dict[tuple[float, str], list[tuple[float, float]]] = {}
    teacher_tokens: dict[tuple[float, str], list[int]] = {}
    compile_seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = make_trainers(args, teachers, student, tokenizer, pair_map, Path(tmp))
        trainers_used = set(trainers)
        # fast and reference targets on one all-gendered batch: the fast path computes the same target
        check = make_batch(pools, 1.0, args.batch_size, 0, cda=False)
        fast = trainers["cf_fast"]
        live = fast.teacher_targets({"input_ids": check["input_ids"]}, need_hidden=False)
        fast_target = live.log_probs(fast.args.temperature, fast.args.kd_chunk_size)
        slow_target = reference_teacher_target(teacher, fast.pair_map, fast.args, check["input_ids"], None)
        target_gap = (fast_target - slow_target).abs().max().item()
        # and the fused loss against kd_loss on the reference target, on the same student logits
        with torch.no_grad():
            logits = fast.model(input_ids=check["input_ids"], use_cache=False).logits[:, :-1]
        fused_loss = live.kd_loss(logits, None, fast.args).item()
        plain_loss = kd_loss_on(slow_target, logits, fast.args)
        loss_gap = abs(fused_loss - plain_loss) / abs(plain_loss)
        breakdown = cost_breakdown(trainers, check)
        if args.compile:  # the first step compiles: timed on its own, never in the medians
            for mode in ("plain_compiled", "cf_fast_compiled"):
                start = time.perf_counter()
                optimizer_step(trainers[mode], probe)
                compile_seconds[mode] = time.perf_counter() - start
        for step in range(args.warmup + args.steps):
            for share in args.shares:
                for mode in modes_for(share, trainers, args.modes):
                    batch = make_batch(pools, share, args.batch_size, step, cda=mode == "cf_cda")
                    counter.tokens = 0
                    wall, cpu = time.perf_counter(), time.process_time()
                    optimizer_step(trainers[mode], batch)
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    if step >= args.warmup:
                        times.setdefault((share, mode), []).append((wall, cpu))
                        teacher_tokens.setdefault((share, mode), []).append(counter.tokens)
            print(f"  round {step + 1}/{args.warmup + args.steps} done", file=sys.stderr)
    load_end = load_average()

    results: dict[str, dict[str, Any]] = {}
    tokens_per_step = args.batch_size * args.seq_len
    for (share, mode), samples in times.items():
        wall = statistics.median(s[0] for s in samples)
        cpu = statistics.median(s[1] for s in samples)
        plain = times[(share, ratio_base(mode))]
        results[f"{share:g}/{mode}"] = {
            "share": share,
            "mode": mode,
            "label": MODES[mode],
            "wall_s": wall,
            "cpu_s": cpu,
            "wall_ratio": wall / statistics.median(s[0] for s in plain),
            "cpu_ratio": cpu / statistics.median(s[1] for s in plain),
            "teacher_tokens_per_step": statistics.mean(teacher_tokens[(share, mode)]) / tokens_per_step,
            "wall_samples": [s[0] for s in samples],
            "cpu_samples": [s[1] for s in samples],
        }

    first_swaps = {key: first_swap_summary(pair_map, pools, key) for key in ("gendered", "cda")}
    gendered_first = first_swaps["gendered"]
    lines = [
        f"Text: {source}, GPT-2 tokenizer, packed into {args.seq_len}-token blocks: "
        f"{len(pools['gendered'])} gendered, {len(pools['neutral'])} neutral, {len(pools['cda'])} gendered "
        f"CDA copies. First swapped position in a gendered block: mean {gendered_first['mean']:.1f}, "
        f"median {gendered_first['median']:.0f} (CDA copies: mean {first_swaps['cda']['mean']:.1f}).",
        f"Models: random-init {args.arch}, d_model {args.d_model}, vocabulary {vocab}; teacher "
        f"{args.teacher_layers} layers, student {args.student_layers}; teacher forward / student forward "
        f"(CPU time) = {teacher_s / student_s:.2f}x. Batch {args.batch_size} x {args.seq_len}, AdamW, fp32, "
        f"perturbation=max, temperature 2; median of {args.steps} steps after {args.warmup} warm-up, "
        f"configurations in round robin.",
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), torch threads {info['torch_threads']}; Python "
        f"{info['python']}, torch {info['torch']}, transformers {info['transformers']}; {info['date']}; load "
        f"average at start {format_load(info['load_average'])}, at end {format_load(load_end)}.",
        f"Fast target vs reference target on an all-gendered batch: max |difference| {target_gap:.2e} "
        f"(log-probabilities); fused KD loss vs kd_loss on the reference target: relative difference "
        f"{loss_gap:.1e}.",
        "",
        "| gendered rows | configuration | step wall s | step CPU s | / plain KD (wall) | / plain KD (CPU) | "
        "teacher tokens read / B*T |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for result in results.values():
        lines.append(
            f"| {round(result['share'] * args.batch_size)}/{args.batch_size} "
            f"({round(result['share'] * args.batch_size) / args.batch_size:.0%}) | "
            f"{result['label']} | {result['wall_s']:.3f} | {result['cpu_s']:.3f} | "
            f"{result['wall_ratio']:.2f}x | {result['cpu_ratio']:.2f}x | "
            f"{result['teacher_tokens_per_step']:.2f} |"
        )
    lines += [
        "",
        f"Teacher target of one all-gendered {args.batch_size} x {args.seq_len} batch (CPU s, median of 3):",
        "",
        "| piece of the teacher target | CPU s |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {seconds:.3f} |" for name, seconds in breakdown.items()]
    if compile_seconds:
        lines += [
            "",
            "First (compiling) step, excluded from the medians: "
            + ", ".join(f"{MODES[m]} {s:.1f} s" for m, s in compile_seconds.items()),
        ]
    for mode in ("cf_fast", "cf_fast_bf16", "cf_fast_compiled"):
        if mode not in trainers_used or (args.modes is not None and mode not in args.modes):
            continue
        verdicts = []
        for share in args.shares:
            result = results[f"{share:g}/{mode}"]
            worst = max(result["cpu_ratio"], result["wall_ratio"])
            verdicts.append(
                f"{round(share * args.batch_size)}/{args.batch_size} gendered: "
                f"CPU {result['cpu_ratio']:.2f}x, "
                f"wall {result['wall_ratio']:.2f}x ({'met' if worst <= TARGET_RATIO else 'missed'})"
            )
        lines += [
            "",
            f"{MODES[mode]} / {MODES[ratio_base(mode)]}, target <= {TARGET_RATIO}x: "
            + "; ".join(verdicts)
            + ".",
        ]
    print("\n".join(lines))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "text_source": source,
            "first_swap": first_swaps,
            "teacher_student_forward_ratio": teacher_s / student_s,
            "target_max_abs_difference": target_gap,
            "fused_loss_relative_difference": loss_gap,
            "breakdown_cpu_seconds": breakdown,
            "machine": info,
            "load_average_end": load_end,
            "compile_seconds": compile_seconds,
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
