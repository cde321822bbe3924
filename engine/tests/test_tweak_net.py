"""Wi-Fi power save and NIC link speed (off by default); both restore what they found."""

import logging

from fakehost import FakeRunner, make_server, make_tweak

from powernap.options import registry
from powernap.sysroot import SysRoot
from powernap.tweaks import PowersaveSet, TweakContext, default_record_path

LOG = logging.getLogger("test")


def context(tmp_path, programs=FakeRunner.PROGRAMS):
    tree = make_server(tmp_path)
    root = SysRoot(str(tmp_path))
    runner = FakeRunner(tree, programs)
    return tree, root, runner, TweakContext(root, LOG, None, runner=runner)


def test_wifi_powersave_on_then_back_off(tmp_path):
    tree, root, runner, ctx = context(tmp_path)
    powersave = PowersaveSet([make_tweak(ctx, "wifi_powersave")], root, default_record_path(root), LOG)
    assert powersave.apply("battery")[0]["status"] == "applied"
    assert runner.power_save == {"wlp2s0": "on"}
    powersave.restore()
    assert runner.power_save == {"wlp2s0": "off"}
    assert runner.changing_calls() == [
        ["iw", "dev", "wlp2s0", "set", "power_save", "on"],
        ["iw", "dev", "wlp2s0", "set", "power_save", "off"],
    ]


def test_wifi_already_on_is_left_alone(tmp_path):
    tree, root, runner, ctx = context(tmp_path)
    runner.power_save["wlp2s0"] = "on"
    powersave = PowersaveSet([make_tweak(ctx, "wifi_powersave")], root, default_record_path(root), LOG)
    assert powersave.apply("ac")[0]["status"] == "unchanged"
    powersave.restore()
    assert runner.power_save == {"wlp2s0": "on"} and runner.changing_calls() == []


def test_wifi_without_iw(tmp_path):
    tree, root, runner, ctx = context(tmp_path, programs=("ethtool",))
    tweak = make_tweak(ctx, "wifi_powersave")
    assert tweak.plan() == [] and tweak.notes == ["iw is not installed"]


def test_nic_speed_is_off_by_default(tmp_path):
    assert registry("tweak")["nic_speed"].parse_options({})["enabled"] is False
    tree, root, runner, ctx = context(tmp_path)
    result = PowersaveSet([make_tweak(ctx, "nic_speed")], root, default_record_path(root), LOG).apply("ac")[0]
    assert result == {"name": "nic_speed", "status": "skipped", "detail": "disabled"}
    assert runner.calls == []


def test_nic_speed_autoneg_restore(tmp_path):
    tree, root, runner, ctx = context(tmp_path)
    powersave = PowersaveSet([make_tweak(ctx, "nic_speed", enabled="yes")], root, default_record_path(root), LOG)
    assert powersave.apply("ac")[0]["status"] == "applied"
    assert ["ethtool", "-s", "eno1", "speed", "100", "duplex", "full", "autoneg", "on"] in runner.calls
    assert runner.links["eno1"]["speed"] == 100
    powersave.restore()
    assert runner.calls[-1] == ["ethtool", "-s", "eno1", "autoneg", "on"]
    assert runner.links["eno1"] == {"speed": 1000, "duplex": "Full", "autoneg": True, "link": True}


def test_nic_speed_forced_link_restores_forced_settings(tmp_path):
    tree, root, runner, ctx = context(tmp_path)
    runner.links["eno1"] = {"speed": 1000, "duplex": "Full", "autoneg": False, "link": True}
    powersave = PowersaveSet(
        [make_tweak(ctx, "nic_speed", enabled="yes", autoneg="no")], root, default_record_path(root), LOG
    )
    powersave.apply("ac")
    assert runner.links["eno1"] == {"speed": 100, "duplex": "Full", "autoneg": False, "link": True}
    powersave.restore()
    assert runner.calls[-1] == ["ethtool", "-s", "eno1", "speed", "1000", "duplex", "full", "autoneg", "off"]
    assert runner.links["eno1"] == {"speed": 1000, "duplex": "Full", "autoneg": False, "link": True}


def test_nic_speed_skips_links_that_are_down_or_slow(tmp_path):
    tree, root, runner, ctx = context(tmp_path)
    runner.links["eno1"]["link"] = False
    tweak = make_tweak(ctx, "nic_speed", enabled="yes")
    assert tweak.plan() == [] and tweak.notes == ["eno1: no link, left alone"]
    runner.links["eno1"].update(link=True, speed=100)
    assert make_tweak(ctx, "nic_speed", enabled="yes").plan() == []
