"""Model cards state only what was measured (issue 16): wording from better, worse, tied and missing
results; the training summary, versions and W&B run of a real tiny run; no local paths."""

from __future__ import annotations

import json
from pathlib import Path

from distill.train import main as train_main
from distill.training_card import parse_model_card
from fairdistill.card import BETTER, NO_DIFFERENCE, NOT_COMPARED, WORSE, Measure, compare, model_card
from tests.assets import gpt2_tokenizer, tiny_gpt2
from tests.test_publish import CONFIG, TOKEN, _results, fake_hub  # noqa: F401 - fake_hub is a fixture

REPO = Path(__file__).resolve().parents[1]
CLAIM = "less gender-skewed"


def _with_equitability(student: tuple[float, float, float], teacher: tuple[float, float, float]) -> dict:
    """The test results with the students' and teacher's mean equitability (value, CI low, CI high)."""
    results = _results()
    for entry, (value, low, high) in zip(results["models"], (teacher, student), strict=True):
        overall = entry["disparity"]["unigram"]["overall"]
        overall["mean_equitability"] = value
        overall["ci"]["mean_equitability"] = [low, high]
    return results


def _body(results, **kwargs) -> str:
    return parse_model_card(model_card(CONFIG, results, base_model="gpt2", **kwargs))[1]


def _verdict_line(body: str) -> str:
    return next(line for line in body.splitlines() if line.startswith("- mean equitability"))


def test_better_when_the_intervals_do_not_overlap():
    body = _body(_with_equitability(student=(0.53, 0.42, 0.60), teacher=(0.13, 0.02, 0.20)))
    line = _verdict_line(body)
    assert "**better**" in line and "this model 0.53 [0.42, 0.60], teacher 0.13 [0.02, 0.20]" in line
    assert CLAIM in body and "measurably more gender-balanced" in body


def test_worse_says_so_and_makes_no_fairness_claim():
    # the case: the student measured worse than the teacher
    body = _body(_with_equitability(student=(0.13, 0.02, 0.20), teacher=(0.53, 0.42, 0.60)))
    assert "**worse**" in _verdict_line(body)
    assert CLAIM not in body and "not a less biased replacement" in body


def test_overlapping_intervals_are_no_measurable_difference():
    body = _body(_with_equitability(student=(0.50, 0.30, 0.62), teacher=(0.45, 0.28, 0.60)))
    assert f"**{NO_DIFFERENCE}**" in _verdict_line(body)
    assert CLAIM not in body and "found no measurable difference in gender balance" in body
    # a higher point estimate alone is not evidence: nothing says better
    assert "**better**" not in body and "more gender-balanced" not in body


def test_missing_results_teacher_or_intervals_claim_nothing():
    not_evaluated = _body(None)
    assert "Not evaluated" in not_evaluated and "makes no claim" in not_evaluated
    assert CLAIM not in not_evaluated and "gender-balanced" not in not_evaluated

    results = _results()
    results["models"] = [m for m in results["models"] if m["name"] != "teacher"]
    alone = _body(results)
    assert "No comparison" in alone and "Compared with the teacher" not in alone
    assert CLAIM not in alone and "gender-balanced" not in alone

    results = _results()
    for entry in results["models"]:
        entry["disparity"]["unigram"]["overall"]["ci"] = None  # n_bootstrap 0: no intervals
    no_ci = _body(results)
    assert f"**{NOT_COMPARED}**" in _verdict_line(no_ci) and "no interval, so no verdict" in no_ci
    assert CLAIM not in no_ci and "does not compare their gender balance" in no_ci


def test_metrics_without_intervals_get_numbers_and_no_verdict():
    body = _body(_results())
    ppl = next(line for line in body.splitlines() if line.startswith("- perplexity"))
    assert f"**{NOT_COMPARED}**" in ppl and "this model 41.72, teacher 20.94" in ppl


def test_compare_rule():
    a, b = Measure(0.5, (0.4, 0.6)), Measure(0.2, (0.1, 0.3))
    assert compare(a, b, better="higher") == BETTER and compare(b, a, better="higher") == WORSE
    assert compare(a, b, better="lower") == WORSE
    touching = Measure(0.35, (0.3, 0.4))
    assert compare(touching, b, better="higher") == NO_DIFFERENCE  # shared endpoint: overlap
    assert compare(Measure(0.5), b, better="higher") == NOT_COMPARED
    assert compare(a, None, better="higher") == NOT_COMPARED
    # closer to 0: |x| over the interval; an interval spanning 0 reaches 0
    assert compare(Measure(-0.05, (-0.1, 0.02)), Measure(0.9, (0.7, 1.1)), better="closer to 0") == BETTER
    assert compare(Measure(-0.9, (-1.1, -0.7)), Measure(0.05, (-0.02, 0.1)), better="closer to 0") == WORSE


def test_local_paths_never_reach_the_card():
    results = _results(student_model="/home/alice/runs/student")
    results["command"] = "python -m eval --model teacher=gpt2 --model student=/home/alice/runs/student"
    local = dict(
        CONFIG, teacher_name_or_path="/home/alice/teacher", dataset_name="/data/web/corpus.txt",
        student_init="pretrained", student_name_or_path="/Users/bob/small-lm",
    )  # fmt: skip
    card = model_card(local, results, base_model=None)
    assert "/home/alice" not in card and "/data/web" not in card and "/Users/bob" not in card
    assert "student=<local: student>" in card and "`teacher` (a local checkpoint)" in card
    assert "the pretrained model `<local: small-lm>`" in card


def test_layer_selection_is_rendered_when_recorded():
    body = _body(None)
    assert "Layer selection" not in body
    selection = {"method": "importance", "kept": [0, 3, 5], "scores": [0.91234, 0.1, 0.5]}
    body = parse_model_card(
        model_card(dict(CONFIG, student_layer_selection=selection), None, base_model="gpt2")
    )[1]
    assert "| Layer selection | method: importance; kept: [0, 3, 5]; scores: [0.9123, 0.1, 0.5] |" in body


def test_wandb_link_from_the_run_record(tmp_path):
    (tmp_path / "trainer_state.json").write_text(
        json.dumps({"global_step": 3, "max_steps": 3, "epoch": 0.5, "num_input_tokens_seen": 0,
                    "log_history": [{"loss": 2.5, "loss_kd": 1.25, "step": 3}]})
    )  # fmt: skip
    url = "https://wandb.ai/me/fair/runs/abc123"
    record = {"versions": {"torch": "2.x"}, "num_processes": 2, "wandb": {"id": "abc123", "url": url}}
    (tmp_path / "training_run.json").write_text(json.dumps(record))
    body = parse_model_card(model_card(CONFIG, None, base_model="gpt2", model_dir=tmp_path))[1]
    assert f"| W&B run | [abc123]({url}) |" in body
    assert "| Steps | 3 optimizer steps, 0.5 epochs |" in body
    # 3 steps x 8 sequences x 8 accumulation x 2 processes x 1024 tokens, from CONFIG and the record
    assert "| Training tokens | 393,216 (steps × sequences per step × block size" in body
    assert "| Last logged training loss (step 3) | loss 2.5, loss_kd 1.25 |" in body
    assert "torch 2.x (recorded by the training run)" in body


def test_real_tiny_run_is_published_with_its_training_summary(tmp_path, fake_hub, monkeypatch):  # noqa: F811
    """distill.train --push_to_hub records the run and publishes it with the training-only card, which
    reports the run, claims nothing about bias, and passes the leak scan."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    teacher = tmp_path / "teacher"
    tiny_gpt2(n_layer=2, n_embd=32, seed=1).save_pretrained(teacher)
    gpt2_tokenizer().save_pretrained(teacher)
    run = tmp_path / "run"
    train_main(
        ["--config", str(REPO / "recipes/tiny.yaml"), "--teacher_name_or_path", str(teacher),
         "--output_dir", str(run), "--max_steps", "2", "--use_cpu", "true", "--disable_tqdm", "true",
         "--push_to_hub", "true", "--hub_model_id", "me/tiny"]
    )  # fmt: skip
    assert (run / "trainer_state.json").is_file() and (run / "training_run.json").is_file()
    out = run / "publish"  # publish's default folder
    (api,) = fake_hub.instances  # the leak scan let the folder through
    assert api.calls[0] == ("create_repo", {"repo_id": "me/tiny", "private": False, "exist_ok": True,
                                            "repo_type": "model"})  # fmt: skip
    meta, body = parse_model_card(api.uploaded["README.md"].decode())
    assert meta["tags"][0] == "fairdistill" and "base_model" not in meta  # a local teacher
    assert "| Steps | 2 optimizer steps" in body
    # 2 steps x 2 sequences x 1 accumulation x 1 process x 32 tokens
    assert "| Training tokens | 128 (steps × sequences per step × block size" in body
    assert "loss_kd" in body and "loss_clm" in body
    assert "recorded by the training run" in body and "torch " in body
    assert "Not evaluated" in body and CLAIM not in body and "gender-balanced" not in body
    assert str(tmp_path) not in (out / "README.md").read_text()


def test_association_is_the_headline_when_pronoun_elicitation_was_measured():
    """With the pronoun-elicitation measures in the results, the card's headline verdict is the association
    (0 = none) and the likelihood benchmarks are compared as distances from no preference (0.5)."""
    results = _results()
    blocks = {
        "teacher": ({"value": 0.30, "ci": [0.20, 0.40]}, 0.60, [0.55, 0.65]),
        "student": ({"value": 0.05, "ci": [-0.03, 0.12]}, 0.50, [0.47, 0.53]),
    }
    for entry, name in zip(results["models"], ("teacher", "student"), strict=True):
        association, share, ci = blocks[name]
        shift = {"value": 0.01, "ci": [-0.05, 0.07]}
        entry["elicitation"] = {"association": association, "global_shift": shift}
        entry["crows_pairs"] = {"stereotype_share": share, "ci": ci, "n_pairs": 262}
    body = _body(results)
    line = next(row for row in body.splitlines() if row.startswith("- association"))
    assert "**better**" in line and "this model 0.05 [-0.03, 0.12], teacher 0.30 [0.20, 0.40]" in line
    crows = next(row for row in body.splitlines() if row.startswith("- CrowS-Pairs"))
    assert "**better**" in crows  # |0.00| [0, 0.03] against |0.10| [0.05, 0.15]: no overlap
    shift = next(row for row in body.splitlines() if row.startswith("- global shift"))
    assert "**no measurable difference**" in shift
    assert "associated occupations with a gender measurably less than the teacher's" in body
    assert "more gender-balanced" not in body
