# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every key a module (with its action plugin) returns is in its RETURN, and every ``returned: always`` key is
returned.  Each module runs through the scenarios that produce its different result shapes."""

import json
import socket
from unittest.mock import MagicMock

import pytest
import yaml
from ansible.errors import AnsibleConnectionFailure

from ansible_collections.powernap.fleet.plugins.action import nap as nap_action
from ansible_collections.powernap.fleet.plugins.action import wake as wake_action
from ansible_collections.powernap.fleet.plugins.module_utils import engine, ipmi, probe
from ansible_collections.powernap.fleet.plugins.module_utils.power import PowerError
from ansible_collections.powernap.fleet.plugins.modules import hwlist, nap, power_info, wake
from ansible_collections.powernap.fleet.tests.unit.plugins.modules.utils import patch_module_args

# Keys Ansible itself defines for every result (not documented in RETURN by convention).
COMMON_KEYS = {"changed", "failed", "msg", "invocation", "warnings", "deprecations", "skipped", "diff"}
# AnsibleModule.exit_json adds the file's attributes to any result with a ``path`` that exists.
PATH_INFO_KEYS = {"uid", "gid", "owner", "group", "mode", "state", "size", "secontext"}


def check_against(result, doc, where, always=True, common=None):
    common = COMMON_KEYS if common is None else common
    extra = set(result) - set(doc) - common
    assert not extra, "%s returns undocumented key(s) %s: %s" % (where, sorted(extra), result)
    if always and not result.get("failed"):
        always = {key for key, spec in doc.items() if spec.get("returned") == "always"}
        missing = always - set(result)
        assert not missing, "%s lacks 'returned: always' key(s) %s: %s" % (where, sorted(missing), result)
    for key, spec in doc.items():
        value = result.get(key)
        if "contains" not in spec or value is None:
            continue
        for index, item in enumerate(value if isinstance(value, list) else [value]):
            check_against(item, spec["contains"], "%s.%s[%d]" % (where, key, index), always, common)


def returns(module):
    return yaml.safe_load(module.RETURN)


def run_main(capsys, main, args):
    with patch_module_args(args), pytest.raises(SystemExit):
        main()
    return json.loads(capsys.readouterr().out)


def make_action(cls, args, connection="ssh", delegate_to=None):
    from ansible.parsing.dataloader import DataLoader
    from ansible.playbook.play_context import PlayContext
    from ansible.template import Templar

    task = MagicMock(args=args, delegate_to=delegate_to, check_mode=False, async_val=0, diff=False)
    context = PlayContext()
    context.connection = connection
    loader = DataLoader()
    return cls(task, MagicMock(), context, loader, Templar(loader=loader), shared_loader_obj=None)


@pytest.fixture
def receiver():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


class FakeBmc:
    name = "ipmi"

    def __init__(self, state):
        self.state = state

    def power_query(self):
        return self.state

    def set_state(self, state, wait_timeout=0.0, check_mode=False):
        before, self.state = self.state, ("on" if state == "on" else "off")
        request = None if before == self.state else state
        return {"changed": request is not None, "before": before, "after": self.state, "request": request}

    def chassis_control(self, state):
        self.state = "off" if state in ("off", "shutdown") else "on"


def test_wake_returns_what_its_return_documents(capsys, receiver, monkeypatch):
    doc = returns(wake)
    wol = {"broadcast": "127.0.0.1", "port": receiver, "repeat": 1}
    monkeypatch.setattr(probe, "tcp_probe", lambda *args: probe.DOWN)
    results = [
        run_main(capsys, wake.main, dict(wol, mac="02:50:4e:00:00:41")),
        run_main(capsys, wake.main, dict(wol, mac="02:50:4e:00:00:41", _ansible_check_mode=True)),
        run_main(capsys, wake.main, dict(wol, targets=[{"name": "a", "mac": "02:50:4e:00:00:42"}, {"name": "b"}])),
    ]
    monkeypatch.setattr(probe, "probe", lambda *args: probe.DOWN)
    results.append(
        run_main(capsys, wake.main, dict(wol, mac="02:50:4e:00:00:43", address="127.0.0.1", wait=True, timeout=1))
    )
    # BMC paths: powered on, on with nothing to probe, asleep (on but silent), escalation.
    bmcs = {"bmc-off": "off", "bmc-on": "on"}
    monkeypatch.setattr(ipmi, "HAS_PYGHMI", True)
    monkeypatch.setattr(wake.wake, "IpmiDriver", lambda host, *args, **kwargs: FakeBmc(bmcs[host]))
    results.append(run_main(capsys, wake.main, {"bmc_host": "bmc-off"}))
    results.append(run_main(capsys, wake.main, {"bmc_host": "bmc-on"}))
    asleep = dict(wol, bmc_host="bmc-on", mac="02:50:4e:00:00:44", address="h", escalate=False)
    results.append(run_main(capsys, wake.main, asleep))
    results.append(
        run_main(
            capsys,
            wake.main,
            dict(wol, method="wol", bmc_host="bmc-on", mac="02:50:4e:00:00:45", address="h", escalate_after=0.0),
        )
    )
    assert any(r.get("escalated") for r in results) and any(r.get("suspended") for r in results)
    # The action plugin's own keys: a relay/delegate, a confirmation over the connection.
    action = make_action(wake_action.ActionModule, {"wait": True, "timeout": 2}, delegate_to="h9")
    action._execute_module = MagicMock(return_value={"changed": True, "woken_by": "wol", "method": "wol"})
    results.append(action.run(task_vars={"inventory_hostname": "h1", "powernap_mac": "02:50:4e:00:00:46"}))
    assert results[-1]["relay"] == "h9"
    for index, result in enumerate(results):
        check_against(result, doc, "wake scenario %d" % index)


def test_nap_returns_what_its_return_documents(capsys, monkeypatch, tmp_path):
    doc = returns(nap)
    status = {"state": "awake", "powersave": {"active": False}, "verdict": {"allowed_actions": ["suspend"]}}
    monkeypatch.setattr(nap, "find_engine", lambda module: ["powernap"])
    monkeypatch.setattr(engine.EngineCli, "status", lambda self: status)
    monkeypatch.setattr(engine.EngineCli, "now", lambda self, action: None)
    monkeypatch.setattr(nap, "set_rtc_alarm", lambda epoch: None)
    monkeypatch.setattr(nap, "schedule_detached", lambda module, argv, delay: "systemd-run unit powernap-nap-1")
    results = [
        run_main(capsys, nap.main, {"state": "suspend", "wake_after": "1h"}),
        run_main(capsys, nap.main, {"state": "powersave"}),
        run_main(capsys, nap.main, {"state": "awake"}),
        run_main(capsys, nap.main, {"state": "hibernate"}),
    ]
    for index, result in enumerate(results):
        # The module alone: the action plugin adds `elapsed` (checked with the action results below).
        check_against(result, doc, "nap module scenario %d" % index, always=False)
    results = []
    # The action plugin: IPMI, engine with confirmation, unreachable.
    bmc = FakeBmc("on")
    monkeypatch.setattr(nap_action.ActionModule, "_bmc", lambda self, params: bmc)
    task_vars = {"inventory_hostname": "h1", "ansible_host": "192.0.2.50", "powernap_bmc_host": "198.19.0.11"}
    monkeypatch.setattr(probe, "tcp_probe", lambda *args: probe.DOWN)
    results.append(make_action(nap_action.ActionModule, {"state": "poweroff", "via": "ipmi"}).run(task_vars=task_vars))
    results.append(make_action(nap_action.ActionModule, {"state": "awake", "via": "ipmi"}).run(task_vars=task_vars))
    action = make_action(nap_action.ActionModule, {"state": "poweroff", "via": "engine", "delay": 0})
    bmc.state = "off"
    action._execute_module = MagicMock(side_effect=AnsibleConnectionFailure("no route"))
    results.append(action.run(task_vars=task_vars))
    action = make_action(nap_action.ActionModule, {"state": "suspend", "via": "engine", "delay": 0})
    action._execute_module = MagicMock(return_value=dict(results[0], invocation={}))
    results.append(action.run(task_vars=task_vars))
    assert results[-1]["confirmed_down"] is True and results[1]["bmc_power"] == "on"
    for index, result in enumerate(results):
        check_against(result, doc, "nap scenario %d" % index)


def test_power_info_returns_what_its_return_documents(capsys, monkeypatch):
    doc = returns(power_info)
    monkeypatch.setattr(power_info, "find_engine", lambda module: None)
    results = [run_main(capsys, power_info.main, {})]
    engine_status = {
        "host": "web1",
        "state": "awake",
        "idle_seconds": 3.0,
        "stage": None,
        "next_action": None,
        "powersave": {"active": False},
        "version": "0.1.0",
        "platform": {"kind": "vm", "virt": "kvm", "nics": []},
        "verdict": {"allowed_actions": ["suspend"]},
    }
    monkeypatch.setattr(power_info, "find_engine", lambda module: ["powernap"])
    monkeypatch.setattr(power_info.EngineCli, "status", lambda self: engine_status)
    results.append(run_main(capsys, power_info.main, {"server_url": "http://127.0.0.1:9", "server_timeout": 0.5}))

    def refused(self):
        raise PowerError("the daemon is not running")

    monkeypatch.setattr(power_info.EngineCli, "status", refused)
    monkeypatch.setattr(power_info.EngineCli, "hwinfo", lambda self: {"platform": {"kind": "vm"}, "verdict": {}})
    results.append(run_main(capsys, power_info.main, {}))
    assert results[1]["engine"]["running"] is True and results[2]["engine"]["running"] is False
    for index, result in enumerate(results):
        check_against(result, doc, "power_info scenario %d" % index)


def test_hwlist_returns_what_its_return_documents(capsys, monkeypatch, tmp_path):
    doc = returns(hwlist)
    monkeypatch.setattr(hwlist, "find_engine", lambda module: ["powernap"])
    monkeypatch.setattr(hwlist.EngineCli, "hwinfo", lambda self: {"verdict": {"allowed_actions": []}})
    problems = []
    monkeypatch.setattr(hwlist.EngineCli, "check_hardware", lambda self, path: "; ".join(problems))
    path = str(tmp_path / "site.conf")
    entry = {"name": "x", "match": {"pci": "10de:*"}, "actions": ["suspend"], "reason": "hangs"}
    results = [
        run_main(capsys, hwlist.main, {"path": path, "entries": [entry]}),
        run_main(capsys, hwlist.main, {"path": path, "entries": [entry], "_ansible_diff": True}),
    ]
    problems.append("site.conf:3: unknown match key")
    results.append(run_main(capsys, hwlist.main, {"path": path, "entries": [dict(entry, name="y")]}))
    # Refused by the engine: nothing written, so nothing changed.
    assert results[-1]["failed"] is True and results[-1]["changed"] is False
    assert results[-1]["entries"] == ["deny.x"]
    problems.clear()
    results.append(run_main(capsys, hwlist.main, {"path": path, "state": "absent"}))
    assert results[-1]["failed"] is True and "remove_list" in results[-1]["msg"]
    results.append(run_main(capsys, hwlist.main, {"path": path, "state": "absent", "remove_list": True}))
    assert results[-1]["changed"] is True and results[-1]["entries"] == []
    for index, result in enumerate(results):
        check_against(result, doc, "hwlist scenario %d" % index, common=COMMON_KEYS | PATH_INFO_KEYS)
