# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""IPMI power driver over pyghmi, with a hard deadline on every call and classified errors.

pyghmi can block for minutes (a BMC that drops RAKP1), so every call --
including the login pyghmi performs inside ``Command()`` -- runs through
``call_with_deadline``.  Errors become PowerAuthError (bad credentials, Kg,
privilege), PowerConnectionError (no answer, unresolvable), PowerSettingError
(unsupported request) or PowerFatalError; never a bare traceback.

Cipher suites: pyghmi negotiates RMCP+ with SHA-256 (suite 17) and falls back
to SHA-1 (suite 3) by itself, and degrades an automatic privilege level from
administrator to operator when the BMC refuses administrator.
Python 3.8 syntax.
"""

import socket
import threading
import time

from ansible_collections.powernap.fleet.plugins.module_utils.common import invalid_host
from ansible_collections.powernap.fleet.plugins.module_utils.power import (
    CAN_CYCLE,
    CAN_POWER_OFF,
    CAN_POWER_ON,
    CAN_QUERY,
    CAN_RESET,
    CAN_SOFT_OFF,
    OFF,
    ON,
    PowerAuthError,
    PowerConnectionError,
    PowerDriver,
    PowerError,
    PowerFatalError,
    PowerSettingError,
)

try:
    from pyghmi import exceptions as pyghmi_exceptions
    from pyghmi.ipmi import command as pyghmi_command

    HAS_PYGHMI = True
    PYGHMI_IMPORT_ERROR = None
except ImportError as _import_error:  # reported through missing_required_lib by the callers
    pyghmi_exceptions = None
    pyghmi_command = None
    HAS_PYGHMI = False
    PYGHMI_IMPORT_ERROR = _import_error

PRIVILEGES = {"callback": 1, "user": 2, "operator": 3, "administrator": 4}
STATES = ("on", "off", "shutdown", "reset", "cycle", "boot")
# The power state each requested state leaves the machine in.
NORMALISED = {"on": ON, "off": OFF, "shutdown": OFF, "reset": ON, "cycle": ON, "boot": ON}
# IPMI chassis control codes (IPMI 2.0 table 28-4).
CHASSIS_CONTROL = {"off": 0, "on": 1, "cycle": 2, "reset": 3, "shutdown": 5}

# pyghmi caches sessions per (bmc, user, password, port, kg) and a second
# Command() for a key that already logged in hangs in the same process, so
# each process keeps exactly one Command per key and every driver shares it.
_COMMANDS = {}
_COMMANDS_LOCK = threading.Lock()

_AUTH_MARKERS = (
    "incorrect password",
    "unauthorized name",
    "wrong kg",
    "insufficient privilege",
    "unauthorized role",
    "invalid role",
    "privilege level",
    "invalid integrity check",
)
_CONNECTION_MARKERS = ("timeout", "timed out", "no longer connected", "unable to transmit", "not responding")


def classify(exc, target=None):
    """Map any exception from pyghmi or the socket layer to a typed PowerError."""
    if isinstance(exc, PowerError):
        if exc.target is None:
            exc.target = target
        return exc
    if isinstance(exc, socket.gaierror):
        error = PowerConnectionError("cannot resolve the BMC address: %s" % exc, target)
        error.retryable = False
        return error
    if isinstance(exc, (socket.timeout, OSError)):
        return PowerConnectionError("BMC unreachable: %s" % exc, target)
    if pyghmi_exceptions is not None:
        if isinstance(exc, (pyghmi_exceptions.InvalidParameterValue, pyghmi_exceptions.UnsupportedFunctionality)):
            return PowerSettingError("unsupported by this BMC: %s" % exc, target)
        if isinstance(exc, pyghmi_exceptions.IpmiException):
            text = str(exc.args[0]) if exc.args and exc.args[0] is not None else ""
            lowered = text.lower()
            if not text or text == "None":
                # pyghmi raises IpmiException(None) when nothing answered the login.
                return PowerConnectionError("no BMC answered (login timed out)", target)
            if any(marker in lowered for marker in _AUTH_MARKERS):
                return PowerAuthError("BMC rejected the credentials: %s" % text, target)
            if any(marker in lowered for marker in _CONNECTION_MARKERS):
                return PowerConnectionError("BMC connection failed: %s" % text, target)
            if getattr(exc, "ipmicode", 0) in (0xC1, 0xCC, 0xD5, 0xD6):
                return PowerSettingError("the BMC does not support this request: %s" % text, target)
            return PowerFatalError("IPMI error: %s" % text, target)
    return PowerFatalError("%s: %s" % (exc.__class__.__name__, exc), target)


class IpmiDriver(PowerDriver):
    """One BMC.  ``timeout`` bounds every single pyghmi call (login included); ``deadline`` (a ``clock()``
    value) bounds them all together, so a task's overall timeout holds however many calls it makes."""

    CAPABILITIES = frozenset([CAN_POWER_ON, CAN_POWER_OFF, CAN_SOFT_OFF, CAN_QUERY, CAN_RESET, CAN_CYCLE])
    name = "ipmi"

    def __init__(
        self,
        host,
        user=None,
        password=None,
        port=623,
        kg=None,
        privilege=None,
        timeout=15.0,
        command_factory=None,
        clock=time.monotonic,
        sleep=time.sleep,
        deadline=None,
    ):
        if not host:
            raise PowerSettingError("no BMC host given")
        problem = invalid_host(host)
        if problem:
            raise PowerSettingError("bmc_host: %s" % problem)
        if privilege is not None and privilege not in PRIVILEGES:
            raise PowerSettingError(
                "unknown BMC privilege %r (expected one of %s)" % (privilege, ", ".join(sorted(PRIVILEGES)))
            )
        if command_factory is None and not HAS_PYGHMI:
            raise PowerFatalError("the pyghmi Python library is required for IPMI: %s" % PYGHMI_IMPORT_ERROR, host)
        self.host = host
        self.user = user or ""
        self.password = password or ""
        self.port = int(port or 623)
        self.kg = kg or None
        self.privilege = privilege
        self.timeout = float(timeout)
        self.command_factory = command_factory or (pyghmi_command.Command if HAS_PYGHMI else None)
        self.clock = clock
        self.sleep = sleep
        self.deadline = deadline
        self._command = None

    @property
    def target(self):
        return "%s:%d" % (self.host, self.port) if self.port != 623 else self.host

    @property
    def _key(self):
        # pyghmi keys its sessions without the privilege level: so must we (the first login wins).
        return (self.command_factory, self.host, self.port, self.user, self.password, self.kg)

    def classify(self, exc):
        return classify(exc, self.target)

    def forget_session(self):
        if self._command is not None:
            self._command = None
            with _COMMANDS_LOCK:
                _COMMANDS.pop(self._key, None)

    def _connect(self):
        if self._command is None:
            with _COMMANDS_LOCK:
                self._command = _COMMANDS.get(self._key)
        if self._command is None:
            kwargs = {
                "bmc": self.host,
                "userid": self.user,
                "password": self.password,
                "port": self.port,
                "kg": self.kg,
            }
            if self.privilege:
                kwargs["privlevel"] = PRIVILEGES[self.privilege]
            self._command = self._call("IPMI login", self.command_factory, **kwargs)
            with _COMMANDS_LOCK:
                _COMMANDS[self._key] = self._command
        return self._command

    def power_query(self):
        command = self._connect()
        state = self._call("IPMI get power", command.get_power)
        if isinstance(state, dict) and state.get("error"):
            raise PowerFatalError("get power failed: %s" % state["error"], self.target)
        value = state.get("powerstate") if isinstance(state, dict) else None
        if value not in (ON, OFF):
            raise PowerFatalError("unexpected power state %r" % (value,), self.target)
        return value

    def chassis_control(self, state):
        """Send one chassis control request without pyghmi's own idempotence shortcut."""
        command = self._connect()
        response = self._call(
            "IPMI chassis control %s" % state, command.raw_command, netfn=0, command=2, data=[CHASSIS_CONTROL[state]]
        )
        if isinstance(response, dict) and response.get("error"):
            code = response.get("code", 0)
            if state == "shutdown":
                raise PowerSettingError(
                    "the BMC refused a soft (ACPI) power-off: %s; a hard power-off needs force" % response["error"],
                    self.target,
                )
            if code in (0xC1, 0xCC, 0xD5, 0xD6):
                raise PowerSettingError("the BMC refused power %s: %s" % (state, response["error"]), self.target)
            raise PowerFatalError("power %s failed: %s" % (state, response["error"]), self.target)

    def plan(self, state, before):
        """What ``set_state(state)`` does when the machine is ``before``: the chassis request or None."""
        if state not in STATES:
            raise PowerSettingError("unknown power state %r (expected one of %s)" % (state, ", ".join(STATES)))
        if state in ("on", "off", "shutdown"):
            return None if before == NORMALISED[state] else state
        if before == OFF:
            return "on"  # reset/cycle/boot of a machine that is off: power it on
        return "reset" if state == "boot" else state

    def set_state(self, state, wait_timeout=0.0, check_mode=False):
        """Bring the machine to ``state``; returns dict(changed, before, after, request).

        Idempotent on the normalised state: ``on`` when on, ``off``/``shutdown``
        when off change nothing.  With ``wait_timeout`` the power state is polled
        until it is the normalised target (reset/cycle: until it is on again).
        """
        before = self.power_query()
        request = self.plan(state, before)
        result = {"changed": request is not None, "before": before, "after": before, "request": request}
        if request is None or check_mode:
            result["after"] = NORMALISED[state] if request else before
            return result
        self.chassis_control(request)
        target = NORMALISED[state]
        result["after"] = target if request in ("reset", "cycle") else self._poll_until(target, wait_timeout)
        return result

    def power_on(self):
        return self.set_state("on")

    def power_off(self, soft=True):
        return self.set_state("shutdown" if soft else "off")
