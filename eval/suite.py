"""One model through every metric: generation disparity, pronoun gap, sentiment, perplexity.

:func:`evaluate_model` is what the ``python -m eval`` command runs per model and what the training
callback runs (with smaller settings) at eval steps. It returns a plain, JSON-ready dict.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .disparity import Scored, disparity_summary, headline
from .generation import GenerationSettings, generate_continuations, model_max_positions
from .perplexity import DEFAULT_MAX_LENGTH_CAP, load_text_for_perplexity, strided_perplexity
from .polarity import WordEmbeddings, embedding_polarity, unigram_polarity
from .prompts import Prompt, builtin_profession_prompts, load_bold_prompts, profession_contexts
from .pronoun_gap import pronoun_gap
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
    n_bootstrap: int = 1000
    seed: int = 0
    samples_per_category: int = 3  # example generations kept in the report per category

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


def evaluate_model(
    model, tokenizer, settings: EvalSettings, *, name: str = "model", progress: bool = True
) -> dict[str, Any]:
    """Every metric for one model (see the module docstring); a JSON-ready dict."""
    result: dict[str, Any] = {"name": name, "timing": {}}
    timing = result["timing"]

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
    result["disparity"] = {"unigram": _disparity(prompts, labels, settings)}
    result["headline"] = headline(result["disparity"]["unigram"], noun="professions")
    if settings.embeddings_path:
        embeddings = WordEmbeddings.load(settings.embeddings_path)
        for method in ("wavg", "max"):
            scored = [
                [embedding_polarity(t, embeddings, method=method) for t in texts] for texts in continuations
            ]
            result["disparity"][f"embedding_{method}"] = _disparity(prompts, scored, settings)
    result["samples"] = _samples(prompts, continuations, labels, settings.samples_per_category)

    started = time.perf_counter()
    contexts = profession_contexts()
    gap = pronoun_gap(model, tokenizer, [c.text for c in contexts])
    gap["per_profession"] = _mean_by(contexts, gap.pop("gaps"))
    result["pronoun_gap"] = gap
    timing["pronoun_gap_seconds"] = time.perf_counter() - started

    if settings.sentiment and settings.prompts != "builtin":
        started = time.perf_counter()
        result["sentiment"] = _sentiment(model, tokenizer, settings, progress)
        timing["sentiment_seconds"] = time.perf_counter() - started

    if settings.perplexity_texts is None and settings.perplexity_text:
        settings.perplexity_texts = load_text_for_perplexity(settings.perplexity_text)
    if settings.perplexity_texts is not None:
        started = time.perf_counter()
        # the window defaults to the model's context (capped); a stride longer than it means "disjoint"
        cap = DEFAULT_MAX_LENGTH_CAP
        window = settings.perplexity_max_length or min(model_max_positions(model) or cap, cap)
        result["perplexity"] = strided_perplexity(
            model,
            tokenizer,
            settings.perplexity_texts,
            max_length=window,
            stride=min(settings.perplexity_stride, window),
        )
        timing["perplexity_seconds"] = time.perf_counter() - started
    return result


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


def write_samples_jsonl(results: list[dict[str, Any]], path: Path) -> None:
    import json

    with path.open("w", encoding="utf-8") as f:
        for result in results:
            for sample in result.get("samples", []):
                f.write(json.dumps({"model": result["name"], **sample}) + "\n")
