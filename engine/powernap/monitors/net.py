"""Network bandwidth per interface from /proc/net/dev."""

import re
from typing import Optional

from ..errors import MonitorError
from ..options import Option, Regex, Size
from . import procfs
from .base import MONITOR_COMMON_OPTIONS, RateMonitor


class NetMonitor(RateMonitor):
    """Activity while interfaces matching a regex receive or send more than a threshold per second."""

    TYPE = "net"
    OPTIONS = MONITOR_COMMON_OPTIONS + (
        Option(
            "interfaces",
            Regex(),
            default=re.compile(r"^(?!lo$)"),
            doc="Python regular expression matched against interface names in /proc/net/dev "
            "(default: every interface except lo).",
        ),
        Option(
            "receive_threshold",
            Size(),
            default=102400,
            doc="Received bytes per second (summed over matching interfaces) at or above which there is "
            "activity, e.g. 100k, 1M.",
        ),
        Option(
            "send_threshold",
            Size(),
            default=102400,
            doc="Sent bytes per second (summed over matching interfaces) at or above which there is activity.",
        ),
    )

    def __init__(self, name, options, ctx):
        super().__init__(name, options, ctx)
        self.interfaces = options["interfaces"]
        self.rx_meter = procfs.DeltaMeter()
        self.tx_meter = procfs.DeltaMeter()

    def measure(self) -> Optional[str]:
        now = self.ctx.clock.monotonic()
        counters = {
            name: c for name, c in procfs.net_dev_counters(self.ctx.root).items() if self.interfaces.search(name)
        }
        if not counters:
            raise MonitorError("no interface in /proc/net/dev matches /%s/" % self.interfaces.pattern)
        rx = self.rx_meter.update(now, {name: c[0] for name, c in counters.items()})
        tx = self.tx_meter.update(now, {name: c[1] for name, c in counters.items()})
        if rx and sum(rx.values()) >= self.options["receive_threshold"]:
            return "receiving %.0f bytes/s (busiest %s)" % (sum(rx.values()), max(rx, key=rx.__getitem__))
        if tx and sum(tx.values()) >= self.options["send_threshold"]:
            return "sending %.0f bytes/s (busiest %s)" % (sum(tx.values()), max(tx, key=tx.__getitem__))
        return None

    def describe(self) -> str:
        return "net /%s/ rx>=%d tx>=%d B/s" % (
            self.interfaces.pattern,
            self.options["receive_threshold"],
            self.options["send_threshold"],
        )
