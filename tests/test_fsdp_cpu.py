"""Issue 17 §3: a teacher sharded with FSDP2 across two CPU processes (gloo) gives the training losses of
the unsharded teacher, step for step, through ``CounterfactualDistillationTrainer`` and its own
``_prepare_fsdp_teacher``. accelerate 1.15 does not shard on CPU (``use_cpu`` makes its state MULTI_CPU
and drops the FSDP plugin silently), so tests/fsdp_teacher_worker.py puts the plugin on the state for
the teacher; torch's ``fully_shard`` itself runs on a CPU mesh."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_fsdp2_sharded_teacher_matches_unsharded_on_two_cpu_processes(tmp_path, gpt2_tok):
    out = tmp_path / "losses.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO_ROOT / "tests" / "fsdp_teacher_worker.py"), "--out", str(out), "--steps", "3",
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    result = json.loads(out.read_text())
    plain, sharded = result["plain"], result["sharded"]
    assert plain["world_size"] == sharded["world_size"] == 2
    # the teacher really is sharded: FSDP2 module, DTensor parameters, a rank holds less than all of it
    assert sharded["teacher_type"].startswith("FSDP") and plain["teacher_type"] == "GPT2LMHeadModel"
    assert (
        sharded["teacher_sharded_params"] == sharded["teacher_params"]
        and plain["teacher_sharded_params"] == 0
    )
    assert sharded["teacher_local_numel"] < sharded["teacher_numel"] == plain["teacher_local_numel"]
    # the sharded teacher is the one that ran: a joint pass per step (rows with and without a swap)
    assert sharded["teacher_forwards"] == plain["teacher_forwards"] == 3
    assert len(plain["losses"]) == 3 and len(plain["loss_kd"]) == 3
    assert sharded["losses"] == pytest.approx(plain["losses"], rel=1e-5, abs=1e-6)
    assert sharded["loss_kd"] == pytest.approx(plain["loss_kd"], rel=1e-4, abs=1e-7)
