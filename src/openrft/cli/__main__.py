"""``python -m openrft.cli``: the same as the ``openrft`` command."""

import sys

from openrft.cli import main

sys.exit(main())
