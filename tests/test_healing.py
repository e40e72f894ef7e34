"""bench/healing.py runs end to end at a tiny scale (the GPU run's command must keep working)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.assets import gpt2_tokenizer, tiny_gpt2

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_healing_tiny(tmp_path):
    teacher = tmp_path / "teacher"
    tiny_gpt2(n_layer=3, seed=1).save_pretrained(teacher)
    gpt2_tokenizer().save_pretrained(teacher)
    lines = (REPO_ROOT / "recipes" / "data" / "sample_corpus.txt").read_text().splitlines()
    (tmp_path / "train.txt").write_text("\n".join(lines[: len(lines) // 2]))
    (tmp_path / "heldout.txt").write_text("\n".join(lines[len(lines) // 2 :]))
    out = tmp_path / "heal"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "bench" / "healing.py"),
            "--teacher",
            str(teacher),
            "--train-text",
            "train.txt",
            "--heldout-text",
            "heldout.txt",
            "--layers",
            "2,1",
            "--selection",
            "even,scan,angular",
            "--steps",
            "0,2,3",
            "--batch-size",
            "2",
            "--seq-len",
            "16",
            "--eval-seq-len",
            "32",
            "--heldout-tokens",
            "256",
            "--calibration-tokens",
            "64",
            "--lr",
            "1e-3",
            "--warmup",
            "1",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],  # fmt: skip
        cwd=tmp_path,  # not the repository root: the script must find its own imports
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "healing.json").read_text())
    assert [(r["layers"], r["selection"]) for r in result["runs"]] == [
        (n, s) for n in (2, 1) for s in ("even", "scan", "angular")
    ]
    for run in result["runs"]:
        assert [p["step"] for p in run["curve"]] == [0, 2, 3] and len(run["kept"]) == run["layers"]
        assert all(p["perplexity"] > 1 for p in run["curve"]) and run["train_tokens_per_second"] > 0
    even_1 = next(r for r in result["runs"] if r["selection"] == "even" and r["layers"] == 1)
    assert even_1["kept"] == [0]
    assert "| layers | selection |" in proc.stdout and (out / "healing.png").is_file()
    assert all(run["complete"] for run in result["runs"])

    # A stopped run keeps its early points; --combine merges two processes' files into one table.
    partial = {
        **result,
        "runs": [{**result["runs"][0], "curve": result["runs"][0]["curve"][:2], "complete": False}],
    }
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    combined_dir = tmp_path / "combined"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "healing.py"), "--combine", str(out / "healing.json"),
         str(tmp_path / "partial.json"), "--out", str(combined_dir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    combined = json.loads((combined_dir / "healing.json").read_text())
    assert combined["runs"] == result["runs"] + partial["runs"] and len(combined["parts"]) == 2
    assert "| — |" in proc.stdout.splitlines()[-1]  # the stopped run's missing last point
    (tmp_path / "other.json").write_text(json.dumps({**result, "teacher_perplexity": 1.0}))
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "healing.py"), "--combine", str(out / "healing.json"),
         str(tmp_path / "other.json"), "--out", str(tmp_path / "refused")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0 and "teacher_perplexity" in proc.stderr
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "healing.py"), "--combine", str(tmp_path / "no.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "no.json does not exist" in proc.stderr
    for module in ("datasets", "wandb", "gguf"):  # runs on a GPU machine that lacks them
        assert f"import {module}" not in (REPO_ROOT / "bench" / "healing.py").read_text()
