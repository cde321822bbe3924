"""Services and kernel modules: only what the engine stopped or unloaded comes back."""

import logging

from fakehost import FakeRunner, make_server, make_tweak

from powernap.sysroot import SysRoot
from powernap.tweaks import PowersaveSet, TweakContext, default_record_path

LOG = logging.getLogger("test")


def context(tmp_path):
    tree = make_server(tmp_path)
    root = SysRoot(str(tmp_path))
    runner = FakeRunner(tree)
    return tree, root, runner, TweakContext(root, LOG, None, runner=runner)


def test_services_stop_active_only_and_start_only_those(tmp_path):
    tree, root, runner, ctx = context(tmp_path)
    tweak = make_tweak(ctx, "services", units="cups.service, bluetooth.service, missing.service")
    powersave = PowersaveSet([tweak], root, default_record_path(root), LOG)
    result = powersave.apply("ac")[0]
    assert result["status"] == "applied"
    assert "bluetooth.service is inactive: not stopped" in result["detail"]
    assert runner.changing_calls() == [["systemctl", "stop", "cups.service"]]
    # Someone starts bluetooth meanwhile; restore must not touch it.
    runner.units["bluetooth.service"] = "active"
    powersave.restore()
    assert runner.changing_calls() == [["systemctl", "stop", "cups.service"], ["systemctl", "start", "cups.service"]]
    assert runner.units["cups.service"] == "active"


def test_modules_unload_loaded_only_never_a_nic_driver(tmp_path):
    tree, root, runner, ctx = context(tmp_path)
    before = tree.read("/proc/modules")
    tweak = make_tweak(ctx, "kernel_modules", modules="btusb, e1000e, nouveau, uvcvideo")
    powersave = PowersaveSet([tweak], root, default_record_path(root), LOG)
    result = powersave.apply("ac")[0]
    assert "e1000e drives a network interface: never unloaded (Wake-on-LAN)" in result["detail"]
    assert "nouveau is not loaded" in result["detail"]
    assert runner.changing_calls() == [["modprobe", "-r", "btusb"], ["modprobe", "-r", "uvcvideo"]]
    assert "btusb" not in tree.read("/proc/modules") and "e1000e" in tree.read("/proc/modules")
    powersave.restore()
    assert runner.changing_calls()[2:] == [["modprobe", "uvcvideo"], ["modprobe", "btusb"]]
    assert tree.read("/proc/modules") == before


def test_failed_unload_reloads_what_went_before(tmp_path):
    tree, root, runner, ctx = context(tmp_path)
    runner.fail.add(("modprobe", "-r", "uvcvideo"))
    before = tree.read("/proc/modules")
    powersave = PowersaveSet(
        [make_tweak(ctx, "kernel_modules", modules="btusb, uvcvideo")], root, default_record_path(root), LOG
    )
    assert powersave.apply("ac")[0]["status"] == "failed"
    assert tree.read("/proc/modules") == before
    assert not powersave.applied_tweaks()
