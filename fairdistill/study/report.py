"""The study's report: ``results.json`` (everything), ``report.md`` (the tables and the design as written
before the run) and three PNGs, all rebuilt from the per-run records alone."""

from __future__ import annotations

import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from .spec import TEACHER, StudySpec
from .stats import ALPHA, MEASURE_LABELS, summarise_study

TABLE = ("association", "global_shift", "pronoun_mean_abs_gap", "mean_equitability", "winobias_pro_share",
         "crows_stereotype_share", "perplexity_in_domain", "perplexity_other_domain")  # fmt: skip


def environment() -> dict[str, Any]:
    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers", "accelerate", "datasets"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"versions": versions, "hardware": f"{os.cpu_count()} CPU cores ({cpu})"}


def cell(entry: dict | None, digits: int = 3, signed: bool = False) -> str:
    if not entry or entry.get("value") is None:
        return "—"
    form = f"+.{digits}f" if signed else f".{digits}f"
    text = f"{entry['value']:{form}}"
    if entry.get("ci"):
        text += f" [{entry['ci'][0]:{form}}, {entry['ci'][1]:{form}}]"
    if entry.get("p_holm") is not None:
        text += f" (p_Holm {entry['p_holm']:.3f})"
    return text


def _md(label: str) -> str:
    return label.replace("|", "\\|")  # a bare | would split a Markdown table cell


def _digits(measure: str) -> int:
    return 2 if measure.startswith("perplexity") else 3


def _verdict(success: dict) -> str:
    if not success:
        return "not evaluated (runs missing)"
    parts = [("lower than plain KD", success["lower_than_reference"]),
             ("lower than the teacher", success["lower_than_teacher"]),
             ("perplexity within 5%", success["perplexity_within_5_percent"])]  # fmt: skip
    return (
        ("**met**" if success["met"] else "not met")
        + " ("
        + "; ".join(f"{name}: {'yes' if ok else 'no'}" for name, ok in parts)
        + ")"
    )


def markdown(report: dict) -> str:
    s, spec = report["summary"], report["spec"]
    primary = spec["primary"]
    arms = list(s["arms"])
    lines = [
        f"# Study: {report['name']}",
        "",
        "## Design (written in the recipe before the run)",
        "",
        spec["design"].strip() or "(no design text in the recipe)",
        "",
        f"**Primary measure:** `{primary}` ({MEASURE_LABELS[primary]}), on the held-out elicitation "
        "templates and occupations.  ",
        f"**Success rule:** {spec['success'].strip() or '(none written)'}",
        "",
        f"Reproduce: `python recipes/study.py --config {spec['config']}`; rebuild this report from the "
        f"committed records: `python recipes/study.py --config {spec['config']} --report-only`.  ",
        "Runs made by: "
        + (
            "; ".join(
                f"`{i['command']}` ({i['wall_seconds'] / 60:.1f} min wall, finished {i['finished']})"
                for i in report["invocations"]
            )
            or "(no invocation log)"
        )  # fmt: skip
        + ".  ",
        f"Hardware: {report['environment']['hardware']}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in report["environment"]["versions"].items())
        + ".",
        "",
        "## Results",
        "",
        "Means over seeds with Student-t 95% intervals over seeds.",
        "",
        "| arm | seeds | " + " | ".join(_md(MEASURE_LABELS[m]) for m in TABLE) + " |",
        "|---|---:|" + "---:|" * len(TABLE),
    ]
    for arm in arms:
        cells = [
            cell(s["arms"][arm].get(m), _digits(m), signed=m in ("association", "global_shift"))
            for m in TABLE
        ]
        lines.append(f"| {arm} | {len(s['seeds'][arm])} | " + " | ".join(cells) + " |")
    for title, key in ((f"Paired differences from {spec['reference']}", "vs_reference"),
                       ("Paired differences from the teacher", "vs_teacher")):  # fmt: skip
        if not s[key]:
            continue
        lines += [
            "",
            f"## {title} (same seeds; Holm over the arms in this table)",
            "",
            "An interval that excludes 0 is a difference this study can detect.",
            "",
            "| arm | " + " | ".join(_md(MEASURE_LABELS[m]) for m in TABLE) + " | perplexity ratio |",
            "|---|" + "---:|" * (len(TABLE) + 1),
        ]
        for arm, diff in s[key].items():
            cells = [cell(diff.get(m), _digits(m), signed=True) for m in TABLE]
            lines.append(f"| {arm} | " + " | ".join(cells) + f" | {cell(diff.get('perplexity_ratio'), 3)} |")
    lines += ["", f"## The success rule, per arm (α = {ALPHA}, Holm-adjusted)", ""]
    lines += [f"- `{arm}`: {_verdict(verdict)}" for arm, verdict in s["success"].items()]
    heal = report.get("heal")
    if heal:
        selection = heal.get("layer_selection") or {}
        first, last = heal["loss_kd"][0], heal["loss_kd"][-1]
        lines += [
            "",
            "## The shared starting point",
            "",
            f"One plain-KD healing run ({heal['steps']} steps, {heal['train_seconds'] / 60:.1f} min) from "
            f"the teacher's layers {selection.get('kept')} (removed {selection.get('removed')}, chosen by "
            f"`{selection.get('method')}`); KD loss {first[1]:.3f} at step {first[0]} → {last[1]:.3f} at "
            f"step {last[0]}. Every arm and seed starts from it.",
        ]
    timing = report["timing"]
    lines += [
        "",
        "## Time",
        "",
        f"- Training {timing['train'] / 60:.1f} min, measuring {timing['eval'] / 60:.1f} min, writing "
        f"teacher caches {timing['cache'] / 60:.1f} min ({timing['caches']} caches for "
        f"{timing['cached_runs']} runs).",
        f"- Teacher passes avoided by the cache: about {timing['cache_saved'] / 60:.1f} min (each cache's "
        "writing time, once more for every further run that read it).",
        "",
        "## Per seed",
        "",
        "| arm | seed | association | global shift | pronoun \\|gap\\| | perplexity | train s | eval s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in arms:
        entry = s["arms"][arm]
        for k, seed in enumerate(s["seeds"][arm]):
            row = [entry[m]["per_seed"][k] for m in ("association", "global_shift", "pronoun_mean_abs_gap",
                                                     "perplexity_in_domain")]  # fmt: skip
            run = report["runs"][arm][str(seed)]
            lines.append(
                f"| {arm} | {seed} | {row[0]:+.3f} | {row[1]:+.3f} | {row[2]:.3f} | {row[3]:.2f} | "
                f"{run['train_seconds']:.0f} | {run['eval_seconds']:.0f} |"
            )
    lines += [
        "",
        "## How to read it",
        "",
        '- *association*: of the continuations of the held-out elicitation prompts ("The nurse said that") '
        "whose first pronoun is gendered, the female share over WinoBias's female-labelled occupations minus "
        "that over the male-labelled ones (0: pronoun choice does not follow the occupational stereotype). "
        "*global shift*: overall female share − 0.5. Both per seed, then over seeds (`eval.elicitation`).",
        "- *pronoun |gap|*: mean |log P(male pronoun) − log P(female pronoun)| after templated profession "
        "contexts. *BOLD mean equitability*: per profession category min(m/f, f/m) of unigram-polarity "
        "counts, averaged (1 = parity). *WinoBias / CrowS-Pairs*: share of pairs where the stereotypical "
        "sentence is the more likely one (0.5 = no preference).",
        "- *perplexity*: in-domain = held-out BOLD pages of the training domains; other domain = BOLD's "
        "profession pages (never trained on); 256-token windows, stride 128.",
        "",
        "![primary measure per arm](primary.png)",
        "",
        "![female share per occupation](occupations.png)",
        "",
        "![perplexity vs primary measure](perplexity_vs_primary.png)",
        "",
    ]
    return "\n".join(lines)


def plots(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, primary = report["summary"], report["spec"]["primary"]
    arms = list(s["arms"])

    def bar(entry: dict) -> list[list[float]] | None:
        if not entry.get("ci"):
            return None
        return [[entry["value"] - entry["ci"][0]], [entry["ci"][1] - entry["value"]]]

    fig, ax = plt.subplots(figsize=(7, 3.8))
    for i, arm in enumerate(arms):
        entry = s["arms"][arm][primary]
        ax.errorbar([i], [entry["value"]], yerr=bar(entry), fmt="o", capsize=4)
    ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right")
    ax.axhline(0, color="grey", linewidth=1, linestyle="--")
    ax.set_ylabel(MEASURE_LABELS[primary])
    ax.set_title(f"{primary} per arm (mean over seeds, t 95% CI)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "primary.png", dpi=120)
    plt.close(fig)

    shown = [TEACHER, report["spec"]["reference"]]
    students = [a for a in arms if a not in shown and a in s["vs_reference"]]
    if students:  # the arm with the lowest primary measure, named as such (descriptive, not a selection)
        shown.append(min(students, key=lambda a: s["arms"][a][primary]["value"]))
    occupations = s["occupations"].get(TEACHER, {})
    labelled = sorted((o for o, e in occupations.items() if e["stereotype"]),
                      key=lambda o: (occupations[o]["stereotype"], o))  # fmt: skip
    fig, ax = plt.subplots(figsize=(11, 4))
    for k, arm in enumerate(a for a in shown if a in s["occupations"]):
        shares = [s["occupations"][arm].get(o, {}).get("female_share") for o in labelled]
        xs = [i + (k - 1) * 0.25 for i in range(len(labelled))]
        ax.bar(xs, [v if v is not None else 0 for v in shares], width=0.25, label=arm)
    ax.set_xticks(range(len(labelled)), [f"{o} ({occupations[o]['stereotype'][0]})" for o in labelled],
                  rotation=60, ha="right", fontsize=8)  # fmt: skip
    ax.axhline(0.5, color="grey", linewidth=1, linestyle="--")
    ax.set_ylabel("female share of gendered continuations")
    ax.set_title("Per occupation, pooled over seeds (WinoBias label in brackets)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "occupations.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for arm in arms:
        x, y = s["arms"][arm]["perplexity_in_domain"], s["arms"][arm][primary]
        xerr = bar(x)
        ax.errorbar([x["value"]], [y["value"]], xerr=xerr, yerr=bar(y), fmt="o", capsize=3)
        ax.annotate(arm, (x["value"], y["value"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("held-out perplexity, in-domain (lower is better)")
    ax.set_ylabel(MEASURE_LABELS[primary])
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "perplexity_vs_primary.png", dpi=120)
    plt.close(fig)


def _timing(records: dict[str, dict[int, dict]]) -> dict[str, Any]:
    runs = [r for by_seed in records.values() for r in by_seed.values()]
    written = {
        r["teacher_cache"]: r["cache_seconds"] for r in runs if r.get("teacher_cache") and r["cache_seconds"]
    }
    readers = [r["teacher_cache"] for r in runs if r.get("teacher_cache") in written]
    return {
        "train": sum(r["train_seconds"] for r in runs),
        "eval": sum(r["eval_seconds"] for r in runs),
        "cache": sum(written.values()),
        "caches": len(written),
        "cached_runs": len(readers),
        "cache_saved": sum(written[key] for key in readers) - sum(written.values()),
    }


def write_report(
    spec: StudySpec, out: Path, records: dict[str, dict[int, dict]], *, config: str, command: str,
    invocations: list[dict], heal: dict | None,
) -> dict:  # fmt: skip
    report = {
        "name": out.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command,
        "invocations": invocations,
        "environment": environment(),
        "spec": {
            "config": config,
            "design": spec.design,
            "primary": spec.primary,
            "success": spec.success,
            "reference": spec.reference,
            "train_recipe": spec.train_recipe,
            "train": spec.train,
            "heal": spec.heal,
            "arms": spec.arms,
            "seeds": spec.seeds,
            "eval": vars(spec.eval),
        },  # fmt: skip
        "heal": heal and {**heal, "steps": heal["config"].get("max_steps")},
        "timing": _timing(records),
        "summary": summarise_study(records, spec.reference, spec.primary),
        "runs": {
            a: {
                str(s): {
                    k: r[k]
                    for k in ("train_seconds", "eval_seconds", "cache_seconds", "log", "samples")
                    if k in r
                }
                for s, r in by_seed.items()
            }
            for a, by_seed in records.items()
        },  # fmt: skip
    }
    report["spec"]["train_recipe"] = os.path.relpath(spec.train_recipe, Path(__file__).resolve().parents[2])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    plots(report, out)
    return report
