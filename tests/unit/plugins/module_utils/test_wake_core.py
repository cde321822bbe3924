# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
import socket

import pytest

from ansible_collections.powernap.fleet.plugins.module_utils import ipmi, probe, wake
from ansible_collections.powernap.fleet.plugins.module_utils.action_helpers import (
    fill_from_inventory,
    strip_secrets,
    target_from_host,
)


@pytest.fixture
def receiver():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    yield sock
    sock.close()


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


def test_batch_sends_one_packet_per_target_and_reports_each(receiver):
    port = receiver.getsockname()[1]
    targets = [{"name": "h%d" % i, "mac": "02:50:4e:00:01:%02x" % i} for i in range(50)]
    targets.append({"name": "broken", "mac": "nonsense"})
    results = wake.wake_targets(targets, {"broadcast": "127.0.0.1", "port": port}, repeat=1)
    received = set()
    for _attempt in range(50):
        received.add(receiver.recv(2048))
    assert len(received) == 50
    assert [r["woken_by"] for r in results[:50]] == ["wol"] * 50
    assert results[50]["failed"] and results[50]["error"] == "setting"
    summary = wake.summarize(results)
    assert summary["total"] == 51 and summary["by_wol"] == 50 and summary["failed"] == 1


def test_host_that_answers_is_left_alone(receiver, listener):
    port = receiver.getsockname()[1]
    target = {"name": "up", "mac": "02:50:4e:00:00:01", "address": "127.0.0.1", "ssh_port": listener}
    (result,) = wake.wake_targets([target], {"broadcast": "127.0.0.1", "port": port})
    assert result["changed"] is False and result["confirmed"] is True and result["msg"] == "already up"
    receiver.settimeout(0.3)
    with pytest.raises(socket.timeout):
        receiver.recv(2048)


def test_check_mode_sends_nothing(receiver):
    port = receiver.getsockname()[1]
    (result,) = wake.wake_targets(
        [{"mac": "02:50:4e:00:00:02"}], {"broadcast": "127.0.0.1", "port": port}, check_mode=True
    )
    assert result["changed"] is True and "would wake by wol" in result["msg"]
    receiver.settimeout(0.3)
    with pytest.raises(socket.timeout):
        receiver.recv(2048)


def test_method_needs_its_data():
    results = wake.wake_targets([{"name": "a", "method": "ipmi", "mac": "02:50:4e:00:00:03"}, {"name": "b"}])
    assert "no BMC known" in results[0]["msg"]
    assert "no MAC address known" in results[1]["msg"]


def test_auto_prefers_the_bmc_and_adds_wol_when_it_reports_on(receiver, monkeypatch):
    port = receiver.getsockname()[1]
    states = {"bmc-off": "off", "bmc-on": "on"}

    def fake_set_state(self, state, wait_timeout=0.0, check_mode=False):
        before = states[self.host]
        return {"changed": before != "on", "before": before, "after": "on", "request": "on" if before != "on" else None}

    monkeypatch.setattr(ipmi.IpmiDriver, "set_state", fake_set_state)
    monkeypatch.setattr(ipmi, "HAS_PYGHMI", True)
    # The "asleep" host has an address that does not answer (a suspended host answers nothing).
    monkeypatch.setattr(wake.probe, "tcp_probe", lambda *args: wake.probe.DOWN)
    targets = [
        {"name": "off", "bmc_host": "bmc-off", "mac": "02:50:4e:00:00:04"},
        {"name": "asleep", "bmc_host": "bmc-on", "mac": "02:50:4e:00:00:05", "address": "127.0.0.1"},
    ]
    results = wake.wake_targets(targets, {"broadcast": "127.0.0.1", "port": port}, repeat=1, escalate=False)
    assert results[0]["woken_by"] == "ipmi" and results[0]["method"] == "ipmi"
    assert results[1]["woken_by"] == "wol" and results[1]["suspended"] is True
    assert receiver.recv(2048)[-6:] == bytes.fromhex("02504e000005")


def test_bmc_power_on_with_no_address_to_probe_is_up(receiver, monkeypatch):
    """As ipmi_power: the BMC's "on" is the host's state when nothing can be probed; a rerun changes nothing."""
    port = receiver.getsockname()[1]
    requests = []

    def fake_set_state(self, state, wait_timeout=0.0, check_mode=False):
        requests.append(state)
        return {"changed": False, "before": "on", "after": "on", "request": None}

    monkeypatch.setattr(ipmi.IpmiDriver, "set_state", fake_set_state)
    monkeypatch.setattr(ipmi, "HAS_PYGHMI", True)
    (result,) = wake.wake_targets(
        [{"name": "on", "bmc_host": "bmc-on", "mac": "02:50:4e:00:00:06"}],
        {"broadcast": "127.0.0.1", "port": port},
        wait=True,
        timeout=5,
    )
    assert result["failed"] is False and result["changed"] is False
    assert result["confirmed"] is True and result["bmc_power"] == "on" and result["woken_by"] is None
    assert requests == ["on"]
    receiver.settimeout(0.3)
    with pytest.raises(socket.timeout):
        receiver.recv(2048)


def test_inventory_variables_fill_unset_options_only():
    host_vars = {
        "powernap_mac": "02:50:4e:00:00:09",
        "powernap_bmc_host": "198.19.0.19",
        "powernap_bmc_password": "s3cret",
        "powernap_wol_port": 7,
        "ansible_host": "198.18.0.19",
        "ansible_port": 2222,
    }
    filled = fill_from_inventory({"port": 9, "mac": None}, host_vars, "h9")
    assert filled["port"] == 9
    assert filled["mac"] == "02:50:4e:00:00:09"
    assert filled["bmc_host"] == "198.19.0.19"
    assert filled["address"] == "198.18.0.19" and filled["ssh_port"] == 2222
    target = target_from_host("h9", host_vars)
    assert target["name"] == "h9" and target["port"] == 7 and "relay" not in target


def test_secrets_are_stripped_from_results():
    cleaned = strip_secrets(
        {"a": 1, "bmc_password": "x", "results": [{"secureon": "y", "b": 2}]}, {"bmc_password", "secureon"}
    )
    assert cleaned == {"a": 1, "results": [{"b": 2}]}


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += max(seconds, 0.01)


def test_wait_confirms_only_a_target_that_answers(receiver, monkeypatch):
    """The confirmation loop: a target is confirmed when -- and only when -- its probe answers."""
    port = receiver.getsockname()[1]
    clock = FakeClock()
    answers = {"silent": [], "late": []}

    def fake_probe(method, host, port, timeout, interface=None):
        name = "late" if host == "127.0.0.2" else "silent"
        answers[name].append(clock())
        return probe.UP if name == "late" and len(answers["late"]) >= 3 else probe.DOWN

    monkeypatch.setattr(probe, "tcp_probe", lambda *args: probe.DOWN)
    monkeypatch.setattr(probe, "probe", fake_probe)
    targets = [
        {"name": "silent", "mac": "02:50:4e:00:00:31", "address": "127.0.0.1"},
        {"name": "late", "mac": "02:50:4e:00:00:32", "address": "127.0.0.2"},
    ]
    silent, late = wake.wake_targets(
        targets,
        {"broadcast": "127.0.0.1", "port": port},
        repeat=1,
        wait=True,
        timeout=60,
        clock=clock,
        sleep=clock.sleep,
    )
    assert late["confirmed"] is True and late["failed"] is False and late["elapsed"] == round(answers["late"][2], 3)
    assert silent["confirmed"] is False and silent["failed"] is True and silent["error"] == "timeout"
    assert len(answers["silent"]) > 3 and max(answers["silent"]) < 60  # kept trying, within the timeout
    assert wake.summarize([silent, late])["confirmed"] == 1


def test_without_wait_nothing_is_confirmed(receiver, monkeypatch):
    port = receiver.getsockname()[1]
    monkeypatch.setattr(probe, "tcp_probe", lambda *args: probe.DOWN)
    monkeypatch.setattr(probe, "probe", lambda *args: probe.UP)
    (result,) = wake.wake_targets(
        [{"mac": "02:50:4e:00:00:33", "address": "127.0.0.1"}], {"broadcast": "127.0.0.1", "port": port}, repeat=1
    )
    assert result["changed"] is True and "confirmed" not in result


def test_ipmi_wake_with_no_address_is_confirmed_by_the_bmc_only(monkeypatch):
    clock = FakeClock()
    polls = []

    class Bmc(ipmi.IpmiDriver):
        def set_state(self, state, wait_timeout=0.0, check_mode=False):
            return {"changed": True, "before": "off", "after": "on", "request": "on"}

        def power_query(self):
            polls.append(clock())
            return "on" if len(polls) >= 2 else "off"

    monkeypatch.setattr(wake, "IpmiDriver", lambda *args, **kwargs: Bmc(*args, command_factory=object, **kwargs))
    (result,) = wake.wake_targets(
        [{"name": "b", "bmc_host": "bmc-b"}], wait=True, timeout=30, clock=clock, sleep=clock.sleep
    )
    assert result["woken_by"] == "ipmi" and result["confirmed"] is True and len(polls) == 2
    polls.clear()
    monkeypatch.setattr(Bmc, "power_query", lambda self: polls.append(1) or "off")
    (result,) = wake.wake_targets(
        [{"name": "b", "bmc_host": "bmc-b"}], wait=True, timeout=30, clock=clock, sleep=clock.sleep
    )
    assert result["confirmed"] is False and result["failed"] is True and result["error"] == "timeout"


@pytest.mark.parametrize(
    "target, option",
    [
        ({"address": "bad..name", "mac": "02:50:4e:00:00:34"}, "address"),
        ({"bmc_host": "-bmc", "method": "ipmi"}, "bmc_host"),
        ({"mac": "02:50:4e:00:00:35", "broadcast": "x" * 64 + ".lan"}, "broadcast"),
        ({"mac": "02:50:4e:00:00:36", "source": "sp ace"}, "source"),
    ],
)
def test_invalid_host_names_are_named_as_such(target, option, monkeypatch):
    monkeypatch.setattr(ipmi, "HAS_PYGHMI", True)
    (result,) = wake.wake_targets([target])
    assert result["failed"] is True and result["error"] == "setting"
    assert result["msg"].startswith(option + ": invalid host name"), result["msg"]
