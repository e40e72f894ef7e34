"""The ``fairdistill`` command: one entry point, one subcommand per job.

    fairdistill train --config recipes/tiny.yaml          # one process of fairdistill.train
    fairdistill eval --model teacher=PATH --model student=PATH --out runs/eval
    fairdistill cda swap "He thanked his aunt."
    fairdistill demo                                      # the counterfactual demo on BOLD sentences
    fairdistill cache --config RECIPE --out runs/cache    # write an offline teacher cache
    fairdistill publish runs/student --eval-results runs/eval/results.json --repo-id you/name [--push]

Each subcommand hands the rest of the command line to the module that owns it, so ``fairdistill X --help``
shows that module's own options. Several processes: ``accelerate launch -m fairdistill.train ...``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, function, what it does); imported only when chosen, so `fairdistill cda` stays light
COMMANDS = {
    "train": ("fairdistill.train", "cli", "distil a student from a recipe (DistillationConfig fields)"),
    "eval": ("eval.cli", "cli", "bias and perplexity of models, with a report"),
    "cda": ("counterfactuals.cli", "main", "gender-swap text, augment a dataset, list token pairs"),
    "demo": ("fairdistill.demo", "main", "the counterfactual demo on BOLD sentences"),
    "cache": ("distill.teacher_cache.__main__", "cli", "write an offline teacher cache for a recipe"),
    "publish": ("fairdistill.publish_cli", "main", "write the student with its model card; push to the Hub"),
    "study": ("fairdistill.study.cli", "cli", "run a study recipe's arms and seeds; write its report"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:<8} {what}" for name, (_, _, what) in COMMANDS.items())
    return f"usage: fairdistill COMMAND [options]\n\ncommands:\n{rows}\n\n(COMMAND --help: its options)"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n{usage()}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[name]
    entry = getattr(importlib.import_module(module), function)
    sys.argv = [f"fairdistill {name}", *rest]  # the subcommand's parser reads sys.argv
    code = entry() if function == "cli" else entry(rest)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
