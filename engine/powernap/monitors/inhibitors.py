"""logind inhibitor locks in block mode (what 'systemd-inhibit --list --mode=block' shows)."""

import re
from typing import Optional

from ..errors import MonitorError
from ..options import ListOf, Option, Regex, String
from .base import MONITOR_COMMON_OPTIONS, Monitor
from .users import parse_env_file

INHIBIT_DIR = "/run/systemd/inhibit"


class InhibitorsMonitor(Monitor):
    """Activity while a program holds a logind block-mode inhibitor lock on sleep or idle."""

    TYPE = "inhibitors"
    OPTIONS = MONITOR_COMMON_OPTIONS + (
        Option(
            "what",
            ListOf(String(nonempty=True), nonempty=True),
            default=("sleep", "idle"),
            doc="Lock kinds that count (logind's WHAT: sleep, idle, shutdown, handle-lid-switch, ...).",
        ),
        Option(
            "who",
            Regex(),
            default=re.compile(""),
            doc="Only locks whose holder (WHO) matches this regular expression count.",
        ),
        Option(
            "ignore",
            Regex(),
            default=None,
            doc="Locks whose holder (WHO) matches this regular expression never count, e.g. a desktop that "
            "takes a permanent lock.",
        ),
    )

    def check(self) -> Optional[str]:
        """Reads logind's state files (one per lock: WHAT=, MODE=, WHO=, WHY=, UID=, PID=); no D-Bus needed.

        logind writes a file when a lock is taken and removes it when the
        holder closes its lock fd (the .ref FIFOs next to them).
        """
        root = self.ctx.root
        if not root.exists(INHIBIT_DIR):
            if root.exists("/run/systemd/system"):
                return None  # systemd is running and nobody holds a lock (logind creates the dir lazily)
            raise MonitorError("systemd-logind is not running (%s missing)" % INHIBIT_DIR)
        wanted = set(self.options["what"])
        for name in root.listdir(INHIBIT_DIR):
            if name.endswith(".ref"):
                continue
            info = parse_env_file(root.read("%s/%s" % (INHIBIT_DIR, name)) or "")
            if not info.get("MODE", "").startswith("block"):
                continue
            kinds = set(info.get("WHAT", "").split(":")) & wanted
            who = info.get("WHO", "")
            if not kinds or not self.options["who"].search(who):
                continue
            if self.options["ignore"] is not None and self.options["ignore"].search(who):
                continue
            return "%s blocks %s: %s" % (
                who or "pid %s" % info.get("PID", "?"),
                "/".join(sorted(kinds)),
                info.get("WHY", "") or "no reason given",
            )
        return None

    def describe(self) -> str:
        return "inhibitors (%s)" % ", ".join(self.options["what"])
