# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter human_duration: seconds as a short duration.

One filter per file, named like the filter and documented in it (so that Galaxy lists each filter once,
with its documentation); the code lives in plugins/plugin_utils/status.py.
"""

DOCUMENTATION = r"""
name: human_duration
version_added: 0.1.0
author: powernap.fleet maintainers
short_description: Seconds as a short duration
description:
  - >-
    C(45s), C(12m05s), C(3h20m), C(2d04h); C(-) for null.
options:
  _input:
    description: >-
      Seconds.
    type: float
    required: true
"""

EXAMPLES = r"""
- name: Idle time
  ansible.builtin.debug:
    msg: "{{ 3725 | powernap.fleet.human_duration }}"  # 1h02m
"""

RETURN = r"""
_value:
  description: >-
    The duration.
  type: str
"""

from ansible_collections.powernap.fleet.plugins.plugin_utils.status import human_duration


class FilterModule:
    """Seconds as a short duration."""

    def filters(self):
        return {"human_duration": human_duration}
