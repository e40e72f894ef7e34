"""How much of the first names in BOLD's Wikipedia text counterfactuals/data/first_names.tsv covers.

A "first-name token" is a capitalised word of the text that is a name of the 1990 US Census first-name
lists (the same files scripts/make_first_names.py reads). Printed: the share of those occurrences that
the list covers; the same share among the names the list's rule allows (not a word, place, unisex name
or surname); and the share whose pair the token swap of GPT-2 / SmolLM2 holds (both names single
tokens with a leading space), i.e. what role reversal can act on.

    python scripts/first_names_coverage.py /tmp/names/names-0.3.0/names [BOLD_FOLDER]
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from make_first_names import kept, read_frequencies  # noqa: E402

from counterfactuals.lexicon import FIRST_NAMES_FILE, load_lexicon  # noqa: E402
from eval.bold import bold_dir, read_bold_wikipedia  # noqa: E402

TOP = 1000
DOMAINS = ("gender", "profession", "race", "religious_ideology", "political_ideology")


def main(census: str, bold: str | None = None) -> None:
    root = Path(census)
    male, female = read_frequencies(root / "dist.male.first"), read_frequencies(root / "dist.female.first")
    surnames = read_frequencies(root / "dist.all.last")
    census_names = set(male) | set(female)
    allowed = set(kept(male, female, surnames)) | set(kept(female, male, surnames))
    pairs = load_lexicon(FIRST_NAMES_FILE).pairs
    partner = {p.male: p.female for p in pairs} | {p.female: p.male for p in pairs}

    source = Path(bold) if bold else bold_dir()
    sentences = [
        s
        for categories in read_bold_wikipedia(source, DOMAINS).values()
        for pages in categories.values()
        for lines in pages.values()
        for s in lines
    ]
    counts = Counter(w for s in sentences for w in re.findall(r"\b[A-Z][a-z]+\b", s) if w in census_names)
    total = sum(counts.values())
    covered = sum(n for w, n in counts.items() if w in partner)
    eligible = sum(n for w, n in counts.items() if w in allowed)
    print(f"{len(sentences)} BOLD Wikipedia sentences ({', '.join(DOMAINS)})")
    print(f"census first-name tokens: {total}; covered by the list: {covered} ({covered / total:.1%})")
    print(f"  of those the rule allows ({eligible}): {covered / eligible:.1%}")
    common = set(list(male)[:TOP]) | set(list(female)[:TOP])
    common_total = sum(n for w, n in counts.items() if w in common)
    common_covered = sum(n for w, n in counts.items() if w in common and w in partner)
    print(f"  of those among the {TOP} most frequent names of either list ({common_total}): "
          f"{common_covered / common_total:.1%}")

    from tests.assets import gpt2_tokenizer, smollm2_tokenizer

    for label, tok in (("GPT-2", gpt2_tokenizer()), ("SmolLM2", smollm2_tokenizer())):

        def single(word: str, tok=tok) -> bool:
            return len(tok.encode(" " + word, add_special_tokens=False)) == 1

        in_sigma = sum(n for w, n in counts.items() if w in partner and single(w) and single(partner[w]))
        n_pairs = sum(single(p.male) and single(p.female) for p in pairs)
        print(
            f"  {label}: {n_pairs} of {len(pairs)} pairs in the token swap (' Name' <-> ' Pair' single "
            f"tokens), covering {in_sigma / total:.1%}"
        )
    top = [w for w, _ in counts.most_common() if w not in partner][:20]
    print("most frequent census names not covered:", " ".join(top))
    top = [f"{w}({n})" for w, n in counts.most_common() if w in common and w not in partner][:30]
    print(f"most frequent of the {TOP} not covered:", " ".join(top))


if __name__ == "__main__":
    main(*sys.argv[1:])
