#!/usr/bin/env python
"""Peak memory of the chunked KD loss against the plain full-vocabulary implementation, forward + backward.

Why this comparison: a distillation step holds the student's ``(B, T, V)`` logits anyway, but a plain
KD loss (``log_softmax`` of both sides and ``F.kl_div`` over the whole vocabulary, differentiated by
autograd) keeps several more ``(B, T, V)`` float32 tensors alive at once. ``distill.losses.kd_loss``
computes the gradient chunk by chunk inside its forward and keeps only that, so its peak should be a
fraction of the plain one. Target: chunked peak <= 0.35x the plain peak, with the same loss and gradient.

    python bench/bench_loss_memory.py [--batch 8] [--seq 1024] [--vocab 50257] [--dtypes fp32,bf16]
        [--chunk-sizes 1024,256] [--temperature 2.0] [--role-reversal] [--device cpu|cuda] [--json PATH]

With ``--role-reversal`` (needs ``--vocab`` >= 50257: the GPT-2 tokenizer's pair map), the KD loss
against the role-reversal target (``perturbation=max``, every row gendered from a quarter of the way in,
its counterfactual logits an input like the teacher's) is measured two ways per chunk size: the target
written whole by ``role_reversal`` and read back by ``kd_loss`` (``rr_whole``), and fused
(``role_reversal_kd_loss``, ``rr_fused``), which never writes it; the fused one is checked against the
whole one.

Measured in one run on one machine. The two implementations are ``kd_loss`` (chunked, custom autograd;
one row per ``--chunk-sizes`` entry, 1024 being the trainer's ``kd_chunk_size`` default) and
``kd_loss_reference`` (the plain one in ``tests/references.py``), both with forward KL at
``--temperature`` (2.0, the trainer default), student logits with ``requires_grad`` and a frozen teacher,
same dtype. Each measurement runs in a fresh subprocess, one after the other, so that one variant's
allocator state cannot hide or inflate the other's, and so that only one variant's tensors are in
memory at a time:

* the inputs are allocated (in place, without temporaries), then the peak counter is reset;
* ``loss = fn(student, teacher); loss.backward()``;
* **peak** = highest memory during the call minus the memory just before it, i.e. what the loss needs
  *beyond its inputs*. It includes ``student.grad`` (one ``(B, T, V)`` tensor in the student's dtype),
  which both variants must produce; **kept** = memory still held afterwards (that gradient).

On CPU the memory is the process's resident set (``VmHWM`` / ``VmRSS`` in ``/proc/self/status``; the
high-water mark is reset by writing 5 to ``/proc/self/clear_refs``). Every tensor here is far above
glibc's mmap threshold, so freed memory leaves the resident set at once and RSS tracks live tensors.
A second figure cross-checks it from torch's own allocations (``torch.profiler`` memory timeline,
``--no-profiler`` to skip it). On CUDA it is ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``. A last subprocess per dtype runs both implementations on the same inputs
and reports the largest absolute differences of the loss and of the gradient w.r.t. the student logits.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(REPO_ROOT))

from bench._common import format_load, machine  # noqa: E402

TARGET_RATIO = 0.35
DTYPES = {"fp32": ("float32", 4), "bf16": ("bfloat16", 2)}
GIB = 1024**3


# ----------------------------------------------------------------------------------------------------
# Machine and memory probes
# ----------------------------------------------------------------------------------------------------


def machine_and_memory(device: str) -> dict[str, Any]:
    """The common machine record plus total and available RAM and the device measured."""
    info = machine(torch_threads=False)
    info.update(
        memory_gib=_meminfo_gib("MemTotal"),
        available_gib_at_start=_meminfo_gib("MemAvailable"),
        device=device,
    )
    if device == "cuda":
        import torch

        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _meminfo_gib(field: str) -> float | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 / GIB if match else None


def _status_bytes(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in bytes."""
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}; the CPU measurement needs Linux")
    return int(match.group(1)) * 1024


def _reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0). False if the kernel refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# ----------------------------------------------------------------------------------------------------
# Workers (each runs in its own subprocess)
# ----------------------------------------------------------------------------------------------------


def _inputs(args: argparse.Namespace):
    """Student logits (requires_grad) and teacher logits, filled in place so that making them leaves no
    temporary behind (a temporary would raise the high-water mark before the measurement starts).

    The teacher is ``0.5 * noise + student``: two close but different distributions, as in distillation."""
    import torch

    dtype = getattr(torch, DTYPES[args.dtype][0])
    shape = (args.batch, args.seq, args.vocab)
    generator = torch.Generator(device=args.device).manual_seed(0)
    student = torch.empty(shape, dtype=dtype, device=args.device)
    student.normal_(generator=generator).mul_(3.0)
    teacher = torch.empty(shape, dtype=dtype, device=args.device)
    teacher.normal_(generator=generator).mul_(0.5).add_(student)
    return student.requires_grad_(), teacher


def _loss_fn(variant: str, args: argparse.Namespace, teacher):
    """``fn(student, teacher)`` of a variant. The role-reversal ones make their pair map and the
    counterfactual logits (inputs, like the teacher's) here, before any measurement starts."""
    from distill.losses import kd_loss
    from tests.references import kd_loss_reference

    if variant == "reference":
        return lambda s, t: kd_loss_reference(s, t, temperature=args.temperature)
    if variant.startswith("chunked"):
        chunk = int(variant.removeprefix("chunked"))
        return lambda s, t: kd_loss(s, t, temperature=args.temperature, chunk_size=chunk)
    return _role_reversal_fn(variant, args, teacher)


def _role_reversal_fn(variant: str, args: argparse.Namespace, teacher):
    import torch

    from counterfactuals import build_pair_map
    from distill.losses import CounterfactualSuffix, kd_loss, role_reversal, role_reversal_kd_loss
    from distill.models import gpt2_tokenizer_offline as load_gpt2_tokenizer_offline

    tokenizer = load_gpt2_tokenizer_offline()
    pair_map = build_pair_map(tokenizer, vocab_size=args.vocab).to(args.device)
    generator = torch.Generator().manual_seed(1)
    context = torch.randint(0, len(tokenizer), (args.batch, args.seq), generator=generator).to(args.device)
    # every row swapped from a quarter of the way in; its counterfactual logits close to the original's
    start = args.seq // 4
    counterfactual = torch.empty_like(teacher[:, start:])
    counterfactual.normal_(generator=torch.Generator(device=args.device).manual_seed(2)).mul_(0.5)
    counterfactual.add_(teacher[:, start:])
    rows = torch.arange(args.batch, device=args.device)
    suffixes = [CounterfactualSuffix(rows, start, counterfactual)]
    chunk = int(variant.removeprefix("rr_whole").removeprefix("rr_fused"))
    common = {"temperature": args.temperature, "chunk_size": chunk}
    reversal = {"context_ids": context, "counterfactual_suffixes": suffixes}
    if variant.startswith("rr_fused"):
        return lambda s, t: role_reversal_kd_loss(s, t, pair_map=pair_map, mode="max", **reversal, **common)

    def whole(s, t):
        with torch.no_grad():
            target = role_reversal(t, None, pair_map, "max", **reversal, **common)
        return kd_loss(s, target, teacher_is_log_probs=True, **common)

    return whole


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _reset_peak(device: str) -> int:
    """Reset the peak counter; return the memory in use now (the baseline the peak is measured from)."""
    import torch

    gc.collect()
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    if not _reset_peak_rss():
        # Without the reset, VmHWM still covers everything before (the inputs were filled without
        # temporaries, so that is about the current RSS); the phase split is then not meaningful.
        print("note: /proc/self/clear_refs not writable; peak not reset", file=sys.stderr)
    return _status_bytes("VmRSS")


def _peak_and_now(device: str) -> tuple[int, int]:
    import torch

    _sync(device)
    if device == "cuda":
        return torch.cuda.max_memory_allocated(), torch.cuda.memory_allocated()
    return _status_bytes("VmHWM"), _status_bytes("VmRSS")


def measure_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Peak memory beyond the inputs of one forward + backward, and of each phase."""
    student, teacher = _inputs(args)
    fn = _loss_fn(args.variant, args, teacher)
    before = _reset_peak(args.device)
    start = time.perf_counter()
    loss = fn(student, teacher)
    forward_peak, _ = _peak_and_now(args.device)
    forward_seconds = time.perf_counter() - start
    # The backward peak is measured from the same baseline: what the forward left alive counts in it.
    _reset_peak(args.device)
    loss.backward()
    backward_peak, now = _peak_and_now(args.device)
    seconds = time.perf_counter() - start
    return {
        "peak_bytes": max(forward_peak, backward_peak) - before,
        "forward_peak_bytes": forward_peak - before,
        "backward_peak_bytes": backward_peak - before,
        "kept_bytes": now - before,
        "seconds": seconds,
        "forward_seconds": forward_seconds,
        "loss": float(loss),
    }


def profile_worker(args: argparse.Namespace) -> dict[str, Any]:
    """The same call under ``torch.profiler``: the peak of torch's own live allocations made during it
    (tensors that existed before the call, i.e. the inputs, are not counted)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    student, teacher = _inputs(args)
    fn = _loss_fn(args.variant, args, teacher)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=activities, profile_memory=True, record_shapes=True, with_stack=True) as prof:
        loss = fn(student, teacher)
        loss.backward()
        _sync(args.device)
    live = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)  # PREEXISTING (the inputs) and INCREMENT_VERSION change nothing
    return {"profiler_peak_bytes": peak, "profiler_kept_bytes": live}


def check_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Every chunked variant against the reference on the same inputs: largest absolute differences of
    the loss and of the gradient, per variant.

    The reference runs first and only its loss and gradient are kept, so this process needs at most the
    reference's own peak, or two gradients plus one chunked call."""
    import torch

    student, teacher = _inputs(args)
    # the role-reversal variants are held to the target written whole at chunk 1024, the others to the
    # plain full-vocabulary loss
    first = args.variant.split(",")[0]
    base = (
        f"rr_whole{first.removeprefix('rr_fused').removeprefix('rr_whole')}"
        if first.startswith("rr_")
        else "reference"
    )
    ref_loss = _loss_fn(base, args, teacher)(student, teacher)
    ref_loss.backward()
    ref_grad, student.grad = student.grad, None
    ref_loss = ref_loss.detach()
    gc.collect()
    out = {}
    for variant in args.variant.split(","):
        loss = _loss_fn(variant, args, teacher)(student, teacher)
        loss.backward()
        grad, student.grad = student.grad, None
        max_diff = torch.zeros((), dtype=torch.float32, device=grad.device)
        for rows in range(0, grad.shape[1], 64):  # row blocks: no full-size difference tensor
            block = (grad[:, rows : rows + 64].float() - ref_grad[:, rows : rows + 64].float()).abs().max()
            max_diff = torch.maximum(max_diff, block)
        out[variant] = {
            "loss": float(loss),
            "reference_loss": float(ref_loss),
            "loss_abs_diff": abs(float(loss.double() - ref_loss.double())),
            "grad_max_abs_diff": float(max_diff),
            "grad_max_abs": float(ref_grad.abs().max().float()),
        }
        del loss, grad
        gc.collect()
    return out


WORKERS = {"measure": measure_worker, "profile": profile_worker, "check": check_worker}


def run_worker(kind: str, variant: str, dtype: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        kind,
        "--variant",
        variant,
        "--dtypes",
        dtype,
        *("--batch", str(args.batch), "--seq", str(args.seq), "--vocab", str(args.vocab)),
        *("--temperature", str(args.temperature), "--device", args.device),
        *(("--role-reversal",) if args.role_reversal else ()),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(
            f"{kind} subprocess for {variant} / {dtype} failed (exit {result.returncode}; -9 usually means "
            f"out of memory: lower --batch or --seq):\n{result.stderr[-3000:]}"
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="sequences (default: 8)")
    parser.add_argument("--seq", type=int, default=1024, help="positions per sequence (default: 1024)")
    parser.add_argument("--vocab", type=int, default=50257, help="vocabulary size (default: 50257, GPT-2)")
    parser.add_argument(
        "--dtypes", default="fp32,bf16", help="logit dtypes, comma-separated: fp32, bf16 (default: both)"
    )
    parser.add_argument(
        "--chunk-sizes",
        default="1024,256",
        help="kd_loss chunk sizes (positions per chunk), comma-separated (default: 1024,256)",
    )
    parser.add_argument("--temperature", type=float, default=2.0, help="softmax temperature (default: 2.0)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--role-reversal",
        action="store_true",
        help="also measure the KD loss against the role-reversal target, written whole and fused "
        "(needs --vocab >= 50257, the GPT-2 tokenizer's pair map)",
    )
    parser.add_argument("--no-profiler", action="store_true", help="skip the torch.profiler cross-check")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    parser.add_argument("--worker", choices=sorted(WORKERS), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    dtypes = _csv(args.dtypes)
    if not dtypes or any(d not in DTYPES for d in dtypes):
        parser.error(f"--dtypes must be a comma-separated subset of {', '.join(DTYPES)}, got {args.dtypes!r}")
    try:
        chunk_sizes = [int(c) for c in _csv(args.chunk_sizes)]
    except ValueError:
        chunk_sizes = []
    if not chunk_sizes or min(chunk_sizes) < 1:
        parser.error(f"--chunk-sizes must be positive integers, comma-separated, got {args.chunk_sizes!r}")
    if min(args.batch, args.seq, args.vocab) < 1:
        parser.error("--batch, --seq and --vocab must be >= 1")
    if args.role_reversal and args.vocab < 50257:
        parser.error("--role-reversal needs --vocab >= 50257 (the pair map is the GPT-2 tokenizer's)")

    if args.worker is not None:
        args.dtype = dtypes[0]
        print(json.dumps(WORKERS[args.worker](args)))
        return 0

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device here; run with --device cpu")

    info = machine_and_memory(args.device)
    positions = args.batch * args.seq
    variants = ["reference"] + [f"chunked{c}" for c in chunk_sizes]
    if args.role_reversal:
        variants += [f"rr_{kind}{c}" for c in chunk_sizes for kind in ("whole", "fused")]
    results: dict[str, dict[str, Any]] = {}
    for dtype in dtypes:
        full = positions * args.vocab * DTYPES[dtype][1]
        full_fp32 = positions * args.vocab * 4
        entry: dict[str, Any] = {"input_tensor_bytes": full, "fp32_tensor_bytes": full_fp32, "variants": {}}
        for variant in variants:
            print(f"  {dtype} {variant}: measuring", file=sys.stderr)
            out = run_worker("measure", variant, dtype, args)
            if not args.no_profiler:
                out.update(run_worker("profile", variant, dtype, args))
            entry["variants"][variant] = out
        print(f"  {dtype}: checking the chunked variants against the reference", file=sys.stderr)
        checks = run_worker(
            "check", ",".join(v for v in variants[1:] if not v.startswith("rr_")), dtype, args
        )
        if args.role_reversal:
            checks |= run_worker("check", ",".join(v for v in variants if v.startswith("rr_")), dtype, args)
        for variant, check in checks.items():
            entry["variants"][variant]["check"] = check
        ref_peak = entry["variants"]["reference"]["peak_bytes"]
        for out in entry["variants"].values():
            out["ratio_to_reference"] = out["peak_bytes"] / ref_peak
        results[dtype] = entry

    lines = _report(args, info, results)
    print("\n".join(lines))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "shape": {"batch": args.batch, "seq": args.seq, "vocab": args.vocab},
            "temperature": args.temperature,
            "chunk_sizes": chunk_sizes,
            "target_ratio": TARGET_RATIO,
            "machine": info,
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


def _report(args: argparse.Namespace, info: dict[str, Any], results: dict[str, Any]) -> list[str]:
    positions = args.batch * args.seq
    where = (
        f"GPU {info.get('gpu')}, torch.cuda.max_memory_allocated"
        if args.device == "cuda"
        else "CPU, resident set (VmHWM - VmRSS before the call)"
    )
    mem = info.get("memory_gib")
    lines = [
        f"Shape: {args.batch} x {args.seq} positions x V={args.vocab}, forward KL at temperature "
        f"{args.temperature:g}, forward + backward; memory: {where}.",
        f"One (B, T, V) tensor: fp32 {positions * args.vocab * 4 / GIB:.2f} GiB "
        f"({positions * args.vocab * 4 / 1e9:.2f} GB), bf16 {positions * args.vocab * 2 / GIB:.2f} GiB; "
        f"one chunk of 1024 positions in fp32: {1024 * args.vocab * 4 / GIB:.2f} GiB.",
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {mem:.0f} GiB RAM; Python {info['python']}, "
        f"torch {info['torch']}, transformers {info['transformers']}; {info['date']}; "
        f"load average at start {format_load(info['load_average'])}.",
        "",
        "| logits | implementation | peak beyond inputs, GiB (fp32 tensors) | forward / backward peak, GiB "
        "| profiler peak, GiB | kept after (the gradient), GiB | ratio to plain | seconds "
        "| max abs diff vs plain: loss / grad (max abs grad) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    verdicts = []
    for dtype, entry in results.items():
        for variant, out in entry["variants"].items():
            if variant == "reference":
                name = "plain `kd_loss_reference`"
            elif variant.startswith("rr_whole"):
                name = (
                    f"role reversal written whole + `kd_loss`, chunk_size={variant.removeprefix('rr_whole')}"
                )
            elif variant.startswith("rr_fused"):
                chunk = variant.removeprefix("rr_fused")
                name = f"role reversal fused, `role_reversal_kd_loss`, chunk_size={chunk}"
            else:
                name = f"chunked `kd_loss`, chunk_size={variant.removeprefix('chunked')}"
            prof = out.get("profiler_peak_bytes")
            check = out.get("check")
            diff = (
                "--"
                if check is None
                else f"{check['loss_abs_diff']:.1e} / {check['grad_max_abs_diff']:.1e} "
                f"({check['grad_max_abs']:.1e})"
            )
            lines.append(
                f"| {dtype} | {name} | {out['peak_bytes'] / GIB:.2f} "
                f"({out['peak_bytes'] / entry['fp32_tensor_bytes']:.2f}) | "
                f"{out['forward_peak_bytes'] / GIB:.2f} / {out['backward_peak_bytes'] / GIB:.2f} | "
                f"{'--' if prof is None else f'{prof / GIB:.2f}'} | {out['kept_bytes'] / GIB:.2f} | "
                f"{out['ratio_to_reference']:.2f}x | {out['seconds']:.1f} | {diff} |"
            )
        default = entry["variants"].get("chunked1024")
        if default is not None:
            ratio = default["ratio_to_reference"]
            verdicts.append(
                f"{dtype}: chunked (chunk_size=1024, the trainer default) / plain peak = {ratio:.2f}x; "
                f"target <= {TARGET_RATIO:g}x: {'met' if ratio <= TARGET_RATIO else 'missed'}."
            )
        if args.role_reversal:
            chunk = _csv(args.chunk_sizes)[0]
            whole, fused = entry["variants"][f"rr_whole{chunk}"], entry["variants"][f"rr_fused{chunk}"]
            plain = entry["variants"][f"chunked{chunk}"]
            verdicts.append(
                f"{dtype}: KD with role reversal (chunk_size={chunk}) peak / KD without: fused "
                f"{fused['peak_bytes'] / plain['peak_bytes']:.2f}x, written whole "
                f"{whole['peak_bytes'] / plain['peak_bytes']:.2f}x."
            )
        chunked = {k: v for k, v in entry["variants"].items() if k.startswith("chunked")}
        best_key = min(chunked, key=lambda k: chunked[k]["ratio_to_reference"])
        if best_key != "chunked1024":
            best = chunked[best_key]["ratio_to_reference"]
            verdicts.append(
                f"{dtype}: smallest peak at chunk_size={best_key.removeprefix('chunked')}: {best:.2f}x "
                f"({'met' if best <= TARGET_RATIO else 'missed'})."
            )
    return [*lines, "", *verdicts]


if __name__ == "__main__":
    raise SystemExit(main())
