# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Picking the NICs to enable Wake-on-LAN on from ethtool output, and the SecureOn password ethtool sets
(plugins/plugin_utils/wol.py)."""

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.powernap.fleet.plugins.plugin_utils.wol import secureon_sopass, wol_nics

ETHTOOL = """Settings for {name}:
\tSupported ports: [ TP ]
\tSpeed: 1000Mb/s
\tSupports Wake-on: {supports}
\tWake-on: {current}
{extra}\tLink detected: yes
"""
FACTS = {"eno1": {"macaddress": "52:54:00:AA:BB:01"}, "enp3s0_1": {"macaddress": "52:54:00:aa:bb:02"}}


def result(name, supports="pumbg", current="d", extra="", rc=0):
    return {
        "item": name,
        "rc": rc,
        "stdout": ETHTOOL.format(name=name, supports=supports, current=current, extra=extra),
    }


def test_supported_nic_with_wol_off_needs_a_change():
    nics = wol_nics([result("eno1")], FACTS)
    assert nics == [
        {"name": "eno1", "mac": "52:54:00:aa:bb:01", "supports": "pumbg", "current": "d", "wanted": "g", "change": True}
    ]


def test_nic_already_on_is_left_alone_and_dotted_names_find_their_facts():
    nics = wol_nics([result("enp3s0.1", current="g")], FACTS)
    assert nics[0]["change"] is False
    assert nics[0]["mac"] == "52:54:00:aa:bb:02"


def test_unsupported_and_failed_nics_are_left_out():
    veth = {"item": "veth0", "rc": 0, "stdout": "Settings for veth0:\n\tLink detected: yes\n"}
    assert wol_nics([result("eno1", supports="d"), result("eno2", rc=75), veth], FACTS) == []


def test_secureon_needs_s_support_and_the_right_password():
    extra = "\tSecureOn password: 01:02:03:04:05:06\n"
    ok = result("eno1", supports="pumbgs", current="gs", extra=extra)
    assert wol_nics([ok], FACTS, "01:02:03:04:05:06")[0]["change"] is False
    assert wol_nics([ok], FACTS, "01:02:03:04:05:07")[0]["change"] is True
    assert wol_nics([result("eno1", supports="pumbgs", current="g")], FACTS, "01-02-03-04-05-06")[0]["wanted"] == "gs"
    assert wol_nics([result("eno1", supports="g")], FACTS, "01:02:03:04:05:06") == []


def test_secureon_takes_every_form_the_wake_module_sends():
    # One parser (module_utils/magic_packet.py) for the role and the wake module.
    assert secureon_sopass("01-02-03-04-05-0A") == "01:02:03:04:05:0a"
    assert secureon_sopass("0102030405 0a") == "01:02:03:04:05:0a"
    assert secureon_sopass(None) == secureon_sopass("") == ""
    # 4 bytes: ethtool cannot set it on a NIC, which then wakes on the plain magic packet.
    assert secureon_sopass("192.168.1.1") == ""
    nics = wol_nics([result("eno1", supports="pumbg")], FACTS, "192.168.1.1")
    assert nics[0]["wanted"] == "g"


@pytest.mark.parametrize("bad", ["s3cr3t-passw0rd", "300.1.1.1", "01:02:03:04:05"])
def test_a_bad_secureon_is_refused_without_showing_it(bad):
    with pytest.raises(AnsibleFilterError) as caught:
        wol_nics([result("eno1")], FACTS, bad)
    assert "powernap_secureon" in str(caught.value)
    assert bad not in str(caught.value)
