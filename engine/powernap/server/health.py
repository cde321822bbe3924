"""Wake health per host: the last wake and how it ended, the failed-wake mark, retries and test wakes.

Like VMware DPM's "last time exited standby: succeeded / failed / never".
``Fleet`` tells this class when a wake starts, escalates, is confirmed or is
not (``started`` / ``escalated`` / ``succeeded`` / ``failed``); the record
lives in the host's registry entry (``HostRecord.wake_health``, declared by
``registry.WakeHealthSchema``), so it survives a restart.

* A failed wake **marks** the host.  A marked host is kept out of napping
  (``nap_refusal``: every policy path and the API ask it; an API nap with
  ``force`` and a UPS emergency override it) and out of the policies' wakes
  (``wake_refusal``: a cluster wakes a healthy sleeper instead), because a
  host that cannot be woken must not be put to sleep.
* No host stays stuck: a failed wake that is still wanted (the host is still
  down, not held by a UPS policy) is retried ``wake_retries`` times, after
  ``wake_retry_delay``, doubling, at most ``wake_retry_max`` apart.  An admin
  clears the mark (``clear``: ``POST /v1/clear-mark``, ``powerwake
  clear-mark HOST``), and test wakes retry marked hosts in their window.
* Test wakes: a group with ``test_wake`` (a calendar, as schedules use)
  wakes, inside each window of ``test_wake_window``, its sleeping members
  that were never woken (and, with ``test_wake_marked``, its marked ones),
  ``test_wakes_at_once`` at a time; each is confirmed and recorded like any
  wake, and the host then naps again by its own engine or policy.
"""

from typing import Any, Callable, Dict, List, Optional, Set

from . import protocol as P
from .registry import HostRecord, by_power_since

MAX_LISTED = 100  # hosts named per list in /v1/status
MAX_SECONDS = 1e7  # WakeHealthSchema's bound on "seconds"


def _took(health: Dict[str, Any], now: float) -> float:
    """Seconds since the attempt started, within the declared range (a clock step must not void the record)."""
    return round(min(MAX_SECONDS, max(0.0, now - float(health.get("started") or now))), 3)


class WakeTestWindow:
    """One group's test-wake windows: [event, event + length) for each calendar event."""

    def __init__(self, group: str, calendar: Any, length: float, marked: bool, at_once: int, now: float):
        self.group = group
        self.calendar = calendar
        self.length = length
        self.marked = marked
        self.at_once = at_once
        # A window that began less than ``length`` ago is open now (a restart inside it keeps it).
        self.opens = calendar.next_after(now - length)
        self.tested: Set[str] = set()  # hosts test-woken in the current window (once per window)

    def is_open(self, now: float) -> bool:
        while self.opens is not None and now >= self.opens + self.length:
            self.opens = self.calendar.next_after(now - self.length)
            self.tested = set()
        return self.opens is not None and self.opens <= now

    def to_dict(self, now: float) -> Dict[str, Any]:
        is_open = self.is_open(now)
        return {
            "group": self.group,
            "open": is_open,
            "opens": self.opens,
            "closes": self.opens + self.length if self.opens is not None else None,
            "tested": sorted(self.tested)[:MAX_LISTED],
        }


class WakeHealth:
    """The wake-health rules of one fleet (one home: recording, the mark, retries, test wakes)."""

    def __init__(self, fleet: Any, config: Any, log: Any):
        self.fleet = fleet
        self.registry = fleet.registry
        self.config = config
        self.log = log
        opts = config.server
        self.retries = int(opts["wake_retries"])
        self.retry_delay = float(opts["wake_retry_delay"])
        self.retry_max = float(opts["wake_retry_max"])
        self.members = config.group_members()
        # How retries and test wakes are asked for: straight to the fleet here; the policy gate
        # (rails.PowerRails) puts itself in between, so they obey its rate limits like any other wake.
        self.request_wake: Callable[..., Any] = lambda record, cause, test=False: fleet.wake(
            record, cause, source="health", test=test
        )
        now = fleet.clock.wall()
        self.windows = [
            WakeTestWindow(
                name,
                opts_["test_wake"],
                float(opts_["test_wake_window"]),
                bool(opts_["test_wake_marked"]),
                int(opts_["test_wakes_at_once"]),
                now,
            )
            for name, opts_ in sorted(config.groups.items())
            if opts_.get("test_wake") is not None
        ]

    # -- what Fleet tells us --------------------------------------------------------------------
    def started(self, record: HostRecord, now: float, method: str, cause: str, test: bool = False) -> None:
        health = record.wake_health
        if health.get("in_flight"):
            return  # a second request for a wake being confirmed: the first attempt's start counts
        health.update({"method": method, "cause": cause[:256], "started": now, "in_flight": True, "test": bool(test)})
        self.registry.touch()

    def escalated(self, record: HostRecord) -> None:
        record.wake_health["method"] = "escalated"
        self.registry.touch()

    def succeeded(self, record: HostRecord, now: float) -> None:
        health = record.wake_health
        if not health.get("in_flight"):
            return  # confirmed without a wake of ours in flight (a restart lost the attempt): nothing to time
        if health.get("marked"):
            self.log.warning("host %s: wake succeeded, the failed-wake mark is cleared", record.name)
        health.update(
            {
                "result": "succeeded",
                "marked": False,
                "ended": now,
                "seconds": _took(health, now),
                "error": None,
                "in_flight": False,
                "failures": 0,
                "retries": 0,
                "retry_at": None,
                "last_success": now,
            }
        )
        self.registry.touch(urgent=True)

    def failed(self, record: HostRecord, now: float, error: str, method: Optional[str] = None) -> None:
        health = record.wake_health
        if method is not None:  # nothing could be sent: the attempt ends where it starts
            health.update({"method": method, "started": now, "test": False})
        failures = int(health.get("failures") or 0) + 1
        retries = int(health.get("retries") or 0)
        health.update(
            {
                "result": "failed",
                "marked": True,
                "ended": now,
                "seconds": _took(health, now),
                "error": error[:256],
                "in_flight": False,
                "failures": failures,
                "retry_at": None,
            }
        )
        # Retried: a wake that went out and was not confirmed (not a test wake: its window retries it; not a
        # host with no way to wake at all: a retry could not do better).
        if retries < self.retries and not health.get("test") and method is None and self._wanted(record):
            health["retry_at"] = now + min(self.retry_max, self.retry_delay * (2**retries))
        self.log.warning(
            "host %s: wake failed (%s), marked: kept out of napping until a wake succeeds%s",
            record.name,
            error,
            "; retry %d/%d in %ds" % (retries + 1, self.retries, health["retry_at"] - now)
            if health["retry_at"]
            else "",
        )
        self.registry.touch(urgent=True)

    def napped(self, record: HostRecord) -> None:
        """A nap went out (past the mark only when forced, e.g. a UPS emergency): no wake is wanted now."""
        health = record.wake_health
        if health.get("retry_at") is not None or health.get("in_flight"):
            health.update({"retry_at": None, "in_flight": False})  # Fleet.nap dropped any wake being confirmed
            self.registry.touch()

    # -- the rules ------------------------------------------------------------------------------
    def nap_refusal(self, record: HostRecord, now: float) -> Optional[str]:
        """Why ``record`` must not be napped now (its last wake failed), or None."""
        health = record.wake_health
        if not health.get("marked"):
            return None
        return "host %s is marked: its wake failed (%s, %s) and none has succeeded since; it is kept out of " % (
            record.name,
            health.get("method") or "?",
            health.get("error") or "failed",
        ) + "napping until a wake succeeds (powerwake clear-mark %s clears the mark)" % (record.name)

    def wake_refusal(self, record: HostRecord, now: float) -> Optional[str]:
        """Why a policy (cluster, schedule) should not wake ``record`` itself now, or None.

        A marked host's wakes belong to its retries and test wakes: a policy wakes a healthy host instead
        of waking a broken one again on every tick."""
        if not record.wake_health.get("marked"):
            return None
        return "host %s is marked (its wake failed): retries and test wakes wake it" % record.name

    def marked(self, record: HostRecord) -> bool:
        return bool(record.wake_health.get("marked"))

    def _wanted(self, record: HostRecord) -> bool:
        return not record.up and record.state != P.WAKING and not record.hold

    # -- admin ----------------------------------------------------------------------------------
    def clear(self, record: HostRecord, who: str, now: float) -> Dict[str, Any]:
        """An admin clears the mark: the host may nap and be woken by the policies again."""
        health = record.wake_health
        was = bool(health.get("marked"))
        health.update({"marked": False, "retry_at": None, "retries": 0, "failures": 0})
        health["cleared"] = ("%s at %d" % (who, int(now)))[:256]
        self.log.warning("host %s: failed-wake mark %s by %s", record.name, "cleared" if was else "(none)", who)
        self.registry.touch(urgent=True)
        return {"host": record.name, "was_marked": was, "wake_health": dict(health)}

    # -- the clock ------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        for record in self.registry.owned():  # fleet mode: each segment's leader retries its own hosts' wakes
            health = record.wake_health
            if health.get("in_flight") and record.name not in self.fleet.waiting:
                health["in_flight"] = False  # an attempt lost across a restart: nothing left to confirm
            retry_at = health.get("retry_at")
            if retry_at is not None and float(retry_at) > now + self.retry_max:
                # Further than any retry is ever set: the clock was stepped back (or the record says so).
                retry_at = health["retry_at"] = now + self.retry_max
            if retry_at is None or now < float(retry_at) or health.get("in_flight"):
                continue
            if not self._wanted(record) or not health.get("marked"):
                health["retry_at"] = None  # it came up, or is held, or was cleared: nothing to retry
                continue
            health["retries"] = int(health.get("retries") or 0) + 1
            health["retry_at"] = None
            self.request_wake(
                record,
                "retry %d/%d of a failed wake (%s)" % (health["retries"], self.retries, health.get("cause") or "?"),
            )
        for window in self.windows:
            if window.is_open(now):
                self._test_wakes(window, now)

    def _test_wakes(self, window: WakeTestWindow, now: float) -> None:
        owns = self.registry.owns  # fleet mode: a segment's leader tests its own hosts
        records = [
            r
            for r in (self.registry.get(n) for n in self.members.get(window.group, ()))
            if r is not None and (owns is None or owns(r))
        ]
        busy = sum(1 for r in records if r.wake_health.get("in_flight") and r.wake_health.get("test"))
        free = window.at_once - busy
        if free <= 0:
            return
        due = [
            r
            for r in records
            if r.name not in window.tested
            and r.asleep
            and not r.hold
            and not r.wake_health.get("in_flight")
            and (
                r.wake_health.get("result", "never") == "never"
                or (window.marked and r.wake_health.get("marked") and r.wake_health.get("retry_at") is None)
            )
        ]
        for record in by_power_since(due)[:free]:
            window.tested.add(record.name)
            self.request_wake(record, "test wake (group %s window)" % window.group, test=True)

    def to_dict(self, now: float) -> Dict[str, Any]:
        counts = {"never": 0, "succeeded": 0, "failed": 0}
        marked: List[str] = []
        retrying: List[Dict[str, Any]] = []
        for record in sorted(self.registry, key=lambda r: r.name):
            health = record.wake_health
            result = str(health.get("result") or "never")
            counts[result] = counts.get(result, 0) + 1
            if health.get("marked"):
                marked.append(record.name)
            if health.get("retry_at") is not None:
                retrying.append({"host": record.name, "at": health["retry_at"], "retries": health.get("retries", 0)})
        return {
            "results": counts,
            "marked": len(marked),
            "marked_hosts": marked[:MAX_LISTED],
            "retrying": retrying[:MAX_LISTED],
            "retry": {"limit": self.retries, "delay": self.retry_delay, "max_delay": self.retry_max},
            "test_windows": [window.to_dict(now) for window in self.windows],
        }
