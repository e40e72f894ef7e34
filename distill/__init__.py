"""The knowledge-distillation trainer for causal LMs: the training loop, the distillation losses
(including counterfactual teacher-prediction perturbation) and the student model builders."""

from .layer_selection import select_teacher_layers  # noqa: F401  (issue 12)
