"""``python -m eval`` / ``fairdistill-eval``: compare models on gender bias and perplexity.

    python -m eval --model teacher=gpt2 --model student=runs/gpt2-distilgpt2 \\
        --prompts ../shared/data/bold --per-category 20 --perplexity-text wikitext:wikitext-103-raw-v1 \\
        --out runs/eval

Measures: pronoun-eliciting generations (association and global shift), CrowS-Pairs and WinoBias by
likelihood (from ``../shared/data`` or ``$FAIRDISTILL_DATA`` when present), BOLD's profession protocol,
the pronoun gap, VADER sentiment (BOLD's gender domain), perplexity. Every input is checked before any
model is loaded; ``results.json`` (every number, the settings and the command), ``report.md``,
``samples.jsonl`` (every generation) and two plots are rewritten in ``--out`` after each model, so a
failing second model loses nothing of the first.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoConfig, AutoTokenizer

from .generation import GenerationSettings, model_max_positions
from .likelihood import read_crows_pairs, read_winobias
from .loading import (
    DEBUG_ENV,
    ModelLoadError,
    check_causal_lm_config,
    check_model_name,
    load_causal_lm_checked,
    run_cli,
)
from .perplexity import DEFAULT_MAX_LENGTH_CAP, load_text_for_perplexity
from .prompts import load_bold_prompts
from .report import markdown_report, write_report
from .results import EvalReport
from .suite import EvalSettings, profession_prompts, resolve_benchmark, run_evaluation, write_samples_jsonl


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fairdistill-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[NAME=]PATH",
        help="a model to evaluate (local directory or Hub id); repeat to compare models",
    )
    parser.add_argument(
        "--prompts",
        default="builtin",
        help="'builtin' (our profession prompts), a local BOLD folder, or a Hub id (AlexaAI/bold)",
    )
    parser.add_argument(
        "--per-category", type=int, default=20, help="BOLD prompts per profession (default 20)"
    )
    parser.add_argument("--num-samples", type=int, default=5, help="generations per prompt (default 5)")
    parser.add_argument("--max-new-tokens", type=int, default=30)
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per generate call")
    parser.add_argument(
        "--perplexity-text",
        default=None,
        help="local .txt/.jsonl or Hub dataset 'name:config' (e.g. wikitext:wikitext-103-raw-v1)",
    )
    parser.add_argument("--perplexity-split", default="test")
    parser.add_argument(
        "--perplexity-max-chars", type=int, default=None, help="score only this many characters"
    )
    parser.add_argument("--perplexity-stride", type=int, default=512)
    parser.add_argument("--embeddings", default=None, help="word2vec/GloVe file for embedding-based polarity")
    parser.add_argument("--regard", default=None, help="local path of a regard classifier")
    parser.add_argument("--no-sentiment", action="store_true", help="skip VADER on the BOLD gender domain")
    parser.add_argument(
        "--no-elicitation", action="store_true", help="skip the pronoun-eliciting generations"
    )
    parser.add_argument(
        "--elicitation-split",
        default="all",
        choices=["all", "dev", "heldout"],
        help="templates x occupations: all, or the dev / held-out half",
    )
    parser.add_argument(
        "--elicitation-samples", type=int, default=4, help="continuations per elicitation prompt"
    )
    parser.add_argument("--elicitation-max-new-tokens", type=int, default=12)
    parser.add_argument(
        "--no-bold-protocol",
        action="store_true",
        help="skip BOLD's profession generations (unigram polarity, equitability)",
    )
    parser.add_argument(
        "--crows-pairs",
        default="auto",
        help="CrowS-Pairs CSV / folder / Hub id (nyu-mll/crows_pairs); 'auto': <data>/crows_pairs "
        "when present; 'none': skip",
    )
    parser.add_argument("--crows-pairs-bias-type", default="gender", help="a bias type, or 'all'")
    parser.add_argument(
        "--winobias",
        default="auto",
        help="WinoBias folder / Hub id; 'auto': <data>/winobias when present; 'none': skip",
    )
    parser.add_argument("--winobias-split", default="test", choices=["dev", "test"])
    parser.add_argument(
        "--likelihood-max-pairs",
        type=int,
        default=None,
        help="score only the first N pairs (per WinoBias type); default all",
    )
    parser.add_argument(
        "--examples-per-category",
        type=int,
        default=3,
        help="example generations per category kept in results.json (0: none)",
    )
    parser.add_argument(
        "--samples",
        default="all",
        choices=["all", "examples"],
        help="samples.jsonl: every generation (all) or a few per category (examples)",
    )
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--out", type=Path, default=Path("runs/eval"))
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)  # fmt: skip


def _named(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    return (name, path) if sep else (Path(spec.rstrip("/")).name or spec, spec)


def _fail(message: str) -> SystemExit:
    print(f"error: {message}", file=sys.stderr)
    return SystemExit(2)


def _max_positions(path: str) -> int | None:
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError:
        return None
    return model_max_positions(SimpleNamespace(config=config))


def load_model(path: str, dtype: str):
    try:
        # refuses a model that is no causal LM, or whose LM head was not in the checkpoint
        model = load_causal_lm_checked(path, getattr(torch, dtype))
        tokenizer = AutoTokenizer.from_pretrained(path)
    except ModelLoadError as err:
        if os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes"):
            raise
        raise _fail(str(err)) from None
    except OSError as err:
        raise _fail(
            f"could not load '{path}': {err.__class__.__name__}. Pass a local model directory, "
            "or a Hub id that is cached (the Hub is unreachable when HF_HUB_OFFLINE=1)"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked; causal LMs ship without a pad token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tokenizer


def validate_inputs(args: argparse.Namespace, settings: EvalSettings) -> None:
    """Every input checked before any model is loaded: one clear line and exit 2 on the first problem."""
    names = [_named(spec)[0] for spec in args.model]
    if len(set(names)) != len(names):
        raise _fail(f"--model names repeat ({names}); give each model its own name: --model teacher=PATH")
    for spec in args.model:
        name, path = _named(spec)
        try:
            check_model_name(name, spec)  # the name may become a folder of the report
        except ValueError as err:
            raise _fail(str(err)) from None
        if Path(path).exists() and not (Path(path) / "config.json").is_file():
            raise _fail(f"--model {spec}: {path} has no config.json; pass a saved model directory")
        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise _fail(
                f"--model {spec}: could not read its config ({err.__class__.__name__}); pass a local model "
                "directory, or a Hub id that is cached (the Hub is unreachable when HF_HUB_OFFLINE=1)"
            ) from None
        try:
            check_causal_lm_config(config, path)
        except ModelLoadError as err:
            if os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes"):
                raise
            raise _fail(str(err)) from None
    for flag, value in (("--per-category", args.per_category), ("--num-samples", args.num_samples),
                        ("--elicitation-samples", args.elicitation_samples),
                        ("--likelihood-max-pairs", args.likelihood_max_pairs)):  # fmt: skip
        if value is not None and value < 1:
            raise _fail(f"{flag} must be a positive number, got {value}")
    for flag, value in (("--embeddings", args.embeddings), ("--regard", args.regard)):
        if value and not Path(value).exists():
            raise _fail(f"{flag} {value} does not exist")
    try:
        if settings.bold_protocol:
            profession_prompts(settings)
        if settings.sentiment and settings.prompts != "builtin":
            load_bold_prompts(settings.prompts, domains=("gender",), per_category=1)
        crows = resolve_benchmark(settings.crows_pairs, "crows_pairs")
        if crows is not None:
            read_crows_pairs(crows)
        wino = resolve_benchmark(settings.winobias, "winobias")
        if wino is not None:
            read_winobias(wino, split=settings.winobias_split)
    except (FileNotFoundError, ValueError, ConnectionError) as err:
        raise _fail(str(err)) from None
    if args.out.exists() and not args.out.is_dir():
        raise _fail(f"--out {args.out} is a file; pass a folder for the report")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        generation = GenerationSettings(
            max_new_tokens=args.max_new_tokens, num_samples=args.num_samples, top_k=args.top_k,
            top_p=args.top_p, temperature=args.temperature, batch_size=args.batch_size, seed=args.seed,
        )  # fmt: skip
        settings = EvalSettings(
            prompts=args.prompts,
            per_category=args.per_category,
            sentiment=not args.no_sentiment,
            regard_path=args.regard,
            embeddings_path=args.embeddings,
            perplexity_text=args.perplexity_text,
            perplexity_stride=args.perplexity_stride,
            generation=generation,
            n_bootstrap=args.n_bootstrap,
            seed=args.seed,
            bold_protocol=not args.no_bold_protocol,
            elicitation=not args.no_elicitation,
            elicitation_split=args.elicitation_split,
            elicitation_samples=args.elicitation_samples,
            elicitation_max_new_tokens=args.elicitation_max_new_tokens,
            crows_pairs=None if args.crows_pairs == "none" else args.crows_pairs,
            crows_pairs_bias_type=args.crows_pairs_bias_type,
            winobias=None if args.winobias == "none" else args.winobias,
            winobias_split=args.winobias_split,
            likelihood_max_pairs=args.likelihood_max_pairs,
            keep_generations=args.samples == "all",
            samples_per_category=args.examples_per_category,
        )
    except ValueError as err:
        raise _fail(str(err)) from None
    validate_inputs(args, settings)
    if args.perplexity_text:
        try:
            settings.perplexity_texts = load_text_for_perplexity(
                args.perplexity_text, split=args.perplexity_split, max_chars=args.perplexity_max_chars
            )
        except (FileNotFoundError, ValueError, ConnectionError) as err:
            raise _fail(f"--perplexity-text {args.perplexity_text}: {err}") from None
    report = EvalReport(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        command=" ".join(["python -m eval", *(argv if argv is not None else sys.argv[1:])]),
        versions={"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        settings=settings.to_dict(),
    )
    if args.perplexity_text:
        # one window for every model, so teacher and student perplexities are comparable
        contexts = [_max_positions(path) for _, path in map(_named, args.model)]
        known = [c for c in contexts if c]
        settings.perplexity_max_length = min([*known, DEFAULT_MAX_LENGTH_CAP])
        settings.perplexity_stride = min(settings.perplexity_stride, settings.perplexity_max_length)
        report.settings = settings.to_dict()
    paths: dict[str, Path] = {}
    for spec in args.model:
        name, path = _named(spec)
        print(f"[eval] {name}: loading {path}", file=sys.stderr)
        started = time.perf_counter()
        model, tokenizer = load_model(path, args.dtype)
        result = run_evaluation(model, tokenizer, settings, name=name, progress=not args.no_progress)
        result.model = path
        result.timing["total_seconds"] = time.perf_counter() - started
        report.models.append(result)
        print(f"[eval] {name}: {result.headline}", file=sys.stderr)
        del model
        paths = write_report(report, args.out)  # after every model: nothing done is lost
        paths["samples"] = write_samples_jsonl(report.models, args.out / "samples.jsonl")
    print(markdown_report(report))
    print(f"[eval] wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


def cli() -> int:
    """Console entry: ``main`` with one-line user errors (FAIRDISTILL_DEBUG=1 shows tracebacks)."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
