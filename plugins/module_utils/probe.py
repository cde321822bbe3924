# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Is a host up?  TCP, ICMP, ARP and SSH-handshake probes, and a bounded parallel map.

A suspended host answers neither ARP nor TCP, so "up" means it answered:
a TCP connection accepted *or refused* (a RST needs a running kernel), an
ICMP echo reply, an ARP reply, or a completed SSH key exchange.
Standard library only (paramiko used when installed); Python 3.8 syntax.
"""

import os
import socket
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

UP = "up"
DOWN = "down"
UNKNOWN = "unknown"

PROBES = ("tcp", "icmp", "arp", "ssh")


def tcp_probe(host, port=22, timeout=2.0):
    """UP when ``host:port`` accepts or refuses a TCP connection, DOWN on timeout/unreachable.

    UNKNOWN when the name does not resolve.
    """
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return UNKNOWN
    family, socktype, proto, _canon, addr = infos[0]
    sock = socket.socket(family, socktype, proto)
    sock.settimeout(timeout)
    try:
        sock.connect(addr)
        return UP
    except ConnectionRefusedError:
        return UP
    except (socket.timeout, OSError):
        return DOWN
    finally:
        sock.close()


def icmp_probe(host, timeout=2.0):
    """One ICMP echo through the system ``ping`` (raw ICMP sockets need privileges ping already has)."""
    for ping in ("/usr/bin/ping", "/bin/ping", "/usr/sbin/ping", "/sbin/ping"):
        if os.path.exists(ping):
            break
    else:
        return UNKNOWN
    wait = str(max(1, int(round(timeout))))
    try:
        proc = subprocess.run(
            [ping, "-n", "-q", "-c", "1", "-W", wait, host],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout + 2,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return UNKNOWN
    if proc.returncode == 0:
        return UP
    return DOWN if proc.returncode == 1 else UNKNOWN


def route_interface(ip):
    """The interface the kernel routes ``ip`` through (``ip route get``), or None."""
    try:
        out = subprocess.run(
            ["ip", "-o", "route", "get", ip], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=5, check=False
        ).stdout.decode("ascii", "replace")
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = out.split()
    if "dev" in words and words.index("dev") + 1 < len(words):
        return words[words.index("dev") + 1]
    return None


def arp_request_frame(src_mac, target_ip):
    """An ARP probe (RFC 5227: sender IP 0.0.0.0) asking who has ``target_ip``, as a broadcast Ethernet frame."""
    broadcast = b"\xff" * 6
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + src_mac + b"\x00" * 4 + b"\x00" * 6 + socket.inet_aton(target_ip)
    return broadcast + src_mac + struct.pack("!H", 0x0806) + arp


def arp_probe(ip, interface=None, timeout=2.0):
    """UP when ``ip`` answers an ARP probe on ``interface`` (raw socket: needs CAP_NET_RAW), else DOWN.

    UNKNOWN when the probe cannot be sent (not IPv4, no privilege, no interface).
    """
    try:
        target = socket.inet_aton(ip)
    except OSError:
        return UNKNOWN
    interface = interface or route_interface(ip)
    if not interface or not hasattr(socket, "AF_PACKET"):
        return UNKNOWN
    try:
        with open("/sys/class/net/%s/address" % interface) as handle:
            src_mac = bytes(bytearray(int(part, 16) for part in handle.read().strip().split(":")))
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    except (OSError, ValueError):
        return UNKNOWN
    try:
        sock.bind((interface, 0x0806))
        sock.send(arp_request_frame(src_mac, ip))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return DOWN
            sock.settimeout(remaining)
            try:
                frame = sock.recv(128)
            except socket.timeout:
                return DOWN
            # ARP reply (op 2) whose sender protocol address is the target.
            if len(frame) >= 42 and frame[20:22] == b"\x00\x02" and frame[28:32] == target:
                return UP
    except OSError:
        return UNKNOWN
    finally:
        sock.close()


def ssh_handshake(host, port=22, timeout=5.0):
    """UP when an SSH server on ``host:port`` completes a key exchange (paramiko) or at least sends its banner.

    No authentication is attempted: a completed handshake proves the host's
    kernel, network and sshd are running, which is what "woken" means.
    """
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        return DOWN  # the kernel is up but sshd is not (yet): not usable
    except (socket.timeout, socket.gaierror, OSError):
        return DOWN
    try:
        try:
            import paramiko  # pylint: disable=import-outside-toplevel
        except ImportError:
            paramiko = None
        if paramiko is None:
            sock.settimeout(timeout)
            return UP if sock.recv(8).startswith(b"SSH-") else DOWN
        transport = paramiko.Transport(sock)
        try:
            transport.banner_timeout = timeout
            transport.handshake_timeout = timeout
            transport.start_client(timeout=timeout)
            return UP if transport.is_active() else DOWN
        except (paramiko.SSHException, EOFError, OSError):
            return DOWN
        finally:
            transport.close()
    except (socket.timeout, OSError):
        return DOWN
    finally:
        sock.close()


def probe(method, host, port=22, timeout=2.0, interface=None):
    """Dispatch one probe by name (see PROBES)."""
    if method == "tcp":
        return tcp_probe(host, port, timeout)
    if method == "icmp":
        return icmp_probe(host, timeout)
    if method == "arp":
        try:
            ip = socket.gethostbyname(host)
        except (socket.gaierror, UnicodeError):
            return UNKNOWN
        return arp_probe(ip, interface, timeout)
    if method == "ssh":
        return ssh_handshake(host, port, timeout)
    raise ValueError("unknown probe %r (expected one of %s)" % (method, ", ".join(PROBES)))


def parallel_map(func, items, concurrency=32):
    """``[func(item) for item in items]`` on at most ``concurrency`` threads, in order."""
    items = list(items)
    if not items:
        return []
    if concurrency <= 1 or len(items) == 1:
        return [func(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(concurrency, len(items))) as pool:
        return list(pool.map(func, items))


def is_local_address(host):
    """True when ``host`` resolves to an address of this machine (binding to it succeeds)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    for family, _type, _proto, _canon, addr in infos:
        if addr[0].startswith("127.") or addr[0] == "::1":
            return True
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((addr[0], 0) if family == socket.AF_INET else (addr[0], 0, 0, addr[3]))
            return True
        except OSError:
            pass  # EADDRNOTAVAIL: not one of ours
        finally:
            sock.close()
    return False
