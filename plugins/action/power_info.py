# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for powernap.fleet.power_info: BMC options stay on the controller.

power_info is in the ``power`` action group so that one ``module_defaults`` block serves wake, nap and
power_info; without this plugin those defaults (BMC user, password, Kg) would be copied to every managed
host with the module.  The facts are gathered on the host; the BMC options are checked here and dropped,
and with ``bmc_query`` the BMC (Redfish or IPMI) is asked for its power state from here.

A host that does not answer (asleep or off) is reported unreachable as usual; with ``server_url``, the fleet
server is asked about it from here, so that its wake health, energy saved and policy still show (status.yml).
"""

from __future__ import annotations

import math

from ansible.errors import AnsibleConnectionFailure

from ansible_collections.powernap.fleet.plugins.action.wake import PowerActionBase
from ansible_collections.powernap.fleet.plugins.module_utils import wake
from ansible_collections.powernap.fleet.plugins.module_utils.common import BMC_SPEC, REDFISH_SPEC, check_hosts
from ansible_collections.powernap.fleet.plugins.module_utils.fleet_server import server_base_url, server_view
from ansible_collections.powernap.fleet.plugins.module_utils.power import UNKNOWN, PowerError
from ansible_collections.powernap.fleet.plugins.module_utils.redfish import POWER_STATES

# Options that never leave the controller.
CONTROLLER_SPEC = dict(BMC_SPEC, bmc_query={"type": "bool", "default": False}, **REDFISH_SPEC)

MODULE = "powernap.fleet.power_info"


class ActionModule(PowerActionBase):
    _requires_connection = True
    REPORTS_ELAPSED = False

    def _run_power(self, result, task_vars, start):
        args = dict(self._task.args)
        bmc_args = {key: args.pop(key) for key in list(args) if key in CONTROLLER_SPEC}
        # Filled from the inventory like wake/nap (so inventory secrets are masked too), then checked here.
        filled = self._filled(bmc_args, task_vars)
        bmc = self._validated(
            {key: filled[key] for key in CONTROLLER_SPEC if filled.get(key) is not None}, CONTROLLER_SPEC
        )
        protocol = wake.auto_method(bmc, False)
        if protocol == "ipmi":
            check_hosts({"bmc_host": bmc.get("bmc_host")})
        try:
            module_result = self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)
        except AnsibleConnectionFailure as exc:
            result.update(unreachable=True, msg=str(exc))
            if args.get("server_url"):
                result["server"] = self._server_view(args, task_vars)
            return
        result.update(module_result)
        if isinstance(result.get("bmc"), dict):
            result["bmc"]["configured"] = protocol is not None
            if protocol:
                result["bmc"]["protocol"] = protocol
            if bmc["bmc_query"] and protocol:
                result["bmc"].update(self._query(bmc, protocol))

    def _server_view(self, args, task_vars):
        """The fleet server's record of a host that does not answer, read from the controller.

        The host is looked up by O(server_host), else by its inventory name (its engine cannot be asked)."""
        try:
            base = server_base_url(self._template(args["server_url"]))
            timeout = float(self._template(args.get("server_timeout", 5.0)))
            if not math.isfinite(timeout) or timeout <= 0:
                raise ValueError("server_timeout must be > 0, not %r" % timeout)
        except (TypeError, ValueError) as exc:
            return {"reachable": False, "found": False, "error": str(exc), "asked_from": "controller"}
        host = self._template(args.get("server_host")) or task_vars.get("inventory_hostname")
        return dict(server_view(base, str(host), timeout), asked_from="controller")

    @staticmethod
    def _query(options, protocol):
        """The BMC's own view of the power state: ``power`` (on/off), and Redfish's ``power_state``.

        A BMC that cannot be asked is reported in ``error``; the task does not fail for it."""
        driver = None
        try:
            driver = wake.bmc_driver(options, protocol, options["bmc_timeout"])
            if protocol == "redfish":
                state = driver.raw_power_state()
                return {"power_state": state, "power": POWER_STATES.get(state, UNKNOWN)}
            return {"power": driver.power_query()}
        except PowerError as exc:
            return {"error": str(exc), "error_kind": exc.kind}
        finally:
            if driver is not None and hasattr(driver, "close"):
                driver.close()
