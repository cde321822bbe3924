"""The monitor interface.

A monitor answers one question: is there activity of my kind?  It is one
small class with declared ``OPTIONS``; the daemon owns the loop.

Two styles, which one class may combine:

* polled: ``check()`` is called every ``interval`` and returns a reason string
  when it sees activity now, ``None`` when idle.  It must be cheap: read
  ``/proc``/``/sys`` through ``ctx.root``, never start a subprocess per tick
  (monitors that must run a command do it asynchronously, see ``fds``).
* event-driven: ``fds()`` lists file descriptors (netlink, evdev, inotify,
  raw sockets); the daemon's selector calls ``on_readable(fd)`` when one is
  readable, and a returned reason is activity at that instant.  The set of
  fds may change (input hot-plug, a device unplugged or reopened): the daemon
  re-reads ``fds()`` after ``open()``, each ``check()`` and each
  ``on_readable()`` and updates its selector (fds that vanished are already
  closed by the monitor).

The reserved key ``type`` (defaulting to the section name after ``monitor.``)
is read by the config loader, not declared here.

Errors: raise ``MonitorError``; the daemon counts it as activity unless the
monitor's ``error_behavior`` is ``ignore``, and shows the message in status.

Event fds are watched live while the host naps or a warning is out (instant
recovery); while it is awake the daemon reads them at each poll instead, so
a busy host does not wake it for every program start or connection.

Before any stage fires the daemon asks every monitor ``recheck()``: the
answer from scratch (a fresh /proc scan, a fresh connection table), after
reading whatever its fds hold.  ``next_check()`` lets a monitor ask for an
early check (e.g. to follow a TCP handshake) sooner than ``interval``.

Wake-ups: ``next_wake()`` returns the wall-clock epoch of the next scheduled
event the host must be up for (timers, calendars), or ``None``.
"""

import logging
from typing import Any, Callable, Dict, List, Optional

from ..clock import Clock
from ..options import Boolean, Choice, Declared, Option
from ..sysroot import SysRoot

MONITOR_COMMON_OPTIONS = (
    Option(
        "error_behavior",
        Choice("activity", "ignore"),
        default="activity",
        doc="What a failing check means: 'activity' keeps the host awake (safe), 'ignore' treats it as idle.",
    ),
    Option(
        "enabled",
        Boolean(),
        default=True,
        doc="Set to no to keep the section but switch the monitor off (e.g. from a profile override).",
    ),
)


class MonitorContext:
    """What the daemon hands every monitor."""

    def __init__(
        self,
        root: SysRoot,
        clock: Clock,
        log: Optional[logging.Logger] = None,
        hooks: Optional[Dict[str, Callable[..., Any]]] = None,
    ):
        self.root = root
        self.clock = clock
        self.log = log or logging.getLogger("powernap.monitor")
        # Optional services shared between monitors (e.g. "local_macs"), set by the daemon.
        self.hooks = hooks or {}


class Monitor(Declared):
    """Base of all monitors.  Subclasses set TYPE, OPTIONS and a one-line docstring."""

    KIND = "monitor"
    OPTIONS = MONITOR_COMMON_OPTIONS

    def __init__(self, name: str, options: Dict[str, Any], ctx: MonitorContext):
        self.name = name
        self.options = options
        self.ctx = ctx
        self.log = ctx.log.getChild(name)

    # Lifecycle -------------------------------------------------------------
    def open(self) -> None:
        """Acquire resources (sockets, fds).  May raise MonitorError."""

    def close(self) -> None:
        """Release every resource ``open`` acquired.  Must not raise."""

    # Polled ----------------------------------------------------------------
    def check(self) -> Optional[str]:
        """Reason string if there is activity now, else None."""
        return None

    def recheck(self) -> Optional[str]:
        """The answer from scratch, right before a stage fires: no cached table, no trust in events.

        Monitors that keep state between checks override this; rate monitors keep the answer of their
        last check (a window of a few milliseconds would make a rate out of noise)."""
        return self.check()

    def next_check(self) -> Optional[float]:
        """Monotonic time at which ``check()`` should run before the next regular poll, or None."""
        return None

    # Event-driven ----------------------------------------------------------
    def fds(self) -> List[int]:
        return []

    def on_readable(self, fd: int) -> Optional[str]:
        return None

    # Wake-ups --------------------------------------------------------------
    def next_wake(self) -> Optional[float]:
        return None

    def describe(self) -> str:
        """One line for status/explain, e.g. 'tcp ports 22,80'."""
        return self.TYPE


class RateMonitor(Monitor):
    """A monitor whose answer is a rate between two checks (I/O, traffic).

    Subclasses implement ``measure()``; ``recheck()`` repeats the last answer, because a rate over
    the few milliseconds since the last check would be noise (the last one is at most one interval old).
    """

    answer: Optional[str] = None

    def measure(self) -> Optional[str]:
        raise NotImplementedError

    def check(self) -> Optional[str]:
        self.answer = None  # an error must not leave an old answer behind
        self.answer = self.measure()
        return self.answer

    def recheck(self) -> Optional[str]:
        return self.answer
