"""TCP connections to local ports (IPv4 and IPv6): the ssh, web and database monitors."""

import ipaddress
from typing import List, Optional, Tuple

from ..options import Boolean, Duration, Integer, ListOf, Option, OptionType, PortRanges
from . import procfs
from .base import MONITOR_COMMON_OPTIONS, Monitor
from .packet import ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, PacketListener, build_filter, ip_source


class Network(OptionType):
    """An IPv4/IPv6 address or network: ``10.0.0.0/8``, ``2001:db8::/32``, ``192.0.2.7``."""

    def parse(self, text: str):
        try:
            return ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise ValueError("%r is not an IP address or network" % text) from None

    def describe(self) -> str:
        return "IP network"


def in_ranges(port: int, ranges: Tuple[Tuple[int, int], ...]) -> bool:
    return any(low <= port <= high for low, high in ranges)


def describe_ranges(ranges: Tuple[Tuple[int, int], ...]) -> str:
    return ",".join(str(low) if low == high else "%d-%d" % (low, high) for low, high in ranges)


class TcpMonitor(Monitor):
    """Activity while at least min_connections TCP connections to local ports are established."""

    TYPE = "tcp"
    OPTIONS = MONITOR_COMMON_OPTIONS + (
        Option(
            "ports",
            PortRanges(),
            required=True,
            doc="Local ports and ranges whose connections count, e.g. 22 or 80,443 or 5432,6000-6010 "
            "(connections this host makes to others do not count).",
        ),
        Option(
            "min_connections",
            Integer(minimum=1),
            default=1,
            doc="Established connections needed for activity; raise it for services with idle pools, e.g. a "
            "database whose application keeps 5 connections open: min_connections = 6.",
        ),
        Option(
            "remote",
            ListOf(Network()),
            default=(),
            doc="Only count connections from these addresses or networks (default: from anywhere).",
        ),
        Option(
            "ignore_remote",
            ListOf(Network()),
            default=(),
            doc="Never count connections from these addresses or networks, e.g. a monitoring server.",
        ),
        Option(
            "poll_every",
            Duration(minimum=0),
            default=30.0,
            doc="While new connections are seen as events, the connection table (whose read costs the kernel "
            "milliseconds on hosts with large TCP hash tables) is re-read at most this often to learn whether "
            "connections are still open; without events it is read on every check.",
        ),
        Option(
            "events",
            Boolean(),
            default=True,
            doc="Also watch for new connections (TCP SYN) with a kernel-filtered packet socket so activity "
            "is seen at once rather than at the next check (needs root; only with min_connections = 1).",
        ),
    )

    def __init__(self, name, options, ctx):
        super().__init__(name, options, ctx)
        self.ports = options["ports"]
        self.listener: Optional[PacketListener] = None
        self.polled_at: Optional[float] = None  # monotonic time of the last table read (event mode)
        self.last_poll: Optional[str] = None

    def open(self) -> None:
        if self.options["events"] and self.options["min_connections"] == 1:
            listener = PacketListener(build_filter(IPPROTO_TCP, self.ports, syn_only=True, snaplen=128))
            try:
                listener.open()
                self.listener = listener
            except OSError as exc:
                self.log.info("no packet socket for new-connection events (%s); polling only", exc)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    def wanted(self, address) -> bool:
        if self.options["remote"] and not any(address in net for net in self.options["remote"]):
            return False
        return not any(address in net for net in self.options["ignore_remote"])

    def check(self) -> Optional[str]:
        if self.listener is None:
            return self.count_connections()
        now = self.ctx.clock.monotonic()
        if self.polled_at is None or now - self.polled_at >= self.options["poll_every"]:
            self.last_poll = self.count_connections()
            self.polled_at = now
        return self.last_poll

    def count_connections(self) -> Optional[str]:
        needed = self.options["min_connections"]
        count = 0
        first = None
        for table in ("tcp", "tcp6"):
            for entry in procfs.socket_entries(self.ctx.root, table, (procfs.TCP_ESTABLISHED,)):
                if in_ranges(entry.local_port, self.ports) and self.wanted(entry.remote):
                    count += 1
                    first = first or entry
                    if count >= needed:
                        return "%s%d established connection%s on port %d (from %s)" % (
                            "" if needed == 1 else ">= ",
                            count,
                            "" if count == 1 else "s",
                            first.local_port,
                            first.remote,
                        )
        return None

    def fds(self) -> List[int]:
        fd = self.listener.fileno() if self.listener is not None else None
        return [] if fd is None else [fd]

    def on_readable(self, fd: int) -> Optional[str]:
        if self.listener is None:
            return None
        reason = None
        for frame, ethertype, interface in self.listener.receive():
            source = ip_source(frame, ethertype)
            if source is None:
                continue
            address = ipaddress.ip_address(source)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            if not self.wanted(address):
                continue
            header = (frame[0] & 0x0F) * 4 if ethertype == ETH_P_IP else 40 if ethertype == ETH_P_IPV6 else None
            if header is None or len(frame) < header + 4:
                continue
            port = int.from_bytes(frame[header + 2 : header + 4], "big")
            self.polled_at = None  # re-read the table at the next check
            reason = reason or "new connection to port %d from %s (%s)" % (port, address, interface)
        return reason

    def describe(self) -> str:
        return "tcp ports %s%s%s" % (
            describe_ranges(self.ports),
            " >= %d connections" % self.options["min_connections"] if self.options["min_connections"] > 1 else "",
            " (+SYN events)" if self.listener is not None else "",
        )
