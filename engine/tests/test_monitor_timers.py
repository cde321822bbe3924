"""timers monitor and the OnCalendar subset: fake systemctl, fake clock, fixed time zone."""

import calendar
import json
import time

import pytest
from monitor_fakes import make, probe, write

from powernap.clock import FakeClock
from powernap.errors import MonitorError
from powernap.monitors.oncalendar import CalendarEvent
from powernap.monitors.timers import parse_timer_list

# Tue 2023-11-14 22:13:20 UTC
NOW = 1_700_000_000.0


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def at(text):
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S")))


@pytest.mark.parametrize(
    "expression, expected",
    [
        ("Mon..Fri 07:00", "2023-11-15 07:00:00"),
        ("Sat,Sun 10:30:15", "2023-11-18 10:30:15"),
        ("daily", "2023-11-15 00:00:00"),
        ("hourly", "2023-11-14 23:00:00"),
        ("weekly", "2023-11-20 00:00:00"),
        ("monthly", "2023-12-01 00:00:00"),
        ("quarterly", "2024-01-01 00:00:00"),
        ("*:0/15", "2023-11-14 22:15:00"),
        ("*-*-* 22:13:20", "2023-11-15 22:13:20"),  # strictly after now
        ("*-*-* 22:13:21", "2023-11-14 22:13:21"),
        ("2024-02-29 12:00", "2024-02-29 12:00:00"),
        ("02-29 06:00", "2024-02-29 06:00:00"),
        ("Fri *-*-13 00:00", "2024-09-13 00:00:00"),
        ("Tuesday 22:00..23:30", "2023-11-14 22:13:30"),  # as in systemd: minutes 00..23, second 30
    ],
)
def test_calendar_next_event(expression, expected):
    assert CalendarEvent(expression).next_after(NOW) == at(expected)


def test_calendar_steps_ranges_and_utc():
    event = CalendarEvent("Mon..Fri 8..18/2:30")
    assert event.hours == [8, 10, 12, 14, 16, 18] and event.minutes == [30]
    assert event.next_after(NOW) == at("2023-11-15 08:30:00")
    assert CalendarEvent("*-*-01 03:00 UTC").next_after(NOW) == at("2023-12-01 03:00:00")
    assert CalendarEvent("2020-01-01").next_after(NOW) is None  # only in the past


@pytest.mark.parametrize("bad", ["", "Funday", "Mon..Fri 25:00", "*-13-01", "*-*-~01", "Fri..Mon", "12:00 junk"])
def test_calendar_rejects_what_it_does_not_understand(bad):
    with pytest.raises(ValueError):
        CalendarEvent(bad)


def test_calendar_local_time_zone(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    # 07:00 in Berlin (UTC+1 in November) is 06:00 UTC.
    assert CalendarEvent("07:00").next_after(NOW) == at("2023-11-15 06:00:00")


def fake_systemctl(root, rows, code=0):
    body = json.dumps(rows)
    return write(root, "/bin/systemctl", "#!/bin/sh\ncat <<'EOF'\n%s\nEOF\nexit %d\n" % (body, code), mode=0o755)


def timer_rows():
    return [
        {
            "next": int((NOW + 300) * 1e6),
            "left": 300000000,
            "last": None,
            "passed": None,
            "unit": "apt-daily.timer",
            "activates": "apt-daily.service",
        },
        {
            "next": int((NOW + 1200) * 1e6),
            "left": 1200000000,
            "last": None,
            "passed": None,
            "unit": "backup.timer",
            "activates": "backup.service",
        },
        {
            "next": None,
            "left": None,
            "last": int((NOW - 50) * 1e6),
            "passed": 50000000,
            "unit": "oneshot.timer",
            "activates": "oneshot.service",
        },
    ]


def test_parse_timer_list():
    assert parse_timer_list(json.dumps(timer_rows())) == [("apt-daily.timer", NOW + 300), ("backup.timer", NOW + 1200)]
    with pytest.raises(ValueError, match="JSON"):
        parse_timer_list("NEXT LEFT LAST PASSED UNIT ACTIVATES")


def test_systemd_timer_within_window(tmp_path):
    clock = FakeClock(start_wall=NOW)
    systemctl = fake_systemctl(tmp_path, timer_rows())
    monitor = make("timers", clock=clock, systemctl=systemctl, window="10m")
    assert probe(monitor) is None  # backup.timer in 20 min; apt-daily ignored as housekeeping
    assert monitor.next_wake() == NOW + 1200
    clock.advance(601)
    assert monitor.check() == "timer backup.timer due in 599s"
    wide = make("timers", clock=clock, systemctl=systemctl, window="1h", ignore="^$")
    probe(wide)
    assert wide.next_wake() == NOW + 1200  # apt-daily (now in the past) dropped, next is backup
    only = make("timers", clock=FakeClock(start_wall=NOW), systemctl=systemctl, window="10m", units="^apt", ignore="^$")
    assert probe(only) == "timer apt-daily.timer due in 300s"


def test_calendar_entries_and_wake(tmp_path):
    clock = FakeClock(start_wall=NOW)
    monitor = make("timers", clock=clock, systemd="no", calendar="Mon..Fri 07:00, 23:00", window="15m")
    assert monitor.check() is None
    assert monitor.next_wake() == at("2023-11-14 23:00:00")
    clock.advance(at("2023-11-14 22:50:00") - NOW)
    assert monitor.check() == "calendar '23:00' due in 600s"
    clock.advance(11 * 60)  # 23:01: the 23:00 event passed, next is Wed 07:00
    assert monitor.check() is None
    assert monitor.next_wake() == at("2023-11-15 07:00:00")
    assert make("timers", clock=clock, systemd="no", calendar="daily", wake="no").next_wake() is None


def test_systemctl_failure_is_an_error(tmp_path):
    failing = fake_systemctl(tmp_path, [], code=1)
    with pytest.raises(MonitorError, match="exit 1"):
        probe(make("timers", clock=FakeClock(start_wall=NOW), systemctl=failing))
    with pytest.raises(MonitorError, match="cannot run"):
        probe(make("timers", clock=FakeClock(start_wall=NOW), systemctl=str(tmp_path / "missing")))
