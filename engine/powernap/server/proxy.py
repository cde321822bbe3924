"""The sleep proxy: wake a sleeping host when someone on the segment asks for its address.

A client that wants to talk to 198.18.0.12 first broadcasts ARP who-has
(IPv6: a neighbour solicitation); a suspended host cannot answer, so the
client retries (Linux: 3 tries, 1 s apart) and gives up.  The proxy sees
those requests on a raw socket and sends the sleeper's magic packet:

* one wake per sleeper per ``cooldown`` (the retries of a burst collapse
  into the first wake; a host already ``waking`` is not woken again),
* a global token bucket (``rate`` wakes/s, ``burst``); a request that finds
  the bucket empty is queued and served by ``tick`` as tokens return, so a
  flood never loses a sleeper's wake,
* ignored: gratuitous ARP (sender IP = target IP), probes (sender 0.0.0.0 or
  ``::``), ARP replies, and requests from our own MACs or addresses,
  ``ignore_macs`` and the default gateways' MACs (``ignore_gateway``:
  gateways and their sweeps re-ARP every neighbour every few minutes),
* one source (MAC) may cause at most ``source_wakes`` wakes per
  ``source_window``; beyond that its requests are dropped and it is logged
  once per window as an offender (one chatty box must not keep the whole
  fleet awake),
* hosts on ``hold`` (a UPS policy keeps them down) are never woken,
* a host with a known MAC whose engine never reported (``unknown`` from
  the start, e.g. a static ``[host.NAME]``) is woken too
  (``wake_unreported``); an engine host that went quiet is not,
* a frame from a sleeper's own MAC is only a *hint* (anyone can forge a
  source MAC): it triggers a confirmation probe (``tcp_probe``, a TCP
  connect the host must answer) and never changes the state by itself;
  the wake service escalates to IPMI when no confirmation comes.

Optional and off by default, because it is ARP spoofing: ``answer_arp``
answers who-has for a sleeper with the proxy's MAC, so the client's TCP SYN
reaches the proxy, which then wakes the sleeper only for SYNs to listed
``ports``; after the wake a gratuitous ARP from the woken host's MAC gives
the clients their neighbour back.

Parsing and decisions are pure (``parse_frame``, ``SleepProxy.on_frame``),
so tests feed bytes and a fake clock; ``RawListener`` is the socket side.
"""

import collections
import errno
import logging
import socket
import struct
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Tuple

from .. import magic_packet

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ICMPV6 = 58
NS, NA = 135, 136
ZERO_V4 = "0.0.0.0"
ZERO_V6 = "::"


class Frame:
    """What the proxy cares about in one Ethernet frame."""

    __slots__ = ("kind", "src_mac", "sender_ip", "target_ip", "port")

    def __init__(self, kind: str, src_mac: str, sender_ip: str = "", target_ip: str = "", port: int = 0):
        self.kind = kind  # who-has | arp-reply | ns | na | syn | other
        self.src_mac = src_mac
        self.sender_ip = sender_ip
        self.target_ip = target_ip
        self.port = port

    def __repr__(self) -> str:
        return "Frame(%s %s %s->%s:%d)" % (self.kind, self.src_mac, self.sender_ip, self.target_ip, self.port)


def parse_frame(frame: bytes) -> Optional[Frame]:
    """Parse an Ethernet frame (with or without one 802.1Q tag); None when it is too short to matter."""
    if len(frame) < 14:
        return None
    src_mac = magic_packet.format_mac(frame[6:12])
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    offset = 14
    if ethertype == ETH_P_8021Q and len(frame) >= 18:
        ethertype = struct.unpack_from("!H", frame, 16)[0]
        offset = 18
    body = frame[offset:]
    if ethertype == ETH_P_ARP:
        if len(body) < 28:
            return None
        htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", body, 0)
        if htype != 1 or ptype != ETH_P_IP or hlen != 6 or plen != 4:
            return Frame("other", src_mac)
        sender_mac = magic_packet.format_mac(body[8:14])
        sender_ip = socket.inet_ntoa(body[14:18])
        target_ip = socket.inet_ntoa(body[24:28])
        return Frame("who-has" if op == 1 else "arp-reply", sender_mac, sender_ip, target_ip)
    if ethertype == ETH_P_IPV6:
        if len(body) < 40:
            return Frame("other", src_mac)
        src_ip = socket.inet_ntop(socket.AF_INET6, body[8:24])
        if body[6] == ICMPV6 and len(body) >= 64 and body[40] in (NS, NA):
            target = socket.inet_ntop(socket.AF_INET6, body[48:64])
            return Frame("ns" if body[40] == NS else "na", src_mac, src_ip, target)
        if body[6] == 6 and len(body) >= 54 and (body[40 + 13] & 0x12) == 0x02:
            return Frame(
                "syn",
                src_mac,
                src_ip,
                socket.inet_ntop(socket.AF_INET6, body[24:40]),
                struct.unpack_from("!H", body, 42)[0],
            )
        return Frame("other", src_mac, src_ip)
    if ethertype == ETH_P_IP and len(body) >= 20 and body[0] >> 4 == 4:
        header = (body[0] & 0x0F) * 4
        src_ip = socket.inet_ntoa(body[12:16])
        if body[9] == 6 and len(body) >= header + 14 and (body[header + 13] & 0x12) == 0x02:
            return Frame(
                "syn", src_mac, src_ip, socket.inet_ntoa(body[16:20]), struct.unpack_from("!H", body, header + 2)[0]
            )
        return Frame("other", src_mac, src_ip)
    return Frame("other", src_mac)


def build_arp(
    op: int, sender_mac: str, sender_ip: str, target_mac: str, target_ip: str, dst_mac: str = "ff:ff:ff:ff:ff:ff"
) -> bytes:
    """An Ethernet ARP frame (op 1 request, 2 reply)."""
    smac = magic_packet.parse_mac(sender_mac)
    return (
        magic_packet.parse_mac(dst_mac) + smac + struct.pack("!H", ETH_P_ARP)
        + struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, op)
        + smac + socket.inet_aton(sender_ip) + magic_packet.parse_mac(target_mac) + socket.inet_aton(target_ip)
    )  # fmt: skip


class TokenBucket:
    def __init__(self, rate: float, burst: int, now: float):
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class SleepProxy:
    """Decides, frame by frame, whom to wake.  ``wake(record, cause)`` does the sending."""

    def __init__(
        self,
        registry: Any,
        wake: Callable[[Any, str], Any],
        own_macs: Iterable[str] = (),
        ignore_macs: Iterable[str] = (),
        cooldown: float = 60.0,
        rate: float = 10.0,
        burst: int = 20,
        answer_arp: bool = False,
        ports: Iterable[Tuple[int, int]] = (),
        proxy_mac: str = "",
        send_frame: Optional[Callable[[bytes], Any]] = None,
        now: float = 0.0,
        wake_unreported: bool = True,
        probe: Optional[Callable[[Any], Any]] = None,
        source_wakes: int = 0,
        source_window: float = 3600.0,
        log: Optional[logging.Logger] = None,
    ):
        self.registry = registry
        self.wake = wake
        self.own_macs = {m.lower() for m in own_macs}
        self.ignore_macs = {m.lower() for m in ignore_macs}
        self.cooldown = cooldown
        self.bucket = TokenBucket(rate, burst, now)
        self.answer_arp = answer_arp
        self.ports = tuple(ports)
        self.proxy_mac = proxy_mac
        self.send_frame = send_frame
        self.wake_unreported = wake_unreported
        self.probe = probe  # called with a record when a frame hints that a sleeper is up
        self.last_wake: Dict[str, float] = {}
        self.pending: Deque[Tuple[str, str]] = collections.deque()
        self.counts: Dict[str, int] = collections.Counter()
        self.own_ips: set = set()
        self.gateway_macs: set = set()
        self.source_wakes = source_wakes  # 0: no per-source limit
        self.source_window = source_window
        self.by_source: Dict[str, Deque[float]] = {}  # source MAC -> times of the wakes it caused
        self.offenders: Dict[str, float] = {}  # source MAC -> when it was last logged
        self.log = log or logging.getLogger("powerwaked.proxy")

    def protect(self, own_ips: Iterable[str], gateway_macs: Iterable[str]) -> None:
        """Our own addresses and the gateways' MACs (re-read now and then): their requests never wake anyone."""
        self.own_ips = set(own_ips)
        self.gateway_macs = {m.lower() for m in gateway_macs}

    def on_frame(self, data: bytes, now: float) -> Optional[str]:
        frame = parse_frame(data)
        if frame is None:
            return None
        return self.on_parsed(frame, now)

    def on_parsed(self, frame: Frame, now: float) -> Optional[str]:
        outcome = self._decide(frame, now)
        if outcome is not None:
            self.counts[outcome] += 1
        return outcome

    def _ours(self, record: Any) -> Any:
        """The record if this segment's: in fleet mode the registry holds every segment's hosts (the mirror), and a
        host of another segment is neither answered for nor woken nor probed from here (its own leader does)."""
        owns = self.registry.owns
        return record if record is not None and (owns is None or owns(record)) else None

    def _decide(self, frame: Frame, now: float) -> Optional[str]:
        sender = self._ours(self.registry.by_mac(frame.src_mac))
        if sender is not None and not sender.up and frame.src_mac not in self.own_macs:
            # A sleeper that speaks may be awake, or someone forged its MAC: probe, do not believe.
            self.counts["hint"] += 1
            if self.probe is not None:
                self.probe(sender)
        if frame.kind not in ("who-has", "ns", "syn"):
            return None
        if frame.src_mac in self.own_macs or frame.src_mac in self.ignore_macs or frame.sender_ip in self.own_ips:
            return "ignored-mac"
        if frame.src_mac in self.gateway_macs:
            return "gateway"
        if frame.sender_ip in (ZERO_V4, ZERO_V6):
            return "probe"
        if frame.sender_ip == frame.target_ip:
            return "gratuitous"
        target = self._ours(self.registry.by_ip(frame.target_ip))
        if target is None or target.up:
            return None
        if target.state == "unknown" and not (self.wake_unreported and target.last_seen is None and target.macs):
            return None  # an engine host that went quiet may be up: waking it on every ARP helps nobody
        if target.hold:
            return "held"
        if target.state == "waking":
            return "collapsed"
        if self.answer_arp:
            if frame.kind == "who-has":
                self._answer(frame, target)
                return "answered"
            if frame.kind == "syn" and not any(low <= frame.port <= high for low, high in self.ports):
                return "port-ignored"
        elif frame.kind == "syn":
            return None
        last = self.last_wake.get(target.name)
        if last is not None and now - last < self.cooldown:
            return "collapsed"
        if not self._source_allows(frame, now):
            return "source-limited"
        cause = "%s %s from %s (%s)" % (frame.kind, frame.target_ip, frame.sender_ip, frame.src_mac)
        if not self.bucket.take(now):
            if all(name != target.name for name, _cause in self.pending):
                self.pending.append((target.name, cause))
            return "queued"
        self.last_wake[target.name] = now
        self.wake(target, cause)
        return "woke"

    def _source_allows(self, frame: Frame, now: float) -> bool:
        """Count one wake for the frame's source; False (logged once per window) once it has used its share."""
        if self.source_wakes <= 0:
            return True
        times = self.by_source.get(frame.src_mac)
        if times is None:
            if len(self.by_source) >= 4096:  # bounded: forget sources whose windows have passed
                for mac in [m for m, t in self.by_source.items() if not t or now - t[-1] >= self.source_window]:
                    del self.by_source[mac]
            times = self.by_source.setdefault(frame.src_mac, collections.deque())
        while times and now - times[0] >= self.source_window:
            times.popleft()
        if len(times) >= self.source_wakes:
            last = self.offenders.get(frame.src_mac)
            if last is None or now - last >= self.source_window:
                self.offenders[frame.src_mac] = now
                self.log.warning(
                    "sleep proxy: %s (%s) asked for sleepers %d times in %.0fs: ignoring it (source_wakes)",
                    frame.src_mac, frame.sender_ip, len(times) + 1, self.source_window,
                )  # fmt: skip
            return False
        times.append(now)
        return True

    def tick(self, now: float) -> List[str]:
        """Serve queued wakes as the rate limit allows; returns the names woken."""
        woken = []
        while self.pending:
            name, cause = self.pending[0]
            record = self.registry.get(name)
            if record is None or record.up or record.hold or record.state == "waking":
                self.pending.popleft()
                continue
            if not self.bucket.take(now):
                break
            self.pending.popleft()
            self.last_wake[name] = now
            self.wake(record, cause + " (rate-limited, queued)")
            self.counts["woke"] += 1
            woken.append(name)
        return woken

    def _answer(self, frame: Frame, target: Any) -> None:
        if self.send_frame is None or not self.proxy_mac:
            return
        self.send_frame(build_arp(2, self.proxy_mac, frame.target_ip, frame.src_mac, frame.sender_ip, frame.src_mac))

    def announce(self, record: Any) -> None:
        """After a wake in answer_arp mode: a gratuitous ARP in the woken host's name."""
        if not self.answer_arp or self.send_frame is None or not record.mac:
            return
        for ip in record.ips:
            if ":" not in ip:
                self.send_frame(build_arp(2, record.mac, ip, "ff:ff:ff:ff:ff:ff", ip))


def tcp_probe(ips: Iterable[str], ports: Iterable[Tuple[int, int]], timeout: float = 1.0, limit: int = 8) -> str:
    """Connect to a host's addresses and ports; the first that answers (accepts or refuses) proves it is up.

    Returns what answered (``"198.18.0.12:22 accepted"``) or "" when nothing did.
    At most ``limit`` connects of ``timeout`` seconds each: the probe is bounded.
    """
    tried = 0
    for ip in ips:
        for low, high in ports:
            for port in range(low, min(high, low + limit) + 1):
                if tried >= limit:
                    return ""
                tried += 1
                family = socket.AF_INET6 if ":" in ip else socket.AF_INET
                with socket.socket(family, socket.SOCK_STREAM) as sock:
                    sock.settimeout(timeout)
                    code = sock.connect_ex((ip, port))
                if code == 0:
                    return "%s:%d accepted" % (ip, port)
                if code == errno.ECONNREFUSED:
                    return "%s:%d refused (the host answered)" % (ip, port)
    return ""


SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_DROP_MEMBERSHIP = 2
PACKET_MR_MULTICAST = 0


def solicited_node_mac(ipv6: str) -> Optional[str]:
    """The Ethernet multicast MAC of an address's solicited-node group (33:33:ff + its last 24 bits)."""
    try:
        raw = socket.inet_pton(socket.AF_INET6, ipv6.split("%")[0])
    except (OSError, ValueError):
        return None
    return "33:33:ff:%02x:%02x:%02x" % (raw[13], raw[14], raw[15])


class RawListener:
    """AF_PACKET sockets on the segment interface: ARP always, IPv6 (and IPv4 for answer_arp) on demand."""

    def __init__(self, interface: str, ipv6: bool = True, ipv4: bool = False):
        self.interface = interface
        self.sockets: List[socket.socket] = []
        for proto, wanted in ((ETH_P_ARP, True), (ETH_P_IPV6, ipv6), (ETH_P_IP, ipv4)):
            if not wanted:
                continue
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
            sock.bind((interface, proto))
            sock.setblocking(False)
            self.sockets.append(sock)

        self.joined: set = set()

    def join_solicited(self, ipv6_addresses: Iterable[str]) -> None:
        """Receive the solicited-node multicast of these IPv6 addresses (NICs that filter multicast drop NS else)."""
        wanted = {solicited_node_mac(ip) for ip in ipv6_addresses}
        wanted.discard(None)
        sock = next((s for s in self.sockets if s.proto == socket.htons(ETH_P_IPV6)), None)
        if sock is None or wanted == self.joined:
            return
        index = socket.if_nametoindex(self.interface)
        for mac, option in [(m, PACKET_ADD_MEMBERSHIP) for m in wanted - self.joined] + [
            (m, PACKET_DROP_MEMBERSHIP) for m in self.joined - wanted
        ]:
            mreq = struct.pack("iHH8s", index, PACKET_MR_MULTICAST, 6, magic_packet.parse_mac(mac))
            try:
                sock.setsockopt(SOL_PACKET, option, mreq)
            except OSError:
                continue
            if option == PACKET_ADD_MEMBERSHIP:
                self.joined.add(mac)
            else:
                self.joined.discard(mac)

    def fds(self) -> List[int]:
        return [sock.fileno() for sock in self.sockets]

    def read(self, fd: int, limit: int = 256) -> List[bytes]:
        """Drain up to ``limit`` frames from one socket; outgoing copies of our own frames are skipped."""
        sock = next(s for s in self.sockets if s.fileno() == fd)
        frames = []
        for _index in range(limit):
            try:
                data, address = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                break
            if address[2] == socket.PACKET_OUTGOING:
                continue
            frames.append(data)
        return frames

    def send(self, frame: bytes) -> None:
        self.sockets[0].send(frame)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []
