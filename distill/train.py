"""Launch a distillation run.

    accelerate launch -m distill.train --config recipes/<name>.yaml [--key value ...]

The command line around :func:`distill.pipeline.run` (the library path from recipe to checkpoint, which
also refuses a non-empty output folder): parse the recipe (YAML, then command-line overrides) into a
:class:`DistillationConfig`, redact secrets from the command line, run; user errors become one line and
exit 2.
``run``, ``parse_config`` and the other names once defined here are re-exported for older imports; new
code imports them from ``distill.pipeline`` and ``distill.recipe``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import torch.distributed as dist

from .guards import NonFiniteError, redact_argv
from .pipeline import (  # noqa: F401 - re-exported: distill.train was the library before distill.pipeline
    CallbackFactory,
    attach_cached_targets,
    build_student,
    claim_output_dir,
    measured_selection,
    run,
    say,
    selection_depth,
)
from .recipe import RecipeError, parse_config, prepare_data  # noqa: F401 - re-exported, as above


def main(argv: Sequence[str] | None = None, *, fairness_callback: CallbackFactory | None = None) -> dict:
    """Parse the recipe and overrides, run, return the final eval metrics."""
    config = parse_config(argv)
    sys.argv[:] = redact_argv(sys.argv)  # before any tracker records the command line
    return run(config, fairness_callback=fairness_callback)[1]


DEBUG_ENV = "FAIRDISTILL_DEBUG"


def cli(*, fairness_callback: CallbackFactory | None = None) -> None:
    """``python -m distill.train``: user errors (a bad value, file or folder) are one line on stderr and
    exit 2; a run stopped by a non-finite loss exits 1 with its message; FAIRDISTILL_DEBUG=1 re-raises
    either with the traceback."""
    try:
        main(fairness_callback=fairness_callback)
    except (ValueError, OSError) as err:  # RecipeError, config checks, missing/unreadable files, data
        _fail(err, 2)
    except NonFiniteError as err:
        _fail(err, 1)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _fail(err: BaseException, code: int) -> None:
    if os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes"):
        raise err
    print(f"error: {err}\n(set {DEBUG_ENV}=1 to see the traceback)", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    cli()
