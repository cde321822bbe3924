# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter engine_manifest: the engine release the powernap role installs.

One filter per file, named like the filter and documented in it (so that Galaxy lists each filter once,
with its documentation); the code lives in plugins/plugin_utils/engine.py.
"""

DOCUMENTATION = r"""
name: engine_manifest
version_added: 0.1.0
author: powernap.fleet maintainers
short_description: The files of the powernap engine release shipped in this collection
description:
  - >-
    Lists C(powernap/) and C(bin/) of the engine directory (symlinks followed; caches, hidden files and
    tests left out) and hashes paths, modes and contents.
options:
  _input:
    description: >-
      Path of the engine directory on the controller.
    type: path
    required: true
"""

EXAMPLES = r"""
- name: Describe the engine release
  ansible.builtin.set_fact:
    manifest: "{{ (role_path ~ '/../../engine') | powernap.fleet.engine_manifest }}"
"""

RETURN = r"""
_value:
  description: >-
    C(digest) (sha256 hex), C(release) (its first 16 digits), C(dirs) and C(files) (each C(path) and
    C(mode)), paths relative to the engine directory.
  type: dict
"""

from ansible_collections.powernap.fleet.plugins.plugin_utils.engine import engine_manifest


class FilterModule:
    """The engine release the powernap role installs."""

    def filters(self):
        return {"engine_manifest": engine_manifest}
