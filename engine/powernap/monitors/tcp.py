"""TCP connections to local ports (IPv4 and IPv6): the ssh, web and database monitors."""

import ipaddress
from typing import Dict, List, Optional, Tuple

from ..options import Boolean, Duration, Integer, ListOf, Option, OptionType, PortRanges
from . import procfs
from .base import MONITOR_COMMON_OPTIONS, Monitor
from .packet import ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, PacketListener, build_filter, ip_source

TCP_FIN, TCP_SYN, TCP_RST = 0x01, 0x02, 0x04
HANDSHAKE_SECONDS = 3.0  # follow a SYN this long (the client's first SYN retransmit comes after 1 s)
FOLLOW_FIRST = 0.001  # first early check after an unfinished handshake (the selector counts ms); x4 each time
FOLLOW_LAST = 0.5
MAX_HANDSHAKES = 64  # SYNs followed by lookup at once (a flood falls back to reading the table)


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
            doc="While no connection is open and connections are followed as events, the connection table is "
            "re-read at least this often as a safety net (events, a SYN, FIN or RST, make the next check "
            "re-read it). While connections are open, or without events, it is read on every check, so the "
            "end of the last connection is seen within one interval.",
        ),
        Option(
            "events",
            Boolean(),
            default=True,
            doc="Watch connections begin and end (TCP SYN, FIN, RST) with a kernel-filtered packet socket, so "
            "a new connection counts as soon as it is established rather than at the next check (needs "
            "root). A SYN alone never counts: a refused or unanswered connection attempt is not activity.",
        ),
    )

    def __init__(self, name, options, ctx):
        super().__init__(name, options, ctx)
        self.ports = options["ports"]
        self.listener: Optional[PacketListener] = None
        self.polled_at: Optional[float] = None  # monotonic time of the last table read (event mode)
        self.last_poll: Optional[str] = None
        self.stale = False  # a connection ended (FIN/RST): re-read the table at the next check
        self.handshake_until = 0.0  # a SYN came: follow its handshake until then
        self.follow_at: Optional[float] = None
        self.follow_step = FOLLOW_FIRST
        self.handshakes: Dict[Tuple, None] = {}  # (local, port, remote, port) of SYNs being followed

    def open(self) -> None:
        if self.options["events"]:
            listener = PacketListener(
                build_filter(IPPROTO_TCP, self.ports, tcp_flags=TCP_SYN | TCP_FIN | TCP_RST, snaplen=128)
            )
            try:
                listener.open()
                self.listener = listener
            except OSError as exc:
                self.log.info("no packet socket for connection events (%s); polling only", exc)

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
        following = now < self.handshake_until
        if following and self.last_poll is None and self.handshakes and self._can_look_up():
            # Ask the kernel about exactly the connections whose SYN we saw (a hash lookup each)
            # instead of dumping the table while the handshake goes on.
            found = self._established_handshake()
            if found:
                self.last_poll, self.polled_at, self.stale = found, now, False
                self.handshake_until, self.handshakes, self.follow_at = 0.0, {}, None
                return found
            following = False  # looked up: no table read for the handshake's sake
            self._follow(now)
        # While connections are open the table is read on every check (the host is busy anyway), so
        # the end of the last one is seen within one interval even when no FIN or RST comes (a peer
        # that vanished, a dropped packet).  An idle host reads it only on events and poll_every.
        if (
            self.stale
            or following
            or self.last_poll is not None
            or self.polled_at is None
            or now - self.polled_at >= self.options["poll_every"]
        ):
            self._read_table(now)
        if now < self.handshake_until and self.last_poll is None:
            self._follow(now)
        else:
            self.follow_at, self.handshakes = None, {}
        return self.last_poll

    def _follow(self, now: float) -> None:
        self.follow_at = min(now + self.follow_step, self.handshake_until)
        self.follow_step = min(self.follow_step * 4, FOLLOW_LAST)

    def _can_look_up(self) -> bool:
        return self.ctx.root.is_real and self.options["min_connections"] == 1

    def _established_handshake(self) -> Optional[str]:
        for local, local_port, remote, remote_port in self.handshakes:
            if procfs.tcp_state(local, local_port, remote, remote_port) == procfs.TCP_ESTABLISHED:
                return "1 established connection on port %d (from %s)" % (local_port, remote)
        return None

    def recheck(self) -> Optional[str]:
        if self.listener is None:
            return self.count_connections()
        self._read_table(self.ctx.clock.monotonic())
        return self.last_poll

    def next_check(self) -> Optional[float]:
        return self.follow_at

    def _read_table(self, now: float) -> None:
        self.last_poll = self.count_connections()
        self.polled_at = now
        self.stale = False
        if self.last_poll is not None:
            self.handshake_until = 0.0  # established: nothing more to follow

    def count_connections(self) -> Optional[str]:
        needed = self.options["min_connections"]
        count = 0
        first = None
        for entry in procfs.tcp_connections(self.ctx.root, (procfs.TCP_ESTABLISHED,)):
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
        """A connection begins (SYN) or ends (FIN, RST).  Only an established connection is activity:
        the table is read at once for a SYN (on a LAN the handshake is usually done by now) and then
        followed with early checks for a few seconds; an end makes the next check re-read it."""
        if self.listener is None:
            return None
        syn = False
        for frame, ethertype, _interface in self.listener.receive():
            source = ip_source(frame, ethertype)
            if source is None:
                continue
            address = ipaddress.ip_address(source)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            header = (frame[0] & 0x0F) * 4 if ethertype == ETH_P_IP else 40 if ethertype == ETH_P_IPV6 else None
            if header is None or len(frame) < header + 14:
                continue
            flags = frame[header + 13]
            if flags & (TCP_FIN | TCP_RST):
                self.stale = True
            elif flags & TCP_SYN and self.wanted(address):
                syn = True
                destination = frame[16:20] if ethertype == ETH_P_IP else frame[24:40]
                if len(self.handshakes) < MAX_HANDSHAKES and len(destination) in (4, 16):
                    local = ipaddress.ip_address(bytes(destination))
                    if isinstance(local, ipaddress.IPv6Address) and local.ipv4_mapped is not None:
                        local = local.ipv4_mapped
                    ports = frame[header : header + 4]
                    key = (local, int.from_bytes(ports[2:4], "big"), address, int.from_bytes(ports[0:2], "big"))
                    self.handshakes[key] = None
        if not syn:
            return None
        now = self.ctx.clock.monotonic()
        self.handshake_until = now + HANDSHAKE_SECONDS
        self.follow_step = FOLLOW_FIRST
        was = self.last_poll
        reason = self.check()
        return reason if reason != was else None

    def describe(self) -> str:
        return "tcp ports %s%s%s" % (
            describe_ranges(self.ports),
            " >= %d connections" % self.options["min_connections"] if self.options["min_connections"] > 1 else "",
            " (+connection events)" if self.listener is not None else "",
        )
