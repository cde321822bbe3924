# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Wake-on-LAN magic packets: the one home of building and recognising them.

Used by the collection's WoL driver (sender) and, through the symlink
``engine/powernap/magic_packet.py``, by the nap engine's WoL monitor
(receiver).  Pure standard library, Python 2.7/3.5+ syntax-safe for module
targets, no Ansible imports.

A magic packet is 6 bytes of 0xFF followed by the target MAC repeated 16
times (102 bytes), optionally followed by a 4- or 6-byte SecureOn password.
"""

import binascii
import re

SYNC = b"\xff" * 6
MAC_REPEAT = 16
PAYLOAD_LENGTH = len(SYNC) + 6 * MAC_REPEAT  # 102
ETHERTYPE_WOL = 0x0842
UDP_PORTS = (9, 7)

_HEX_ONLY = re.compile(r"^[0-9a-fA-F]{12}$")


def parse_mac(text):
    """Return the 6 bytes of a MAC written as aa:bb:cc:dd:ee:ff, aa-bb-..., aabb.ccdd.eeff or aabbccddeeff.

    Raises ValueError naming the bad input.
    """
    if not isinstance(text, str):
        raise ValueError("MAC address must be a string, got %r" % (text,))
    compact = re.sub(r"[:\-.\s]", "", text.strip())
    if not _HEX_ONLY.match(compact):
        raise ValueError("invalid MAC address %r (expected six hex octets, e.g. 52:54:00:12:34:56)" % text)
    return binascii.unhexlify(compact)


def format_mac(raw):
    """Six bytes to lower-case aa:bb:cc:dd:ee:ff."""
    return ":".join("%02x" % b for b in bytearray(raw))


def parse_secureon(text):
    """SecureOn password: 4 bytes (dotted IPv4 style or hex) or 6 bytes (MAC style)."""
    if text is None or text == "":
        return b""
    text = text.strip()
    if re.match(r"^\d{1,3}(\.\d{1,3}){3}$", text):
        octets = [int(part) for part in text.split(".")]
        if any(o > 255 for o in octets):
            raise ValueError("invalid SecureOn password: octet above 255")
        return bytes(bytearray(octets))
    compact = re.sub(r"[:\-.\s]", "", text)
    if re.match(r"^([0-9a-fA-F]{8}|[0-9a-fA-F]{12})$", compact):
        return binascii.unhexlify(compact)
    raise ValueError("invalid SecureOn password (expected 4 or 6 bytes: a.b.c.d or hex pairs)")


def build(mac, secureon=b""):
    """The magic packet payload for ``mac`` (text or 6 bytes), plus SecureOn bytes if given."""
    raw = mac if isinstance(mac, bytes) and len(mac) == 6 else parse_mac(mac)
    if isinstance(secureon, str):
        secureon = parse_secureon(secureon)
    if len(secureon) not in (0, 4, 6):
        raise ValueError("SecureOn password must be 4 or 6 bytes")
    return SYNC + raw * MAC_REPEAT + secureon


def find(data):
    """Every (mac_bytes, secureon_bytes) whose magic sequence appears anywhere in ``data``.

    Tolerates leading/trailing padding (some senders pad to 108+ bytes or
    wrap the sequence in other payloads, as NICs do).  The SecureOn field is
    the 6 (or, failing that, 4) bytes straight after the sequence; it is
    returned as found and the caller decides whether it must match.
    """
    found = []
    data = bytes(data)
    start = data.find(SYNC)
    while 0 <= start <= len(data) - PAYLOAD_LENGTH:
        body = start + len(SYNC)
        mac = data[body : body + 6]
        # A run of more than six 0xFF bytes makes this test fail until the last six.
        if mac != SYNC and data[body : body + 6 * MAC_REPEAT] == mac * MAC_REPEAT:
            tail = data[start + PAYLOAD_LENGTH :]
            found.append((mac, tail[:6] if len(tail) >= 6 else tail[:4]))
            start = data.find(SYNC, start + PAYLOAD_LENGTH)
        else:
            start = data.find(SYNC, start + 1)
    return found


def matches(data, mac, secureon=b""):
    """True when ``data`` carries a magic packet for ``mac`` with the right SecureOn password (if one is set)."""
    raw = mac if isinstance(mac, bytes) and len(mac) == 6 else parse_mac(mac)
    for found_mac, found_password in find(data):
        if found_mac != raw:
            continue
        if not secureon or found_password[: len(secureon)] == secureon:
            return True
    return False
