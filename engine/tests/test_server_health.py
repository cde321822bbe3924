"""Wake health (last wake, result, duration, method; the failed-wake mark, retries, test wakes) and the
cluster's rotation, driven by a FakeClock and a recording fleet (see test_server_policies.World)."""

import io
import logging
import time
import urllib.error

import pytest
from server_fakes import SECRET, server_config
from test_server_api import Running, _host, _post, free_port, get
from test_server_policies import CLUSTER, World, cluster_policy

from powernap import powerwake
from powernap.server import protocol as P
from powernap.server.daemon import _shown
from powernap.server.health import WakeHealth
from powernap.server.rails import PowerRails
from powernap.server.registry import HostRecord, Registry
from powernap.server.schedule import SchedulePolicy
from powernap.server.ups import UpsPolicy

W1 = "52:54:00:00:0a:01"


def asleep(world, *names):
    """Hosts that reported a suspend and went quiet: the registry calls them asleep."""
    for name in names:
        world.report(name, "suspending", event="action-start")
    world.clock.advance(30)
    world.registry.tick(world.clock.wall())
    for name in names:
        assert world.state(name) == "asleep"


def with_server_options(world, tmp_path, text):
    """The world's fleet with these [powerwaked] options (parsed from INI text like the daemon's)."""
    (tmp_path / "opts").mkdir()
    world.config.server.update(server_config(tmp_path / "opts", text).server)
    world.fleet.health = WakeHealth(world.fleet, world.config, logging.getLogger("t"))


def gate(world):
    """The policy gate over the world's fleet, without rate limits (its wake-health rule is the one under test)."""
    world.config.server.update(wake_rate=0.0, nap_rate=0.0)
    return PowerRails(world.fleet, world.config, world.clock, log=logging.getLogger("t"))


def health(world, name):
    return world.registry.get(name).wake_health


def tick(world, seconds=0.0):
    world.clock.advance(seconds)
    world.fleet.tick()


def test_a_host_never_woken_says_never():
    record = HostRecord("x")
    assert record.wake_health == {"result": "never", "marked": False}


def test_a_confirmed_wake_records_success_duration_and_method(tmp_path):
    world = World(tmp_path)
    asleep(world, "w1")
    world.fleet.wake(world.registry.get("w1"), "test")
    assert health(world, "w1")["in_flight"] is True and health(world, "w1")["method"] == "wol"
    world.clock.advance(12)
    world.report("w1", "awake", event="resume")
    tick(world)
    got = health(world, "w1")
    assert got["result"] == "succeeded" and got["seconds"] == 12.0 and got["method"] == "wol"
    assert got["marked"] is False and got["in_flight"] is False and got["last_success"] == world.clock.wall()


BMC = "\n[host.x1]\nmac = 52:54:00:00:0c:01\nbmc = 192.0.2.91\ngroups = bmc\n"


def test_an_escalated_wake_is_recorded_as_escalated(tmp_path):
    world = World(tmp_path, BMC)
    world.registry.get("x1").wake = ["wol", "ipmi"]  # as the daemon defines it from [host.x1]
    asleep(world, "x1")
    world.fleet.wake(world.registry.get("x1"), "test")
    tick(world, 46)  # WoL not confirmed within confirm_timeout (45 s): IPMI
    assert world.sent.ipmi == [("192.0.2.91", "on")] and health(world, "x1")["method"] == "escalated"
    world.clock.advance(20)
    world.report("x1", "awake", event="start")
    tick(world)
    got = health(world, "x1")
    assert got["result"] == "succeeded" and got["method"] == "escalated" and got["seconds"] == 66.0


def test_an_unconfirmed_wake_marks_the_host_and_keeps_it_out_of_napping(tmp_path):
    world = World(tmp_path)
    asleep(world, "w1")
    world.fleet.wake(world.registry.get("w1"), "API")
    tick(world, 46)
    got = health(world, "w1")
    assert got["result"] == "failed" and got["marked"] is True and got["method"] == "wol"
    assert got["error"] == "not confirmed within 45s" and got["seconds"] == 46.0
    assert world.state("w1") == "asleep"
    rails = gate(world)
    for source in ("api", "cluster", "schedule"):  # the gate's wake-health rule, whoever asks
        entry = rails.nap(world.registry.get("w1"), "suspend", source, source=source)
        assert entry["what"] == "refused" and "marked" in entry["reason"] and world.commands() == []
    world.report("w1", "awake", event="start")  # someone pressed the power button: still marked
    assert "marked" in rails.nap(world.registry.get("w1"), "suspend", "API", source="api")["reason"]
    assert world.commands() == []
    forced = rails.nap(world.registry.get("w1"), "suspend", "admin", source="api", force=True)
    assert forced["what"] != "refused" and world.commands() == [("w1", "suspend")]


def test_a_failed_wake_is_retried_with_capped_exponential_backoff_a_bounded_number_of_times(tmp_path):
    world = World(tmp_path)
    with_server_options(world, tmp_path, "wake_retries = 3\nwake_retry_delay = 60s\nwake_retry_max = 90s\n")
    asleep(world, "w1")
    world.fleet.wake(world.registry.get("w1"), "schedule")
    sends = [world.clock.wall()]
    for _second in range(1200):
        tick(world, 1)
        if len(world.sent.wol) > len(sends):
            sends.append(world.clock.wall())
    # The first wake, then 3 retries: 45 s to give up each time, then 60 s, 120 s capped to 90, 240 capped to 90.
    assert len(world.sent.wol) == 4
    gaps = [round(b - a) for a, b in zip(sends, sends[1:])]
    assert gaps == [45 + 60, 45 + 90, 45 + 90], gaps
    got = health(world, "w1")
    assert got["marked"] is True and got["failures"] == 4 and got["retries"] == 3 and got["retry_at"] is None


def test_the_retry_options_drive_the_backoff(tmp_path):
    world = World(tmp_path)
    with_server_options(world, tmp_path, "wake_retries = 1\nwake_retry_delay = 10s\n")
    asleep(world, "w1")
    world.fleet.wake(world.registry.get("w1"), "API")
    tick(world, 46)
    assert health(world, "w1")["retry_at"] == world.clock.wall() + 10
    tick(world, 10)
    assert len(world.sent.wol) == 2 and health(world, "w1")["retries"] == 1
    tick(world, 46)
    assert health(world, "w1")["retry_at"] is None  # wake_retries = 1: no more
    for _second in range(100):
        tick(world, 10)
    assert len(world.sent.wol) == 2


def test_a_retry_that_succeeds_clears_the_mark_and_a_host_that_came_up_is_not_retried(tmp_path):
    world = World(tmp_path)
    asleep(world, "w1", "w2")
    world.fleet.wake(world.registry.get("w1"), "API")
    world.fleet.wake(world.registry.get("w2"), "API")
    tick(world, 46)
    assert health(world, "w1")["marked"] and health(world, "w2")["marked"]
    world.report("w2", "awake", event="start")  # w2 came up by hand before its retry
    tick(world, 60)
    assert world.sent.wol.count(W1) == 2 and world.sent.wol.count("52:54:00:00:0a:02") == 1
    world.clock.advance(5)
    world.report("w1", "awake", event="resume")
    tick(world)
    got = health(world, "w1")
    assert got["result"] == "succeeded" and got["marked"] is False and got["retries"] == 0 and got["seconds"] == 5.0
    assert health(world, "w2")["marked"] is True and health(world, "w2")["retry_at"] is None


def test_a_retry_time_ahead_of_the_clock_is_brought_within_wake_retry_max(tmp_path):
    # The clock was stepped back (or a saved record says so): a retry can never be further away than
    # wake_retry_max, so one "days from now" would keep a down host marked and unwoken for days.
    world = World(tmp_path)
    with_server_options(world, tmp_path, "wake_retry_max = 10m\n")
    asleep(world, "w1")
    world.fleet.wake(world.registry.get("w1"), "API")
    tick(world, 46)
    health(world, "w1")["retry_at"] = world.clock.wall() + 30 * 86400
    tick(world, 1)
    tick(world, 600)
    assert len(world.sent.wol) == 2 and health(world, "w1")["retries"] == 1


def test_a_host_with_no_way_to_wake_fails_at_once_and_is_not_retried(tmp_path):
    world = World(tmp_path)
    world.registry.define("nomac", groups=["web"])
    record = world.registry.get("nomac")
    world.registry.set_state(record, P.ASLEEP, "test", world.clock.wall())
    world.fleet.wake(record, "API")
    got = health(world, "nomac")
    assert got["result"] == "failed" and got["method"] == "none" and got["marked"] and got["retry_at"] is None


def test_an_admin_clears_the_mark(tmp_path):
    world = World(tmp_path)
    asleep(world, "w1")
    world.fleet.wake(world.registry.get("w1"), "API")
    tick(world, 46)
    answer = world.fleet.health.clear(world.registry.get("w1"), "admin (127.0.0.1)", world.clock.wall())
    assert answer["was_marked"] is True
    got = health(world, "w1")
    assert got["marked"] is False and got["retry_at"] is None and got["result"] == "failed"
    assert got["cleared"].startswith("admin (127.0.0.1) at ")
    tick(world, 3600)
    assert len(world.sent.wol) == 1  # no retry after the clear
    world.report("w1", "awake", event="start")
    assert gate(world).nap(world.registry.get("w1"), "suspend", "API", source="api")["what"] != "refused"


def test_test_wakes_in_the_window_wake_untested_and_marked_sleepers_one_at_a_time(tmp_path):
    extra = "[host.b3]\nmac = 52:54:00:00:0b:03\n[group.night]\nhosts = b1, b2, b3\ntest_wake = *-*-* 03:00 UTC\n"
    world = World(tmp_path, extra, start=1_700_000_000.0)  # 2023-11-14 22:13:20 UTC
    asleep(world, "b1", "b2", "b3")
    world.registry.get("b3").wake_health.update(result="failed", marked=True)  # retries over
    world.registry.get("b2").wake_health.update(result="succeeded", last_success=1.0)  # tested: left alone
    for _minute in range(4 * 60):  # to 02:13
        tick(world, 60)
    assert world.sent.wol == []  # the window is not open yet
    tick(world, 47 * 60 + 1)  # 03:00:20 or so: open
    assert world.sent.wol == ["52:54:00:00:0b:01"]  # one at a time (test_wakes_at_once = 1)
    assert health(world, "b1")["test"] is True and "test wake (group night" in health(world, "b1")["cause"]
    world.clock.advance(20)
    world.report("b1", "awake", event="resume")
    tick(world)
    assert health(world, "b1")["result"] == "succeeded"
    tick(world, 1)
    assert world.sent.wol == ["52:54:00:00:0b:01", "52:54:00:00:0b:03"]  # then the marked one
    world.clock.advance(20)
    world.report("b3", "awake", event="resume")
    tick(world)
    assert health(world, "b3")["result"] == "succeeded" and health(world, "b3")["marked"] is False
    asleep(world, "b1", "b3")  # they nap again by their own engine
    for _minute in range(50):
        tick(world, 60)
    assert len(world.sent.wol) == 2  # once per window
    status = world.fleet.health.to_dict(world.clock.wall())
    assert status["results"] == {"never": 3, "succeeded": 3, "failed": 0} and status["marked"] == 0
    assert status["test_windows"][0]["group"] == "night"


def test_a_failed_test_wake_is_not_retried_by_backoff(tmp_path):
    world = World(tmp_path, "[group.hourly]\nhosts = b1\ntest_wake = *-*-* *:00\n")
    asleep(world, "b1")
    for _second in range(0, 3600, 5):
        tick(world, 5)
        if world.sent.wol:
            break
    tick(world, 46)
    got = health(world, "b1")
    assert got["marked"] is True and got["test"] is True and got["retry_at"] is None


def test_wake_health_and_power_since_survive_a_restart_and_bad_values_are_refused(tmp_path):
    path = str(tmp_path / "registry.json")
    registry = Registry(path)
    record = registry.define("h1", ["52:54:00:00:00:01"])
    registry.set_state(record, P.AWAKE, "test", 100.0)
    record.wake_health.update(result="failed", marked=True, method="wol", seconds=45.0, error="not confirmed")
    registry.save(200.0)
    again = Registry(path)
    again.load()
    loaded = again.get("h1")
    assert loaded.wake_health == record.wake_health and loaded.power_since == 100.0
    problems = []
    bad = HostRecord.from_dict({"name": "h2", "wake_health": {"result": "maybe", "marked": True}}, problems)
    assert bad.wake_health == {"result": "never", "marked": False} and "wake_health" in problems[0]
    extra = HostRecord.from_dict({"name": "h3", "wake_health": {"result": "failed", "evil": 1}}, problems)
    assert extra.wake_health == {"result": "never", "marked": False} and "unknown field" in problems[1]


# -- the policies -------------------------------------------------------------------------------------------
def test_the_cluster_neither_naps_nor_wakes_a_marked_host(tmp_path):
    world = World(tmp_path, CLUSTER)
    cluster = cluster_policy(world)
    world.registry.get("w3").wake_health.update(result="failed", marked=True)
    for _second in range(0, 1500, 30):
        for name in ("w1", "w2", "w3"):
            if (name, "suspend") in world.commands():
                world.report(name, "suspending", event="action-start")
            else:
                world.report(name, "awake", load=0.0 if name == "w3" else 0.1, cpus=1)
        cluster.tick(world.clock.wall())
        world.clock.advance(30)
    assert [host for host, _action in world.commands()] == ["w1", "w2"]  # w3 is the least loaded, but marked
    world.registry.get("w3").wake_health["marked"] = False
    asleep(world, "w3")
    world.registry.get("w3").wake_health["marked"] = True
    world.report("w1", "awake", load=1.3, cpus=1)  # needs 2: wake one of w2 (healthy) and w3 (marked)
    cluster.tick(world.clock.wall())
    assert world.sent.wol == ["52:54:00:00:0a:02"]


def test_the_schedule_does_not_nap_a_marked_host(tmp_path):
    world = World(tmp_path, "\n[schedule.night]\ngroups = web\nnap = *-*-* 20:00\nwake = *-*-* 07:00\nidle = 60\n")
    opts = world.config.named["schedule"]["night"]
    schedule = SchedulePolicy("night", opts, world.fleet, world.members, logging.getLogger("t"), 0.0)
    schedule.napping = True
    world.registry.get("w2").wake_health.update(result="failed", marked=True)
    for name in ("w1", "w2", "w3"):
        world.report(name, "awake", idle_seconds=600.0)
    schedule.tick(world.clock.wall())
    assert sorted(host for host, _action in world.commands()) == ["w1", "w3"]


def test_ups_shedding_naps_a_marked_host_anyway(tmp_path):
    world = World(tmp_path, "\n[ups.rack1]\nups = rack1\ngroups = web\nafter = 0s\n")
    policy = UpsPolicy("rack1", world.config.named["ups"]["rack1"], world.fleet, world.members, logging.getLogger("t"))
    world.registry.get("w1").wake_health.update(result="failed", marked=True, retry_at=1.0)
    policy.observe((["OB", "LB"], 10.0, "ok"), world.clock.wall())
    assert ("w1", "suspend") in world.commands() and health(world, "w1")["retry_at"] is None


def rotation_world(tmp_path, rotation="longest"):
    world = World(tmp_path, CLUSTER.replace("step = 2m", "step = 2m\nrotation = %s" % rotation))
    return world, cluster_policy(world)


def test_rotation_naps_the_host_awake_longest_among_equally_loaded(tmp_path):
    world, cluster = rotation_world(tmp_path)
    # Came up in the order w3, w1, w2 (w3 awake longest), all equally loaded.
    for name in ("w1", "w2", "w3"):
        world.report(name, "suspending", event="action-start")
    world.clock.advance(30)
    world.registry.tick(world.clock.wall())
    for name in ("w3", "w1", "w2"):
        world.report(name, "awake", load=0.1, cpus=1)
        world.clock.advance(10)
    for _second in range(0, 1200, 30):
        for name in ("w1", "w2", "w3"):
            if (name, "suspend") not in world.commands():
                world.report(name, "awake", load=0.1, cpus=1)
            else:
                world.report(name, "suspending", event="action-start")
        cluster.tick(world.clock.wall())
        world.clock.advance(30)
    assert [host for host, _a in world.commands()] == ["w3", "w1"]


def test_rotation_a_clearly_less_loaded_host_still_naps_first(tmp_path):
    world, cluster = rotation_world(tmp_path)
    for _second in range(0, 331, 30):
        world.report("w1", "awake", load=0.1, cpus=1)
        world.report("w2", "awake", load=0.1, cpus=1)
        world.report("w3", "awake", load=0.5, cpus=1)
        cluster.tick(world.clock.wall())
        world.clock.advance(30)
    assert world.commands() == [("w1", "suspend")]  # w3 awake longest too, but busier


def test_rotation_wakes_the_host_asleep_longest(tmp_path):
    world, cluster = rotation_world(tmp_path)
    for name in ("w1", "w3", "w2"):  # w1 asleep longest, then w3, then w2
        world.report(name, "suspending", event="action-start")
        world.clock.advance(40)
        world.registry.tick(world.clock.wall())
    world.report("w1", "awake", event="resume")  # w1 is back: needs 1, the rest stay
    world.report("w1", "awake", load=1.3, cpus=1)  # needs 2
    cluster.tick(world.clock.wall())
    assert world.sent.wol == ["52:54:00:00:0a:03"]  # w3 has slept longer than w2


def test_rotation_by_name(tmp_path):
    world, cluster = rotation_world(tmp_path, "name")
    for name in ("w3", "w2"):
        world.report(name, "suspending", event="action-start")
        world.clock.advance(40)
        world.registry.tick(world.clock.wall())
    world.report("w1", "awake", load=1.3, cpus=1)
    cluster.tick(world.clock.wall())
    assert world.sent.wol == ["52:54:00:00:0a:02"]


# -- the API and the CLI, against a running powerwaked on 127.0.0.1 ----------------------------------------
def test_the_api_refuses_to_nap_a_marked_host_shows_health_and_the_cli_clears_the_mark(tmp_path, monkeypatch):
    port = free_port()
    config = server_config(tmp_path, "port = %d\nconfirm_timeout = 1s\n\n[host.h1]\nmac = 52:54:00:00:0d:01\n" % port)
    handle = Running(config)
    try:
        with handle.server.lock:
            record = handle.server.registry.get("h1")
            handle.server.registry.set_state(record, P.ASLEEP, "test", handle.server.clock.wall())
        assert _post(handle.url + "/v1/wake", {"host": "h1"})["method"] == "wol"  # no host answers it
        deadline = time.monotonic() + 10
        while not _host(handle.url, "h1")["wake_health"].get("marked"):
            assert time.monotonic() < deadline, "h1 not marked"
            time.sleep(0.05)
        shown = _host(handle.url, "h1")["wake_health"]
        assert shown["result"] == "failed" and shown["method"] == "wol" and shown["error"] == "not confirmed within 1s"
        with pytest.raises(urllib.error.HTTPError) as info:
            _post(handle.url + "/v1/nap", {"host": "h1", "action": "poweroff"})
        assert info.value.code == 409 and "marked" in info.value.read().decode()
        status = get(handle.url + "/v1/status")["wake_health"]
        assert status["marked_hosts"] == ["h1"] and status["results"]["failed"] == 1
        monkeypatch.setenv("POWERWAKE_SECRET", SECRET)
        out = io.StringIO()
        assert powerwake.main(["list", "--server", handle.url, "--config", "/x"], out=out) == 0
        assert any(line.split()[:2] == ["h1", "asleep"] and "failed!" in line for line in out.getvalue().splitlines())
        out = io.StringIO()
        assert powerwake.main(["status", "h1", "--server", handle.url, "--config", "/x"], out=out) == 0
        assert "last wake: failed" in out.getvalue() and "MARKED" in out.getvalue()
        out = io.StringIO()
        assert powerwake.main(["clear-mark", "h1", "--server", handle.url, "--config", "/x"], out=out) == 0
        assert out.getvalue() == "h1: mark cleared\n"
        assert _host(handle.url, "h1")["wake_health"]["marked"] is False
        assert _post(handle.url + "/v1/nap", {"host": "h1", "action": "poweroff"})["method"] == "none"  # not refused
        assert powerwake.main(["clear-mark", "nosuch", "--server", handle.url, "--config", "/x"], out=out) == 1
    finally:
        handle.stop()


def test_waking_a_host_that_is_up_is_not_a_wake_attempt(tmp_path):
    world = World(tmp_path)
    world.registry.get("w1").wake_health.update(result="failed", marked=True)
    world.fleet.wake(world.registry.get("w1"), "API")  # w1 is awake (it came up by hand)
    tick(world, 1)
    got = health(world, "w1")
    assert got["marked"] is True and got["result"] == "failed" and not got.get("in_flight")


def test_an_unsigned_reader_gets_wake_health_without_client_addresses(tmp_path):
    record = HostRecord("h1")
    record.wake_health.update(result="failed", marked=True, cause="API request from admin (192.0.2.1)",
                              cleared="admin (192.0.2.1) at 1", method="wol")  # fmt: skip
    shown = _shown(record.to_dict(), full=False)
    assert shown["wake_health"] == {"result": "failed", "marked": True, "method": "wol"}
    assert "192.0.2.1" not in str(shown)
    assert _shown(record.to_dict(), full=True)["wake_health"]["cause"].endswith("(192.0.2.1)")


def test_retries_pass_the_policy_gate_as_the_health_source(tmp_path):
    """Retries obey the gate's rate limits like any other wake: with the gate, the retry is its request."""
    world = World(tmp_path)
    rails = gate(world)
    asleep(world, "w1")
    rails.wake(world.registry.get("w1"), "API", source="api")
    tick(world, 46)  # not confirmed: marked, the first retry is due in 60 s
    tick(world, 61)
    world.fleet.health.tick(world.clock.wall())
    wakes = [entry for entry in world.fleet.history if entry["what"] == "wake"]
    assert [entry.get("source") for entry in wakes] == ["api", "health"]
    assert rails.counts["wakes"] == 2
