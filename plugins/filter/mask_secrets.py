# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter mask_secrets: config sections with the engine's secret options masked.

One filter per file, named like the filter and documented in it (so that Galaxy lists each filter once,
with its documentation); the code lives in plugins/plugin_utils/engine.py.
"""

DOCUMENTATION = r"""
name: mask_secrets
version_added: 0.1.0
author: powernap.fleet maintainers
short_description: Config sections with the engine's secret options masked
description:
  - >-
    Returns a copy of powernap config sections (as the role C(powernap.fleet.powernap) renders them) in which the value
    of every option that the engine's option tables declare secret (for example C([server] token), a nut
    monitor's C(password), a wol monitor's C(secureon), powerwaked's C(secret) and C(bmc_password)) is
    replaced by C(********).
  - >-
    The list of secret options comes from the engine that this collection ships, so it stays in step with
    the engine. Empty values are left as they are.
  - >-
    Comparing the result with its input tells whether a config holds a secret (the role then shows no diff).
options:
  _input:
    description: >-
      Config sections, a mapping of section name to a mapping of option name to value.
    type: dict
    required: true
  engine_dir:
    description: >-
      The collection's C(engine/) directory, whose option tables are read.
    type: path
    required: true
"""

EXAMPLES = r"""
- name: Show the resolved config without its secrets
  ansible.builtin.debug:
    msg: "{{ sections | powernap.fleet.mask_secrets(role_path ~ '/../../engine') }}"
"""

RETURN = r"""
_value:
  description: >-
    The sections, with every non-empty secret option's value masked.
  type: dict
"""

from ansible_collections.powernap.fleet.plugins.plugin_utils.engine import mask_secrets


class FilterModule:
    """Config sections with the engine's secret options masked."""

    def filters(self):
        return {"mask_secrets": mask_secrets}
