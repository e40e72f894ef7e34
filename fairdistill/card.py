"""The model card of a fairdistill student: the run (from ``distill.training_card``) and its evaluation.

The card reads ``python -m eval``'s ``results.json``, so it lives above both ``distill`` and ``eval``.
Just over 600 lines: the results adapter, the comparison rule and the card text are read together here.
:func:`card_builder` turns results into the callable :func:`distill.publish.publish` calls with the
folder's :class:`~distill.training_card.CardContext`; :func:`model_card` is the same card as a function of
plain values.

**Only what was measured.** Every comparison in the card is derived from the numbers printed next to it,
by one rule (:func:`compare`): a metric is *better* or *worse* for the student only when both models have
a 95% interval for it and the two intervals do not overlap; overlapping intervals read *no measurable
difference*; a metric without an interval (today: pronoun gap, perplexity, sentiment gap) is shown with
no verdict. Non-overlap is the conservative reading (two disjoint 95% intervals cannot be explained by
the resampling), so the card can miss a real difference but does not claim one the data do not show.
The intended-use paragraph repeats the headline verdict (mean equitability) and nothing else; without an
evaluation, or without the teacher in it, the card claims no comparison at all.

eval's results layout is read in one place, :func:`eval_numbers` (which the typed eval results object
will replace).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
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
from eval.results import get_path

__all__ = ["BOLD_HUB_ID", "EvalNumbers", "EvalResultsError", "Measure", "ModelNumbers", "card_builder",
           "compare", "eval_numbers", "guess_student_name", "model_card", "read_eval_results"]  # fmt: skip

BOLD_HUB_ID = "AlexaAI/bold"
PUBLISH_COMMAND = "python -m fairdistill.publish_cli"
BETTER, WORSE, NO_DIFFERENCE, NOT_COMPARED = "better", "worse", "no measurable difference", "no verdict"

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
# Reading eval results: the one place that knows results.json's layout
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measure:
    """A measured number and its 95% interval (None where the evaluation computed none)."""

    value: float | None
    ci: tuple[float, float] | None = None


@dataclass(frozen=True)
class ModelNumbers:
    """One evaluated model's numbers, as the card uses them."""

    name: str
    source: str | None  # what was evaluated (a path or Hub id)
    mean_equitability: Measure
    min_equitability: Measure
    worst_profession: str | None
    male: float | None
    female: float | None
    neutral: float | None
    n_generations: int | None
    n_prompts: int | None
    pronoun_gap: Measure  # signed mean: > 0 leans male
    pronoun_gap_abs: Measure
    perplexity: Measure | None  # None: not measured
    perplexity_setup: dict[str, Any]  # tokens, max_length (window), stride
    sentiment_gap: Measure | None  # VADER positive share, actors - actresses; None: not measured
    headline: str | None
    # pronoun elicitation and the likelihood benchmarks (None: not measured); 0 = no gender preference
    association: Measure | None = None  # female share, female- minus male-stereotyped occupations
    global_shift: Measure | None = None  # overall female share of gendered continuations - 0.5
    crows_pairs: Measure | None = None  # CrowS-Pairs gender: stereotype share - 0.5
    winobias_type1: Measure | None = None  # WinoBias type 1: pro-stereotype share - 0.5
    winobias_type2: Measure | None = None  # WinoBias type 2: pro-stereotype share - 0.5


@dataclass(frozen=True)
class EvalNumbers:
    """An evaluation run: its models by name and the settings that produced the numbers."""

    models: dict[str, ModelNumbers]
    prompts: str  # "builtin", a BOLD Hub id or a local BOLD folder
    per_category: int | None
    n_bootstrap: Any
    generation: dict[str, Any]
    seed: Any
    perplexity_text: str | None
    command: str | None


def _interval(value: Any) -> tuple[float, float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        low, high = finite(value[0]), finite(value[1])
        if low is not None and high is not None and low <= high:
            return (low, high)
    return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _measure(
    block: Any, value_key: str = "value", ci_key: str = "ci", *, minus: float = 0.0
) -> Measure | None:
    """``block[value_key]`` and its interval ``block[ci_key]``, minus ``minus``; None: not measured."""
    if not isinstance(block, dict) or finite(block.get(value_key)) is None:
        return None
    ci = _interval(block.get(ci_key))
    shifted = None if ci is None else (ci[0] - minus, ci[1] - minus)
    return Measure(finite(block.get(value_key)) - minus, shifted)


def eval_numbers(results: dict[str, Any]) -> EvalNumbers:
    """``results.json`` (``python -m eval``) as :class:`EvalNumbers`; the only reader of its layout."""
    models = results.get("models")
    if not isinstance(models, list) or not all(isinstance(m, dict) and "name" in m for m in models):
        raise EvalResultsError(
            "eval results need a 'models' list of per-model results with a 'name'; pass the results.json "
            "written by `python -m eval --out DIR`"
        )
    numbers = {}
    for entry in models:
        overall = get_path(entry, "disparity", "unigram", "overall") or {}
        gap = entry.get("pronoun_gap") or {}
        ppl = entry.get("perplexity")
        vader = get_path(entry, "sentiment", "vader")
        numbers[entry["name"]] = ModelNumbers(
            name=str(entry["name"]),
            source=entry.get("model") if isinstance(entry.get("model"), str) else None,
            mean_equitability=Measure(
                finite(overall.get("mean_equitability")),
                _interval(get_path(overall, "ci", "mean_equitability")),
            ),
            min_equitability=Measure(
                finite(overall.get("min_equitability")),
                _interval(get_path(overall, "ci", "min_equitability")),
            ),
            worst_profession=overall.get("worst_category"),
            male=finite(overall.get("male")),
            female=finite(overall.get("female")),
            neutral=finite(overall.get("neutral")),
            n_generations=_int(overall.get("n")),
            n_prompts=_int(overall.get("n_prompts")),
            pronoun_gap=Measure(finite(gap.get("mean_gap"))),
            pronoun_gap_abs=Measure(finite(gap.get("mean_abs_gap"))),
            perplexity=Measure(finite(ppl.get("perplexity"))) if isinstance(ppl, dict) else None,
            perplexity_setup={k: ppl.get(k) for k in ("tokens", "max_length", "stride")}
            if isinstance(ppl, dict)
            else {},
            sentiment_gap=Measure(finite(vader.get("positive_gap"))) if isinstance(vader, dict) else None,
            headline=entry.get("headline") if isinstance(entry.get("headline"), str) else None,
            association=_measure(get_path(entry, "elicitation", "association")),
            global_shift=_measure(get_path(entry, "elicitation", "global_shift")),
            crows_pairs=_measure(entry.get("crows_pairs"), "stereotype_share", minus=0.5),
            winobias_type1=_measure(entry.get("winobias"), "type1_pro_share", "type1_ci", minus=0.5),
            winobias_type2=_measure(entry.get("winobias"), "type2_pro_share", "type2_ci", minus=0.5),
        )
    settings = results.get("settings") or {}
    return EvalNumbers(
        models=numbers,
        prompts=str(settings.get("prompts", "builtin")),
        per_category=settings.get("per_category"),
        n_bootstrap=settings.get("n_bootstrap", "n/a"),
        generation=dict(settings.get("generation") or {}),
        seed=settings.get("seed", "n/a"),
        perplexity_text=settings.get("perplexity_text"),
        command=results.get("command") if isinstance(results.get("command"), str) else None,
    )


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


def guess_student_name(numbers: EvalNumbers, model_dir: Path) -> str:
    """Which entry is this student: named "student", evaluated from ``model_dir``, or the only entry that
    is not "teacher"."""
    names = list(numbers.models)
    if "student" in names:
        return "student"
    for entry in numbers.models.values():
        if entry.source and Path(entry.source).expanduser().resolve() == model_dir.resolve():
            return entry.name
    others = [n for n in names if n != "teacher"]
    if len(others) == 1:
        return others[0]
    raise EvalResultsError(
        f"cannot tell which evaluated model is this student (models: {names}); pass --student-name NAME"
    )


def _select(
    numbers: EvalNumbers, student_name: str, teacher_name: str | None
) -> tuple[ModelNumbers, ModelNumbers | None]:
    if student_name not in numbers.models:
        raise EvalResultsError(
            f"eval results have no model named {student_name!r} (they have {sorted(numbers.models)}); pass "
            "the student's name with --student-name"
        )
    teacher = numbers.models.get(teacher_name or "teacher")
    if teacher is not None and teacher.name == student_name:
        teacher = None
    return numbers.models[student_name], teacher


# ----------------------------------------------------------------------------------------------------
# Comparing: the card's one rule
# ----------------------------------------------------------------------------------------------------


def _distance_from_zero(measure: Measure) -> Measure:
    """|value| and the interval of |x| for x in the interval (for metrics whose ideal is 0)."""
    value = None if measure.value is None else abs(measure.value)
    if measure.ci is None:
        return Measure(value)
    low, high = measure.ci
    lowest = 0.0 if low <= 0.0 <= high else min(abs(low), abs(high))
    return Measure(value, (lowest, max(abs(low), abs(high))))


def compare(student: Measure | None, teacher: Measure | None, *, better: str) -> str:
    """The student's verdict against the teacher: ``better``/``worse`` when both 95% intervals exist and
    do not overlap, ``no measurable difference`` when they overlap, ``no verdict`` otherwise.

    ``better``: ``"higher"``, ``"lower"`` or ``"closer to 0"`` (compared as distances from 0).
    """
    if student is None or teacher is None or student.ci is None or teacher.ci is None:
        return NOT_COMPARED
    if better == "closer to 0":
        student, teacher, better = _distance_from_zero(student), _distance_from_zero(teacher), "lower"
    (s_low, s_high), (t_low, t_high) = student.ci, teacher.ci
    if s_low > t_high:
        return BETTER if better == "higher" else WORSE
    if s_high < t_low:
        return WORSE if better == "higher" else BETTER
    return NO_DIFFERENCE


# The metrics the card compares: label, how to read the student/teacher value, which way is better.
_COMPARED = [
    ("association, female share of female- minus male-stereotyped occupations", "association", "closer to 0"),
    ("global shift, female share of gendered continuations − 0.5", "global_shift", "closer to 0"),
    ("CrowS-Pairs gender, stereotype share − 0.5", "crows_pairs", "closer to 0"),
    ("WinoBias type 1, pro-stereotype share − 0.5", "winobias_type1", "closer to 0"),
    ("WinoBias type 2, pro-stereotype share − 0.5", "winobias_type2", "closer to 0"),
    ("mean equitability (gender balance over professions; 1 = parity)", "mean_equitability", "higher"),
    ("min equitability (worst profession)", "min_equitability", "higher"),
    ("pronoun gap, mean absolute", "pronoun_gap_abs", "lower"),
    ("perplexity", "perplexity", "lower"),
    ("VADER positive gap, actors − actresses", "sentiment_gap", "closer to 0"),
]


# ----------------------------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str, missing: str = "n/a") -> str:
    number = finite(value)
    return missing if number is None else format(number, spec)


def _fmt_measure(measure: Measure | None, spec: str) -> str:
    if measure is None or measure.value is None:
        return "n/a"
    ci = f" [{measure.ci[0]:{spec}}, {measure.ci[1]:{spec}}]" if measure.ci else ""
    return f"{measure.value:{spec}}{ci}"


def _bold_dataset(numbers: EvalNumbers) -> dict[str, str]:
    if numbers.prompts == "builtin":
        return {"name": "fairdistill built-in profession prompts", "type": "fairdistill-profession-prompts"}
    return {"name": "BOLD (profession domain)", "type": BOLD_HUB_ID}


def _perplexity_dataset(numbers: EvalNumbers) -> dict[str, str]:
    source = numbers.perplexity_text
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


def _metric(type_: str, measure: Measure | None, name: str) -> dict[str, Any] | None:
    if measure is None or measure.value is None:
        return None
    return {"type": type_, "value": measure.value, "name": name}


def _model_index(model_name: str, student: ModelNumbers, numbers: EvalNumbers) -> list[dict[str, Any]]:
    """The Hub's ``model-index``: one result per dataset the numbers come from, finite numbers only."""
    task = {"type": "text-generation", "name": "Text Generation"}
    groups = [
        (
            _bold_dataset(numbers),
            [
                _metric("mean_equitability", student.mean_equitability,
                        "Mean equitability ratio over professions (1 = parity)"),
                _metric("min_equitability", student.min_equitability,
                        "Min equitability ratio over professions"),
            ],
        ),
        (
            {"name": "fairdistill templated profession contexts", "type": "fairdistill-profession-contexts"},
            [
                _metric("pronoun_gap", student.pronoun_gap,
                        "Pronoun gap, mean log P(he) - log P(she) (0 = parity)"),
                _metric("pronoun_gap_abs", student.pronoun_gap_abs, "Pronoun gap, mean absolute"),
            ],
        ),
        (_perplexity_dataset(numbers), [_metric("perplexity", student.perplexity, "Perplexity")]),
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


def _table_row(entry: ModelNumbers, label: str) -> str:
    worst = f" ({entry.worst_profession})" if entry.worst_profession else ""
    shares = " / ".join(_fmt(v, ".1%") for v in (entry.male, entry.female, entry.neutral))
    sentiment = _fmt(entry.sentiment_gap.value if entry.sentiment_gap else None, "+.1%")
    return (
        f"| {label} | {_fmt_measure(entry.mean_equitability, '.2f')} "
        f"| {_fmt(entry.min_equitability.value, '.2f')}{worst} | {shares} "
        f"| {_fmt(entry.pronoun_gap.value, '+.2f')} / {_fmt(entry.pronoun_gap_abs.value, '.2f')} "
        f"| {_fmt(entry.perplexity.value if entry.perplexity else None, '.2f')} | {sentiment} |"
    )


def _verdicts(student: ModelNumbers, teacher: ModelNumbers | None) -> list[tuple[str, str, str]]:
    """(label, verdict, the numbers it comes from) for every compared metric either model has."""
    rows = []
    for label, attr, better in _COMPARED:
        mine, theirs = getattr(student, attr), getattr(teacher, attr) if teacher else None
        if (mine is None or mine.value is None) and (theirs is None or theirs.value is None):
            continue
        spec = "+.1%" if attr == "sentiment_gap" else ".2f"
        numbers = f"this model {_fmt_measure(mine, spec)}, teacher {_fmt_measure(theirs, spec)}"
        rows.append((f"{label} ({better} is better)", compare(mine, theirs, better=better), numbers))
    return rows


def _comparison_lines(student: ModelNumbers, teacher: ModelNumbers | None) -> list[str]:
    if teacher is None:
        return [
            "**No comparison.** The teacher was not evaluated alongside this model, so the card compares "
            "nothing; the numbers above stand on their own.",
            "",
        ]
    lines = [
        "**Compared with the teacher** (better / worse only where both 95% intervals exist and do not "
        "overlap; overlapping intervals: no measurable difference; no interval: no verdict):",
        "",
    ]
    for label, verdict, numbers in _verdicts(student, teacher):
        why = f"{numbers}; no interval, so no verdict" if verdict == NOT_COMPARED else numbers
        lines.append(f"- {label}: **{verdict}** ({why})")
    return lines + [""]


def headline_measure(student: ModelNumbers | None) -> str:
    """The card's headline bias measure: the pronoun-elicitation association where it was measured (it has
    the signal: most continuations carry a pronoun), else BOLD's mean equitability."""
    return "association" if student is not None and student.association is not None else "mean equitability"


def headline_verdict(student: ModelNumbers | None, teacher: ModelNumbers | None) -> str | None:
    """The verdict on the headline bias measure; None without a comparison."""
    if student is None or teacher is None:
        return None
    if headline_measure(student) == "association":
        return compare(student.association, teacher.association, better="closer to 0")
    return compare(student.mean_equitability, teacher.mean_equitability, better="higher")


def _evaluation_section(
    numbers: EvalNumbers | None,
    student: ModelNumbers | None,
    teacher: ModelNumbers | None,
    teacher_ref: str,
) -> list[str]:
    lines = ["## Evaluation", ""]
    if student is None or numbers is None:
        return lines + [
            "**Not evaluated.** No evaluation results were given when this card was written, so it reports "
            "no numbers and makes no claim about bias or quality. To measure gender disparity and "
            "perplexity against the teacher, run",
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
    gen = numbers.generation
    lines += [
        "| model | mean equitability (95% CI; 1 = parity) | min equitability (worst profession) "
        "| male / female / neutral generations | pronoun gap mean / mean abs | perplexity "
        "| VADER positive gap, actors − actresses |",
        "|---|---|---|---|---|---|---|",
    ]
    if teacher is not None:
        label = "teacher" if teacher.name == "teacher" else f"teacher ({teacher.name})"
        lines.append(_table_row(teacher, label))
    lines += [_table_row(student, f"**this model** ({student.name})"), ""]
    lines += _comparison_lines(student, teacher)
    if numbers.prompts == "builtin":
        prompts = f"{student.n_prompts or 'the'} built-in fairdistill profession prompts"
    else:
        source = BOLD_HUB_ID if numbers.prompts == BOLD_HUB_ID else "a local copy of BOLD"
        per = "all prompts" if numbers.per_category is None else f"{numbers.per_category} per profession"
        prompts = f"{student.n_prompts or 'the'} BOLD profession-domain prompts ({per}, from {source})"
    size = f"{student.n_generations} " if student.n_generations else ""
    lines += [
        f"- **Gender disparity**: {size}continuations of {prompts}, labelled male / female / neutral by "
        "BOLD's unigram gender polarity. Equitability per profession = min(f/m, m/f) of the female and "
        "male shares; the mean is over professions, with a "
        f"{numbers.n_bootstrap}-resample bootstrap 95% CI over prompts.",
        f"- **Sampling**: {gen.get('num_samples', 'n/a')} samples per prompt, "
        f"top-k {gen.get('top_k', 'n/a')}, top-p {gen.get('top_p', 'n/a')}, "
        f"temperature {gen.get('temperature', 'n/a')}, {gen.get('max_new_tokens', 'n/a')} new tokens, "
        f"seed {gen.get('seed', numbers.seed)}.",
        "- **Pronoun gap**: mean of log P(he, him, his) − log P(she, her) for the next token after templated "
        "profession contexts (> 0 leans male, 0 = parity).",
    ]
    if student.perplexity is not None:
        setup = student.perplexity_setup
        lines.append(
            f"- **Perplexity**: strided, token-weighted, on {_perplexity_dataset(numbers)['name']}: "
            f"{setup.get('tokens', 'n/a')} tokens, window {setup.get('max_length', 'n/a')}, "
            f"stride {setup.get('stride', 'n/a')}; lower is better."
        )
    else:
        lines.append("- **Perplexity**: not measured in this evaluation.")
    if student.sentiment_gap is not None:
        lines.append(
            "- **Sentiment gap**: share of VADER-positive continuations of BOLD's American_actors prompts "
            "minus that of American_actresses."
        )
    if numbers.command:
        note = "The evaluation command (the card cuts local paths to their last component):"
        lines += ["", note, "", "```bash", numbers.command, "```"]
    if student.association is not None:
        lines.append(
            "- **Pronoun elicitation**: sampled continuations of templated occupation contexts (\"The nurse "
            "said that\"), labelled by their first gendered pronoun. Association = female share for "
            "WinoBias's female-stereotyped occupations minus that for male-stereotyped ones (0 = none); "
            "global shift = overall female share − 0.5."
        )
    if student.crows_pairs is not None or student.winobias_type1 is not None:
        lines.append(
            "- **CrowS-Pairs (gender) and WinoBias**: the share of minimal pairs where the model gives the "
            "stereotypical sentence the higher log-likelihood, shown minus 0.5 (0 = no preference), with "
            "Wilson 95% intervals over pairs."
        )
    extra = [
        f"| {label} | {_fmt_measure(entry.association, '+.2f')} | {_fmt_measure(entry.global_shift, '+.2f')} "
        f"| {_fmt_measure(entry.crows_pairs, '+.2f')} | {_fmt_measure(entry.winobias_type1, '+.2f')} "
        f"| {_fmt_measure(entry.winobias_type2, '+.2f')} |"
        for label, entry in (("teacher", teacher), (f"**this model** ({student.name})", student))
        if entry is not None
    ]
    models = [entry for entry in (student, teacher) if entry is not None]
    if any(entry.association or entry.crows_pairs or entry.winobias_type1 for entry in models):
        lines += [
            "",
            "| model | association | global shift | CrowS-Pairs − 0.5 | WinoBias 1 − 0.5 "
            "| WinoBias 2 − 0.5 |",
            "|---|---|---|---|---|---|",
            *extra,
        ]
    if student.headline:
        lines += ["", f"Summary for this model: {student.headline}"]
    return lines + [""]


def _intended_use(verdict: str | None, measure: str = "mean equitability") -> list[str]:
    """States the headline verdict, and only that; nothing when there was no comparison."""
    claims = {
        "mean equitability": {
            BETTER: "On this evaluation its generations were measurably more gender-balanced than the "
            "teacher's (mean equitability, non-overlapping 95% intervals): less gender-skewed on these "
            "prompts. Check its perplexity in the table before using it in the teacher's place.",
            WORSE: "On this evaluation its generations were measurably *less* gender-balanced than the "
            "teacher's (mean equitability, non-overlapping 95% intervals): it is not a less biased "
            "replacement for the teacher.",
            NO_DIFFERENCE: "This evaluation found no measurable difference in gender balance between it and "
            "the teacher (overlapping 95% intervals of mean equitability).",
            NOT_COMPARED: "The evaluation gave no interval for the teacher's or this model's mean "
            "equitability, so the card does not compare their gender balance.",
        },
        "association": {
            BETTER: "On this evaluation its pronouns associated occupations with a gender measurably less "
            "than the teacher's (association, non-overlapping 95% intervals) on these prompts. Check its "
            "perplexity in the table before using it in the teacher's place.",
            WORSE: "On this evaluation its pronouns associated occupations with a gender measurably *more* "
            "than the teacher's (association, non-overlapping 95% intervals): it is not a less biased "
            "replacement for the teacher.",
            NO_DIFFERENCE: "This evaluation found no measurable difference between it and the teacher in "
            "how its pronouns associate occupations with a gender (overlapping 95% intervals of the "
            "association).",
            NOT_COMPARED: "The evaluation gave no interval for the teacher's or this model's association, "
            "so the card does not compare them.",
        },
    }
    claim = claims[measure].get(verdict or "", "")
    return [
        "## Intended use",
        "",
        "Research on gender bias in language generation and on fairness-aware knowledge distillation. "
        + (claim + " " if claim else "")
        + "It is not intended for decisions about people (hiring, lending, moderation, ...), and lower "
        "measured disparity is not a certificate of fairness.",
        "",
    ]


# ----------------------------------------------------------------------------------------------------
# The card
# ----------------------------------------------------------------------------------------------------


def build_card(
    ctx: CardContext,
    eval_results: dict[str, Any] | EvalNumbers | None,
    *,
    student_name: str = "student",
    teacher_name: str | None = None,
) -> str:
    """The card for ``ctx``'s student with the numbers of ``eval_results`` (None: "Not evaluated")."""
    numbers = eval_numbers(eval_results) if isinstance(eval_results, dict) else eval_results
    student = teacher = None
    if numbers is not None:
        student, teacher = _select(numbers, student_name, teacher_name)
    parts = card_parts(ctx, license_hint=PUBLISH_COMMAND)
    meta = parts.meta
    if student is not None and numbers is not None:
        index = _model_index(ctx.model_name, student, numbers)
        if index:
            meta["model-index"] = index
    body = [*parts.title, *parts.details, *parts.training]
    body += _evaluation_section(numbers, student, teacher, parts.teacher_ref)
    body += _intended_use(headline_verdict(student, teacher), headline_measure(student))
    body += [
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
        "- **The teacher's own limitations and license apply to this model too.**",
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
    numbers = eval_numbers(results) if results is not None else None

    def build(ctx: CardContext) -> str:
        name = student_name
        if numbers is not None and name is None:
            name = guess_student_name(numbers, ctx.model_dir) if ctx.model_dir is not None else "student"
        return build_card(ctx, numbers, student_name=name or "student", teacher_name=teacher_name)

    return build
