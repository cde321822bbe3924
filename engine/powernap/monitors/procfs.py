"""Cheap readers of /proc shared by several monitors (all through a SysRoot).

One home for: listing PIDs, reading a process's command line, parsing the
kernel's socket tables (/proc/net/tcp, tcp6, udp, udp6) and the counter files
(/proc/net/dev, /proc/diskstats).
"""

import ipaddress
import os
import socket
import struct
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

from ..errors import MonitorError
from ..sysroot import SysRoot

TCP_ESTABLISHED = 0x01
TCP_LISTEN = 0x0A


def pids(root: SysRoot) -> List[int]:
    """Numeric entries of /proc (processes, not threads)."""
    return [int(name) for name in root.listdir("/proc") if name.isdigit()]


def cmdline(root: SysRoot, pid: int) -> Optional[str]:
    """The full command line with NULs as spaces; None if the process is gone.

    Kernel threads have an empty cmdline; they get ``[comm]`` so a regex can
    still match them (as ``ps -eo args`` shows them).
    """
    try:
        with open(root.path("/proc/%d/cmdline" % pid), "rb") as handle:
            raw = handle.read(65536)
    except OSError:
        return None
    if raw:
        return raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
    comm = root.read("/proc/%d/comm" % pid)
    return None if comm is None else "[%s]" % comm


def command_and_name(root: SysRoot, pid: int) -> Optional[str]:
    """The command line, followed by `` [name]`` when the process name (comm) is not part of it:
    a process that renamed itself with prctl(PR_SET_NAME) or through /proc/PID/comm can be matched
    by its new name.  None if the process is gone."""
    line = cmdline(root, pid)
    if line is None or line.startswith("["):
        return line
    name = (root.read("/proc/%d/comm" % pid) or "").strip()
    return line if not name or name in line else "%s [%s]" % (line, name)


def read_required(root: SysRoot, system_path: str) -> str:
    """A file's text or MonitorError naming the file (for files a monitor cannot do without)."""
    try:
        with open(root.path(system_path), encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError as exc:
        raise MonitorError("cannot read %s: %s" % (system_path, exc.strerror or exc)) from None


# --- socket tables --------------------------------------------------------------------------


class SocketEntry(NamedTuple):
    local: "ipaddress._BaseAddress"
    local_port: int
    remote: "ipaddress._BaseAddress"
    remote_port: int
    state: int


def decode_address(text: str) -> Tuple["ipaddress._BaseAddress", int]:
    """``0100007F:0016`` / 32-hex-digit IPv6 form to (address, port).

    The kernel prints each 32-bit word of the address in host byte order, so
    the words are re-packed natively before reading them as network order.
    IPv4-mapped IPv6 addresses are returned as IPv4 so one filter fits both.
    """
    addr_hex, _unused, port_hex = text.partition(":")
    words = [int(addr_hex[i : i + 8], 16) for i in range(0, len(addr_hex), 8)]
    packed = struct.pack("=%dI" % len(words), *words)
    address = ipaddress.ip_address(packed)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address, int(port_hex, 16)


def socket_entries(root: SysRoot, table: str, states: Optional[Tuple[int, ...]] = None) -> Iterator[SocketEntry]:
    """Rows of /proc/net/TABLE (``tcp``, ``tcp6``, ``udp``, ``udp6``); a missing table yields nothing.

    ``states`` filters on the st column before any address is decoded (the
    cheap part of the line is looked at first).
    """
    try:
        with open(root.path("/proc/net/" + table), encoding="ascii", errors="replace") as handle:
            lines = handle.readlines()
    except OSError:
        return
    for line in lines[1:]:  # [0] is the header
        fields = line.split(None, 4)
        if len(fields) < 4:
            continue
        try:
            state = int(fields[3], 16)
            if states is not None and state not in states:
                continue
            local, local_port = decode_address(fields[1])
            remote, remote_port = decode_address(fields[2])
        except ValueError:
            continue
        yield SocketEntry(local, local_port, remote, remote_port, state)


NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST_DUMP = 0x301
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLMSGHDR = struct.Struct("=IHHII")
_DIAG_REQ = struct.Struct("=BBBBI48x")  # inet_diag_req_v2 with an all-zero inet_diag_sockid
_DIAG_MSG_HEAD = struct.Struct("=BBBB")  # inet_diag_msg: family, state, timer, retrans; then the sockid


def tcp_connections(root: SysRoot, states: Tuple[int, ...]) -> List[SocketEntry]:
    """TCP sockets (IPv4 and IPv6) in ``states``.

    On the real root the kernel is asked over sock_diag netlink, which filters by state itself and
    costs a fraction of formatting /proc/net/tcp{,6} (milliseconds on a host with many TIME_WAIT
    entries); in a fake root, or where sock_diag is refused, the /proc tables are read.
    """
    if root.is_real:
        try:
            return _sock_diag_tcp(states)
        except OSError:
            pass
    return [e for table in ("tcp", "tcp6") for e in socket_entries(root, table, states)]


def _sock_diag_tcp(states: Tuple[int, ...]) -> List[SocketEntry]:
    mask = 0
    for state in states:
        mask |= 1 << state
    entries = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(2.0)
        for family, width in ((socket.AF_INET, 4), (socket.AF_INET6, 16)):
            request = _DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, 0, mask)
            sock.send(
                _NLMSGHDR.pack(_NLMSGHDR.size + len(request), SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, 1, 0) + request
            )
            for _unused in range(100000):  # bounded: one datagram per batch of sockets
                data = sock.recv(65536)
                if _parse_diag(data, width, entries):
                    break
    return entries


_NLM_F_REQUEST = 0x1
_NO_COOKIE = b"\xff" * 8  # INET_DIAG_NOCOOKIE: look the socket up by its addresses


def tcp_state(local, local_port: int, remote, remote_port: int) -> Optional[int]:
    """The state of the one TCP socket with this 4-tuple (a hash lookup over sock_diag, microseconds
    where a dump walks the whole table), TCP_LISTEN when only a listener has the port, or None when
    there is no such socket or the kernel will not say.  Real root only."""
    family = socket.AF_INET if local.version == 4 and remote.version == 4 else socket.AF_INET6
    if family == socket.AF_INET:
        local_raw, remote_raw = local.packed.ljust(16, b"\0"), remote.packed.ljust(16, b"\0")
    else:
        local_raw = ipaddress.IPv6Address(("::ffff:%s" % local) if local.version == 4 else str(local)).packed
        remote_raw = ipaddress.IPv6Address(("::ffff:%s" % remote) if remote.version == 4 else str(remote)).packed
    sockid = struct.pack(">HH", local_port, remote_port) + local_raw + remote_raw + b"\0" * 4 + _NO_COOKIE
    request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as sock:
            sock.settimeout(1.0)
            sock.send(
                _NLMSGHDR.pack(_NLMSGHDR.size + len(request), SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0) + request
            )
            data = sock.recv(8192)
    except OSError:
        return None
    if len(data) < _NLMSGHDR.size + _DIAG_MSG_HEAD.size:
        return None
    kind = _NLMSGHDR.unpack_from(data)[1]
    if kind != SOCK_DIAG_BY_FAMILY:
        return None  # NLMSG_ERROR: ENOENT (no such socket) or a refusal
    return _DIAG_MSG_HEAD.unpack_from(data, _NLMSGHDR.size)[1]


def _parse_diag(data: bytes, width: int, entries: List[SocketEntry]) -> bool:
    """Append the sockets of one sock_diag reply datagram; True at the end of the dump."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind = _NLMSGHDR.unpack_from(data, offset)[:2]
        if kind == _NLMSG_DONE:
            return True
        if kind == _NLMSG_ERROR:
            raise OSError("sock_diag refused the request")
        body = offset + _NLMSGHDR.size
        if body + _DIAG_MSG_HEAD.size + 40 <= len(data):
            _family, state = _DIAG_MSG_HEAD.unpack_from(data, body)[:2]
            sockid = body + _DIAG_MSG_HEAD.size
            local_port, remote_port = struct.unpack_from(">HH", data, sockid)
            local = _address(data[sockid + 4 : sockid + 4 + width])
            remote = _address(data[sockid + 20 : sockid + 20 + width])
            entries.append(SocketEntry(local, local_port, remote, remote_port, state))
        if length < _NLMSGHDR.size:
            break
        offset += (length + 3) & ~3
    return False


def _address(packed: bytes) -> "ipaddress._BaseAddress":
    address = ipaddress.ip_address(packed)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address


# --- counter files --------------------------------------------------------------------------


def net_dev_counters(root: SysRoot) -> Dict[str, Tuple[int, int]]:
    """{interface: (rx_bytes, tx_bytes)} from /proc/net/dev."""
    counters = {}
    for line in read_required(root, "/proc/net/dev").splitlines()[2:]:
        name, _unused, rest = line.partition(":")
        fields = rest.split()
        if len(fields) >= 9:
            counters[name.strip()] = (int(fields[0]), int(fields[8]))
    return counters


class DiskCounters(NamedTuple):
    ios: int  # reads + writes completed
    sectors: int  # sectors read + written (always 512-byte units in diskstats)
    in_flight: int


def disk_counters(root: SysRoot) -> Dict[str, DiskCounters]:
    """{device: DiskCounters} from /proc/diskstats."""
    counters = {}
    for line in read_required(root, "/proc/diskstats").splitlines():
        fields = line.split()
        if len(fields) < 14:
            continue
        try:
            reads, read_sectors = int(fields[3]), int(fields[5])
            writes, write_sectors = int(fields[7]), int(fields[9])
            in_flight = int(fields[11])
        except ValueError:
            continue
        counters[fields[2]] = DiskCounters(reads + writes, read_sectors + write_sectors, in_flight)
    return counters


def cpu_count(root: SysRoot) -> int:
    """Online CPUs from /sys/devices/system/cpu/online (``0-3,6``), else os.cpu_count()."""
    text = root.read("/sys/devices/system/cpu/online")
    if text:
        count = 0
        try:
            for part in text.strip().split(","):
                low, _unused, high = part.partition("-")
                count += int(high or low) - int(low) + 1
        except ValueError:
            count = 0
        if count > 0:
            return count
    return os.cpu_count() or 1


class DeltaMeter:
    """Per-second rates of monotonically growing counters between two checks.

    ``update(now, {key: value})`` returns {key: rate} for keys seen last time
    too (nothing on the first call); a counter that went backwards (device
    re-created, wrap) counts as zero rather than as a huge negative rate.
    """

    def __init__(self) -> None:
        self.previous: Dict[str, int] = {}
        self.previous_time: Optional[float] = None

    def update(self, now: float, values: Dict[str, int]) -> Dict[str, float]:
        rates: Dict[str, float] = {}
        if self.previous_time is not None and now > self.previous_time:
            elapsed = now - self.previous_time
            for key, value in values.items():
                if key in self.previous:
                    rates[key] = max(0, value - self.previous[key]) / elapsed
        self.previous = dict(values)
        self.previous_time = now
        return rates
