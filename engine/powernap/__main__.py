"""``python3 -m powernap ...`` is the ``powernap`` command (``python3 -m powernap daemon`` runs powernapd)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
