"""Seeing traffic without taking it: an AF_PACKET socket with a kernel (classic BPF) filter.

Used by the wol, udp and tcp monitors.  The socket is ``SOCK_DGRAM`` (cooked:
the link-layer header is stripped, so the same filter works on Ethernet,
loopback, Wi-Fi and tunnels) and listens on every interface.  The kernel runs
the filter on each frame and only hands over the matching ones, so a busy
host does not wake the daemon for unrelated traffic, and no port is bound:
the real service on the port (if any) still gets every datagram.

The filter accepts frames that are not our own outgoing copies and are

* raw Wake-on-LAN frames (ethertype 0x0842), if asked for, or
* IPv4/IPv6 TCP or UDP aimed at one of the given destination port ranges
  (IPv4 fragments after the first and IPv6 extension headers are not
  followed), optionally only TCP segments carrying one of some flags (SYN, FIN,
  RST: where connections begin and end).

Needs CAP_NET_RAW (root); ``PacketListener.open`` raises PermissionError
otherwise and callers fall back.
"""

import ctypes
import errno
import socket
import struct
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

from ..sysroot import SysRoot

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
IPPROTO_TCP = 6
IPPROTO_UDP = 17

# Classic BPF opcodes (linux/filter.h).
_LD, _LDX, _ALU, _JMP, _RET = 0x00, 0x01, 0x04, 0x05, 0x06
_W, _H, _B = 0x00, 0x08, 0x10
_IMM, _ABS, _IND, _MSH = 0x00, 0x20, 0x40, 0xA0
_JA, _JEQ, _JGT, _JGE, _JSET = 0x00, 0x10, 0x20, 0x30, 0x40
_AND = 0x50
_SKF_AD_OFF = -0x1000
_SKF_AD_PROTOCOL = 0
_SKF_AD_PKTTYPE = 4

Target = Union[int, str]  # a jump target: a label name, or 0 meaning "next instruction"


class BpfProgram:
    """A tiny classic-BPF assembler with named labels (jumps are resolved at the end)."""

    def __init__(self) -> None:
        self.code: List[Tuple[int, Target, Target, Union[int, str]]] = []
        self.labels: Dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def op(self, code: int, k: Union[int, str] = 0, jt: Target = 0, jf: Target = 0) -> None:
        self.code.append((code, jt, jf, k))

    def assemble(self) -> bytes:
        out = []
        for index, (code, jt, jf, k) in enumerate(self.code):

            def offset(target: Target, index: int = index) -> int:
                if isinstance(target, int):
                    return target
                delta = self.labels[target] - index - 1
                if not 0 <= delta <= 255:
                    raise ValueError("BPF jump out of range")
                return delta

            if code == _JMP | _JA:
                out.append(struct.pack("=HBBI", code, 0, 0, offset(k)))
            else:
                out.append(
                    struct.pack("=HBBI", code, offset(jt), offset(jf), (k if isinstance(k, int) else 0) & 0xFFFFFFFF)
                )
        return b"".join(out)


def build_filter(
    ip_protocol: Optional[int],
    port_ranges: Sequence[Tuple[int, int]] = (),
    tcp_flags: int = 0,
    wol_ethertype: bool = False,
    snaplen: int = 0xFFFF,
) -> bytes:
    """Assemble the filter described in the module docstring."""
    prog = BpfProgram()
    prog.op(_LD | _B | _ABS, _SKF_AD_OFF + _SKF_AD_PKTTYPE)
    prog.op(_JMP | _JEQ, PACKET_OUTGOING, jt="reject")
    prog.op(_LD | _H | _ABS, _SKF_AD_OFF + _SKF_AD_PROTOCOL)
    if wol_ethertype:
        prog.op(_JMP | _JEQ, 0x0842, jt="accept")
    if ip_protocol is None or not port_ranges:
        prog.op(_JMP | _JA, "reject")
    else:
        prog.op(_JMP | _JEQ, ETH_P_IP, jf="not_ipv4")
        # IPv4: protocol, not a later fragment, X = header length.
        prog.op(_LD | _B | _ABS, 9)
        prog.op(_JMP | _JEQ, ip_protocol, jf="reject")
        prog.op(_LD | _H | _ABS, 6)
        prog.op(_JMP | _JSET, 0x1FFF, jt="reject")
        prog.op(_LDX | _B | _MSH, 0)
        prog.op(_JMP | _JA, "transport")
        prog.label("not_ipv4")
        prog.op(_JMP | _JEQ, ETH_P_IPV6, jf="reject")
        prog.op(_LD | _B | _ABS, 6)  # next header
        prog.op(_JMP | _JEQ, ip_protocol, jf="reject")
        prog.op(_LDX | _W | _IMM, 40)
        prog.label("transport")
        if tcp_flags:
            prog.op(_LD | _B | _IND, 13)  # TCP flags
            prog.op(_JMP | _JSET, tcp_flags, jf="reject")  # at least one of them set
        prog.op(_LD | _H | _IND, 2)  # destination port
        for index, (low, high) in enumerate(port_ranges):
            if low == high:
                prog.op(_JMP | _JEQ, low, jt="accept")
            else:
                prog.op(_JMP | _JGE, low, jf="range%d" % (index + 1))
                prog.op(_JMP | _JGT, high, jf="accept")
            prog.label("range%d" % (index + 1))
    prog.label("reject")
    prog.op(_RET, 0)
    prog.label("accept")
    prog.op(_RET, snaplen)
    return prog.assemble()


def attach_filter(sock: socket.socket, program: bytes) -> None:
    """Attach an assembled classic-BPF program to ``sock`` (packet or netlink socket)."""
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("@HP", len(program) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


# Ready-made instructions for programs assembled elsewhere (the process monitor's netlink filter).
LD_W_ABS = _LD | _W | _ABS
TAX = 0x07  # BPF_MISC | BPF_TAX: X = A
JEQ_K = _JMP | _JEQ
JEQ_X = _JMP | _JEQ | 0x08  # compare A with X
RET_K = _RET


def native_word(value: int) -> int:
    """A host-order 32-bit constant as a BPF word load sees it (BPF loads words big-endian)."""
    return struct.unpack(">I", struct.pack("=I", value))[0]


class PacketListener:
    """A non-blocking AF_PACKET socket on every interface with a BPF filter attached."""

    def __init__(self, program: bytes, rcvbuf: int = 65536):
        self.program = program
        self.rcvbuf = rcvbuf
        self.sock: Optional[socket.socket] = None

    def open(self) -> int:
        """Open and return the fd.  Raises PermissionError without CAP_NET_RAW, OSError otherwise."""
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            attach_filter(sock, self.program)
            sock.setblocking(False)
            # Frames queued between socket() and the filter were not filtered: drop them.
            self._drain(sock, 10000)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        return sock.fileno()

    @staticmethod
    def _drain(sock: socket.socket, limit: int) -> List[Tuple[bytes, tuple]]:
        frames = []
        for _unused in range(limit):
            try:
                frames.append(sock.recvfrom(65536))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in (errno.ENETDOWN, errno.ENXIO):  # an interface went away mid-read
                    continue
                raise
        return frames

    def receive(self, limit: int = 64) -> List[Tuple[bytes, int, str]]:
        """Up to ``limit`` queued frames as (payload, ethertype, interface)."""
        if self.sock is None:
            return []
        return [(data, addr[1], addr[0]) for data, addr in self._drain(self.sock, limit)]

    def fileno(self) -> Optional[int]:
        return None if self.sock is None else self.sock.fileno()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def ip_source(frame: bytes, ethertype: int) -> Optional[str]:
    """The source address of a cooked IPv4/IPv6 frame, as text."""
    if ethertype == ETH_P_IP and len(frame) >= 20:
        return socket.inet_ntop(socket.AF_INET, frame[12:16])
    if ethertype == ETH_P_IPV6 and len(frame) >= 40:
        return socket.inet_ntop(socket.AF_INET6, frame[8:24])
    return None


def local_macs(root: SysRoot) -> Set[bytes]:
    """Hardware addresses of every local interface except loopback (not only eth*)."""
    macs = set()
    for name in root.listdir("/sys/class/net"):
        if name == "lo":
            continue
        text = root.read("/sys/class/net/%s/address" % name)
        if not text:
            continue
        try:
            raw = bytes.fromhex(text.strip().replace(":", ""))
        except ValueError:
            continue
        if len(raw) == 6 and raw != b"\0" * 6:
            macs.add(raw)
    return macs
