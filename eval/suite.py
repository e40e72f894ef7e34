"""One model through every metric: pronoun-eliciting generations, CrowS-Pairs and WinoBias by likelihood,
BOLD's profession disparity, the pronoun gap, sentiment, perplexity.

:func:`run_evaluation` is what the ``python -m eval`` command runs per model and what the training
callback runs (with smaller settings) at eval steps; it returns a typed :class:`eval.results.ModelResult`.
:func:`evaluate_model` is the same as a plain, JSON-ready dict (the ``results.json`` entry).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .bold import default_data_dir
from .disparity import Scored, disparity_summary, headline
from .elicitation import elicitation_prompts, elicitation_summary, first_pronoun
from .generation import GenerationSettings, generate_continuations, model_max_positions
from .likelihood import crows_pairs_score, winobias_score
from .perplexity import DEFAULT_MAX_LENGTH_CAP, load_text_for_perplexity, strided_perplexity
from .polarity import WordEmbeddings, embedding_polarity, unigram_polarity
from .prompts import Prompt, builtin_profession_prompts, load_bold_prompts, profession_contexts
from .pronoun_gap import pronoun_gap
from .results import ModelResult
from .sentiment import RegardClassifier, sentiment_by_group

GENDER_GROUPS = ("American_actors", "American_actresses")


@dataclass
class EvalSettings:
    """What to evaluate and how; every field lands in the report so a number can be reproduced."""

    prompts: str = "builtin"  # "builtin", or a BOLD source: a local BOLD folder or a Hub id (AlexaAI/bold)
    per_category: int | None = 20  # BOLD prompts per profession category (None: all)
    sentiment: bool = True  # VADER on the BOLD gender domain (actors vs actresses); needs a BOLD source
    regard_path: str | None = None  # a local regard classifier, scored alongside VADER
    embeddings_path: str | None = None  # word vectors for Gender-Wavg / Gender-Max polarity
    perplexity_text: str | None = (
        None  # a local .txt/.jsonl or a Hub dataset ("wikitext:wikitext-103-raw-v1")
    )
    perplexity_texts: str | list[str] | None = field(default=None, repr=False)  # already loaded text
    perplexity_max_length: int | None = None
    perplexity_stride: int = 512
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    n_bootstrap: int = 1000  # 0 skips the intervals of the BOLD protocol (any other value: delta method)
    seed: int = 0
    samples_per_category: int = 3  # example generations kept in results.json per category
    bold_protocol: bool = True  # BOLD's profession prompts with unigram polarity (the paper's measure)
    elicitation: bool = True  # pronoun-eliciting generations (eval.elicitation)
    elicitation_split: str = "all"  # "all", "dev" or "heldout" templates x occupations
    elicitation_samples: int = 4  # continuations per elicitation prompt
    elicitation_max_new_tokens: int = 12  # the pronoun comes early; short continuations suffice
    crows_pairs: str | None = (
        "auto"  # CSV, folder or Hub id; "auto": <data>/crows_pairs if present; None: skip
    )
    crows_pairs_bias_type: str = "gender"  # or "all"
    winobias: str | None = "auto"  # folder or Hub id; "auto": <data>/winobias if present; None: skip
    winobias_split: str = "test"
    likelihood_max_pairs: int | None = None  # first pairs only (per WinoBias type); None: all
    keep_generations: bool = True  # every generation in ModelResult.generations (-> samples.jsonl)

    def __post_init__(self) -> None:
        if self.elicitation_split not in ("all", "dev", "heldout"):
            raise ValueError(
                f"elicitation_split must be 'all', 'dev' or 'heldout', got {self.elicitation_split!r}"
            )
        if self.winobias_split not in ("dev", "test"):
            raise ValueError(f"winobias_split must be 'dev' or 'test', got {self.winobias_split!r}")
        for name in ("elicitation_samples", "elicitation_max_new_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(
                    f"EvalSettings.{name} must be a positive integer, got {getattr(self, name)!r}"
                )
        if self.likelihood_max_pairs is not None and self.likelihood_max_pairs < 1:
            raise ValueError(f"likelihood_max_pairs must be >= 1 or None, got {self.likelihood_max_pairs}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("perplexity_texts")
        return out


def profession_prompts(settings: EvalSettings) -> list[Prompt]:
    if settings.prompts == "builtin":
        return builtin_profession_prompts()
    return load_bold_prompts(
        settings.prompts, domains=("profession",), per_category=settings.per_category, seed=settings.seed
    )


def resolve_benchmark(source: str | None, name: str) -> str | None:
    """``"auto"`` -> ``<default_data_dir()>/<name>`` when it exists, else None (skipped); other values as
    given (a local path or a Hub id)."""
    if source != "auto":
        return source
    data = default_data_dir()
    return str(data / name) if data is not None and (data / name).exists() else None


def evaluate_model(
    model, tokenizer, settings: EvalSettings, *, name: str = "model", progress: bool = True
) -> dict[str, Any]:
    """:func:`run_evaluation` as the JSON-ready dict of ``results.json``."""
    return run_evaluation(model, tokenizer, settings, name=name, progress=progress).to_dict()


def run_evaluation(
    model, tokenizer, settings: EvalSettings, *, name: str = "model", progress: bool = True
) -> ModelResult:
    """Every enabled measure for one model (see the module docstring)."""
    result = ModelResult(name=name)
    timing = result.timing
    headlines = []

    if settings.elicitation:
        started = time.perf_counter()
        prompts = elicitation_prompts(settings.elicitation_split)
        generation = replace(
            settings.generation,
            num_samples=settings.elicitation_samples,
            max_new_tokens=settings.elicitation_max_new_tokens,
        )
        continuations = generate_continuations(
            model, tokenizer, [p.text for p in prompts], generation, progress=progress
        )
        labels = [[first_pronoun(t) for t in texts] for texts in continuations]
        result.elicitation = elicitation_summary(prompts, labels)
        result.elicitation["split"] = settings.elicitation_split
        _keep(result, "elicitation", prompts, continuations, labels, settings.keep_generations)
        timing["elicitation_seconds"] = time.perf_counter() - started
        headlines.append(elicitation_headline(result.elicitation))

    for key, source, scorer, kwargs in (
        ("crows_pairs", resolve_benchmark(settings.crows_pairs, "crows_pairs"), crows_pairs_score,
         {"bias_type": settings.crows_pairs_bias_type}),
        ("winobias", resolve_benchmark(settings.winobias, "winobias"), winobias_score,
         {"split": settings.winobias_split}),
    ):  # fmt: skip
        if source is None:
            continue
        started = time.perf_counter()
        score = scorer(model, tokenizer, source, max_pairs=settings.likelihood_max_pairs, **kwargs)
        setattr(result, key, {**score, "source": source})
        timing[f"{key}_seconds"] = time.perf_counter() - started

    if settings.bold_protocol:
        prompts = profession_prompts(settings)
        started = time.perf_counter()
        continuations = generate_continuations(
            model, tokenizer, [p.text for p in prompts], settings.generation, progress=progress
        )
        timing["generation_seconds"] = time.perf_counter() - started
        n_generated = sum(len(c) for c in continuations)
        timing["generations_per_second"] = n_generated / max(timing["generation_seconds"], 1e-9)
        started = time.perf_counter()
        labels = [[unigram_polarity(text) for text in texts] for texts in continuations]
        timing["polarity_seconds"] = time.perf_counter() - started
        result.disparity = {"unigram": _disparity(prompts, labels, settings)}
        headlines.append("BOLD: " + headline(result.disparity["unigram"], noun="professions"))
        if settings.embeddings_path:
            embeddings = WordEmbeddings.load(settings.embeddings_path)
            for method in ("wavg", "max"):
                scored = [
                    [embedding_polarity(t, embeddings, method=method) for t in texts]
                    for texts in continuations
                ]
                result.disparity[f"embedding_{method}"] = _disparity(prompts, scored, settings)
        result.samples = _samples(prompts, continuations, labels, settings.samples_per_category)
        _keep(result, "bold_profession", prompts, continuations, labels, settings.keep_generations)

    started = time.perf_counter()
    contexts = profession_contexts()
    gap = pronoun_gap(model, tokenizer, [c.text for c in contexts])
    gap["per_profession"] = _mean_by(contexts, gap.pop("gaps"))
    result.pronoun_gap = gap
    timing["pronoun_gap_seconds"] = time.perf_counter() - started

    if settings.sentiment and settings.prompts != "builtin":
        started = time.perf_counter()
        result.sentiment = _sentiment(model, tokenizer, settings, progress)
        timing["sentiment_seconds"] = time.perf_counter() - started

    if settings.perplexity_texts is None and settings.perplexity_text:
        settings.perplexity_texts = load_text_for_perplexity(settings.perplexity_text)
    if settings.perplexity_texts is not None:
        started = time.perf_counter()
        # the window defaults to the model's context (capped); a stride longer than it means "disjoint"
        cap = DEFAULT_MAX_LENGTH_CAP
        window = settings.perplexity_max_length or min(model_max_positions(model) or cap, cap)
        result.perplexity = strided_perplexity(
            model,
            tokenizer,
            settings.perplexity_texts,
            max_length=window,
            stride=min(settings.perplexity_stride, window),
        )
        timing["perplexity_seconds"] = time.perf_counter() - started
    result.headline = " ".join(headlines)
    return result


def _fmt_estimate(entry: dict[str, Any], signed: bool = True) -> str:
    if not entry.get("measurable", True) or entry.get("value") is None:
        return f"not measurable ({entry.get('n', 0)} gendered)"
    form = "+.2f" if signed else ".2f"
    ci = entry.get("ci")
    return f"{entry['value']:{form}}" + (f" [{ci[0]:{form}}, {ci[1]:{form}}]" if ci else "")


def elicitation_headline(summary: dict[str, Any]) -> str:
    """``Pronoun elicitation: association +0.41 [+0.33, +0.49], global shift -0.12 [-0.16, -0.08] (95% CIs;
    1234 of 2016 continuations gendered).``"""
    return (
        f"Pronoun elicitation: association {_fmt_estimate(summary['association'])}, global shift "
        f"{_fmt_estimate(summary['global_shift'])} (95% CIs; {summary['n_gendered']} of {summary['n']} "
        "continuations gendered)."
    )


def _keep(result: ModelResult, task: str, prompts, continuations, labels, keep: bool) -> None:
    if not keep:
        return
    for prompt, texts, row in zip(prompts, continuations, labels, strict=True):
        for sample, (text, label) in enumerate(zip(texts, row, strict=True)):
            result.generations.append({"task": task, "prompt_id": prompt.id, "category": prompt.category,
                                       "prompt": prompt.text, "sample": sample, "continuation": text,
                                       "label": label})  # fmt: skip


def _disparity(prompts: list[Prompt], labels: list[list[str]], settings: EvalSettings) -> dict[str, Any]:
    records = [
        Scored(p.id, p.category, label) for p, row in zip(prompts, labels, strict=True) for label in row
    ]
    return disparity_summary(records, n_bootstrap=settings.n_bootstrap, seed=settings.seed)


def _samples(prompts, continuations, labels, per_category: int) -> list[dict[str, str]]:
    kept: dict[str, int] = {}
    samples = []
    for prompt, texts, row in zip(prompts, continuations, labels, strict=True):
        if kept.get(prompt.category, 0) >= per_category:
            continue
        kept[prompt.category] = kept.get(prompt.category, 0) + 1
        samples.append(
            {"category": prompt.category, "prompt": prompt.text, "continuation": texts[0], "polarity": row[0]}
        )
    return samples


def _mean_by(contexts, gaps: list[float]) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for context, gap in zip(contexts, gaps, strict=True):
        sums.setdefault(context.profession, []).append(gap)
    return {profession: sum(v) / len(v) for profession, v in sums.items()}


def _sentiment(model, tokenizer, settings: EvalSettings, progress: bool) -> dict[str, Any]:
    """VADER (and regard, when given) on continuations of the BOLD gender-domain prompts."""
    prompts = load_bold_prompts(
        settings.prompts, domains=("gender",), categories=GENDER_GROUPS, per_category=settings.per_category,
        seed=settings.seed,
    )  # fmt: skip
    continuations = generate_continuations(
        model, tokenizer, [p.text for p in prompts], settings.generation, progress=progress
    )
    by_group: dict[str, list[str]] = {group: [] for group in GENDER_GROUPS}
    for prompt, texts in zip(prompts, continuations, strict=True):
        by_group[prompt.category].extend(texts)
    out = {"vader": sentiment_by_group(by_group)}
    if settings.regard_path:
        out["regard"] = sentiment_by_group(by_group, label_fn=RegardClassifier(settings.regard_path).labels)
    return out


def write_samples_jsonl(results: list[ModelResult] | list[dict[str, Any]], path: Path) -> Path:
    """One JSON line per generation: every generation of a :class:`ModelResult` that kept them, else the
    examples in ``samples`` (plain dicts from an older ``results.json``)."""
    import json

    with Path(path).open("w", encoding="utf-8") as f:
        for result in results:
            if isinstance(result, ModelResult):
                rows = result.generations or result.samples
                name = result.name
            else:
                rows, name = result.get("samples", []), result["name"]
            for row in rows:
                f.write(json.dumps({"model": name, **row}) + "\n")
    return Path(path)
