"""Network tweaks: Wi-Fi power save and NIC link speed.  Neither ever touches Wake-on-LAN."""

from typing import Any, List

from ..options import Boolean, Integer, ListOf, Option, String
from ..platform import parse_ethtool
from .base import CommandChange, Tweak, common_options


def interfaces(tweak: Tweak, wireless: bool) -> List[str]:
    """Physical interfaces (with a device), wireless or wired."""
    found = []
    for name in tweak.root.listdir("/sys/class/net"):
        base = "/sys/class/net/" + name
        if name == "lo" or not tweak.root.exists(base + "/device"):
            continue
        is_wireless = tweak.root.exists(base + "/wireless") or tweak.root.exists(base + "/phy80211")
        if is_wireless == wireless:
            found.append(name)
    return found


class WifiPowersave(Tweak):
    """Turn on 802.11 power save (iw dev IF set power_save on)."""

    TYPE = "wifi_powersave"
    OPTIONS = common_options()

    def plan(self) -> List[Any]:
        names = interfaces(self, wireless=True)
        if not names:
            self.note("no wireless interfaces")
            return []
        if not self.need_program("iw"):
            return []
        changes = []
        for name in names:
            state = self.ctx.runner.run(["iw", "dev", name, "get", "power_save"])
            if not state.ok or "Power save:" not in state.stdout:
                self.note("%s: cannot read power save (%s)" % (name, state.error_text()))
                continue
            if state.stdout.split("Power save:")[1].strip().startswith("on"):
                continue
            changes.append(
                CommandChange(
                    "%s power_save on" % name,
                    ["iw", "dev", name, "set", "power_save", "on"],
                    ["iw", "dev", name, "set", "power_save", "off"],
                )
            )
        return changes


class NicSpeed(Tweak):
    """Lower wired NIC link speed (off by default: a forced speed can drop the link)."""

    TYPE = "nic_speed"
    OPTIONS = common_options(enabled=False) + (
        Option("speed", Integer(minimum=10), default=100, doc="Link speed in Mb/s during powersave."),
        Option(
            "interfaces",
            ListOf(String(nonempty=True)),
            default=(),
            doc="Interfaces to slow down; empty = every wired physical interface with a link.",
        ),
        Option(
            "autoneg",
            Boolean(),
            default=True,
            doc="Keep autonegotiation on and only advertise the lower speed (safe with any switch); "
            "'no' forces speed and duplex like PowerNap did.",
        ),
    )

    def plan(self) -> List[Any]:
        names = list(self.options["interfaces"]) or interfaces(self, wireless=False)
        if not names or not self.need_program("ethtool"):
            return []
        speed = self.options["speed"]
        changes = []
        for name in names:
            result = self.ctx.runner.run(["ethtool", name])
            if not result.ok:
                self.note("%s: %s" % (name, result.error_text()))
                continue
            now = parse_ethtool(result.stdout)
            if not now.get("link") or not now.get("speed"):
                self.note("%s: no link, left alone" % name)
                continue
            if now["speed"] <= speed:
                continue
            apply = [
                "ethtool",
                "-s",
                name,
                "speed",
                str(speed),
                "duplex",
                "full",
                "autoneg",
                "on" if self.options["autoneg"] else "off",
            ]
            if now.get("autoneg"):
                # Autonegotiation on again advertises every supported mode.
                restore = ["ethtool", "-s", name, "autoneg", "on"]
            else:
                restore = [
                    "ethtool",
                    "-s",
                    name,
                    "speed",
                    str(now["speed"]),
                    "duplex",
                    now.get("duplex") or "full",
                    "autoneg",
                    "off",
                ]
            changes.append(CommandChange("%s speed %d->%d" % (name, now["speed"], speed), apply, restore))
        return changes
