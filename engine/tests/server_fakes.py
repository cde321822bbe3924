"""Helpers for the powerwaked tests: configs from text, a recording fleet, frame builders."""

import re
import socket
import struct

from powernap import magic_packet
from powernap.fleet_keys import host_key
from powernap.server import protocol as P
from powernap.server.config import load_config

SECRET = "correct horse battery staple"


def key_of(host, master=SECRET):
    """A host's own key (its engine's token), as the role derives it."""
    return host_key(master, host)


def signed_report(host, message=None, master=SECRET, **fields):
    """A report datagram signed with ``host``'s own key."""
    body = dict(message or {}, **fields)
    body.setdefault("kind", "report")
    body.setdefault("from", host)
    body.setdefault("host", host)
    return P.encode(key_of(host, master).encode(), body)


def engine_decode(data, master=SECRET):
    """A server-to-engine message, verified with the key of the host it is for."""
    return P.decode(lambda message: key_of(str(message.get("to") or "x"), master).encode(), data, P.TO_ENGINE)


def server_config(tmp_path, text, state_file=True):
    """A validated ServerConfig from INI text (a [powerwaked] section with the test secret is prepended)."""
    head = "[powerwaked]\nsecret = %s\nannounce = no\n" % SECRET
    if not re.search(r"^listen\s*=", text, re.M):  # listen has no default; a test may name its own
        head += "listen = 127.0.0.1\n"
    if state_file:
        head += "state_file = %s\n" % (tmp_path / "registry.json")
    path = tmp_path / "powerwaked.conf"
    path.write_text(head + text)
    config, errors = load_config([str(path)])
    assert errors == [], [str(e) for e in errors]
    return config


class Sent:
    """Records what the fleet would have sent."""

    def __init__(self):
        self.wol = []
        self.datagrams = []
        self.ipmi = []

    def send_wol(self, mac, secureon=""):
        self.wol.append(mac)

    def send_datagram(self, data, address):
        self.datagrams.append((data, address))

    def run_ipmi(self, target, action, timeout):
        self.ipmi.append((target.address, action))
        return "Chassis Power Control: %s" % action


def arp_request(sender_mac, sender_ip, target_ip, src_mac=None, op=1):
    smac = magic_packet.parse_mac(sender_mac)
    eth = b"\xff" * 6 + magic_packet.parse_mac(src_mac or sender_mac) + struct.pack("!H", 0x0806)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + smac + socket.inet_aton(sender_ip)
    arp += b"\0" * 6 + socket.inet_aton(target_ip)
    return eth + arp


def neighbour_solicitation(sender_mac, sender_ip, target_ip):
    src = socket.inet_pton(socket.AF_INET6, sender_ip)
    target = socket.inet_pton(socket.AF_INET6, target_ip)
    icmp = bytes([135, 0, 0, 0]) + b"\0" * 4 + target
    ipv6 = (
        struct.pack("!IHBB", 0x60000000, len(icmp), 58, 255) + src + socket.inet_pton(socket.AF_INET6, "ff02::1:ff00:1")
    )
    eth = b"\x33\x33\xff\x00\x00\x01" + magic_packet.parse_mac(sender_mac) + struct.pack("!H", 0x86DD)
    return eth + ipv6 + icmp


def tcp_syn(src_mac, src_ip, dst_ip, port):
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
    tcp = struct.pack("!HHIIBBHHH", 40000, port, 1, 0, 0x50, 0x02, 65535, 0, 0)
    return b"\x02" * 6 + magic_packet.parse_mac(src_mac) + struct.pack("!H", 0x0800) + ip + tcp
