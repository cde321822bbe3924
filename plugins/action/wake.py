# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for powernap.fleet.wake: wake from the controller (or a relay) and wait like reboot does."""

from __future__ import annotations

import os
import random
import time

from ansible import constants as C
from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.playbook.play_context import PlayContext
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.powernap.fleet.plugins.module_utils import probe
from ansible_collections.powernap.fleet.plugins.module_utils.action_helpers import (
    fill_from_inventory,
    mask_no_log,
    no_log_values,
    strip_secrets,
    target_from_host,
)
from ansible_collections.powernap.fleet.plugins.module_utils.common import SECRET_OPTIONS
from ansible_collections.powernap.fleet.plugins.module_utils.power import PowerError
from ansible_collections.powernap.fleet.plugins.modules.wake import argument_spec, run

display = Display()

MODULE = "powernap.fleet.wake"
# Connection options that bound one connection attempt, in the order ansible.builtin.reboot tries them.
CONNECT_TIMEOUT_OPTIONS = ("connection_timeout", "timeout")


class PowerActionBase(ActionBase):
    """What the power action plugins share: inventory filling, secret masking, relays, connection waits."""

    TRANSFERS_FILES = False
    _requires_connection = False
    REPORTS_ELAPSED = True

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        self._secrets = no_log_values(self._task.args)
        start = time.monotonic()
        try:
            self._run_power(result, task_vars, start)
        except PowerError as exc:
            result.update(failed=True, msg=str(exc), error=exc.kind)
        except ValueError as exc:
            result.update(failed=True, msg=str(exc), error="setting")
        except AnsibleError as exc:
            result.update(failed=True, msg=str(exc))
        if self.REPORTS_ELAPSED:
            result["elapsed"] = round(time.monotonic() - start, 3)
        return mask_no_log(result, self._secrets)

    def _run_power(self, result, task_vars, start):
        raise NotImplementedError

    def _template(self, value):
        return self._templar.template(value) if value is not None else None

    def _validated(self, args, spec):
        validation = ArgumentSpecValidator(spec).validate(args)
        if validation.error_messages:
            raise AnsibleError("; ".join(validation.error_messages))
        return validation.validated_parameters

    def _is_local(self, task_vars):
        """Whether this task's connection runs on the controller (under delegate_to: the delegate's)."""
        connection = self._template(task_vars.get("ansible_connection")) or self._play_context.connection
        return connection == "local"

    def _target_vars(self, task_vars):
        """The targeted host's own variables (under delegate_to, task_vars mix in the delegate's connection)."""
        name = task_vars.get("inventory_hostname")
        hostvars = task_vars.get("hostvars") or {}
        if self._task.delegate_to and name in hostvars:
            return dict(hostvars[name])
        return task_vars

    def _filled(self, args, task_vars):
        """``args`` with unset options from the target's inventory variables; their secrets are masked too."""
        filled = fill_from_inventory(
            args, self._target_vars(task_vars), task_vars.get("inventory_hostname"), self._template
        )
        self._secrets |= no_log_values(filled)
        return filled

    def _relay_run(self, relay, module_args, task_vars):
        """Run our module on ``relay`` (an inventory host) through a connection of its own (public APIs only)."""
        hostvars = task_vars.get("hostvars") or {}
        if relay not in hostvars:
            raise AnsibleError("relay %r is not an inventory host" % relay)
        relay_vars = dict(hostvars[relay])
        relay_vars["hostvars"] = hostvars
        context = PlayContext()
        context.remote_addr = self._template(relay_vars.get("ansible_host")) or relay
        conn_type = self._template(relay_vars.get("ansible_connection")) or "ssh"
        connection = self._shared_loader_obj.connection_loader.get(
            conn_type, context, new_stdin=None, task_uuid=self._task._uuid, ansible_playbook_pid=str(os.getppid())
        )
        if connection is None:
            raise AnsibleError("connection plugin %r for relay %s not found" % (conn_type, relay))
        connection.set_options(var_options=self._plugin_vars("connection", connection, conn_type, relay_vars))
        shell = connection._shell
        shell.set_options(var_options=self._plugin_vars("shell", shell, None, relay_vars))
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

    def _plugin_vars(self, plugin_type, plugin, fallback_name, variables):
        """The templated variables that set ``plugin``'s options, as the task executor gathers them."""
        name = getattr(plugin, "_load_name", None) or fallback_name
        options = {}
        for var in C.config.get_plugin_vars(plugin_type, name):
            if var in variables:
                options[var] = self._template(variables[var])
        return options

    def _set_connect_timeout(self, seconds):
        """Set the connection's per-attempt timeout (connection_timeout, else the ssh plugin's timeout).

        Returns (option, original value) to restore, or (None, None) when the plugin has neither option."""
        for option in CONNECT_TIMEOUT_OPTIONS:
            try:
                original = self._connection.get_option(option)
                self._connection.set_option(option, seconds)
            except (KeyError, AnsibleError):
                continue
            return option, original
        display.warning("the connection plugin does not allow its connection timeout to be set; connect_timeout unused")
        return None, None

    def _wait_for_connection(self, task_vars, deadline, connect_timeout, address, port, reuse_first=False):
        """Until ``deadline``: the host answers its Ansible connection (ping module).  Returns seconds waited.

        Backoff with jitter (capped at 12 s) between tries, a cheap TCP probe
        first so a sleeping host does not cost a full SSH timeout per try, and
        the connection's own timeout restored afterwards.  Each try opens a new
        connection (one from before a sleep may hang), except the first with
        ``reuse_first`` (a host that was up all along: its connection is good).
        """
        start = time.monotonic()
        option, original = self._set_connect_timeout(max(1, int(min(connect_timeout, deadline - start))))
        delay = 1.0
        last_error = "no answer"
        reconnected = False
        try:
            while time.monotonic() < deadline:
                remaining = deadline - time.monotonic()
                if address and probe.tcp_probe(address, port, min(connect_timeout, 2.0, remaining)) != probe.UP:
                    last_error = "%s:%s does not answer TCP" % (address, port)
                else:
                    try:
                        if option:
                            self._connection.set_option(option, max(1, int(min(connect_timeout, remaining))))
                        if not reuse_first:
                            self._connection.reset()
                            reconnected = True
                        reuse_first = False
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
            if option:
                try:
                    self._connection.set_option(option, original)
                    if reconnected:
                        self._connection.reset()
                except (AnsibleError, KeyError) as exc:
                    display.debug("powernap: could not restore %s: %s" % (option, exc))
        raise AnsibleError("Timed out waiting for the connection (%s)" % last_error)


class ActionModule(PowerActionBase):
    def _run_power(self, result, task_vars, start):
        name = task_vars.get("inventory_hostname")
        raw = dict(self._task.args)
        delegate = self._task.delegate_to
        if delegate and raw.get("relay"):
            raise AnsibleError("relay and delegate_to both say where to wake from: give one of them")
        if raw.get("targets") is not None:
            return self._run_batch(raw, task_vars, result)
        args = self._filled(raw, task_vars)
        if delegate:
            args.pop("relay", None)  # delegate_to wins over the inventory's powernap_relay
        local = self._is_local(task_vars)
        if local and not delegate and raw.get("address") is None and probe.is_local_address(args["address"]):
            # A local-connection host at the controller's own address that names a MAC or a BMC is another
            # machine, known only by those: the controller's address says nothing about it.
            args["address"] = None
        params = self._validated(args, argument_spec())
        deadline = start + params["timeout"]
        # Where the wake is sent from, and how it is confirmed: over the host's own Ansible connection,
        # unless that connection is the controller's or a delegate's; then by probing the host's address.
        own_connection = not local and not delegate
        nothing_to_send = not params.get("mac") and not params.get("bmc_host")
        if local and not delegate and nothing_to_send and probe.is_local_address(params["address"] or "localhost"):
            # The controller runs this very task: it is up, and there is nothing to send.
            result.update(changed=False, confirmed=True, msg="this host is the controller: it is up")
            return None
        wait = params["wait"] and not self._task.check_mode
        module_args = {k: v for k, v in params.items() if v is not None and k != "relay"}
        module_args["wait"] = wait and not own_connection
        if delegate and not local:
            # delegate_to a remote host: the connection already leads there; the module sends from it.
            wake_result = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
            wake_result.pop("ansible_facts", None)
            wake_result["relay"] = delegate
        elif params.get("relay"):
            wake_result = self._relay_run(params["relay"], module_args, task_vars)
        else:
            wake_result = run(dict(params, wait=module_args["wait"], relay=None), self._task.check_mode)
        wake_result.pop("invocation", None)
        result.update(strip_secrets(wake_result, SECRET_OPTIONS))
        if result.get("failed") or not wait or not own_connection:
            return None
        if result.get("msg") == "already up":
            result["changed"] = False
        try:
            self._wait_for_connection(
                task_vars,
                deadline,
                params["connect_timeout"],
                params["address"],
                params["ssh_port"],
                reuse_first=result.get("msg") == "already up",
            )
        except AnsibleError as exc:
            result.update(
                failed=True,
                confirmed=False,
                msg="Timed out waiting for %s to come up after %s: %s"
                % (name, result.get("woken_by") or "the wake", exc),
            )
        else:
            result["confirmed"] = True
            if result.get("msg") != "already up":
                result.pop("msg", None)
        return None

    def _run_batch(self, raw, task_vars, result):
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
        self._secrets |= no_log_values(args)
        params = self._validated(args, argument_spec())
        relay = params.get("relay")
        module_args = {k: v for k, v in params.items() if v is not None and k != "relay"}
        if self._task.delegate_to and not self._is_local(task_vars):
            batch_result = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
            batch_result["relay"] = self._task.delegate_to
        elif relay:
            batch_result = self._relay_run(relay, module_args, task_vars)
        else:
            batch_result = run(params, self._task.check_mode)
        batch_result.pop("invocation", None)
        batch_result.pop("ansible_facts", None)
        result.update(strip_secrets(batch_result, SECRET_OPTIONS))
        return None
