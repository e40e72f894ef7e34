"""Issue 18: the output folder rules hold on every path into a run, not only distill.train's command line.
``distill.pipeline.run`` (what the main job and the study call) refuses a non-empty output folder unless
the run resumes or overwrites, and a folder that cannot be written fails in one line (exit 2 from the
command line) before any model loads. We run as root, so chmod cannot make a folder read-only: the
unwritable folders here are a path under a regular file and a folder of /proc."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.guards import OutputDirError
from distill.pipeline import run
from distill.recipe import parse_config

REPO = Path(__file__).resolve().parents[1]
# a teacher that cannot load: reaching it would fail differently, so these refusals come first
TINY = ["--config", str(REPO / "recipes" / "tiny.yaml"), "--teacher_name_or_path", "/nonexistent/teacher",
        "--use_cpu", "true"]  # fmt: skip


def test_run_refuses_a_non_empty_output_dir_before_any_model_loads(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"the finished model of another run")
    with pytest.raises(OutputDirError, match=r"is not empty .*--resume_from_checkpoint latest.*--overwrite"):
        run(parse_config([*TINY, "--output_dir", str(out)]))
    assert (out / "model.safetensors").read_bytes() == b"the finished model of another run"
    # overwriting gets past the folder check (and then fails at the teacher that does not exist)
    with pytest.raises(OSError, match="nonexistent"):
        run(parse_config([*TINY, "--output_dir", str(out), "--overwrite_output_dir", "true"]))


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_an_output_dir_that_cannot_be_written_is_refused_first(tmp_path, where):
    if where == "under_a_file":
        blocker = tmp_path / "some_file"
        blocker.write_text("not a folder")
        out, reason = blocker / "out", "some_file is a file, not a folder"
    else:
        out, reason = Path("/proc/fairdistill-out"), "cannot be written"
    with pytest.raises(OutputDirError, match=reason):
        run(parse_config([*TINY, "--output_dir", str(out)]))
    assert not list(tmp_path.glob("**/.fairdistill-write-probe-*"))  # the probe is removed


def test_the_command_line_says_so_in_one_line_and_exits_2(tmp_path):
    (tmp_path / "some_file").write_text("not a folder")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "FAIRDISTILL_DEBUG": ""}
    done = subprocess.run(
        [sys.executable, "-m", "distill.train", *TINY, "--output_dir", str(tmp_path / "some_file" / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert lines[-2].startswith("error: output_dir ") and "is a file, not a folder" in lines[-2]
    assert "Traceback" not in done.stderr
