"""One public API (``import fairdistill``) and one command (``fairdistill``), issue 15/16."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import fairdistill
from fairdistill.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def test_every_public_name_resolves_to_its_defining_module():
    for name in fairdistill.__all__:
        value = getattr(fairdistill, name)
        assert getattr(value, "__name__", name) == name, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fairdistill.nope  # noqa: B018


def test_import_fairdistill_does_not_import_torch():
    code = "import sys, fairdistill; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "False"


def test_command_lists_its_subcommands_and_refuses_unknown_ones(capsys):
    assert main(["--help"]) == 0
    listed = capsys.readouterr().out
    assert all(f"  {name} " in listed for name in COMMANDS)
    assert main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err
    assert main([]) == 2


def test_subcommand_runs_the_owning_module():
    done = subprocess.run(
        [sys.executable, "-m", "fairdistill", "cda", "swap", "He thanked his aunt."],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "She thanked her uncle."


def test_distill_launcher_points_to_fairdistill_for_fairness_eval(tmp_path):
    """distill never imports eval: --fairness_eval needs the application layer's launcher (one line)."""
    from distill.pipeline import run
    from distill.recipe import parse_config

    config = parse_config(
        ["--config", str(REPO / "recipes" / "tiny.yaml"), "--output_dir", str(tmp_path / "run"),
         "--fairness_eval", "true"]
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"accelerate launch -m fairdistill\.train"):
        run(config)
    assert not (tmp_path / "run").exists()
