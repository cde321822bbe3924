# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for powernap.fleet.nap: engine on the host or IPMI from the controller, then confirm down."""

from __future__ import annotations

import time

from ansible.errors import AnsibleConnectionFailure, AnsibleError

from ansible_collections.powernap.fleet.plugins.action.wake import PowerActionBase
from ansible_collections.powernap.fleet.plugins.module_utils import probe
from ansible_collections.powernap.fleet.plugins.module_utils.action_helpers import fill_from_inventory
from ansible_collections.powernap.fleet.plugins.module_utils.common import BMC_SPEC
from ansible_collections.powernap.fleet.plugins.module_utils.ipmi import IpmiDriver
from ansible_collections.powernap.fleet.plugins.module_utils.power import OFF, PowerError, PowerSettingError
from ansible_collections.powernap.fleet.plugins.modules.nap import DOWN_STATES, argument_spec, read_machine_id

MODULE = "powernap.fleet.nap"


class ActionModule(PowerActionBase):
    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        start = time.monotonic()
        name = task_vars.get("inventory_hostname")
        try:
            args = fill_from_inventory(dict(self._task.args), task_vars, name, self._template)
            args.pop("relay", None)
            for unused in ("mac", "secureon", "broadcast", "port", "interface"):
                args.pop(unused, None)
            params = self._validated(args, argument_spec())
        except AnsibleError as exc:
            result.update(failed=True, msg=str(exc))
            return result
        state = params["state"]
        result.update(state=state, changed=False)

        if self._is_local(task_vars) or probe.is_local_address(params["address"]):
            result.update(failed=True, msg="refusing to nap %s: it is the controller itself" % name)
            return result

        via = params["via"]
        if via == "auto":
            answers = probe.tcp_probe(params["address"], params["ssh_port"], 3.0) == probe.UP
            if answers or state not in ("poweroff", "awake") or not params.get("bmc_host"):
                via = "engine"
            else:
                via = "ipmi"
        result["via"] = via
        try:
            if via == "ipmi":
                self._via_ipmi(params, result, start)
            else:
                self._via_engine(params, result, task_vars, start)
        except (PowerError, AnsibleError) as exc:
            result.update(failed=True, msg=str(exc), error=getattr(exc, "kind", "fatal"))
        result["elapsed"] = round(time.monotonic() - start, 3)
        return result

    def _bmc(self, params):
        if not params.get("bmc_host"):
            raise PowerSettingError("via=ipmi needs a BMC (bmc_host or powernap_bmc_host)")
        return IpmiDriver(
            params["bmc_host"],
            params.get("bmc_user"),
            params.get("bmc_password"),
            params.get("bmc_port"),
            params.get("bmc_kg"),
            params.get("bmc_privilege"),
            timeout=params["bmc_timeout"],
        )

    def _via_ipmi(self, params, result, start):
        state = params["state"]
        if state not in ("poweroff", "awake"):
            raise PowerSettingError("IPMI can only power off or on; %s needs via=engine" % state)
        bmc = self._bmc(params)
        check = self._task.check_mode
        if state == "awake":
            outcome = bmc.set_state("on", check_mode=check)
            result.update(changed=outcome["changed"], action=outcome["request"] or "none", bmc_power=outcome["after"])
            return
        deadline = start + params["timeout"]
        try:
            outcome = bmc.set_state("shutdown", check_mode=check)
        except PowerSettingError:
            if not params["force"]:
                raise
            outcome = bmc.set_state("off", check_mode=check)
        result.update(changed=outcome["changed"], action=outcome["request"] or "none")
        if check or not outcome["changed"]:
            result["confirmed_down"] = outcome["before"] == OFF or None
            return
        while time.monotonic() < deadline and bmc.power_query() != OFF:
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        if bmc.power_query() != OFF and params["force"]:
            outcome = bmc.set_state("off")
            result["action"] = "shutdown+off"
        result["confirmed_down"] = bmc.power_query() == OFF
        if not result["confirmed_down"]:
            raise PowerError("Timed out waiting for the BMC to report power off after %ds" % params["timeout"])

    def _via_engine(self, params, result, task_vars, start):
        module_args = {k: v for k, v in params.items() if v is not None and k not in BMC_SPEC}
        controller_id = read_machine_id()
        if controller_id:
            module_args["protect_machine_ids"] = list(module_args.get("protect_machine_ids") or []) + [controller_id]
        dropped = False
        try:
            module_result = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
        except AnsibleConnectionFailure as exc:
            # The host went to sleep under us: expected; confirm below.
            dropped = True
            module_result = {"changed": True, "msg": "connection dropped as the host went down: %s" % exc}
        module_result.pop("invocation", None)
        for key, value in module_result.items():
            if key not in ("state", "via"):
                result[key] = value
        if module_result.get("unreachable") and params["state"] in DOWN_STATES:
            result.pop("unreachable", None)
            result.pop("failed", None)
            dropped = True
        if result.get("failed") or self._task.check_mode or params["state"] not in DOWN_STATES:
            return
        result["changed"] = True
        self._confirm_down(params, result, start, dropped)

    def _confirm_down(self, params, result, start, dropped):
        """The host stops answering (timeout/unreachable; a refused connection still means a running kernel)."""
        deadline = start + params["timeout"]
        address, port = params["address"], params["ssh_port"]
        time.sleep(min(float(params["delay"]), max(0.0, deadline - time.monotonic())))
        while time.monotonic() < deadline:
            if probe.tcp_probe(address, port, 2.0) == probe.DOWN:
                break
            time.sleep(1.0)
        else:
            raise PowerError(
                "Timed out waiting for %s to go down after %ds (it still answers on %s:%s)"
                % (address, params["timeout"], address, port)
            )
        result["confirmed_down"] = True
        if dropped:
            result["msg"] = "connection dropped as the host went down (expected)"
        if params["state"] == "poweroff" and params.get("bmc_host"):
            bmc = self._bmc(params)
            while time.monotonic() < deadline and bmc.power_query() != OFF:
                time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            result["bmc_power"] = bmc.power_query()
            result["confirmed_down"] = result["bmc_power"] == OFF
            if not result["confirmed_down"]:
                raise PowerError("the host stopped answering but its BMC still reports power on")
