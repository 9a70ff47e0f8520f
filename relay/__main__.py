"""``python -m relay`` is ``clip-relay``."""

import sys

from relay.cli import main

sys.exit(main())
