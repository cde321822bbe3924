"""What kind of host this is: physical, virtual machine or container; AC or
battery; which sleep states the kernel offers; which NICs can wake it.

Virtualization follows ``systemd-detect-virt``: containers first
(``/run/systemd/container``, ``container=`` in ``/proc/1/environ``,
``/run/host/container-manager``, OpenVZ and WSL markers), then virtual
machines (DMI vendor strings, Xen's ``/sys/hypervisor/type``, the
``hypervisor`` CPU flag in ``/proc/cpuinfo`` as a stand-in for the CPUID leaf
Python cannot read, ``kvm-clock`` to tell KVM from plain QEMU).  Unlike
systemd, the marker files ``/.dockerenv`` and ``/run/.containerenv`` are
weighed, not trusted: they are plain files an image or a careless ``touch``
leaves behind, so they make a container only when this process runs in a
PID namespace below the initial one (every docker/podman container does), or
when nothing says "virtual machine" and the namespace cannot be read.  Every
finding, used or overruled, is listed in ``evidence`` (``hwinfo`` shows it).

Wake-on-LAN per NIC: on the real root the ``SIOCETHTOOL``/``ETHTOOL_GWOL``
ioctl (needs CAP_NET_ADMIN), falling back to parsing ``ethtool IF``.  In a
fake root (tests, fixtures) no ioctl is made: the ``ethtool IF`` output is read
from ``<root>/run/powernap-fake/ethtool/IF`` when that file exists.
"""

import array
import fcntl
import os
import socket
import struct
from typing import Any, Dict, List, Optional, Tuple

from .sysroot import SysRoot

KINDS = ("physical", "vm", "container")
OVERRIDES = ("auto", "physical", "vm", "container")
FAKE_ETHTOOL_DIR = "/run/powernap-fake/ethtool"

# DMI strings (prefix match, as systemd does) → virtualization name.
_DMI_VENDORS = (
    ("KVM", "kvm"),
    ("OpenStack", "kvm"),
    ("KubeVirt", "kvm"),
    ("Amazon EC2", "amazon"),
    ("QEMU", "qemu"),
    ("VMware", "vmware"),
    ("VMW", "vmware"),
    ("innotek GmbH", "oracle"),
    ("VirtualBox", "oracle"),
    ("Xen", "xen"),
    ("Bochs", "bochs"),
    ("Parallels", "parallels"),
    ("BHYVE", "bhyve"),
    ("Hyper-V", "microsoft"),
    ("Apple Virtualization", "apple"),
    ("Google Compute Engine", "google"),
)
_DMI_FIELDS = ("product_name", "sys_vendor", "board_vendor", "bios_vendor", "product_version")
_CONTAINER_NAMES = {
    "lxc": "lxc",
    "lxc-libvirt": "lxc-libvirt",
    "systemd-nspawn": "systemd-nspawn",
    "docker": "docker",
    "podman": "podman",
    "rkt": "rkt",
    "wsl": "wsl",
    "proot": "proot",
    "pouch": "pouch",
}
# power_supply types that mean external power when online (TLP counts USB chargers as AC).
_EXTERNAL_SUPPLIES = (
    "Mains",
    "USB",
    "USB_C",
    "USB_PD",
    "USB_PD_DRP",
    "USB_DCP",
    "USB_CDP",
    "USB_ACA",
    "BrickID",
    "Wireless",
)
# DMI chassis types of portable machines (SMBIOS 3.x table 17).
_PORTABLE_CHASSIS = frozenset((8, 9, 10, 11, 14, 30, 31, 32))

SIOCETHTOOL = 0x8946
ETHTOOL_GWOL = 0x00000005
WOL_FLAGS = "pumbagsf"  # bit order of WAKE_PHY … WAKE_FILTER, the letters ethtool prints


class PlatformInfo:
    """The detected platform.  ``effective_kind`` is ``kind`` unless overridden (``platform = physical``)."""

    def __init__(self) -> None:
        self.kind = "physical"
        self.virt = "none"
        self.evidence: List[str] = []
        self.override: Optional[str] = None
        self.power_source = "unknown"
        self.has_battery = False
        self.portable = False
        self.sleep_states: List[str] = []
        self.mem_sleep: List[str] = []
        self.mem_sleep_current: Optional[str] = None
        self.can_hibernate = False
        self.hibernate_reason = ""
        self.swap_bytes = 0
        self.nics: List[Dict[str, Any]] = []

    @property
    def effective_kind(self) -> str:
        return self.override if self.override and self.override != "auto" else self.kind

    @property
    def can_suspend(self) -> bool:
        return "mem" in self.sleep_states or "freeze" in self.sleep_states

    def to_dict(self) -> Dict[str, Any]:
        return {
            "kind": self.kind,
            "virt": self.virt,
            "override": self.override,
            "effective_kind": self.effective_kind,
            "evidence": list(self.evidence),
            "power_source": self.power_source,
            "has_battery": self.has_battery,
            "portable": self.portable,
            "sleep_states": list(self.sleep_states),
            "mem_sleep": list(self.mem_sleep),
            "mem_sleep_current": self.mem_sleep_current,
            "can_suspend": self.can_suspend,
            "can_hibernate": self.can_hibernate,
            "hibernate_reason": self.hibernate_reason,
            "swap_bytes": self.swap_bytes,
            "nics": [dict(nic) for nic in self.nics],
        }


def detect(root: SysRoot, override: Optional[str] = None, runner: Any = None) -> PlatformInfo:
    """Everything at once (a few dozen small reads; call at start and on demand, not per tick)."""
    if override is not None and override not in OVERRIDES:
        raise ValueError("platform override %r is not one of %s" % (override, ", ".join(OVERRIDES)))
    info = PlatformInfo()
    info.override = None if override in (None, "auto") else override
    info.kind, info.virt, info.evidence = detect_virt(root)
    info.power_source = read_power_source(root)
    info.has_battery = bool(system_batteries(root))
    chassis = root.read("/sys/class/dmi/id/chassis_type", "") or ""
    info.portable = info.has_battery or (chassis.strip().isdigit() and int(chassis) in _PORTABLE_CHASSIS)
    info.sleep_states = (root.read("/sys/power/state", "") or "").split()
    info.mem_sleep, info.mem_sleep_current = read_choices(root.read("/sys/power/mem_sleep", "") or "")
    info.swap_bytes = swap_total(root)
    info.can_hibernate, info.hibernate_reason = hibernate_support(root, info.sleep_states, info.swap_bytes)
    info.nics = list_nics(root, runner)
    return info


# Virtualization ----------------------------------------------------------------
def detect_virt(root: SysRoot) -> Tuple[str, str, List[str]]:
    """``(kind, virt, evidence)``: a container wins over a VM; every finding is in the evidence."""
    evidence: List[str] = []
    container, why = detect_container(root)
    vm, vm_why = detect_vm(root)
    initial = in_initial_pid_namespace(root)
    if initial is not None:
        evidence.append("this process runs in %s PID namespace" % ("the initial" if initial else "a child (container)"))
    marker, marker_why = _marker_file(root)
    if not container and marker:
        if initial is False:
            container, why = marker, marker_why + " and a child PID namespace"
        elif initial is None and not vm:
            container, why = marker, marker_why
        else:
            evidence.append(
                "%s, ignored: %s"
                % (marker_why, "no PID namespace of its own" if initial else "virtual machine evidence")
            )
    if vm_why:
        evidence.append(vm_why)
    flags = cpu_flags(root)
    if "hypervisor" in flags and "hypervisor" not in vm_why:
        evidence.append("hypervisor flag in /proc/cpuinfo")
    if container:
        return "container", container, [why] + evidence
    if vm:
        return "vm", vm, evidence
    return "physical", "none", evidence or ["no container or hypervisor markers"]


INITIAL_PID_NAMESPACE = 0xEFFFFFFC  # PROC_PID_INIT_INO: the initial PID namespace's fixed inode (Linux >= 3.8)


def in_initial_pid_namespace(root: SysRoot) -> Optional[bool]:
    """Whether this process runs in the initial PID namespace (not in a container's), None if unknown.

    The /proc/self/ns/pid link names the namespace by inode, and the initial one has a fixed inode;
    ``NSpid`` in /proc/self/status only helps where /proc was mounted outside the namespace (a
    container mounts its own, which shows one level).
    """
    try:
        link = os.readlink(root.path("/proc/self/ns/pid"))
    except OSError:
        link = ""
    if link.startswith("pid:[") and link.endswith("]") and link[5:-1].isdigit():
        return int(link[5:-1]) == INITIAL_PID_NAMESPACE
    for line in (root.read("/proc/self/status", "") or "").splitlines():
        if line.startswith("NSpid:"):
            return len(line.split()) == 2
    return None


def _marker_file(root: SysRoot) -> Tuple[Optional[str], str]:
    if root.exists("/.dockerenv"):
        return "docker", "/.dockerenv exists"
    if root.exists("/run/.containerenv"):
        return "podman", "/run/.containerenv exists"
    return None, ""


def detect_container(root: SysRoot) -> Tuple[Optional[str], str]:
    """Container markers that only a container manager sets (the weak marker files are weighed apart)."""
    osrelease = root.read("/proc/sys/kernel/osrelease", "") or ""
    if "microsoft" in osrelease.lower() or "wsl" in osrelease.lower():
        return "wsl", "/proc/sys/kernel/osrelease mentions WSL"
    if root.exists("/proc/vz") and not root.exists("/proc/bc"):
        return "openvz", "/proc/vz without /proc/bc"
    name = (root.read("/run/systemd/container", "") or "").strip().splitlines()
    if name and name[0].strip():
        return _container_name(name[0]), "/run/systemd/container = %s" % name[0].strip()
    environ = _read_environ(root, "/proc/1/environ")
    if environ.get("container"):
        return _container_name(environ["container"]), "container=%s in /proc/1/environ" % environ["container"]
    manager = (root.read("/run/host/container-manager", "") or "").strip()
    if manager:
        return _container_name(manager), "/run/host/container-manager = %s" % manager
    return None, ""


def _container_name(text: str) -> str:
    return _CONTAINER_NAMES.get(text.strip(), "container-other")


def _read_environ(root: SysRoot, path: str) -> Dict[str, str]:
    try:
        data = root.read_bytes(path)
    except OSError:
        return {}
    result = {}
    for item in data.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            result[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return result


def detect_vm(root: SysRoot) -> Tuple[Optional[str], str]:
    xen = (root.read("/sys/hypervisor/type", "") or "").strip()
    if xen == "xen":
        caps = root.read("/proc/xen/capabilities", "") or ""
        if "control_d" in caps:
            return None, ""  # dom0 is the physical host
        return "xen", "/sys/hypervisor/type = xen"
    for field in _DMI_FIELDS:
        value = (root.read("/sys/class/dmi/id/" + field, "") or "").strip()
        for prefix, virt in _DMI_VENDORS:
            if value.startswith(prefix):
                if virt == "qemu" and "kvm-clock" in (
                    root.read("/sys/devices/system/clocksource/clocksource0/available_clocksource", "") or ""
                ):
                    virt = "kvm"
                return virt, "DMI %s = %s" % (field, value)
        if (
            field == "sys_vendor"
            and value == "Microsoft Corporation"
            and (root.read("/sys/class/dmi/id/product_name", "") or "").strip() == "Virtual Machine"
        ):
            return "microsoft", "DMI Microsoft Corporation / Virtual Machine"
    if "hypervisor" in cpu_flags(root):
        return "vm-other", "hypervisor flag in /proc/cpuinfo"
    return None, ""


def cpu_flags(root: SysRoot) -> List[str]:
    for line in (root.read("/proc/cpuinfo", "") or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return value.split()
    return []


# Power supply ------------------------------------------------------------------
def system_batteries(root: SysRoot) -> List[str]:
    """Batteries that power the system (not a mouse's: ``scope = Device``)."""
    names = []
    for name in root.listdir("/sys/class/power_supply"):
        base = "/sys/class/power_supply/" + name
        if (root.read(base + "/type", "") or "").strip() == "Battery" and (
            root.read(base + "/scope", "") or ""
        ).strip() != "Device":
            names.append(name)
    return names


def read_power_source(root: SysRoot) -> str:
    """``ac``, ``battery`` or ``unknown``, the way TLP decides: an online external supply beats a
    discharging battery; a host with no battery at all runs on mains.  Cheap: fine to poll."""
    external_seen = False
    for name in root.listdir("/sys/class/power_supply"):
        base = "/sys/class/power_supply/" + name
        kind = (root.read(base + "/type", "") or "").strip()
        if kind in _EXTERNAL_SUPPLIES:
            external_seen = True
            if (root.read(base + "/online", "") or "").strip() == "1":
                return "ac"
    batteries = system_batteries(root)
    if not batteries:
        return "unknown" if external_seen else "ac"
    statuses = [(root.read("/sys/class/power_supply/%s/status" % name, "") or "").strip() for name in batteries]
    if "Discharging" in statuses or external_seen:
        return "battery"  # every external supply is offline
    if "Charging" in statuses or "Full" in statuses:
        return "ac"
    return "unknown"


# Sleep states --------------------------------------------------------------------
def read_choices(text: str) -> Tuple[List[str], Optional[str]]:
    """``"s2idle [deep]"`` → ``(["s2idle", "deep"], "deep")``."""
    choices, current = [], None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            word = word[1:-1]
            current = word
        choices.append(word)
    return choices, current


def swap_total(root: SysRoot) -> int:
    total = 0
    for line in (root.read("/proc/swaps", "") or "").splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[2].isdigit():
            total += int(fields[2]) * 1024
    return total


def mem_total(root: SysRoot) -> int:
    for line in (root.read("/proc/meminfo", "") or "").splitlines():
        if line.startswith("MemTotal:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1]) * 1024
    return 0


def hibernate_support(root: SysRoot, states: List[str], swap_bytes: int) -> Tuple[bool, str]:
    """Whether hibernation can work: ``disk`` offered, no kernel lockdown, swap at least ``image_size``."""
    if "disk" not in states:
        return False, "the kernel does not offer 'disk' in /sys/power/state"
    lockdown = root.read("/sys/kernel/security/lockdown", "") or ""
    _unused, mode = read_choices(lockdown)
    if mode and mode != "none":
        return False, "kernel lockdown (%s) forbids hibernation" % mode
    if swap_bytes <= 0:
        return False, "no active swap to hold the hibernation image"
    image = (root.read("/sys/power/image_size", "") or "").strip()
    needed = int(image) if image.isdigit() else mem_total(root) * 2 // 5
    if swap_bytes < needed:
        return False, "swap (%d MiB) is smaller than the hibernation image target (%d MiB)" % (
            swap_bytes >> 20,
            needed >> 20,
        )
    return True, "swap %d MiB >= image target %d MiB" % (swap_bytes >> 20, needed >> 20)


# NICs and Wake-on-LAN ----------------------------------------------------------
def list_nics(root: SysRoot, runner: Any = None) -> List[Dict[str, Any]]:
    nics = []
    for name in root.listdir("/sys/class/net"):
        if name == "lo":
            continue
        base = "/sys/class/net/" + name
        driver = None
        try:
            driver = os.path.basename(os.readlink(root.path(base + "/device/driver")))
        except OSError:
            pass
        supported, current = wol_state(root, name, runner)
        nics.append(
            {
                "name": name,
                "mac": (root.read(base + "/address", "") or "").strip().lower() or None,
                "driver": driver,
                "physical": root.exists(base + "/device"),
                "wireless": root.exists(base + "/wireless") or root.exists(base + "/phy80211"),
                "wol_supported": supported,
                "wol": current,
            }
        )
    return nics


def wol_state(root: SysRoot, ifname: str, runner: Any = None) -> Tuple[Optional[List[str]], Optional[str]]:
    """``(supported letters, current setting)`` e.g. ``(["p","u","m","b","g"], "g")``; ``(None, None)`` unknown."""
    if not root.is_real:
        text = root.read("%s/%s" % (FAKE_ETHTOOL_DIR, ifname))
        if text is None and runner is not None:
            result = runner.run(["ethtool", ifname])
            text = result.stdout if result.ok else None
        return _wol_from_ethtool(text)
    found = wol_ioctl(ifname)
    if found is not None:
        return found
    if runner is None:
        from .tweaks.base import CommandRunner  # imported late: the tweaks package imports this module

        runner = CommandRunner.for_root(root)
    if not runner.available("ethtool"):
        return None, None
    result = runner.run(["ethtool", ifname])
    return _wol_from_ethtool(result.stdout if result.ok else None)


def _wol_from_ethtool(text: Optional[str]) -> Tuple[Optional[List[str]], Optional[str]]:
    if not text:
        return None, None
    parsed = parse_ethtool(text)
    supported = parsed.get("wol_supported")
    return (list(supported) if supported else None), parsed.get("wol")


def wol_ioctl(ifname: str) -> Optional[Tuple[List[str], str]]:
    """Ask the driver with ``SIOCETHTOOL``/``ETHTOOL_GWOL``; ``None`` when it cannot say (no support, no privilege)."""
    wolinfo = array.array("B", struct.pack("=III6s2x", ETHTOOL_GWOL, 0, 0, b"\0" * 6))
    address, _unused = wolinfo.buffer_info()
    ifreq = struct.pack("16sP", ifname.encode("utf-8")[:15], address)
    ifreq += b"\0" * (40 - len(ifreq))  # sizeof(struct ifreq) on 64-bit Linux
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    except OSError:
        return None
    _unused, supported, enabled = struct.unpack_from("=III", wolinfo)
    return wol_letters(supported), "".join(wol_letters(enabled)) or "d"


def wol_letters(mask: int) -> List[str]:
    return [letter for bit, letter in enumerate(WOL_FLAGS) if mask & (1 << bit)]


def parse_ethtool(text: str) -> Dict[str, Any]:
    """The fields of ``ethtool IF`` output the engine uses (speed in Mb/s, duplex, autoneg, link, WoL)."""
    fields: Dict[str, Any] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "Speed":
            digits = value.split("Mb/s")[0]
            fields["speed"] = int(digits) if digits.isdigit() else None
        elif key == "Duplex":
            fields["duplex"] = value.lower() if value.lower() in ("full", "half") else None
        elif key == "Auto-negotiation":
            fields["autoneg"] = value == "on"
        elif key == "Link detected":
            fields["link"] = value == "yes"
        elif key == "Supports Wake-on":
            fields["wol_supported"] = "" if value == "d" else value
        elif key == "Wake-on":
            fields["wol"] = value
    return fields
