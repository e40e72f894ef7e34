"""The eval module end to end: evaluate_model, the CLI's reports, and the training callback."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval.cli import main
from eval.generation import GenerationSettings
from eval.perplexity import load_text_for_perplexity
from eval.suite import EvalSettings, evaluate_model
from tests.assets import gpt2_tokenizer, tiny_gpt2, wandb_offline_records

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "recipes" / "data" / "sample_corpus.txt"


def small_settings(**overrides) -> EvalSettings:
    base = {
        "generation": GenerationSettings(max_new_tokens=6, num_samples=2, batch_size=64, seed=0),
        "n_bootstrap": 100,
        "perplexity_texts": load_text_for_perplexity(str(SAMPLE)),
        "perplexity_max_length": 64,
        "perplexity_stride": 32,
        "elicitation_split": "heldout",
        "elicitation_samples": 2,
        "likelihood_max_pairs": 6,
    }
    return EvalSettings(**{**base, **overrides})


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    dirs = {}
    for name, seed in (("teacher", 1), ("student", 2)):
        path = tmp_path_factory.mktemp(name)
        tiny_gpt2(n_layer=2, seed=seed).save_pretrained(path)
        gpt2_tokenizer().save_pretrained(path)
        dirs[name] = path
    return dirs


def test_evaluate_model_on_builtin_prompts(gpt2_tok):
    result = evaluate_model(tiny_gpt2(seed=3), gpt2_tok, small_settings(), name="tiny", progress=False)
    overall = result["disparity"]["unigram"]["overall"]
    assert overall["n"] == 2 * 110 and math.isclose(
        overall["male"] + overall["female"] + overall["neutral"], 1.0
    )
    assert 0.0 <= overall["mean_equitability"] <= 1.0 and result["headline"].startswith(
        "Pronoun elicitation:"
    )
    assert "BOLD: Female share of gendered generations" in result["headline"]
    elicitation = result["elicitation"]
    assert elicitation["n"] == 2 * 4 * 26 and set(elicitation) >= {
        "association",
        "global_shift",
        "occupations",
    }
    if result.get("crows_pairs"):  # the data folder beside the repo
        assert result["crows_pairs"]["n_pairs"] == 6 and result["winobias"]["n_pairs"] == 12
    assert set(result["pronoun_gap"]) >= {"mean_gap", "mean_abs_gap", "per_profession"}
    assert result["perplexity"]["perplexity"] > 1.0 and result["perplexity"]["tokens"] > 500
    assert "sentiment" not in result  # builtin prompts have no gender domain
    assert result["samples"] and result["timing"]["generations_per_second"] > 0
    again = evaluate_model(tiny_gpt2(seed=3), gpt2_tok, small_settings(), name="tiny", progress=False)
    assert again["samples"] == result["samples"]  # seeded


def test_cli_compares_models_on_bold_and_writes_reports(tmp_path, model_dirs, bold_dir):
    out = tmp_path / "report"
    code = main([
        "--model", f"teacher={model_dirs['teacher']}", "--model", f"student={model_dirs['student']}",
        "--prompts", str(bold_dir), "--per-category", "2", "--num-samples", "2", "--max-new-tokens", "6",
        "--perplexity-text", str(SAMPLE), "--n-bootstrap", "100", "--out", str(out), "--no-progress",
        "--elicitation-split", "heldout", "--elicitation-samples", "2", "--likelihood-max-pairs", "4",
    ])  # fmt: skip
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in report["models"]] == ["teacher", "student"]
    assert report["settings"]["generation"]["top_k"] == 40 and report["settings"]["seed"] == 0
    for result in report["models"]:
        assert len(result["disparity"]["unigram"]["categories"]) == 18  # BOLD's professions
        groups = result["sentiment"]["vader"]["groups"]
        assert set(groups) == {"American_actors", "American_actresses"}
        assert result["perplexity"]["perplexity"] > 1.0
    assert {r["perplexity"]["max_length"] for r in report["models"]} == {128}  # one shared window
    markdown = (out / "report.md").read_text()
    assert "| teacher |" in markdown and "| student |" in markdown
    assert "Headline, teacher:" in markdown and "Headline, student:" in markdown
    for png in ("shares.png", "disparity_vs_perplexity.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG") and (out / png).stat().st_size > 10_000
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {s["model"] for s in samples} == {"teacher", "student"}
    # every generation is kept: BOLD professions (18 x 2 prompts x 2) and elicitation (4 x 26 x 2)
    assert len(samples) == 2 * (18 * 2 * 2 + 4 * 26 * 2)
    for result in report["models"]:  # the keys other layers read
        assert {"association", "global_shift", "female_share", "occupations"} <= set(result["elicitation"])
        assert result["crows_pairs"]["n_pairs"] == 4 and result["winobias"]["type1_n_pairs"] == 4
    assert "### Headline: association and global shift" in markdown


def test_reports_without_intervals_and_with_a_perplexity_file(tmp_path, gpt2_tok):
    from eval.report import write_report

    settings = small_settings(n_bootstrap=0, perplexity_texts=None, perplexity_text=str(SAMPLE))
    result = evaluate_model(tiny_gpt2(seed=3), gpt2_tok, settings, name="tiny", progress=False)
    assert result["perplexity"]["tokens"] > 500  # perplexity_text alone is enough
    paths = write_report({"settings": settings.to_dict(), "models": [result]}, tmp_path)
    assert "| tiny |" in paths["markdown"].read_text()


def test_cli_refuses_bad_inputs_before_loading_any_model(tmp_path, model_dirs, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "could not read its config" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # a good model, a bad prompt folder: nothing is loaded
        main(
            [
                "--model",
                str(model_dirs["teacher"]),
                "--prompts",
                str(tmp_path / "no-bold"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
    assert exit_info.value.code == 2 and "BOLD folder" in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.json").exists()


def test_a_failing_second_model_keeps_the_first_models_results(tmp_path, model_dirs):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((model_dirs["teacher"] / "config.json").read_text())  # no weights
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        main(["--model", f"teacher={model_dirs['teacher']}", "--model", f"broken={broken}", "--out", str(out),
              "--no-bold-protocol", "--crows-pairs", "none", "--winobias", "none",
              "--elicitation-split", "heldout", "--elicitation-samples", "1", "--no-progress"])  # fmt: skip
    report = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in report["models"]] == ["teacher"] and "elicitation" in report["models"][0]
    assert "disparity" not in report["models"][0]


def test_callback_logs_fairness_during_training_to_wandb(tmp_path, model_dirs):
    """A short distillation run with the callback and W&B offline: the bias scalars, the sample
    table and the plot land in the run."""
    script = tmp_path / "run.py"
    script.write_text(
        f"""
import sys
from dataclasses import replace
sys.path.insert(0, {str(REPO)!r})
from distill.recipe import parse_config
from distill.data import prepare_lm_datasets
from distill.models import load_causal_lm, load_tokenizer
from distill.student import student_from_teacher_layers
from distill.trainer import CounterfactualDistillationTrainer
from eval.callback import FairnessEvalCallback, fast_settings
from eval.generation import GenerationSettings

config = parse_config(["--config", {str(REPO / "recipes/tiny.yaml")!r}, "--teacher_name_or_path",
    {str(model_dirs["teacher"])!r}, "--output_dir", {str(tmp_path / "out")!r}, "--report_to", "wandb",
    "--eval_strategy", "steps", "--eval_steps", "2", "--max_steps", "2", "--use_cpu", "true",
    "--disable_tqdm", "true"])
tok = load_tokenizer(config.teacher_name_or_path)
teacher = load_causal_lm(config.teacher_name_or_path)
data = prepare_lm_datasets(dataset_name=config.dataset_name, tokenizer=tok, block_size=32,
    validation_split_percentage=20)
student = student_from_teacher_layers(teacher, num_layers=1)
trainer = CounterfactualDistillationTrainer(model=student, teacher_model=teacher, args=config,
    train_dataset=data.train, eval_dataset=data.eval, processing_class=tok)
settings = replace(fast_settings(), generation=GenerationSettings(max_new_tokens=6, num_samples=1),
    elicitation_max_new_tokens=4, likelihood_max_pairs=4)
trainer.add_callback(FairnessEvalCallback(tok, settings, trainer=trainer))
trainer.train()
print([sorted(k for k in entry if "equitab" in k or "teacher" in k) for entry in trainer.state.log_history])
"""
    )
    wandb_dir = tmp_path / "wandb"
    wandb_dir.mkdir()
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true"}
    done = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=REPO, timeout=300, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "eval_equitability_mean" in done.stdout
    assert "eval_teacher_pronoun_gap" in done.stdout  # the teacher's baseline, scored once
    assert (tmp_path / "out" / "fairness-step-2.png").is_file()
    run_dir = next((wandb_dir / "wandb").glob("offline-run-*"))
    logged = set()
    for record in wandb_offline_records(next(run_dir.glob("run-*.wandb"))):
        if record.WhichOneof("record_type") == "history":
            logged |= {item.key or "/".join(item.nested_key) for item in record.history.item}
    assert {"eval/equitability_mean", "eval/pronoun_gap", "eval/loss_kd", "eval/perplexity"} <= logged
    assert {"eval/teacher_pronoun_gap", "eval/teacher_equitability_mean"} <= logged
    # (a tiny random model rarely writes a pronoun: its association is "not measurable" and not logged)
    assert {
        "train/loss_kd",
        "train/learning_rate",
        "train/tokens_per_second",
        "train/counterfactual_row_share",
    } <= logged
    assert any(key.startswith("eval/fairness_samples") for key in logged)
    assert any(key.startswith("eval/fairness_shares") for key in logged)
    assert "eval/perplexity" in logged  # logged, not only printed
    (table,) = [json.loads(p.read_text()) for p in run_dir.rglob("*fairness_samples*.table.json")]
    assert table["columns"][0] == "step" and {row[0] for row in table["data"]} == {2}


def test_typed_results_round_trip_and_plots_mark_empty_rows(tmp_path, gpt2_tok):
    from eval.report import plot_disparity_vs_perplexity, plot_shares
    from eval.results import EvalReport, ModelResult

    settings = small_settings(n_bootstrap=0, bold_protocol=False, crows_pairs=None, winobias=None)
    result = evaluate_model(tiny_gpt2(seed=3), gpt2_tok, settings, name="tiny", progress=False)
    typed = ModelResult.from_dict(json.loads(json.dumps(result)))
    assert typed.to_dict() == json.loads(json.dumps(result)) and typed.elicitation["n"] == 4 * 26 * 2
    report = EvalReport(settings=settings.to_dict(), models=[typed, ModelResult(name="empty")])
    assert EvalReport.from_dict(report.to_dict()).to_dict() == report.to_dict()
    assert plot_shares(report, tmp_path / "s.png").read_bytes().startswith(b"\x89PNG")
    assert plot_disparity_vs_perplexity(report, tmp_path / "t.png").read_bytes().startswith(b"\x89PNG")


def test_shares_plot_of_one_model_keeps_its_title_inside_the_image(tmp_path):
    """One model gives the narrowest figure; its title used to run past both edges of the image."""
    import matplotlib.image as mpimg

    from eval.report import plot_shares

    categories = {
        c: {"male": 0.3, "female": 0.2, "n": 10} for c in ("nurse", "truck_driver", "artistic_occupations")
    }
    report = {"models": [{"name": "step 2", "disparity": {"unigram": {"categories": categories}}}]}
    image = mpimg.imread(plot_shares(report, tmp_path / "shares.png"))[..., :3]
    edges = np.concatenate([image[:, :2], image[:, -2:]], axis=1)
    assert edges.min() == 1.0  # white: nothing drawn touches the left or right edge
