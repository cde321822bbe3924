"""The Redfish driver against an independent Redfish service (sushy-tools' emulator) on loopback.

Authentication and TLS are on, as on a real BMC; the emulator applies a power
change 1-11 s after the request, so a driver that does not wait for the new
PowerState is caught.  Every power state asserted here is read back from the
emulator by a plain HTTP GET of our own, not through the driver under test.
"""

import os
import socket
import sys
import threading
import time

import pytest

from .redfish_emulator import PASSWORD, REPO, USER, RedfishEmulator

sys.path.insert(0, os.path.join(REPO, ".cache", "collections"))

from ansible_collections.powernap.fleet.plugins.module_utils.power import (
    PowerAuthError,
    PowerConnectionError,
    PowerSettingError,
)
from ansible_collections.powernap.fleet.plugins.module_utils.redfish import RedfishDriver

SYSTEMS = ("h1", "h2")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    service = RedfishEmulator(str(tmp_path_factory.mktemp("redfish")), systems=SYSTEMS)
    with service:
        yield service


def driver(emulator, name="h1", **kwargs):
    kwargs.setdefault("ca_path", emulator.cert)
    kwargs.setdefault("timeout", 10)
    return RedfishDriver(
        emulator.url,
        kwargs.pop("user", USER),
        kwargs.pop("password", PASSWORD),
        system_id=emulator.systems[name],
        **kwargs,
    )


def test_power_on_and_off_are_confirmed_and_idempotent(emulator):
    made = driver(emulator)
    try:
        assert emulator.power("h1") == "Off"
        started = time.monotonic()
        result = made.set_state("on", wait_timeout=40)
        assert result["changed"] and result["reset_type"] == "On" and result["after"] == "on"
        # Confirmed means the service itself says On at the moment we return.
        assert emulator.power("h1") == "On"
        assert time.monotonic() - started < 40
        again = made.set_state("on", wait_timeout=40)
        assert again["changed"] is False
        result = made.set_state("shutdown", wait_timeout=40)
        assert result["changed"] and result["reset_type"] == "GracefulShutdown"
        assert emulator.power("h1") == "Off"
        assert emulator.power("h2") == "Off"  # the other system was never touched
    finally:
        made.close()


def test_discovery_needs_a_system_id_when_there_are_several(emulator):
    made = RedfishDriver(emulator.url, USER, PASSWORD, ca_path=emulator.cert, timeout=10)
    with pytest.raises(PowerSettingError, match="redfish_system_id"):
        made.power_query()


def test_single_system_is_discovered(tmp_path):
    with RedfishEmulator(str(tmp_path), systems=("solo",), tls=False, power="On") as service:
        made = RedfishDriver(service.url, USER, PASSWORD, timeout=10)
        assert made.power_query() == "on"


def test_wrong_password_fails_fast_as_auth_and_never_shows_it(emulator):
    started = time.monotonic()
    with pytest.raises(PowerAuthError) as caught:
        driver(emulator, password="not-the-password-7f3").power_query()
    assert time.monotonic() - started < 10
    assert "not-the-password-7f3" not in str(caught.value)


def test_tls_is_verified_by_default(emulator):
    with pytest.raises(PowerConnectionError, match="TLS verification"):
        driver(emulator, ca_path=None).power_query()
    # The explicit switch, for labs only.
    assert driver(emulator, ca_path=None, validate_certs=False).power_query() in ("on", "off")


def test_unreachable_endpoint_fails_within_the_deadline():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        started = time.monotonic()
        with pytest.raises(PowerConnectionError):
            RedfishDriver("https://127.0.0.1:%d" % port, USER, PASSWORD, timeout=3).power_query()
        assert time.monotonic() - started < 3 + 1.5


def test_hanging_endpoint_fails_within_the_deadline():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held = []
    stop = threading.Event()

    def accept_and_say_nothing():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept_and_say_nothing, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        with pytest.raises(PowerConnectionError, match="did not finish within 3.0 s"):
            RedfishDriver("https://127.0.0.1:%d" % listener.getsockname()[1], USER, PASSWORD, timeout=3).power_query()
        assert time.monotonic() - started < 3 + 1.5
        assert held, "the driver never connected to the hanging listener"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()
