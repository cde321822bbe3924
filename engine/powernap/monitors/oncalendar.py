"""A small, well-defined subset of systemd's OnCalendar= syntax, with next-event computation.

Accepted forms (local time, or UTC with a trailing ``UTC``)::

    minutely | hourly | daily | weekly | monthly | quarterly | yearly | annually
    [WEEKDAYS] [[YEAR-]MONTH-DAY] [HOUR:MINUTE[:SECOND]] [UTC]

WEEKDAYS is a comma list of days or ``..`` ranges (``Mon..Fri``, ``Sat,Sun``;
English names or their 3-letter prefixes).  Every other field is ``*`` or a
comma list of numbers, ``a..b`` ranges and ``/step`` repetitions (``*/15``,
``8..18``, ``0/20``).  A missing date means every day, a missing time means
00:00:00, a missing second means :00.  Not supported (rejected with an
error, never misread): ``~`` last-day syntax, fractional seconds, time zone
names other than UTC.
"""

import calendar
import datetime
import re
import time
from typing import List, Optional, Sequence, Set

_WEEKDAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_SHORTHANDS = {
    "minutely": "*-*-* *:*:00",
    "hourly": "*-*-* *:00:00",
    "daily": "*-*-* 00:00:00",
    "weekly": "Mon *-*-* 00:00:00",
    "monthly": "*-*-01 00:00:00",
    "quarterly": "*-01,04,07,10-01 00:00:00",
    "yearly": "*-01-01 00:00:00",
    "annually": "*-01-01 00:00:00",
}
SEARCH_DAYS = 366 * 5  # horizon for the next event


def _field(text: str, low: int, high: int, what: str) -> List[int]:
    """``*``, ``5``, ``1,3``, ``8..18``, ``*/15``, ``0/20``, ``8..18/2`` to a sorted list within [low, high]."""
    values: Set[int] = set()
    for part in text.split(","):
        base, _unused, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if base == "*":
                start, stop = low, high
            elif ".." in base:
                first, _unused, last = base.partition("..")
                start, stop = int(first), int(last)
            else:
                start = int(base)
                stop = high if step_text else start
        except ValueError:
            raise ValueError("bad %s %r" % (what, part)) from None
        if step < 1 or start < low or stop > high or start > stop:
            raise ValueError("%s %r outside %d..%d" % (what, part, low, high))
        values.update(range(start, stop + 1, step))
    return sorted(values)


def _weekday(name: str) -> int:
    key = name.strip().lower()
    for index, full in enumerate(_WEEKDAY_NAMES):
        if key in (full, full[:3]):
            return index
    raise ValueError("unknown weekday %r" % name)


class CalendarEvent:
    """One parsed calendar expression; ``next_after(epoch)`` gives the next matching instant."""

    def __init__(self, text: str):
        self.text = text.strip()
        spec = _SHORTHANDS.get(self.text.lower(), self.text)
        tokens = spec.split()
        self.utc = bool(tokens) and tokens[-1].upper() == "UTC"
        if self.utc:
            tokens.pop()
        if not tokens:
            raise ValueError("empty calendar expression")
        self.weekdays: Optional[Set[int]] = None
        if tokens and re.match(r"^[A-Za-z]", tokens[0]):
            self.weekdays = set()
            for part in tokens.pop(0).split(","):
                first, sep, last = part.partition("..")
                start, stop = _weekday(first), _weekday(last) if sep else _weekday(first)
                if stop < start:
                    raise ValueError("weekday range %r runs backwards" % part)
                self.weekdays.update(range(start, stop + 1))
        date_text, time_text = "*-*-*", "00:00:00"
        for token in tokens:
            if ":" in token and time_text == "00:00:00" and token.count(":") in (1, 2):
                time_text = token if token.count(":") == 2 else token + ":00"
            elif "-" in token and date_text == "*-*-*" and token.count("-") in (1, 2):
                date_text = token if token.count("-") == 2 else "*-" + token
            else:
                raise ValueError("cannot read %r in calendar expression %r" % (token, self.text))
        year, month, day = date_text.split("-")
        self.years: Optional[List[int]] = None if year == "*" else _field(year, 1970, 2199, "year")
        self.months = _field(month, 1, 12, "month")
        self.days = _field(day, 1, 31, "day")
        hour, minute, second = time_text.split(":")
        self.hours = _field(hour, 0, 23, "hour")
        self.minutes = _field(minute, 0, 59, "minute")
        self.seconds = _field(second, 0, 59, "second")

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return "CalendarEvent(%r)" % self.text

    def _day_matches(self, day: datetime.date) -> bool:
        return (
            (self.years is None or day.year in self.years)
            and day.month in self.months
            and day.day in self.days
            and (self.weekdays is None or day.weekday() in self.weekdays)
        )

    def _epoch(self, day: datetime.date, hms: Sequence[int]) -> float:
        fields = (day.year, day.month, day.day, hms[0], hms[1], hms[2], 0, 0, -1)
        return float(calendar.timegm(fields)) if self.utc else time.mktime(fields)

    def next_after(self, now: float) -> Optional[float]:
        """The first matching instant strictly after ``now`` (epoch seconds), or None within five years."""
        start = int(now) + 1
        parts = time.gmtime(start) if self.utc else time.localtime(start)
        first_day = datetime.date(parts.tm_year, parts.tm_mon, parts.tm_mday)
        floor = (parts.tm_hour, parts.tm_min, parts.tm_sec)
        for offset in range(SEARCH_DAYS):
            day = first_day + datetime.timedelta(days=offset)
            if self.years is not None and day.year > self.years[-1]:
                return None
            if not self._day_matches(day):
                continue
            for hour in self.hours:
                for minute in self.minutes:
                    if offset == 0 and (hour, minute) < floor[:2]:
                        continue
                    for second in self.seconds:
                        if offset == 0 and (hour, minute, second) < floor:
                            continue
                        when = self._epoch(day, (hour, minute, second))
                        if when >= start:  # a DST gap can map a wall time backwards; skip those
                            return when
        return None
