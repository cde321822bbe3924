# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter secureon_sopass: a SecureOn password as ethtool sets it on a NIC.

One filter per file, named like the filter and documented in it (so that Galaxy lists each filter once,
with its documentation); the code lives in plugins/plugin_utils/wol.py.
"""

DOCUMENTATION = r"""
name: secureon_sopass
version_added: 0.1.0
author: powernap.fleet maintainers
short_description: A SecureOn password as ethtool sets it on a NIC
description:
  - >-
    Parses a SecureOn password with the same code as M(powernap.fleet.wake) uses for its packets:
    6 bytes written like a MAC (C(xx:xx:xx:xx:xx:xx), C(xx-xx-...) or 12 hex digits), or 4 bytes
    (C(a.b.c.d) or 8 hex digits).
  - >-
    Returns the 6-byte form that C(ethtool -s IF sopass) takes. ethtool cannot set a 4-byte password on a
    NIC, so a 4-byte one gives an empty string: the NIC then wakes on the plain magic packet (which the
    wake module still sends with the 4 bytes appended).
  - >-
    An invalid password fails without showing its value.
options:
  _input:
    description: >-
      The SecureOn password; empty or null gives an empty string.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Set the NIC's SecureOn password
  ansible.builtin.command:
    argv: [ethtool, -s, eth0, wol, gs, sopass, "{{ powernap_secureon | powernap.fleet.secureon_sopass }}"]
  no_log: true
  changed_when: true
"""

RETURN = r"""
_value:
  description: >-
    Lower-case C(xx:xx:xx:xx:xx:xx), or an empty string for a 4-byte or empty password.
  type: str
"""

from ansible_collections.powernap.fleet.plugins.plugin_utils.wol import secureon_sopass


class FilterModule:
    """A SecureOn password as ethtool sets it on a NIC."""

    def filters(self):
        return {"secureon_sopass": secureon_sopass}
