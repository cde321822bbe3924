# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The role's host_key filter derives the key powerwaked derives, and never shows the master secret."""

import hashlib
import hmac

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.powernap.fleet.plugins.filter.host_key import FilterModule

MASTER = "master-secret-of-the-fleet-0123"


def test_host_key_is_hmac_of_the_host_label():
    host_key = FilterModule().filters()["host_key"]
    expected = hmac.new(MASTER.encode(), b"host:web1", hashlib.sha256).hexdigest()
    assert host_key(MASTER, "web1") == expected
    assert host_key(MASTER, "web2") != expected


def test_short_master_is_refused_without_showing_it():
    host_key = FilterModule().filters()["host_key"]
    with pytest.raises(AnsibleFilterError) as info:
        host_key("short-secret", "web1")
    assert "short-secret" not in str(info.value)
