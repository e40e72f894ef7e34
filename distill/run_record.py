"""What a finished run records beside its model, and the training summary a model card reads from it.

``distill.train`` writes, on the main process, when training ends:

- ``trainer_state.json`` (``Trainer.save_state``): steps, tokens seen when counted, the logged loss terms;
- ``training_run.json`` (:func:`write_run_record`): the framework versions, the number of processes and
  the W&B run, when there is one.

:func:`read_training_summary` reads both (``trainer_state.json`` from the newest ``checkpoint-N`` when the
folder itself has none) into a :class:`TrainingSummary`; anything a run did not record stays None, and a
card says so rather than guessing.
"""

from __future__ import annotations

import json
import math
import platform
import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["RUN_RECORD_NAME", "TrainingSummary", "read_training_summary", "write_run_record"]

RUN_RECORD_NAME = "training_run.json"
TRAINER_STATE_NAME = "trainer_state.json"
_VERSIONED = ("torch", "transformers", "accelerate", "peft", "datasets", "fairdistill")
LOSS_TERMS = ("loss", "loss_kd", "loss_clm", "loss_cos")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def framework_versions() -> dict[str, str]:
    """Python and the installed versions of the packages a run depends on (those installed)."""
    versions = {"python": platform.python_version()}
    for package in _VERSIONED:
        version = _version(package)
        if version:
            versions[package] = version
    return versions


def _wandb_run() -> dict[str, Any] | None:
    wandb = sys.modules.get("wandb")  # never imported here: only a run that used it has one
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is None:
        return None
    # getattr throughout: a W&B API change must not fail a run that has finished training
    settings = getattr(run, "settings", None)
    return {
        "id": getattr(run, "id", None),
        "project": getattr(run, "project", None),
        "entity": getattr(run, "entity", None) or None,
        "url": getattr(run, "url", None),  # None for offline runs: there is no link until `wandb sync`
        "offline": getattr(settings, "mode", None) == "offline",
    }


def write_run_record(trainer: Any, output_dir: str | Path) -> None:
    """``trainer_state.json`` and ``training_run.json`` in ``output_dir`` (main process only)."""
    if not trainer.is_world_process_zero():
        return
    trainer.save_state()
    record = {
        "versions": framework_versions(),
        "num_processes": trainer.accelerator.num_processes,
        "wandb": _wandb_run(),
    }
    path = Path(output_dir) / RUN_RECORD_NAME
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@dataclass
class TrainingSummary:
    """What the run recorded; None where it recorded nothing."""

    steps: int | None = None  # optimizer steps taken
    max_steps: int | None = None
    epochs: float | None = None
    tokens: int | None = None  # counted by Trainer (include_num_input_tokens_seen), or computed
    tokens_counted: bool = False  # True: Trainer counted them; False: steps x batch x block
    final_losses: dict[str, float] = field(default_factory=dict)  # the last logged training loss terms
    final_losses_step: int | None = None
    eval_losses: dict[str, float] = field(default_factory=dict)  # the last evaluation's loss terms
    versions: dict[str, str] = field(default_factory=dict)
    versions_recorded: bool = False  # False: the versions are the publishing machine's
    num_processes: int | None = None
    wandb: dict[str, Any] | None = None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _trainer_state(model_dir: Path) -> dict[str, Any] | None:
    state = _read(model_dir / TRAINER_STATE_NAME)
    if state is not None:
        return state
    steps = [
        (int(m.group(1)), p)
        for p in model_dir.glob("checkpoint-*")
        if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))
    ]
    for _, checkpoint in sorted(steps, reverse=True):
        state = _read(checkpoint / TRAINER_STATE_NAME)
        if state is not None:
            return state
    return None


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def read_training_summary(model_dir: str | Path | None, config: dict[str, Any]) -> TrainingSummary:
    """The training summary of the run in ``model_dir`` (see the module docstring)."""
    summary = TrainingSummary()
    record = _read(Path(model_dir) / RUN_RECORD_NAME) if model_dir is not None else None
    if record is not None:
        summary.versions = {k: str(v) for k, v in (record.get("versions") or {}).items()}
        summary.versions_recorded = bool(summary.versions)
        processes = record.get("num_processes")
        summary.num_processes = processes if isinstance(processes, int) and processes > 0 else None
        summary.wandb = record.get("wandb") if isinstance(record.get("wandb"), dict) else None
    if not summary.versions:
        summary.versions = framework_versions()
    state = _trainer_state(Path(model_dir)) if model_dir is not None else None
    if state is None:
        return summary
    steps = state.get("global_step")
    summary.steps = steps if isinstance(steps, int) else None
    summary.max_steps = state.get("max_steps") if isinstance(state.get("max_steps"), int) else None
    summary.epochs = _finite(state.get("epoch"))
    history = [entry for entry in state.get("log_history") or [] if isinstance(entry, dict)]
    for entry in reversed(history):
        if _finite(entry.get("loss")) is not None:
            summary.final_losses = {k: v for k in LOSS_TERMS if (v := _finite(entry.get(k))) is not None}
            summary.final_losses_step = entry.get("step")
            break
    for entry in reversed(history):
        if _finite(entry.get("eval_loss")) is not None:
            summary.eval_losses = {
                k: v for k in LOSS_TERMS if (v := _finite(entry.get(f"eval_{k}"))) is not None
            }
            break
    counted = state.get("num_input_tokens_seen")
    if isinstance(counted, int) and counted > 0:
        summary.tokens, summary.tokens_counted = counted, True
    elif summary.steps and summary.num_processes:
        per_step = [config.get(k) for k in ("per_device_train_batch_size", "gradient_accumulation_steps")]
        block = config.get("block_size")
        if all(isinstance(v, int) and v > 0 for v in [*per_step, block]):
            summary.tokens = summary.steps * per_step[0] * per_step[1] * summary.num_processes * block
    return summary
