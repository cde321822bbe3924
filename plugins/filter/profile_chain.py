# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter profile_chain: the profiles merged for a powernap profile, parents first.

One filter per file, named like the filter and documented in it (so that Galaxy lists each filter once,
with its documentation); the code lives in plugins/plugin_utils/profile.py.
"""

DOCUMENTATION = r"""
name: profile_chain
version_added: 0.1.0
author: powernap.fleet maintainers
short_description: The profiles merged for a powernap profile, parents first
description:
  - >-
    Follows each profile's C(include) (a name, a comma-separated string or a list) depth-first, like
    tuned's C(include=); each profile appears once.
  - >-
    Fails naming the unknown profile and the known ones, or the include loop.
options:
  _input:
    description: >-
      Profile library, a mapping of name to profile (C(description), C(include), C(sections)).
    type: dict
    required: true
  name:
    description: >-
      Profile to resolve.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Show which profiles make up "laptop"
  ansible.builtin.debug:
    msg: "{{ profiles | powernap.fleet.profile_chain('laptop') }}"  # ['base', 'desktop', 'laptop']
"""

RETURN = r"""
_value:
  description: >-
    Profile names, parents first, ending with O(name).
  type: list
  elements: str
"""

from ansible_collections.powernap.fleet.plugins.plugin_utils.profile import profile_chain


class FilterModule:
    """The profiles merged for a powernap profile, parents first."""

    def filters(self):
        return {"profile_chain": profile_chain}
