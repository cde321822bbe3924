# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine module on a scratch root: install, idempotence, check mode, masked diffs, and its RETURN.

Here (controller context) rather than under modules/: its RETURN check is test_return_docs's."""

import io
import json
import os
import tarfile

import pytest
from ansible.module_utils import basic

from ansible_collections.powernap.fleet.plugins.module_utils.engine import mask_ini
from ansible_collections.powernap.fleet.plugins.module_utils.nic_wol import mask_rule
from ansible_collections.powernap.fleet.plugins.modules import engine
from ansible_collections.powernap.fleet.tests.unit.plugins.action.test_return_docs import check_against, returns
from ansible_collections.powernap.fleet.tests.unit.plugins.modules.utils import patch_module_args

UNIT = "[Service]\nExecStart=/usr/bin/python3 -m powernap daemon\n"
CONFIG = "[powernap]\ninterval = 1s\n\n[server]\nurl = udp://127.0.0.1:7490\ntoken = tok-old-5f1c\n"
ETHTOOL_OUT = "Settings for eth0:\n\tSupports Wake-on: pumbgs\n\tWake-on: %s\n"
SOPASS_OUT = "\tSecureOn password: %s\n"


class FakeHost:
    """The commands the module runs, answered like a Debian host with systemd and a WoL-capable eth0."""

    def __init__(self):
        self.calls = []
        self.wol = "d"
        self.sopass = None
        self.enabled = False
        self.active = False
        self.reject = None
        self.psycopg = False
        self.commands = {"ethtool": "/usr/sbin/ethtool", "systemctl": "/usr/bin/systemctl"}

    def run_command(self, argv, **kwargs):
        self.calls.append(list(argv))
        name = os.path.basename(argv[0])
        if argv[1:] == ["-c", "import psycopg"]:
            return (0, "", "") if self.psycopg else (1, "", "ModuleNotFoundError: No module named 'psycopg'")
        if argv[1:2] == ["-c"]:
            return 0, "3.11\n", ""
        if argv[1:4] == ["-m", "powernap", "check-config"]:
            return (1, "%s:5: [server] token: refused\n" % argv[-1], "") if self.reject else (0, "", "")
        if name == "ethtool":
            if argv[1] == "-s":
                self.wol = argv[4]
                self.sopass = argv[6] if len(argv) > 6 else None
                return 0, "", ""
            return 0, ETHTOOL_OUT % self.wol + (SOPASS_OUT % self.sopass if self.sopass else ""), ""
        if name == "systemctl":
            verb = argv[1]
            if verb == "show":
                states = ("enabled" if self.enabled else "disabled", "active" if self.active else "inactive")
                return 0, "UnitFileState=%s\nActiveState=%s\n" % states, ""
            if verb in ("enable", "disable"):
                self.enabled = verb == "enable"
            if verb in ("start", "restart", "reload"):
                self.active = True
            if verb == "stop":
                self.active = False
            return 0, "", ""
        raise AssertionError("unexpected command %s" % argv)


@pytest.fixture
def host(tmp_path, monkeypatch):
    fake = FakeHost()
    monkeypatch.setattr(engine, "ROOT", str(tmp_path))
    monkeypatch.setattr(basic.AnsibleModule, "run_command", lambda self, argv, **kw: fake.run_command(argv, **kw))
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path", lambda self, name, *a, **kw: fake.commands.get(name))
    net = tmp_path / "sys" / "class" / "net" / "eth0"
    net.mkdir(parents=True)
    (net / "type").write_text("1\n")
    (net / "address").write_text("02:50:4E:00:00:01\n")
    archive = tmp_path / "engine.tar.gz"
    with tarfile.open(str(archive), "w:gz") as bundle:
        for name, content in (("powernap/__init__.py", b""), ("bin/powernap", b"#!/bin/sh\nexec python3\n")):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            bundle.addfile(info, io.BytesIO(content))
    fake.archive = str(archive)
    fake.root = tmp_path
    ethtool = tmp_path / "usr/sbin/ethtool"  # the package's, where the udev rule runs it
    ethtool.parent.mkdir(parents=True)
    ethtool.write_text("#!/bin/sh\n")
    ethtool.chmod(0o755)
    return fake


LIST_ENTRY = {"name": "old", "verdict": "deny", "match": {"kernel": "*"}, "actions": ["hibernate"], "reason": "no swap"}


def run(capsys, **args):
    base = {"config": CONFIG, "digest": "d" * 64, "unit": UNIT, "secret_options": ["token", "password", "secureon"]}
    base.update(args)
    with patch_module_args(base), pytest.raises(SystemExit):
        engine.main()
    return json.loads(capsys.readouterr().out)


def test_mask_ini_and_mask_rule_hide_values_only():
    text = "[server]\ntoken = abc\nurl = udp://x\n  password=pw\nempty =\n"
    masked = mask_ini(text, {"token", "password", "empty"})
    assert masked == "[server]\ntoken = ********\nurl = udp://x\n  password=********\nempty =\n"
    rule = 'RUN+="/usr/sbin/ethtool -s $name wol gs sopass 01:02:03:04:05:06"\n'
    assert mask_rule(rule) == 'RUN+="/usr/sbin/ethtool -s $name wol gs sopass ********"\n'


def test_install_then_nothing_to_do(capsys, host):
    first = run(capsys)
    assert first["archive_needed"] and not first["changed"]
    assert not (host.root / "usr/local").exists(), "nothing may change before the archive is there"
    installed = run(capsys, archive=host.archive, secureon="01:02:03:04:05:06", _ansible_diff=True)
    assert installed["changed"] and installed["release_changed"] and installed["config_changed"]
    release = host.root / "usr/local/lib/powernap/releases" / installed["release"]
    assert (release / "bin/powernap").read_text().startswith("#!/usr/bin/python3\n")
    assert os.readlink(str(host.root / "usr/local/lib/powernap/current")) == "releases/" + installed["release"]
    assert oct(os.stat(str(host.root / "etc/powernap/powernap.conf")).st_mode & 0o777) == "0o600"
    assert installed["service"] == {"enabled": True, "active": True, "action": "start"}
    assert host.wol == "gs" and installed["ansible_facts"]["powernap_wol_macs"] == ["02:50:4e:00:00:01"]
    shown = json.dumps(installed["diff"])
    assert "tok-old-5f1c" not in shown and "01:02:03:04:05:06" not in shown and "********" in shown
    again = run(capsys, secureon="01:02:03:04:05:06")
    assert not again["changed"] and not again["release_changed"] and "service" in again
    assert "action" not in again["service"]


def test_removing_secrets_masks_the_old_values_in_the_diff(capsys, host):
    run(capsys, archive=host.archive, secureon="01:02:03:04:05:06")
    plain = "[powernap]\ninterval = 1s\n"
    result = run(capsys, config=plain, _ansible_diff=True)
    shown = json.dumps(result["diff"])
    assert result["config_changed"] and result["service"]["action"] == "reload"
    assert "tok-old-5f1c" not in shown and "01:02:03:04:05:06" not in shown, shown
    assert "token = ********" in shown and "sopass ********" in shown


def test_a_rejected_config_leaves_the_live_one(capsys, host):
    run(capsys, archive=host.archive)
    host.reject = True
    result = run(capsys, config=CONFIG.replace("tok-old", "tok-new"))
    assert result["failed"] and result["config_errors"] == ["/etc/powernap/powernap.conf:5: [server] token: refused"]
    assert "tok-old" in (host.root / "etc/powernap/powernap.conf").read_text()


def test_the_hardware_list_is_validated_written_and_removed(capsys, host):
    run(capsys, archive=host.archive)
    host.reject = True
    refused = run(capsys, hardware_list="fleet", hardware_entries=[LIST_ENTRY])
    assert refused["failed"] and refused["config_errors"][0].startswith("/etc/powernap/hardware.d/fleet.conf:5:")
    host.reject = False
    written = run(capsys, hardware_list="fleet", hardware_entries=[LIST_ENTRY])
    assert written["hardware_changed"] and written["service"]["action"] == "reload"
    assert "[deny.old]" in (host.root / "etc/powernap/hardware.d/fleet.conf").read_text()
    assert not run(capsys, hardware_list="fleet", hardware_entries=[LIST_ENTRY])["changed"]
    removed = run(capsys, hardware_list="fleet")
    assert removed["hardware_changed"] and not (host.root / "etc/powernap/hardware.d/fleet.conf").exists()


def test_check_mode_on_a_fresh_host_changes_nothing(capsys, host):
    result = run(capsys, _ansible_check_mode=True)
    assert result["changed"] and not result["engine_ready"] and result["release_changed"]
    assert "checked_on" not in result  # the action plugin checks it on the controller
    assert not (host.root / "usr/local").exists() and not (host.root / "etc").exists()
    assert not any(call[0] == "systemctl" and call[1] in ("start", "enable") for call in host.calls)


def test_engine_returns_what_its_return_documents(capsys, host, monkeypatch):
    doc = returns(engine)
    results = [
        run(capsys),
        run(capsys, archive=host.archive, secureon="01:02:03:04:05:06", _ansible_diff=True),
        run(capsys, remove_server=True, service_state="stopped", service_enabled=False),
        run(capsys, _ansible_check_mode=True, config="[powernap]\n"),
    ]
    host.reject = True
    results.append(run(capsys, config="[powernap]\nbad = 1\n"))
    results.append(run(capsys, hardware_list="fleet", hardware_entries=[LIST_ENTRY]))
    host.reject = False
    results.append(run(capsys, hardware_list="fleet", hardware_entries=[LIST_ENTRY], _ansible_diff=True))
    host.commands["apt-get"] = "/usr/bin/apt-get"
    (host.root / "usr/sbin/ethtool").unlink()
    results.append(run(capsys, install_packages=True))
    assert results[-1]["package_manager"] == "apt" and results[-1]["missing_packages"] == ["ethtool"]
    monkeypatch.setattr(engine, "resolve_python", lambda module, wanted: ("", (3, 6)))
    results.append(run(capsys, install_packages=False))
    assert any(r.get("failed") for r in results) and any(r.get("archive_needed") for r in results)
    for index, result in enumerate(results):
        result.pop("invocation", None)
        check_against(result, doc, "engine[%d]" % index, always=not result.get("archive_needed"))


def test_a_postgresql_store_asks_for_psycopg_only_where_the_engines_python_lacks_it(capsys, host):
    """psycopg 3 is the one package a PostgreSQL-backed server adds; a host that imports it installs nothing."""
    host.commands["apt-get"] = "/usr/bin/apt-get"
    result = run(capsys, install_packages=True, psycopg=True)
    assert result["package_manager"] == "apt" and result["missing_packages"] == ["python3-psycopg"]
    host.psycopg = True
    result = run(capsys, install_packages=True, psycopg=True)
    assert result["missing_packages"] == [] and "package_manager" not in result
    host.psycopg = False
    result = run(capsys, install_packages=True, psycopg=False)
    assert result["missing_packages"] == []


def _recording_action(args, engine_answer):
    """The engine action with its module calls recorded: (action, calls).  apt answers changed; the engine module
    answers ``engine_answer(number of calls so far, module_args)``."""
    from ansible_collections.powernap.fleet.plugins.action import engine as engine_action
    from ansible_collections.powernap.fleet.tests.unit.plugins.action.test_return_docs import make_action

    action = make_action(engine_action.ActionModule, dict({"config": CONFIG, "install_packages": True}, **args))
    action._task.check_mode = False
    calls = []

    def execute(module_name, module_args, task_vars):
        calls.append((module_name, dict(module_args)))
        if module_name == "ansible.legacy.apt":
            return {"changed": True}
        return engine_answer(len(calls), module_args)

    action._execute_module = execute
    action._remove_tmp_path = lambda path: None
    return action, calls


def test_the_action_installs_what_the_module_found_missing_then_converges(monkeypatch):
    """A host without ethtool: the package module installs it, then the engine module runs once more."""

    def engine_answer(count, module_args):
        if count == 1:
            return {"changed": False, "missing_packages": ["ethtool"], "package_manager": "apt"}
        return {"changed": False, "engine_ready": True, "missing_packages": [], "release": "r"}

    action, calls = _recording_action({}, engine_answer)
    result = action.run(task_vars={"inventory_hostname": "h1"})
    assert [name for name, _args in calls] == ["powernap.fleet.engine", "ansible.legacy.apt", "powernap.fleet.engine"]
    assert calls[1][1] == {"name": ["ethtool"], "state": "present", "update_cache": True, "cache_valid_time": 3600}
    assert result["changed"] is True and result["missing_packages"] == ["ethtool"] and "package_manager" not in result
    assert "token = ********" in result["config"] and "tok-old" not in result["config"]


def test_a_fresh_host_still_reports_the_packages_installed_before_the_engine(monkeypatch):
    """A fresh server host without psycopg: apt, the module again (archive needed), then the archive run.

    The last run finds nothing missing; the task still says what it installed (the module's documented
    missing_packages), not that last run's [].
    """
    from ansible_collections.powernap.fleet.plugins.action import engine as engine_action

    def engine_answer(count, module_args):
        if count == 1:
            return {"changed": False, "missing_packages": ["python3-psycopg"], "package_manager": "apt"}
        if "archive" not in module_args:
            return {"changed": False, "archive_needed": True, "missing_packages": []}
        return {"changed": True, "engine_ready": True, "missing_packages": [], "release": "r"}

    action, calls = _recording_action({"psycopg": True}, engine_answer)
    action._transfer_file = lambda local, remote: remote
    action._fixup_perms2 = lambda paths: None
    monkeypatch.setattr(engine_action, "archive_path", lambda manifest: "/nonexistent/engine.tar.gz")
    result = action.run(task_vars={"inventory_hostname": "h1"})
    names = [name for name, _args in calls]
    assert names == ["powernap.fleet.engine", "ansible.legacy.apt", "powernap.fleet.engine", "powernap.fleet.engine"]
    assert calls[1][1]["name"] == ["python3-psycopg"] and "archive" in calls[3][1]
    assert result["changed"] is True and result["missing_packages"] == ["python3-psycopg"], result
    assert "archive_needed" not in result and "package_manager" not in result


def test_a_bad_secureon_fails_before_any_change_and_is_not_echoed(capsys, host):
    result = run(capsys, archive=host.archive, secureon="zz:11:22:33:44:55")
    assert result["failed"] and result["msg"].startswith("secureon: invalid SecureOn password")
    assert "zz:11" not in json.dumps(result)
    assert not (host.root / "usr/local").exists() and not (host.root / "etc").exists()
