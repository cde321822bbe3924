"""powernap lab NIC shim: Wake-on-LAN settings of eth0 live with the lab, not in the veth.

Handles `ethtool -s eth0 wol MODES [sopass XX:XX:XX:XX:XX:XX]` and `ethtool eth0`;
everything else goes to the real /usr/sbin/ethtool.
"""

import json
import os
import re
import subprocess
import sys

REAL = "/usr/sbin/ethtool"
STATE = "/run/powernap-lab-nic/wol.json"
NIC = "eth0"
SUPPORTED = "pumbg"


def real(args):
    if not os.access(REAL, os.X_OK):
        sys.stderr.write("ethtool: %s is not installed\n" % REAL)
        return 1
    return subprocess.call([REAL] + args)


def load():
    try:
        with open(STATE, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"wol": "g", "sopass": None}


def save(state):
    tmp = STATE + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f)
        f.write("\n")
    os.replace(tmp, STATE)


def set_wol(args):
    state = load()
    rest = []
    i = 0
    while i < len(args):
        if args[i] == "wol" and i + 1 < len(args):
            mode = args[i + 1]
            if not re.fullmatch(r"d|[pumbags]+", mode):
                sys.stderr.write("ethtool: invalid wol mode %r\n" % mode)
                return 1
            state["wol"] = mode
            i += 2
        elif args[i] == "sopass" and i + 1 < len(args):
            if not re.fullmatch(r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}", args[i + 1]):
                sys.stderr.write("ethtool: invalid sopass %r\n" % args[i + 1])
                return 1
            state["sopass"] = args[i + 1].lower()
            i += 2
        else:
            rest.append(args[i])
            i += 1
    save(state)
    return real(["-s", NIC] + rest) if rest else 0


def show():
    state = load()
    out = ""
    if os.access(REAL, os.X_OK):
        out = subprocess.run([REAL, NIC], capture_output=True, text=True, check=False).stdout
    lines = [ln for ln in out.splitlines() if "Wake-on" not in ln and "SecureOn" not in ln]
    if not lines:
        lines = ["Settings for %s:" % NIC]
    extra = ["\tSupports Wake-on: %ss" % SUPPORTED, "\tWake-on: %s" % state.get("wol", "g")]
    if "s" in state.get("wol", "") and state.get("sopass"):
        extra.append("\tSecureOn password: %s" % state["sopass"])
    at = next((i for i, ln in enumerate(lines) if "Link detected" in ln), len(lines))
    print("\n".join(lines[:at] + extra + lines[at:]))
    return 0


def main(argv):
    if len(argv) >= 3 and argv[0] in ("-s", "--change") and argv[1] == NIC and os.path.exists(os.path.dirname(STATE)):
        return set_wol(argv[2:])
    if argv == [NIC] and os.path.exists(os.path.dirname(STATE)):
        return show()
    return real(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
