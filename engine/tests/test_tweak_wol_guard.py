"""No tweak ever turns Wake-on-LAN off: a scan of every tweak's plan, and the executor's own guard."""

import logging

import pytest
from fakehost import FakeRunner, make_server, make_tweak, snapshot

from powernap.options import registry
from powernap.sysroot import SysRoot
from powernap.tweaks import CommandChange, FileChange, PowersaveSet, Tweak, TweakContext, default_record_path

LOG = logging.getLogger("test")

# The most aggressive settings every tweak accepts.
AGGRESSIVE = {
    "nic_speed": {"enabled": "yes", "autoneg": "no", "speed": "10"},
    "pci_runtime_pm": {"include_network": "yes", "deny_drivers": ""},
    "usb_autosuspend": {"delay_ms": "0"},
    "kernel_modules": {"modules": "e1000e, iwlwifi, btusb"},
    "services": {"units": "cups.service, smartd.service, systemd-networkd.service"},
    "sata_alpm": {"include_empty_ports": "yes"},
    "disk_apm": {"disks": "sda, sdb, sdc"},
    "disk_spindown": {"disks": "sda, sdb, sdc"},
}


def wol_violation(change):
    if isinstance(change, FileChange):
        return change.path.endswith("power/wakeup") or "wakeup" in change.path
    assert isinstance(change, CommandChange)
    return any(argv[0] == "ethtool" and "wol" in argv for argv in (change.apply, change.restore))


@pytest.mark.parametrize("type_name", sorted(registry("tweak")))
def test_no_tweak_plans_a_wol_change(tmp_path, type_name):
    tree = make_server(tmp_path)
    root = SysRoot(str(tmp_path))
    ctx = TweakContext(root, LOG, None, runner=FakeRunner(tree))
    tweak = make_tweak(ctx, type_name, **AGGRESSIVE.get(type_name, {}))
    changes = tweak.plan()
    assert not [c.describe() for c in changes if wol_violation(c)]


def test_wakeup_files_and_nic_wol_survive_every_tweak(tmp_path):
    tree = make_server(tmp_path)
    root = SysRoot(str(tmp_path))
    runner = FakeRunner(tree)
    ctx = TweakContext(root, LOG, None, runner=runner)
    before = {path: data for path, data in snapshot(tmp_path).items() if path.endswith("power/wakeup")}
    assert before  # the fixture has armed NIC and USB wakeups
    tweaks = [make_tweak(ctx, name, **AGGRESSIVE.get(name, {})) for name in sorted(registry("tweak"))]
    powersave = PowersaveSet(tweaks, root, default_record_path(root), LOG)
    powersave.apply("ac")
    during = {path: data for path, data in snapshot(tmp_path).items() if path.endswith("power/wakeup")}
    assert during == before
    assert not any(call[0] == "ethtool" and "wol" in call for call in runner.calls)
    assert ["modprobe", "-r", "e1000e"] not in runner.calls and ["modprobe", "-r", "iwlwifi"] not in runner.calls
    powersave.restore()


class RogueWakeup(Tweak):
    """A tweak that tries to disarm a NIC's wakeup (not registered: no TYPE)."""

    def plan(self):
        return [FileChange("/sys/bus/pci/devices/0000:00:1f.6/power/wakeup", "disabled")]


class RogueEthtool(Tweak):
    """A tweak that tries 'ethtool -s IF wol d'."""

    def plan(self):
        return [CommandChange("wol off", ["ethtool", "-s", "eno1", "wol", "d"], ["ethtool", "-s", "eno1", "wol", "g"])]


@pytest.mark.parametrize("rogue", [RogueWakeup, RogueEthtool])
def test_executor_refuses_wol_changes(tmp_path, rogue):
    tree = make_server(tmp_path)
    root = SysRoot(str(tmp_path))
    runner = FakeRunner(tree)
    ctx = TweakContext(root, LOG, None, runner=runner)
    before = snapshot(tmp_path)
    result = PowersaveSet([rogue("rogue", {}, ctx)], root, default_record_path(root), LOG).apply("ac")[0]
    assert result["status"] == "failed" and "Wake-on-LAN must stay armed" in result["detail"]
    assert snapshot(tmp_path) == before and runner.calls == []
