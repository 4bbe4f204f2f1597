"""``python -m winsim``: see ``winsim.cli``."""

import sys

from winsim.cli import main

sys.exit(main())
