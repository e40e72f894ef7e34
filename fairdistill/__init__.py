"""fairdistill: distil a causal LM into a smaller, fairer student (counterfactual role reversal + CDA).

The application layer (ARCHITECTURE.md): it combines ``distill`` (training) and ``eval`` (measurement),
which never import each other, and holds the command line, the model card and the main job's pieces.
Everything a user needs is importable from here::

    from fairdistill import DistillationConfig, CounterfactualDistillationTrainer, evaluate_model

Names are resolved on first use, so ``import fairdistill`` (and the ``fairdistill`` command's help)
does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS = {
    # training
    "DistillationConfig": "distill.config",
    "CounterfactualDistillationTrainer": "distill.trainer",
    "select_teacher_layers": "distill.layer_selection",
    "student_from_teacher_layers": "distill.student",
    "load_causal_lm": "distill.models",
    "load_tokenizer": "distill.models",
    "prepare_dataset": "distill.trainer_data",
    "kd_loss": "distill.losses",
    "role_reversal": "distill.losses",
    "role_reversal_kd_loss": "distill.losses",
    # counterfactuals
    "build_pair_map": "counterfactuals",
    "swap_gender": "counterfactuals",
    "augment_dataset": "counterfactuals",
    "default_lexicon": "counterfactuals",
    "load_lexicon": "counterfactuals",
    # evaluation
    "evaluate_model": "eval.suite",
    "run_evaluation": "eval.suite",
    "EvalSettings": "eval.suite",
    "crows_pairs_score": "eval",
    "winobias_score": "eval",
    "FairnessEvalCallback": "eval.callback",
    # publishing (the student folder, its model card, the Hub push)
    "publish": "fairdistill.publish_cli",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fairdistill' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
