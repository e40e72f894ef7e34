"""``bench/gpu_check.sh`` (issue 17 §2) runs end to end on CPU at tiny scale, so the command the lead runs
on a GPU is known to work before a device minute is spent; and our packages import on a machine without
``datasets``, ``wandb``, ``vaderSentiment``, ``gguf`` (the GPU machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# absent on the GPU machine; pyarrow comes only with datasets
ABSENT = ("datasets", "wandb", "vaderSentiment", "gguf", "pyarrow")
MODULES = ("distill.trainer", "distill.losses", "distill.student", "distill.models", "distill.config")


def test_packages_import_without_datasets_wandb_vader_gguf():
    # sys.modules[name] = None makes `import name` raise ImportError and importlib.util.find_spec(name)
    # return None: what transformers and accelerate see when a package is not installed
    code = (
        f"import sys\nfor name in {ABSENT!r}:\n    sys.modules[name] = None\n"
        f"import counterfactuals\nfor module in {MODULES!r}:\n    __import__(module)\n"
        "from distill.trainer import CounterfactualDistillationTrainer\n"
        f"loaded = [m for m in sys.modules if m.split('.')[0] in {ABSENT!r} and sys.modules[m] is not None]\n"
        "assert not loaded, loaded\nprint('imported')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "imported" in proc.stdout, proc.stderr[-3000:]


def test_the_blocker_would_catch_a_top_level_import():
    """The check above can fail: with the same blocker, a module importing datasets at the top fails."""
    code = "import sys\nsys.modules['datasets'] = None\nimport distill.data\n"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0 and "datasets" in proc.stderr


def run_gpu_check(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        ["bash", str(REPO_ROOT / "bench" / "gpu_check.sh"), "--out", str(out), *args],
        cwd=out.parent,  # not the repository root: the script must find its own imports
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_gpu_check_cpu_tiny(tmp_path):
    out = tmp_path / "check"
    proc = run_gpu_check(out, "--cpu", "--tiny")
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["cpu"] is True and report["tiny"] is True and report["mode"] == "cpu, tiny"
    sections = report["sections"]
    assert list(sections) == [
        "environment",
        "throughput_gpt2",
        "throughput_smollm2",
        "loss_memory",
        "launch_fsdp2",
        "launch_zero3",
    ]
    assert all(s["status"] in ("ok", "skipped") for s in sections.values()), sections
    assert sections["environment"]["versions"]["torch"].startswith("2.")
    for family in ("throughput_gpt2", "throughput_smollm2"):
        section = sections[family]
        assert set(section["runs"]) == {"plain@0.3", "cf_kd@0", "cf_kd@0.3", "cf_kd@1"}
        assert "6*N_s" in section["flop_formula"]
        student = section["flops_per_token"]["student"]
        assert student["training"] == 3 * student["forward"]  # 6N + 12LdT = 3 x (2N + 4LdT)
        for name, run in section["runs"].items():
            assert run["tokens_per_second"] > 0 and run["mfu_student"] is None  # no peak on CPU
            # the batches hold the gendered share asked for, as the swap itself sees it
            assert run["measured_changed_share"] == pytest.approx(run["gendered_share"], abs=0.3 / 4), name
        assert section["runs"]["cf_kd@0"]["teacher_tokens_per_step_over_BT"] == 1.0
        assert section["runs"]["cf_kd@1"]["teacher_tokens_per_step_over_BT"] > 1.0
    memory = sections["loss_memory"]
    assert memory["kd_vs_reference_loss_abs_diff"] < 1e-2
    assert {"kd_loss", "kd_loss_reference"} <= set(memory["variants"])
    launch = sections["launch_fsdp2"]
    assert launch["rc"] == 0 and launch["summary"]["steps"] == 4, launch
    assert launch["summary"]["saved_weights"] and launch["problems"] == []
    assert "| section | configuration | tokens/s |" in proc.stdout


def test_gpu_check_refuses_a_missing_tokenizer_dir(tmp_path):
    proc = run_gpu_check(tmp_path / "check", "--cpu", "--tiny", "--tokenizer-dir", str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "--tokenizer-dir" in proc.stderr and "not a folder" in proc.stderr
