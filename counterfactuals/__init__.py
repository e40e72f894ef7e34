"""Gender counterfactuals of text and token ids: the lexicon, text swap, token-level pair map, CDA.

This package knows nothing of training: it turns text and token ids into their gender
counterfactuals, and maps a next-token distribution back through the swap.

``PairMap`` and ``build_pair_map`` need torch; they are imported on first use (module
``__getattr__``), so that text-only work (``fairdistill-cda swap``/``augment``) starts without torch.
"""

from typing import TYPE_CHECKING

from .cda import CDAError, CounterfactualAugmenter, augment_dataset
from .lexicon import GenderedPair, Lexicon, LexiconError, default_lexicon, load_lexicon
from .swap import TextSwapper, swap_gender

if TYPE_CHECKING:
    from .pair_map import PairMap, build_pair_map

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

_NEED_TORCH = ("PairMap", "build_pair_map")


def __getattr__(name: str):
    if name in _NEED_TORCH:
        from . import pair_map

        return getattr(pair_map, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
