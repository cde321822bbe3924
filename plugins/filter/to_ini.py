# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter to_ini: config sections rendered as the engine's INI.

One filter per file, named like the filter and documented in it (so that Galaxy lists each filter once,
with its documentation); the code lives in plugins/plugin_utils/profile.py.
"""

DOCUMENTATION = r"""
name: to_ini
version_added: 0.1.0
author: powernap.fleet maintainers
short_description: Render powernap config sections as the engine's INI text
description:
  - >-
    Sections in a stable order ([powernap], [actions], [server], stages by number, monitors, tweaks),
    C(type) first in a section; booleans as yes/no, lists comma-separated.
options:
  _input:
    description: >-
      Mapping of section to options, as returned by P(powernap.fleet.resolve_profile#filter).
    type: dict
    required: true
  header:
    description: >-
      Comment put at the top, one C(#) line per line.
    type: str
    required: false
  kind:
    description: >-
      Which program's sections: V(powernap) (the engine's C(powernap.conf)) or V(powerwaked) (the fleet
      server's C(powerwaked.conf): C(powerwaked), C(proxy), C(ipmi), then C(host.NAME), C(group.NAME),
      C(ups.NAME), C(schedule.NAME), C(cluster.NAME)).
    type: str
    required: false
    default: powernap
    choices: [powernap, powerwaked]
"""

EXAMPLES = r"""
- name: Write a config
  ansible.builtin.copy:
    content: "{{ sections | powernap.fleet.to_ini(header='Managed by Ansible') }}"
    dest: /etc/powernap/powernap.conf
    mode: "0600"

- name: Write the fleet server's config
  ansible.builtin.copy:
    content: "{{ {'powerwaked': {'secret': vault_fleet_secret}} | powernap.fleet.to_ini(kind='powerwaked') }}"
    dest: /etc/powernap/powerwaked.conf
    mode: "0600"
"""

RETURN = r"""
_value:
  description: >-
    The INI text.
  type: str
"""

from ansible_collections.powernap.fleet.plugins.plugin_utils.profile import to_ini


class FilterModule:
    """Config sections rendered as the engine's INI."""

    def filters(self):
        return {"to_ini": to_ini}
