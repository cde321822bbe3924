"""USB autosuspend: never HID (keyboards, UPSes), audio or serial devices."""

import logging

from fakehost import FakeRunner, changed_files, make_server, make_tweak, snapshot

from powernap.sysroot import SysRoot
from powernap.tweaks import PowersaveSet, TweakContext, default_record_path

LOG = logging.getLogger("test")
USB = "/sys/bus/usb/devices/"


def context(tmp_path):
    tree = make_server(tmp_path)
    root = SysRoot(str(tmp_path))
    return tree, root, TweakContext(root, LOG, None, runner=FakeRunner(tree))


def test_only_safe_devices_autosuspend(tmp_path):
    tree, root, ctx = context(tmp_path)
    tweak = make_tweak(ctx, "usb_autosuspend", delay_ms=1000)
    plan = [(c.path, c.value) for c in tweak.plan()]
    # Delay first, then control, so the device never autosuspends with the old delay.
    assert plan == [
        (USB + "1-5/power/autosuspend_delay_ms", "1000"),
        (USB + "1-5/power/control", "auto"),
        (USB + "usb1/power/autosuspend_delay_ms", "1000"),
        (USB + "usb1/power/control", "auto"),
    ]
    notes = " | ".join(tweak.notes)
    assert "1-1 left alone: interface 1-1:1.0 class 03 (HID" in notes  # keyboard
    assert "1-2 left alone: interface 1-2:1.0 class 03 (HID (input or UPS))" in notes  # UPS
    assert "1-3 left alone: interface 1-3:1.0 driver ftdi_sio" in notes  # serial adapter
    assert "1-4 left alone: interface 1-4:1.0 class 01 (audio)" in notes  # USB sound card


def test_hid_anywhere_in_a_composite_device_excludes_it(tmp_path):
    tree, root, ctx = context(tmp_path)
    tree.write("/sys/bus/usb/devices/1-5:1.0/bInterfaceClass", "08\n")
    from fakehost import add_usb

    add_usb(tree, "1-6", "1050", "0407", [("0b", None), ("03", None)])  # smartcard + HID (a security key)
    add_usb(tree, "1-7", "067b", "2303", [("02", None)])  # CDC modem without a driver bound
    tweak = make_tweak(ctx, "usb_autosuspend")
    paths = [c.path for c in tweak.plan()]
    assert not any("/1-6/" in path or "/1-7/" in path for path in paths)


def test_deny_ids_and_drivers(tmp_path):
    tree, root, ctx = context(tmp_path)
    assert make_tweak(ctx, "usb_autosuspend", deny_ids="0781:*, 1d6b:0002").plan() == []
    tweak = make_tweak(ctx, "usb_autosuspend", deny_drivers="usb-storage")
    assert [c.path for c in tweak.plan()] == [USB + "usb1/power/autosuspend_delay_ms", USB + "usb1/power/control"]


def test_roundtrip_byte_for_byte(tmp_path):
    tree, root, ctx = context(tmp_path)
    before = snapshot(tmp_path)
    powersave = PowersaveSet([make_tweak(ctx, "usb_autosuspend", delay_ms=500)], root, default_record_path(root), LOG)
    assert powersave.apply("ac")[0]["status"] == "applied"
    assert tree.read(USB + "1-5/power/control") == "auto"
    assert tree.read(USB + "1-5/power/autosuspend_delay_ms") == "500"
    assert tree.read(USB + "1-1/power/control") == "on\n"
    powersave.restore()
    assert changed_files(before, snapshot(tmp_path)) == []
