"""DNS-SD over multicast DNS for ``_powerwaked._udp.local`` (RFC 6762/6763, compatible with avahi).

``Responder`` (the server) answers PTR/SRV/TXT/A questions for its service
instance ``<host>._powerwaked._udp.local`` on 224.0.0.251:5353, by
multicast, or by unicast to a one-shot querier's source port (RFC 6762
§6.7, which is what ``browse`` is).  It shares port 5353 with avahi
(SO_REUSEADDR/SO_REUSEPORT); where avahi owns the box, the role may instead
drop an avahi service file, and both ways browse alike.

``browse`` (the engines, when ``[server] url`` is empty and a token is set)
sends one query and returns the first server's ``(address, port)``.
"""

import os
import socket
import struct
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import SERVICE_TYPE
from .netinfo import NetView

MDNS_ADDR = "224.0.0.251"
MDNS_PORT = 5353
SERVICE = SERVICE_TYPE + ".local"
META = "_services._dns-sd._udp.local"
T_A, T_PTR, T_TXT, T_SRV, T_ANY = 1, 12, 16, 33, 255
CLASS_IN = 1
CACHE_FLUSH = 0x8000
TTL = 120


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("utf-8")
        if not 0 < len(raw) < 64:
            raise ValueError("bad DNS label in %r" % name)
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def decode_name(data: bytes, offset: int) -> Tuple[str, int]:
    """A (possibly compressed) name at ``offset``; returns it and the offset after it."""
    labels: List[str] = []
    end = None
    for _jump in range(32):  # bounds compression loops
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            continue
        if length == 0:
            return ".".join(labels), (end if end is not None else offset + 1)
        labels.append(data[offset + 1 : offset + 1 + length].decode("utf-8", "replace"))
        offset += 1 + length
    raise ValueError("DNS name compression loop")


def record(name: str, rtype: int, rdata: bytes, ttl: int = TTL, flush: bool = False) -> bytes:
    rclass = CLASS_IN | (CACHE_FLUSH if flush else 0)
    return encode_name(name) + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def message(
    ident: int,
    flags: int,
    questions: Sequence[Tuple[str, int]],
    answers: Sequence[bytes],
    additionals: Sequence[bytes] = (),
) -> bytes:
    head = struct.pack("!HHHHHH", ident, flags, len(questions), len(answers), 0, len(additionals))
    body = b"".join(encode_name(n) + struct.pack("!HH", t, CLASS_IN) for n, t in questions)
    return head + body + b"".join(answers) + b"".join(additionals)


def parse(data: bytes) -> Dict[str, Any]:
    """Questions and resource records of a DNS message (rdata decoded for A, PTR, SRV, TXT)."""
    ident, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", data, 0)
    offset = 12
    questions = []
    for _index in range(qd):
        name, offset = decode_name(data, offset)
        qtype, qclass = struct.unpack_from("!HH", data, offset)
        offset += 4
        questions.append((name.lower(), qtype, bool(qclass & 0x8000)))
    records = []
    for _index in range(an + ns + ar):
        name, offset = decode_name(data, offset)
        rtype, _rclass, ttl, length = struct.unpack_from("!HHIH", data, offset)
        offset += 10
        rdata = data[offset : offset + length]
        value: Any = rdata
        if rtype == T_A and length == 4:
            value = socket.inet_ntoa(rdata)
        elif rtype == T_PTR:
            value = decode_name(data, offset)[0]
        elif rtype == T_SRV:
            priority, weight, port = struct.unpack_from("!HHH", data, offset)
            value = (priority, weight, port, decode_name(data, offset + 6)[0])
        elif rtype == T_TXT:
            value = _txt(rdata)
        records.append((name.lower(), rtype, ttl, value))
        offset += length
    return {"id": ident, "flags": flags, "questions": questions, "records": records}


def _txt(rdata: bytes) -> List[str]:
    items, offset = [], 0
    while offset < len(rdata):
        length = rdata[offset]
        items.append(rdata[offset + 1 : offset + 1 + length].decode("utf-8", "replace"))
        offset += 1 + length
    return items


def _source_address(interface: str) -> str:
    """The IPv4 address this host uses towards the mDNS group (on ``interface`` if given)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        if interface:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode() + b"\0")
        probe.connect((MDNS_ADDR, MDNS_PORT))
        return probe.getsockname()[0]


class Responder:
    def __init__(
        self,
        hostname: str,
        port: int,
        interface: str = "",
        log: Any = None,
        address: str = "",
        group: Tuple[str, int] = (MDNS_ADDR, MDNS_PORT),
        on_link: Optional[Callable[[str], bool]] = None,
    ):
        self.host = hostname.split(".")[0]
        # Queries from off the link are never answered: an mDNS responder must not reflect (CVE-2017-6519).
        self.on_link = on_link or NetView().refresh().on_link
        self.off_link = 0
        self.instance = "%s.%s" % (self.host, SERVICE)
        self.target = "%s.local" % self.host
        self.port = port
        self.log = log
        self.address = address or _source_address(interface)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.group = group
        sock.bind(("", group[1]))
        membership = socket.inet_aton(group[0]) + socket.inet_aton(self.address)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(self.address))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        sock.setblocking(False)
        self.sock = sock
        self.answered = 0
        self.announce()

    def records(self, ttl: int = TTL) -> Tuple[List[bytes], List[bytes]]:
        srv = struct.pack("!HHH", 0, 0, self.port) + encode_name(self.target)
        txt = b"".join(bytes([len(t)]) + t for t in (b"v=1", b"api=http", b"reports=udp"))
        answers = [record(SERVICE, T_PTR, encode_name(self.instance), ttl)]
        extra = [
            record(self.instance, T_SRV, srv, ttl, flush=True),
            record(self.instance, T_TXT, txt, ttl, flush=True),
            record(self.target, T_A, socket.inet_aton(self.address), ttl, flush=True),
        ]
        return answers, extra

    def announce(self, ttl: int = TTL) -> None:
        answers, extra = self.records(ttl)
        try:
            self.sock.sendto(message(0, 0x8400, [], answers + extra), self.group)
        except OSError as exc:
            if self.log is not None:
                self.log.debug("mDNS announce failed: %s", exc)

    def on_readable(self) -> None:
        for _index in range(32):
            try:
                data, sender = self.sock.recvfrom(9000)
            except (BlockingIOError, InterruptedError):
                return
            if not self.on_link(sender[0]):
                self.off_link += 1
                continue
            try:
                query = parse(data)
            except (ValueError, struct.error, IndexError):
                continue
            if query["flags"] & 0x8000:
                continue  # a response, not a question
            wanted = [(n, t) for n, t, _qu in query["questions"] if self._ours(n, t)]
            if not wanted:
                continue
            answers, extra = self.records()
            legacy = sender[1] != self.group[1]
            reply = message(query["id"] if legacy else 0, 0x8400, wanted if legacy else [], answers, extra)
            destination = sender if legacy or any(qu for _n, _t, qu in query["questions"]) else self.group
            try:
                self.sock.sendto(reply, destination)
                self.answered += 1
            except OSError as exc:
                if self.log is not None:
                    self.log.debug("mDNS answer failed: %s", exc)

    def _ours(self, name: str, qtype: int) -> bool:
        if name == SERVICE and qtype in (T_PTR, T_ANY):
            return True
        if name == META and qtype in (T_PTR, T_ANY):
            return False  # service enumeration is left to avahi
        return name == self.instance.lower() and qtype in (T_SRV, T_TXT, T_ANY)

    def close(self) -> None:
        self.announce(ttl=0)  # goodbye: caches drop us at once
        self.sock.close()


def browse(
    timeout: float = 2.0, interface: str = "", group: Tuple[str, int] = (MDNS_ADDR, MDNS_PORT)
) -> Optional[Tuple[str, int]]:
    """Ask the segment for ``_powerwaked._udp``; the first server's (address, port), or None."""
    query = message(int.from_bytes(os.urandom(2), "big"), 0, [(SERVICE, T_PTR)], [])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        if interface:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode() + b"\0")
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        sock.sendto(query, group)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            sock.settimeout(left)
            try:
                data, sender = sock.recvfrom(9000)
            except socket.timeout:
                return None
            try:
                found = _server_in(parse(data), sender[0])
            except (ValueError, struct.error, IndexError):
                continue
            if found is not None:
                return found


def _server_in(reply: Dict[str, Any], sender_ip: str) -> Optional[Tuple[str, int]]:
    records = reply["records"]
    instances = [value for name, rtype, _ttl, value in records if name == SERVICE and rtype == T_PTR]
    for instance in instances:
        for name, rtype, _ttl, value in records:
            if name == instance.lower() and rtype == T_SRV:
                _priority, _weight, port, target = value
                addresses = [v for n, t, _ttl2, v in records if n == target.lower() and t == T_A]
                return (addresses[0] if addresses else sender_ip), port
    return None
