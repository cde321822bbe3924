"""Platform detection from fake trees: KVM guest, nspawn container, laptop on battery, bare-metal server."""

import os

import pytest
from fakehost import (
    Tree,
    add_dmi,
    ethtool_text,
    make_kvm_guest,
    make_laptop_on_battery,
    make_nspawn_container,
    make_server,
)

from powernap import platform
from powernap.sysroot import SysRoot


def detect(tmp_path, override=None):
    return platform.detect(SysRoot(str(tmp_path)), override=override)


def test_bare_metal_server(tmp_path):
    make_server(tmp_path)
    info = detect(tmp_path)
    assert (info.kind, info.virt, info.effective_kind) == ("physical", "none", "physical")
    assert info.power_source == "ac" and not info.has_battery and not info.portable
    assert info.sleep_states == ["freeze", "mem", "disk"] and info.can_suspend
    assert info.mem_sleep == ["s2idle", "deep"] and info.mem_sleep_current == "deep"
    assert info.can_hibernate and info.swap_bytes == 8 << 30
    nics = {nic["name"]: nic for nic in info.nics}
    assert set(nics) == {"eno1", "wlp2s0", "br0"}
    assert nics["eno1"] == {
        "name": "eno1",
        "mac": "3c:ec:ef:00:11:22",
        "driver": "e1000e",
        "physical": True,
        "wireless": False,
        "wol_supported": ["p", "u", "m", "b", "g"],
        "wol": "g",
    }
    assert nics["wlp2s0"]["wireless"] and nics["wlp2s0"]["wol"] is None
    assert not nics["br0"]["physical"] and nics["br0"]["driver"] is None
    data = info.to_dict()
    assert data["kind"] == "physical" and data["nics"][1]["name"] == "eno1"


def test_kvm_guest(tmp_path):
    make_kvm_guest(tmp_path)
    info = detect(tmp_path)
    assert (info.kind, info.virt) == ("vm", "kvm")
    assert info.evidence == ["DMI sys_vendor = QEMU", "hypervisor flag in /proc/cpuinfo"]
    nic = info.nics[0]
    assert nic["driver"] == "virtio-pci" and nic["wol_supported"] is None and nic["wol"] == "d"
    assert detect(tmp_path, override="physical").effective_kind == "physical"


def test_plain_qemu_and_hypervisor_flag_only(tmp_path):
    tree = make_kvm_guest(tmp_path)
    tree.write("/sys/devices/system/clocksource/clocksource0/available_clocksource", "tsc acpi_pm\n")
    assert detect(tmp_path).virt == "qemu"
    add_dmi(tree, "Supermicro", "X11SSH-F", chassis_type="17")
    assert (detect(tmp_path).kind, detect(tmp_path).virt) == ("vm", "vm-other")


def test_nspawn_container_wins_over_vm(tmp_path):
    make_nspawn_container(tmp_path)
    info = detect(tmp_path)
    assert (info.kind, info.virt) == ("container", "systemd-nspawn")
    # The deciding marker first, then every other finding (the VM under the container included).
    assert info.evidence == [
        "/run/systemd/container = systemd-nspawn",
        "DMI sys_vendor = QEMU",
        "hypervisor flag in /proc/cpuinfo",
    ]


def test_container_from_pid1_environ_and_marker_files(tmp_path):
    tree = make_kvm_guest(tmp_path)
    tree.write("/proc/1/environ", b"PATH=/bin\x00container=lxc\x00")
    assert (detect(tmp_path).kind, detect(tmp_path).virt) == ("container", "lxc")
    tree.write("/proc/1/environ", b"container=oci\x00")
    assert detect(tmp_path).virt == "container-other"
    tree.write("/proc/1/environ", b"PATH=/bin\x00")
    tree.write("/.dockerenv", "")
    tree.write("/proc/self/status", "Name:\tpowernapd\nNSpid:\t4711\t7\n")  # docker: a PID namespace
    info = detect(tmp_path)
    assert (info.kind, info.virt) == ("container", "docker")
    assert info.evidence[:2] == [
        "/.dockerenv exists and a child PID namespace",
        "this process runs in a child (container) PID namespace",
    ]


def test_stray_dockerenv_does_not_turn_a_vm_into_a_container(tmp_path):
    """A /.dockerenv left in a VM image (the audit's Debian VM): init's PID namespace and the
    hypervisor evidence win, and hwinfo's evidence says why the marker was ignored."""
    tree = make_kvm_guest(tmp_path)
    tree.write("/.dockerenv", "")
    tree.write("/proc/self/status", "Name:\tpowernapd\nNSpid:\t4711\n")
    info = detect(tmp_path)
    assert (info.kind, info.virt) == ("vm", "kvm")
    assert info.evidence == [
        "this process runs in the initial PID namespace",
        "/.dockerenv exists, ignored: no PID namespace of its own",
        "DMI sys_vendor = QEMU",
        "hypervisor flag in /proc/cpuinfo",
    ]
    # Without DMI (a Firecracker-like VM), the hypervisor flag alone still makes it a VM.
    for field in ("sys_vendor", "product_name", "board_vendor", "bios_vendor", "product_version"):
        tree.write("/sys/class/dmi/id/" + field, "")
    assert (detect(tmp_path).kind, detect(tmp_path).virt) == ("vm", "vm-other")
    # A bare-metal host with a stray marker in the initial namespace stays physical.
    server = tmp_path / "server"
    make_server(server).write("/.dockerenv", "")
    (server / "proc/self").mkdir(parents=True, exist_ok=True)
    (server / "proc/self/status").write_text("NSpid:\t1234\n")
    assert detect(server).kind == "physical"
    # Where the namespace cannot be read and nothing says VM, the marker still decides (systemd's rule).
    (server / "proc/self/status").unlink()
    assert (detect(server).kind, detect(server).virt) == ("container", "docker")
    # The namespace link wins over NSpid (a container's own /proc shows a single NSpid level).
    (server / "proc/self/ns").mkdir()
    os.symlink("pid:[4026534315]", str(server / "proc/self/ns/pid"))
    (server / "proc/self/status").write_text("NSpid:\t2\n")
    assert detect(server).evidence[:2] == [
        "/.dockerenv exists and a child PID namespace",
        "this process runs in a child (container) PID namespace",
    ]
    os.unlink(str(server / "proc/self/ns/pid"))
    os.symlink("pid:[4026531836]", str(server / "proc/self/ns/pid"))
    assert detect(server).kind == "physical"


def test_xen_dom0_is_physical_domu_is_vm(tmp_path):
    tree = make_server(tmp_path)
    tree.write("/sys/hypervisor/type", "xen\n")
    tree.write("/proc/xen/capabilities", "control_d\n")
    assert detect(tmp_path).kind == "physical"
    tree.write("/proc/xen/capabilities", "")
    assert (detect(tmp_path).kind, detect(tmp_path).virt) == ("vm", "xen")


def test_surface_laptop_is_not_hyper_v(tmp_path):
    tree = make_server(tmp_path)
    add_dmi(tree, "Microsoft Corporation", "Surface Laptop 4", chassis_type="9")
    assert detect(tmp_path).kind == "physical"
    add_dmi(tree, "Microsoft Corporation", "Virtual Machine", chassis_type="3")
    assert (detect(tmp_path).kind, detect(tmp_path).virt) == ("vm", "microsoft")


def test_laptop_on_battery(tmp_path):
    make_laptop_on_battery(tmp_path)
    info = detect(tmp_path)
    assert info.kind == "physical" and info.power_source == "battery"
    assert info.has_battery and info.portable
    assert info.mem_sleep_current == "s2idle"
    assert not info.can_hibernate and "no active swap" in info.hibernate_reason


def test_mains_online_beats_discharging_battery(tmp_path):
    tree = make_laptop_on_battery(tmp_path)
    root = SysRoot(str(tmp_path))
    tree.write("/sys/class/power_supply/AC/online", "1\n")
    assert platform.read_power_source(root) == "ac"  # even though BAT0 still says Discharging
    tree.write("/sys/class/power_supply/AC/online", "0\n")
    tree.write("/sys/class/power_supply/BAT0/status", "Not charging\n")
    assert platform.read_power_source(root) == "battery"  # mains present but offline


@pytest.mark.parametrize(
    "supplies, expected",
    [
        ({}, "ac"),  # servers and desktops: no battery at all
        (
            {
                "ucsi-source-psy-USBC000:001": {"type": "USB", "online": "1"},
                "BAT0": {"type": "Battery", "status": "Discharging"},
            },
            "ac",
        ),
        ({"BAT0": {"type": "Battery", "status": "Charging"}}, "ac"),
        ({"BAT0": {"type": "Battery", "status": "Discharging"}}, "battery"),
        ({"BAT0": {"type": "Battery", "status": "Unknown"}}, "unknown"),
        ({"hid-mouse": {"type": "Battery", "scope": "Device", "status": "Discharging"}}, "ac"),
    ],
)
def test_power_source_rules(tmp_path, supplies, expected):
    tree = Tree(tmp_path)
    tree.mkdir("/sys/class/power_supply")
    for name, attrs in supplies.items():
        for key, value in attrs.items():
            tree.write("/sys/class/power_supply/%s/%s" % (name, key), value + "\n")
    assert platform.read_power_source(SysRoot(str(tmp_path))) == expected


def test_hibernate_needs_disk_state_swap_and_no_lockdown(tmp_path):
    tree = make_server(tmp_path)
    assert detect(tmp_path).can_hibernate
    tree.write("/sys/kernel/security/lockdown", "none [integrity] confidentiality\n")
    info = detect(tmp_path)
    assert not info.can_hibernate and "lockdown (integrity)" in info.hibernate_reason
    tree.write("/sys/kernel/security/lockdown", "[none] integrity confidentiality\n")
    tree.write("/sys/power/image_size", "%d\n" % (16 << 30))
    assert "smaller than the hibernation image" in detect(tmp_path).hibernate_reason
    tree.write("/sys/power/state", "freeze mem\n")
    info = detect(tmp_path)
    assert not info.can_hibernate and "'disk'" in info.hibernate_reason and info.can_suspend


def test_parse_ethtool():
    parsed = platform.parse_ethtool(ethtool_text("eno1", speed=100, duplex="Half", autoneg=False, wol="d"))
    assert parsed == {
        "speed": 100,
        "duplex": "half",
        "autoneg": False,
        "wol_supported": "pumbg",
        "wol": "d",
        "link": True,
    }
    assert platform.parse_ethtool(ethtool_text("x", speed=None, link=False))["speed"] is None


def test_wol_ioctl_on_loopback_answers_none():
    # A real SIOCETHTOOL call: loopback has no Wake-on-LAN (EOPNOTSUPP), or we lack CAP_NET_ADMIN.
    assert platform.wol_ioctl("lo") is None
    assert platform.wol_letters(0x21) == ["p", "g"]


def test_bad_override_is_rejected(tmp_path):
    make_server(tmp_path)
    with pytest.raises(ValueError):
        detect(tmp_path, override="laptop")
