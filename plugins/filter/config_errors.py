# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter config_errors: the engine's check-config errors, explained by section and option.

One filter per file, named like the filter and documented in it (so that Galaxy lists each filter once,
with its documentation); the code lives in plugins/plugin_utils/profile.py.
"""

DOCUMENTATION = r"""
name: config_errors
version_added: 0.1.0
author: powernap.fleet maintainers
short_description: Explain powernap check-config errors by section and option
description:
  - >-
    Turns C(FILE:LINE: message) lines into C([section] option = value: message) using the rendered text.
options:
  _input:
    description: >-
      Output of C(powernap check-config), as text or a list of lines.
    type: raw
    required: true
  ini_text:
    description: >-
      The INI text that was checked.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Explain a failed validation
  ansible.builtin.debug:
    msg: "{{ result.stdout_lines | powernap.fleet.config_errors(rendered) }}"
"""

RETURN = r"""
_value:
  description: >-
    One readable line per error.
  type: list
  elements: str
"""

from ansible_collections.powernap.fleet.plugins.plugin_utils.profile import config_errors


class FilterModule:
    """The engine's check-config errors, explained by section and option."""

    def filters(self):
        return {"config_errors": config_errors}
