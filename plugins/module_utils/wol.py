# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Wake-on-LAN power driver: magic packets over UDP (port 9 or 7) or raw Ethernet (ethertype 0x0842).

The payload is the standard 102 bytes (plus a 4/6-byte SecureOn password),
built by ``magic_packet`` -- the one home of that format.  Packets go to the
limited (255.255.255.255) or a subnet-directed broadcast, optionally from a
chosen interface (SO_BINDTODEVICE) and source address, repeated ``repeat``
times ``interval`` seconds apart.  Many targets are sent in rounds over one
socket per destination, so a thousand targets take milliseconds.
Python 3.8 syntax; standard library only.
"""

import socket
import struct
import time

from ansible_collections.powernap.fleet.plugins.module_utils import magic_packet, probe
from ansible_collections.powernap.fleet.plugins.module_utils.common import check_hosts
from ansible_collections.powernap.fleet.plugins.module_utils.power import (
    CAN_POWER_ON,
    CAN_QUERY,
    OFF,
    ON,
    UNKNOWN,
    PowerConnectionError,
    PowerDriver,
    PowerSettingError,
)

DEFAULT_BROADCAST = "255.255.255.255"
DEFAULT_PORT = 9
TRANSPORTS = ("udp", "raw")
# Linux: SO_BINDTODEVICE is 25; socket exposes it only on some builds.
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
ETH_BROADCAST = b"\xff" * 6


class WolPacket:
    """One magic packet to send: where it goes and how."""

    __slots__ = ("payload", "broadcast", "port", "interface", "source", "transport")

    def __init__(self, mac, secureon=None, broadcast=None, port=None, interface=None, source=None, transport="udp"):
        try:
            self.payload = magic_packet.build(mac, secureon or b"")
        except ValueError as exc:
            raise PowerSettingError(str(exc)) from exc
        if transport not in TRANSPORTS:
            raise PowerSettingError("unknown WoL transport %r (expected udp or raw)" % (transport,))
        if transport == "raw" and not interface:
            raise PowerSettingError("raw (ethertype 0x0842) Wake-on-LAN needs an interface")
        try:
            check_hosts({"broadcast": broadcast, "source": source})
        except ValueError as exc:
            raise PowerSettingError(str(exc)) from None
        self.broadcast = broadcast or DEFAULT_BROADCAST
        self.port = int(port or DEFAULT_PORT)
        if not 0 < self.port < 65536:
            raise PowerSettingError("invalid UDP port %s" % self.port)
        self.interface = interface or None
        self.source = source or None
        self.transport = transport

    def route_key(self):
        """Packets with the same key share one socket."""
        return (self.transport, self.broadcast, self.port, self.interface, self.source)


def interface_mac(interface):
    try:
        with open("/sys/class/net/%s/address" % interface) as handle:
            return magic_packet.parse_mac(handle.read().strip())
    except (OSError, ValueError):
        raise PowerSettingError("cannot read the MAC address of interface %r" % interface) from None


def _udp_socket(packet):
    try:
        infos = socket.getaddrinfo(packet.broadcast, packet.port, 0, socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise PowerSettingError("cannot resolve broadcast address %r: %s" % (packet.broadcast, exc)) from exc
    family, _type, _proto, _canon, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if packet.interface:
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, packet.interface.encode() + b"\0")
            if family == socket.AF_INET6 and len(addr) == 4:
                addr = (addr[0], addr[1], addr[2], socket.if_nametoindex(packet.interface))
        if packet.source:
            sock.bind((packet.source, 0))
    except OSError as exc:
        sock.close()
        raise PowerSettingError(
            "cannot prepare the WoL socket (interface %s, source %s): %s" % (packet.interface, packet.source, exc)
        ) from exc
    return sock, addr


def _raw_socket(packet):
    if not hasattr(socket, "AF_PACKET"):
        raise PowerSettingError("raw Wake-on-LAN frames need Linux AF_PACKET sockets")
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        sock.bind((packet.interface, magic_packet.ETHERTYPE_WOL))
    except PermissionError:
        raise PowerSettingError("raw Wake-on-LAN frames need root (CAP_NET_RAW)") from None
    except OSError as exc:
        raise PowerSettingError("cannot open a raw socket on %s: %s" % (packet.interface, exc)) from exc
    header = ETH_BROADCAST + interface_mac(packet.interface) + struct.pack("!H", magic_packet.ETHERTYPE_WOL)
    return sock, header


def send_packets(packets, repeat=3, interval=0.1, sleep=time.sleep, errors=None):
    """Send every packet ``repeat`` times, rounds ``interval`` seconds apart; returns the number of datagrams sent.

    Packets sharing a destination share one socket.  Without ``errors`` the
    first failure is raised (PowerSettingError for bad local settings,
    PowerConnectionError when the kernel refuses to send); with an ``errors``
    dict, failures are recorded as ``errors[id(packet)] = exception`` and the
    other destinations are still served.
    """
    groups = {}
    for packet in packets:
        groups.setdefault(packet.route_key(), []).append(packet)
    channels = []
    failed = {}

    def record(group, exc):
        if errors is None:
            raise exc
        for packet in group:
            errors[id(packet)] = exc
        failed[id(group)] = True

    try:
        for group in groups.values():
            try:
                if group[0].transport == "raw":
                    sock, header = _raw_socket(group[0])
                    channels.append((sock, None, group, [header + p.payload for p in group]))
                else:
                    sock, addr = _udp_socket(group[0])
                    channels.append((sock, addr, group, [p.payload for p in group]))
            except PowerSettingError as exc:
                record(group, exc)
        sent = 0
        for round_number in range(max(1, int(repeat))):
            if round_number:
                sleep(interval)
            for sock, addr, group, datagrams in channels:
                if id(group) in failed:
                    continue
                try:
                    for datagram in datagrams:
                        if addr is None:
                            sock.send(datagram)
                        else:
                            sock.sendto(datagram, addr)
                        sent += 1
                except OSError as exc:
                    record(group, PowerConnectionError("sending the magic packet failed: %s" % exc))
        return sent
    finally:
        for sock, _addr, _group, _datagrams in channels:
            sock.close()


class WolDriver(PowerDriver):
    """Wake one host by magic packet; query its state by reachability (WoL itself has no feedback)."""

    CAPABILITIES = frozenset([CAN_POWER_ON, CAN_QUERY])
    name = "wol"

    def __init__(
        self,
        mac,
        secureon=None,
        broadcast=None,
        port=None,
        interface=None,
        source=None,
        transport="udp",
        repeat=3,
        interval=0.1,
        address=None,
        probe_method="tcp",
        probe_port=22,
        probe_timeout=2.0,
    ):
        self.packet = WolPacket(mac, secureon, broadcast, port, interface, source, transport)
        self.repeat = repeat
        self.interval = interval
        self.address = address
        self.probe_method = probe_method
        self.probe_port = probe_port
        self.probe_timeout = probe_timeout

    def power_on(self):
        return send_packets([self.packet], self.repeat, self.interval)

    def power_query(self):
        """``on`` when the host answers the probe, ``off`` when it does not, ``unknown`` without an address."""
        if not self.address:
            return UNKNOWN
        state = probe.probe(self.probe_method, self.address, self.probe_port, self.probe_timeout, self.packet.interface)
        return {probe.UP: ON, probe.DOWN: OFF}.get(state, UNKNOWN)
