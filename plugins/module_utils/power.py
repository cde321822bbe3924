# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The power driver interface shared by the WoL, IPMI and engine drivers.

Modelled on MAAS/Ironic power drivers: ``power_on()``, ``power_off(soft)``,
``power_query()`` returning ``on``/``off``/``unknown``, capability flags, typed
errors (auth, connection, setting, fatal) and one retry-with-deadline wrapper.
Standard library only; Python 3.8 syntax (runs on module targets too).
"""

import random
import threading
import time

ON = "on"
OFF = "off"
UNKNOWN = "unknown"

# Capability flags a driver advertises in CAPABILITIES.
CAN_POWER_ON = "power_on"
CAN_POWER_OFF = "power_off"
CAN_SOFT_OFF = "soft_off"
CAN_QUERY = "query"
CAN_RESET = "reset"
CAN_CYCLE = "cycle"


class PowerError(Exception):
    """A power operation failed; ``kind`` says which class of failure (auth, connection, setting, fatal)."""

    kind = "fatal"
    # Retrying can help only when the failure may be transient.
    retryable = False

    def __init__(self, message, target=None):
        super().__init__(message)
        self.message = message
        self.target = target

    def __str__(self):
        if self.target:
            return "%s: %s" % (self.target, self.message)
        return self.message


class PowerAuthError(PowerError):
    """Credentials or privilege rejected: retrying with the same credentials cannot help."""

    kind = "auth"


class PowerConnectionError(PowerError):
    """The target (or its BMC) did not answer, or answered too late."""

    kind = "connection"
    retryable = True


class PowerSettingError(PowerError):
    """The request or an option is invalid for this target (bad MAC, unsupported state, ...)."""

    kind = "setting"


class PowerFatalError(PowerError):
    """Anything else; the message carries the underlying error."""

    kind = "fatal"


class PowerDriver:
    """Base class: subclasses set CAPABILITIES and implement what they advertise."""

    CAPABILITIES = frozenset()
    name = "driver"

    def can(self, capability):
        return capability in self.CAPABILITIES

    def power_on(self):
        raise PowerSettingError("%s cannot power on" % self.name)

    def power_off(self, soft=True):
        raise PowerSettingError("%s cannot power off" % self.name)

    def power_query(self):
        return UNKNOWN

    # Set by drivers that talk to a BMC: ``timeout`` bounds each call, ``deadline`` (a ``clock()`` value)
    # all of them together, so a task's overall timeout holds however many calls it makes.
    timeout = 15.0
    deadline = None

    def call_limit(self, what):
        """Seconds the next call may take: the per-call timeout, cut to what is left before the deadline."""
        limit = self.timeout
        if self.deadline is not None:
            limit = min(limit, self.deadline - self.clock())
            if limit <= 0:
                raise PowerConnectionError("%s not attempted: the task's timeout has passed" % what, self.target)
        return limit

    def classify(self, exc):
        """The typed PowerError for ``exc`` (drivers map their library's exceptions)."""
        return exc if isinstance(exc, PowerError) else PowerFatalError("%s: %s" % (exc.__class__.__name__, exc))

    def forget_session(self):
        """Drop a cached session after a connection error, so that it is not reused (drivers that keep one)."""

    def _call(self, what, func, *args, **kwargs):
        """``func(*args, **kwargs)`` within ``call_limit``; any failure comes out typed, with the target."""
        limit = self.call_limit(what)
        try:
            return call_with_deadline(func, limit, what, args, kwargs)
        except Exception as exc:
            error = self.classify(exc)
            if error.target is None:
                error.target = self.target
            if isinstance(error, PowerConnectionError):
                self.forget_session()
            raise error from exc

    def _poll_until(self, target, wait_timeout, read=None, wanted=None):
        """Poll ``read()`` (default ``power_query``) until it returns ``wanted`` (default ``target``), within
        ``wait_timeout`` seconds; returns ``target``.  No wait at all when ``wait_timeout`` is 0: the request was
        sent, not confirmed, as the caller chose."""
        if wait_timeout <= 0:
            return target
        read = read or self.power_query
        wanted = target if wanted is None else wanted
        deadline = self.clock() + wait_timeout
        state = read()
        while state != wanted and self.clock() < deadline:
            self.sleep(min(1.0, max(0.0, deadline - self.clock())))
            state = read()
        if state != wanted:
            raise PowerConnectionError(
                "the machine did not reach power %s within %.0f s (still %s)" % (target, wait_timeout, state),
                self.target,
            )
        return target


def call_with_deadline(func, deadline, what="operation", args=(), kwargs=None):
    """Run ``func(*args, **kwargs)`` in a daemon thread and give up after ``deadline`` seconds.

    Libraries such as pyghmi can block for minutes inside one call; the worker
    thread is abandoned on timeout (a daemon thread never blocks process exit)
    and PowerConnectionError is raised.  Exceptions from ``func`` are re-raised.
    """
    outcome = {}
    done = threading.Event()

    def worker():
        try:
            outcome["value"] = func(*args, **(kwargs or {}))
        except BaseException as exc:  # re-raised in the caller's thread below
            outcome["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=worker, name="powernap-%s" % what)
    thread.daemon = True
    thread.start()
    if not done.wait(max(0.0, deadline)):
        raise PowerConnectionError("%s did not finish within %.1f s (abandoned)" % (what, deadline))
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def backoff_delays(first=1.0, factor=2.0, cap=12.0, jitter=0.2, rng=None):
    """Endless exponential backoff delays with +/- ``jitter`` relative jitter, capped at ``cap`` seconds."""
    rng = rng or random.Random()
    delay = first
    while True:
        yield max(0.0, min(cap, delay) * (1.0 + rng.uniform(-jitter, jitter)))
        delay = min(cap, delay * factor)


def retry_with_deadline(func, timeout, delays=None, clock=time.monotonic, sleep=time.sleep, what="operation"):
    """Call ``func(remaining_seconds)`` until it returns, retrying retryable PowerErrors until ``timeout``.

    Non-retryable errors (auth, setting, fatal) are raised at once; when time
    runs out the last retryable error is raised with the elapsed time added.
    """
    start = clock()
    delays = delays if delays is not None else backoff_delays()
    attempt = 0
    while True:
        attempt += 1
        remaining = timeout - (clock() - start)
        try:
            return func(max(0.0, remaining))
        except PowerError as exc:
            if not exc.retryable:
                raise
            delay = next(delays)
            remaining = timeout - (clock() - start)
            if remaining <= delay:
                raise exc.__class__(
                    "%s failed after %d attempt(s) in %.1f s: %s" % (what, attempt, clock() - start, exc.message),
                    exc.target,
                ) from exc
            sleep(delay)
