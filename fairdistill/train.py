"""Launch a distillation run with bias measured during training.

    accelerate launch -m fairdistill.train --config recipes/<name>.yaml [--key value ...]

The same launcher as ``accelerate launch -m distill.train`` (same recipes, same arguments), plus what
only the application layer may combine: with ``--fairness_eval true`` the student's bias is scored at
every evaluation by :class:`eval.callback.FairnessEvalCallback` (distill never imports eval).
"""

from __future__ import annotations

from distill.train import cli as distill_cli
from distill.trainer import CounterfactualDistillationTrainer


def fairness_callback(trainer: CounterfactualDistillationTrainer):
    """The callback ``fairness_eval`` adds: bias and perplexity at every evaluation, logged."""
    from eval.callback import FairnessEvalCallback

    return FairnessEvalCallback(trainer.processing_class, trainer=trainer)


def cli() -> None:
    distill_cli(fairness_callback=fairness_callback)


if __name__ == "__main__":
    cli()
