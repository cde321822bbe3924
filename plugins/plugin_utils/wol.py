# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which NICs of a host can wake by magic packet, read from ``ethtool IF`` output, and what to change."""

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_text

from ansible_collections.powernap.fleet.plugins.module_utils.nic_wol import plan_nic, sopass_of


def _mac_of(facts, name):
    entry = (facts or {}).get(name.replace("-", "_").replace(".", "_")) or {}
    return to_text(entry.get("macaddress") or "").lower()


def secureon_sopass(secureon):
    """The SecureOn password as ``ethtool -s IF sopass`` takes it, or "" when the NIC cannot hold it.

    Parsed by the same function as the wake module's packets (module_utils/magic_packet.py): 6 bytes
    (MAC style or 12 hex digits) or 4 bytes (a.b.c.d or 8 hex digits).  ethtool sets only 6-byte passwords
    on a NIC, so a 4-byte one gives "" (the NIC wakes on the plain magic packet, which the wake module
    still sends with the 4 bytes appended).  Errors never echo the value: it is a secret.
    """
    try:
        return sopass_of(None if secureon is None else to_text(secureon))
    except ValueError as exc:
        raise AnsibleFilterError("powernap_secureon: %s" % exc) from None


def wol_nics(ethtool_results, facts=None, secureon=None):
    """NICs that support magic-packet wake, from the ``results`` of a looped ``command: ethtool IF``.

    Each item: ``name``, ``mac`` (from facts), ``supports`` and ``current`` (ethtool's letters), ``wanted``
    (``g``, or ``gs`` with a 6-byte SecureOn password) and ``change`` (whether ``ethtool -s IF wol ...`` must run).
    NICs whose ethtool call failed or that do not list ``g`` under "Supports Wake-on" are left out.
    """
    sopass = secureon_sopass(secureon)
    nics = []
    for result in ethtool_results or []:
        if not isinstance(result, dict) or result.get("rc") != 0 or result.get("skipped"):
            continue
        name = to_text(result.get("item"))
        nic = plan_nic(name, _mac_of(facts, name), to_text(result.get("stdout") or ""), sopass)
        if nic is not None:
            nics.append(nic)
    return nics
