"""One model, measured: the compact per-run record a study keeps (and commits) for every arm and seed.

The record holds counts, not summaries, so that the statistics over seeds can be recomputed from the
repository alone (``--report-only``): per elicitation prompt the male / female / all first-pronoun counts,
per BOLD profession prompt the unigram-polarity counts (prompt ids only: BOLD's text is CC BY-SA and stays
out of the repository), the likelihood benchmarks' shares, the pronoun gaps and two perplexities.
Everything is measured by :func:`eval.suite.run_evaluation`, the same code as ``fairdistill eval``.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from eval.generation import GenerationSettings, model_max_positions
from eval.perplexity import strided_perplexity
from eval.suite import EvalSettings, run_evaluation

from .spec import EvalSpec


def eval_settings(spec: EvalSpec, bold: str, in_domain_text: str, seed: int) -> EvalSettings:
    """The suite's settings for a study model; ``seed`` seeds the sampling (and BOLD's prompt choice is
    fixed: seed 0, so every model sees the same prompts)."""
    return EvalSettings(
        prompts=bold,
        per_category=spec.bold_per_category,
        sentiment=False,
        perplexity_texts=in_domain_text,
        perplexity_max_length=spec.perplexity_window,
        perplexity_stride=spec.perplexity_window // 2,
        generation=GenerationSettings(
            max_new_tokens=spec.bold_max_new_tokens,
            num_samples=spec.bold_samples,
            batch_size=spec.batch_size,
            seed=seed,
        ),  # fmt: skip
        n_bootstrap=0,
        seed=0,
        elicitation_split=spec.elicitation_split,
        elicitation_samples=spec.elicitation_samples,
        elicitation_max_new_tokens=spec.elicitation_max_new_tokens,
        crows_pairs="auto" if spec.crows_pairs else None,
        winobias="auto",
        likelihood_max_pairs=spec.likelihood_max_pairs,
        keep_generations=True,
    )


def _counts(generations: list[dict[str, Any]], task: str) -> dict[str, dict[str, Any]]:
    """prompt id -> {"category", "male", "female", "n"} for one task's kept generations."""
    out: dict[str, dict[str, Any]] = {}
    for row in generations:
        if row["task"] != task:
            continue
        entry = out.setdefault(row["prompt_id"], {"category": row["category"], "labels": Counter()})
        entry["labels"][row["label"]] += 1
    return {
        pid: {"category": e["category"], "male": e["labels"]["male"], "female": e["labels"]["female"],
              "n": sum(e["labels"].values())}
        for pid, e in out.items()
    }  # fmt: skip


def measure(
    model, tokenizer, spec: EvalSpec, *, bold: str, texts: dict[str, str], seed: int
) -> dict[str, Any]:
    """The per-run record of one model (see the module docstring); ``texts`` = {"in_domain", "other_domain"}
    held-out text, already cut to ``spec.perplexity_chars``."""
    model = model.float().eval()
    started = time.perf_counter()
    window = min(spec.perplexity_window, model_max_positions(model) or spec.perplexity_window)
    settings = eval_settings(spec, bold, texts["in_domain"], seed)
    settings.perplexity_max_length, settings.perplexity_stride = window, window // 2
    result = run_evaluation(model, tokenizer, settings, name="model", progress=False)
    other = strided_perplexity(model, tokenizer, texts["other_domain"], max_length=window, stride=window // 2)
    stereotype = {o: e["stereotype"] for o, e in result.elicitation["occupations"].items()}
    elicitation = _counts(result.generations, "elicitation")
    for entry in elicitation.values():
        entry["stereotype"] = stereotype[entry["category"]]
    first_template = min(int(pid.rsplit("/", 1)[1]) for pid in elicitation)
    samples = [  # one continuation per occupation, of our own template (no third-party text)
        {"prompt": g["prompt"], "continuation": g["continuation"], "label": g["label"]}
        for g in result.generations
        if g["task"] == "elicitation" and g["sample"] == 0 and g["prompt_id"].endswith(f"/{first_template}")
    ]
    keep = ("nll", "tokens", "perplexity")
    return {
        "elicitation": elicitation,
        "bold": _counts(result.generations, "bold_profession"),
        "winobias": {k: v for k, v in (result.winobias or {}).items() if k != "source"},
        "crows_pairs": {
            k: v for k, v in (result.crows_pairs or {}).items() if k not in ("source", "per_bias_type")
        },
        "pronoun_gap": {k: result.pronoun_gap[k] for k in ("mean_gap", "mean_abs_gap", "male_share", "n")},
        "perplexity": {
            "in_domain": {k: result.perplexity[k] for k in keep},
            "other_domain": {k: other[k] for k in keep},
        },
        "samples": samples,
        "eval_seconds": time.perf_counter() - started,
        "timing": result.timing,
    }
