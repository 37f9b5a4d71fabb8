"""``python -m backobs``: the same as the ``backobs`` command."""

import sys

from backobs.cli import main

sys.exit(main())
