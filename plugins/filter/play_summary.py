# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter play_summary: one registered result per host as a text table.

One filter per file, named like the filter and documented in it (so that Galaxy lists each filter once,
with its documentation); the code lives in plugins/plugin_utils/status.py.
"""

DOCUMENTATION = r"""
name: play_summary
version_added: 0.1.0
author: powernap.fleet maintainers
short_description: A text table of one registered result per host
description:
  - >-
    Outcome (ok, changed, FAILED with the message, unreachable, not run) and the chosen result fields.
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
      Name of the registered variable.
    type: str
    required: true
  fields:
    description: >-
      Result keys to show as columns.
    type: list
    required: true
"""

EXAMPLES = r"""
- name: Summary
  ansible.builtin.debug:
    msg: "{{ ansible_play_hosts_all | powernap.fleet.play_summary(hostvars, 'woke', ['woken_by', 'elapsed']) }}"
  run_once: true
"""

RETURN = r"""
_value:
  description: >-
    Lines of the table.
  type: list
  elements: str
"""

from ansible_collections.powernap.fleet.plugins.plugin_utils.status import play_summary


class FilterModule:
    """One registered result per host as a text table."""

    def filters(self):
        return {"play_summary": play_summary}
