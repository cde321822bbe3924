# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter host_key: a host's own fleet key, derived from the master secret.

One filter per file, named like the filter and documented in it (so that Galaxy lists each filter once,
with its documentation); the code lives in plugins/plugin_utils/fleet_keys.py.
"""

DOCUMENTATION = r"""
name: host_key
version_added: 0.1.0
author: powernap.fleet maintainers
short_description: A host's own fleet key, derived from the master secret
description:
- 'HMAC-SHA256 of C(host:NAME) under the fleet''s master secret, as 64 hex digits: the engine''s C([server] token).
  C(powerwaked) derives the same key from the master, so each engine holds only its own key and can sign reports
  for itself alone. Run it on the controller and keep the result out of logs (C(no_log)).'
options:
  _input:
    description: The master secret (the server's C([powerwaked] secret)), at least 16 characters.
    type: str
    required: true
  host:
    description: The name the engine reports as (its C([powernap] hostname), else its system host name).
    type: str
    required: true
"""

EXAMPLES = r"""
- name: The engine's token
  ansible.builtin.set_fact:
    token: "{{ vault_fleet_master | powernap.fleet.host_key(ansible_facts['nodename']) }}"
  no_log: true
"""

RETURN = r"""
_value:
  description: The host's key, 64 lowercase hex digits.
  type: str
"""

from ansible_collections.powernap.fleet.plugins.plugin_utils.fleet_keys import host_key


class FilterModule:
    """Fleet key derivation."""

    def filters(self):
        return {"host_key": host_key}
