"""Gender counterfactuals of text and token ids: the lexicon, text swap, token-level pair map, CDA.

This package knows nothing of training: it turns text and token ids into their gender
counterfactuals, and maps a next-token distribution back through the swap.
"""

from .cda import CDAError, CounterfactualAugmenter, augment_dataset
from .lexicon import GenderedPair, Lexicon, LexiconError, default_lexicon, load_lexicon
from .pair_map import PairMap, build_pair_map
from .swap import TextSwapper, swap_gender

__all__ = [
    "CDAError",
    "CounterfactualAugmenter",
    "GenderedPair",
    "Lexicon",
    "LexiconError",
    "PairMap",
    "TextSwapper",
    "augment_dataset",
    "build_pair_map",
    "default_lexicon",
    "load_lexicon",
    "swap_gender",
]
