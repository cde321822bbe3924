"""System load average."""

from typing import Optional

from ..errors import MonitorError
from ..options import Choice, Number, Option
from . import procfs
from .base import MONITOR_COMMON_OPTIONS, Monitor

_PERIOD_FIELD = {"1": 0, "5": 1, "15": 2}


class LoadMonitor(Monitor):
    """Activity while the load average is above a threshold (default: CPU count x factor)."""

    TYPE = "load"
    OPTIONS = MONITOR_COMMON_OPTIONS + (
        Option(
            "period",
            Choice("1", "5", "15"),
            default="1",
            doc="Which load average to use: the 1-, 5- or 15-minute figure of /proc/loadavg.",
        ),
        Option(
            "threshold",
            Number(minimum=0),
            default=None,
            doc="Load above which there is activity. Unset: online CPU count times 'factor'.",
        ),
        Option(
            "factor",
            Number(minimum=0),
            default=0.5,
            doc="Multiplied by the online CPU count to give the threshold when 'threshold' is unset.",
        ),
    )

    def __init__(self, name, options, ctx):
        super().__init__(name, options, ctx)
        self.field = _PERIOD_FIELD[options["period"]]
        self.threshold = options["threshold"]
        if self.threshold is None:
            self.threshold = procfs.cpu_count(ctx.root) * options["factor"]

    def check(self) -> Optional[str]:
        text = procfs.read_required(self.ctx.root, "/proc/loadavg")
        try:
            load = float(text.split()[self.field])
        except (IndexError, ValueError):
            raise MonitorError("unexpected /proc/loadavg content: %r" % text[:60]) from None
        if load > self.threshold:
            return "%s-minute load %.2f above %.2f" % (self.options["period"], load, self.threshold)
        return None

    def describe(self) -> str:
        return "load (%s min) > %.2f" % (self.options["period"], self.threshold)
