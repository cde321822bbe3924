# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
import socket
import threading

import pytest
from pyghmi import exceptions as pyghmi_exceptions

from ansible_collections.powernap.fleet.plugins.module_utils import ipmi
from ansible_collections.powernap.fleet.plugins.module_utils.ipmi import IpmiDriver, classify
from ansible_collections.powernap.fleet.plugins.module_utils.power import (
    PowerAuthError,
    PowerConnectionError,
    PowerFatalError,
    PowerSettingError,
)


class FakeBmc:
    """Stands in for pyghmi's Command: a power bit and a log of chassis requests."""

    logins = []

    def __init__(self, power="off", **kwargs):
        self.power = power
        self.requests = []
        self.kwargs = kwargs

    def factory(self, **kwargs):
        FakeBmc.logins.append(kwargs)
        self.kwargs = kwargs
        return self

    def get_power(self):
        return {"powerstate": self.power}

    def raw_command(self, netfn, command, data):
        assert (netfn, command) == (0, 2)
        code = data[0]
        self.requests.append(code)
        self.power = {0: "off", 1: "on", 2: "on", 3: "on", 5: "off"}[code]
        return {}


@pytest.fixture(autouse=True)
def fresh_sessions():
    ipmi._COMMANDS.clear()
    FakeBmc.logins = []
    yield
    ipmi._COMMANDS.clear()


def driver(bmc, **kwargs):
    return IpmiDriver("bmc1", "admin", "secret", command_factory=bmc.factory, sleep=lambda s: None, **kwargs)


@pytest.mark.parametrize(
    "state, before, request_code, changed",
    [
        ("on", "off", 1, True),
        ("on", "on", None, False),
        ("off", "on", 0, True),
        ("off", "off", None, False),
        ("shutdown", "on", 5, True),
        ("shutdown", "off", None, False),
        ("boot", "off", 1, True),
        ("boot", "on", 3, True),
        ("reset", "on", 3, True),
        ("reset", "off", 1, True),
        ("cycle", "on", 2, True),
    ],
)
def test_idempotence_on_the_normalised_state(state, before, request_code, changed):
    bmc = FakeBmc(before)
    outcome = driver(bmc).set_state(state, wait_timeout=5)
    assert outcome["changed"] is changed
    assert bmc.requests == ([] if request_code is None else [request_code])
    assert outcome["after"] == ipmi.NORMALISED[state]


def test_check_mode_sends_nothing():
    bmc = FakeBmc("off")
    outcome = driver(bmc).set_state("on", check_mode=True)
    assert outcome == {"changed": True, "before": "off", "after": "on", "request": "on"}
    assert bmc.requests == []


def test_privilege_and_kg_reach_the_login():
    bmc = FakeBmc("on")
    driver(bmc, privilege="operator", kg="k3y", port=1623).power_query()
    assert FakeBmc.logins == [
        {"bmc": "bmc1", "userid": "admin", "password": "secret", "port": 1623, "kg": "k3y", "privlevel": 3}
    ]


def test_one_login_per_bmc_and_credentials_in_a_process():
    bmc = FakeBmc("on")
    driver(bmc).power_query()
    driver(bmc).power_query()
    assert len(FakeBmc.logins) == 1


def test_hung_login_fails_within_the_deadline():
    release = threading.Event()

    def hang(**_kwargs):
        release.wait(30)

    with pytest.raises(PowerConnectionError) as info:
        IpmiDriver("bmc1", "u", "p", timeout=0.2, command_factory=hang).power_query()
    release.set()
    assert "within 0.2 s" in str(info.value)


def test_unknown_privilege_and_state_are_setting_errors():
    with pytest.raises(PowerSettingError):
        IpmiDriver("bmc1", privilege="root", command_factory=FakeBmc().factory)
    with pytest.raises(PowerSettingError):
        driver(FakeBmc("on")).set_state("hibernate")


@pytest.mark.parametrize(
    "exc, kind",
    [
        (pyghmi_exceptions.IpmiException("Incorrect password provided"), PowerAuthError),
        (pyghmi_exceptions.IpmiException("Unauthorized name in RAKP2"), PowerAuthError),
        (pyghmi_exceptions.IpmiException("Invalid RAKP4 integrity code (wrong Kg?)"), PowerAuthError),
        (pyghmi_exceptions.IpmiException(None), PowerConnectionError),
        (pyghmi_exceptions.IpmiException("Session no longer connected"), PowerConnectionError),
        (socket.gaierror(-2, "Name or service not known"), PowerConnectionError),
        (pyghmi_exceptions.InvalidParameterValue("Unknown power state"), PowerSettingError),
        (pyghmi_exceptions.IpmiException("Invalid command", code=0xC1), PowerSettingError),
        (pyghmi_exceptions.IpmiException("Node busy"), PowerFatalError),
        (RuntimeError("boom"), PowerFatalError),
    ],
)
def test_errors_are_classified(exc, kind):
    error = classify(exc, "bmc1")
    assert isinstance(error, kind)
    assert error.kind == kind.kind
    assert str(error).startswith("bmc1: ")


def test_unresolvable_bmc_is_not_retryable():
    assert classify(socket.gaierror(-2, "x")).retryable is False
    assert classify(pyghmi_exceptions.IpmiException(None)).retryable is True


def test_refused_soft_off_is_a_setting_error():
    class NoSoft(FakeBmc):
        def raw_command(self, netfn, command, data):
            return {"error": "Unspecified", "code": 0xFF}

    with pytest.raises(PowerSettingError) as info:
        driver(NoSoft("on")).set_state("shutdown")
    assert "needs force" in str(info.value)


def test_a_connection_error_drops_the_cached_session():
    """A session that failed with a connection error is not reused: the next call logs in again."""

    class Flaky(FakeBmc):
        failures = 1

        def get_power(self):
            if Flaky.failures:
                Flaky.failures -= 1
                raise TimeoutError("timed out")
            return super().get_power()

    made = driver(Flaky())
    with pytest.raises(PowerConnectionError):
        made.power_query()
    assert made.power_query() == "off"
    assert len(FakeBmc.logins) == 2
