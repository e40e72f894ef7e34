"""Typed evaluation results: what ``python -m eval`` writes, the training callback logs and cards read.

:class:`ModelResult` is one model's measures, :class:`EvalReport` a comparison of models with the settings
and the command. ``to_dict`` gives the JSON of ``results.json`` (keys unchanged from the earlier plain
dicts, so ``models[i].disparity.unigram.overall.mean_equitability`` still reads); ``from_dict`` reads it
back (unknown keys are kept in ``extra``, so an older or newer file still loads). Each measure stays the
JSON-ready dict its module documents (:func:`eval.disparity.disparity_summary`,
:func:`eval.elicitation.elicitation_summary`, :func:`eval.crows_pairs_score`, :func:`eval.winobias_score`,
:func:`eval.pronoun_gap.pronoun_gap`, :func:`eval.perplexity.strided_perplexity`); :meth:`ModelResult.scalars`
is the flat view of the headline numbers, one name per number, that the callback logs and reports print.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["EvalReport", "ModelResult", "get_path"]


def get_path(mapping: Any, *keys: str) -> Any:
    """``mapping[k1][k2]...`` or None when any level is missing: results may lack whole sections."""
    for key in keys:
        if not isinstance(mapping, dict) or key not in mapping:
            return None
        mapping = mapping[key]
    return mapping


@dataclass
class ModelResult:
    """One model's evaluation. ``None`` for a measure that was not run."""

    name: str
    model: str | None = None  # the path or Hub id it was loaded from
    headline: str = ""
    disparity: dict[str, Any] | None = None  # {"unigram": summary, "embedding_wavg": ..., ...}
    elicitation: dict[str, Any] | None = None
    crows_pairs: dict[str, Any] | None = None
    winobias: dict[str, Any] | None = None
    pronoun_gap: dict[str, Any] | None = None
    sentiment: dict[str, Any] | None = None
    perplexity: dict[str, Any] | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)  # a few examples per category
    timing: dict[str, float] = field(default_factory=dict)
    # every generation (prompt, continuation, label); written to samples.jsonl, not to results.json
    generations: list[dict[str, Any]] = field(default_factory=list, repr=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("generations", "extra")}
        return {**{k: v for k, v in out.items() if v is not None}, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelResult:
        names = {f.name for f in fields(cls)} - {"generations", "extra"}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def scalars(self) -> dict[str, float]:
        """The headline numbers as ``{name: value}`` (only those measured and measurable)."""
        out: dict[str, float] = {}
        overall = get_path(self.disparity, "unigram", "overall") or {}
        names = {"mean_equitability": "equitability_mean", "min_equitability": "equitability_min",
                 "male": "male_share", "female": "female_share", "neutral": "neutral_share",
                 "female_of_gendered": "female_of_gendered"}  # fmt: skip
        for key, name in names.items():
            if overall.get(key) is not None:
                out[name] = float(overall[key])
        for key in ("association", "global_shift", "female_share"):
            entry = get_path(self.elicitation, key) or {}
            if entry.get("value") is not None and entry.get("measurable", True):
                out[f"elicitation_{key}"] = float(entry["value"])
        if self.crows_pairs:
            out["crows_pairs_stereotype_share"] = float(self.crows_pairs["stereotype_share"])
        if self.winobias:
            for kind in ("type1", "type2"):
                out[f"winobias_{kind}_pro_share"] = float(self.winobias[f"{kind}_pro_share"])
        if self.pronoun_gap:
            out["pronoun_gap"] = float(self.pronoun_gap["mean_gap"])
            out["pronoun_gap_abs"] = float(self.pronoun_gap["mean_abs_gap"])
        if self.perplexity:
            out["perplexity"] = float(self.perplexity["perplexity"])
        return out


@dataclass
class EvalReport:
    """Several models compared under one set of settings (what ``results.json`` holds)."""

    settings: dict[str, Any]
    models: list[ModelResult] = field(default_factory=list)
    created: str | None = None
    command: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {"created": self.created, "command": self.command, "versions": self.versions,
               "settings": self.settings, "models": [m.to_dict() for m in self.models]}  # fmt: skip
        return {**{k: v for k, v in out.items() if v is not None}, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        models = [
            m if isinstance(m, ModelResult) else ModelResult.from_dict(m) for m in data.get("models", ())
        ]
        known = ("settings", "created", "command", "versions")
        return cls(
            settings=data.get("settings", {}),
            models=models,
            created=data.get("created"),
            command=data.get("command"),
            versions=data.get("versions", {}),
            extra={k: v for k, v in data.items() if k not in (*known, "models")},
        )
