# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
import threading

import pytest

# sushy (and so the Redfish driver) needs Python 3.11; older controller Pythons skip these tests.
sushy_exceptions = pytest.importorskip("sushy.exceptions", reason="sushy needs Python 3.11 or later")

from ansible_collections.powernap.fleet.plugins.module_utils.power import (
    PowerAuthError,
    PowerConnectionError,
    PowerFatalError,
    PowerSettingError,
)
from ansible_collections.powernap.fleet.plugins.module_utils.redfish import RedfishDriver, base_url, classify


class FakeSystem:
    """Stands in for sushy's System: a PowerState, the allowed ResetTypes and a log of resets.

    ``settle`` reads pass before a reset shows in PowerState, as real BMCs and
    sushy-tools' fake driver only report the new state after a while.
    """

    def __init__(self, power="Off", allowed=("On", "ForceOff", "GracefulShutdown"), settle=0):
        self.power_state = power
        self.allowed = set(allowed)
        self.resets = []
        self.settle = settle
        self._pending = None
        self.refreshes = 0

    def refresh(self, force=False):
        self.refreshes += 1
        if self._pending:
            reads, state = self._pending
            if reads <= 0:
                self.power_state, self._pending = state, None
            else:
                self._pending = (reads - 1, state)

    def get_allowed_reset_system_values(self):
        return set(self.allowed)

    def reset_system(self, value):
        self.resets.append(value)
        target = "On" if value in ("On", "ForceOn") else "Off"
        if value == "PushPowerButton":
            target = "Off" if self.power_state == "On" else "On"
        self._pending = (self.settle, target)


class FakeService:
    def __init__(self, system):
        self.system = system
        self.lookups = []

    def get_system(self, identity=None):
        self.lookups.append(identity)
        return self.system


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def driver(system, **kwargs):
    clock = FakeClock()
    service = FakeService(system)
    kwargs.setdefault("connection_factory", lambda: service)
    made = RedfishDriver("https://bmc1:8443", "admin", "secret", clock=clock, sleep=clock.sleep, **kwargs)
    made.service = service
    return made


@pytest.mark.parametrize(
    "state, before, reset, changed",
    [
        ("on", "Off", "On", True),
        ("on", "On", None, False),
        ("on", "PoweringOn", None, False),
        ("shutdown", "On", "GracefulShutdown", True),
        ("shutdown", "Off", None, False),
        ("off", "On", "ForceOff", True),
        ("off", "PoweringOff", None, False),
    ],
)
def test_set_state_is_idempotent_and_picks_the_reset(state, before, reset, changed):
    system = FakeSystem(power=before)
    result = driver(system).set_state(state, wait_timeout=30)
    assert result["changed"] is changed
    assert system.resets == ([reset] if reset else [])
    assert result.get("reset_type") == reset


@pytest.mark.parametrize(
    "allowed, state, reset",
    [
        (("PushPowerButton",), "on", "PushPowerButton"),
        (("PushPowerButton",), "shutdown", "PushPowerButton"),
        (("ForceOn", "ForceOff"), "on", "ForceOn"),
        ((), "off", "ForceOff"),  # the BMC publishes no AllowableValues: the standard name
    ],
)
def test_reset_type_comes_from_what_the_system_allows(allowed, state, reset):
    system = FakeSystem(power="On" if state != "on" else "Off", allowed=allowed)
    driver(system).set_state(state, wait_timeout=30)
    assert system.resets == [reset]


def test_no_allowed_reset_is_a_setting_error():
    system = FakeSystem(power="On", allowed=("Nmi",))
    with pytest.raises(PowerSettingError, match="allows no reset for power off"):
        driver(system).set_state("off")
    assert system.resets == []


def test_confirmation_waits_for_the_power_state_to_change():
    system = FakeSystem(power="Off", settle=3)
    result = driver(system).set_state("on", wait_timeout=30)
    assert result["after"] == "on"
    assert system.power_state == "On"
    assert system.refreshes >= 5  # before, then polled until the BMC showed On


def test_confirmation_fails_when_the_state_never_changes():
    system = FakeSystem(power="Off", settle=10**6)
    made = driver(system)
    with pytest.raises(PowerConnectionError, match="did not reach power on within 20 s"):
        made.set_state("on", wait_timeout=20)
    assert made.clock() >= 20


def test_check_mode_sends_nothing():
    system = FakeSystem(power="Off")
    result = driver(system).set_state("on", check_mode=True)
    assert result == {"changed": True, "before": "off", "after": "on", "request": "on", "reset_type": "On"}
    assert system.resets == []


@pytest.mark.parametrize("given, looked_up", [(None, None), ("abc", "/redfish/v1/Systems/abc"), ("/x/y", "/x/y")])
def test_system_id_or_discovery(given, looked_up):
    made = driver(FakeSystem(), system_id=given)
    made.power_query()
    assert made.service.lookups == [looked_up]


def test_a_hung_call_is_abandoned_at_the_deadline():
    release = threading.Event()

    class Hanging(FakeSystem):
        def refresh(self, force=False):
            release.wait(5)

    made = RedfishDriver("https://bmc1", timeout=0.2, connection_factory=lambda: FakeService(Hanging()))
    try:
        with pytest.raises(PowerConnectionError, match="did not finish within 0.2 s"):
            made.power_query()
    finally:
        release.set()


@pytest.mark.parametrize(
    "given, url",
    [
        ("bmc1", "https://bmc1"),
        ("bmc1.example.net:8443", "https://bmc1.example.net:8443"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("HTTPS://bmc1", "https://bmc1"),
        ("fe80::1", "https://[fe80::1]"),
        ("https://[2001:db8::1]:8443", "https://[2001:db8::1]:8443"),
    ],
)
def test_base_url(given, url):
    assert base_url(given) == url


def test_bmc_port_applies_to_a_bare_name_only():
    assert base_url("bmc1", 8443) == "https://bmc1:8443"
    assert base_url("https://bmc1", 8443) == "https://bmc1"


@pytest.mark.parametrize(
    "given, message",
    [
        ("", "no BMC host"),
        ("ftp://bmc1", "scheme must be https or http"),
        ("https://admin:pw@bmc1", "credentials"),
        ("https://bmc1/redfish/v1", "no path"),
        ("bad..name", "bmc_host: invalid host name"),
        ("-bmc1", "bmc_host: invalid host name"),
        ("bmc\udcff", "bmc_host: invalid host name"),
        ("bmc1:99999", "port must be 1-65535"),
        ("bmc1:x", "port must be a number"),
    ],
)
def test_bad_base_urls_are_setting_errors(given, message):
    with pytest.raises(PowerSettingError, match=message):
        base_url(given)


def test_errors_are_classified_without_the_password():
    class Response:
        status_code = 401
        json = None
        headers = {}
        text = ""

        def json(self):  # noqa: F811 - sushy calls it
            raise ValueError

    auth = classify(sushy_exceptions.AccessError(method="GET", url="https://bmc1/redfish/v1", response=Response()))
    assert isinstance(auth, PowerAuthError)
    assert "401" in str(auth)
    gone = classify(sushy_exceptions.ConnectionError(url="https://bmc1", error="refused"))
    assert isinstance(gone, PowerConnectionError) and gone.retryable
    tls = classify(sushy_exceptions.ConnectionError(url="https://bmc1", error="SSLError CERTIFICATE_VERIFY_FAILED"))
    assert isinstance(tls, PowerConnectionError) and not tls.retryable
    assert "bmc_ca_path" in str(tls)
    assert isinstance(classify(RuntimeError("boom")), PowerFatalError)


def test_a_missing_sushy_is_named_the_standard_way(monkeypatch):
    from ansible_collections.powernap.fleet.plugins.module_utils import redfish

    monkeypatch.setattr(redfish, "HAS_SUSHY", False)
    with pytest.raises(PowerFatalError, match=r"Failed to import the required Python library \(sushy\)"):
        RedfishDriver("bmc1")
