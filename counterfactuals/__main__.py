"""``python -m counterfactuals``: the ``fairdistill-cda`` command line (see counterfactuals.cli)."""

from .cli import main

raise SystemExit(main())
