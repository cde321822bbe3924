# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller-side helpers shared by the ``wake`` and ``nap`` action plugins.

Kept in module_utils (pure functions, no Ansible controller imports) so unit
tests can exercise them without a play.  Python 3.8 syntax.
"""

from ansible.module_utils.common.parameters import remove_values

from ansible_collections.powernap.fleet.plugins.module_utils.common import INVENTORY_VARS, SECRET_OPTIONS

SSH_PORT_VARS = ("ansible_port", "ansible_ssh_port")
ADDRESS_VARS = ("ansible_host", "ansible_ssh_host")


def host_address(host_vars, inventory_name):
    """The address Ansible connects to for a host: ansible_host, else its inventory name."""
    for name in ADDRESS_VARS:
        if host_vars.get(name):
            return str(host_vars[name])
    return inventory_name


def host_ssh_port(host_vars, default=22):
    for name in SSH_PORT_VARS:
        if host_vars.get(name):
            return int(host_vars[name])
    return default


def fill_from_inventory(args, host_vars, inventory_name, template=None):
    """Copy of ``args`` where every unset option takes its ``powernap_*`` inventory variable.

    ``template`` renders a raw variable value (the action plugin passes its templar).
    Options the task sets (even to a false value) always win.
    """
    template = template or (lambda value: value)
    filled = dict(args)
    for option, variable in INVENTORY_VARS.items():
        if filled.get(option) is None and host_vars.get(variable) not in (None, ""):
            filled[option] = template(host_vars[variable])
    if filled.get("address") is None:
        filled["address"] = host_address({k: template(host_vars.get(k)) for k in ADDRESS_VARS}, inventory_name)
    if filled.get("ssh_port") is None:
        filled["ssh_port"] = host_ssh_port({k: template(host_vars.get(k)) for k in SSH_PORT_VARS})
    return filled


def target_from_host(name, host_vars):
    """A batch target (dict of wake.TARGET_OPTIONS) for inventory host ``name``; None values are unset."""
    target = fill_from_inventory({}, host_vars, name)
    target.pop("relay", None)
    target["name"] = name
    return {k: v for k, v in target.items() if v is not None}


def strip_secrets(value, secrets):
    """Deep copy of ``value`` without the keys named in ``secrets`` (results must never carry them)."""
    if isinstance(value, dict):
        return {k: strip_secrets(v, secrets) for k, v in value.items() if k not in secrets}
    if isinstance(value, list):
        return [strip_secrets(v, secrets) for v in value]
    return value


def no_log_values(*option_sets):
    """The secret values (as strings) in option dicts: every SECRET_OPTIONS key, also inside batch ``targets``."""
    found = set()
    for options in option_sets:
        for key, value in (options or {}).items():
            if key in SECRET_OPTIONS and value not in (None, ""):
                found.add(str(value))
            elif key == "targets" and isinstance(value, list):
                found |= no_log_values(*[item for item in value if isinstance(item, dict)])
    return found


def mask_no_log(result, secrets):
    """``result`` with every occurrence of a secret value replaced, as AnsibleModule does for no_log options.

    Action plugins return results without passing through AnsibleModule, so each one masks its own result
    here: error messages (for example an argument-spec message that echoes a value) included.
    """
    return remove_values(result, secrets) if secrets else result
