"""Token-level gender swap σ over a tokenizer's vocabulary, and the map that moves a next-token
distribution back through it.

:func:`build_pair_map` reads the tokenizer itself, so every BPE variant of a lexicon word that is a
single token enters σ: on GPT-2, " he"(339)<->" she"(673), "He"(1544)<->"She"(3347),
" He"(679)<->" She"(1375), " actor"<->" actress", ... A pair enters only when both sides are single
tokens (then swapping keeps the sequence length, so the teacher's positions stay aligned).

The structure, :class:`PairMap`:

``sigma`` (V,)
    The token swap: ``sigma[i]`` is the counterpart of token i, ``sigma[i] == i`` for tokens that are
    not gendered. It is a function, so many-to-one words are resolved: " him" -> " her", " hers" ->
    " his", and " her" -> " his" by default.
``alternate``, ``alternate_rule``, ``next_tables``
    The context rule of :mod:`counterfactuals.swap` at token level: a token with an alternate target
    (" her" -> " him", " his" -> " hers") takes it when the next token is one of its rule's
    ``next_tables`` row (closing punctuation, a line break, an object follower such as " the" or
    " to"), or when it is the last token of its row.
``edge_src``, ``edge_dst``, ``edge_group``, ``source_ids``
    The transport used to map a distribution back (role reversal, q(w) = p̃(σ(w))). In the
    counterfactual context the teacher puts mass p̃(u) on token u; in the original context that mass
    belongs to the tokens the swap turns into u — u's preimage. Each edge u -> w says "w swaps to
    u": " she" -> " he"; " her" -> " his" and " her" -> " him" (both swap to " her"); " him" ->
    " her" (an object "her" swaps to " him"); " Mr" -> " Ms", " Mrs", " Miss". A token that is not
    swapped itself but is a one-way target keeps an edge to itself (" God" -> " God" and " God" ->
    " Goddess", since "God" is never swapped but "goddess" swaps to "god"); a swapped token that no
    token swaps to falls back to its own swap (" Mrs" -> " Mr").
    :meth:`PairMap.map_back` moves p̃(u) along u's edges; a token with several edges splits its mass
    in proportion to the original teacher's probabilities of the edge ends at that position (it
    knows whether a possessive or an object comes next). Every edge weight is >= 0 and each source's
    weights sum to 1, so the mass is conserved exactly: nothing is lost (" her"'s mass is not all
    sent to " his") and nothing is counted twice (" his" and " him" both flow into " her" instead of
    both reading p̃(" her")).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .lexicon import Lexicon, default_lexicon
from .swap import CLOSING_PUNCTUATION, COORDINATORS, OBJECT_FOLLOWERS, POSSESSIVE_DETERMINERS, match_case

# The rules of counterfactuals.swap, by the word whose target they choose.
RULE_OBJECT = 1  # "her" -> "him" before closing punctuation, a line end or an object follower
RULE_PREDICATIVE = 2  # "his" -> "hers" before closing punctuation or a line end
_RULE_OF_WORD = {"her": RULE_OBJECT, "his": RULE_PREDICATIVE}
# further rows of PairMap.next_tables: coordinators (" and") and possessive determiners (" his")
ROW_COORDINATOR, ROW_POSSESSIVE = 3, 4

# Lexicon words are looked up as a tokenizer sees them in running text: after a line break (no
# space) and after a space, in lower, title and upper case.
_CONTEXT = "\n"


@dataclass(frozen=True)
class PairMap:
    """σ over a vocabulary plus what is needed to move probability mass back through it (see the
    module docstring). Build it with :func:`build_pair_map`."""

    sigma: torch.Tensor  # (V,) long
    alternate: torch.Tensor  # (V,) long; == sigma where a token has no context alternate
    alternate_rule: torch.Tensor  # (V,) long; 0, RULE_OBJECT or RULE_PREDICATIVE
    next_tables: torch.Tensor  # (5, V) bool; row r: next tokens that trigger rule r (row 0 empty)
    edge_src: torch.Tensor  # (E,) long; counterfactual-side token whose mass moves
    edge_dst: torch.Tensor  # (E,) long; original-side token receiving it
    edge_group: torch.Tensor  # (E,) long; index of edge_src in source_ids
    source_ids: torch.Tensor  # (S,) long; distinct edge sources (their own mass is moved away)
    starts_word: torch.Tensor  # (V,) bool; the token's text starts with a letter/digit (no space)
    ends_word: torch.Tensor  # (V,) bool; the token's text ends with a letter/digit
    pairs: tuple[tuple[str, str], ...]  # (token, what it swaps to), alternates included, to inspect

    @property
    def vocab_size(self) -> int:
        return self.sigma.numel()

    @functools.cached_property  # the trainer asks for it at every step
    def gendered_ids(self) -> torch.Tensor:
        """Every token that is a source or a target of the swap (sorted)."""
        return torch.unique(torch.cat([self.edge_src, self.edge_dst]))

    def __len__(self) -> int:
        """Number of tokens the swap changes."""
        return int((self.sigma != torch.arange(self.vocab_size, device=self.sigma.device)).sum())

    def to(self, device: torch.device | str) -> PairMap:
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)

    def swap_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Swap a batch of token ids. Returns ``(swapped, changed)``: the same shape as
        ``input_ids`` (so teacher positions stay aligned) and a bool per row, True where the swap
        changed something (the trainer skips the counterfactual pass for the other rows).
        Padding (``attention_mask == 0``) is never swapped; the last real token of a row counts as
        the end of the text for the context rule."""
        squeeze = input_ids.dim() == 1
        ids = input_ids.unsqueeze(0) if squeeze else input_ids
        if ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq) or (seq,), got shape {tuple(input_ids.shape)}")
        if ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be integer token ids, got dtype {ids.dtype}")
        if ids.device != self.sigma.device:
            raise ValueError(
                f"input_ids are on {ids.device} but the pair map on {self.sigma.device}: "
                f"use pair_map.to({str(ids.device)!r})"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}); got {int(ids.min())}..{int(ids.max())}. "
                "Build the pair map from the tokenizer that made these ids (build_pair_map(tokenizer, "
                "vocab_size=model.config.vocab_size) if the model's vocabulary is larger)"
            )
        ids = ids.long()
        mask = None
        if attention_mask is not None:
            mask = attention_mask.unsqueeze(0) if squeeze else attention_mask
            if mask.shape != ids.shape:
                raise ValueError(f"attention_mask shape {tuple(mask.shape)} != input_ids {tuple(ids.shape)}")
            mask = mask.bool()
        swapped = self.sigma[ids]
        # Whole words only, as in the text swap: a gendered token glued to a neighbour without a
        # space or punctuation is a piece of a longer word ("Samp|son", "Letter|man", "hero|ic").
        glued = self.ends_word[ids[:, :-1]] & self.starts_word[ids[:, 1:]]
        inside_word = torch.zeros_like(ids, dtype=torch.bool)
        inside_word[:, 1:] |= glued
        inside_word[:, :-1] |= glued
        swapped = torch.where(inside_word, ids, swapped)
        rule = self.alternate_rule[ids]
        if bool((rule > 0).any()):
            # the rule looks at the next token; the last real token of a row sees the end of text
            triggered = torch.zeros_like(ids, dtype=torch.bool)
            triggered[:, -1] = True
            if mask is not None:
                triggered[:, :-1] |= ~mask[:, 1:]
            following = self.next_tables[rule[:, :-1], ids[:, 1:]]
            # "her or his choice": a coordinator followed by a possessive keeps "her" possessive
            coordinated = self.next_tables[ROW_COORDINATOR, ids[:, 1:-1]]
            coordinated &= self.next_tables[ROW_POSSESSIVE, ids[:, 2:]]
            following[:, :-1] &= ~(coordinated & (rule[:, :-2] == RULE_OBJECT))
            triggered[:, :-1] |= following
            use_alternate = (rule > 0) & triggered & ~inside_word
            swapped = torch.where(use_alternate, self.alternate[ids], swapped)
        if mask is not None:
            swapped = torch.where(mask, swapped, ids)
        changed = (swapped != ids).any(dim=-1)
        swapped = swapped.to(input_ids.dtype)
        return (swapped[0], changed[0]) if squeeze else (swapped, changed)

    def map_back(
        self,
        counterfactual_probs: torch.Tensor,
        reference_probs: torch.Tensor | None = None,
        context_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """q: the counterfactual next-token distribution with each gendered token's mass moved back
        to its counterpart(s) — q(w) = p̃(σ(w)) for one-to-one pairs, mass-conserving for the rest.

        ``counterfactual_probs`` (..., V) are probabilities (not logits). ``reference_probs`` (same
        shape), the original context's distribution, decide how a token with two targets splits its
        mass (" her" -> " his"/" him" as the original teacher weighs them); without it the split is
        even. ``context_ids`` (...,), the last token of each position's context, keeps word pieces
        in place: after "Samp" the candidate "son" continues a word, so its mass is not moved to
        "daughter" (tokens with a leading space are words whatever precedes them). The result sums
        to what the input sums to."""
        if counterfactual_probs.shape[-1] != self.vocab_size:
            raise ValueError(
                f"distribution has {counterfactual_probs.shape[-1]} entries but the pair map covers "
                f"{self.vocab_size} tokens; build it with build_pair_map(tokenizer, "
                "vocab_size=model.config.vocab_size)"
            )
        weights = self._split_weights(reference_probs, counterfactual_probs)
        source_mass = counterfactual_probs.index_select(-1, self.source_ids)
        if context_ids is None:
            kept = torch.zeros_like(source_mass)
        else:
            if context_ids.shape != counterfactual_probs.shape[:-1]:
                raise ValueError(
                    f"context_ids shape {tuple(context_ids.shape)} must be the distribution's leading "
                    f"shape {tuple(counterfactual_probs.shape[:-1])}"
                )
            # (..., S): the source is a word piece here, so it keeps its own mass
            pinned = self.ends_word[context_ids].unsqueeze(-1) & self.starts_word[self.source_ids]
            kept = source_mass * pinned
            weights = weights * ~pinned.index_select(-1, self.edge_group)
        moved = counterfactual_probs.index_select(-1, self.edge_src) * weights
        out = counterfactual_probs.index_copy(-1, self.source_ids, kept)
        return out.index_add(-1, self.edge_dst, moved)

    def _split_weights(self, reference_probs: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        degree = torch.bincount(self.edge_group, minlength=self.source_ids.numel()).to(like.dtype)
        even = (1.0 / degree)[self.edge_group]
        if reference_probs is None or bool((degree == 1).all()):
            return even
        if reference_probs.shape != like.shape:
            raise ValueError(
                f"reference_probs shape {tuple(reference_probs.shape)} != counterfactual_probs "
                f"{tuple(like.shape)}"
            )
        ref = reference_probs.index_select(-1, self.edge_dst).to(like.dtype)
        total = torch.zeros(*ref.shape[:-1], self.source_ids.numel(), dtype=ref.dtype, device=ref.device)
        total = total.index_add(-1, self.edge_group, ref).index_select(-1, self.edge_group)
        # where the reference gives all targets zero mass, fall back to the even split
        return torch.where(total > 0, ref / total.clamp_min(torch.finfo(ref.dtype).tiny), even)


def build_pair_map(
    tokenizer,
    *,
    names: bool = False,
    lexicon: Lexicon | None = None,
    vocab_size: int | None = None,
) -> PairMap:
    """Build σ for ``tokenizer`` from the lexicon (the built-in one, plus first names when
    ``names=True``; off by default here, on in training: see :mod:`counterfactuals.lexicon`).
    ``vocab_size`` extends the map to a model whose embedding is larger than the tokenizer (padded
    vocabularies); extra ids map to themselves."""
    lexicon = lexicon if lexicon is not None else default_lexicon(names)
    tokenizer_size = _vocabulary_size(tokenizer)
    size = tokenizer_size if vocab_size is None else int(vocab_size)
    if size < tokenizer_size:
        raise ValueError(
            f"vocab_size={size} is smaller than the tokenizer's {tokenizer_size} tokens; pass the "
            "model's config.vocab_size (>= the tokenizer's) or leave it out"
        )

    # (source surface, target surface, rule) for every variant of every swap the lexicon makes
    variants: list[tuple[str, str, int]] = []
    for word in lexicon.swaps:
        for form in _case_forms(word, capitalized_only=word in lexicon.capitalized_only):
            for space in ("", " "):
                targets = lexicon.targets(word)
                variants.append((space + form, space + match_case(form, targets[0]), 0))
                if len(targets) > 1:
                    rule = _RULE_OF_WORD[word]
                    variants.append((space + form, space + match_case(form, targets[1]), rule))
    surfaces = sorted({s for src, dst, _ in variants for s in (src, dst)})
    token_of = dict(zip(surfaces, _single_token_ids(tokenizer, surfaces), strict=True))

    identity = torch.arange(size)
    sigma, alternate = identity.clone(), identity.clone()
    alternate_rule = torch.zeros(size, dtype=torch.long)
    for src_surface, dst_surface, rule in variants:
        src, dst = token_of[src_surface], token_of[dst_surface]
        if src is None or dst is None or src == dst:
            continue
        if rule:
            alternate[src], alternate_rule[src] = dst, rule
        elif sigma[src] == src:  # several surfaces can share a token in case-folding tokenizers
            sigma[src] = dst
    # an alternate needs a default target: a token whose default is not a single token has neither
    alternate_rule[sigma == identity] = 0
    alternate = torch.where(alternate_rule > 0, alternate, sigma)

    edge_src, edge_dst = _preimage_edges(sigma, alternate, alternate_rule)
    source_ids, edge_group = torch.unique(edge_src, return_inverse=True)
    tokens = tokenizer.convert_ids_to_tokens
    swapped, with_alternate = (sigma != identity).nonzero()[:, 0], (alternate_rule > 0).nonzero()[:, 0]
    swap_src = torch.cat([swapped, with_alternate])
    swap_dst = torch.cat([sigma[swapped], alternate[with_alternate]])
    texts = _token_texts(tokenizer)
    starts_word, ends_word = _word_edges(texts, size)
    return PairMap(
        sigma=sigma,
        alternate=alternate,
        alternate_rule=alternate_rule,
        next_tables=_next_tables(tokenizer, texts, size),
        starts_word=starts_word,
        ends_word=ends_word,
        edge_src=edge_src,
        edge_dst=edge_dst,
        edge_group=edge_group,
        source_ids=source_ids,
        pairs=tuple(zip(tokens(swap_src.tolist()), tokens(swap_dst.tolist()), strict=True)),
    )


def _preimage_edges(
    sigma: torch.Tensor, alternate: torch.Tensor, alternate_rule: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges u -> w for every w that the swap turns into u (see the module docstring), sorted by u."""
    identity = torch.arange(sigma.numel())
    swapped = (sigma != identity).nonzero().squeeze(-1)
    with_alternate = (alternate_rule > 0).nonzero().squeeze(-1)
    src = torch.cat([sigma[swapped], alternate[with_alternate]])
    dst = torch.cat([swapped, with_alternate])
    is_source = torch.zeros_like(sigma, dtype=torch.bool)
    is_source[src] = True
    # a one-way target that is not swapped itself may also just be itself ("God" stays "God")
    itself = (is_source & (sigma == identity)).nonzero().squeeze(-1)
    # a swapped token nothing swaps to ("Mrs": Mrs -> Mr one way) goes back the way it swaps
    orphans = (~is_source & (sigma != identity)).nonzero().squeeze(-1)
    src = torch.cat([src, itself, orphans])
    dst = torch.cat([dst, itself, sigma[orphans]])
    order = torch.argsort(src * sigma.numel() + dst)  # deterministic: by source, then target
    return src[order], dst[order]


def _vocabulary_size(tokenizer) -> int:
    if not callable(tokenizer) or not hasattr(tokenizer, "decode"):
        raise TypeError(f"expected a Hugging Face tokenizer, got {type(tokenizer).__name__}")
    size = len(tokenizer)
    probe = tokenizer(" he", add_special_tokens=False)["input_ids"] if size else []
    if size == 0 or not probe:
        raise ValueError(
            f"the tokenizer {type(tokenizer).__name__} has an empty vocabulary (len={size}), so no "
            "gendered token can be mapped. Load it with AutoTokenizer.from_pretrained(...); in "
            "transformers 5 build GPT2TokenizerFast(vocab=<encoder.json>, merges=<vocab.bpe>) — the "
            "vocab_file=/merges_file= keywords silently give an empty tokenizer"
        )
    return size


def _case_forms(word: str, *, capitalized_only: bool) -> list[str]:
    if capitalized_only:  # as in the text swap: title case only ("MS" is a degree or a disease)
        return [word[:1].upper() + word[1:]]
    return list(dict.fromkeys([word, word[:1].upper() + word[1:], word.upper()]))


def _single_token_ids(tokenizer, surfaces: Iterable[str]) -> list[int | None]:
    """The id of each surface when the tokenizer writes it as exactly one token in running text
    (after a line break), else None."""
    surfaces = list(surfaces)
    prefix = tokenizer(_CONTEXT, add_special_tokens=False)["input_ids"]
    encoded = tokenizer([_CONTEXT + s for s in surfaces], add_special_tokens=False)["input_ids"]
    ids: list[int | None] = []
    for surface, tokens in zip(surfaces, encoded, strict=True):
        one = len(tokens) == len(prefix) + 1 and tokens[: len(prefix)] == prefix
        # the decode check rejects byte-fallback or normalising tokenizers that would alter the word
        ok = one and tokenizer.decode(tokens[-1:]).strip() == surface.strip()
        ids.append(tokens[-1] if ok else None)
    return ids


def _token_texts(tokenizer) -> list[str]:
    """Each token's text as it appears in running text, leading space included: decoded after an
    anchor token, because some decoders drop a leading space at the start of a text."""
    anchor = tokenizer("a", add_special_tokens=False)["input_ids"]
    anchor_text = tokenizer.decode(anchor, clean_up_tokenization_spaces=False)
    texts = tokenizer.batch_decode(
        [anchor + [i] for i in range(len(tokenizer))], clean_up_tokenization_spaces=False
    )
    return [t[len(anchor_text) :] if t.startswith(anchor_text) else t for t in texts]


def _word_edges(texts: list[str], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(starts_word, ends_word): whether each token's text starts / ends with a word character."""
    starts, ends = torch.zeros(size, dtype=torch.bool), torch.zeros(size, dtype=torch.bool)
    starts[: len(texts)] = torch.tensor([t[:1].isalnum() for t in texts], dtype=torch.bool)
    ends[: len(texts)] = torch.tensor([t[-1:].isalnum() for t in texts], dtype=torch.bool)
    return starts, ends


def _next_tables(tokenizer, texts: list[str], size: int) -> torch.Tensor:
    """Row RULE_OBJECT: tokens after which "her" is an object; row RULE_PREDICATIVE: tokens after
    which "his" is predicative (both: any token starting with closing punctuation or a line break)."""
    closing = torch.zeros(size, dtype=torch.bool)
    closing[: len(texts)] = torch.tensor([_starts_closing(t) for t in texts], dtype=torch.bool)
    objects = closing | _word_table(tokenizer, size, OBJECT_FOLLOWERS)
    tables = torch.zeros(5, size, dtype=torch.bool)
    tables[RULE_OBJECT], tables[RULE_PREDICATIVE] = objects, closing
    tables[ROW_COORDINATOR] = _word_table(tokenizer, size, COORDINATORS)
    tables[ROW_POSSESSIVE] = _word_table(tokenizer, size, POSSESSIVE_DETERMINERS)
    return tables


def _starts_closing(text: str) -> bool:
    """Like the text rule: closing punctuation or a line break next, spaces before it allowed (" –"),
    but not the possessive "'s"."""
    if text[:1] in "\r\n" and text:
        return True
    stripped = text.lstrip(" \t")
    if stripped[:2] in ("'s", "’s"):
        return False
    return bool(stripped) and stripped[0] in CLOSING_PUNCTUATION


def _word_table(tokenizer, size: int, words: Iterable[str]) -> torch.Tensor:
    """Bool table of the single tokens " word" for each word (case as given, as in the text rule)."""
    surfaces = [f" {w}" for w in words]
    table = torch.zeros(size, dtype=torch.bool)
    for token in _single_token_ids(tokenizer, surfaces):
        if token is not None:
            table[token] = True
    return table
