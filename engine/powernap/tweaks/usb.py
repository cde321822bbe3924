"""USB autosuspend, never for input (HID, which includes UPSes), audio or serial devices."""

import fnmatch
from typing import Any, List, Optional

from ..options import Integer, ListOf, Option, String
from .base import FileChange, Tweak, common_options

USB_DEVICES = "/sys/bus/usb/devices"
# Interface classes that are never autosuspended: audio (01), CDC control (02, modems and
# serial), HID (03: keyboards and mice lose keystrokes; UPSes are HID power devices), CDC data (0a).
NEVER_CLASSES = {"01": "audio", "02": "CDC/serial", "03": "HID (input or UPS)", "0a": "CDC data"}
# Drivers of vendor-specific serial adapters (UPS and console cables) that report class ff.
NEVER_DRIVERS = (
    "usbhid",
    "cdc_acm",
    "snd-usb-audio",
    "ftdi_sio",
    "pl2303",
    "ch341",
    "cp210x",
    "usbserial_generic",
    "usbserial",
    "option",
    "qcserial",
    "usb_serial_simple",
)


class UsbAutosuspend(Tweak):
    """Let idle USB devices autosuspend (power/control = auto), except HID, audio, serial and denied devices."""

    TYPE = "usb_autosuspend"
    OPTIONS = common_options() + (
        Option(
            "delay_ms",
            Integer(minimum=0, maximum=600000),
            default=2000,
            doc="autosuspend_delay_ms: idle time before a device suspends.",
        ),
        Option(
            "deny_ids",
            ListOf(String(nonempty=True)),
            default=(),
            doc="vendor:product IDs (patterns like 0463:*) to leave alone, in addition to the built-in rules.",
        ),
        Option(
            "deny_drivers",
            ListOf(String(nonempty=True)),
            default=(),
            doc="Interface drivers to leave alone, in addition to HID, audio and USB-serial drivers.",
        ),
    )

    def plan(self) -> List[Any]:
        changes = []
        for dev in self.root.listdir(USB_DEVICES):
            base = "%s/%s" % (USB_DEVICES, dev)
            if ":" in dev or not self.root.exists(base + "/idVendor"):
                continue  # interfaces, not devices
            control = base + "/power/control"
            if not self.root.exists(control):
                continue
            why = self.excluded(dev)
            if why:
                self.note("%s left alone: %s" % (dev, why))
                continue
            delay = base + "/power/autosuspend_delay_ms"
            if self.root.exists(delay):
                changes.append(FileChange(delay, str(self.options["delay_ms"])))
            changes.append(FileChange(control, "auto"))
        return changes

    def excluded(self, dev: str) -> Optional[str]:
        base = "%s/%s" % (USB_DEVICES, dev)
        usb_id = "%s:%s" % (
            (self.root.read(base + "/idVendor", "") or "").strip().lower(),
            (self.root.read(base + "/idProduct", "") or "").strip().lower(),
        )
        for pattern in self.options["deny_ids"]:
            if fnmatch.fnmatchcase(usb_id, pattern.lower()):
                return "%s is in deny_ids" % usb_id
        deny_drivers = set(NEVER_DRIVERS) | set(self.options["deny_drivers"])
        device_class = (self.root.read(base + "/bDeviceClass", "") or "").strip().lower()
        if device_class in NEVER_CLASSES:
            return "device class %s (%s)" % (device_class, NEVER_CLASSES[device_class])
        for interface in self.root.listdir(base):
            if not interface.startswith(dev + ":"):
                continue
            iface = "%s/%s" % (base, interface)
            iclass = (self.root.read(iface + "/bInterfaceClass", "") or "").strip().lower()
            if iclass in NEVER_CLASSES:
                return "interface %s class %s (%s)" % (interface, iclass, NEVER_CLASSES[iclass])
            driver = self.link_name(iface + "/driver")
            if driver in deny_drivers:
                return "interface %s driver %s" % (interface, driver)
        return None
