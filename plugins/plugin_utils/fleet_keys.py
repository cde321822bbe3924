# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Each engine's own fleet key, derived on the controller from the master secret (never sent to other hosts).

The code of the host_key filter (plugins/filter/host_key.py)."""

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_text

from ansible_collections.powernap.fleet.plugins.module_utils.fleet_keys import MIN_MASTER
from ansible_collections.powernap.fleet.plugins.module_utils.fleet_keys import host_key as _derive


def host_key(master, host):
    """The key of ``host``; the error never shows the master secret."""
    master = to_text(master or "")
    host = to_text(host or "")
    if len(master) < MIN_MASTER:
        raise AnsibleFilterError("host_key: the master secret is missing or shorter than %d characters" % MIN_MASTER)
    if not host:
        raise AnsibleFilterError("host_key: no host name to derive a key for")
    return _derive(master, host)
