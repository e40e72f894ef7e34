"""``python -m fairdistill.publish_cli``: publish a student with a model card that reports its evaluation.

    python -m fairdistill.publish_cli runs/gpt2-distilgpt2 --eval-results runs/eval/results.json \\
        --repo-id you/gpt2-fair-student --push

The folder, the secret scan and the push are :func:`distill.publish.publish`'s; the card, which reads
``python -m eval``'s results, is :mod:`fairdistill.card`'s.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distill import publish as _distill_publish
from distill.publish import DEFAULT_COMMIT_MESSAGE, PublishError, PushError

from .card import card_builder

__all__ = ["main", "parse_args", "publish"]

PROG = "python -m fairdistill.publish_cli"


def publish(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    eval_results: str | os.PathLike | dict[str, Any] | None = None,
    student_name: str | None = None,
    teacher_name: str | None = None,
    **kwargs: Any,
) -> Path:
    """:func:`distill.publish.publish` with the card of :func:`fairdistill.card.card_builder`.

    ``eval_results``: a ``python -m eval`` ``results.json`` path (or the parsed dict); None writes a
    card that says "Not evaluated". ``student_name``/``teacher_name``: the entries' names in it. Every
    other keyword (``repo_id``, ``push``, ``token``, ``merge_lora``, ...) goes to distill's publish.
    """
    card = card_builder(eval_results, student_name=student_name, teacher_name=teacher_name)
    return _distill_publish.publish(model_dir, out_dir, card=card, **kwargs)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write a trained fairdistill student as safetensors + tokenizer + model card, and "
        "optionally push it to the Hugging Face Hub (token: HF_TOKEN or `hf auth login`).",
    )
    parser.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="a distill.train output directory")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default MODEL_DIR/publish)")
    parser.add_argument(
        "--eval-results",
        type=Path,
        default=None,
        help="results.json from `python -m eval`; without it the card says 'Not evaluated'",
    )
    parser.add_argument("--student-name", default=None, help="the student's model name in the results")
    parser.add_argument("--repo-id", default=None, help="Hub repository, user/name")
    parser.add_argument("--push", action="store_true", help="create the repository and upload the folder")
    parser.add_argument("--private", action="store_true", help="create the repository private (with --push)")
    parser.add_argument(
        "--no-merge-lora",
        action="store_true",
        help="publish LoRA adapters as they are instead of merging them into the base model",
    )
    parser.add_argument(
        "--base-model",
        default=None,
        help="the teacher's Hub id for the card, when training used a local copy of it",
    )
    parser.add_argument(
        "--license",
        default=None,
        help="license id for the card (default: the teacher's when known, else 'other')",
    )
    parser.add_argument("--commit-message", default=DEFAULT_COMMIT_MESSAGE)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; 0 on success, 2 for a user error, 1 when the upload fails. The token is read from
    HF_TOKEN or the cached login only: a --token flag would leak into shell history and process lists."""
    args = parse_args(argv)
    if args.private and not args.push:
        print("error: --private only applies with --push", file=sys.stderr)
        return 2
    try:
        out = publish(
            args.model_dir,
            args.out,
            eval_results=args.eval_results,
            student_name=args.student_name,
            repo_id=args.repo_id,
            push=args.push,
            private=args.private,
            merge_lora=not args.no_merge_lora,
            base_model=args.base_model,
            license=args.license,
            commit_message=args.commit_message,
        )
    except PublishError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except PushError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"[fairdistill] wrote {out}", file=sys.stderr)
    if args.push:
        print(f"[fairdistill] pushed to https://huggingface.co/{args.repo_id}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
