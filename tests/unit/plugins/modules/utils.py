# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Module-argument patching for the unit tests, on every ansible-core the collection supports."""

from __future__ import annotations

import contextlib
import json
from unittest import mock

from ansible.module_utils import basic
from ansible.module_utils.common.text.converters import to_bytes

try:
    # ansible-core 2.19 and later: the public helper (it also sets the 2.19 serialization profile).
    from ansible.module_utils.testing import patch_module_args
except ImportError:  # ansible-core 2.16 to 2.18

    @contextlib.contextmanager
    def patch_module_args(args=None):
        """Make AnsibleModule read ``args`` as its module arguments (what 2.19's helper does)."""
        serialized = json.dumps({"ANSIBLE_MODULE_ARGS": args or {}})
        with mock.patch.object(basic, "_ANSIBLE_ARGS", to_bytes(serialized)):
            yield


__all__ = ["patch_module_args"]
