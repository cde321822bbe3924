"""Block device activity from /proc/diskstats (catches scrubs and RAID resyncs too)."""

import re
from typing import Optional

from ..errors import MonitorError
from ..options import Number, Option, Regex, Size
from . import procfs
from .base import MONITOR_COMMON_OPTIONS, RateMonitor

WHOLE_DISKS = re.compile(r"^(sd[a-z]+|vd[a-z]+|xvd[a-z]+|hd[a-z]+|nvme\d+n\d+|mmcblk\d+|md\d+)$")
SECTOR = 512  # /proc/diskstats always counts 512-byte sectors


class DiskMonitor(RateMonitor):
    """Activity while disks matching a regex transfer more than a threshold per second."""

    TYPE = "disk"
    OPTIONS = MONITOR_COMMON_OPTIONS + (
        Option(
            "devices",
            Regex(),
            default=WHOLE_DISKS,
            doc="Python regular expression matched against device names in /proc/diskstats. The default "
            "takes whole disks and md arrays (not partitions, loop or dm devices) so nothing is counted "
            "twice.",
        ),
        Option(
            "threshold",
            Size(),
            default=102400,
            doc="Bytes per second (read plus written, summed over matching devices) at or above which there "
            "is activity, e.g. 100k, 5M.",
        ),
        Option(
            "ios_threshold",
            Number(minimum=0),
            default=0,
            doc="Also activity at or above this many completed I/O requests per second (0 = off).",
        ),
    )

    def __init__(self, name, options, ctx):
        super().__init__(name, options, ctx)
        self.devices = options["devices"]
        self.bytes_meter = procfs.DeltaMeter()
        self.ios_meter = procfs.DeltaMeter()

    def measure(self) -> Optional[str]:
        now = self.ctx.clock.monotonic()
        counters = {name: c for name, c in procfs.disk_counters(self.ctx.root).items() if self.devices.search(name)}
        if not counters:
            raise MonitorError("no device in /proc/diskstats matches /%s/" % self.devices.pattern)
        byte_rates = self.bytes_meter.update(now, {name: c.sectors * SECTOR for name, c in counters.items()})
        io_rates = self.ios_meter.update(now, {name: c.ios for name, c in counters.items()})
        total = sum(byte_rates.values())
        if byte_rates and total >= self.options["threshold"]:
            busiest = max(byte_rates, key=byte_rates.__getitem__)
            return "disk I/O %.0f bytes/s (busiest %s)" % (total, busiest)
        ios = sum(io_rates.values())
        if io_rates and self.options["ios_threshold"] and ios >= self.options["ios_threshold"]:
            return "disk I/O %.1f requests/s" % ios
        return None

    def describe(self) -> str:
        return "disk /%s/ >= %d B/s" % (self.devices.pattern, self.options["threshold"])
