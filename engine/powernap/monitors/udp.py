"""UDP traffic to local ports, seen without binding them."""

from typing import Optional

from ..errors import MonitorError
from ..options import Integer, Option, PortRanges
from .base import MONITOR_COMMON_OPTIONS, Monitor
from .packet import IPPROTO_UDP, PacketListener, build_filter
from .tcp import describe_ranges


class UdpMonitor(Monitor):
    """Activity when datagrams arrive for local UDP ports (seen with a packet socket, the port is never bound)."""

    TYPE = "udp"
    OPTIONS = MONITOR_COMMON_OPTIONS + (
        Option(
            "ports",
            PortRanges(),
            required=True,
            doc="Local UDP ports and ranges to watch, e.g. 53 or 27015-27030 (the service on them keeps "
            "receiving every datagram: nothing is bound).",
        ),
        Option(
            "min_packets",
            Integer(minimum=1),
            default=1,
            doc="Datagrams needed between two checks for activity (the kernel queue holds at most a "
            "few hundred, so very large values are not meaningful).",
        ),
    )

    def __init__(self, name, options, ctx):
        super().__init__(name, options, ctx)
        self.ports = options["ports"]
        # Polled on purpose: a busy UDP service must not wake the daemon per datagram.
        self.listener = PacketListener(build_filter(IPPROTO_UDP, self.ports, snaplen=64), rcvbuf=32768)
        self.error: Optional[str] = None

    def open(self) -> None:
        try:
            self.listener.open()
            self.error = None
        except OSError as exc:
            self.error = (
                "cannot watch UDP traffic without binding the port: packet socket refused (%s); "
                "run as root (CAP_NET_RAW)" % (exc.strerror or exc)
            )

    def close(self) -> None:
        self.listener.close()

    def check(self) -> Optional[str]:
        if self.error:
            raise MonitorError(self.error)
        frames = self.listener.receive(limit=max(self.options["min_packets"], 1) + 512)
        if len(frames) >= self.options["min_packets"]:
            return "%d UDP datagram%s to port %s" % (
                len(frames),
                "" if len(frames) == 1 else "s",
                describe_ranges(self.ports),
            )
        return None

    def describe(self) -> str:
        return "udp ports %s" % describe_ranges(self.ports)
