"""Device power tweaks: ACPI platform profile, PCIe ASPM, PCI runtime PM, audio codec power save."""

from typing import Any, List

from ..options import Boolean, Choice, Integer, ListOf, Option, String
from .base import FileChange, Tweak, common_options

PCI_DEVICES = "/sys/bus/pci/devices"
PCI_CLASS_NETWORK = "02"


class PlatformProfile(Tweak):
    """Select the ACPI platform profile (first of a preference list the firmware offers)."""

    TYPE = "platform_profile"
    OPTIONS = common_options() + (
        Option(
            "profile",
            ListOf(String(nonempty=True), nonempty=True),
            default=("low-power", "quiet", "cool"),
            doc="Profiles in order of preference, checked against platform_profile_choices.",
        ),
    )

    def plan(self) -> List[Any]:
        path = "/sys/firmware/acpi/platform_profile"
        if not self.root.exists(path):
            self.note("no ACPI platform profile")
            return []
        choices = (self.root.read(path + "_choices", "") or "").split()
        choice = next((name for name in self.options["profile"] if name in choices), None)
        if choice is None:
            self.note(
                "firmware offers none of %s (choices: %s)"
                % (", ".join(self.options["profile"]), " ".join(choices) or "none")
            )
            return []
        return [FileChange(path, choice)]


class PcieAspm(Tweak):
    """Set the PCIe ASPM policy (the file shows [current]; restore writes that word back)."""

    TYPE = "pcie_aspm"
    OPTIONS = common_options() + (
        Option(
            "policy",
            Choice("default", "performance", "powersave", "powersupersave"),
            default="powersave",
            doc="pcie_aspm policy; firmware that forbids ASPM makes the write fail and the tweak is skipped.",
        ),
    )

    def plan(self) -> List[Any]:
        path = "/sys/module/pcie_aspm/parameters/policy"
        if not self.root.exists(path):
            self.note("kernel without pcie_aspm")
            return []
        return [FileChange(path, self.options["policy"], selector=True)]


class PciRuntimePm(Tweak):
    """Let idle PCI devices runtime-suspend (power/control = auto), except denied drivers."""

    TYPE = "pci_runtime_pm"
    OPTIONS = common_options() + (
        Option(
            "deny_drivers",
            ListOf(String(nonempty=True)),
            default=("nvidia", "nouveau", "amdgpu", "mei_me", "xhci_hcd"),
            doc="Drivers whose devices are left alone (known to hang or lose state when runtime-suspended).",
        ),
        Option(
            "include_network",
            Boolean(),
            default=False,
            doc="Also network controllers; off by default because some drop the link when suspended, "
            "which the engine's own WoL/ARP watching relies on.",
        ),
    )

    def plan(self) -> List[Any]:
        changes = []
        deny = set(self.options["deny_drivers"])
        for dev in self.root.listdir(PCI_DEVICES):
            base = "%s/%s" % (PCI_DEVICES, dev)
            control = base + "/power/control"
            if not self.root.exists(control):
                continue
            driver = self.link_name(base + "/driver")
            if driver in deny:
                self.note("%s: driver %s denied" % (dev, driver))
                continue
            pci_class = (self.root.read(base + "/class", "") or "").strip().lower()
            if pci_class.startswith("0x" + PCI_CLASS_NETWORK) and not self.options["include_network"]:
                self.note("%s: network controller left alone" % dev)
                continue
            changes.append(FileChange(control, "auto"))
        return changes


class AudioPowersave(Tweak):
    """Power the HDA/AC97 codec down after a few idle seconds."""

    TYPE = "audio_powersave"
    OPTIONS = common_options() + (
        Option(
            "timeout",
            Integer(minimum=1, maximum=3600),
            default=1,
            doc="Seconds of silence before the codec powers down.",
        ),
        Option(
            "controller", Boolean(), default=True, doc="Also power down the HDA controller (power_save_controller)."
        ),
    )

    def plan(self) -> List[Any]:
        changes = []
        for module in ("snd_hda_intel", "snd_ac97_codec"):
            base = "/sys/module/%s/parameters" % module
            if self.root.exists(base + "/power_save"):
                changes.append(FileChange(base + "/power_save", str(self.options["timeout"])))
        controller = "/sys/module/snd_hda_intel/parameters/power_save_controller"
        if self.options["controller"] and self.root.exists(controller):
            changes.append(FileChange(controller, "Y"))
        if not changes:
            self.note("no HDA/AC97 audio driver loaded")
        return changes
