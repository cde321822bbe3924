"""Run the lab CLI: ``python3 lab/powernap_lab/__main__.py`` (what lab/powernap-lab does)."""

import os
import sys


def main():
    # Run as a script, this file's folder is on sys.path, not the package's parent.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from powernap_lab.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
