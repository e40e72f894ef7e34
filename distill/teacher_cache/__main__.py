"""``python -m distill.teacher_cache --config recipe.yaml --out DIR``: write the cache of a recipe's data."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .format import DTYPES, run_teacher_dtype
from .integrity import local_teacher_path
from .write import _vocab_size, write_teacher_cache


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """``python -m distill.teacher_cache --config recipe.yaml --out DIR [--k 32] [--key value ...]``."""
    from ..models import load_causal_lm, load_tokenizer, resolve_model_path
    from ..recipe import parse_config, prepare_data
    from ..token_swap import run_pair_map

    parser = argparse.ArgumentParser(
        prog="python -m distill.teacher_cache",
        description="Run a recipe's teacher once over its training (and eval) blocks and save the top-k "
        "cache; then train with --teacher_cache DIR. Other --key value pairs override the recipe, as for "
        "distill.train.",
    )
    parser.add_argument("--out", type=Path, required=True, help="new directory; gets train/ and eval/")
    parser.add_argument("--k", type=int, default=32, help="tokens kept per position (default 32)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="stored log-probabilities")
    parser.add_argument("--batch-size", type=int, default=8, help="blocks per teacher forward pass")
    parser.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=None,
        help="temperatures to store the exact tail mass for (default: 1 and the recipe's temperature)",
    )
    parser.add_argument(
        "--counterfactual",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="store the gendered block and counterfactual view (default: when the recipe sets perturbation)",
    )
    ours, rest = parser.parse_known_args(argv)
    config = parse_config(rest)
    if config.teacher_cache is not None:
        parser.error("the recipe sets teacher_cache: drop it from the recipe to write a new cache")
    teacher_path = resolve_model_path(config.teacher_name_or_path)
    tokenizer = load_tokenizer(teacher_path)
    teacher = load_causal_lm(teacher_path, dtype="float32")
    dtype = run_teacher_dtype(config)
    if dtype is not None:
        teacher = teacher.to(dtype)
    device = torch.device("cuda" if torch.cuda.is_available() and not config.use_cpu else "cpu")
    teacher.to(device).eval().requires_grad_(False)
    data = prepare_data(config, tokenizer)
    # the run's own token swap (its lexicon and swap_names): the one the trainer checks the cache against
    pair_map = run_pair_map(config, tokenizer, _vocab_size(teacher), counterfactual=ours.counterfactual)
    manifests = []
    for split, dataset in (("train", data.train), ("eval", data.eval)):
        if dataset is None:
            continue
        manifest = write_teacher_cache(
            teacher,
            dataset,
            ours.out / split,
            k=ours.k,
            pair_map=pair_map,
            batch_size=ours.batch_size,
            dtype=ours.dtype,
            teacher_name=config.teacher_name_or_path,
            # identified by its weight files when they are on this machine (a Hub id: in its cache)
            teacher_path=local_teacher_path(config.teacher_name_or_path),
            temperatures=ours.temperatures or (1.0, config.temperature),
            joint_teacher_pass=config.joint_teacher_pass,
            verbose=True,
        )
        manifests.append(manifest)
        cf = manifest["counterfactual_rows"] / manifest["rows"]
        print(
            f"[teacher_cache] {split}: {manifest['rows']} blocks of {manifest['row_length']} tokens, "
            f"k={ours.k} {ours.dtype}, counterfactual view for {cf:.0%} of them; "
            f"{manifest['bytes'] / 1e6:.1f} MB, {manifest['bytes_per_token']:.0f} bytes/token; "
            f"teacher pass {manifest['seconds']:.1f} s -> {ours.out / split}"
        )
    print(f"[teacher_cache] train with: --teacher_cache {ours.out}")
    return manifests


DEBUG_ENV = "FAIRDISTILL_DEBUG"  # as distill.train's command line


def cli() -> None:
    """A user error (recipe, folder, damaged or unfit cache) is one line and exit 2; the traceback only
    with ``FAIRDISTILL_DEBUG=1``."""
    try:
        main()
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        if os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes"):
            raise
        print(f"error: {err}\n(set {DEBUG_ENV}=1 to see the traceback)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
