"""The daemon's loop in-process, on an injected FakeClock: resume detection and when monitor fds are watched.

The Daemon object is the real one (config, monitors, control socket, signals); only
time is ours.  Each step advances the clock by one interval, so the selector never
waits for real.
"""

import logging
import socket

import pytest
from test_daemon_process import make_root

from powernap.clock import FakeClock
from powernap.daemon import Daemon
from powernap.sysroot import SysRoot

CONFIG = """\
[powernap]
interval = 1s
settle = 5s
wall = no

[monitor.work]
type = process
regex = powernap-test-busy

[stage.1]
after = 10s
action = powersave

[stage.2]
after = 1h
action = suspend
"""


@pytest.fixture
def daemon(tmp_path):
    root = make_root(tmp_path)
    (root / "etc/powernap/powernap.conf").write_text(CONFIG)
    clock = FakeClock()
    d = Daemon(
        [str(root / "etc/powernap/powernap.conf")],
        SysRoot(str(root)),
        clock=clock,
        dry_run=True,
        log=logging.getLogger("powernap-test-loop"),
    )
    d.start()
    try:
        yield d, clock
    finally:
        d.shutdown()


def step(d, clock, seconds=1.0, times=1):
    for _unused in range(times):
        clock.advance(seconds)
        d._iterate()


def names(d):
    return [event["event"] for event in d.events]


def test_a_boottime_jump_is_a_resume(daemon):
    d, clock = daemon
    step(d, clock, times=16)
    assert d.machine.state == "napping" and d.setup.powersave.active
    assert names(d) == ["start", "powersave-apply"]
    # Suspended for 10 minutes: CLOCK_BOOTTIME moved on, CLOCK_MONOTONIC did not.
    clock.sleep_through(600)
    d._iterate()
    assert names(d) == ["start", "powersave-apply", "resume", "powersave-restore"]
    resume = d.events[2]
    assert resume["how"] == "suspended" and resume["slept"] == 600.0 and resume["scheduled"] is False
    status = d.status()
    assert status["state"] == "awake" and not status["powersave"]["active"]
    assert status["idle_seconds"] == 0 and status["last_activity_reason"] == "resumed from sleep"
    assert status["settle_remaining"] == 5.0  # nothing fires right after a resume
    # Idleness starts over: powersave comes back only a full 'after' later.
    step(d, clock, times=9)
    assert d.machine.state == "awake"
    step(d, clock, times=2)
    assert d.machine.state == "napping"


def test_a_short_clock_drift_is_not_a_resume(daemon):
    d, clock = daemon
    step(d, clock, times=3)
    clock.sleep_through(1.0)  # below RESUME_JUMP: NTP slew, a slow read
    d._iterate()
    assert "resume" not in names(d)


def test_monitor_fds_are_watched_only_while_napping(daemon):
    """Awake: event fds are read at each poll (a busy host does not wake the daemon per event);
    napping: they are in the selector, for instant recovery."""
    d, clock = daemon
    slot = d.setup.monitors[0]
    fake_fd, writer = socket.socketpair()  # a stand-in event fd for the monitor
    try:
        slot.monitor.fds = lambda: [fake_fd.fileno()]
        read = []
        slot.monitor.on_readable = lambda fd: read.append(fake_fd.recv(64)) and None
        d._sync_fds()
        assert fake_fd.fileno() not in d._registered  # awake
        writer.send(b"event")
        step(d, clock)
        assert read == [b"event"]  # read at the poll
        step(d, clock, times=12)
        assert d.machine.state == "napping"
        assert d._registered.get(fake_fd.fileno()) == ("monitor", slot)
        d._wake("test")
        step(d, clock)
        assert d.machine.state == "awake" and fake_fd.fileno() not in d._registered
    finally:
        slot.monitor.fds = list
        d._sync_fds()
        fake_fd.close()
        writer.close()


def test_best_effort_on_a_host_without_suspend_is_explained(tmp_path):
    """The audit's VM: no sleep state in /sys/power/state, platform = physical.  best-effort resolves to
    poweroff, and status and explain say so and why."""
    root = make_root(tmp_path)
    (root / "sys/power/state").write_text("\n")
    config = CONFIG.replace("settle = 5s", "settle = 5s\nplatform = physical").replace(
        "after = 1h\naction = suspend", "after = 1h\naction = best-effort"
    )
    (root / "etc/powernap/powernap.conf").write_text(config)
    d = Daemon(
        [str(root / "etc/powernap/powernap.conf")],
        SysRoot(str(root)),
        clock=FakeClock(),
        dry_run=True,
        log=logging.getLogger("powernap-test-loop"),
    )
    d.start()
    try:
        status = d.status()
        assert status["verdict"]["denied"]["suspend"] == "the kernel offers no suspend state (/sys/power/state: empty)"
        assert status["best_effort"]["resolves_to"] == "poweroff"
        assert set(status["best_effort"]["passed_over"]) == {"suspend-then-hibernate", "suspend", "hibernate"}
        explain = "\n".join(d.explain())
        assert "will poweroff, because suspend-then-hibernate is not possible (the kernel offers no suspend" in explain
    finally:
        d.shutdown()


def test_the_action_outcome_names_the_rtc_wake_alarm(daemon):
    """A sleep with a known next wake programs the RTC; the action-done event says so (and for when)."""
    d, clock = daemon
    wake = clock.wall() + 7200
    d.setup.monitors[0].monitor.next_wake = lambda: wake
    step(d, clock, times=3605)
    done = [e for e in d.events if e["event"] == "action-done" and e["action"] == "suspend"]
    assert done, d.events
    # dry run: the alarm is reported, not written; wakeup_delta (default 30s) before the wake
    assert "RTC wake alarm not set (%d)" % int(wake - 30) in done[-1]["detail"], done[-1]
