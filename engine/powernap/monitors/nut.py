"""UPS state over the NUT network protocol (upsd, TCP 3493)."""

import socket
from typing import List, Optional

from ..errors import MonitorError
from ..options import Duration, Integer, ListOf, Option, String
from .base import MONITOR_COMMON_OPTIONS
from .probing import Job, ProbingMonitor, ThreadJob

# Errors after which the UPS state is unknown: never read them as "online" or "on battery".
UNKNOWN_STATE_ERRORS = ("DATA-STALE", "DRIVER-NOT-CONNECTED")


class NutClient:
    """Just enough of the NUT protocol: optional USERNAME/PASSWORD, GET VAR, LOGOUT."""

    def __init__(self, host: str, port: int, timeout: float):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buffer = b""

    def command(self, line: str) -> str:
        self.sock.sendall(line.encode("utf-8") + b"\n")
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise MonitorError("upsd closed the connection")
            self.buffer += chunk
            if len(self.buffer) > 65536:
                raise MonitorError("upsd sent an overlong line")
        reply, _unused, self.buffer = self.buffer.partition(b"\n")
        return reply.decode("utf-8", "replace").strip()

    def close(self) -> None:
        try:
            self.sock.sendall(b"LOGOUT\n")
        except OSError:
            pass
        self.sock.close()


def ups_status(host: str, port: int, ups: str, username: str, password: str, timeout: float) -> List[str]:
    """The tokens of ups.status (e.g. ['OL', 'CHRG']); MonitorError when upsd cannot say."""
    try:
        client = NutClient(host, port, timeout)
    except OSError as exc:
        raise MonitorError("cannot reach upsd at %s:%d: %s" % (host, port, exc.strerror or exc)) from None
    try:
        for verb, value in (("USERNAME", username), ("PASSWORD", password)):
            if value:
                reply = client.command("%s %s" % (verb, value))
                if not reply.startswith("OK"):
                    raise MonitorError("upsd refused %s: %s" % (verb, reply))
        reply = client.command("GET VAR %s ups.status" % ups)
    except OSError as exc:
        raise MonitorError("talking to upsd at %s:%d: %s" % (host, port, exc.strerror or exc)) from None
    finally:
        client.close()
    if reply.startswith("ERR "):
        code = reply[4:].strip()
        if code in UNKNOWN_STATE_ERRORS:
            raise MonitorError("UPS %s state unknown (%s)" % (ups, code))
        raise MonitorError("upsd error for UPS %s: %s" % (ups, code))
    prefix = "VAR %s ups.status " % ups
    if not reply.startswith(prefix):
        raise MonitorError("unexpected upsd reply: %r" % reply[:80])
    return reply[len(prefix) :].strip().strip('"').split()


class NutMonitor(ProbingMonitor):
    """Activity while the UPS status (from NUT's upsd) contains any of the listed state tokens."""

    TYPE = "nut"
    OPTIONS = MONITOR_COMMON_OPTIONS + (
        Option(
            "ups",
            String(nonempty=True),
            required=True,
            doc="UPS name as configured in upsd (ups.conf section), e.g. rack1.",
        ),
        Option(
            "host", String(nonempty=True), default="127.0.0.1", doc="Host name or address of the machine running upsd."
        ),
        Option("port", Integer(minimum=1, maximum=65535), default=3493, doc="TCP port upsd listens on."),
        Option(
            "username",
            String(),
            default="",
            doc="upsd user (only needed when upsd requires a login to read variables).",
        ),
        Option("password", String(), default="", secret=True, doc="Password of the upsd user."),
        Option(
            "states",
            ListOf(String(nonempty=True), nonempty=True),
            default=("OB",),
            doc="ups.status tokens that mean activity (OL on line, OB on battery, LB low battery, CHRG "
            "charging, FSD forced shutdown, ...). The default OB keeps a host awake during a power cut, "
            "e.g. the host that runs the fleet's UPS policy; napping other hosts sooner on battery is the "
            "fleet server's business. An unknown state (ERR DATA-STALE, DRIVER-NOT-CONNECTED, no upsd) is "
            "an error, i.e. activity unless error_behavior = ignore.",
        ),
        Option("every", Duration(minimum=1), default=10.0, doc="How often upsd is asked (in the background)."),
        Option("timeout", Duration(minimum=0.1), default=5.0, doc="Connection and reply timeout."),
    )

    def start_probe(self, now: float) -> Job:
        opts = self.options

        def probe() -> Optional[str]:
            tokens = ups_status(
                opts["host"], opts["port"], opts["ups"], opts["username"], opts["password"], opts["timeout"]
            )
            hits = [token for token in tokens if token in opts["states"]]
            if hits:
                return "UPS %s status %s" % (opts["ups"], " ".join(tokens))
            return None

        return ThreadJob(probe, opts["timeout"] * 2, now, name=self.name)

    def describe(self) -> str:
        return "nut %s@%s:%d in %s" % (
            self.options["ups"],
            self.options["host"],
            self.options["port"],
            ",".join(self.options["states"]),
        )
