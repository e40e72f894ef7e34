"""Reports people read: a Markdown table, two plots, and the JSON with every number behind them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .intervals import MIN_GENDERED  # noqa: E402
from .results import EvalReport, ModelResult  # noqa: E402


def _ci(values: list[float] | None, form: str = ".2f") -> str:
    return f" [{values[0]:{form}}, {values[1]:{form}}]" if values else ""


def _as_report(report: EvalReport | dict[str, Any]) -> EvalReport:
    return report if isinstance(report, EvalReport) else EvalReport.from_dict(report)


def _estimate(entry: dict[str, Any] | None, form: str = "+.2f") -> str:
    if not entry:
        return "—"
    if not entry.get("measurable", True) or entry.get("value") is None:
        return f"not measurable ({entry.get('n', 0)} gendered)"
    return f"{entry['value']:{form}}{_ci(entry.get('ci'), form)}"


def _share(entry: dict[str, Any] | None, key: str, ci_key: str, n_key: str) -> str:
    if not entry:
        return "—"
    return f"{entry[key]:.2f}{_ci(entry.get(ci_key))} (n={entry[n_key]})"


def markdown_report(report: EvalReport | dict[str, Any]) -> str:
    """The comparison tables (one row per model), per-occupation and per-profession shares, as Markdown."""
    report = _as_report(report)
    models = report.models
    lines = [
        "### Headline: association and global shift (pronoun elicitation); likelihood benchmarks",
        "",
        "| model | association ↓ | global shift (0 = balance) "
        "| CrowS-Pairs stereotype share (0.5 = none) "
        "| WinoBias type 1 pro share | WinoBias type 2 pro share | perplexity ↓ |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in models:
        e = m.elicitation or {}
        ppl = (m.perplexity or {}).get("perplexity")
        lines.append(
            f"| {m.name} | {_estimate(e.get('association'))} | {_estimate(e.get('global_shift'))} "
            f"| {_share(m.crows_pairs, 'stereotype_share', 'ci', 'n_pairs')} "
            f"| {_share(m.winobias, 'type1_pro_share', 'type1_ci', 'type1_n_pairs')} "
            f"| {_share(m.winobias, 'type2_pro_share', 'type2_ci', 'type2_n_pairs')} "
            f"| {'—' if ppl is None else f'{ppl:.2f}'} |"
        )
    lines += [
        "",
        "### BOLD profession protocol (for comparability with the paper)",
        "",
        "| model | female share of gendered (0.5 = balance) | gendered / all generations "
        "| mean equitability (1 = parity) | worst profession | pronoun gap mean / mean abs "
        "| VADER positive gap, actors − actresses |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in models:
        overall = ((m.disparity or {}).get("unigram") or {}).get("overall")
        gap = m.pronoun_gap or {}
        vader = (m.sentiment or {}).get("vader")
        gap_text = f"{gap['mean_gap']:+.2f} / {gap['mean_abs_gap']:.2f}" if gap else "—"
        sentiment = "—" if vader is None else f"{vader['positive_gap']:+.1%}"
        if overall is None:
            lines.append(f"| {m.name} | — | — | — | — | {gap_text} | {sentiment} |")
            continue
        share = overall.get("female_of_gendered")
        share_text = (
            f"{share:.2f}{_ci((overall.get('ci') or {}).get('female_of_gendered'))}"
            if overall.get("measurable", True) and share is not None
            else f"not measurable ({overall.get('n_gendered', 0)} gendered)"
        )
        if overall.get("equitability_measurable", True):
            equit = f"{overall['mean_equitability']:.2f}"
            worst = f"{overall['worst_category']} {overall['min_equitability']:.2f}"
        else:
            equit = (
                f"not measurable ({overall.get('measurable_categories', 0)} of {overall['n_categories']} "
                f"professions with >= {MIN_GENDERED} gendered)"
            )
            worst = "—"
        lines.append(
            f"| {m.name} | {share_text} | {overall.get('n_gendered', '?')} / {overall['n']} "
            f"| {equit} | {worst} "
            f"| {gap_text} | {sentiment} |"
        )
    lines += ["", _legend(report)]
    lines += _occupation_table(models) + _profession_table(models)
    return "\n".join(lines) + "\n"


def _occupation_table(models: list[ModelResult]) -> list[str]:
    with_data = [m for m in models if m.elicitation]
    if not with_data:
        return []
    nouns = list(dict.fromkeys(n for m in with_data for n in m.elicitation["occupations"]))
    lines = [
        "",
        "### Female share of gendered continuations per occupation (pronoun elicitation)",
        "",
        "| occupation | WinoBias label | "
        + " | ".join(f"{m.name}: female / gendered" for m in with_data)
        + " |",
        "|---|---" + "|---" * len(with_data) + "|",
    ]
    for noun in nouns:
        cells, label = [], "—"
        for m in with_data:
            o = m.elicitation["occupations"].get(noun)
            if o is None:
                cells.append("")
                continue
            label = o["stereotype"] or "—"
            female = round((o["female_share"] or 0.0) * o["n_gendered"])
            text = f"{female} / {o['n_gendered']}"
            cells.append(
                f"{o['female_share']:.2f} ({text})" if o["measurable"] else f"not measurable ({text})"
            )
        lines.append(f"| {noun} | {label} | " + " | ".join(cells) + " |")
    return lines


def _profession_table(models: list[ModelResult]) -> list[str]:
    with_data = [m for m in models if m.disparity]
    if not with_data:
        return []
    categories = sorted({c for m in with_data for c in m.disparity["unigram"]["categories"]})
    lines = [
        "",
        "### BOLD: male / female share of generations per profession (counts in brackets)",
        "",
        "| profession | " + " | ".join(f"{m.name} male / female (of n)" for m in with_data) + " |",
        "|---" * (len(with_data) + 1) + "|",
    ]
    for category in categories:
        cells = []
        for m in with_data:
            c = m.disparity["unigram"]["categories"].get(category)
            if c is None:
                cells.append("")
                continue
            male, female = round(c["male"] * c["n"]), round(c["female"] * c["n"])
            cells.append(f"{c['male']:.0%} / {c['female']:.0%} ({male} / {female} of {c['n']})")
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    return lines


def _legend(report: EvalReport) -> str:
    settings = report.settings
    gen = settings["generation"]
    headlines = "".join(f"Headline, {m.name}: {m.headline}  \n" for m in report.models)
    return headlines + (
        "**Association** = female share of gendered continuations over WinoBias's female-labelled "
        "occupations minus over its male-labelled ones, after our pronoun-eliciting templates (first "
        "gendered pronoun of "
        f"each continuation; {settings.get('elicitation_samples', '?')} samples per prompt, split "
        f"{settings.get('elicitation_split', '?')}); 0 = no association, 1 = complete stereotyping. **Global "
        "shift** = overall female share − 0.5. 95% intervals: delta method with the variance within prompts "
        "(this model on these prompts). An estimate resting on fewer than "
        f"{MIN_GENDERED} gendered outputs is reported as not measurable. CrowS-Pairs: share of pairs whose "
        "more-stereotypical sentence has the higher log-likelihood (after BOS/EOS, as "
        "lm-evaluation-harness); WinoBias: share of pro-/anti-stereotyped pairs preferring the pro sentence; "
        f"Wilson 95% intervals over pairs. BOLD protocol: prompts {settings['prompts']} "
        f"({settings['per_category']} per category for "
        f"BOLD); {gen['num_samples']} samples per prompt, top-k {gen['top_k']}, top-p {gen['top_p']}, "
        f"temperature {gen['temperature']}, {gen['max_new_tokens']} new tokens, seed {gen['seed']}; labels "
        "by BOLD's unigram gender polarity; equitability = min(f/m, m/f) per profession, no interval (none "
        "holds coverage at these counts). Pronoun gap: mean of log P(he, him, his) − log P(she, her) for "
        "the next "
        "token after templated profession contexts (> 0 leans male). Sentiment gap: VADER positive share, "
        "actors minus actresses (BOLD gender domain)."
    )


def plot_shares(report: EvalReport | dict[str, Any], path: Path) -> Path:
    """Per BOLD profession (or, without BOLD, per elicitation occupation): the male and female share of each
    model's generations, side by side, with the counts written beside the bars; empty rows are marked."""
    report = _as_report(report)
    models = report.models
    rows_by_model = {m.name: _share_rows(m) for m in models}
    labels = list(dict.fromkeys(label for rows in rows_by_model.values() for label in rows))
    width = max(5.5 * len(models), 6.5)
    fig, axes = plt.subplots(
        1, max(len(models), 1), figsize=(width, 0.32 * len(labels) + 2.2), sharey=True, squeeze=False
    )
    axes = axes[0]
    y = np.arange(len(labels))
    for ax, m in zip(axes, models, strict=False):
        rows = rows_by_model[m.name]
        male = [rows.get(c, (0, 0, 0))[0] for c in labels]
        female = [rows.get(c, (0, 0, 0))[1] for c in labels]
        n = [rows.get(c, (0, 0, 0))[2] for c in labels]
        share_m = [a / b if b else 0.0 for a, b in zip(male, n, strict=True)]
        share_f = [a / b if b else 0.0 for a, b in zip(female, n, strict=True)]
        ax.barh(y - 0.2, share_m, height=0.4, color="#4477aa", label="male")
        ax.barh(y + 0.2, share_f, height=0.4, color="#ee6677", label="female")
        for k in range(len(labels)):
            text = (
                "no data"
                if not n[k]
                else (
                    "no gendered output"
                    if male[k] + female[k] == 0
                    else f"{male[k]}M / {female[k]}F of {n[k]}"
                )
            )
            ax.text(1.02, y[k], text, va="center", fontsize=7, transform=ax.get_yaxis_transform())
        ax.set_title(m.name, fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of generations")
        ax.grid(axis="x", alpha=0.3)
        if not labels:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    axes[0].set_yticks(y, [c.replace("_", " ") for c in labels], fontsize=8)
    axes[0].invert_yaxis()
    axes[-1].legend(loc="lower right", fontsize=8)
    source = (
        "BOLD professions, unigram polarity" if any(m.disparity for m in models) else "pronoun elicitation"
    )
    fig.suptitle(f"Gender of generations per category\n({source})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.savefig(path, dpi=120, bbox_inches="tight")  # and keep every label inside the image
    plt.close(fig)
    return path


def _share_rows(m: ModelResult) -> dict[str, tuple[int, int, int]]:
    """label -> (male, female, all) counts of a model's generations."""
    if m.disparity:
        cats = m.disparity["unigram"]["categories"]
        return {c: (round(v["male"] * v["n"]), round(v["female"] * v["n"]), v["n"]) for c, v in cats.items()}
    if m.elicitation:
        out = {}
        for noun, o in m.elicitation["occupations"].items():
            female = round((o["female_share"] or 0.0) * o["n_gendered"])
            out[noun] = (o["n_gendered"] - female, female, o["n"])
        return out
    return {}


def plot_disparity_vs_perplexity(report: EvalReport | dict[str, Any], path: Path) -> Path:
    """Fairness against utility: one point per model -- the association of pronoun elicitation (else BOLD's
    female share of gendered generations) with its 95% interval, against perplexity."""
    report = _as_report(report)
    fig, ax = plt.subplots(figsize=(6.0, 4.4))
    use_association = any(m.elicitation for m in report.models)
    perplexities = []
    for m in report.models:
        ppl = (m.perplexity or {}).get("perplexity", float("nan"))
        perplexities.append(ppl)
        if use_association:
            entry = (m.elicitation or {}).get("association") or {}
        else:
            overall = ((m.disparity or {}).get("unigram") or {}).get("overall") or {}
            entry = {
                "value": overall.get("female_of_gendered"),
                "ci": (overall.get("ci") or {}).get("female_of_gendered"),
                "measurable": overall.get("measurable", False),
            }
        if entry.get("value") is None or not entry.get("measurable", True):
            ax.annotate(
                f"{m.name}: not measurable", (0.02, 0.95 - 0.06 * len(perplexities)), xycoords="axes fraction"
            )
            continue
        (point,) = ax.plot([ppl], [entry["value"]], "o")
        if entry.get("ci"):
            ax.vlines([ppl], *entry["ci"], color=point.get_color(), alpha=0.6, linewidth=2)
        ax.annotate(m.name, (ppl, entry["value"]), textcoords="offset points", xytext=(6, 6))
    if perplexities and all(np.isfinite(perplexities)):
        ax.set_xscale("log")  # a half-trained student and its teacher can be orders of magnitude apart
    ax.set_xlabel("perplexity (lower is better)")
    ax.set_ylabel("association (0 = none)" if use_association else "female share of gendered (0.5 = balance)")
    ax.grid(alpha=0.3)
    ax.set_title("Gender association vs perplexity" if use_association else "Gender balance vs perplexity")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(report: EvalReport | dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``results.json``, ``report.md``, ``shares.png``, ``disparity_vs_perplexity.png`` in ``out_dir``."""
    report = _as_report(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "results.json",
        "markdown": out / "report.md",
        "shares": out / "shares.png",
        "tradeoff": out / "disparity_vs_perplexity.png",
    }
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2, default=str), encoding="utf-8")
    paths["markdown"].write_text("# fairdistill evaluation\n\n" + markdown_report(report), encoding="utf-8")
    plot_shares(report, paths["shares"])
    plot_disparity_vs_perplexity(report, paths["tradeoff"])
    return paths
