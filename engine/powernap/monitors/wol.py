"""Wake-on-LAN magic packets aimed at this host (a WoL sent to an awake host means "I need it")."""

import socket
from typing import Dict, List, Optional, Set

from .. import magic_packet
from ..errors import MonitorError
from ..options import Boolean, Choice, ListOf, Option, OptionType, PortRanges
from .base import MONITOR_COMMON_OPTIONS, Monitor
from .packet import IPPROTO_UDP, PacketListener, build_filter, ip_source, local_macs
from .tcp import describe_ranges


class MacAddress(OptionType):
    """A MAC address, any common spelling; the value is the aa:bb:cc:dd:ee:ff form."""

    def parse(self, text: str) -> str:
        return magic_packet.format_mac(magic_packet.parse_mac(text))

    def describe(self) -> str:
        return "MAC address"


class SecureOn(OptionType):
    """A SecureOn password (a.b.c.d or 4/6 hex bytes); the value is the text, checked here."""

    def parse(self, text: str) -> str:
        magic_packet.parse_secureon(text)
        return text.strip()

    def describe(self) -> str:
        return "SecureOn password (a.b.c.d or 6 hex bytes)"


class WolMonitor(Monitor):
    """Activity when a Wake-on-LAN magic packet for one of this host's MACs arrives (UDP or ethertype 0x0842)."""

    TYPE = "wol"
    OPTIONS = MONITOR_COMMON_OPTIONS + (
        Option(
            "ports",
            PortRanges(),
            default=((7, 7), (9, 9)),
            doc="UDP ports magic packets are sent to (7 and 9 are the usual ones).",
        ),
        Option(
            "ethertype",
            Boolean(),
            default=True,
            doc="Also accept raw Ethernet magic packets (ethertype 0x0842, as etherwake sends them).",
        ),
        Option(
            "macs",
            ListOf(MacAddress()),
            default=(),
            doc="MAC addresses that count; default: every local interface's address (all of "
            "/sys/class/net except lo, re-read when a packet arrives so new NICs count too).",
        ),
        Option(
            "secureon",
            SecureOn(),
            default="",
            secret=True,
            doc="If set, only packets carrying this SecureOn password count.",
        ),
        Option(
            "method",
            Choice("auto", "packet", "udp"),
            default="auto",
            doc="'packet' sees the traffic with a kernel-filtered packet socket and binds nothing (needs "
            "root); 'udp' binds the ports with SO_REUSEADDR/SO_REUSEPORT (no raw frames, and a unicast "
            "datagram may go to another program sharing the port); 'auto' tries packet, then udp.",
        ),
    )

    def __init__(self, name, options, ctx):
        super().__init__(name, options, ctx)
        self.ports = options["ports"]
        self.secureon = magic_packet.parse_secureon(options["secureon"])
        self.fixed_macs = {magic_packet.parse_mac(mac) for mac in options["macs"]}
        self.listener: Optional[PacketListener] = None
        self.udp: Dict[int, socket.socket] = {}
        self.mode = "closed"

    def open(self) -> None:
        method = self.options["method"]
        errors = []
        if method in ("auto", "packet"):
            listener = PacketListener(
                build_filter(IPPROTO_UDP, self.ports, wol_ethertype=self.options["ethertype"], snaplen=512),
                rcvbuf=65536,
            )
            try:
                listener.open()
                self.listener = listener
                self.mode = "packet"
                return
            except OSError as exc:
                errors.append("packet socket: %s" % (exc.strerror or exc))
        if method in ("auto", "udp"):
            self._open_udp(errors)
        if not self.udp:
            raise MonitorError("cannot listen for magic packets (%s)" % "; ".join(errors))
        self.mode = "udp"
        if errors:
            self.log.info("wol monitor: %s", "; ".join(errors))

    def _open_udp(self, errors: List[str]) -> None:
        for low, high in self.ports:
            for port in range(low, min(high, low + 15) + 1):  # a handful of ports, not a range of sockets
                for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
                    sock = socket.socket(family, socket.SOCK_DGRAM)
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        if hasattr(socket, "SO_REUSEPORT"):
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                        if family == socket.AF_INET6:
                            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                        sock.setblocking(False)
                        sock.bind((address, port))
                    except OSError as exc:
                        sock.close()
                        errors.append("udp %s port %d: %s" % (address, port, exc.strerror or exc))
                        continue
                    self.udp[sock.fileno()] = sock

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        for sock in self.udp.values():
            sock.close()
        self.udp = {}
        self.mode = "closed"

    def fds(self) -> List[int]:
        if self.listener is not None:
            fd = self.listener.fileno()
            return [] if fd is None else [fd]
        return list(self.udp)

    def macs(self) -> Set[bytes]:
        if self.fixed_macs:
            return self.fixed_macs
        hook = self.ctx.hooks.get("local_macs")
        return set(hook()) if hook is not None else local_macs(self.ctx.root)

    def _match(self, data: bytes, macs: Set[bytes]) -> Optional[bytes]:
        for mac, password in magic_packet.find(data):
            if mac in macs and (not self.secureon or password[: len(self.secureon)] == self.secureon):
                return mac
        return None

    def on_readable(self, fd: int) -> Optional[str]:
        frames = []
        if self.listener is not None:
            for frame, ethertype, interface in self.listener.receive():
                if ethertype == 0x0842:
                    frames.append((frame, "ethertype 0x0842 on %s" % interface))
                else:
                    frames.append((frame, "UDP from %s on %s" % (ip_source(frame, ethertype), interface)))
        elif fd in self.udp:
            for _unused in range(64):
                try:
                    data, peer = self.udp[fd].recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    break
                frames.append((data, "UDP port %d from %s" % (self.udp[fd].getsockname()[1], peer[0])))
        if not frames:
            return None
        macs = self.macs()
        for data, how in frames:
            mac = self._match(data, macs)
            if mac is not None:
                return "Wake-on-LAN packet for %s (%s)" % (magic_packet.format_mac(mac), how)
        return None

    def describe(self) -> str:
        return "wol ports %s%s (%s)" % (
            describe_ranges(self.ports),
            " + ethertype 0x0842" if self.options["ethertype"] else "",
            self.mode,
        )
