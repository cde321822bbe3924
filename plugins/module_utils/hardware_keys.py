# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The keys of hardware allow/deny list entries: their one home.

Used by the hwlist module and, through the symlink
``engine/powernap/hardware_keys.py``, by the nap engine's hardware lists.
Pure data, no imports.
"""

# Facts read from /sys/class/dmi/id/<name>.
DMI_FACTS = (
    "sys_vendor",
    "product_name",
    "product_version",
    "board_vendor",
    "board_name",
    "bios_vendor",
    "bios_version",
)
# One value per host.
SCALAR_FACTS = DMI_FACTS + ("cpu_model", "kernel")
# Several values per host (devices, drivers): an entry matches when any of them does.
LIST_FACTS = ("pci", "usb", "nic_driver")
MATCH_KEYS = SCALAR_FACTS + LIST_FACTS
# What an entry says besides what it matches.
VERDICT_KEYS = ("actions", "tweaks", "reason")
ENTRY_KEYS = MATCH_KEYS + VERDICT_KEYS
