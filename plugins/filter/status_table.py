# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter status_table: the fleet's nap state as a text table.

One filter per file, named like the filter and documented in it (so that Galaxy lists each filter once,
with its documentation); the code lives in plugins/plugin_utils/status.py.
"""

DOCUMENTATION = r"""
name: status_table
version_added: 0.1.0
author: powernap.fleet maintainers
short_description: A text table of the fleet's nap state from registered power_info results
description:
  - >-
    One line per host, sorted; unreachable hosts are shown as asleep or off (with the fleet server's state of
    them when M(powernap.fleet.power_info) could ask it from the controller).
  - >-
    With the fleet server's view in the results (O(powernap.fleet.power_info#module:server_url) of
    M(powernap.fleet.power_info)), also LAST WAKE (wake health), ENERGY SAVED (kWh and cost saved against
    always-on) and FLEET POLICY (vetoes, pending decisions, queued requests) columns, and lines under the
    table summing the energy saved by the hosts shown, for the fleet and per group.
options:
  _input:
    description: >-
      Host names.
    type: list
    required: true
  hostvars:
    description: >-
      C(hostvars).
    type: dict
    required: true
  var:
    description: >-
      Name of the variable each host registered the M(powernap.fleet.power_info) result in.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Show the fleet
  ansible.builtin.debug:
    msg: "{{ ansible_play_hosts_all | powernap.fleet.status_table(hostvars, 'info') }}"
  run_once: true
"""

RETURN = r"""
_value:
  description: >-
    Lines of the table (header, rule, one row per host), then, with energy figures, an empty line and the
    energy saved by the hosts shown (fleet, then each group).
  type: list
  elements: str
"""

from ansible_collections.powernap.fleet.plugins.plugin_utils.status import status_table


class FilterModule:
    """The fleet's nap state as a text table."""

    def filters(self):
        return {"status_table": status_table}
