"""The counterfactual demo (``python -m fairdistill.demo``, moved out of ``fairdistill-cda``): CDA of the
BOLD sentences or the bundled sample corpus, with text- and token-level statistics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fairdistill.demo import SAMPLE_CORPUS, main

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_demo_on_bold(tmp_path: Path, bold_dir: Path) -> None:
    out_dir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "fairdistill.demo", "--bold-dir", str(bold_dir), "--limit", "200",
         "--out-dir", str(out_dir)],
        capture_output=True, env=ENV, cwd=REPO_ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    stdout = result.stdout.decode()
    assert "[demo 5/5]" in stdout and "falling back" not in stdout

    summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    assert summary["source"] == "bold"
    assert summary["rows_in"] == 200
    assert summary["rows_out"] == 200 + summary["rows_swapped"]
    assert 0.05 < summary["share_rows_gendered"] < 0.9
    assert summary["swap_mb_per_s"] > 0 and summary["cda_mb_per_s"] > 0
    assert len(summary["examples"]) == 5
    token = summary["token_level"]
    assert 100 < token["tokens_swapped"] < 1000 and token["vocab_size"] == 50257
    assert 0.05 < token["share_rows_changed"] <= summary["share_rows_gendered"] + 0.05
    assert token["share_equal_to_tokenized_text_swap"] > 0.8
    assert len(token["examples"]) == 3
    assert len(read_jsonl(out_dir / "cda_two_sided.jsonl")) == summary["rows_out"]


def test_demo_falls_back_to_the_sample_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "demo"
    assert main(["--bold-dir", str(tmp_path / "no-bold"), "--out-dir", str(out_dir)]) == 0
    assert "falling back to the bundled sample corpus" in capsys.readouterr().out
    summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    lines = [line for line in SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert summary["source"] == "sample_corpus"
    assert summary["rows_in"] == len(lines) >= 30
    assert summary["rows_out"] == len(lines) + summary["rows_swapped"]
    assert 0.3 < summary["share_rows_gendered"] < 1.0  # the sample mixes gendered and neutral text


def test_bad_limit_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--limit", "0", "--out-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "fairdistill demo: error: --limit must be >= 1, got 0"
