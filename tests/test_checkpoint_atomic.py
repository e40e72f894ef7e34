"""Issue 18: a checkpoint is written under ``tmp-checkpoints/`` and renamed into place once complete, so a
run killed while saving leaves no half-written ``checkpoint-N``, and ``--resume_from_checkpoint latest``
resumes from the last complete one without a word about broken ones. The kill is real: a subprocess
exits with ``os._exit`` (no cleanup, as under SIGKILL) in the middle of saving checkpoint-4, after the
weights and optimizer are written and before the RNG states and trainer_state.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.guards import STAGING_DIR, resolve_resume
from distill.train import main
from tests.assets import gpt2_tokenizer, tiny_gpt2

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
KILLED_MID_SAVE = """
import os, sys
from distill.trainer import CounterfactualDistillationTrainer
from distill.train import main

save_rng_state = CounterfactualDistillationTrainer._save_rng_state
def dies_at_step_4(self, output_dir):
    if self.state.global_step == 4:
        os._exit(137)  # no cleanup, no finally: as a SIGKILL would
    save_rng_state(self, output_dir)
CounterfactualDistillationTrainer._save_rng_state = dies_at_step_4
main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher")
    tiny_gpt2(n_layer=2, n_embd=32, seed=1).save_pretrained(path)
    gpt2_tokenizer().save_pretrained(path)
    return path


def recipe(teacher_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(REPO / "recipes" / "tiny.yaml"), "--teacher_name_or_path", str(teacher_dir),
            "--output_dir", str(out), "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
            "--use_cpu", "true", "--disable_tqdm", "true", "--preprocessing_num_workers", "1",
            *extra]  # fmt: skip


def losses(out: Path) -> dict[int, float]:
    history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


def test_a_run_killed_mid_save_leaves_only_complete_checkpoints(tmp_path, teacher_dir, capsys):
    # the reference: the same run, not killed; save_total_limit 1 still rotates the run's checkpoints
    whole = tmp_path / "whole"
    main(recipe(teacher_dir, whole, "--save_total_limit", "1"))
    assert sorted(p.name for p in whole.glob("checkpoint-*")) == ["checkpoint-4"]
    assert not (whole / STAGING_DIR).exists()

    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", KILLED_MID_SAVE, *recipe(teacher_dir, out)],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 137, done.stderr[-2000:]
    # checkpoint-2 is whole, checkpoint-4 was never put in place; its partial files wait in staging
    assert (out / "checkpoint-2" / "trainer_state.json").is_file() and not (out / "checkpoint-4").exists()
    partial = out / STAGING_DIR / "checkpoint-4"
    assert (partial / "model.safetensors").is_file() and not (partial / "trainer_state.json").exists()
    assert resolve_resume(out, "latest") == (str(out / "checkpoint-2"), [])  # nothing to warn about

    capsys.readouterr()
    main(recipe(teacher_dir, out, "--resume_from_checkpoint", "latest"))
    assert "incomplete" not in capsys.readouterr().err
    assert (out / "checkpoint-4" / "trainer_state.json").is_file() and not (out / STAGING_DIR).exists()
    resumed, reference = losses(out), losses(whole)
    assert sorted(resumed) == [1, 2, 3, 4]
    assert [resumed[s] for s in (3, 4)] == pytest.approx([reference[s] for s in (3, 4)], rel=1e-5)
