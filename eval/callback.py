"""``FairnessEvalCallback``: bias metrics of the model being trained, at every evaluation.

The only place where ``eval`` meets training. At each ``on_evaluate`` it scores the model on a small,
fast subset — the pronoun-probability gap (one forward pass per batch of templated contexts) and a
few hundred sampled generations of our built-in profession prompts — and logs the scalars through
the trainer (so every ``report_to`` integration gets them, with the ``eval/`` prefix in W&B), plus,
when W&B is active, a table of sample generations and the per-profession shares plot.

    trainer.add_callback(FairnessEvalCallback(tokenizer, trainer=trainer))

Under DDP every rank runs the same seeded subset (identical results), so logging stays in step
across ranks; only the main process writes files and W&B media.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .generation import GenerationSettings
from .report import plot_shares
from .suite import EvalSettings, evaluate_model


def fast_settings(seed: int = 0) -> EvalSettings:
    """Built-in prompts x 2 samples (220 generations of 20 tokens), no sentiment or perplexity
    (the trainer's own eval loss covers utility), 200 bootstrap resamples."""
    return EvalSettings(
        prompts="builtin",
        sentiment=False,
        generation=GenerationSettings(max_new_tokens=20, num_samples=2, batch_size=64, seed=seed),
        n_bootstrap=200,
        seed=seed,
        samples_per_category=2,
    )


class FairnessEvalCallback(TrainerCallback):
    def __init__(self, tokenizer, settings: EvalSettings | None = None, *, trainer=None) -> None:
        self.tokenizer = tokenizer
        self.settings = settings or fast_settings()
        self.trainer = trainer
        self.last_result: dict[str, Any] | None = None

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        model = _unwrap(model)
        was_training = model.training
        try:
            result = evaluate_model(
                model, self.tokenizer, self.settings, name=f"step {state.global_step}", progress=False
            )
        finally:
            model.train(was_training)
        self.last_result = result
        overall = result["disparity"]["unigram"]["overall"]
        metrics = {
            "eval_equitability_mean": overall["mean_equitability"],
            "eval_equitability_min": overall["min_equitability"],
            "eval_male_share": overall["male"],
            "eval_female_share": overall["female"],
            "eval_neutral_share": overall["neutral"],
            "eval_pronoun_gap": result["pronoun_gap"]["mean_gap"],
            "eval_pronoun_gap_abs": result["pronoun_gap"]["mean_abs_gap"],
            "eval_generations_per_second": result["timing"]["generations_per_second"],
        }
        if kwargs.get("metrics") is not None:
            kwargs["metrics"].update(metrics)  # so metric_for_best_model / early stopping can use them
        if self.trainer is not None:
            self.trainer.log(metrics)
        if state.is_world_process_zero:
            folder = Path(args.output_dir)
            folder.mkdir(parents=True, exist_ok=True)
            plot = plot_shares({"models": [result]}, folder / f"fairness-step-{state.global_step}.png")
            _log_wandb_media(args, result, plot, state.global_step)


def _unwrap(model):
    # DDP keeps the model in .module; generation needs the model itself. (Under FSDP1 the callback sees
    # the inner module and would bypass un-sharding: use FSDP2, DDP or DeepSpeed with this callback.)
    while hasattr(model, "module") and not hasattr(model, "generate"):
        model = model.module
    return model


def _log_wandb_media(args, result: dict[str, Any], plot: Path, step: int) -> None:
    if "wandb" not in (args.report_to or []):
        return
    import wandb

    if wandb.run is None:
        return
    # the training step in a column: tables of several evaluations can then be compared in one view
    table = wandb.Table(columns=["step", "category", "prompt", "continuation", "polarity"])
    for sample in result["samples"]:
        table.add_data(step, sample["category"], sample["prompt"], sample["continuation"], sample["polarity"])
    wandb.log({"eval/fairness_samples": table, "eval/fairness_shares": wandb.Image(str(plot))})
