# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which NICs of a host can wake by magic packet, read from ``ethtool IF`` output, and what to change."""

import re

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_text

_SUPPORTS_RE = re.compile(r"^\s*Supports Wake-on:\s*(\S+)", re.MULTILINE)
_CURRENT_RE = re.compile(r"^\s*Wake-on:\s*(\S+)", re.MULTILINE)
_SOPASS_RE = re.compile(r"^\s*SecureOn password:\s*(\S+)", re.MULTILINE)
_SECUREON_RE = re.compile(r"^([0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}$")
MAGIC = "g"
SECUREON = "s"


def _mac_of(facts, name):
    entry = (facts or {}).get(name.replace("-", "_").replace(".", "_")) or {}
    return to_text(entry.get("macaddress") or "").lower()


def wol_nics(ethtool_results, facts=None, secureon=None):
    """NICs that support magic-packet wake, from the ``results`` of a looped ``command: ethtool IF``.

    Each item: ``name``, ``mac`` (from facts), ``supports`` and ``current`` (ethtool's letters), ``wanted``
    (``g``, or ``gs`` with a SecureOn password) and ``change`` (whether ``ethtool -s IF wol ...`` must run).
    NICs whose ethtool call failed or that do not list ``g`` under "Supports Wake-on" are left out.
    """
    if secureon:
        secureon = to_text(secureon).strip()
        if not _SECUREON_RE.match(secureon):
            raise AnsibleFilterError(
                "powernap_secureon %r: ethtool sets a 6-byte SecureOn password written like a MAC "
                "(xx:xx:xx:xx:xx:xx)" % secureon
            )
        secureon = secureon.replace("-", ":").lower()
    wanted = MAGIC + SECUREON if secureon else MAGIC
    nics = []
    for result in ethtool_results or []:
        if not isinstance(result, dict) or result.get("rc") != 0 or result.get("skipped"):
            continue
        name = to_text(result.get("item"))
        out = to_text(result.get("stdout") or "")
        supports = _SUPPORTS_RE.search(out)
        current = _CURRENT_RE.search(out)
        supports = supports.group(1) if supports else ""
        current = current.group(1) if current else "d"
        if MAGIC not in supports or (secureon and SECUREON not in supports):
            continue
        sopass = _SOPASS_RE.search(out)
        sopass = sopass.group(1).lower() if sopass else None
        change = set(current) != set(wanted) or bool(secureon and sopass != secureon)
        nics.append(
            {
                "name": name,
                "mac": _mac_of(facts, name),
                "supports": supports,
                "current": current,
                "wanted": wanted,
                "change": change,
            }
        )
    return nics


class FilterModule:
    """Wake-on-LAN facts for the powernap role."""

    def filters(self):
        return {"wol_nics": wol_nics}
