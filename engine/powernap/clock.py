"""Time sources.  The engine measures idleness on the monotonic clock only;
wall-clock time is used for schedules, RTC alarms and reports."""

import time


class Clock:
    """The real clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def boottime(self) -> float:
        """Monotonic time that keeps counting while suspended (detects a resume)."""
        return time.clock_gettime(time.CLOCK_BOOTTIME)

    def wall(self) -> float:
        return time.time()


class FakeClock(Clock):
    """A clock tests move by hand.  ``sleep_through(s)`` simulates a suspend:
    boottime and wall time advance, monotonic time does not."""

    def __init__(self, start_wall: float = 1_700_000_000.0):
        self._mono = 1000.0
        self._boot = 1000.0
        self._wall = start_wall

    def monotonic(self) -> float:
        return self._mono

    def boottime(self) -> float:
        return self._boot

    def wall(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._boot += seconds
        self._wall += seconds

    def sleep_through(self, seconds: float) -> None:
        self._boot += seconds
        self._wall += seconds
