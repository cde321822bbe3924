"""Stand-in for ansible-test's pip bootstrap script (get-pip.py).

ansible-test --venv fetches get-pip.py from a CI host this project cannot
reach; its error message says the script may be saved into its cache by
hand.  This stand-in does the same job with what the machine has: install
the interpreter's bundled pip with ensurepip, then run `pip install` with the
arguments ansible-test passes (the pinned pip version and options), from PyPI.
"""

import subprocess
import sys

# get-pip.py options that plain `pip install` does not know.
_GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}

# A child process: ensurepip.bootstrap() in-process sets PIP_CONFIG_FILE=/dev/null
# for the rest of the process, which would drop the machine's pip settings
# (index, certificates) from the install below.
status = subprocess.call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"])
if status:
    sys.exit(status)
args = [a for a in sys.argv[1:] if a not in _GET_PIP_ONLY]
if args and args[0] == "install":
    args = args[1:]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--upgrade", *args]))
