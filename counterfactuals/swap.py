"""Text-level gender swap: ``swap_gender("He thanked his aunt.") == "She thanked her uncle."``.

Rules:
- Whole words only (``\\b`` on both sides, Unicode-aware): "shell", "Sherlock", "hero's" stem
  "her", "Hermes", "manage" are never touched; "he's" -> "she's", "father-in-law" -> "mother-in-law".
- Case is carried over: he -> she, He -> She, HE -> SHE. Words written capitalised in the lexicon
  (Mr, Miss, first names) are swapped only when capitalised in the text ("I miss you" stays).
- Everything that is not a swapped word — punctuation, whitespace, other scripts — is copied byte for
  byte; the text is never re-tokenised or normalised.
- The two pronouns with two possible targets are resolved from the next word, with a light rule
  (no tagger: a good one is not cheap enough to run on every training example):
    * ``her`` -> ``him`` when it is an object: followed by closing punctuation, a line end or the end
      of the text, or one of :data:`OBJECT_FOLLOWERS` (a determiner, pronoun, preposition,
      conjunction, adverb or bare verb: "gave her the book", "told her to", "saw her yesterday",
      "let her go"); otherwise possessive -> ``his`` ("her book", "her own"). "her or his" and
      "her and his" are possessive too (a coordinated possessive pronoun follows), and the mis-spelt
      ``her's`` is treated as possessive (-> ``his's``, so it round-trips).
    * ``his`` -> ``hers`` when predicative (followed by closing punctuation, a line end or the end of
      the text: "the book is his."); otherwise -> ``her`` ("his book", "his or her").
  Known limits of a rule this light: "her back hurts" -> "his back" is right but "brought her back"
  -> "brought his back" is not; the trainer's teacher sees both roles anyway.
- Round trip: swap(swap(x)) == x for text without the many-to-one words (him, hers, Mrs, Miss, mum,
  lord, bridegroom, ma'am, god, host and their plurals), which swap to a word that swaps back
  elsewhere by design (Mrs -> Mr -> Ms).
"""

from __future__ import annotations

import re
from functools import cache

from .lexicon import Lexicon, default_lexicon

# Next words after which "her" is an object, not a possessive (lower-case). Nouns that double as
# verbs or adverbs ("back", "home", "work", "past", "first", "more") are left out on purpose:
# "her home" is far more often possessive than "took her home" is common.
OBJECT_FOLLOWERS = frozenset(
    """
    a an the this that these those my your our their its his her some any no another
    it them me us you him I we they she he what which who whom whose something anything nothing
    everything everyone someone anyone
    to in on at for with from by about into onto over under up down out off away through after before
    around across behind like of as than toward towards without against upon among along during
    since until till near via despite except beside besides between
    and or but nor so yet because if when while whether although though unless where how why once
    again too also today yesterday tomorrow tonight now then there here anyway instead alone well
    immediately anymore either twice enough
    be go know feel do see come get make take leave stay think cry die speak sing tell try believe
    become realize realise understand wonder
    """.split()
)

# Punctuation that closes a phrase: after it, "her" is an object and "his" is predicative.
# "/" is not among them ("his/her" is possessive) and neither are opening quotes or brackets.
CLOSING_PUNCTUATION = frozenset(".,;:!?)]}”’»…—–")
_QUOTES = frozenset("\"'")
COORDINATORS = frozenset({"and", "or", "nor"})
# After "her or"/"her and", one of these makes "her" a coordinated possessive ("her and his books").
# "her" itself is not one: "with her and her husband" is an object followed by a possessive.
POSSESSIVE_DETERMINERS = frozenset({"his", "their", "my", "your", "our", "its"})
_NEXT_WORD_RE = re.compile(r"[^\W\d_]+(?:[-'’][^\W\d_]+)*")


def _trie_pattern(words: list[str]) -> str:
    """A regex alternation shaped as a trie: Python's re tries a flat 350-word alternation one word
    at a time at every position (about 1 MB/s); as a trie it rejects a position in one step
    (about 15-20 MB/s on the same text)."""
    root: dict = {}
    for word in words:
        node = root
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def emit(node: dict) -> str:
        branches = [re.escape(char) + emit(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        optional = "" in node  # a word ends here and longer words go on
        if len(branches) == 1 and not optional:
            return branches[0]
        return "(?:" + "|".join(branches) + ")" + ("?" if optional else "")

    return emit(root)


def match_case(word: str, target: str) -> str:
    if len(word) > 1 and word.isupper():
        return target.upper()
    if word[:1].isupper():
        return target[:1].upper() + target[1:]
    return target.lower()


class TextSwapper:
    """Swaps gendered words in text with one lexicon; compile once, call many times (picklable, so
    it can be shipped to ``datasets.map(num_proc=...)`` workers)."""

    def __init__(self, lexicon: Lexicon) -> None:
        self.lexicon = lexicon
        words = sorted(lexicon.swaps, key=len, reverse=True)
        self._pattern = re.compile(r"(?<!\w)" + _trie_pattern(words) + r"(?!\w)", re.IGNORECASE)

    def __call__(self, text: str) -> str:
        if not isinstance(text, str):
            is_bytes = isinstance(text, (bytes, bytearray))
            hint = " — decode it first, e.g. data.decode('utf-8')" if is_bytes else ""
            raise TypeError(f"swap_gender expects str, got {type(text).__name__}{hint}")
        return self._pattern.sub(self._replace, text)

    def count(self, text: str) -> int:
        """Number of words in ``text`` that would be swapped."""
        return sum(1 for m in self._pattern.finditer(text) if self._swappable(m.group(0)))

    def _swappable(self, word: str) -> bool:
        key = word.lower()
        if key not in self.lexicon.swaps:
            # IGNORECASE also folds "ſ" (long s) to s and "İ"/"ı" to i, which .lower() does not
            return False
        if key in self.lexicon.capitalized_only:
            # Title case only: "Mr", "Miss", "John"; not "miss" (a verb) nor "MS" / "MISS" in capitals
            return word[:1].isupper() and not (len(word) > 1 and word.isupper())
        return True

    def _replace(self, match: re.Match) -> str:
        word = match.group(0)
        key = word.lower()
        if not self._swappable(word):
            return word
        target = self.lexicon.swaps[key]
        alternate = self.lexicon.alternates.get(key)
        if alternate is not None and _is_standalone(key, match.string, match.end()):
            target = alternate
        return match_case(word, target)


def _is_standalone(word: str, text: str, end: int) -> bool:
    """True when the pronoun ending at ``end`` stands alone: "her" as an object, "his" predicative."""
    if text[end : end + 1] in ("'", "’") and text[end + 1 : end + 2] in ("s", "S"):
        if not text[end + 2 : end + 3].isalnum():
            return False  # "her's": a mis-spelt "hers", possessive
    pos = _skip_blanks(text, end)
    if pos == len(text) or text[pos] in "\r\n":
        return True
    char = text[pos]
    if char in CLOSING_PUNCTUATION:
        return True
    if char in _QUOTES:  # a closing quote ends the phrase; an opening one starts a new one
        return pos + 1 == len(text) or not text[pos + 1].isalnum()
    if word != "her":
        return False
    next_word = _NEXT_WORD_RE.match(text, pos)
    # Case-sensitive on purpose: a capitalised word after "her" is a name or title ("her Into the
    # Woods nomination"), so possessive. "her in-laws" is possessive too: the whole hyphenated word
    # is what must be a follower.
    if next_word is None or next_word.group(0) not in OBJECT_FOLLOWERS:
        return False
    if next_word.group(0) in COORDINATORS:  # "her or his choice": coordinated possessives
        after = _NEXT_WORD_RE.match(text, _skip_blanks(text, next_word.end()))
        return after is None or after.group(0) not in POSSESSIVE_DETERMINERS
    return True


def _skip_blanks(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


@cache
def _default_swapper(names: bool) -> TextSwapper:
    return TextSwapper(default_lexicon(names))


def swap_gender(text: str, *, names: bool = False, lexicon: Lexicon | None = None) -> str:
    """Return ``text`` with every gendered word swapped for its counterpart.

    ``names=True`` also swaps the built-in first-name pairs (off by default here, on in training and
    ``fairdistill-cda``: see :mod:`counterfactuals.lexicon`); ``lexicon`` replaces the built-in pairs
    entirely (then ``names`` is ignored). For many calls with a custom lexicon build a
    :class:`TextSwapper` once.
    """
    swapper = TextSwapper(lexicon) if lexicon is not None else _default_swapper(bool(names))
    return swapper(text)
