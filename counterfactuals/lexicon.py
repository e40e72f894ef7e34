"""Gendered word pairs: the lexicon every counterfactual swap is built from.

A lexicon is a list of (male, female, direction) pairs. Each word swaps to exactly one target, so
there is never a "last match wins" surprise; a word that two pairs would send to different places is
an error naming both lines. Many-to-one cases are written as one-way pairs (``him -> her`` is
``him<TAB>her<TAB>m2f``): the female word then swaps back through its own two-way pair
(``her -> his``). The two English pronouns whose swap depends on grammar (``her`` -> his/him,
``his`` -> her/hers) get their second, context-dependent target from :data:`CONTEXT_ALTERNATES`.

First names (``data/first_names.tsv``: 400 pairs from the US Census 1990 frequency lists, male rank
i <-> female rank i, rule and exclusions in its header and ``scripts/make_first_names.py``) are a second
list. The library's functions (:func:`default_lexicon`, ``swap_gender``, ``build_pair_map``,
``augment_dataset``) take ``names`` explicitly and default to False: a call swaps the gendered words
unless asked. The entry points that feed training turn names on -- ``DistillationConfig.swap_names`` (default
True) and ``fairdistill-cda`` (``--no-names`` turns them off) -- because a context gendered only by a
name ("Mary said that") would otherwise read as neutral, and role reversal would erase its pronoun
preference.

Files: TSV (``male<TAB>female[<TAB>direction]``, ``#`` comments) or JSON (a list of
``[male, female]`` / ``[male, female, direction]`` / ``{"male": .., "female": .., "direction": ..}``,
or an object ``{male: female}``). Errors name the file and line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

DIRECTIONS = ("both", "m2f", "f2m")

# word -> its second target, chosen by grammatical context (see counterfactuals.swap):
#   "her" is possessive ("her book" -> "his book") or an object ("saw her" -> "saw him");
#   "his" is attributive ("his book" -> "her book") or predicative ("it is his" -> "it is hers").
# An alternate is active only when the lexicon sends it back to the word (him -> her, hers -> his).
CONTEXT_ALTERNATES: Mapping[str, str] = MappingProxyType({"her": "him", "his": "hers"})

_DATA_DIR = Path(__file__).parent / "data"
DEFAULT_PAIRS_FILE = _DATA_DIR / "gendered_pairs.tsv"
FIRST_NAMES_FILE = _DATA_DIR / "first_names.tsv"

# Letters, optionally joined by an inner apostrophe or hyphen (ma'am, half-brother).
_WORD_RE = re.compile(r"^[^\W\d_]+(?:['’\-][^\W\d_]+)*$")


class LexiconError(ValueError):
    """A pair file or pair list is malformed; the message names the place and the fix."""


@dataclass(frozen=True)
class GenderedPair:
    male: str
    female: str
    direction: str = "both"
    where: str = ""  # "file:line" (or "pair #i"), for error messages only

    def sources(self) -> Iterator[tuple[str, str, str]]:
        """Yield (source word, target word, gender of source) for the directions this pair swaps."""
        if self.direction in ("both", "m2f"):
            yield self.male, self.female, "male"
        if self.direction in ("both", "f2m"):
            yield self.female, self.male, "female"


@dataclass(frozen=True)
class Lexicon:
    """A validated set of gendered pairs.

    Attributes built from ``pairs`` (keys are lower-case words):
      swaps: word -> the word it swaps to (as written in the pair, so "Mr" keeps its capital);
      gender: word -> "male" | "female" for every word in any pair;
      capitalized_only: words written with a capital, matched only when capitalised in text;
      alternates: the active context alternates (subset of CONTEXT_ALTERNATES).
    """

    pairs: tuple[GenderedPair, ...]
    swaps: Mapping[str, str] = field(init=False, repr=False)
    gender: Mapping[str, str] = field(init=False, repr=False)
    capitalized_only: frozenset[str] = field(init=False, repr=False)
    alternates: Mapping[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.pairs:
            raise LexiconError("the lexicon has no pairs: give at least one male/female word pair")
        swaps: dict[str, str] = {}
        swap_origin: dict[str, GenderedPair] = {}
        gender: dict[str, str] = {}
        gender_origin: dict[str, GenderedPair] = {}
        capitalized: set[str] = set()
        for pair in self.pairs:
            _check_pair(pair)
            for word, sex in ((pair.male, "male"), (pair.female, "female")):
                key = word.lower()
                if key in gender and gender[key] != sex:
                    raise LexiconError(
                        f"{pair.where}: {word!r} is {sex} here but {gender[key]} at "
                        f"{gender_origin[key].where}; a word can only have one gender — remove one pair"
                    )
                gender.setdefault(key, sex)
                gender_origin.setdefault(key, pair)
                if word[:1].isupper():
                    capitalized.add(key)
            for source, target, _ in pair.sources():
                key = source.lower()
                if key in swaps:
                    first = swap_origin[key]
                    raise LexiconError(
                        f"{pair.where}: {source!r} would swap to {target!r}, but {first.where} already "
                        f"swaps it to {swaps[key]!r}. Each word needs exactly one target: delete one pair, "
                        "or make it one-way with a third column 'm2f' (male->female only) or 'f2m'"
                    )
                swaps[key] = target
                swap_origin[key] = pair
        # A word both capitalised and lower-case in different pairs matches in any case.
        capitalized -= {p.male.lower() for p in self.pairs if not p.male[:1].isupper()}
        capitalized -= {p.female.lower() for p in self.pairs if not p.female[:1].isupper()}
        alternates = {
            word: alt
            for word, alt in CONTEXT_ALTERNATES.items()
            if word in swaps and swaps.get(alt, "").lower() == word
        }
        object.__setattr__(self, "swaps", MappingProxyType(swaps))
        object.__setattr__(self, "gender", MappingProxyType(gender))
        object.__setattr__(self, "capitalized_only", frozenset(capitalized))
        object.__setattr__(self, "alternates", MappingProxyType(alternates))

    def __len__(self) -> int:
        return len(self.pairs)

    def __reduce__(self):
        # rebuilt from the pairs (the derived read-only mappings do not pickle), e.g. for
        # datasets.map(num_proc=...) workers
        return (Lexicon, (self.pairs,))

    def __add__(self, other: Lexicon) -> Lexicon:
        return Lexicon(self.pairs + other.pairs)

    @classmethod
    def from_pairs(cls, pairs: Iterable[Any], *, source: str = "pair") -> Lexicon:
        """Build from (male, female[, direction]) tuples, lists or dicts."""
        return cls(tuple(_pair_from_value(value, f"{source} #{i}") for i, value in enumerate(pairs, 1)))

    @classmethod
    def from_file(cls, path: str | Path) -> Lexicon:
        return load_lexicon(path)

    def targets(self, word: str) -> tuple[str, ...]:
        """Every word ``word`` can swap to: its target, then its context alternate if any."""
        key = word.lower()
        if key not in self.swaps:
            return ()
        alt = self.alternates.get(key)
        return (self.swaps[key], alt) if alt else (self.swaps[key],)


def _check_pair(pair: GenderedPair) -> None:
    for word in (pair.male, pair.female):
        if not isinstance(word, str) or not _WORD_RE.match(word):
            raise LexiconError(
                f"{pair.where}: {word!r} is not a single word (letters, with an inner ' or - allowed); "
                "multi-word phrases are not supported"
            )
    if pair.male.lower() == pair.female.lower():
        raise LexiconError(f"{pair.where}: {pair.male!r} is paired with itself")
    if pair.direction not in DIRECTIONS:
        raise LexiconError(
            f"{pair.where}: unknown direction {pair.direction!r}; use one of {', '.join(DIRECTIONS)}"
        )


def _pair_from_value(value: Any, where: str) -> GenderedPair:
    if isinstance(value, Mapping):
        unknown = set(value) - {"male", "female", "direction"}
        if unknown or "male" not in value or "female" not in value:
            raise LexiconError(
                f"{where}: expected {{'male': .., 'female': .., 'direction'?: ..}}, got {dict(value)!r}"
            )
        return GenderedPair(value["male"], value["female"], value.get("direction", "both"), where)
    if isinstance(value, (list, tuple)) and len(value) in (2, 3) and all(isinstance(v, str) for v in value):
        return GenderedPair(*value, where=where)
    raise LexiconError(f"{where}: expected [male, female] or [male, female, direction], got {value!r}")


def load_lexicon(path: str | Path) -> Lexicon:
    """Load a pair file: ``.json`` as JSON, anything else as TSV. Errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LexiconError(f"pair file {path} does not exist") from None
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise LexiconError(f"{path}:{line}: not valid UTF-8 ({err.reason}); save the file as UTF-8") from None
    if path.suffix.lower() == ".json":
        pairs = [_pair_from_value(value, f"{path}:{line}") for line, value in _json_items(text, path)]
    else:
        pairs = list(_tsv_pairs(text, path))
    if not pairs:
        raise LexiconError(f"{path} holds no pairs; expected lines of 'male<TAB>female[<TAB>direction]'")
    return Lexicon(tuple(pairs))


def _tsv_pairs(text: str, path: Path) -> Iterator[GenderedPair]:
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) not in (2, 3):
            hint = " (columns must be separated by a TAB, not spaces)" if len(fields) == 1 else ""
            raise LexiconError(
                f"{path}:{number}: expected 'male<TAB>female[<TAB>direction]', "
                f"got {len(fields)} column(s): {raw!r}{hint}"
            )
        yield GenderedPair(*fields, where=f"{path}:{number}")


def _json_items(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line, item) for each element of a top-level JSON array, or (line, [key, value]) for
    each member of a top-level object, so errors about one pair can name its line."""
    decoder = json.JSONDecoder()

    def fail(pos: int, what: str) -> LexiconError:
        return LexiconError(f"{path}:{text.count(chr(10), 0, pos) + 1}: {what}")

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    def decode(pos: int) -> tuple[Any, int]:
        try:
            return decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise fail(err.pos, f"invalid JSON: {err.msg}") from None

    pos = skip(0)
    if pos >= len(text) or text[pos] not in "[{":
        raise fail(pos, "expected a JSON list of pairs or an object {male: female}")
    closing, is_object = ("}", True) if text[pos] == "{" else ("]", False)
    pos = skip(pos + 1)
    if pos < len(text) and text[pos] == closing:
        return
    while True:
        start = pos
        item, pos = decode(pos)
        if is_object:
            pos = skip(pos)
            if not isinstance(item, str) or pos >= len(text) or text[pos] != ":":
                raise fail(pos, 'invalid JSON object: expected "male": "female"')
            value, pos = decode(skip(pos + 1))
            item = [item, value]
        yield text.count("\n", 0, start) + 1, item
        pos = skip(pos)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
        elif pos < len(text) and text[pos] == closing:
            return
        else:
            raise fail(pos, f"invalid JSON: expected ',' or '{closing}'")


@cache
def default_lexicon(names: bool = False) -> Lexicon:
    """fairdistill's own pair list; with ``names=True`` plus the first-name pairs (off by default in
    the library; training and ``fairdistill-cda`` turn them on: see the module docstring)."""
    lexicon = load_lexicon(DEFAULT_PAIRS_FILE)
    return lexicon + load_lexicon(FIRST_NAMES_FILE) if names else lexicon
