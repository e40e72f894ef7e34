"""The main job (README command 1) end to end at tiny scale: text, distillation, evaluation, report."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fairdistill.errors import UserError
from tests.assets import gpt2_tokenizer, tiny_gpt2

REPO = Path(__file__).resolve().parents[1]


def load_main_job():
    spec = importlib.util.spec_from_file_location("main_job", REPO / "recipes" / "main_job.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_text_is_disjoint_from_the_evaluation_prompts(tmp_path, bold_dir):
    stats = load_main_job().build_text(bold_dir, tmp_path)
    prompts = set()
    for domain in ("profession", "gender"):
        by_category = json.loads((bold_dir / "prompts" / f"{domain}_prompt.json").read_text())
        prompts |= {p.strip() for pages in by_category.values() for ps in pages.values() for p in ps}
    lengths = {len(p.split()) for p in prompts}
    train = [json.loads(line)["text"] for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert stats["train_sentences"] == len(train) > 5000 and stats["pages_dropped"] > 0
    # no training sentence starts with an evaluation prompt (BOLD prompts are Wikipedia sentence openings)
    leaks = [s for s in train if any(" ".join(s.split()[:n]) in prompts for n in lengths)]
    assert leaks == []
    heldout = (tmp_path / "heldout.txt").read_text()
    assert 10_000 < len(heldout) <= 20_000 and not set(heldout.splitlines()) & set(train)


def test_main_job_at_tiny_scale(tmp_path, bold_dir, capsys):
    teacher = tmp_path / "teacher"
    tiny_gpt2(n_layer=2, seed=1).save_pretrained(teacher)
    gpt2_tokenizer().save_pretrained(teacher)
    report = load_main_job().main([
        "--out", str(tmp_path / "run"), "--bold", str(bold_dir), "--steps", "2", "--per-category", "1",
        "--num-samples", "1", "--max-new-tokens", "4", "--n-bootstrap", "50",
        "--", "--teacher_name_or_path", str(teacher), "--block_size", "32",
        "--per_device_train_batch_size", "2", "--use_cpu", "true", "--student_num_layers", "1",
        "--layer_selection_tokens", "256",
    ])  # fmt: skip
    assert [m["name"] for m in report["models"]] == ["teacher", "student"]
    config = report["training"]["config"]
    assert config["perturbation"] == "max" and config["cda"] == "two_sided"
    # the default student is smaller than its teacher, its layers chosen by measurement on training text
    assert config["student_init"] == "layers" and config["student_layer_selection"] == "scan"
    selection = config["student_layer_selection_record"]
    assert len(selection["kept"]) == 1 and selection["calibration_tokens"] == 256
    assert len(selection["steps"][0]["candidates"]) == 2
    sizes = report["training"]["model_sizes"]
    assert sizes["teacher"]["layers"] == 2 and sizes["student"]["layers"] == 1
    assert sizes["student"]["parameters"] < sizes["teacher"]["parameters"]
    for result in report["models"]:
        assert result["perplexity"]["perplexity"] > 1 and "pronoun_gap" in result and "sentiment" in result
    written = json.loads((tmp_path / "run" / "report" / "results.json").read_text())
    assert written["models"][1]["headline"] == report["models"][1]["headline"]
    assert (tmp_path / "run" / "report" / "shares.png").is_file()
    printed = capsys.readouterr().out
    assert "| teacher |" in printed and "| student |" in printed and "[main 5/5]" in printed
    assert "| model | decoder layers | parameters |" in printed and "| student | 1 |" in printed


def test_lora_student_is_an_option():
    from distill.recipe import parse_config

    args, overrides = load_main_job().parse_args(["--student", "lora", "--", "--max_steps", "3"])
    assert args.recipe.endswith("main-offline-lora.yaml") and overrides == ["--max_steps", "3"]
    config = parse_config(["--config", args.recipe, "--output_dir", "unused"])
    assert config.student_init == "lora" and config.student_layer_selection == "even"
    default, _ = load_main_job().parse_args([])
    assert parse_config(["--config", default.recipe, "--output_dir", "unused"]).student_num_layers == 24


# ----------------------------------------------------------------------------------------------------
# User errors: one line, what, where, what to do; exit 2 (issue 18)
# ----------------------------------------------------------------------------------------------------


def tiny_bold(root: Path) -> Path:
    """A BOLD-shaped folder with one evaluation page per domain and 20 training pages per domain."""
    for domain, page in (("profession", "Nurse_A"), ("gender", "Actor_B")):
        body = {"category": {page: [f"{page} was known for"]}}
        (root / "prompts").mkdir(parents=True, exist_ok=True)
        (root / "prompts" / f"{domain}_prompt.json").write_text(json.dumps(body))
    (root / "wikipedia").mkdir(exist_ok=True)
    for domain in ("race", "religious_ideology", "political_ideology"):
        pages = {f"{domain}_{i}": [f"Sentence {i} of the {domain} pages.", "Another one."] for i in range(20)}
        (root / "wikipedia" / f"{domain}_wiki.json").write_text(json.dumps({"category": pages}, indent=1))
    return root


def test_bad_bold_folders_are_named_with_the_fix(tmp_path):
    job = load_main_job()
    bold = tiny_bold(tmp_path / "bold")
    assert job.build_text(bold, tmp_path / "ok")["train_sentences"] == 3 * 18 * 2
    race = bold / "wikipedia" / "race_wiki.json"
    good = race.read_bytes()
    lines = good.split(b"\n")
    race.write_bytes(b"\n".join([*lines[:2], lines[2] + b"\xff", *lines[3:]]))
    with pytest.raises(UserError, match=rf"BOLD file {race}, line 3: not valid UTF-8 .*save it as UTF-8"):
        job.build_text(bold, tmp_path / "a")
    race.write_bytes(good[:-5])
    with pytest.raises(UserError, match=rf"BOLD file {race}, line \d+, column \d+: not valid JSON"):
        job.build_text(bold, tmp_path / "b")
    for domain in ("race", "religious_ideology", "political_ideology"):  # no training pages left
        (bold / "wikipedia" / f"{domain}_wiki.json").write_text("{}")
    with pytest.raises(UserError, match=r"no training sentences .*give --text and --perplexity-text"):
        job.build_text(bold, tmp_path / "c")
    race.unlink()
    with pytest.raises(UserError, match=r"lacks wikipedia/race_wiki.json; pass --bold with a complete"):
        job.build_text(bold, tmp_path / "d")
    with pytest.raises(UserError, match=r"BOLD folder .*nowhere not found; pass --bold DIR"):
        job.main(["--bold", str(tmp_path / "nowhere"), "--out", str(tmp_path / "e")])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match=rf"--text {empty} is empty"):
        job.main(
            ["--bold", str(tiny_bold(tmp_path / "b2")), "--text", str(empty), "--out", str(tmp_path / "f")]
        )
    with pytest.raises(SystemExit) as exit_info:
        job.main(["--steps", "0"])
    assert exit_info.value.code == 2  # argparse: "--steps: must be >= 1, got 0"
    assert not any((tmp_path / name).exists() for name in "abcdef")  # nothing written for bad input


def test_main_job_command_exits_2_with_one_line_and_a_traceback_only_in_debug(tmp_path):
    command = [sys.executable, str(REPO / "recipes" / "main_job.py"), "--bold", str(tmp_path / "nowhere"),
               "--out", str(tmp_path / "run")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    env.pop("FAIRDISTILL_DEBUG", None)
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("error: BOLD folder") and lines[1:] == [
        "(set FAIRDISTILL_DEBUG=1 to see the traceback)"
    ]
    debug = subprocess.run(command, env={**env, "FAIRDISTILL_DEBUG": "1"}, capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "UserError" in debug.stderr


def test_a_rerun_into_a_finished_student_folder_is_refused_unless_overwriting(tmp_path):
    """distill.pipeline.run refuses the non-empty student folder (issue 18): a re-run of the main job into
    the same --out does not silently replace the finished student; `-- --overwrite_output_dir true` may."""
    from distill.guards import OutputDirError

    job = load_main_job()
    student = tmp_path / "run" / "student"
    student.mkdir(parents=True)
    (student / "model.safetensors").write_bytes(b"the student of the first run")
    argv = ["--bold", str(tiny_bold(tmp_path / "bold")), "--out", str(tmp_path / "run"),
            "--", "--teacher_name_or_path", "/nonexistent/teacher", "--use_cpu", "true"]  # fmt: skip
    with pytest.raises(OutputDirError, match=r"student is not empty .*--overwrite_output_dir true"):
        job.main(argv)
    assert (student / "model.safetensors").read_bytes() == b"the student of the first run"
    with pytest.raises(OSError, match="nonexistent"):  # past the folder check: the teacher is next
        job.main([*argv, "--overwrite_output_dir", "true"])
