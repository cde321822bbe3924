# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Redfish power driver over OpenStack's ``sushy``, with the IPMI driver's interface.

Why sushy: it is the library Ironic drives thousands of vendor BMCs with, so it
already carries the workarounds for flaky Redfish services (session auth that
falls back to basic auth, retries on 5xx, tolerant parsing of odd payloads).

Every library call runs through ``call_with_deadline`` (sushy retries server
errors on its own and requests' timeouts are per socket read, so neither bounds
a call).  Errors become PowerAuthError, PowerConnectionError, PowerSettingError
or PowerFatalError; never a bare traceback, and never the password.
Python 3.8 syntax.
"""

import re
import time

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.powernap.fleet.plugins.module_utils.common import invalid_host
from ansible_collections.powernap.fleet.plugins.module_utils.power import (
    CAN_POWER_OFF,
    CAN_POWER_ON,
    CAN_QUERY,
    CAN_SOFT_OFF,
    OFF,
    ON,
    UNKNOWN,
    PowerAuthError,
    PowerConnectionError,
    PowerDriver,
    PowerError,
    PowerFatalError,
    PowerSettingError,
    call_with_deadline,
)

try:
    import sushy
    from sushy import auth as sushy_auth
    from sushy import exceptions as sushy_exceptions

    HAS_SUSHY = True
    SUSHY_IMPORT_ERROR = None
except ImportError as _import_error:  # reported through missing_required_lib by the callers
    sushy = None
    sushy_auth = None
    sushy_exceptions = None
    HAS_SUSHY = False
    SUSHY_IMPORT_ERROR = _import_error

STATES = ("on", "off", "shutdown")
# The power state each requested state leaves the machine in.
NORMALISED = {"on": ON, "off": OFF, "shutdown": OFF}
# ResetType preference per request; the first one the system allows wins.  A BMC
# that only offers PushPowerButton (some blades) is driven with that.
RESET_PREFERENCE = {
    "on": ("On", "ForceOn", "PushPowerButton"),
    "shutdown": ("GracefulShutdown", "PushPowerButton"),
    "off": ("ForceOff", "PushPowerButton"),
}
# Redfish PowerState values -> what they mean for idempotence.  Transitional
# states count as the state they are heading to: a second request would only
# interrupt the first.
POWER_STATES = {"On": ON, "PoweringOn": ON, "Paused": ON, "Off": OFF, "PoweringOff": OFF}
SCHEMES = ("https", "http")


def base_url(bmc_host, bmc_port=None):
    """``https://bmc:8443``, ``http://bmc`` (labs) or a bare name/address (https, port 443 or bmc_port).

    Refuses credentials, paths, queries and malformed names with a setting
    error that names the problem (never a UnicodeError from deep inside).
    """
    text = (bmc_host or "").strip()
    if not text:
        raise PowerSettingError("no BMC host given")
    scheme = "https"
    rest = text
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", text)
    if match:
        scheme = match.group(1).lower()
        rest = match.group(2)
        if scheme not in SCHEMES:
            raise PowerSettingError("the Redfish URL scheme must be https or http, not %r" % scheme)
    rest = rest.rstrip("/")
    if not rest:
        raise PowerSettingError("the Redfish URL has no host")
    if "@" in rest:
        raise PowerSettingError("put Redfish credentials in bmc_user/bmc_password, not in the URL")
    if any(char in rest for char in "/?#"):
        raise PowerSettingError("the Redfish base URL must be scheme://host[:port] with no path")
    host, port = _split_host_port(rest)
    if port is None and bmc_port and not match:
        port = int(bmc_port)
    _check_host(host)
    if port is not None and not 0 < port < 65536:
        raise PowerSettingError("the Redfish port must be 1-65535")
    shown = "[%s]" % host if ":" in host else host
    return "%s://%s%s" % (scheme, shown, ":%d" % port if port is not None else "")


def _split_host_port(text):
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise PowerSettingError("the Redfish URL has an unclosed IPv6 bracket")
        host, tail = text[1:end], text[end + 1 :]
        if tail and not tail.startswith(":"):
            raise PowerSettingError("the Redfish URL has text after the IPv6 address")
        return host, _port(tail[1:]) if tail else None
    if text.count(":") > 1:
        return text, None  # a bare IPv6 address
    if ":" in text:
        host, port = text.split(":", 1)
        return host, _port(port)
    return text, None


def _port(text):
    if not text.isdigit():
        raise PowerSettingError("the Redfish port must be a number")
    return int(text)


def _check_host(host):
    problem = invalid_host(host)
    if problem:
        raise PowerSettingError("bmc_host: %s" % problem)


def classify(exc, target=None):
    """Map any exception from sushy/requests to a typed PowerError (messages never hold the password)."""
    if isinstance(exc, PowerError):
        if exc.target is None:
            exc.target = target
        return exc
    if sushy_exceptions is not None:
        if isinstance(exc, sushy_exceptions.AccessError):
            return PowerAuthError("the Redfish service refused the credentials (HTTP %s)" % exc.status_code, target)
        if isinstance(exc, sushy_exceptions.ConnectionError):
            text = str(exc)
            if "CERTIFICATE_VERIFY_FAILED" in text or "SSLError" in text or "certificate" in text.lower():
                error = PowerConnectionError(
                    "TLS verification of the Redfish service failed (give bmc_ca_path, "
                    "or set bmc_validate_certs=false for a lab)",
                    target,
                )
                error.retryable = False
                return error
            return PowerConnectionError("Redfish service unreachable", target)
        if isinstance(exc, sushy_exceptions.ServerSideError):
            return PowerConnectionError("the Redfish service failed (HTTP %s)" % exc.status_code, target)
        if isinstance(exc, sushy_exceptions.ResourceNotFoundError):
            return PowerSettingError("no such Redfish resource: %s" % exc.url, target)
        if isinstance(exc, (sushy_exceptions.BadRequestError, sushy_exceptions.InvalidParameterValueError)):
            return PowerSettingError("the Redfish service refused the request: %s" % _short(exc), target)
        if isinstance(exc, sushy_exceptions.UnknownDefaultError):
            return PowerSettingError(
                "the Redfish service lists more or fewer than one system: give redfish_system_id", target
            )
        if isinstance(exc, (sushy_exceptions.MissingAttributeError, sushy_exceptions.MissingActionError)):
            return PowerSettingError("the Redfish system does not offer this: %s" % _short(exc), target)
        if isinstance(exc, sushy_exceptions.HTTPError):
            return PowerFatalError("Redfish error (HTTP %s): %s" % (exc.status_code, _short(exc)), target)
        if isinstance(exc, sushy_exceptions.SushyError):
            return PowerFatalError("Redfish error: %s" % _short(exc), target)
    if isinstance(exc, (OSError, TimeoutError)):
        return PowerConnectionError("Redfish service unreachable: %s" % exc.__class__.__name__, target)
    return PowerFatalError("%s: %s" % (exc.__class__.__name__, _short(exc)), target)


def _short(exc, limit=300):
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RedfishDriver(PowerDriver):
    """One Redfish ComputerSystem.  ``timeout`` bounds every single library call (login included)."""

    CAPABILITIES = frozenset([CAN_POWER_ON, CAN_POWER_OFF, CAN_SOFT_OFF, CAN_QUERY])
    name = "redfish"

    def __init__(
        self,
        host,
        user=None,
        password=None,
        port=None,
        system_id=None,
        validate_certs=True,
        ca_path=None,
        timeout=15.0,
        connection_factory=None,
        clock=time.monotonic,
        sleep=time.sleep,
        deadline=None,
    ):
        self.url = base_url(host, port)
        if connection_factory is None and not HAS_SUSHY:
            # The standard wording (missing_required_lib) for every caller: wake, nap and power_info.
            raise PowerFatalError("%s (%s)" % (missing_required_lib("sushy"), SUSHY_IMPORT_ERROR), host)
        self.user = user or None
        self.password = password or None
        self.system_id = system_id or None
        # requests' ``verify``: True, False, or a CA bundle file/directory.
        self.verify = (ca_path or True) if validate_certs else False
        self.timeout = float(timeout)
        self.connection_factory = connection_factory or self._sushy
        self.clock = clock
        self.sleep = sleep
        self.deadline = deadline
        self._connection = None
        self._system = None

    @property
    def target(self):
        return self.url

    def _sushy(self):
        authenticator = sushy_auth.SessionOrBasicAuth(username=self.user, password=self.password)
        return sushy.Sushy(
            self.url,
            verify=self.verify,
            auth=authenticator,
            # Our own deadline bounds each call; sushy must not retry past it.
            server_side_retries=0,
            read_timeout=max(1.0, self.timeout),
            connect_timeout=max(1.0, min(5.0, self.timeout)),
        )

    def classify(self, exc):
        return classify(exc, self.target)

    def forget_session(self):
        self._system = None

    def system(self):
        """The ComputerSystem: ``system_id`` (an id or a full path), else the only one the service lists."""
        if self._system is None:
            if self._connection is None:
                self._connection = self._call("Redfish login", self.connection_factory)
            identity = self.system_id
            if identity and not identity.startswith("/"):
                identity = "/redfish/v1/Systems/%s" % identity
            self._system = self._call("Redfish system lookup", self._connection.get_system, identity)
        return self._system

    def close(self):
        """End the Redfish session (best effort, bounded): BMCs have few session slots."""
        connection, self._connection, self._system = self._connection, None, None
        auth = getattr(connection, "_auth", None)
        if auth is not None and hasattr(auth, "close"):
            try:
                call_with_deadline(auth.close, min(self.timeout, 5.0), "Redfish logout")
            except Exception:  # the session expires on the BMC anyway
                pass

    def raw_power_state(self):
        """The system's PowerState as Redfish names it (On, Off, PoweringOn, ...), freshly read."""
        system = self.system()
        self._call("Redfish refresh", system.refresh, force=True)
        value = system.power_state
        return getattr(value, "value", value)

    def power_query(self):
        return POWER_STATES.get(self.raw_power_state(), UNKNOWN)

    def allowed_resets(self):
        system = self.system()
        try:
            allowed = self._call("Redfish reset values", system.get_allowed_reset_system_values)
        except PowerSettingError:
            return set()  # no AllowableValues published: the standard names are assumed
        return {getattr(value, "value", value) for value in allowed or ()}

    def choose_reset(self, state, allowed):
        """The ResetType for ``state`` among ``allowed`` (all standard names when the BMC lists none)."""
        preference = RESET_PREFERENCE[state]
        if not allowed:
            return preference[0]
        for reset in preference:
            if reset in allowed:
                return reset
        raise PowerSettingError(
            "the system allows no reset for power %s (it allows %s)" % (state, ", ".join(sorted(allowed)) or "none"),
            self.target,
        )

    def plan(self, state, before):
        if state not in STATES:
            raise PowerSettingError("unknown power state %r (expected one of %s)" % (state, ", ".join(STATES)))
        return None if before == NORMALISED[state] else state

    def set_state(self, state, wait_timeout=0.0, check_mode=False):
        """Bring the system to ``state``; returns dict(changed, before, after, request, reset_type).

        Idempotent: ``on`` when on (or powering on), ``off``/``shutdown`` when off
        (or powering off) change nothing.  With ``wait_timeout`` the PowerState is
        polled until it is exactly On/Off -- the confirmation redfish_command lacks.
        """
        before = self.power_query()
        request = self.plan(state, before)
        result = {"changed": request is not None, "before": before, "after": before, "request": request}
        if request is None:
            return result
        reset = self.choose_reset(request, self.allowed_resets())
        result["reset_type"] = reset
        if check_mode:
            result["after"] = NORMALISED[state]
            return result
        system = self.system()
        self._call("Redfish reset %s" % reset, system.reset_system, self._reset_value(reset))
        result["after"] = self._poll_until(NORMALISED[state], wait_timeout)
        return result

    def _reset_value(self, reset):
        # sushy >= 4 takes its ResetType enum; a test double takes the plain name.
        if self.connection_factory == self._sushy and hasattr(sushy, "ResetType"):
            return sushy.ResetType(reset)
        return reset

    def _poll_until(self, target, wait_timeout):
        # Exactly On/Off: a transitional PoweringOn is not yet the confirmation.
        wanted = "On" if target == ON else "Off"
        return super()._poll_until(target, wait_timeout, read=self.raw_power_state, wanted=wanted)

    def power_on(self):
        return self.set_state("on")

    def power_off(self, soft=True):
        return self.set_state("shutdown" if soft else "off")
