# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Redfish in the wake core: the auto order Redfish > IPMI > WoL, batch targets, escalation, summary."""

import socket

import pytest

from ansible_collections.powernap.fleet.plugins.module_utils import ipmi, redfish, wake


@pytest.mark.parametrize(
    "options, has_mac, method",
    [
        ({"redfish_host": "bmc1", "bmc_host": "bmc1"}, True, "redfish"),
        ({"bmc_host": "https://bmc1:8443"}, True, "redfish"),
        ({"bmc_host": "http://127.0.0.1:8000"}, False, "redfish"),
        ({"bmc_host": "bmc1"}, True, "ipmi"),
        ({}, True, "wol"),
        ({}, False, None),
    ],
)
def test_auto_order_is_redfish_then_ipmi_then_wol(options, has_mac, method):
    assert wake.auto_method(options, has_mac) == method


def test_drivers_follow_the_protocol(monkeypatch):
    monkeypatch.setattr(redfish, "HAS_SUSHY", True)  # nothing connects here; sushy may be absent (Python < 3.11)
    monkeypatch.setattr(ipmi, "HAS_PYGHMI", True)
    assert isinstance(wake.bmc_driver({"redfish_host": "bmc1"}, "redfish", 5), redfish.RedfishDriver)
    assert isinstance(wake.bmc_driver({"bmc_host": "bmc1", "method": "redfish"}, "redfish", 5), redfish.RedfishDriver)
    assert wake.bmc_driver({"bmc_host": "https://bmc1"}, "ipmi", 5) is None  # a URL is never an IPMI address
    assert wake.bmc_driver({"bmc_host": "bmc1"}, "redfish", 5) is None  # a bare bmc_host is IPMI unless asked


class Calls:
    def __init__(self):
        self.set_states = []
        self.closed = 0


@pytest.fixture
def redfish_bmcs(monkeypatch):
    """RedfishDriver.set_state/close recorded per base URL; power per URL in ``states``."""
    calls = Calls()
    states = {}

    def set_state(self, state, wait_timeout=0.0, check_mode=False):
        calls.set_states.append((self.url, state, check_mode))
        before = states[self.url]
        changed = before != "on"
        if changed and not check_mode:
            states[self.url] = "on"
        return {"changed": changed, "before": before, "after": "on", "request": "on" if changed else None}

    def close(self):
        calls.closed += 1

    monkeypatch.setattr(redfish, "HAS_SUSHY", True)
    monkeypatch.setattr(redfish.RedfishDriver, "set_state", set_state)
    monkeypatch.setattr(redfish.RedfishDriver, "close", close)
    monkeypatch.setattr(redfish.RedfishDriver, "power_query", lambda self: states[self.url])
    monkeypatch.setattr(wake.probe, "tcp_probe", lambda *args: wake.probe.DOWN)
    calls.states = states
    return calls


def test_batch_powers_on_redfish_targets_and_counts_them(redfish_bmcs, monkeypatch):
    redfish_bmcs.states.update({"https://bmc-a": "off", "https://bmc-b": "on"})
    monkeypatch.setattr(redfish.RedfishDriver, "__init__", _init_without_sushy(redfish.RedfishDriver.__init__))
    targets = [
        {"name": "a", "redfish_host": "bmc-a"},
        {"name": "b", "bmc_host": "https://bmc-b"},
    ]
    results = wake.wake_targets(targets, {}, wait=True, timeout=5)
    assert [r["method"] for r in results] == ["redfish", "redfish"]
    assert results[0]["woken_by"] == "redfish" and results[0]["changed"] is True and results[0]["confirmed"] is True
    assert results[1]["changed"] is False and results[1]["confirmed"] is True  # on, nothing to probe: up
    assert wake.summarize(results)["by_redfish"] == 1
    assert redfish_bmcs.closed == 2  # every session is closed


def test_check_mode_sends_no_reset(redfish_bmcs, monkeypatch):
    redfish_bmcs.states["https://bmc-a"] = "off"
    monkeypatch.setattr(redfish.RedfishDriver, "__init__", _init_without_sushy(redfish.RedfishDriver.__init__))
    (result,) = wake.wake_targets([{"name": "a", "redfish_host": "bmc-a"}], {}, check_mode=True)
    assert result["changed"] is True
    assert redfish_bmcs.set_states == [("https://bmc-a", "on", True)]
    assert redfish_bmcs.states["https://bmc-a"] == "off"


def test_silent_wol_target_escalates_to_redfish(redfish_bmcs, monkeypatch):
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2)
    redfish_bmcs.states["https://bmc-c"] = "off"
    monkeypatch.setattr(redfish.RedfishDriver, "__init__", _init_without_sushy(redfish.RedfishDriver.__init__))
    try:
        (result,) = wake.wake_targets(
            [{"name": "c", "method": "wol", "mac": "02:50:4e:00:00:0c", "redfish_host": "bmc-c", "address": "c"}],
            {"broadcast": "127.0.0.1", "port": receiver.getsockname()[1]},
            repeat=1,
            wait=False,
            escalate=True,
            escalate_after=0.0,
            timeout=3,
        )
        assert receiver.recv(2048)[-6:] == bytes.fromhex("02504e00000c")
    finally:
        receiver.close()
    assert result["escalated"] is True and result["woken_by"] == "wol+redfish"
    assert ("https://bmc-c", "on", False) in redfish_bmcs.set_states


def test_ipmi_is_still_chosen_for_a_plain_bmc_host(monkeypatch):
    monkeypatch.setattr(ipmi, "HAS_PYGHMI", True)
    target = wake.Target({"name": "x", "bmc_host": "bmc1", "mac": "02:50:4e:00:00:01"}, {})
    target.prepare(5)
    assert target.method == "ipmi" and isinstance(target.bmc, ipmi.IpmiDriver)


def _init_without_sushy(original):
    def init(self, *args, **kwargs):
        kwargs["connection_factory"] = lambda: None
        original(self, *args, **kwargs)

    return init
