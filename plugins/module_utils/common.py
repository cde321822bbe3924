# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared argument specs (matching the doc fragments) and the inventory variables that fill them."""

# Mirrors doc_fragments/bmc.py.
BMC_SPEC = {
    "bmc_host": {"type": "str"},
    "bmc_port": {"type": "int", "default": 623},
    "bmc_user": {"type": "str"},
    "bmc_password": {"type": "str", "no_log": True},
    "bmc_kg": {"type": "str", "no_log": True},
    "bmc_privilege": {"type": "str", "choices": ["callback", "user", "operator", "administrator"]},
    "bmc_timeout": {"type": "float", "default": 15.0},
}

# Mirrors doc_fragments/wol.py.
WOL_SPEC = {
    "mac": {"type": "str"},
    "secureon": {"type": "str", "no_log": True},
    "broadcast": {"type": "str", "default": "255.255.255.255"},
    "port": {"type": "int", "default": 9},
    "interface": {"type": "str"},
    "source": {"type": "str"},
    "transport": {"type": "str", "default": "udp", "choices": ["udp", "raw"]},
    "repeat": {"type": "int", "default": 3},
    "interval": {"type": "float", "default": 0.1},
}

# Option -> inventory variable the action plugins read when the task leaves the option unset.
INVENTORY_VARS = {
    "mac": "powernap_mac",
    "secureon": "powernap_secureon",
    "bmc_host": "powernap_bmc_host",
    "bmc_port": "powernap_bmc_port",
    "bmc_user": "powernap_bmc_user",
    "bmc_password": "powernap_bmc_password",
    "bmc_kg": "powernap_bmc_kg",
    "bmc_privilege": "powernap_bmc_privilege",
    "broadcast": "powernap_wol_broadcast",
    "port": "powernap_wol_port",
    "interface": "powernap_wol_interface",
    "relay": "powernap_relay",
}

SECRET_OPTIONS = frozenset(name for spec in (BMC_SPEC, WOL_SPEC) for name, opt in spec.items() if opt.get("no_log"))
