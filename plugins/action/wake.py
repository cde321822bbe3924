# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for powernap.fleet.wake: wake from the controller (or a relay) and wait like reboot does."""

from __future__ import annotations

import os
import random
import time

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.playbook.play_context import PlayContext
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.powernap.fleet.plugins.module_utils import probe
from ansible_collections.powernap.fleet.plugins.module_utils.action_helpers import (
    fill_from_inventory,
    strip_secrets,
    target_from_host,
)
from ansible_collections.powernap.fleet.plugins.module_utils.common import SECRET_OPTIONS
from ansible_collections.powernap.fleet.plugins.modules.wake import argument_spec, run

display = Display()

MODULE = "powernap.fleet.wake"


class PowerActionBase(ActionBase):
    """What the wake and nap action plugins share: inventory filling, relays, connection waits."""

    TRANSFERS_FILES = False
    _requires_connection = False

    def _template(self, value):
        return self._templar.template(value) if value is not None else None

    def _validated(self, args, spec):
        validation = ArgumentSpecValidator(spec).validate(args)
        if validation.error_messages:
            raise AnsibleError("; ".join(validation.error_messages))
        return validation.validated_parameters

    def _is_local(self, task_vars):
        connection = self._template(task_vars.get("ansible_connection")) or self._play_context.connection
        return connection == "local"

    def _relay_run(self, relay, module_args, task_vars):
        """Run our module on ``relay`` (an inventory host) through a connection of its own."""
        hostvars = task_vars.get("hostvars") or {}
        if relay not in hostvars:
            raise AnsibleError("relay %r is not an inventory host" % relay)
        relay_vars = dict(hostvars[relay])
        relay_vars["hostvars"] = hostvars
        context = PlayContext()
        context.remote_addr = relay_vars.get("ansible_host", relay)
        conn_type = relay_vars.get("ansible_connection") or "ssh"
        connection = self._shared_loader_obj.connection_loader.get(
            conn_type, context, new_stdin=None, task_uuid=self._task._uuid, ansible_playbook_pid=str(os.getppid())
        )
        if connection is None:
            raise AnsibleError("connection plugin %r for relay %s not found" % (conn_type, relay))
        connection.set_options(var_options=connection._resolve_option_variables(relay_vars, self._templar))
        connection._shell.set_options(var_options={})
        saved = self._connection
        self._connection = connection
        try:
            result = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=relay_vars)
        finally:
            self._connection = saved
            connection.close()
        result.pop("ansible_facts", None)  # interpreter facts belong to the relay, not to this host
        result["relay"] = relay
        return result

    def _wait_for_connection(self, task_vars, deadline, connect_timeout, address, port):
        """Until ``deadline``: the host answers its Ansible connection (ping module).  Returns seconds waited.

        Backoff with jitter (capped at 12 s) between tries, a cheap TCP probe
        first so a sleeping host does not cost a full SSH timeout per try, and
        the connection's own timeout restored afterwards.
        """
        start = time.monotonic()
        original = None
        try:
            original = self._connection.get_option("connection_timeout")
            self._connection.set_option("connection_timeout", connect_timeout)
        except KeyError:
            original = None
        delay = 1.0
        last_error = "no answer"
        try:
            while time.monotonic() < deadline:
                if address and probe.tcp_probe(address, port, min(connect_timeout, 2.0)) != probe.UP:
                    last_error = "%s:%s does not answer TCP" % (address, port)
                else:
                    try:
                        self._connection.reset()
                        ping = self._execute_module(
                            module_name="ansible.legacy.ping", module_args={}, task_vars=task_vars
                        )
                        if ping.get("ping") == "pong":
                            return time.monotonic() - start
                        last_error = ping.get("msg") or "ping module failed"
                    except (AnsibleConnectionFailure, AnsibleError) as exc:
                        last_error = str(exc)
                sleep = min(12.0, delay) * random.uniform(0.8, 1.2)
                time.sleep(max(0.0, min(sleep, deadline - time.monotonic())))
                delay *= 2
        finally:
            if original is not None:
                try:
                    self._connection.set_option("connection_timeout", original)
                    self._connection.reset()
                except (AnsibleError, KeyError) as exc:
                    display.debug("powernap: could not restore connection_timeout: %s" % exc)
        raise AnsibleError("Timed out waiting for the connection (%s)" % last_error)


class ActionModule(PowerActionBase):
    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        start = time.monotonic()
        inventory_name = task_vars.get("inventory_hostname")
        host_vars = dict(task_vars)
        raw = dict(self._task.args)
        try:
            if raw.get("targets") is not None:
                return self._run_batch(raw, task_vars, result, start)
            local = self._is_local(task_vars)
            if local and not raw.get("mac") and not raw.get("bmc_host"):
                result.update(changed=False, confirmed=True, msg="this host is the controller: it is up", elapsed=0.0)
                return result
            args = fill_from_inventory(raw, host_vars, inventory_name, self._template)
            if local and raw.get("address") is None:
                # A local-connection task names another machine by mac/bmc_host: the controller's
                # own address says nothing about it, and Ansible cannot wait for it either.
                args["address"] = None
                args["wait"] = False
            params = self._validated(args, argument_spec())
        except AnsibleError as exc:
            result.update(failed=True, msg=str(exc))
            return result
        deadline = start + params["timeout"]
        module_args = {k: v for k, v in params.items() if v is not None}
        module_args["wait"] = False  # the action plugin waits, over the host's own connection
        relay = module_args.pop("relay", None)
        try:
            if relay:
                wake_result = self._relay_run(relay, module_args, task_vars)
            else:
                wake_result = run(params | {"wait": False, "relay": None}, self._task.check_mode)
        except (AnsibleError, ValueError) as exc:
            result.update(failed=True, msg=str(exc))
            return result
        result.update(strip_secrets(wake_result, SECRET_OPTIONS))
        if result.get("failed") or self._task.check_mode or not params["wait"]:
            result["elapsed"] = round(time.monotonic() - start, 3)
            return result
        if result.get("msg") == "already up":
            result["changed"] = False
        try:
            self._wait_for_connection(
                task_vars, deadline, params["connect_timeout"], params["address"], params["ssh_port"]
            )
        except AnsibleError as exc:
            result.update(
                failed=True,
                confirmed=False,
                msg="Timed out waiting for %s to come up after %s: %s"
                % (inventory_name, result.get("woken_by") or "the wake", exc),
            )
        else:
            result["confirmed"] = True
            if result.get("msg") != "already up":
                result.pop("msg", None)
        result["elapsed"] = round(time.monotonic() - start, 3)
        return result

    def _run_batch(self, raw, task_vars, result, start):
        hostvars = task_vars.get("hostvars") or {}
        targets = []
        for item in raw["targets"]:
            if isinstance(item, str):
                if item not in hostvars:
                    raise AnsibleError("targets: %r is not an inventory host" % item)
                targets.append(target_from_host(item, hostvars[item]))
            else:
                targets.append(item)
        args = dict(raw, targets=targets)
        params = self._validated(args, argument_spec())
        relay = params.get("relay")
        if relay:
            module_args = {k: v for k, v in params.items() if v is not None and k != "relay"}
            batch_result = self._relay_run(relay, module_args, task_vars)
        else:
            try:
                batch_result = run(params, self._task.check_mode)
            except ValueError as exc:
                raise AnsibleError(str(exc)) from exc
        result.update(strip_secrets(batch_result, SECRET_OPTIONS))
        result["elapsed"] = round(time.monotonic() - start, 3)
        return result
