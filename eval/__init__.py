"""Bias and utility evaluation: BOLD generation disparity between gendered prompts, pronoun-eliciting
generations, CrowS-Pairs and WinoBias by likelihood, and perplexity."""

from .likelihood import crows_pairs_score, winobias_score

__all__ = ["crows_pairs_score", "winobias_score"]
