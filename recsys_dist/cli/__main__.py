"""``python -m recsys_dist.cli``: the ``recsys-dist`` command."""

import sys

from recsys_dist.cli import main

sys.exit(main())
