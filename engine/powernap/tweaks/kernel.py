"""Kernel-wide tweaks through /proc/sys: NMI watchdog, dirty page writeback."""

from typing import Any, List

from ..options import Integer, Option
from .base import FileChange, Tweak, common_options


class NmiWatchdog(Tweak):
    """Turn the NMI watchdog off (it wakes every CPU periodically)."""

    TYPE = "nmi_watchdog"
    HARDWARE = False
    KERNEL_GLOBAL = True
    OPTIONS = common_options()

    def plan(self) -> List[Any]:
        path = "/proc/sys/kernel/nmi_watchdog"
        if not self.root.exists(path):
            self.note("no %s" % path)
            return []
        return [FileChange(path, "0")]


class DirtyWriteback(Tweak):
    """Write dirty pages back less often so disks and CPUs stay idle longer."""

    TYPE = "dirty_writeback"
    HARDWARE = False
    KERNEL_GLOBAL = True
    OPTIONS = common_options() + (
        Option(
            "writeback_centisecs",
            Integer(minimum=100, maximum=360000),
            default=1500,
            doc="vm.dirty_writeback_centisecs: how often the flusher wakes (1500-6000 is typical).",
        ),
        Option(
            "expire_centisecs",
            Integer(minimum=100, maximum=360000),
            default=1500,
            doc="vm.dirty_expire_centisecs: age at which dirty data must be written (bounds data lost on a crash).",
        ),
    )

    def plan(self) -> List[Any]:
        changes = []
        for name, option in (
            ("dirty_writeback_centisecs", "writeback_centisecs"),
            ("dirty_expire_centisecs", "expire_centisecs"),
        ):
            path = "/proc/sys/vm/" + name
            if self.root.exists(path):
                changes.append(FileChange(path, str(self.options[option])))
            else:
                self.note("no %s" % path)
        return changes
