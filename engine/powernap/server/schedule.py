"""Schedules: per group, calendar windows enforced by the server.

``wake = Mon..Fri 07:00`` wakes every sleeping member at that time (WoL,
IPMI escalation).  ``nap = Mon..Fri 20:00`` opens the nap window: from then
until the next wake, a member that reports ``idle`` seconds of idleness is
told to nap, carrying the next wake time so its engine also programs the
RTC alarm (the host then wakes on its own even if the server is down).
Calendar expressions are the engine's OnCalendar subset
(``powernap.monitors.oncalendar``), so host and server read them alike.
Hosts on hold (UPS) are left alone.  ``fleet`` is the policy gate
(``rails.PowerRails``): its rate limits, nap windows, anti-flap rules and
recommend-only mode apply to every request made here (source ``schedule``).
Hosts marked by a failed wake (``health``) are not picked to nap.
"""

from typing import Any, Dict, List, Optional

from . import protocol as P


class SchedulePolicy:
    def __init__(
        self, name: str, opts: Dict[str, Any], fleet: Any, members: Dict[str, List[str]], log: Any, now: float
    ):
        self.name = name
        self.opts = opts
        self.fleet = fleet
        self.registry = fleet.registry
        self.members = members
        self.log = log
        self.next_wake = opts["wake"].next_after(now) if opts["wake"] is not None else None
        self.next_nap = opts["nap"].next_after(now) if opts["nap"] is not None else None
        # Inside the nap window when the last event was a nap, i.e. the next wake comes before the next nap.
        self.napping = (
            self.next_nap is not None
            and (self.next_wake is None or self.next_wake < self.next_nap)
            and opts["wake"] is not None
        )
        self.napped: Dict[str, float] = {}

    def hosts(self) -> List[Any]:
        names: Dict[str, None] = {}  # ordered and de-duplicated in linear time (a list's "in" made it O(n^2))
        for group in self.opts["groups"]:
            names.update(dict.fromkeys(self.members.get(group, ())))
        return [r for r in (self.registry.get(n) for n in names) if r is not None]

    def tick(self, now: float) -> None:
        if self.next_wake is not None and now >= self.next_wake:
            self.next_wake = self.opts["wake"].next_after(now)
            self.napping = False
            self.napped.clear()
            for record in self.hosts():
                if not record.up and record.state != P.WAKING and not record.hold:
                    self.fleet.wake(record, "schedule %s: wake time" % self.name, source="schedule")
        if self.next_nap is not None and now >= self.next_nap:
            self.next_nap = self.opts["nap"].next_after(now)
            self.napping = True
            self.log.info("schedule %s: nap window open until %s", self.name, self.next_wake)
        if self.napping:
            for record in self.hosts():
                if (
                    self._idle_enough(record)
                    and now - self.napped.get(record.name, 0.0) > 60.0
                    and self.fleet.health.nap_refusal(record, now) is None  # a host that failed to wake stays up
                ):
                    self.napped[record.name] = now
                    group = next((g for g in self.opts["groups"] if g in record.groups), self.opts["groups"][0])
                    self.fleet.nap(
                        record,
                        self.fleet.config.nap_action(group),
                        "schedule %s: nap window, idle %ds" % (self.name, record.idle_seconds or 0),
                        wake_at=self.next_wake,
                        source="schedule",
                    )

    def _idle_enough(self, record: Any) -> bool:
        if record.hold or record.state not in (P.AWAKE, P.NAPPING, P.GRACE, P.RESUMED):
            return False
        return record.idle_seconds is not None and float(record.idle_seconds) >= float(self.opts["idle"])

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "groups": list(self.opts["groups"]),
            "next_wake": self.next_wake,
            "next_nap": self.next_nap,
            "nap_window": self.napping,
        }


def earliest(policies: List[SchedulePolicy], group: str) -> Optional[float]:
    """The next scheduled wake of a group (for the API)."""
    times = [p.next_wake for p in policies if group in p.opts["groups"] and p.next_wake is not None]
    return min(times) if times else None
