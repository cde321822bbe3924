# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter resolve_profile: a powernap profile merged with its parents and inventory overrides.

One filter per file, named like the filter and documented in it (so that Galaxy lists each filter once,
with its documentation); the code lives in plugins/plugin_utils/profile.py.
"""

DOCUMENTATION = r"""
name: resolve_profile
version_added: 0.1.0
author: powernap.fleet maintainers
short_description: Merge a powernap profile, its parents and inventory overrides into INI sections
description:
  - >-
    Sections merge option by option, children over parents, then each override layer in order.
  - >-
    A section set to null is removed, an option set to null falls back to the engine default,
    C(_replace) true in a section drops what was inherited for it.
  - >-
    Only the structure is checked (section and option names, plain values); the engine's C(check-config)
    judges the values.
options:
  _input:
    description: >-
      Profile library, a mapping of name to profile.
    type: dict
    required: true
  name:
    description: >-
      Profile to start from.
    type: str
    required: true
  overrides:
    description: >-
      Override layers (each a mapping of section to options), applied in order.
    type: list
    required: false
  labels:
    description: >-
      Names of the override layers, used in error messages.
    type: list
    required: false
"""

EXAMPLES = r"""
- name: Resolve the webserver profile with a group override
  ansible.builtin.set_fact:
    sections: "{{ profiles | powernap.fleet.resolve_profile('webserver', [{'stage.2': none}], ['powernap_config']) }}"
"""

RETURN = r"""
_value:
  description: >-
    Mapping of INI section name to a mapping of option to value.
  type: dict
"""

from ansible_collections.powernap.fleet.plugins.plugin_utils.profile import resolve_profile


class FilterModule:
    """A powernap profile merged with its parents and inventory overrides."""

    def filters(self):
        return {"resolve_profile": resolve_profile}
