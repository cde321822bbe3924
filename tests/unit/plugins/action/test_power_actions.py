# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The wake, nap and power_info action plugins with a mocked connection (the lab tests run them for real)."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from unittest.mock import MagicMock

import pytest
from ansible.errors import AnsibleConnectionFailure
from ansible.parsing.dataloader import DataLoader
from ansible.playbook.play_context import PlayContext
from ansible.template import Templar

from ansible_collections.powernap.fleet.plugins.action import nap as nap_action
from ansible_collections.powernap.fleet.plugins.action import power_info as power_info_action
from ansible_collections.powernap.fleet.plugins.action import wake as wake_action
from ansible_collections.powernap.fleet.plugins.module_utils import ipmi, probe
from ansible_collections.powernap.fleet.plugins.module_utils.action_helpers import mask_no_log, no_log_values

SECRET = "s3cret-Pw"


def make_action(cls, args, delegate_to=None, check_mode=False, connection="ssh"):
    task = MagicMock()
    task.args = args
    task.delegate_to = delegate_to
    task.check_mode = check_mode
    task.async_val = 0
    task.diff = False
    play_context = PlayContext()
    play_context.connection = connection
    loader = DataLoader()
    action = cls(task, MagicMock(), play_context, loader, Templar(loader=loader), shared_loader_obj=None)
    action._execute_module = MagicMock(side_effect=AssertionError("no module run expected"))
    return action


def host_vars(**extra):
    values = {"inventory_hostname": "h1", "ansible_host": "127.0.0.1", "ansible_port": 1}
    values.update(extra)
    return values


@pytest.fixture
def receiver():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    yield sock
    sock.close()


# -- secrets ------------------------------------------------------------------------------------------


def test_mask_no_log_helper_masks_values_anywhere():
    secrets = no_log_values({"bmc_password": SECRET, "targets": [{"secureon": "aa:bb:cc:dd:ee:ff"}], "mac": "x"})
    assert secrets == {SECRET, "aa:bb:cc:dd:ee:ff"}
    masked = mask_no_log({"msg": "got: %s" % SECRET, "results": [{"msg": "aa:bb:cc:dd:ee:ff"}]}, secrets)
    assert SECRET not in json.dumps(masked) and "aa:bb:cc:dd:ee:ff" not in json.dumps(masked)


@pytest.mark.parametrize(
    "cls, args",
    [
        (wake_action.ActionModule, {"mac": "02:50:4e:00:00:01"}),
        (nap_action.ActionModule, {"state": "poweroff", "via": "ipmi"}),
        (power_info_action.ActionModule, {}),
    ],
)
def test_every_action_masks_no_log_values_in_its_result(cls, args):
    # A secret pasted into the wrong option comes back in the argument-spec error: it must be masked,
    # as AnsibleModule masks it, whether it came from the task or from the inventory.
    task_args = dict(args, bmc_password=SECRET, bmc_privilege=SECRET)
    result = make_action(cls, task_args).run(task_vars=host_vars())
    assert result["failed"] is True and "bmc_privilege" in result["msg"]
    assert SECRET not in json.dumps(result)
    inventory = host_vars(powernap_bmc_password="inv-" + SECRET)
    result = make_action(cls, dict(args, bmc_privilege="inv-" + SECRET)).run(task_vars=inventory)
    assert result["failed"] is True and "inv-" + SECRET not in json.dumps(result)


def test_power_info_keeps_bmc_options_on_the_controller():
    action = make_action(
        power_info_action.ActionModule, {"bmc_user": "admin", "bmc_password": SECRET, "server_timeout": 2.0}
    )
    action._execute_module = MagicMock(return_value={"changed": False, "bmc": {"present": False, "configured": False}})
    result = action.run(task_vars=host_vars(powernap_bmc_host="198.19.0.11"))
    (call,) = action._execute_module.call_args_list
    sent = call.kwargs["module_args"]
    assert sent == {"server_timeout": 2.0}
    assert result["bmc"] == {"present": False, "configured": True, "protocol": "ipmi"}
    assert SECRET not in json.dumps(result)


class HostRecordApi(BaseHTTPRequestHandler):
    """powerwaked's GET /v1/hosts/NAME: h1 is known, asleep; other names are a 404."""

    def do_GET(self):
        self.server.paths.append(self.path)
        record = {"name": "h1", "state": "asleep", "groups": ["web"], "wake_health": {"result": "never"},
                  "energy": {"saved_kwh": 0.5, "saved_cost": 0.2, "currency": "EUR"}, "macs": []}  # fmt: skip
        status, answer = (200, record) if self.path == "/v1/hosts/h1" else (404, {"error": "no such host"})
        data = json.dumps(answer).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        """Quiet."""


@pytest.fixture
def host_api():
    httpd = HTTPServer(("127.0.0.1", 0), HostRecordApi)
    httpd.paths = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d" % httpd.server_address[1], httpd.paths
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def test_power_info_of_a_host_that_does_not_answer_asks_the_fleet_server_from_the_controller(host_api):
    url, paths = host_api
    action = make_action(power_info_action.ActionModule, {"server_url": url, "server_timeout": 2.0})
    action._execute_module = MagicMock(side_effect=AnsibleConnectionFailure("ssh: connect to host h1: timed out"))
    result = action.run(task_vars=host_vars())
    # Unreachable, as Ansible reports it (ignore_unreachable registers it), with the server's view of the host.
    assert result["unreachable"] is True and "failed" not in result and "timed out" in result["msg"]
    server = result["server"]
    assert paths == ["/v1/hosts/h1"]  # by its inventory name: its engine cannot be asked
    assert server["found"] is True and server["asked_from"] == "controller" and server["url"] == url
    assert server["state"] == "asleep" and server["energy"]["saved_kwh"] == 0.5
    # By server_host when given; a server that does not know the name: found false, with the reason.
    action = make_action(power_info_action.ActionModule, {"server_url": url, "server_host": "nas9"})
    action._execute_module = MagicMock(side_effect=AnsibleConnectionFailure("timed out"))
    server = action.run(task_vars=host_vars())["server"]
    assert server["found"] is False and "HTTP 404" in server["error"]
    # Without server_url: only unreachable.
    action = make_action(power_info_action.ActionModule, {})
    action._execute_module = MagicMock(side_effect=AnsibleConnectionFailure("timed out"))
    result = action.run(task_vars=host_vars())
    assert result["unreachable"] is True and "server" not in result


def test_power_info_reports_an_invalid_bmc_host_name():
    result = make_action(power_info_action.ActionModule, {"bmc_host": "bmc..example"}).run(task_vars=host_vars())
    assert result["failed"] is True and "invalid host name" in result["msg"]


# -- wake: delegation, local connections, confirmation ------------------------------------------------


def test_wake_delegated_to_localhost_sends_from_the_controller(receiver, monkeypatch):
    port = receiver.getsockname()[1]
    monkeypatch.setattr(probe, "tcp_probe", lambda *args: probe.DOWN)
    target = {"ansible_host": "127.0.0.1", "powernap_mac": "02:50:4e:00:00:21", "inventory_hostname": "h1"}
    # Under delegate_to, task_vars carry the delegate's connection; the target's own vars are in hostvars.
    task_vars = dict(target, ansible_connection="local", hostvars={"h1": target})
    action = make_action(
        wake_action.ActionModule,
        {"broadcast": "127.0.0.1", "port": port, "repeat": 1},
        delegate_to="localhost",
        connection="local",
    )
    result = action.run(task_vars=task_vars)
    assert result.get("failed") is not True, result
    assert result["changed"] is True and result["woken_by"] == "wol"
    assert "controller" not in result.get("msg", "")
    assert receiver.recv(2048)[-6:] == bytes.fromhex("02504e000021")
    action._execute_module.assert_not_called()


def test_wake_on_a_local_connection_never_reports_up_unconfirmed(receiver, monkeypatch):
    """The wake is sent; with wait the host must answer its address, or the task fails."""
    port = receiver.getsockname()[1]
    monkeypatch.setattr(probe, "tcp_probe", lambda *args: probe.DOWN)
    monkeypatch.setattr(probe, "probe", lambda *args: probe.DOWN)
    task_vars = {
        "inventory_hostname": "pc1",
        "ansible_connection": "local",
        "ansible_host": "198.51.100.7",
        "powernap_mac": "02:50:4e:00:00:22",
    }
    action = make_action(
        wake_action.ActionModule,
        {"broadcast": "127.0.0.1", "port": port, "repeat": 1, "wait": True, "timeout": 2},
        connection="local",
    )
    result = action.run(task_vars=task_vars)
    assert receiver.recv(2048)[-6:] == bytes.fromhex("02504e000022")
    assert result["failed"] is True and result["confirmed"] is False and result["error"] == "timeout"


def test_wake_of_the_controller_itself_is_up_without_sending():
    action = make_action(wake_action.ActionModule, {}, connection="local")
    result = action.run(task_vars={"inventory_hostname": "localhost", "ansible_connection": "local"})
    assert result["changed"] is False and result["confirmed"] is True


def test_wake_waits_over_the_connection_and_fails_when_it_never_answers(receiver, monkeypatch):
    port = receiver.getsockname()[1]
    args = {"broadcast": "127.0.0.1", "port": port, "repeat": 1, "wait": True, "timeout": 3}
    answers = []  # the host is down for the idempotence probe, then answers TCP
    monkeypatch.setattr(
        probe, "tcp_probe", lambda *a: probe.UP if answers.append(1) or len(answers) > 1 else probe.DOWN
    )
    action = make_action(wake_action.ActionModule, args)
    action._connection.get_option.return_value = 10
    action._execute_module = MagicMock(return_value={"failed": True, "msg": "ping failed"})
    result = action.run(task_vars=host_vars(powernap_mac="02:50:4e:00:00:23"))
    assert result["failed"] is True and result["confirmed"] is False
    assert "Timed out waiting" in result["msg"]
    # Confirmed only by the ping module's answer over the host's connection.
    answers.clear()
    action = make_action(wake_action.ActionModule, args)
    action._connection.get_option.return_value = 10
    action._execute_module = MagicMock(return_value={"ping": "pong"})
    result = action.run(task_vars=host_vars(powernap_mac="02:50:4e:00:00:23"))
    assert result.get("failed") is not True and result["confirmed"] is True and result["changed"] is True
    assert action._execute_module.call_args.kwargs["module_name"] == "ansible.legacy.ping"


def test_wake_of_a_host_that_is_up_confirms_over_its_open_connection(receiver, monkeypatch):
    """An awake host costs one ping over the connection it has: no reconnect (issue 15: wake <= 1.5x ping)."""
    args = {"broadcast": "127.0.0.1", "port": receiver.getsockname()[1], "repeat": 1, "wait": True, "timeout": 3}
    monkeypatch.setattr(probe, "tcp_probe", lambda *a: probe.UP)
    action = make_action(wake_action.ActionModule, args)
    action._connection.get_option.return_value = 10
    action._execute_module = MagicMock(return_value={"ping": "pong"})
    result = action.run(task_vars=host_vars(powernap_mac="02:50:4e:00:00:24"))
    assert result["confirmed"] is True and result["changed"] is False and result["msg"] == "already up"
    assert action._execute_module.call_count == 1 and action._connection.reset.call_count == 0
    # A host that was woken: every try on a new connection (one from before its sleep may hang).
    answers = []
    monkeypatch.setattr(
        probe, "tcp_probe", lambda *a: probe.UP if answers.append(1) or len(answers) > 1 else probe.DOWN
    )
    action = make_action(wake_action.ActionModule, args)
    action._connection.get_option.return_value = 10
    action._execute_module = MagicMock(return_value={"ping": "pong"})
    result = action.run(task_vars=host_vars(powernap_mac="02:50:4e:00:00:24"))
    assert result["confirmed"] is True and result["changed"] is True and action._connection.reset.call_count >= 1


class OnlyTimeoutConnection:
    """The ssh plugin's shape: a ``timeout`` option, no ``connection_timeout``."""

    def __init__(self):
        self.options = {"timeout": 10}

    def get_option(self, name):
        return self.options[name]

    def set_option(self, name, value):
        if name not in self.options:
            raise KeyError(name)
        self.options[name] = value

    def reset(self):
        pass


def test_connect_timeout_falls_back_to_the_ssh_timeout_option():
    action = make_action(wake_action.ActionModule, {})
    action._connection = OnlyTimeoutConnection()
    assert action._set_connect_timeout(4) == ("timeout", 10)
    assert action._connection.options["timeout"] == 4


def test_wake_timeout_is_a_hard_limit_over_bmc_calls(monkeypatch):
    def slow_login(**kwargs):
        time.sleep(4)

    original_init = ipmi.IpmiDriver.__init__

    def init(self, *args, **kwargs):
        kwargs["command_factory"] = slow_login
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(ipmi.IpmiDriver, "__init__", init)
    action = make_action(wake_action.ActionModule, {"method": "ipmi", "timeout": 1, "bmc_timeout": 4})
    started = time.monotonic()
    result = action.run(task_vars=host_vars(powernap_bmc_host="127.0.0.1", ansible_host=None))
    assert time.monotonic() - started < 2.5
    assert result["failed"] is True and result["error"] == "connection"


def test_wake_reports_an_invalid_bmc_host_name():
    result = make_action(wake_action.ActionModule, {"method": "ipmi", "bmc_host": "bmc.\u00e9..x"}).run(
        task_vars=host_vars(ansible_host=None)
    )
    assert result["failed"] is True and result["error"] == "setting"
    assert "bmc_host: invalid host name" in result["msg"] and "Unicode" not in result["msg"]


# -- nap ---------------------------------------------------------------------------------------------


class FakeBmc:
    def __init__(self, state):
        self.state = state
        self.requests = []

    def power_query(self):
        return self.state

    def set_state(self, state, wait_timeout=0.0, check_mode=False):
        before = self.state
        target = "on" if state == "on" else "off"
        request = None if before == target else state
        if request and not check_mode:
            self.requests.append(request)
            self.state = target
        return {"changed": request is not None, "before": before, "after": target, "request": request}

    def chassis_control(self, state):
        self.requests.append(state)
        self.state = "off"


def nap_with(monkeypatch, bmc_state, args, execute=None, answers=False):
    bmc = FakeBmc(bmc_state) if bmc_state else None
    monkeypatch.setattr(nap_action.ActionModule, "_bmc", lambda self, params: bmc)
    monkeypatch.setattr(probe, "tcp_probe", lambda *a: probe.UP if answers else probe.DOWN)
    action = make_action(nap_action.ActionModule, dict(args, delay=0))
    if execute is not None:
        action._execute_module = MagicMock(side_effect=execute)
    extra = {"powernap_bmc_host": "198.19.0.11"} if bmc_state else {}
    return action.run(task_vars=host_vars(ansible_host="192.0.2.50", **extra)), bmc


def test_nap_of_an_unreachable_host_is_success_only_when_the_bmc_says_off(monkeypatch):
    unreachable = AnsibleConnectionFailure("ssh: connect to host: No route to host")
    result, _bmc = nap_with(monkeypatch, "off", {"state": "suspend"}, execute=unreachable)
    assert result.get("failed") is not True and result["changed"] is False
    assert result["confirmed_down"] is True and result["bmc_power"] == "off"
    result, _bmc = nap_with(monkeypatch, "on", {"state": "suspend"}, execute=unreachable)
    assert result["failed"] is True and result["changed"] is False and "nothing confirms" in result["msg"]
    result, _bmc = nap_with(monkeypatch, None, {"state": "poweroff"}, execute=unreachable)
    assert result["failed"] is True and result["changed"] is False and "no BMC" in result["msg"]


def test_nap_of_an_already_off_host_over_ipmi_changes_nothing(monkeypatch):
    result, bmc = nap_with(monkeypatch, "off", {"state": "poweroff", "via": "ipmi"})
    assert result.get("failed") is not True and result["changed"] is False and result["confirmed_down"] is True
    assert bmc.requests == []
    result, bmc = nap_with(monkeypatch, "on", {"state": "poweroff", "via": "ipmi"})
    assert result["changed"] is True and result["confirmed_down"] is True and bmc.requests == ["shutdown"]


def test_nap_refuses_only_the_controller_among_loopback_hosts(monkeypatch):
    bmc = FakeBmc("on")
    monkeypatch.setattr(nap_action.ActionModule, "_bmc", lambda self, params: bmc)
    monkeypatch.setattr(probe, "tcp_probe", lambda *a: probe.UP)
    monkeypatch.setattr(nap_action, "read_machine_id", lambda: "c" * 32)
    args = {"state": "poweroff", "via": "ipmi", "timeout": 5}
    task_vars = host_vars(ansible_host="127.0.0.1", ansible_port=2222, powernap_bmc_host="127.0.0.1")
    # A port-forwarded VM: another machine-id, so it is napped through its own BMC.
    action = make_action(nap_action.ActionModule, args)
    action._execute_module = MagicMock(return_value={"content": "dm0xCg=="})  # "vm1"
    result = action.run(task_vars=task_vars)
    assert result.get("failed") is not True, result
    assert result["changed"] is True and bmc.requests == ["shutdown"]
    # The controller itself (its own machine-id over the connection) is refused, and nothing is sent.
    bmc.state, bmc.requests = "on", []
    action = make_action(nap_action.ActionModule, args)
    action._execute_module = MagicMock(return_value={"content": "Y2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2MK"})
    result = action.run(task_vars=task_vars)
    assert result["failed"] is True and "controller itself" in result["msg"] and bmc.requests == []
    # A local connection is the controller.
    action = make_action(nap_action.ActionModule, {"state": "suspend"}, connection="local")
    result = action.run(task_vars=host_vars(ansible_connection="local"))
    assert result["failed"] is True and "controller itself" in result["msg"]


def test_nap_timeout_is_a_hard_limit(monkeypatch):
    class SlowBmc(FakeBmc):
        def power_query(self):
            time.sleep(0.2)
            return "on"

    bmc = SlowBmc("on")
    monkeypatch.setattr(nap_action.ActionModule, "_bmc", lambda self, params: bmc)
    monkeypatch.setattr(probe, "tcp_probe", lambda *a: probe.DOWN)
    started = time.monotonic()
    action = make_action(nap_action.ActionModule, {"state": "poweroff", "via": "ipmi", "timeout": 2})
    result = action.run(task_vars=host_vars(ansible_host="192.0.2.50", powernap_bmc_host="198.19.0.11"))
    assert time.monotonic() - started < 3.5
    assert result["failed"] is True and result["confirmed_down"] is False
