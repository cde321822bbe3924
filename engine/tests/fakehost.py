"""Fake host trees (sys/, proc/, run/, dev/) and a fake command runner for tweak, hardware and platform tests.

The trees copy the real kernel layout, symlinks included (``cpuN/cpufreq`` →
``policyN``, ``/sys/bus/pci/devices/X`` → ``/sys/devices/pci0000:00/X``,
``/sys/dev/block/8:2`` → the partition, ``device/driver/module``), because
the tweaks resolve those links.  Files hold what sysfs returns, trailing
newline included.
"""

import os
import sys
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from powernap.tweaks import CommandResult, CommandRunner

PCI = "/sys/devices/pci0000:00"
SATA = PCI + "/0000:00:17.0"
GIB = 1 << 30


class Tree:
    def __init__(self, base):
        self.base = str(base)

    def path(self, system_path: str) -> str:
        return os.path.join(self.base, system_path.lstrip("/"))

    def write(self, system_path: str, text, mode: Optional[int] = None) -> None:
        full = self.path(system_path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        data = text if isinstance(text, bytes) else text.encode("utf-8")
        with open(full, "wb") as handle:
            handle.write(data)
        if mode is not None:
            os.chmod(full, mode)

    def read(self, system_path: str) -> str:
        with open(self.path(system_path), encoding="utf-8") as handle:
            return handle.read()

    def mkdir(self, system_path: str) -> None:
        os.makedirs(self.path(system_path), exist_ok=True)

    def link(self, system_path: str, target: str) -> None:
        """A relative symlink at ``system_path`` to the absolute system path ``target``."""
        full = self.path(system_path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        os.symlink(os.path.relpath(target, os.path.dirname(system_path)), full)


def snapshot(base, skip_top: Sequence[str] = ("run",)) -> Dict[str, bytes]:
    """Every file's bytes and every symlink's target under ``base`` (run/ skipped: the record lives there)."""
    result = {}
    base = str(base)
    for dirpath, dirnames, filenames in os.walk(base):
        rel_dir = os.path.relpath(dirpath, base)
        if rel_dir.split(os.sep)[0] in skip_top:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if os.path.islink(full):
                result[rel] = b"-> " + os.readlink(full).encode()
            elif os.path.isfile(full):
                with open(full, "rb") as handle:
                    result[rel] = handle.read()
    return result


def changed_files(before: Dict[str, bytes], after: Dict[str, bytes]) -> List[str]:
    return sorted(key for key in set(before) | set(after) if before.get(key) != after.get(key))


# Pieces -------------------------------------------------------------------
def add_cpus(tree: Tree, count: int = 4, epp: bool = True, governor: str = "performance", pstate: bool = True) -> None:
    cpu = "/sys/devices/system/cpu"
    tree.write(cpu + "/online", "0-%d\n" % (count - 1))
    for n in range(count):
        policy = "%s/cpufreq/policy%d" % (cpu, n)
        tree.write(policy + "/scaling_governor", governor + "\n")
        tree.write(policy + "/scaling_available_governors", "performance powersave\n")
        if epp:
            tree.write(policy + "/energy_performance_preference", "balance_performance\n")
            # The kernel prints a trailing space before the newline here.
            tree.write(
                policy + "/energy_performance_available_preferences",
                "default performance balance_performance balance_power power \n",
            )
        tree.link("%s/cpu%d/cpufreq" % (cpu, n), policy)
        tree.write("%s/cpu%d/power/energy_perf_bias" % (cpu, n), "6\n")
        if n:
            tree.write("%s/cpu%d/online" % (cpu, n), "1\n")
    if pstate:
        tree.write(cpu + "/intel_pstate/no_turbo", "0\n")
        tree.write(cpu + "/intel_pstate/status", "active\n")
    cpuinfo = ""
    for n in range(count):
        cpuinfo += (
            "processor\t: %d\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Silver 4110 CPU "
            "@ 2.10GHz\nflags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep constant_tsc\n\n" % n
        )
    tree.write("/proc/cpuinfo", cpuinfo)


def add_pci(
    tree: Tree, slot: str, vendor: str, device: str, pci_class: str, driver: Optional[str], module: Optional[str] = None
) -> str:
    dev = "%s/%s" % (PCI, slot)
    tree.write(dev + "/vendor", "0x%s\n" % vendor)
    tree.write(dev + "/device", "0x%s\n" % device)
    tree.write(dev + "/class", "0x%s\n" % pci_class)
    tree.write(dev + "/power/control", "on\n")
    tree.write(dev + "/power/wakeup", "disabled\n")
    tree.link("/sys/bus/pci/devices/" + slot, dev)
    if driver:
        drv = "/sys/bus/pci/drivers/" + driver
        tree.mkdir(drv)
        if not os.path.lexists(tree.path(drv + "/module")):
            tree.mkdir("/sys/module/" + (module or driver))
            tree.link(drv + "/module", "/sys/module/" + (module or driver))
        tree.link(dev + "/driver", drv)
    return dev


def add_disk(
    tree: Tree, host: int, name: str, major_minor: str, rotational: bool, removable: bool = False, partitions: int = 0
) -> None:
    hostdir = "%s/ata%d/host%d" % (SATA, host + 1, host)
    disk = "%s/target%d:0:0/%d:0:0:0/block/%s" % (hostdir, host, host, name)
    tree.write(disk + "/queue/rotational", "1\n" if rotational else "0\n")
    tree.write(disk + "/removable", "1\n" if removable else "0\n")
    tree.write(disk + "/dev", major_minor + "\n")
    tree.link("/sys/block/" + name, disk)
    tree.link("/sys/class/block/" + name, disk)
    tree.link("/sys/dev/block/" + major_minor, disk)
    major, minor = major_minor.split(":")
    for part in range(1, partitions + 1):
        pdir = "%s/%s%d" % (disk, name, part)
        tree.write(pdir + "/partition", "%d\n" % part)
        tree.link("/sys/class/block/%s%d" % (name, part), pdir)
        tree.link("/sys/dev/block/%s:%d" % (major, int(minor) + part), pdir)


def add_scsi_host(tree: Tree, host: int, policy: str = "max_performance\n", port_cmd: str = "c017\n") -> None:
    hostdir = "%s/ata%d/host%d" % (SATA, host + 1, host)
    cls = hostdir + "/scsi_host/host%d" % host
    tree.write(cls + "/link_power_management_policy", policy)
    tree.write(cls + "/ahci_port_cmd", port_cmd)
    tree.link(cls + "/device", hostdir)
    tree.link("/sys/class/scsi_host/host%d" % host, cls)


def add_nic(
    tree: Tree, name: str, mac: str, pci_dev: Optional[str], wireless: bool = False, ethtool: Optional[str] = None
) -> None:
    if pci_dev:
        netdir = "%s/net/%s" % (pci_dev, name)
        tree.link(netdir + "/device", pci_dev)
        if wireless:
            tree.mkdir(netdir + "/wireless")
    else:
        netdir = "/sys/devices/virtual/net/" + name
        tree.mkdir(netdir)
    tree.write(netdir + "/address", mac + "\n")
    tree.write(netdir + "/operstate", "up\n")
    tree.link("/sys/class/net/" + name, netdir)
    if ethtool is not None:
        tree.write("/run/powernap-fake/ethtool/" + name, ethtool)


def ethtool_text(
    name: str,
    speed: Optional[int] = 1000,
    duplex: str = "Full",
    autoneg: bool = True,
    link: bool = True,
    supports: str = "pumbg",
    wol: str = "g",
) -> str:
    return (
        "Settings for %s:\n\tSupported ports: [ TP ]\n\tSpeed: %s\n\tDuplex: %s\n\tAuto-negotiation: %s\n"
        "\tSupports Wake-on: %s\n\tWake-on: %s\n\tLink detected: %s\n"
    ) % (
        name,
        ("%dMb/s" % speed) if speed else "Unknown!",
        duplex if speed else "Unknown! (255)",
        "on" if autoneg else "off",
        supports,
        wol,
        "yes" if link else "no",
    )


def add_usb(
    tree: Tree, name: str, vendor: str, product: str, interfaces: Sequence[tuple], device_class: str = "00"
) -> None:
    dev = (
        "/sys/devices/pci0000:00/0000:00:14.0/usb1/" + name
        if name != "usb1"
        else "/sys/devices/pci0000:00/0000:00:14.0/usb1"
    )
    tree.write(dev + "/idVendor", vendor + "\n")
    tree.write(dev + "/idProduct", product + "\n")
    tree.write(dev + "/bDeviceClass", device_class + "\n")
    tree.write(dev + "/power/control", "on\n")
    tree.write(dev + "/power/autosuspend_delay_ms", "2000\n")
    tree.write(dev + "/power/wakeup", "enabled\n")
    tree.link("/sys/bus/usb/devices/" + name, dev)
    prefix = "1-0" if name == "usb1" else name
    for number, (iclass, driver) in enumerate(interfaces):
        iface = "%s/%s:1.%d" % (dev, prefix, number)
        tree.write(iface + "/bInterfaceClass", iclass + "\n")
        if driver:
            drv = "/sys/bus/usb/drivers/" + driver
            tree.mkdir(drv)
            tree.link(iface + "/driver", drv)
        tree.link("/sys/bus/usb/devices/%s:1.%d" % (prefix, number), iface)


def add_dmi(
    tree: Tree,
    sys_vendor: str,
    product_name: str,
    board_name: str = "",
    bios_version: str = "",
    chassis_type: str = "23",
    bios_vendor: str = "",
    board_vendor: str = "",
) -> None:
    dmi = "/sys/devices/virtual/dmi/id"
    for field, value in (
        ("sys_vendor", sys_vendor),
        ("product_name", product_name),
        ("board_name", board_name),
        ("bios_version", bios_version),
        ("chassis_type", chassis_type),
        ("bios_vendor", bios_vendor),
        ("board_vendor", board_vendor or sys_vendor),
        ("product_version", ""),
    ):
        tree.write("%s/%s" % (dmi, field), value + "\n")
    if not os.path.lexists(tree.path("/sys/class/dmi/id")):
        tree.link("/sys/class/dmi/id", dmi)


def add_sleep(
    tree: Tree, state: str = "freeze mem disk", mem_sleep: str = "s2idle [deep]", swap_gib: int = 8, mem_gib: int = 16
) -> None:
    tree.write("/sys/power/state", state + "\n")
    tree.write("/sys/power/mem_sleep", mem_sleep + "\n")
    tree.write("/sys/power/disk", "[platform] shutdown reboot suspend test_resume\n")
    tree.write("/sys/power/image_size", "%d\n" % (mem_gib * GIB * 2 // 5))
    swaps = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
    if swap_gib:
        swaps += "/dev/sda3                               partition\t%d\t\t0\t\t-2\n" % (swap_gib * 1024 * 1024)
    tree.write("/proc/swaps", swaps)
    tree.write("/proc/meminfo", "MemTotal:       %d kB\nMemFree:         1000000 kB\n" % (mem_gib * 1024 * 1024))


# Whole hosts --------------------------------------------------------------
def make_server(base, kernel: str = "6.1.0-18-amd64") -> Tree:
    """A bare-metal Dell rack server with everything the tweaks touch."""
    tree = Tree(base)
    add_dmi(tree, "Dell Inc.", "PowerEdge R640", "0X45NX", "2.17.1", chassis_type="23", bios_vendor="Dell Inc.")
    add_cpus(tree)
    tree.write("/sys/devices/system/clocksource/clocksource0/available_clocksource", "tsc hpet acpi_pm \n")
    tree.write("/sys/firmware/acpi/platform_profile", "balanced\n")
    tree.write("/sys/firmware/acpi/platform_profile_choices", "low-power balanced performance\n")
    tree.write("/proc/sys/kernel/nmi_watchdog", "1\n")
    tree.write("/proc/sys/vm/dirty_writeback_centisecs", "500\n")
    tree.write("/proc/sys/vm/dirty_expire_centisecs", "3000\n")
    tree.write("/proc/sys/kernel/osrelease", kernel + "\n")
    tree.write("/sys/module/pcie_aspm/parameters/policy", "[default] performance powersave powersupersave \n")
    tree.write("/sys/module/snd_hda_intel/parameters/power_save", "0\n")
    tree.write("/sys/module/snd_hda_intel/parameters/power_save_controller", "N\n")
    add_sleep(tree)
    # PCI
    add_pci(tree, "0000:00:02.0", "8086", "9bc8", "030000", "i915")
    add_pci(tree, "0000:00:14.0", "8086", "a3af", "0c0330", "xhci_hcd")
    add_pci(tree, "0000:00:16.0", "8086", "a3ba", "078000", "mei_me")
    add_pci(tree, "0000:00:17.0", "8086", "06d2", "010601", "ahci")
    nic = add_pci(tree, "0000:00:1f.6", "8086", "15bc", "020000", "e1000e")
    tree.write(nic + "/power/wakeup", "enabled\n")
    add_pci(tree, "0000:01:00.0", "10de", "1f82", "030000", "nvidia")
    add_pci(tree, "0000:00:1f.3", "8086", "a3f0", "040300", "snd_hda_intel")
    # SATA: host0 root SSD, host1 data HDD, host2 empty, host3 hot-plug port with an HDD, host4 removable
    for host in range(5):
        add_scsi_host(tree, host, port_cmd="4c017\n" if host == 3 else "c017\n")
    add_disk(tree, 0, "sda", "8:0", rotational=False, partitions=3)
    add_disk(tree, 1, "sdb", "8:16", rotational=True, partitions=1)
    add_disk(tree, 3, "sdc", "8:32", rotational=True)
    add_disk(tree, 4, "sdd", "8:48", rotational=True, removable=True)
    tree.write(
        "/proc/self/mountinfo",
        "22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw,errors=remount-ro\n"
        "23 22 8:1 / /boot rw,relatime shared:2 - ext4 /dev/sda1 rw\n"
        "24 22 8:17 / /srv rw,relatime shared:3 - xfs /dev/sdb1 rw\n"
        "25 22 0:22 / /proc rw,nosuid shared:4 - proc proc rw\n",
    )
    # USB: root hub, keyboard (HID), UPS (HID power device), FTDI serial, audio, flash drive
    add_usb(tree, "usb1", "1d6b", "0002", [("09", "hub")], device_class="09")
    add_usb(tree, "1-1", "046d", "c31c", [("03", "usbhid"), ("03", "usbhid")])
    add_usb(tree, "1-2", "051d", "0002", [("03", "usbhid")])
    add_usb(tree, "1-3", "0403", "6001", [("ff", "ftdi_sio")])
    add_usb(tree, "1-4", "0d8c", "0014", [("01", "snd-usb-audio"), ("01", "snd-usb-audio"), ("03", "usbhid")])
    add_usb(tree, "1-5", "0781", "5567", [("08", "usb-storage")])
    # Network: wired e1000e (WoL armed), Intel Wi-Fi, loopback, a bridge
    wifi = add_pci(tree, "0000:02:00.0", "8086", "2723", "028000", "iwlwifi")
    add_nic(tree, "eno1", "3c:ec:ef:00:11:22", nic, ethtool=ethtool_text("eno1"))
    add_nic(tree, "wlp2s0", "a4:c3:f0:33:44:55", wifi, wireless=True)
    add_nic(tree, "lo", "00:00:00:00:00:00", None)
    add_nic(tree, "br0", "52:54:00:aa:bb:cc", None)
    tree.write(
        "/proc/modules",
        "e1000e 344064 0 - Live 0x0000000000000000\n"
        "btusb 77824 0 - Live 0x0000000000000000\n"
        "uvcvideo 135168 0 - Live 0x0000000000000000\n"
        "snd_hda_intel 61440 3 - Live 0x0000000000000000\n",
    )
    tree.mkdir("/run")
    tree.mkdir("/dev")
    return tree


def make_laptop_on_battery(base) -> Tree:
    tree = Tree(base)
    add_dmi(tree, "LENOVO", "20XW0055GE", "20XW0055GE", "N32ET75W (1.51 )", chassis_type="10", bios_vendor="LENOVO")
    add_cpus(tree, count=8)
    add_sleep(tree, mem_sleep="[s2idle] deep", swap_gib=0)
    tree.write("/proc/sys/kernel/osrelease", "6.5.0-21-generic\n")
    ps = "/sys/class/power_supply"
    tree.write(ps + "/AC/type", "Mains\n")
    tree.write(ps + "/AC/online", "0\n")
    tree.write(ps + "/BAT0/type", "Battery\n")
    tree.write(ps + "/BAT0/status", "Discharging\n")
    tree.write(ps + "/BAT0/capacity", "81\n")
    # A wireless mouse's battery: scope Device, must not count as the system's.
    tree.write(ps + "/hidpp_battery_0/type", "Battery\n")
    tree.write(ps + "/hidpp_battery_0/scope", "Device\n")
    tree.write(ps + "/hidpp_battery_0/status", "Discharging\n")
    wifi = add_pci(tree, "0000:00:14.3", "8086", "a0f0", "028000", "iwlwifi")
    add_nic(
        tree,
        "wlp0s20f3",
        "a4:c3:f0:33:44:55",
        wifi,
        wireless=True,
        ethtool="Settings for wlp0s20f3:\n\tLink detected: yes\n",
    )
    tree.write("/sys/firmware/acpi/platform_profile", "balanced\n")
    tree.write("/sys/firmware/acpi/platform_profile_choices", "low-power balanced performance\n")
    return tree


def make_kvm_guest(base) -> Tree:
    tree = Tree(base)
    add_dmi(
        tree,
        "QEMU",
        "Standard PC (Q35 + ICH9, 2009)",
        "",
        "1.16.2-debian-1.16.2-1",
        chassis_type="1",
        bios_vendor="SeaBIOS",
    )
    add_cpus(tree, count=2, epp=False, pstate=False)
    cpuinfo = tree.read("/proc/cpuinfo").replace("constant_tsc", "constant_tsc hypervisor")
    tree.write("/proc/cpuinfo", cpuinfo)
    tree.write("/sys/devices/system/clocksource/clocksource0/available_clocksource", "kvm-clock tsc acpi_pm \n")
    add_sleep(tree)
    tree.write("/proc/sys/kernel/osrelease", "6.1.0-18-cloud-amd64\n")
    nic = add_pci(tree, "0000:00:03.0", "1af4", "1000", "020000", "virtio-pci")
    add_nic(tree, "ens3", "52:54:00:12:34:56", nic, ethtool=ethtool_text("ens3", supports="d", wol="d"))
    tree.write("/proc/1/environ", b"HOME=/\x00TERM=linux\x00")
    return tree


def make_nspawn_container(base) -> Tree:
    """A systemd-nspawn container on a KVM host: the container must win over the VM markers."""
    tree = make_kvm_guest(base)
    tree.write("/run/systemd/container", "systemd-nspawn\n")
    tree.write("/proc/1/environ", b"container=systemd-nspawn\x00TERM=vt220\x00container_uuid=1234\x00")
    return tree


# Fake commands --------------------------------------------------------------
def is_query(argv: Sequence[str]) -> bool:
    return (
        list(argv[:2]) == ["systemctl", "is-active"]
        or (argv[0] == "iw" and "get" in argv)
        or (argv[0] == "hdparm" and len(argv) == 3)
        or (argv[0] == "ethtool" and len(argv) == 2)
    )


class FakeRunner(CommandRunner):
    """Simulates systemctl, modprobe (editing the fake /proc/modules), hdparm, iw and ethtool.

    ``calls`` lists every argv; ``fail`` holds argv tuples that exit 1.
    """

    PROGRAMS = ("systemctl", "modprobe", "hdparm", "iw", "ethtool")

    def __init__(self, tree: Optional[Tree] = None, programs: Sequence[str] = PROGRAMS):
        super().__init__(enabled=True)
        self.tree = tree
        self.programs = set(programs)
        self.calls: List[List[str]] = []
        self.fail: set = set()
        self.units = {"cups.service": "active", "smartd.service": "active", "bluetooth.service": "inactive"}
        self.apm = {"/dev/sdb": "254", "/dev/sdc": "off"}
        self.spindown: Dict[str, str] = {}
        self.unloaded: Dict[str, tuple] = {}
        self.power_save = {"wlp2s0": "off"}
        self.links = {"eno1": {"speed": 1000, "duplex": "Full", "autoneg": True, "link": True}}

    def available(self, program: str) -> bool:
        return program in self.programs

    def run(self, argv: Sequence[str]) -> CommandResult:
        argv = list(argv)
        self.calls.append(argv)
        if tuple(argv) in self.fail or argv[0] not in self.programs:
            return CommandResult(argv, 1, "", "simulated failure of %s" % " ".join(argv))
        handler = getattr(self, "_" + argv[0])
        return handler(argv)

    def changing_calls(self) -> List[List[str]]:
        """The calls that change something (queries left out)."""
        return [call for call in self.calls if not is_query(call)]

    def _systemctl(self, argv):
        verb, unit = argv[1], argv[2]
        if verb == "is-active":
            state = self.units.get(unit, "inactive")
            return CommandResult(argv, 0 if state == "active" else 3, state + "\n")
        self.units[unit] = {"stop": "inactive", "start": "active"}[verb]
        return CommandResult(argv, 0)

    def _modprobe(self, argv):
        # Like the kernel: unloading drops the module's /proc/modules line, loading brings it back.
        lines = self.tree.read("/proc/modules").splitlines(True)
        if argv[1] == "-r":
            for index, line in enumerate(lines):
                if line.split()[0] == argv[2]:
                    self.unloaded[argv[2]] = (index, line)
                    del lines[index]
                    break
        elif not any(line.split()[0] == argv[1] for line in lines):
            index, line = self.unloaded.pop(argv[1], (len(lines), "%s 16384 0 - Live 0x0000000000000000\n" % argv[1]))
            lines.insert(index, line)
        self.tree.write("/proc/modules", "".join(lines))
        return CommandResult(argv, 0)

    def _hdparm(self, argv):
        device = argv[-1]
        if argv[1] == "-B" and len(argv) == 3:
            level = self.apm.get(device)
            value = "not supported" if level is None else level
            return CommandResult(argv, 0, "\n%s:\n APM_level\t= %s\n" % (device, value))
        if argv[1] == "-B":
            self.apm[device] = "off" if argv[2] == "255" else argv[2]
        elif argv[1] == "-S":
            self.spindown[device] = argv[2]
        return CommandResult(argv, 0, "\n%s:\n" % device)

    def _iw(self, argv):
        name = argv[2]
        if argv[3] == "get":
            return CommandResult(argv, 0, "Power save: %s\n" % self.power_save.get(name, "off"))
        self.power_save[name] = argv[5]
        return CommandResult(argv, 0)

    def _ethtool(self, argv):
        if len(argv) == 2:
            state = self.links.get(argv[1])
            if state is None:
                return CommandResult(argv, 75, "", "No such device")
            return CommandResult(
                argv, 0, ethtool_text(argv[1], state["speed"], state["duplex"], state["autoneg"], state["link"])
            )
        state = self.links[argv[2]]
        options = dict(zip(argv[3::2], argv[4::2]))
        if "wol" in options:
            raise AssertionError("a tweak tried to change Wake-on-LAN: %r" % argv)
        state["autoneg"] = options.get("autoneg", "on" if state["autoneg"] else "off") == "on"
        if "speed" in options:
            state["speed"] = int(options["speed"])
            state["duplex"] = options.get("duplex", "full").capitalize()
        elif state["autoneg"]:
            state["speed"], state["duplex"] = 1000, "Full"  # re-advertising everything: back to gigabit
        return CommandResult(argv, 0)


# Building tweaks and sets ----------------------------------------------------
def make_tweak(ctx, type_name: str, name: Optional[str] = None, **raw):
    """A tweak of ``type_name`` with options given as config text (parsed like the config loader does)."""
    from powernap.options import registry

    cls = registry("tweak")[type_name]
    options = cls.parse_options({key: str(value) for key, value in raw.items()})
    return cls(name or type_name, options, ctx)


def emulate_selector(full_path: str, data: bytes) -> bytes:
    """What reading a ``[choice] other`` sysfs file returns after writing ``data``: the list, re-bracketed."""
    try:
        with open(full_path, "rb") as handle:
            current = handle.read().decode()
    except OSError:
        return data
    words = [word.strip("[]") for word in current.split()]
    wanted = data.decode().strip()
    if "[" not in current or wanted not in words:
        return data
    return (" ".join("[%s]" % word if word == wanted else word for word in words) + " \n").encode()


def sysfs_set_class():
    """A PowersaveSet whose writes behave like sysfs selector files (``[default] performance …``)."""
    from powernap.tweaks import PowersaveSet

    class SysfsPowersaveSet(PowersaveSet):
        writes: List[str] = []

        def _write(self, path: str, data: bytes) -> None:
            full = self.root.path(path)
            data = emulate_selector(full, data)
            type(self).writes.append(path)
            super()._write(path, data)

    return SysfsPowersaveSet
