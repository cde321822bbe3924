# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet's per-host keys: the one home of deriving them.

Used by the collection's ``host_key`` filter (the role derives each engine's
key on the controller) and, through the symlink
``engine/powernap/fleet_keys.py``, by powerwaked, which derives every host's
key from the master secret it alone holds.  A host only ever holds its own
key, so it can sign reports for itself and nobody else, and it can check
that a command was signed for it.  Pure standard library, no Ansible imports.
"""

import hashlib
import hmac

HOST_LABEL = b"host:"
MIN_MASTER = 16  # characters: shorter master secrets are refused


def _bytes(value):
    return value if isinstance(value, bytes) else value.encode("utf-8")


def host_key(master, host):
    """The key of ``host``: hex HMAC-SHA256(master, "host:" + name), 64 characters (the engine's token)."""
    if not host:
        raise ValueError("a host key needs a host name")
    return hmac.new(_bytes(master), HOST_LABEL + _bytes(host), hashlib.sha256).hexdigest()
