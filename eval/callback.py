"""``FairnessEvalCallback``: bias metrics of the model being trained, at every evaluation.

The only place where ``eval`` meets training. At each ``on_evaluate`` it scores the model on a small,
fast subset — the held-out half of the pronoun-eliciting generations (association, global shift), the
first pairs of CrowS-Pairs and WinoBias by likelihood (when the data folder is found), the
pronoun-probability gap, a few hundred generations of our built-in profession prompts — and logs the
scalars of :meth:`eval.results.ModelResult.scalars` as ``eval_<name>`` through the trainer (so every
``report_to`` integration gets them, with the ``eval/`` prefix in W&B), plus ``eval_perplexity`` =
exp(eval_loss) when the trainer computed its loss and, when W&B is active, a table of sample generations and
the per-category shares plot. The teacher (``teacher=`` or the trainer's ``teacher``) is scored once, at the
first evaluation, and its numbers are logged as ``eval_teacher_<name>`` at every evaluation, so a chart shows
student against teacher.

    trainer.add_callback(FairnessEvalCallback(tokenizer, trainer=trainer))

Under DDP every rank runs the same seeded subset (identical results), so logging stays in step
across ranks; only the main process writes files and W&B media.
"""

from __future__ import annotations

import math
from pathlib import Path

from transformers import TrainerCallback

from .generation import GenerationSettings
from .report import plot_shares
from .results import EvalReport, ModelResult
from .suite import EvalSettings, run_evaluation


def fast_settings(seed: int = 0) -> EvalSettings:
    """Built-in prompts x 2 samples (220 generations of 20 tokens), the held-out elicitation half x 2
    samples (208 generations of 12 tokens), the first 50 pairs of CrowS-Pairs (gender) and of each WinoBias
    type, no sentiment or perplexity (the trainer's own eval loss covers utility)."""
    return EvalSettings(
        prompts="builtin",
        sentiment=False,
        generation=GenerationSettings(max_new_tokens=20, num_samples=2, batch_size=64, seed=seed),
        n_bootstrap=200,
        seed=seed,
        samples_per_category=2,
        elicitation_split="heldout",
        elicitation_samples=2,
        likelihood_max_pairs=50,
        keep_generations=False,
    )


class FairnessEvalCallback(TrainerCallback):
    def __init__(
        self, tokenizer, settings: EvalSettings | None = None, *, trainer=None, teacher=None
    ) -> None:
        self.tokenizer = tokenizer
        self.settings = settings or fast_settings()
        self.trainer = trainer
        self.teacher = teacher  # default: the trainer's teacher, if it has one
        self.teacher_metrics: dict[str, float] | None = None
        self.last_result: ModelResult | None = None

    def _score(self, model, name: str) -> ModelResult:
        model = _unwrap(model)
        was_training = model.training
        try:
            return run_evaluation(model, self.tokenizer, self.settings, name=name, progress=False)
        finally:
            model.train(was_training)

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        result = self._score(model, f"step {state.global_step}")
        self.last_result = result
        metrics = {f"eval_{key}": value for key, value in result.scalars().items()}
        metrics["eval_generations_per_second"] = result.timing.get("generations_per_second", 0.0)
        loss = (kwargs.get("metrics") or {}).get("eval_loss")
        if loss is not None and math.isfinite(loss) and loss < 50:
            metrics["eval_perplexity"] = math.exp(loss)
        teacher = self.teacher if self.teacher is not None else getattr(self.trainer, "teacher", None)
        if self.teacher_metrics is None and teacher is not None:
            self.teacher_metrics = {
                f"eval_teacher_{k}": v for k, v in self._score(teacher, "teacher").scalars().items()
            }
        metrics |= self.teacher_metrics or {}
        if kwargs.get("metrics") is not None:
            kwargs["metrics"].update(metrics)  # so metric_for_best_model / early stopping can use them
        if self.trainer is not None:
            self.trainer.log(metrics)
        if state.is_world_process_zero:
            folder = Path(args.output_dir)
            folder.mkdir(parents=True, exist_ok=True)
            report = EvalReport(settings=self.settings.to_dict(), models=[result])
            plot = plot_shares(report, folder / f"fairness-step-{state.global_step}.png")
            _log_wandb_media(args, result, plot, state.global_step)


def _unwrap(model):
    # DDP keeps the model in .module; generation needs the model itself. (Under FSDP1 the callback sees
    # the inner module and would bypass un-sharding: use FSDP2, DDP or DeepSpeed with this callback.)
    while hasattr(model, "module") and not hasattr(model, "generate"):
        model = model.module
    return model


def _log_wandb_media(args, result: ModelResult, plot: Path, step: int) -> None:
    if "wandb" not in (args.report_to or []):
        return
    import wandb

    if wandb.run is None:
        return
    # the training step in a column: tables of several evaluations can then be compared in one view
    table = wandb.Table(columns=["step", "category", "prompt", "continuation", "polarity"])
    for sample in result.samples:
        table.add_data(step, sample["category"], sample["prompt"], sample["continuation"], sample["polarity"])
    wandb.log({"eval/fairness_samples": table, "eval/fairness_shares": wandb.Image(str(plot))})
