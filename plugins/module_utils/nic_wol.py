# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Wake-on-LAN set-up of a host's own NICs: which can wake by magic packet (from ``ethtool IF``), what to
change, and the udev rule that keeps it on across reboots.

The one home of this logic: the ``engine`` module applies it on the host, the ``wol_nics`` and
``secureon_sopass`` filters (plugins/plugin_utils/wol.py) use it on the controller.  Pure standard library.
"""

import os
import re

from ansible_collections.powernap.fleet.plugins.module_utils.magic_packet import format_mac, parse_secureon

_SUPPORTS_RE = re.compile(r"^\s*Supports Wake-on:\s*(\S+)", re.MULTILINE)
_CURRENT_RE = re.compile(r"^\s*Wake-on:\s*(\S+)", re.MULTILINE)
_SOPASS_RE = re.compile(r"^\s*SecureOn password:\s*(\S+)", re.MULTILINE)
MAGIC = "g"
SECUREON = "s"
MASK = "********"
# Interfaces that are never a host's own wake NIC (bridges, tunnels, containers' ends).
VIRTUAL_NAME_RE = re.compile(r"^(lo|veth|docker|br-|virbr|vnet|tap|tun|wg|cali|flannel|cni)")
ARPHRD_ETHER = "1"
_SOPASS_IN_RULE_RE = re.compile(r"(\bsopass\s+)[0-9A-Fa-f:.-]+")

RULE_HEADER = (
    "# Managed by Ansible (role powernap.fleet.powernap): keep Wake-on-LAN on for these NICs across reboots.\n"
    "# Matched by MAC, so renaming does not matter; ethtool runs when the NIC appears.\n"
)


def sopass_of(secureon):
    """The SecureOn password as ``ethtool -s IF sopass`` takes it, or "" when the NIC cannot hold it.

    6 bytes (MAC style or 12 hex digits) or 4 bytes (a.b.c.d or 8 hex digits), parsed as the wake module's
    packets are.  ethtool sets only 6-byte passwords on a NIC, so a 4-byte one gives "".  ValueError never
    echoes the value: it is a secret.
    """
    if secureon is None or str(secureon).strip() == "":
        return ""
    raw = parse_secureon(str(secureon))
    return format_mac(raw) if len(raw) == 6 else ""


def plan_nic(name, mac, ethtool_output, sopass=""):
    """What to do with one NIC, from its ``ethtool IF`` output; None when it cannot wake by magic packet.

    ``name``, ``mac``, ``supports`` and ``current`` (ethtool's letters), ``wanted`` (``g``, or ``gs`` with a
    6-byte SecureOn password) and ``change`` (whether ``ethtool -s IF wol ...`` must run).
    """
    wanted = MAGIC + SECUREON if sopass else MAGIC
    supports = _SUPPORTS_RE.search(ethtool_output or "")
    current = _CURRENT_RE.search(ethtool_output or "")
    supports = supports.group(1) if supports else ""
    current = current.group(1) if current else "d"
    if MAGIC not in supports or (sopass and SECUREON not in supports):
        return None
    found = _SOPASS_RE.search(ethtool_output or "")
    found = found.group(1).lower() if found else None
    change = set(current) != set(wanted) or bool(sopass and found != sopass)
    return {
        "name": name,
        "mac": (mac or "").lower(),
        "supports": supports,
        "current": current,
        "wanted": wanted,
        "change": change,
    }


def ethernet_interfaces(sys_class_net="/sys/class/net"):
    """The host's own Ethernet interfaces (not virtual, not a bridge or tunnel), sorted by name."""
    names = []
    for name in sorted(os.listdir(sys_class_net)) if os.path.isdir(sys_class_net) else []:
        base = os.path.join(sys_class_net, name)
        if VIRTUAL_NAME_RE.match(name) or os.path.isdir(os.path.join(base, "bridge")):
            continue
        if read_text(os.path.join(base, "type")).strip() != ARPHRD_ETHER:
            continue
        names.append(name)
    return names


def interface_mac(name, sys_class_net="/sys/class/net"):
    return read_text(os.path.join(sys_class_net, name, "address")).strip().lower()


def read_text(path):
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


def udev_rule(nics, ethtool, sopass=""):
    """The udev rule that sets each NIC's wake mode when it appears (matched by MAC)."""
    lines = [RULE_HEADER]
    for nic in nics:
        secret = (" sopass " + sopass) if SECUREON in nic["wanted"] else ""
        lines.append(
            'ACTION=="add", SUBSYSTEM=="net", ATTR{address}=="%s", RUN+="%s -s $name wol %s%s"\n'
            % (nic["mac"], ethtool, nic["wanted"], secret)
        )
    return "".join(lines)


def mask_rule(text):
    """A udev rule's text with every SecureOn password masked (for diffs)."""
    return _SOPASS_IN_RULE_RE.sub(lambda match: match.group(1) + MASK, text or "")
