"""``python -m fairdistill``: the ``fairdistill`` command."""

import sys

from .cli import main

sys.exit(main())
