# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for powernap.fleet.nap: engine on the host, or the BMC (Redfish, IPMI) from the controller,
then confirm down."""

from __future__ import annotations

import base64
import time

from ansible.errors import AnsibleConnectionFailure, AnsibleError

from ansible_collections.powernap.fleet.plugins.action.wake import PowerActionBase
from ansible_collections.powernap.fleet.plugins.module_utils import probe, wake
from ansible_collections.powernap.fleet.plugins.module_utils.common import BMC_SPEC, REDFISH_SPEC, check_hosts
from ansible_collections.powernap.fleet.plugins.module_utils.power import OFF, PowerError, PowerSettingError
from ansible_collections.powernap.fleet.plugins.modules.nap import DOWN_STATES, argument_spec, read_machine_id

MODULE = "powernap.fleet.nap"


class ActionModule(PowerActionBase):
    def _run_power(self, result, task_vars, start):
        name = task_vars.get("inventory_hostname")
        result["changed"] = False
        args = self._filled(dict(self._task.args), task_vars)
        args.pop("relay", None)
        for unused in ("mac", "secureon", "broadcast", "port", "interface"):
            args.pop(unused, None)
        params = self._validated(args, argument_spec())
        check_hosts({"address": params["address"]})
        state = params["state"]
        result["state"] = state
        self._deadline = start + params["timeout"]

        if self._is_local(task_vars):
            # A local connection runs on the controller: napping "it" would nap the controller.
            raise AnsibleError("refusing to nap %s: it is the controller itself (local connection)" % name)

        via = params["via"]
        answers = probe.tcp_probe(params["address"], params["ssh_port"], min(3.0, params["timeout"])) == probe.UP
        # The host's BMC protocol, Redfish before IPMI (as wake's auto); None without a BMC.
        self._protocol = via if via in wake.BMC_METHODS else wake.auto_method(params, False)
        if via == "auto":
            via = self._protocol if not answers and state in ("poweroff", "awake") and self._protocol else "engine"
        result["via"] = via
        if via in wake.BMC_METHODS:
            self._via_bmc(params, result, task_vars, answers)
        else:
            self._via_engine(params, result, task_vars, answers)

    def _bmc(self, params):
        bmc = self._protocol and wake.bmc_driver(params, self._protocol, params["bmc_timeout"], deadline=self._deadline)
        if not bmc:
            where = "redfish_host or bmc_host" if self._protocol == "redfish" else "bmc_host or powernap_bmc_host"
            raise PowerSettingError("via=%s needs a BMC (%s)" % (self._protocol or "ipmi", where))
        return bmc

    def _refuse_if_controller(self, params, task_vars, answers):
        """A host at one of the controller's own addresses (127.x, ::1, a port-forwarded VM) is refused only
        when it is the controller itself: its /etc/machine-id, read over its own connection, is ours."""
        if not probe.is_local_address(params["address"]):
            return
        controller_id = read_machine_id()
        machine_id = None
        if answers:
            try:
                slurped = self._execute_module(
                    module_name="ansible.legacy.slurp", module_args={"src": "/etc/machine-id"}, task_vars=task_vars
                )
                machine_id = base64.b64decode(slurped.get("content") or "").decode().strip() or None
            except (AnsibleError, ValueError, UnicodeError):
                machine_id = None
        if machine_id is None:
            raise AnsibleError(
                "refusing to nap %s: its address is this machine's and its machine-id could not be read over its"
                " connection, so it may be the controller itself" % params["address"]
            )
        if controller_id and machine_id == controller_id:
            raise AnsibleError("refusing to nap %s: it is the controller itself (same machine-id)" % params["address"])

    def _via_bmc(self, params, result, task_vars, answers):
        state = params["state"]
        if state not in ("poweroff", "awake"):
            raise PowerSettingError("a BMC can only power off or on; %s needs via=engine" % state)
        bmc = self._bmc(params)
        try:
            self._bmc_power(bmc, params, result, task_vars, answers)
        finally:
            if hasattr(bmc, "close"):
                bmc.close()  # a Redfish session: BMCs have few slots

    def _bmc_power(self, bmc, params, result, task_vars, answers):
        state = params["state"]
        check = self._task.check_mode
        before = bmc.power_query()
        result["bmc_power"] = before
        if state == "awake":
            outcome = bmc.set_state("on", check_mode=check)
            result.update(changed=outcome["changed"], action=outcome["request"] or "none", bmc_power=outcome["after"])
            return
        if before == OFF:
            result.update(action="none", confirmed_down=True, msg="already off (the BMC reports power off)")
            return
        self._refuse_if_controller(params, task_vars, answers)
        try:
            outcome = bmc.set_state("shutdown", check_mode=check)
        except PowerSettingError:
            if not params["force"]:
                raise
            outcome = bmc.set_state("off", check_mode=check)
        result.update(changed=outcome["changed"], action=outcome["request"] or "none")
        if check:
            return
        # With force, keep time for the hard power-off inside the hard timeout.
        reserve = min(params["bmc_timeout"], params["timeout"] / 3.0) if params["force"] else 0.0
        result["bmc_power"] = self._wait_bmc_off(bmc, self._deadline - reserve)
        if params["force"] and result["bmc_power"] != OFF:
            bmc.set_state("off")
            result["action"] = "shutdown+off"
            result["bmc_power"] = self._wait_bmc_off(bmc, self._deadline)
        result["confirmed_down"] = result["bmc_power"] == OFF
        if not result["confirmed_down"]:
            raise PowerError("Timed out waiting for the BMC to report power off after %ds" % params["timeout"])

    def _pipelining(self, value):
        """Set the connection's pipelining (when it has the option); returns the value it had.

        The nap module schedules the host's sleep seconds after it returns, so nothing may follow it over
        the connection: without pipelining, Ansible removes the module's temporary directory with one more
        command, which hangs on a host that has just gone to sleep.  Pipelining needs no such directory.
        """
        if value is None:
            return None
        try:
            original = self._connection.get_option("pipelining")
            self._connection.set_option("pipelining", value)
        except (KeyError, AnsibleError):
            return None
        return original

    def _wait_bmc_off(self, bmc, until):
        """Poll the BMC until it reports power off or ``until`` passes; the last state seen."""
        state = bmc.power_query()
        while state != OFF and time.monotonic() < until:
            time.sleep(min(1.0, max(0.0, until - time.monotonic())))
            try:
                state = bmc.power_query()
            except PowerError:
                if time.monotonic() >= until:
                    break
                raise
        return state

    def _bmc_confirms_off(self, params, result):
        """Whether the BMC (if any) reports power off; records bmc_power."""
        if not self._protocol:
            return False
        try:
            result["bmc_power"] = self._bmc(params).power_query()
        except PowerError as exc:
            result["bmc_error"] = str(exc)
            return False
        return result["bmc_power"] == OFF

    def _via_engine(self, params, result, task_vars, answers):
        module_args = {k: v for k, v in params.items() if v is not None and k not in BMC_SPEC and k not in REDFISH_SPEC}
        controller_id = read_machine_id()
        if controller_id:
            module_args["protect_machine_ids"] = list(module_args.get("protect_machine_ids") or []) + [controller_id]
        if not answers:
            # Not even TCP answers: do not wait out an SSH timeout (or a stale multiplexed session).
            module_result = {"unreachable": True, "msg": "no answer on %s:%s" % (params["address"], params["ssh_port"])}
        else:
            original = self._pipelining(True)
            try:
                module_result = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
            except AnsibleConnectionFailure as exc:
                module_result = {"unreachable": True, "msg": str(exc)}
            finally:
                self._pipelining(original)
        module_result.pop("invocation", None)
        if module_result.get("unreachable"):
            if answers:
                # It answered a moment ago and the nap was being scheduled: the host went down under us.
                result["changed"] = True
                self._confirm_down(params, result, dropped=True)
                return
            # Never reached: nothing was done. Success only when the BMC confirms the host is down.
            if params["state"] in DOWN_STATES and self._bmc_confirms_off(params, result):
                result.pop("bmc_error", None)
                result.update(confirmed_down=True, msg="already down (unreachable, and the BMC reports power off)")
                return
            why = result.pop("bmc_error", None) or (
                "the BMC reports power %s" % result["bmc_power"] if result.get("bmc_power") else "no BMC to ask"
            )
            raise PowerError(
                "%s is unreachable and nothing confirms it is down (%s): %s"
                % (params["address"], why, module_result["msg"])
            )
        for key, value in module_result.items():
            if key not in ("state", "via"):
                result[key] = value
        if result.get("failed") or self._task.check_mode or params["state"] not in DOWN_STATES:
            return
        self._confirm_down(params, result, dropped=False)

    def _confirm_down(self, params, result, dropped):
        """The host stops answering (timeout/unreachable; a refused connection still means a running kernel)."""
        deadline = self._deadline
        address, port = params["address"], params["ssh_port"]
        time.sleep(min(float(params["delay"]), max(0.0, deadline - time.monotonic())))
        while time.monotonic() < deadline:
            if probe.tcp_probe(address, port, min(2.0, max(0.05, deadline - time.monotonic()))) == probe.DOWN:
                break
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        else:
            result["confirmed_down"] = False
            raise PowerError(
                "Timed out waiting for %s to go down after %ds (it still answers on %s:%s)"
                % (address, params["timeout"], address, port)
            )
        result["confirmed_down"] = True
        if dropped:
            result["msg"] = "connection dropped as the host went down (expected)"
        if params["state"] == "poweroff" and self._protocol:
            result["bmc_power"] = self._wait_bmc_off(self._bmc(params), deadline)
            result["confirmed_down"] = result["bmc_power"] == OFF
            if not result["confirmed_down"]:
                raise PowerError("the host stopped answering but its BMC still reports power on")
