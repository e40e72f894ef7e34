"""The study's entry point: ``python recipes/study.py --config recipes/study-cpu-v2.yaml [--report-only]``
(the same as ``fairdistill study ...``).

The study lives in :mod:`fairdistill.study` (spec, runner, measures, statistics, report); ``--help`` lists
the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fairdistill.study.cli import cli  # noqa: E402

if __name__ == "__main__":
    cli()
