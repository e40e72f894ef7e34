"""``python recipes/study.py --config recipes/study-cpu-v2.yaml`` (or ``fairdistill study ...``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import run_cli
from .report import markdown, write_report
from .runner import HEAL, Study, display_path, say
from .spec import REPO, START, TEACHER, StudyError, load_spec


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    passthrough = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description="Run a study recipe's arms and seeds and write its report. Options after -- go to every "
        "training run (e.g. -- --use_cpu true).",
    )
    parser.add_argument("--config", required=True, help="study recipe, e.g. recipes/study-cpu-v2.yaml")
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (committed); default results/<name>"
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="heavy files (caches, models); default runs/<name>"
    )
    default_bold = os.environ.get("FAIRDISTILL_BOLD_DIR", str(REPO.parent / "shared" / "data" / "bold"))
    parser.add_argument("--bold", default=default_bold, help="local BOLD folder (prompts/ and wikipedia/)")
    parser.add_argument("--arms", nargs="*", default=None, help="run only these arms (default: all)")
    parser.add_argument("--seeds", nargs="*", type=int, default=None, help="run only these seeds")
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild the report from the saved records"
    )
    return parser.parse_args(argv), passthrough


def main(argv: Sequence[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, passthrough = parse_args(argv)
    started = time.perf_counter()
    spec = load_spec(args.config)
    name = Path(args.config).stem
    out = args.out or REPO / "results" / name
    study = Study(spec, out, args.work or REPO / "runs" / name, args.bold, passthrough)
    arms = args.arms if args.arms is not None else list(spec.arms)
    unknown = [a for a in arms if a not in spec.arms]
    if unknown:
        raise StudyError(
            f"--arms {' '.join(unknown)}: not arms of {args.config}; arms: {', '.join(spec.arms)}"
        )
    seeds = args.seeds if args.seeds is not None else spec.seeds
    command = "python recipes/study.py " + " ".join(argv)
    if not args.report_only:
        if not Path(args.bold).is_dir():
            raise StudyError(
                f"BOLD folder {args.bold} not found; pass --bold DIR or set FAIRDISTILL_BOLD_DIR"
            )
        study.run_all(arms, seeds)
        study.log_invocation(command, time.perf_counter() - started, arms, seeds)
    saved = study.load_records()
    records = {a: saved[a] for a in (TEACHER, START, *spec.arms) if saved.get(a)}  # the recipe's order
    if not records:
        raise StudyError(f"no run records under {out / 'runs'}; run the study first (without --report-only)")
    heal_path = out / "runs" / f"{HEAL}.json"
    heal = json.loads(heal_path.read_text(encoding="utf-8")) if heal_path.is_file() else None
    report = write_report(spec, out, records, config=display_path(Path(args.config)), command=command,
                          invocations=study.invocations(), heal=heal)  # fmt: skip
    say(f"report: {out / 'report.md'}")
    print(markdown(report).split("\n## The shared starting point")[0], flush=True)
    return report


def cli() -> None:
    """``fairdistill study``: a bad recipe or folder is one line and exit 2."""
    run_cli(main)
