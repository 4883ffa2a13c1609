"""``python -m app.cli``: the ``ml3`` command."""

import sys

from app.cli import main

sys.exit(main())
