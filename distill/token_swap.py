"""The run's token swap σ, built from its config: the one place that decides which pair map a run (the
trainer, the launcher attaching a teacher cache) and a teacher cache written for it use, so that both
see the same lexicon (``config.lexicon``, else the built-in one) and the same ``swap_names``."""

from __future__ import annotations

from counterfactuals import PairMap, build_pair_map, load_lexicon

from .config import DistillationConfig


def run_pair_map(
    config: DistillationConfig, tokenizer, vocab_size: int, *, counterfactual: bool | None = None
) -> PairMap | None:
    """The token swap of ``config`` over a ``vocab_size``-token vocabulary, or None when there is none.
    ``counterfactual`` says whether one is wanted; by default exactly when perturbation is on ("perturbation
    on" is ``config.perturbation is not None``). The teacher-cache writer passes True to store the
    counterfactual view of a recipe that trains without perturbation."""
    if counterfactual is None:
        counterfactual = config.perturbation is not None
    if not counterfactual:
        return None
    lexicon = None if config.lexicon is None else load_lexicon(config.lexicon)
    return build_pair_map(tokenizer, names=config.swap_names, lexicon=lexicon, vocab_size=vocab_size)
