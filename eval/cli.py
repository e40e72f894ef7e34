"""``python -m eval`` / ``fairdistill-eval``: compare models on generation disparity and perplexity.

    python -m eval --model teacher=gpt2 --model student=runs/gpt2-distilgpt2 \\
        --prompts ../shared/data/bold --per-category 20 --perplexity-text wikitext:wikitext-103-raw-v1 \\
        --out runs/eval

Writes ``results.json`` (every number, the settings, seeds and the command), ``report.md``,
``samples.jsonl`` and two plots into ``--out``, and prints the comparison table.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoConfig, AutoTokenizer

from .generation import GenerationSettings, model_max_positions
from .loading import check_model_name, load_causal_lm_checked, run_cli
from .perplexity import DEFAULT_MAX_LENGTH_CAP, load_text_for_perplexity
from .report import markdown_report, write_report
from .suite import EvalSettings, evaluate_model, write_samples_jsonl


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
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--out", type=Path, default=Path("runs/eval"))
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)  # fmt: skip


def _named(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    name, path = (name, path) if sep else (Path(spec.rstrip("/")).name or spec, spec)
    return check_model_name(name, spec), path


def _max_positions(path: str) -> int | None:
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError:
        return None  # load_model reports the problem with the fix
    return model_max_positions(SimpleNamespace(config=config))


def load_model(path: str, dtype: str):
    try:
        model = load_causal_lm_checked(path, getattr(torch, dtype))  # refuses non-causal, half-loaded
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise SystemExit(
            f"error: could not load '{path}': {err.__class__.__name__}. Pass a local model directory, "
            "or a Hub id that is cached (the Hub is unreachable when HF_HUB_OFFLINE=1)"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked; causal LMs ship without a pad token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tokenizer


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = [_named(spec)[0] for spec in args.model]
    if len(set(names)) != len(names):
        raise ValueError(f"--model names {names} repeat: give each model its own NAME (--model NAME=PATH)")
    generation = GenerationSettings(
        max_new_tokens=args.max_new_tokens, num_samples=args.num_samples, top_k=args.top_k, top_p=args.top_p,
        temperature=args.temperature, batch_size=args.batch_size, seed=args.seed,
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
    )
    if args.perplexity_text:
        settings.perplexity_texts = load_text_for_perplexity(
            args.perplexity_text, split=args.perplexity_split, max_chars=args.perplexity_max_chars
        )
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m eval", *(argv if argv is not None else sys.argv[1:])]),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "settings": settings.to_dict(),
        "models": [],
    }
    if args.perplexity_text:
        # one window for every model, so teacher and student perplexities are comparable
        contexts = [_max_positions(path) for _, path in map(_named, args.model)]
        known = [c for c in contexts if c]
        settings.perplexity_max_length = min([*known, DEFAULT_MAX_LENGTH_CAP])
        settings.perplexity_stride = min(settings.perplexity_stride, settings.perplexity_max_length)
    for spec in args.model:
        name, path = _named(spec)
        print(f"[eval] {name}: loading {path}", file=sys.stderr)
        started = time.perf_counter()
        model, tokenizer = load_model(path, args.dtype)
        result = evaluate_model(model, tokenizer, settings, name=name, progress=not args.no_progress)
        result["model"] = path
        result["timing"]["total_seconds"] = time.perf_counter() - started
        report["models"].append(result)
        print(f"[eval] {name}: {result['headline']}", file=sys.stderr)
        del model
    paths = write_report(report, args.out)
    write_samples_jsonl(report["models"], args.out / "samples.jsonl")
    print(markdown_report(report))
    print(f"[eval] wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


def cli() -> int:
    """``fairdistill-eval`` / ``python -m eval``: :func:`main`, a user error as one line and exit 2."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
