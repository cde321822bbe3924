"""What powerwaked knows about its own segment: its addresses and MACs, the default gateways, the on-link subnets.

All read from ``/proc`` and ``/sys`` through a SysRoot (cheap, no subprocess), so tests can hand in a fake
tree.  Used to protect addresses no engine may claim (``trust``), to keep the gateway's and the server's own
frames from waking sleepers (``proxy``) and to answer mDNS only on the link (``mdns``).
"""

import ipaddress
import socket
import struct
from typing import Any, List, Optional, Set, Tuple

from ..sysroot import SysRoot
from .protocol import local_ipv4, local_ipv6

Network = Any  # ipaddress.IPv4Network | IPv6Network


def _ipv4_hex(text: str) -> str:
    return socket.inet_ntoa(struct.pack("<I", int(text, 16)))


def _ipv6_hex(text: str) -> str:
    return socket.inet_ntop(socket.AF_INET6, bytes.fromhex(text))


def default_gateways(route: str, ipv6_route: str = "") -> List[str]:
    """The default routes' next hops from /proc/net/route and /proc/net/ipv6_route."""
    found: List[str] = []
    for line in route.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[1] == "00000000" and fields[7] == "00000000" and fields[2] != "00000000":
            found.append(_ipv4_hex(fields[2]))
    for line in ipv6_route.splitlines():
        fields = line.split()
        if len(fields) >= 10 and fields[1] == "00" and int(fields[4], 16) != 0:
            found.append(_ipv6_hex(fields[4]))
    return [ip for index, ip in enumerate(found) if ip not in found[:index]]


def on_link_networks(route: str, ipv6_route: str = "") -> List[Network]:
    """Directly connected networks (routes without a gateway), default routes and loopback left out."""
    nets: List[Network] = []
    for line in route.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[2] == "00000000" and fields[7] != "00000000":
            nets.append(ipaddress.ip_network("%s/%s" % (_ipv4_hex(fields[1]), _ipv4_hex(fields[7])), strict=False))
    for line in ipv6_route.splitlines():
        fields = line.split()
        if len(fields) >= 10 and fields[9] != "lo" and int(fields[4], 16) == 0 and 0 < int(fields[1], 16) < 128:
            nets.append(ipaddress.ip_network("%s/%d" % (_ipv6_hex(fields[0]), int(fields[1], 16)), strict=False))
    return nets


def neighbour_macs(arp: str, ips: List[str]) -> List[str]:
    """MACs of ``ips`` in the ARP cache (/proc/net/arp), complete entries only."""
    found = []
    for line in arp.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 4 and fields[0] in ips and fields[3] != "00:00:00:00:00:00":
            found.append(fields[3].lower())
    return found


def is_link_local(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip.split("%")[0]).is_link_local
    except ValueError:
        return False


class NetView:
    """A snapshot of this host's view of the segment; ``refresh`` re-reads it (cheap)."""

    def __init__(self, root: Optional[SysRoot] = None):
        self.root = root or SysRoot()
        self.own_ips: Set[str] = set()
        self.own_macs: Set[str] = set()
        self.gateways: List[str] = []
        self.gateway_macs: Set[str] = set()
        self.networks: List[Network] = []

    def refresh(self) -> "NetView":
        read = self.root.read
        route, route6 = read("/proc/net/route", "") or "", read("/proc/net/ipv6_route", "") or ""
        fib, inet6 = read("/proc/net/fib_trie", "") or "", read("/proc/net/if_inet6", "") or ""
        self.own_ips = set(local_ipv4(fib) + local_ipv6(inet6))
        self.own_macs = set()
        for name in self.root.listdir("/sys/class/net"):
            mac = (read("/sys/class/net/%s/address" % name, "") or "").strip().lower()
            if mac and mac != "00:00:00:00:00:00":
                self.own_macs.add(mac)
        self.gateways = default_gateways(route, route6)
        self.gateway_macs = set(neighbour_macs(read("/proc/net/arp", "") or "", self.gateways))
        self.networks = on_link_networks(route, route6)
        return self

    def protected(self) -> Tuple[Set[str], Set[str]]:
        """(IPs, MACs) no engine may claim: the server's own and the default gateways'."""
        return self.own_ips | set(self.gateways), self.own_macs | self.gateway_macs

    def on_link(self, ip: str) -> bool:
        """Whether ``ip`` is a neighbour on one of our links (link-local, or inside a connected subnet)."""
        try:
            address = ipaddress.ip_address(ip.split("%")[0])
        except ValueError:
            return False
        if address.is_link_local or address.is_loopback:
            return True
        return any(address.version == net.version and address in net for net in self.networks)
