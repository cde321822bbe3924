# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared argument specs (matching the doc fragments), the inventory variables that fill them, and input checks."""

import re
import socket

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

# Mirrors doc_fragments/redfish.py (credentials are BMC_SPEC's bmc_user/bmc_password).
REDFISH_SPEC = {
    "redfish_host": {"type": "str"},
    "redfish_system_id": {"type": "str"},
    "redfish_validate_certs": {"type": "bool", "default": True},
    "redfish_ca_path": {"type": "path"},
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
    "redfish_host": "powernap_redfish_host",
    "redfish_system_id": "powernap_redfish_system_id",
    "redfish_validate_certs": "powernap_redfish_validate_certs",
    "redfish_ca_path": "powernap_redfish_ca_path",
    "broadcast": "powernap_wol_broadcast",
    "port": "powernap_wol_port",
    "interface": "powernap_wol_interface",
    "relay": "powernap_relay",
}

SECRET_OPTIONS = frozenset(
    name for spec in (BMC_SPEC, REDFISH_SPEC, WOL_SPEC) for name, opt in spec.items() if opt.get("no_log")
)


# RFC 1123 host name labels (underscores allowed: common in internal DNS), after IDNA encoding.
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def invalid_host(value):
    """Why ``value`` is not a usable host name or IP address, or None when it is.

    Checked before anything resolves it, so that a bad name is reported as such
    instead of surfacing as a UnicodeError or a resolver failure deep in a driver.
    """
    if not isinstance(value, str) or not value.strip():
        return "empty host name"
    text = value.strip()
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text.split("%", 1)[0] if family == socket.AF_INET6 else text)
            return None
        except (OSError, ValueError):
            pass
    try:
        ascii_name = text.encode("idna").decode("ascii")
    except UnicodeError:
        return "invalid host name %r (labels must be 1-63 characters, separated by single dots)" % text
    labels = ascii_name[:-1].split(".") if ascii_name.endswith(".") else ascii_name.split(".")
    if len(ascii_name) > 253 or not all(_LABEL.match(label) for label in labels):
        return "invalid host name %r (letters, digits, hyphens and dots; labels of 1-63 characters)" % text
    return None


def check_hosts(values):
    """Raise ValueError naming the first ``option: value`` pair (set values only) that is not a valid host."""
    for option, value in values.items():
        if value is None:
            continue
        problem = invalid_host(value)
        if problem:
            raise ValueError("%s: %s" % (option, problem))
