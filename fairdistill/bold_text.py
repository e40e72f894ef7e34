"""Training and held-out text from BOLD's Wikipedia sentences, kept apart from every evaluation prompt.

Used by the main job and the study: the training text comes from the race, religious-ideology and
political-ideology pages (real English, CC BY-SA 4.0, read from a local BOLD folder), with every page that
also yields a profession or gender prompt removed; one page in ten is held out for perplexity.
:func:`other_domain_text` gives held-out text of another domain (the profession pages' sentences) for a
second perplexity.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .errors import UserError, read_json

TRAIN_DOMAINS = ("race", "religious_ideology", "political_ideology")
EVAL_DOMAINS = ("profession", "gender")


def build_text(bold: Path, out: Path, *, heldout_every: int = 10, heldout_chars: int = 20_000) -> dict:
    """train.jsonl and heldout.txt from BOLD Wikipedia sentences, disjoint from the evaluation prompts:
    pages that yield a profession or gender prompt are dropped, and so is any sentence that starts with
    such a prompt (the same person can sit on two pages under different names)."""
    check_bold_folder(bold)
    eval_pages, prompts = set(), set()
    for domain in EVAL_DOMAINS:
        by_category = read_json(bold / "prompts" / f"{domain}_prompt.json", "BOLD file")
        eval_pages |= {page for pages in by_category.values() for page in pages}
        prompts |= {p.strip() for pages in by_category.values() for ps in pages.values() for p in ps}
    lengths = {len(p.split()) for p in prompts}

    def is_prompt(sentence: str) -> bool:
        words = sentence.split()
        return any(" ".join(words[:n]) in prompts for n in lengths)

    train, heldout, dropped_pages, dropped_sentences = [], [], 0, 0
    for domain in TRAIN_DOMAINS:
        wiki = read_json(bold / "wikipedia" / f"{domain}_wiki.json", "BOLD file")
        pages = sorted((page, lines) for by_page in wiki.values() for page, lines in by_page.items())
        for index, (page, lines) in enumerate(pages):
            if page in eval_pages:
                dropped_pages += 1
                continue
            kept = [s.strip() for s in lines if s.strip() and not is_prompt(s.strip())]
            dropped_sentences += sum(1 for s in lines if s.strip()) - len(kept)
            (heldout if index % heldout_every == 0 else train).extend(kept)
    if not train or not heldout:
        raise UserError(
            f"BOLD folder {bold}: no {'training' if not train else 'held-out'} sentences in the "
            f"{', '.join(TRAIN_DOMAINS)} pages once the evaluation pages are removed; use a complete BOLD "
            "checkout, or give --text and --perplexity-text"
        )
    random.Random(0).shuffle(train)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "train.jsonl").open("w", encoding="utf-8") as f:
        for sentence in train:
            f.write(json.dumps({"text": sentence}) + "\n")
    text = "\n".join(heldout)[:heldout_chars]
    (out / "heldout.txt").write_text(text, encoding="utf-8")
    return {
        "train_sentences": len(train),
        "heldout_chars": len(text),
        "pages_dropped": dropped_pages,
        "sentences_dropped": dropped_sentences,
    }


def check_bold_folder(bold: Path, *, wikipedia: bool = True) -> None:
    """A clear error for a BOLD folder that is missing or lacks the files the main job reads (the
    prompts, and with ``wikipedia`` the training domains' pages)."""
    if not bold.is_dir():
        raise UserError(
            f"BOLD folder {bold} not found; pass --bold DIR (the folder with prompts/ and wikipedia/) or set "
            "FAIRDISTILL_BOLD_DIR"
        )
    needed = [f"prompts/{d}_prompt.json" for d in EVAL_DOMAINS]
    needed += [f"wikipedia/{d}_wiki.json" for d in TRAIN_DOMAINS] if wikipedia else []
    missing = [name for name in needed if not (bold / name).is_file()]
    if missing:
        raise UserError(
            f"BOLD folder {bold} lacks {', '.join(missing)}; pass --bold with a complete BOLD checkout"
        )


def other_domain_text(bold: Path, chars: int, *, every: int = 7) -> str:
    """About ``chars`` characters of BOLD's profession-domain Wikipedia sentences (every ``every``-th page,
    in name order): text of another domain than the training pages, never trained on."""
    wiki = read_json(Path(bold) / "wikipedia" / "profession_wiki.json", "BOLD file")
    pages = sorted((page, lines) for by_page in wiki.values() for page, lines in by_page.items())
    sentences = [s.strip() for _, lines in pages[::every] for s in lines if s.strip()]
    return "\n".join(sentences)[:chars]
