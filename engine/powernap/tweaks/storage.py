"""Storage tweaks: SATA link power management, disk APM and spindown.

SATA ALPM skips ports that may see hot-plug, by this heuristic (documented in
``check_hotplug``): the AHCI port advertises hot-plug or eSATA in its PxCMD
register (``ahci_port_cmd``: HPCP bit 18, ESP bit 21), a disk on the port is
removable, the port is empty (an empty bay is where hot-plug happens), or the
admin listed the host in ``skip_hosts``.

Disk APM/spindown touch rotational disks only (``queue/rotational`` = 1),
never SSDs, and never the disks holding ``/``, ``/usr``, ``/var``, ``/boot``
or active swap unless the admin names them.  When the disk under ``/`` cannot
be determined (ZFS, btrfs on several devices), only named disks are touched.
"""

import os
import re
from typing import Any, List, Optional, Set

from ..options import Boolean, Choice, Duration, Integer, ListOf, Option, String
from .base import CommandChange, FileChange, Tweak, common_options

AHCI_HOTPLUG_BITS = (1 << 18) | (1 << 21)  # PxCMD.HPCP (hot-plug capable), PxCMD.ESP (external SATA)
SYSTEM_MOUNTS = ("/", "/usr", "/var", "/boot")
_DISK_NAME = re.compile(r"^(sd[a-z]+|hd[a-z]+|vd[a-z]+|xvd[a-z]+)$")


class SataAlpm(Tweak):
    """Set SATA aggressive link power management on ports that are not hot-plug or external."""

    TYPE = "sata_alpm"
    OPTIONS = common_options() + (
        Option(
            "policy",
            Choice("med_power_with_dipm", "medium_power", "min_power", "min_power_with_partial", "max_performance"),
            default="med_power_with_dipm",
            doc="link_power_management_policy; med_power_with_dipm is the safe saver most distributions use.",
        ),
        Option(
            "skip_hosts",
            ListOf(String(nonempty=True)),
            default=(),
            doc="SCSI hosts to leave alone (e.g. host2), for ports the heuristic cannot recognise.",
        ),
        Option(
            "include_empty_ports",
            Boolean(),
            default=False,
            doc="Also ports with nothing attached (hot-plug into such a port may go unnoticed).",
        ),
    )

    def plan(self) -> List[Any]:
        changes = []
        for host in self.root.listdir("/sys/class/scsi_host"):
            base = "/sys/class/scsi_host/" + host
            path = base + "/link_power_management_policy"
            if not self.root.exists(path):
                continue
            why = self.check_hotplug(host)
            if why:
                self.note("%s skipped: %s" % (host, why))
                continue
            changes.append(FileChange(path, self.options["policy"]))
        return changes

    def check_hotplug(self, host: str) -> Optional[str]:
        """Why this port may be hot-plug or external, or ``None``."""
        base = "/sys/class/scsi_host/" + host
        if host in self.options["skip_hosts"]:
            return "listed in skip_hosts"
        port_cmd = (self.root.read(base + "/ahci_port_cmd", "") or "").strip()
        if port_cmd:
            try:
                if int(port_cmd, 16) & AHCI_HOTPLUG_BITS:
                    return "AHCI port is hot-plug capable or external (PxCMD %s)" % port_cmd
            except ValueError:
                pass
        disks = [os.path.basename(hit) for hit in self.root.glob(base + "/device/target*/*/block/*")]
        if not disks:
            return None if self.options["include_empty_ports"] else "empty port (possible hot-plug bay)"
        removable = [
            disk for disk in disks if (self.root.read("/sys/block/%s/removable" % disk, "0") or "0").strip() == "1"
        ]
        if removable:
            return "removable disk %s" % ", ".join(removable)
        return None


class _DiskTweak(Tweak):
    """Shared disk selection for the hdparm tweaks."""

    def wanted_disks(self) -> List[str]:
        named = {name.replace("/dev/", "") for name in self.options["disks"]}
        protected = system_disks(self)
        result = []
        for disk in self.root.listdir("/sys/block"):
            if not _DISK_NAME.match(disk):
                continue
            base = "/sys/block/" + disk
            if (self.root.read(base + "/queue/rotational", "1") or "1").strip() != "1":
                if disk in named:
                    self.note("%s is not rotational (SSD): never spun down" % disk)
                continue
            if (self.root.read(base + "/removable", "0") or "0").strip() == "1":
                continue
            if named:
                if disk in named:
                    result.append(disk)
                continue
            if protected is None:
                self.note("cannot tell which disk holds /; name data disks in 'disks'")
                return []
            if disk in protected:
                self.note("%s holds a system mount or swap: left alone (name it to include it)" % disk)
                continue
            result.append(disk)
        for disk in sorted(named - set(result)):
            if not self.root.exists("/sys/block/" + disk):
                self.note("named disk %s does not exist" % disk)
        return result


# Shared by the disk APM and spindown tweaks.
DISKS_OPTION = Option(
    "disks",
    ListOf(String(nonempty=True)),
    default=(),
    doc="Disks to tweak (e.g. sdb, /dev/sdc); empty = every rotational non-system disk.",
)


class DiskApm(_DiskTweak):
    """Set hard disk APM (hdparm -B) on data HDDs; restore the level read with hdparm -B."""

    TYPE = "disk_apm"
    OPTIONS = common_options() + (
        Option(
            "level",
            Integer(minimum=1, maximum=254),
            default=128,
            doc="APM level: 1-127 allow spin-down, 128-254 do not; 128 is the lowest that keeps spinning.",
        ),
        DISKS_OPTION,
    )

    def plan(self) -> List[Any]:
        if not self.need_program("hdparm"):
            return []
        changes = []
        for disk in self.wanted_disks():
            device = "/dev/" + disk
            current = read_apm(self.ctx.runner.run(["hdparm", "-B", device]).stdout)
            if current is None:
                self.note("%s: APM not supported" % disk)
                continue
            if current == str(self.options["level"]):
                continue
            prior = "255" if current == "off" else current  # 255 turns APM off
            changes.append(
                CommandChange(
                    "APM %s %s->%d" % (disk, current, self.options["level"]),
                    ["hdparm", "-B", str(self.options["level"]), device],
                    ["hdparm", "-B", prior, device],
                )
            )
        return changes


class DiskSpindown(_DiskTweak):
    """Set the HDD standby (spindown) timer with hdparm -S on data HDDs.

    Drives cannot report their standby timer, so restore sets ``restore_timeout`` (default off).
    """

    TYPE = "disk_spindown"
    OPTIONS = common_options() + (
        Option(
            "timeout",
            Duration(minimum=5, maximum=19800),
            default=1200.0,
            doc="Idle time before the drive spins down (5s to 5.5h; rounded to the drive's steps).",
        ),
        Option(
            "restore_timeout",
            Duration(minimum=0, maximum=19800),
            default=0.0,
            doc="Timer set on restore (0 = never spin down): drives do not report the prior value.",
        ),
        DISKS_OPTION,
    )

    def plan(self) -> List[Any]:
        if not self.need_program("hdparm"):
            return []
        apply_code = spindown_code(self.options["timeout"])
        restore_code = spindown_code(self.options["restore_timeout"])
        return [
            CommandChange(
                "spindown %s after %ss" % (disk, int(self.options["timeout"])),
                ["hdparm", "-S", str(apply_code), "/dev/" + disk],
                ["hdparm", "-S", str(restore_code), "/dev/" + disk],
            )
            for disk in self.wanted_disks()
        ]


def spindown_code(seconds: float) -> int:
    """hdparm -S encoding: 0 off, 1-240 = n*5 s, 241-251 = (n-240)*30 min."""
    if seconds <= 0:
        return 0
    if seconds <= 240 * 5:
        return max(1, int(round(seconds / 5.0)))
    return min(251, 240 + max(1, int(round(seconds / 1800.0))))


def read_apm(output: str) -> Optional[str]:
    """The level from ``hdparm -B`` output: a number, ``off``, or ``None`` when unsupported/unreadable."""
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "APM_level":
            value = value.strip()
            if value.isdigit() or value == "off":
                return value
            return None
    return None


def system_disks(tweak: Tweak) -> Optional[Set[str]]:
    """Whole disks under the system mounts and active swap; ``None`` when ``/`` cannot be traced to a disk."""
    disks: Set[str] = set()
    root_found = False
    for line in (tweak.root.read("/proc/self/mountinfo", "") or "").splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[4] not in SYSTEM_MOUNTS:
            continue
        found = _base_disks(tweak, "/sys/dev/block/" + fields[2], 0)
        disks |= found
        if fields[4] == "/" and found:
            root_found = True
    for line in (tweak.root.read("/proc/swaps", "") or "").splitlines()[1:]:
        fields = line.split()
        if fields and fields[0].startswith("/dev/"):
            disks |= _base_disks(tweak, "/sys/class/block/" + os.path.basename(fields[0]), 0)
    return disks if root_found else None


def _base_disks(tweak: Tweak, system_path: str, depth: int) -> Set[str]:
    return _disks_under(os.path.realpath(tweak.root.path(system_path)), depth)


def _disks_under(real: str, depth: int) -> Set[str]:
    """Whole-disk names under a block device directory (partition → its disk, dm/md → their slaves)."""
    if depth > 8 or not os.path.isdir(real):
        return set()
    if os.path.exists(os.path.join(real, "partition")):
        return {os.path.basename(os.path.dirname(real))}
    slaves_dir = os.path.join(real, "slaves")
    slaves = sorted(os.listdir(slaves_dir)) if os.path.isdir(slaves_dir) else []
    if slaves:  # device-mapper / md: the disks underneath
        found: Set[str] = set()
        for slave in slaves:
            found |= _disks_under(os.path.realpath(os.path.join(slaves_dir, slave)), depth + 1)
        return found
    return {os.path.basename(real)}
