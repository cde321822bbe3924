# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter wol_nics: the NICs that wake by magic packet, from ethtool output.

One filter per file, named like the filter and documented in it (so that Galaxy lists each filter once,
with its documentation); the code lives in plugins/plugin_utils/wol.py.
"""

DOCUMENTATION = r"""
name: wol_nics
version_added: 0.1.0
author: powernap.fleet maintainers
short_description: NICs that can wake by magic packet, from ethtool output
description:
  - >-
    Reads the results of a looped C(ethtool IF) command and keeps the NICs whose C(Supports Wake-on)
    includes C(g) (and C(s) when a SecureOn password is wanted).
options:
  _input:
    description: >-
      The C(results) of a looped M(ansible.builtin.command) running C(ethtool IF), one item per interface
      name.
    type: list
    required: true
  facts:
    description: >-
      The host's C(ansible_facts), for the MAC addresses.
    type: dict
    required: false
  secureon:
    description: >-
      SecureOn password the NICs should require (see P(powernap.fleet.secureon_sopass#filter));
      a 4-byte one asks only for C(g).
    type: str
    required: false
"""

EXAMPLES = r"""
- name: Pick the NICs
  ansible.builtin.set_fact:
    nics: "{{ ethtool.results | powernap.fleet.wol_nics(ansible_facts) }}"
"""

RETURN = r"""
_value:
  description: >-
    One mapping per NIC with C(name), C(mac), C(supports), C(current), C(wanted) and C(change).
  type: list
  elements: dict
"""

from ansible_collections.powernap.fleet.plugins.plugin_utils.wol import wol_nics


class FilterModule:
    """The NICs that wake by magic packet, from ethtool output."""

    def filters(self):
        return {"wol_nics": wol_nics}
