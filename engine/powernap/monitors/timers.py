"""Upcoming scheduled work: systemd timers and calendar entries (also the next RTC wake time)."""

import json
import re
from typing import List, Optional, Tuple

from ..options import Boolean, Duration, ListOf, Option, OptionType, Regex, String
from .base import MONITOR_COMMON_OPTIONS
from .oncalendar import CalendarEvent
from .probing import CommandJob, Job, Outcome, ProbingMonitor

HOUSEKEEPING_TIMERS = re.compile(
    r"^(apt-daily|apt-daily-upgrade|man-db|e2scrub_all|fstrim|logrotate|dpkg-db-backup|systemd-tmpfiles-clean|"
    r"motd-news|fwupd-refresh|phpsessionclean|anacron|mlocate|plocate-updatedb|updatedb|sysstat-collect|"
    r"sysstat-summary|certbot|snapd\.snap-repair|ua-timer|update-notifier-.*|podman-auto-update)\.timer$"
)


class Calendar(OptionType):
    """A calendar expression (systemd OnCalendar subset, see oncalendar.py)."""

    def parse(self, text: str) -> CalendarEvent:
        return CalendarEvent(text)

    def describe(self) -> str:
        return "calendar expression (e.g. 'Mon..Fri 07:00', 'daily', '*-*-01 03:30')"


def parse_timer_list(text: str) -> List[Tuple[str, float]]:
    """``systemctl list-timers --all --output=json`` to [(unit, next elapse epoch)], timers with no next left out."""
    try:
        rows = json.loads(text or "[]")
    except ValueError:
        raise ValueError("systemctl printed no JSON (systemd older than 251?): %r" % text[:80]) from None
    timers = []
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict):
            continue
        usec = row.get("next")
        if isinstance(usec, (int, float)) and 0 < usec < 2**62:
            timers.append((str(row.get("unit") or "?"), usec / 1e6))
    return timers


class TimersMonitor(ProbingMonitor):
    """Activity when a systemd timer or calendar entry is due within a window; the next one sets the RTC wake."""

    TYPE = "timers"
    OPTIONS = MONITOR_COMMON_OPTIONS + (
        Option(
            "window",
            Duration(),
            default=600.0,
            doc="Keep the host up when the next event is due within this long (how early a napping host is "
            "woken for it is the daemon's wake-up margin, not this).",
        ),
        Option(
            "systemd",
            Boolean(),
            default=True,
            doc="Consider systemd timers (from 'systemctl list-timers --all --output=json', systemd 251 "
            "or later, re-read every 'every').",
        ),
        Option(
            "units",
            Regex(),
            default=re.compile(""),
            doc="Only timers whose unit name matches this regular expression count (default: all).",
        ),
        Option(
            "ignore",
            Regex(),
            default=HOUSEKEEPING_TIMERS,
            doc="Timers whose unit name matches this regular expression never count: by default the "
            "distribution's housekeeping (apt-daily, man-db, logrotate, fstrim, ...), which runs "
            "happily whenever the host is next up.",
        ),
        Option(
            "calendar",
            ListOf(Calendar()),
            default=(),
            doc="Extra events in systemd OnCalendar syntax (subset: weekdays, Y-M-D, H:M[:S], '*', lists, "
            "'..' ranges, '/step', daily/weekly/...), e.g. 'Mon..Fri 07:00, Sat 09:30'.",
        ),
        Option(
            "every",
            Duration(minimum=1),
            default=300.0,
            doc="How often the systemd timer list is refreshed (it runs systemctl, so not every check).",
        ),
        Option(
            "timeout",
            Duration(minimum=1),
            default=20.0,
            doc="How long systemctl may take before the attempt counts as an error.",
        ),
        Option("systemctl", String(nonempty=True), default="systemctl", doc="The systemctl program to run."),
        Option(
            "wake",
            Boolean(),
            default=True,
            doc="Offer the next event as the RTC wake-up time, so a napping host is up for it.",
        ),
    )

    def __init__(self, name, options, ctx):
        super().__init__(name, options, ctx)
        self.timers: List[Tuple[str, float]] = []
        self.calendar_next: List[Tuple[str, Optional[float], float]] = []  # (text, next, computed_at)

    def start_probe(self, now: float) -> Job:
        argv = [self.options["systemctl"], "list-timers", "--all", "--output=json", "--no-pager"]
        return CommandJob(argv, self.options["timeout"], now, self._interpret)

    def _interpret(self, code: int, text: str) -> Outcome:
        if code != 0:
            return "systemctl list-timers failed (exit %d): %s" % (code, text.strip()[:120]), None
        try:
            timers = parse_timer_list(text)
        except ValueError as exc:
            return str(exc), None
        self.timers = [
            (unit, when)
            for unit, when in timers
            if self.options["units"].search(unit) and not self.options["ignore"].search(unit)
        ]
        return None, None

    def _calendar_events(self, now: float) -> List[Tuple[str, float]]:
        if not self.calendar_next:
            self.calendar_next = [(str(e), None, float("-inf")) for e in self.options["calendar"]]
        events = []
        refreshed = []
        for (text, when, computed_at), event in zip(self.calendar_next, self.options["calendar"]):
            # Recompute only once the cached event has passed (or hourly when none was found).
            if (when is not None and when <= now) or (when is None and now - computed_at >= 3600):
                when, computed_at = event.next_after(now), now
            refreshed.append((text, when, computed_at))
            if when is not None:
                events.append(("calendar '%s'" % text, when))
        self.calendar_next = refreshed
        return events

    def upcoming(self) -> List[Tuple[str, float]]:
        """Future events as (label, epoch), soonest first."""
        now = self.ctx.clock.wall()
        events = [("timer %s" % unit, when) for unit, when in self.timers if when > now]
        events += self._calendar_events(now)
        return sorted(events, key=lambda item: item[1])

    def check(self) -> Optional[str]:
        if self.options["systemd"]:
            super().check()  # refreshes the timer list; raises MonitorError if systemctl failed
        events = self.upcoming()
        if events:
            label, when = events[0]
            left = when - self.ctx.clock.wall()
            if left <= self.options["window"]:
                return "%s due in %ds" % (label, left)
        return None

    def next_wake(self) -> Optional[float]:
        if not self.options["wake"]:
            return None
        events = self.upcoming()
        return events[0][1] if events else None

    def describe(self) -> str:
        parts = ["systemd timers"] if self.options["systemd"] else []
        parts += ["'%s'" % e for e in self.options["calendar"]]
        return "timers within %gs: %s" % (self.options["window"], ", ".join(parts) or "none")
