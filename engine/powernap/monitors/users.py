"""People at the machine: logged-in users (utmp / logind sessions) and local consoles, by tty idle time.

Sessions without a terminal (``ssh host cmd``, sftp, scp, VS Code remote, rsync over ssh) never
appear in utmp: sshd writes utmp only for a pty.  logind registers every PAM session, terminal or
not, so /run/systemd/sessions is the source for them; where logind does not run (containers,
sshd without PAM) the "sshd: USER@notty" processes sshd names after its session children are.
A session without a terminal has no input time to measure: it counts as long as it lasts.
"""

import os
import re
import struct
from typing import Dict, List, NamedTuple, Optional, Tuple

from ..errors import MonitorError
from ..options import Duration, Option, Regex
from . import procfs
from .base import MONITOR_COMMON_OPTIONS, Monitor

# glibc struct utmp on Linux (x86_64, aarch64, i386 alike: 32-bit time fields): 384 bytes.
UTMP = struct.Struct("=hxxi32s4s32s256shhiii4i20s")
USER_PROCESS = 7
_SSHD_NOTTY = re.compile(r"^sshd(?:-session)?: (\S+)@notty\b")  # sshd's title for a session child without a pty


class Session(NamedTuple):
    user: str
    line: str  # tty without /dev/, "" when the session has none
    host: str
    pid: int


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_utmp(data: bytes) -> List[Session]:
    """USER_PROCESS records of a utmp file."""
    sessions = []
    for offset in range(0, len(data) - UTMP.size + 1, UTMP.size):
        record = UTMP.unpack_from(data, offset)
        if record[0] == USER_PROCESS:
            sessions.append(Session(_text(record[4]), _text(record[2]), _text(record[5]), record[1]))
    return sessions


def parse_env_file(text: str) -> Dict[str, str]:
    """KEY=VALUE lines (systemd state files); comments and junk are skipped."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            values[key.strip()] = value.strip()
    return values


class UsersMonitor(Monitor):
    """Activity while a matching user is logged in and their terminal was used within max_idle."""

    TYPE = "users"
    OPTIONS = MONITOR_COMMON_OPTIONS + (
        Option(
            "users",
            Regex(),
            default=re.compile(""),
            doc="Python regular expression the user name must match (default: any user).",
        ),
        Option(
            "hosts",
            Regex(),
            default=re.compile(""),
            doc="Regular expression the remote host must match (e.g. '.' for remote logins only; local "
            "logins have an empty host).",
        ),
        Option(
            "lines",
            Regex(),
            default=re.compile(""),
            doc="Regular expression the terminal must match, e.g. '^pts/' for ssh and terminal windows.",
        ),
        Option(
            "max_idle",
            Duration(),
            default=3600.0,
            doc="A session whose terminal had no input for longer than this does not count (input time is "
            "the tty's access time); 0 = every session counts however idle. Sessions without a terminal "
            "(ssh host cmd, sftp, VS Code remote) count while they last.",
        ),
    )

    def sessions(self) -> List[Session]:
        """Live sessions from /run/utmp, plus logind sessions utmp does not list (systems without utmp)."""
        root = self.ctx.root
        sessions: List[Session] = []
        utmp_readable = False
        try:
            sessions = parse_utmp(root.read_bytes("/run/utmp"))
            utmp_readable = True
        except OSError:
            pass
        seen_lines = {s.line for s in sessions if s.line}
        for name in root.listdir("/run/systemd/sessions"):
            if "." in name:
                continue
            info = parse_env_file(root.read("/run/systemd/sessions/" + name) or "")
            if info.get("STATE", "active") == "closing" or info.get("CLASS", "user") != "user":
                continue
            line = info.get("TTY", "")
            if line.startswith("/dev/"):
                line = line[5:]
            if line and line in seen_lines:
                continue
            try:
                leader = int(info.get("LEADER", "0"))
            except ValueError:
                leader = 0
            sessions.append(Session(info.get("USER", ""), line, info.get("REMOTE_HOST", ""), leader))
        if not root.exists("/run/systemd/sessions"):
            sessions.extend(self.sshd_sessions())
            if not utmp_readable:
                raise MonitorError("neither /run/utmp nor /run/systemd/sessions is readable")
        # utmp keeps records of sessions whose process died without logging out.
        return [s for s in sessions if s.pid <= 0 or root.exists("/proc/%d" % s.pid)]

    def sshd_sessions(self) -> List[Session]:
        """Terminal-less ssh sessions from sshd's process titles (only without logind)."""
        found = []
        for pid in procfs.pids(self.ctx.root):
            line = procfs.cmdline(self.ctx.root, pid)
            match = _SSHD_NOTTY.match(line or "")
            if match:
                found.append(Session(match.group(1), "", "", pid))
        return found

    def idle_seconds(self, line: str) -> Optional[float]:
        """Seconds since the terminal's last input, or None if it has no device."""
        if not line:
            return None
        try:
            atime = os.stat(self.ctx.root.path("/dev/" + line)).st_atime
        except OSError:
            return None
        return max(0.0, self.ctx.clock.wall() - atime)

    def check(self) -> Optional[str]:
        max_idle = self.options["max_idle"]
        best: Optional[Tuple[float, Session]] = None
        for session in self.sessions():
            if not (
                self.options["users"].search(session.user)
                and self.options["hosts"].search(session.host)
                and self.options["lines"].search(session.line)
            ):
                continue
            idle = self.idle_seconds(session.line) if session.line else 0.0
            if max_idle and (idle is None or idle > max_idle):
                continue
            idle = idle or 0.0
            if best is None or idle < best[0]:
                best = (idle, session)
        if best is None:
            return None
        idle, session = best
        where = session.line or "no terminal (counts while it lasts)"
        if session.host:
            where += " from " + session.host
        return "user %s logged in on %s (idle %ds)" % (session.user, where, idle)

    def describe(self) -> str:
        max_idle = self.options["max_idle"]
        return "users" + (" idle < %gs" % max_idle if max_idle else "")


class ConsoleMonitor(Monitor):
    """Activity while a local console or serial terminal had input within max_idle."""

    TYPE = "console"
    OPTIONS = MONITOR_COMMON_OPTIONS + (
        Option(
            "devices",
            Regex(),
            default=re.compile(r"^(tty[0-9]+|ttyS[0-9]+|ttyAMA[0-9]+|hvc[0-9]+)$"),
            doc="Python regular expression for terminal device names under /dev that count as consoles "
            "(virtual consoles, serial and hypervisor consoles).",
        ),
        Option(
            "max_idle",
            Duration(minimum=1),
            default=600.0,
            doc="Input on a console within this long counts as activity (the tty's access time, which the "
            "kernel updates on input).",
        ),
    )
    RESCAN_SECONDS = 60.0  # how long the list of console devices is trusted

    def __init__(self, name, options, ctx):
        super().__init__(name, options, ctx)
        self.paths: List[Tuple[str, str]] = []
        self.listed_at: Optional[float] = None

    def _consoles(self) -> List[Tuple[str, str]]:
        now = self.ctx.clock.monotonic()
        if self.listed_at is None or now - self.listed_at >= self.RESCAN_SECONDS:
            names = [n for n in self.ctx.root.listdir("/dev") if self.options["devices"].search(n)]
            self.paths = [(n, self.ctx.root.path("/dev/" + n)) for n in names]
            self.listed_at = now
        return self.paths

    def check(self) -> Optional[str]:
        consoles = self._consoles()
        if not consoles:
            raise MonitorError("no console device under /dev matches /%s/" % self.options["devices"].pattern)
        now = self.ctx.clock.wall()
        newest: Optional[Tuple[float, str]] = None
        for name, path in consoles:
            try:
                atime = os.stat(path).st_atime
            except OSError:
                continue
            if newest is None or atime > newest[0]:
                newest = (atime, name)
        if newest is not None and now - newest[0] <= self.options["max_idle"]:
            return "console %s input %ds ago" % (newest[1], max(0.0, now - newest[0]))
        return None

    def describe(self) -> str:
        return "console idle < %gs" % self.options["max_idle"]
