"""Bias and utility evaluation: BOLD generation disparity between gendered prompts, and perplexity."""
