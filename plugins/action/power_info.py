# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for powernap.fleet.power_info: BMC options stay on the controller.

power_info is in the ``power`` action group so that one ``module_defaults`` block serves wake, nap and
power_info; without this plugin those defaults (BMC user, password, Kg) would be copied to every managed
host with the module.  The facts are gathered on the host; the BMC options are checked here and dropped.
"""

from __future__ import annotations

from ansible_collections.powernap.fleet.plugins.action.wake import PowerActionBase
from ansible_collections.powernap.fleet.plugins.module_utils.common import BMC_SPEC, check_hosts

MODULE = "powernap.fleet.power_info"


class ActionModule(PowerActionBase):
    _requires_connection = True
    REPORTS_ELAPSED = False

    def _run_power(self, result, task_vars, start):
        args = dict(self._task.args)
        bmc_args = {key: args.pop(key) for key in list(args) if key in BMC_SPEC}
        # Filled from the inventory like wake/nap (so inventory secrets are masked too), then checked here.
        filled = self._filled(bmc_args, task_vars)
        bmc = self._validated({key: filled[key] for key in BMC_SPEC if filled.get(key) is not None}, BMC_SPEC)
        bmc_host = bmc.get("bmc_host")
        check_hosts({"bmc_host": bmc_host})
        module_result = self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)
        result.update(module_result)
        if isinstance(result.get("bmc"), dict):
            result["bmc"]["configured"] = bool(bmc_host)
