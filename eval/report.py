"""Reports people read: a Markdown table, two plots, and the JSON with every number behind them."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _ci(values: list[float] | None) -> str:
    return f" [{values[0]:.2f}, {values[1]:.2f}]" if values else ""


def markdown_report(report: dict[str, Any]) -> str:
    """The comparison table (one row per model) and the per-profession shares, as Markdown."""
    lines = ["| model | mean equitability (1 = parity) | worst profession | male | female | neutral "
             "| pronoun gap mean / mean abs | perplexity | VADER positive gap, actors − actresses |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for result in report["models"]:
        overall = result["disparity"]["unigram"]["overall"]
        worst = overall["worst_category"]
        gap = result["pronoun_gap"]
        ppl = result.get("perplexity", {}).get("perplexity")
        vader = result.get("sentiment", {}).get("vader")
        sentiment = "" if vader is None else f"{vader['positive_gap']:+.1%}"
        equitability = (
            f"{overall['mean_equitability']:.2f}{_ci((overall['ci'] or {}).get('mean_equitability'))}"
        )
        lines.append(
            f"| {result['name']} | {equitability} "
            f"| {worst} {overall['min_equitability']:.2f} | {overall['male']:.1%} | {overall['female']:.1%} "
            f"| {overall['neutral']:.1%} | {gap['mean_gap']:+.2f} / {gap['mean_abs_gap']:.2f} "
            f"| {'' if ppl is None else f'{ppl:.2f}'} | {sentiment} |"
        )
    lines += ["", _legend(report), "", "### Male / female share of generations per profession", ""]
    categories = sorted({c for r in report["models"] for c in r["disparity"]["unigram"]["categories"]})
    lines.append(
        "| profession | " + " | ".join(f"{r['name']} male / female" for r in report["models"]) + " |"
    )
    lines.append("|---" * (len(report["models"]) + 1) + "|")
    for category in categories:
        cells = []
        for result in report["models"]:
            shares = result["disparity"]["unigram"]["categories"].get(category)
            cells.append("" if shares is None else f"{shares['male']:.0%} / {shares['female']:.0%}")
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _legend(report: dict[str, Any]) -> str:
    settings = report["settings"]
    gen = settings["generation"]
    headlines = "".join(f"Headline, {m['name']}: {m['headline']}  \n" for m in report["models"])
    return headlines + (
        f"Equitability per profession = min(f/m, m/f) of the shares of generations labelled female / male by "
        f"BOLD's unigram gender polarity; mean over professions with a {report['settings']['n_bootstrap']}-"
        f"resample bootstrap 95% CI over prompts. Prompts: {settings['prompts']} "
        f"({settings['per_category']} per category for BOLD); {gen['num_samples']} samples per prompt, "
        f"top-k {gen['top_k']}, top-p {gen['top_p']}, temperature {gen['temperature']}, "
        f"{gen['max_new_tokens']} new tokens, seed {gen['seed']}. Pronoun gap: mean of "
        "log P(he, him, his) - log P(she, her) for the next token after templated profession contexts "
        "(> 0 leans male). Sentiment gap: VADER positive share, actors minus actresses (BOLD gender domain)."
    )


def plot_shares(report: dict[str, Any], path: Path) -> Path:
    """Per profession: the male and female share of each model's generations, side by side."""
    models = report["models"]
    categories = sorted({c for r in models for c in r["disparity"]["unigram"]["categories"]})
    fig, axes = plt.subplots(
        1, len(models), figsize=(4.5 * len(models), 0.35 * len(categories) + 1.8), sharey=True
    )
    axes = np.atleast_1d(axes)
    y = np.arange(len(categories))
    for ax, result in zip(axes, models, strict=True):
        cats = result["disparity"]["unigram"]["categories"]
        male = [cats.get(c, {}).get("male", 0.0) for c in categories]
        female = [cats.get(c, {}).get("female", 0.0) for c in categories]
        ax.barh(y - 0.2, male, height=0.4, color="#4477aa", label="male")
        ax.barh(y + 0.2, female, height=0.4, color="#ee6677", label="female")
        ax.set_title(result["name"])
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of generations")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, [c.replace("_", " ") for c in categories])
    axes[0].invert_yaxis()
    axes[-1].legend(loc="lower right")
    # one model gives a narrow figure: wrap the title to its width (about 11 characters per inch)
    title = "Gender polarity of generations per profession (BOLD unigram)"
    fig.suptitle(textwrap.fill(title, width=int(fig.get_figwidth() * 11)))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # and keep every label inside the image
    plt.close(fig)
    return path


def plot_disparity_vs_perplexity(report: dict[str, Any], path: Path) -> Path:
    """Fairness against utility: one point per model, with the bootstrap CI of the equitability."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for result in report["models"]:
        overall = result["disparity"]["unigram"]["overall"]
        ppl = result.get("perplexity", {}).get("perplexity", float("nan"))
        y, ci = (
            overall["mean_equitability"],
            overall["ci"].get("mean_equitability") if overall["ci"] else None,
        )
        (point,) = ax.plot([ppl], [y], "o")
        if ci:  # drawn as it is: the interval of a mean of minima can sit beside the estimate
            ax.vlines([ppl], ci[0], ci[1], color=point.get_color(), alpha=0.6, linewidth=2)
        ax.annotate(result["name"], (ppl, y), textcoords="offset points", xytext=(6, 6))
    perplexities = [r.get("perplexity", {}).get("perplexity", float("nan")) for r in report["models"]]
    if all(np.isfinite(perplexities)):
        ax.set_xscale("log")  # a half-trained student and its teacher can be orders of magnitude apart
    ax.set_xlabel("perplexity (lower is better)")
    ax.set_ylabel("mean equitability (1 = parity)")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title("Disparity vs perplexity")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``results.json``, ``report.md``, ``shares.png``, ``disparity_vs_perplexity.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "results.json",
        "markdown": out / "report.md",
        "shares": out / "shares.png",
        "tradeoff": out / "disparity_vs_perplexity.png",
    }
    paths["json"].write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    paths["markdown"].write_text("# fairdistill evaluation\n\n" + markdown_report(report), encoding="utf-8")
    plot_shares(report, paths["shares"])
    plot_disparity_vs_perplexity(report, paths["tradeoff"])
    return paths
