"""The model card of a fairdistill student: the run (from ``distill.training_card``) and its evaluation.

The card reads ``python -m eval``'s ``results.json``, so it lives above both ``distill`` and ``eval``.
:func:`card_builder` turns results into the callable :func:`distill.publish.publish` calls with the
folder's :class:`~distill.training_card.CardContext`; :func:`model_card` is the same card as a function of
plain values.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from distill.publish import PublishError
from distill.training_card import (
    LOCAL_FILE_SUFFIXES,
    CardBuilder,
    CardContext,
    card_parts,
    finite,
    render_card,
)

__all__ = ["BOLD_HUB_ID", "EvalResultsError", "card_builder", "guess_student_name", "model_card",
           "read_eval_results"]  # fmt: skip

BOLD_HUB_ID = "AlexaAI/bold"
PUBLISH_COMMAND = "python -m fairdistill.publish_cli"

BOLD_BIBTEX = """\
@inproceedings{dhamala2021bold,
    title = "{BOLD}: Dataset and Metrics for Measuring Biases in Open-Ended Language Generation",
    author = "Dhamala, Jwala and Sun, Tony and Kumar, Varun and Krishna, Satyapriya and
      Pruksachatkun, Yada and Chang, Kai-Wei and Gupta, Rahul",
    booktitle = "Proceedings of the 2021 ACM Conference on Fairness, Accountability, and Transparency",
    year = "2021",
    eprint = "2101.11718",
    archivePrefix = "arXiv",
}"""


class EvalResultsError(PublishError):
    """The evaluation results cannot be used for the card; the message says how to fix it."""


# ----------------------------------------------------------------------------------------------------
# Reading eval results
# ----------------------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str, missing: str = "n/a") -> str:
    number = finite(value)
    return missing if number is None else format(number, spec)


def _get(mapping: Any, *keys: str) -> Any:
    """``mapping[k1][k2]...`` or None when any level is missing: eval results may lack whole sections."""
    for key in keys:
        if not isinstance(mapping, dict) or key not in mapping:
            return None
        mapping = mapping[key]
    return mapping


def read_eval_results(eval_results: str | os.PathLike | dict | None) -> dict[str, Any] | None:
    """The parsed ``results.json`` (a path or an already parsed dict), or None."""
    if eval_results is None or isinstance(eval_results, dict):
        return eval_results
    path = Path(eval_results).expanduser()
    fix = "pass the results.json written by `python -m eval --out DIR`"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalResultsError(f"eval results {path} does not exist; {fix}") from None
    except (OSError, ValueError) as err:
        raise EvalResultsError(f"eval results {path} is not readable JSON ({err}); {fix}") from None
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise EvalResultsError(f"eval results {path} must hold a JSON object, got {kind}; {fix}")
    return data


def guess_student_name(results: dict[str, Any], model_dir: Path) -> str:
    """Which results entry is this student: named "student", evaluated from ``model_dir``, or the only
    non-teacher entry."""
    models = [m for m in results.get("models") or [] if isinstance(m, dict) and "name" in m]
    names = [m["name"] for m in models]
    if "student" in names:
        return "student"
    for entry in models:
        path = entry.get("model")
        if isinstance(path, str) and Path(path).expanduser().resolve() == model_dir.resolve():
            return entry["name"]
    others = [n for n in names if n != "teacher"]
    if len(others) == 1:
        return others[0]
    raise EvalResultsError(
        f"cannot tell which evaluated model is this student (models: {names}); pass --student-name NAME"
    )


def _select_entries(
    eval_results: dict[str, Any], student_name: str, teacher_name: str | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    models = eval_results.get("models")
    if not isinstance(models, list) or not all(isinstance(m, dict) and "name" in m for m in models):
        raise EvalResultsError(
            "eval results need a 'models' list of per-model results with a 'name'; pass the results.json "
            "written by `python -m eval --out DIR`"
        )
    by_name = {m["name"]: m for m in models}
    if student_name not in by_name:
        raise EvalResultsError(
            f"eval results have no model named {student_name!r} (they have {sorted(by_name)}); pass the "
            "student's name with --student-name"
        )
    teacher = by_name.get(teacher_name or "teacher")
    if teacher is not None and teacher["name"] == student_name:
        teacher = None
    return by_name[student_name], teacher


# ----------------------------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------------------------


def _bold_dataset(settings: dict[str, Any]) -> dict[str, str]:
    if settings.get("prompts", "builtin") == "builtin":
        return {"name": "fairdistill built-in profession prompts", "type": "fairdistill-profession-prompts"}
    return {"name": "BOLD (profession domain)", "type": BOLD_HUB_ID}


def _perplexity_dataset(settings: dict[str, Any]) -> dict[str, str]:
    source = settings.get("perplexity_text")
    if not isinstance(source, str) or not source:
        return {"name": "held-out text", "type": "text"}
    path = Path(source).expanduser()
    if path.exists() or source.lower().endswith(LOCAL_FILE_SUFFIXES) or source.startswith(("/", ".", "~")):
        return {"name": f"{path.name} (local text)", "type": path.name}  # never a local absolute path
    name, _, config = source.partition(":")
    dataset = {"name": f"{name} ({config})" if config else name, "type": name}
    if config:
        dataset["config"] = config
    return dataset


def _metric(type_: str, value: Any, name: str) -> dict[str, Any] | None:
    number = finite(value)
    return None if number is None else {"type": type_, "value": number, "name": name}


def _model_index(model_name: str, student: dict[str, Any], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The Hub's ``model-index``: one result per dataset the numbers come from, finite numbers only."""
    task = {"type": "text-generation", "name": "Text Generation"}
    overall = _get(student, "disparity", "unigram", "overall") or {}
    gap = student.get("pronoun_gap") or {}
    ppl = student.get("perplexity") or {}
    groups = [
        (
            _bold_dataset(settings),
            [
                _metric("mean_equitability", overall.get("mean_equitability"),
                        "Mean equitability ratio over professions (1 = parity)"),
                _metric("min_equitability", overall.get("min_equitability"),
                        "Min equitability ratio over professions"),
            ],
        ),
        (
            {"name": "fairdistill templated profession contexts", "type": "fairdistill-profession-contexts"},
            [
                _metric("pronoun_gap", gap.get("mean_gap"),
                        "Pronoun gap, mean log P(he) - log P(she) (0 = parity)"),
                _metric("pronoun_gap_abs", gap.get("mean_abs_gap"), "Pronoun gap, mean absolute"),
            ],
        ),
        (_perplexity_dataset(settings), [_metric("perplexity", ppl.get("perplexity"), "Perplexity")]),
    ]  # fmt: skip
    results = []
    for dataset, metrics in groups:
        kept = [m for m in metrics if m is not None]
        if kept:
            results.append({"task": dict(task), "dataset": dataset, "metrics": kept})
    return [{"name": model_name, "results": results}] if results else []


# ----------------------------------------------------------------------------------------------------
# Evaluation section
# ----------------------------------------------------------------------------------------------------


def _table_row(entry: dict[str, Any], label: str) -> str:
    overall = _get(entry, "disparity", "unigram", "overall") or {}
    ci = _get(overall, "ci", "mean_equitability")
    ci_text = ""
    if isinstance(ci, list) and len(ci) == 2:
        ci_text = f" [{_fmt(ci[0], '.2f')}, {_fmt(ci[1], '.2f')}]"
    worst = overall.get("worst_category")
    min_eq = _fmt(overall.get("min_equitability"), ".2f")
    shares = " / ".join(_fmt(overall.get(k), ".1%") for k in ("male", "female", "neutral"))
    gap = entry.get("pronoun_gap") or {}
    vader = _get(entry, "sentiment", "vader", "positive_gap")
    return (
        f"| {label} | {_fmt(overall.get('mean_equitability'), '.2f')}{ci_text} "
        f"| {min_eq}{f' ({worst})' if worst else ''} | {shares} "
        f"| {_fmt(gap.get('mean_gap'), '+.2f')} / {_fmt(gap.get('mean_abs_gap'), '.2f')} "
        f"| {_fmt(_get(entry, 'perplexity', 'perplexity'), '.2f')} | {_fmt(vader, '+.1%')} |"
    )


def _evaluation_section(
    eval_results: dict[str, Any] | None,
    student: dict[str, Any] | None,
    teacher: dict[str, Any] | None,
    teacher_ref: str,
) -> list[str]:
    lines = ["## Evaluation", ""]
    if student is None or eval_results is None:
        return lines + [
            "**Not evaluated.** No evaluation results were given when this card was written, so it reports "
            "no numbers. To measure gender disparity and perplexity against the teacher, run",
            "",
            "```bash",
            f"python -m eval --model teacher={teacher_ref} --model student=PATH_TO_THIS_MODEL \\",
            "    --prompts AlexaAI/bold --per-category 20 --perplexity-text wikitext:wikitext-103-raw-v1 "
            "--out runs/eval",
            "```",
            "",
            f"and republish with `{PUBLISH_COMMAND} ... --eval-results runs/eval/results.json`.",
            "",
        ]
    settings = eval_results.get("settings") or {}
    gen = settings.get("generation") or {}
    overall = _get(student, "disparity", "unigram", "overall") or {}
    lines += [
        "| model | mean equitability (95% CI; 1 = parity) | min equitability (worst profession) "
        "| male / female / neutral generations | pronoun gap mean / mean abs | perplexity "
        "| VADER positive gap, actors − actresses |",
        "|---|---|---|---|---|---|---|",
    ]
    if teacher is not None:
        label = "teacher" if teacher["name"] == "teacher" else f"teacher ({teacher['name']})"
        lines.append(_table_row(teacher, label))
    lines += [_table_row(student, f"**this model** ({student['name']})"), ""]
    n_prompts, n_generations = overall.get("n_prompts"), overall.get("n")
    if settings.get("prompts", "builtin") == "builtin":
        prompts = f"{n_prompts or 'the'} built-in fairdistill profession prompts"
    else:
        source = BOLD_HUB_ID if settings.get("prompts") == BOLD_HUB_ID else "a local copy of BOLD"
        per = settings.get("per_category")
        per = "all prompts" if per is None else f"{per} per profession"
        prompts = f"{n_prompts or 'the'} BOLD profession-domain prompts ({per}, from {source})"
    size = f"{n_generations} " if n_generations else ""
    lines += [
        f"- **Gender disparity**: {size}continuations of {prompts}, labelled male / female / neutral by "
        "BOLD's unigram gender polarity. Equitability per profession = min(f/m, m/f) of the female and "
        "male shares; the mean is over professions, with a "
        f"{settings.get('n_bootstrap', 'n/a')}-resample bootstrap 95% CI over prompts.",
        f"- **Sampling**: {gen.get('num_samples', 'n/a')} samples per prompt, "
        f"top-k {gen.get('top_k', 'n/a')}, top-p {gen.get('top_p', 'n/a')}, "
        f"temperature {gen.get('temperature', 'n/a')}, {gen.get('max_new_tokens', 'n/a')} new tokens, "
        f"seed {gen.get('seed', settings.get('seed', 'n/a'))}.",
        "- **Pronoun gap**: mean of log P(he, him, his) − log P(she, her) for the next token after templated "
        "profession contexts (> 0 leans male, 0 = parity).",
    ]
    ppl = student.get("perplexity")
    if isinstance(ppl, dict):
        dataset = _perplexity_dataset(settings)
        lines.append(
            f"- **Perplexity**: strided, token-weighted, on {dataset['name']}: "
            f"{ppl.get('tokens', 'n/a')} tokens, window {ppl.get('max_length', 'n/a')}, "
            f"stride {ppl.get('stride', 'n/a')}; lower is better."
        )
    else:
        lines.append("- **Perplexity**: not measured in this evaluation.")
    if _get(student, "sentiment", "vader") is not None:
        lines.append(
            "- **Sentiment gap**: share of VADER-positive continuations of BOLD's American_actors prompts "
            "minus that of American_actresses."
        )
    if student.get("headline"):
        lines += ["", f"Summary for this model: {student['headline']}"]
    return lines + [""]


# ----------------------------------------------------------------------------------------------------
# The card
# ----------------------------------------------------------------------------------------------------


def build_card(
    ctx: CardContext,
    eval_results: dict[str, Any] | None,
    *,
    student_name: str = "student",
    teacher_name: str | None = None,
) -> str:
    """The card for ``ctx``'s student with the numbers of ``eval_results`` (None: "Not evaluated")."""
    student = teacher = None
    if eval_results is not None:
        student, teacher = _select_entries(eval_results, student_name, teacher_name)
    parts = card_parts(ctx, license_hint=PUBLISH_COMMAND)
    meta = parts.meta
    if student is not None:
        index = _model_index(ctx.model_name, student, (eval_results or {}).get("settings") or {})
        if index:
            meta["model-index"] = index
    body = [*parts.title, *parts.details]
    body += _evaluation_section(eval_results, student, teacher, parts.teacher_ref)
    body += [
        "## Intended use",
        "",
        "Research on gender bias in language generation and on fairness-aware knowledge distillation, and a "
        "smaller, comparatively less gender-skewed drop-in for the teacher in English text generation "
        "experiments. It is not intended for decisions about people (hiring, lending, moderation, ...), and "
        "lower measured disparity is not a certificate of fairness.",
        "",
        "## Limitations and bias",
        "",
        *parts.limitations,
        "- **Coarse measures.** BOLD's unigram gender polarity counts gendered words in a continuation; it "
        "misses gender expressed any other way, and VADER sentiment is also a lexical measure. Pronoun "
        "gaps come from a handful of templates.",
        "- **Small evaluations have wide confidence intervals.** Read the bootstrap intervals above before "
        "comparing models; differences inside them are not evidence.",
        "- **Other biases are untouched.** Only gender was targeted. The model still reflects whatever "
        "race, religion, political and other biases the teacher and the training text carry, and it can "
        "generate stereotyped, offensive or false text.",
        "- **Utility.** Distilled students usually have higher perplexity than their teachers; see the "
        "table. The teacher's own limitations and license apply to this model too.",
        "",
        *parts.usage,
        "## Citation",
        "",
        "The method (Gupta et al., 2022) and the evaluation prompts (BOLD, Dhamala et al., 2021):",
        "",
        "```bibtex",
        "\n\n".join([*parts.citations, BOLD_BIBTEX]),
        "```",
        "",
    ]
    return render_card(meta, body)


def model_card(
    config: dict[str, Any],
    eval_results: dict[str, Any] | None,
    *,
    student_name: str = "student",
    base_model: str | None,
    model_name: str | None = None,
    teacher_name: str | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    adapters: bool = False,
    model_dir: str | os.PathLike | None = None,
) -> str:
    """A Hugging Face model card (YAML front matter + Markdown) for a fairdistill student.

    Args:
        config: the resolved run configuration (``fairdistill_config.json``); missing keys read "unknown".
        eval_results: a ``python -m eval`` ``results.json`` (parsed), or None: the card then says
            "Not evaluated" and publishes no metrics rather than inventing any.
        student_name: the student's ``name`` in ``eval_results["models"]``.
        base_model: the teacher's Hub id for the ``base_model`` metadata; None (a local teacher) leaves
            it out, since the Hub only understands repository ids there.
        model_name: the name in ``model-index`` and the title; default: the repo id's name.
        teacher_name: the teacher's ``name`` in the results; default ``"teacher"`` (left out if absent).
        repo_id: used in the loading snippet.
        license: the card's license. Default: the teacher's, when it is a teacher we know (GPT-2: mit,
            DistilGPT-2 and SmolLM2: apache-2.0), else ``"other"`` with a note -- a distilled model is a
            derivative of its teacher, so only the teacher's license can decide this.
        adapters: the folder holds LoRA adapters, not a full model (``library_name: peft``).
        model_dir: the training output folder, for what the run recorded beside its config.
    """
    ctx = CardContext(
        config=config,
        model_name=model_name or (repo_id.split("/")[-1] if repo_id else "fairdistill-student"),
        base_model=base_model,
        repo_id=repo_id,
        license=license,
        adapters=adapters,
        model_dir=Path(model_dir) if model_dir is not None else None,
    )
    return build_card(ctx, eval_results, student_name=student_name, teacher_name=teacher_name)


def card_builder(
    eval_results: str | os.PathLike | dict[str, Any] | None,
    *,
    student_name: str | None = None,
    teacher_name: str | None = None,
) -> CardBuilder:
    """A card builder for :func:`distill.publish.publish` with the numbers of ``eval_results``.

    The results are read here, so a missing or malformed file fails before any model loads.
    ``student_name`` defaults to ``"student"``, else the entry evaluated from the published folder, else
    the only entry that is not ``"teacher"``.
    """
    results = read_eval_results(eval_results)

    def build(ctx: CardContext) -> str:
        name = student_name
        if results is not None and name is None:
            name = guess_student_name(results, ctx.model_dir) if ctx.model_dir is not None else "student"
        return build_card(ctx, results, student_name=name or "student", teacher_name=teacher_name)

    return build
