"""Stop listed services and unload listed kernel modules; bring back only what the engine stopped."""

from typing import Any, List, Set

from ..options import ListOf, Option, String
from .base import CommandChange, Tweak, common_options


class Services(Tweak):
    """Stop listed systemd units that are running; start them again on restore."""

    TYPE = "services"
    HARDWARE = False
    ORDER = 5
    OPTIONS = common_options() + (
        Option(
            "units",
            ListOf(String(nonempty=True)),
            default=(),
            doc="Units to stop during powersave (e.g. cups.service, smartd). Units already stopped are "
            "left stopped on restore.",
        ),
    )

    def plan(self) -> List[Any]:
        units = list(self.options["units"])
        if not units or not self.need_program("systemctl"):
            return []
        changes = []
        for unit in units:
            state = self.ctx.runner.run(["systemctl", "is-active", unit]).stdout.strip()
            if state != "active":
                self.note("%s is %s: not stopped" % (unit, state or "unknown"))
                continue
            changes.append(CommandChange("stop %s" % unit, ["systemctl", "stop", unit], ["systemctl", "start", unit]))
        return changes


class KernelModules(Tweak):
    """Unload listed kernel modules that are loaded; load them again on restore.  Never a NIC's driver."""

    TYPE = "kernel_modules"
    HARDWARE = False
    KERNEL_GLOBAL = True
    ORDER = 6
    OPTIONS = common_options() + (
        Option(
            "modules",
            ListOf(String(nonempty=True)),
            default=(),
            doc="Modules to unload during powersave (e.g. btusb, uvcvideo); modules not loaded are left so.",
        ),
    )

    def plan(self) -> List[Any]:
        modules = [name.replace("-", "_") for name in self.options["modules"]]
        if not modules or not self.need_program("modprobe"):
            return []
        loaded = loaded_modules(self)
        protected = nic_modules(self)
        changes = []
        for module in modules:
            if module not in loaded:
                self.note("%s is not loaded" % module)
                continue
            if module in protected:
                self.note("%s drives a network interface: never unloaded (Wake-on-LAN)" % module)
                continue
            changes.append(CommandChange("unload %s" % module, ["modprobe", "-r", module], ["modprobe", module]))
        return changes


def loaded_modules(tweak: Tweak) -> Set[str]:
    return {line.split()[0] for line in (tweak.root.read("/proc/modules", "") or "").splitlines() if line.strip()}


def nic_modules(tweak: Tweak) -> Set[str]:
    found = set()
    for name in tweak.root.listdir("/sys/class/net"):
        module = tweak.link_name("/sys/class/net/%s/device/driver/module" % name)
        if module:
            found.add(module)
    return found
