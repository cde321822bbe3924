"""Platform profile, PCIe ASPM, PCI runtime PM, audio, NMI watchdog and dirty writeback tweaks."""

import logging

from fakehost import FakeRunner, changed_files, make_server, make_tweak, snapshot, sysfs_set_class

from powernap.sysroot import SysRoot
from powernap.tweaks import PowersaveSet, TweakContext, default_record_path

LOG = logging.getLogger("test")
SysfsSet = sysfs_set_class()


def context(tmp_path):
    tree = make_server(tmp_path)
    root = SysRoot(str(tmp_path))
    return tree, root, TweakContext(root, LOG, None, runner=FakeRunner(tree))


def apply_restore(tmp_path, ctx, tweak, set_class=PowersaveSet):
    before = snapshot(tmp_path)
    powersave = set_class([tweak], ctx.root, default_record_path(ctx.root), LOG)
    result = powersave.apply("ac")[0]
    during = snapshot(tmp_path)
    powersave.restore()
    assert changed_files(before, snapshot(tmp_path)) == []
    return result, {path: during[path] for path in changed_files(before, during)}


def test_platform_profile_prefers_offered_choice(tmp_path):
    tree, root, ctx = context(tmp_path)
    result, changed = apply_restore(tmp_path, ctx, make_tweak(ctx, "platform_profile", profile="quiet, low-power"))
    assert changed == {"sys/firmware/acpi/platform_profile": b"low-power"}
    tweak = make_tweak(ctx, "platform_profile", profile="cool")
    assert tweak.plan() == [] and "choices: low-power balanced performance" in tweak.notes[0]


def test_pcie_aspm_restores_the_bracketed_policy(tmp_path):
    tree, root, ctx = context(tmp_path)
    # Plain files: what restore writes is the selected word, which is what the kernel accepts.
    powersave = PowersaveSet([make_tweak(ctx, "pcie_aspm")], root, default_record_path(root), LOG)
    powersave.apply("ac")
    assert tree.read("/sys/module/pcie_aspm/parameters/policy") == "powersave"
    powersave.restore()
    assert tree.read("/sys/module/pcie_aspm/parameters/policy") == "default"
    # With sysfs selector semantics the file reads back byte for byte as before.
    tree.write("/sys/module/pcie_aspm/parameters/policy", "[default] performance powersave powersupersave \n")
    result, changed = apply_restore(tmp_path, ctx, make_tweak(ctx, "pcie_aspm", policy="powersupersave"), SysfsSet)
    assert changed == {"sys/module/pcie_aspm/parameters/policy": b"default performance powersave [powersupersave] \n"}
    # Already selected: nothing to do.
    tree.write("/sys/module/pcie_aspm/parameters/policy", "default performance [powersave] powersupersave \n")
    assert (
        PowersaveSet([make_tweak(ctx, "pcie_aspm")], root, default_record_path(root), LOG).apply("ac")[0]["status"]
        == "unchanged"
    )


def test_pci_runtime_pm_deny_list_and_network(tmp_path):
    tree, root, ctx = context(tmp_path)
    result, changed = apply_restore(tmp_path, ctx, make_tweak(ctx, "pci_runtime_pm"))
    assert sorted(changed) == [
        "sys/devices/pci0000:00/%s/power/control" % slot for slot in ("0000:00:02.0", "0000:00:17.0", "0000:00:1f.3")
    ]
    assert set(changed.values()) == {b"auto"}
    for denied in ("xhci_hcd denied", "mei_me denied", "nvidia denied", "network controller left alone"):
        assert denied in result["detail"]
    plan = make_tweak(ctx, "pci_runtime_pm", include_network="yes", deny_drivers="nvidia").plan()
    paths = [c.path for c in plan]
    assert "/sys/bus/pci/devices/0000:00:1f.6/power/control" in paths
    assert "/sys/bus/pci/devices/0000:00:14.0/power/control" in paths
    assert "/sys/bus/pci/devices/0000:01:00.0/power/control" not in paths


def test_audio_powersave(tmp_path):
    tree, root, ctx = context(tmp_path)
    result, changed = apply_restore(tmp_path, ctx, make_tweak(ctx, "audio_powersave", timeout=10))
    assert changed == {
        "sys/module/snd_hda_intel/parameters/power_save": b"10",
        "sys/module/snd_hda_intel/parameters/power_save_controller": b"Y",
    }
    result, changed = apply_restore(tmp_path, ctx, make_tweak(ctx, "audio_powersave", controller="no"))
    assert list(changed) == ["sys/module/snd_hda_intel/parameters/power_save"]


def test_nmi_watchdog_and_dirty_writeback(tmp_path):
    tree, root, ctx = context(tmp_path)
    result, changed = apply_restore(tmp_path, ctx, make_tweak(ctx, "nmi_watchdog"))
    assert changed == {"proc/sys/kernel/nmi_watchdog": b"0"}
    result, changed = apply_restore(
        tmp_path, ctx, make_tweak(ctx, "dirty_writeback", writeback_centisecs=6000, expire_centisecs=4500)
    )
    assert changed == {"proc/sys/vm/dirty_writeback_centisecs": b"6000", "proc/sys/vm/dirty_expire_centisecs": b"4500"}
