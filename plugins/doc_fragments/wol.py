# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment:
    # Wake-on-LAN options; the spec is module_utils/common.py WOL_SPEC.
    DOCUMENTATION = r"""
options:
  mac:
    description:
      - MAC address of the NIC to wake (inventory variable C(powernap_mac)), as C(aa:bb:cc:dd:ee:ff),
        C(aa-bb-...), C(aabb.ccdd.eeff) or twelve hex digits.
    type: str
  secureon:
    description:
      - SecureOn password appended to the magic packet (inventory variable C(powernap_secureon)),
        4 bytes (C(a.b.c.d) or 8 hex digits) or 6 bytes (MAC notation). Never logged or returned.
    type: str
  broadcast:
    description:
      - Destination of the magic packet (inventory variable C(powernap_wol_broadcast)), the limited broadcast
        C(255.255.255.255), a subnet-directed broadcast such as C(192.0.2.255), or an IPv6 multicast address.
      - Ignored with O(transport=raw), which always sends an Ethernet broadcast frame.
    type: str
    default: 255.255.255.255
  port:
    description:
      - UDP port of the magic packet (inventory variable C(powernap_wol_port)).
      - 9 (discard) is the standard, 7 is also common.
    type: int
    default: 9
  interface:
    description:
      - Network interface to send from (inventory variable C(powernap_wol_interface)), for multi-homed senders.
      - Required with O(transport=raw).
    type: str
  source:
    description:
      - Source address to send from (the sender must own it).
    type: str
  transport:
    description:
      - V(udp) sends the packet as a UDP datagram; V(raw) sends an Ethernet frame with ethertype 0x0842 (needs root).
    type: str
    choices: [udp, raw]
    default: udp
  repeat:
    description:
      - How many times each magic packet is sent.
    type: int
    default: 3
  interval:
    description:
      - Seconds between the repeated sends.
    type: float
    default: 0.1
notes:
  - The payload is the standard 102-byte magic packet (6 x 0xFF, 16 x MAC) plus the SecureOn password if one is set.
"""
