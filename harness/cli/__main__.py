"""``python -m harness.cli``: the ``miglab`` command without the console script."""

import sys

from harness.cli import main

sys.exit(main())
