"""Every benchmark script runs end to end at a tiny scale, so that the commands BENCHMARKS.md quotes keep
working: like the recipes, a benchmark that is not run in CI rots. The figures themselves are not
checked here (timings never are); the shape of what each script reports, and its own equality checks
of fast against reference paths, are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, tmp_path: Path, *args: str) -> tuple[dict, str]:
    """Runs ``bench/<script>`` as BENCHMARKS.md does (a script from the checkout) and returns its JSON
    and its Markdown output."""
    out = tmp_path / f"{script}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / script), *args, "--json", str(out)],
        cwd=tmp_path,  # not the repository root: the script must find its own imports
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text()), proc.stdout


def test_machine_record_names_the_machine_and_versions():
    sys.path.insert(0, str(REPO_ROOT))
    try:
        from bench._common import format_load, machine
    finally:
        sys.path.remove(str(REPO_ROOT))
    info = machine(("torch", "not-a-package-fairdistill"))
    assert info["nproc"] >= 1 and info["cpu"] and info["python"].count(".") == 2
    assert info["torch"].startswith("2.") and info["not-a-package-fairdistill"] is None
    assert info["torch_threads"] >= 1 and info["date"].endswith("UTC")
    assert "torch_threads" not in machine(torch_threads=False)
    assert format_load(None) == "unknown" and format_load((1.0, 0.5, 0.25)) == "1.00 / 0.50 / 0.25"


def test_bench_step_tiny(tmp_path):
    result, report = run_bench(
        "bench_step.py", tmp_path,
        *("--d-model", "32", "--heads", "2", "--teacher-layers", "2", "--student-layers", "1"),
        *("--batch-size", "2", "--seq-len", "16", "--shares", "0", "1", "--steps", "1", "--warmup", "0"),
    )  # fmt: skip
    assert "| gendered rows | configuration |" in report
    # the script's own check: the fast target equals the reference target
    assert result["target_max_abs_difference"] < 1e-4
    assert result["fused_loss_relative_difference"] < 1e-5  # the fused KD loss = kd_loss on that target
    modes = {row["mode"] for row in result["results"].values()}
    assert {"plain", "cf_reference", "cf_unfused", "cf_fast", "cf_cda"} <= modes
    plain = [row for row in result["results"].values() if row["mode"] == "plain"]
    assert all(row["wall_ratio"] == 1.0 for row in plain)


def test_bench_loss_memory_tiny(tmp_path):
    result, report = run_bench(
        "bench_loss_memory.py", tmp_path,
        *("--batch", "2", "--seq", "32", "--vocab", "500", "--chunk-sizes", "16", "--no-profiler"),
    )  # fmt: skip
    assert "chunked `kd_loss`" in report
    for dtype in ("fp32", "bf16"):
        check = result["results"][dtype]["variants"]["chunked16"]["check"]
        assert check["loss_abs_diff"] < 1e-5 * max(1.0, abs(check["reference_loss"]))
        assert check["grad_max_abs_diff"] < 1e-3 * check["grad_max_abs"]


def test_bench_loss_memory_role_reversal_tiny(tmp_path):
    result, report = run_bench(
        "bench_loss_memory.py", tmp_path,
        *("--batch", "1", "--seq", "16", "--chunk-sizes", "8", "--dtypes", "fp32", "--no-profiler"),
        "--role-reversal",
    )  # fmt: skip
    assert "role reversal fused" in report and "KD with role reversal" in report
    check = result["results"]["fp32"]["variants"]["rr_fused8"]["check"]  # against the target written whole
    assert check["loss_abs_diff"] < 1e-5 * max(1.0, abs(check["reference_loss"]))
    assert check["grad_max_abs_diff"] < 1e-3 * check["grad_max_abs"]


def test_bench_swap_tiny(tmp_path, bold_dir):
    result, report = run_bench("bench_swap.py", tmp_path, "--repeat", "1", "--bold-dir", str(bold_dir))
    assert "`swap_gender`" in report
    assert result["text"]["lines"] > 1000 and result["ratios"]["swap_vs_tokenizer_default"] > 0


def test_bench_eval_tiny(tmp_path):
    result, report = run_bench(
        "bench_eval.py", tmp_path,
        *("--models", "tiny-gpt2", "--prompts", "builtin", "--num-prompts", "4", "--max-new-tokens", "3"),
        *("--direct-batch-sizes", "2,4", "--ours-batch-sizes", "4", "--repeat", "1", "--threads", "1"),
    )  # fmt: skip
    assert "model.generate" in report
    model = result["results"]["tiny-gpt2"]
    assert model["generations"] == 8 and model["ratio_default_vs_best_direct"] > 0


def test_bench_teacher_cache_tiny(tmp_path, smollm2_tok, bold_dir):
    result, report = run_bench(
        "bench_teacher_cache.py", tmp_path,
        *("--blocks", "4", "--block-size", "16", "--ks", "8", "32", "--batch-size", "2"),
        *("--steps", "2", "--rounds", "1", "--student-layers", "1", "--bold-dir", str(bold_dir)),
    )  # fmt: skip
    assert "bytes / training token" in report
    assert {"machine", "storage", "quality", "steps"} <= set(result)


@pytest.mark.parametrize(
    "script", ["bench_step.py", "bench_eval.py", "bench_loss_memory.py", "bench_teacher_cache.py"]
)
def test_bench_refuses_bad_arguments_with_a_message(script, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / script), "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "--json" in proc.stderr
