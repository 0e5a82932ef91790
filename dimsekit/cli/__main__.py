"""``python -m dimsekit.cli``."""

import sys

from dimsekit.cli import main

sys.exit(main())
