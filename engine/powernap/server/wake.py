"""Sending wakes: Wake-on-LAN (UDP broadcast or raw ethertype 0x0842) and IPMI through ``ipmitool``.

The magic packet itself comes from ``powernap.magic_packet`` (its one home).
IPMI is standard-library only by calling ``ipmitool -I lanplus`` as a
subprocess with a hard timeout; the password goes through the environment
(``-E`` / ``IPMI_PASSWORD``), never the command line, and is never logged.
Dependency: the ``ipmitool`` package on the host that escalates to IPMI.
"""

import os
import shutil
import socket
import subprocess
from typing import Dict, List, Optional, Tuple

from .. import magic_packet

ETH_P_WOL = magic_packet.ETHERTYPE_WOL
BROADCAST_MAC = b"\xff" * 6
IPMI_ACTIONS = ("on", "off", "soft", "cycle", "reset", "status")


class WakeError(Exception):
    """A wake could not be sent; the message says why."""


def interface_mac(ifname: str, sys_root: str = "/") -> bytes:
    path = os.path.join(sys_root, "sys/class/net", ifname, "address")
    try:
        with open(path, encoding="ascii") as handle:
            return magic_packet.parse_mac(handle.read().strip())
    except (OSError, ValueError) as exc:
        raise WakeError("cannot read the MAC of interface %s: %s" % (ifname, exc)) from None


class WolSender:
    """Sends magic packets on one segment; sockets are opened once and reused (the proxy's hot path)."""

    def __init__(
        self,
        interface: str = "",
        broadcast: str = "255.255.255.255",
        port: int = 9,
        transport: str = "udp",
        source: str = "",
    ):
        if transport not in ("udp", "raw", "both"):
            raise ValueError("transport must be udp, raw or both")
        if transport != "udp" and not interface:
            raise ValueError("raw Wake-on-LAN frames need an interface")
        self.interface = interface
        self.broadcast = broadcast
        self.port = port
        self.transport = transport
        self.source = source
        self._udp: Optional[socket.socket] = None
        self._raw: Optional[socket.socket] = None
        self._src_mac = b""
        self.sent = 0

    def _udp_socket(self) -> socket.socket:
        if self._udp is None:
            family = socket.AF_INET6 if ":" in self.broadcast else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            if self.interface:
                # Leave by the segment's interface, not by whatever the routing table prefers.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode() + b"\0")
            if self.source:
                sock.bind((self.source, 0))
            self._udp = sock
        return self._udp

    def _raw_socket(self) -> socket.socket:
        if self._raw is None:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_WOL))
            sock.bind((self.interface, ETH_P_WOL))
            self._src_mac = interface_mac(self.interface)
            self._raw = sock
        return self._raw

    def send(self, mac: str, secureon: str = "", repeat: int = 1) -> None:
        payload = magic_packet.build(mac, secureon)
        try:
            for _copy in range(max(1, repeat)):
                if self.transport in ("raw", "both"):
                    raw = self._raw_socket()
                    frame = BROADCAST_MAC + self._src_mac + ETH_P_WOL.to_bytes(2, "big") + payload
                    raw.send(frame)
                if self.transport in ("udp", "both"):
                    self._udp_socket().sendto(payload, (self.broadcast, self.port))
                self.sent += 1
        except OSError as exc:
            raise WakeError("sending the magic packet for %s failed: %s" % (mac, exc)) from None

    def close(self) -> None:
        for sock in (self._udp, self._raw):
            if sock is not None:
                sock.close()
        self._udp = self._raw = None


class IpmiTarget:
    """One BMC and its credentials (the password is never shown)."""

    def __init__(
        self, address: str, user: str, password: str, port: int = 623, cipher: int = 3, privilege: str = "OPERATOR"
    ):
        self.address = address
        self.user = user
        self.password = password
        self.port = port
        self.cipher = cipher
        self.privilege = privilege

    def __repr__(self) -> str:
        return "IpmiTarget(%s:%d, user=%s)" % (self.address, self.port, self.user)


def ipmi_command(target: IpmiTarget, action: str) -> Tuple[List[str], Dict[str, str]]:
    """The ipmitool argv and environment for ``chassis power ACTION``."""
    if action not in IPMI_ACTIONS:
        raise ValueError("IPMI action must be one of %s" % ", ".join(IPMI_ACTIONS))
    argv = [
        "ipmitool", "-I", "lanplus", "-C", str(target.cipher), "-H", target.address, "-p", str(target.port),
        "-U", target.user, "-L", target.privilege, "-E", "-N", "2", "-R", "2", "chassis", "power", action,
    ]  # fmt: skip
    env = dict(os.environ, IPMI_PASSWORD=target.password)
    return argv, env


def ipmi_power(target: IpmiTarget, action: str, timeout: float = 20.0) -> str:
    """Run one IPMI power command with a hard deadline; returns ipmitool's answer, raises WakeError."""
    argv, env = ipmi_command(target, action)
    if shutil.which(argv[0]) is None:
        raise WakeError("ipmitool is not installed (needed for IPMI wakes)")
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise WakeError("IPMI %s to %s timed out after %gs" % (action, target.address, timeout)) from None
    except OSError as exc:
        raise WakeError("cannot run ipmitool: %s" % exc) from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise WakeError("IPMI %s to %s failed: %s" % (action, target.address, detail[-1] if detail else "error"))
    return proc.stdout.strip()
