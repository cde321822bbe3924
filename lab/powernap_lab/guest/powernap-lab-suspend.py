"""Suspend this lab host (the lab's stand-in for `systemctl suspend`).

Asks the lab through this host's NIC socket; like `systemctl suspend` it returns at once and
the host is frozen shortly after (default 1 s, --delay SECONDS). When a magic packet, the BMC
or the lab wakes the host, it simply continues.
"""

import argparse
import json
import socket
import sys

SOCK = "/run/powernap-lab-nic/suspend.sock"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=1.0, help="seconds before the host freezes")
    parser.add_argument("--cause", default="engine", help="recorded in the lab's event log")
    args = parser.parse_args()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect(SOCK)
        sock.sendall(json.dumps({"op": "suspend", "delay": args.delay, "cause": args.cause}).encode() + b"\n")
        reply = json.loads(sock.makefile().readline() or "{}")
    except (OSError, ValueError) as exc:
        sys.stderr.write("powernap-lab-suspend: cannot reach the lab (%s)\n" % exc)
        return 1
    if not reply.get("ok"):
        sys.stderr.write("powernap-lab-suspend: %s\n" % reply.get("error", "refused"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
