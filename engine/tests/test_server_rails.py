"""The policy gate (rails.py): rate limits and their queue, anti-flap, daily cap, nap windows,
recommend-only decisions and vetoes, driven by a FakeClock and a recording fleet; the daemon's
wiring (every caller goes through it) and its API on 127.0.0.1."""

import logging
import time

import pytest
from server_fakes import SECRET, Sent, engine_decode, server_config, signed_report

from powernap import powerwake
from powernap.clock import FakeClock
from powernap.server import protocol as P
from powernap.server.cluster import ClusterPolicy
from powernap.server.config import load_config
from powernap.server.fleet import Fleet
from powernap.server.rails import PowerRails, Refusal, Request, Rule
from powernap.server.registry import Registry
from powernap.server.schedule import SchedulePolicy
from powernap.server.ups import UpsPolicy

LOG = logging.getLogger("test.rails")
# 2023-11-14 is a Tuesday; 12:00 local time.
NOON = time.mktime((2023, 11, 14, 12, 0, 0, 0, 0, -1))


def hosts(count, group="web", extra=""):
    names = ["h%02d" % i for i in range(1, count + 1)]
    text = "[group.%s]\nhosts = %s\n%s" % (group, ", ".join(names), extra)
    for index, name in enumerate(names, 1):
        text += "[host.%s]\nmac = 52:54:00:%02x:0c:%02x\n" % (name, index >> 8, index & 255)
    return text


class World:
    """A registry of hosts, a recording Fleet and the gate in front of it."""

    def __init__(self, tmp_path, text, start=NOON, server="", state_file=False):
        self.tmp_path = tmp_path
        self.config = server_config(tmp_path, server + "\n" + text, state_file=state_file)
        self.clock = FakeClock(start_wall=start)
        self.sent = Sent()
        self.registry = Registry(str(tmp_path / "registry.json") if state_file else None)
        self.members = self.config.group_members()
        for name, host in self.config.hosts.items():
            self.registry.define(name, host["mac"], groups=[g for g, m in self.members.items() if name in m])
        self.fleet = Fleet(
            self.registry, self.config, self.clock, self.sent.send_wol, self.sent.send_datagram,
            ipmi=self.sent.run_ipmi, background=False,
        )  # fmt: skip
        self.rails = PowerRails(self.fleet, self.config, self.clock, LOG)
        self.registry.listeners.append(self.rails.on_state_change)
        self.registry.extras["rails"] = self.rails.export
        for index, name in enumerate(sorted(self.config.hosts)):
            self.report(name, "awake", addr=("10.0.0.%d" % (index + 1), 5000))

    def report(self, name, state, addr=None, **extra):
        message = {"kind": "report", "from": name, "host": name, "state": state, "event": "heartbeat",
                   "ts": self.clock.wall(), "nonce": P.new_nonce(), "interval": 30.0,
                   "load": 0.0, "cpus": 1}  # fmt: skip
        message.update(extra)
        return self.registry.accept_report(message, addr, self.clock.wall())

    def asleep(self, *names):
        for name in names:
            self.report(name, "suspending", event="action-start")
        self.clock.advance(30)
        self.registry.tick(self.clock.wall())
        for name in names:
            assert self.registry.get(name).state == "asleep"

    def host(self, name):
        return self.registry.get(name)

    def naps(self):
        return [engine_decode(data)["to"] for data, _address in self.sent.datagrams]

    def advance(self, seconds):
        self.clock.advance(seconds)
        self.rails.tick()


# -- rate limits ----------------------------------------------------------------------------------
def test_a_burst_of_ten_wakes_at_three_a_minute_wakes_three_at_once_and_paces_the_rest(tmp_path):
    world = World(tmp_path, hosts(10), server="wake_rate = 3\n")
    names = sorted(world.config.hosts)
    world.asleep(*names)
    answers = [world.rails.wake(world.host(n), "burst", source="proxy") for n in names]
    assert [a["what"] for a in answers] == ["wake"] * 3 + ["queued"] * 7
    assert answers[3]["reason"] == "rate limit" and answers[9]["position"] == 7
    assert len(world.sent.wol) == 3
    status = world.rails.to_dict(world.clock.wall())
    assert status["queue"]["wake"] == 7 and [e["host"] for e in status["queue"]["head"]] == names[3:]
    assert world.rails.group_view("web", world.clock.wall())["queued"] == {"wake": 7, "nap": 0}
    times = {}
    for second in range(1, 200):
        world.advance(1)
        for mac in world.sent.wol[len(times) + 3 :]:
            times[mac] = second
    assert len(world.sent.wol) == 10
    # One every 20 s after the first three, in the order asked.
    assert list(times.values()) == [20, 40, 60, 80, 100, 120, 140]
    assert world.sent.wol == [world.config.hosts[n]["mac"][0] for n in names]
    assert "waited 20s" in world.fleet.history[-7]["cause"] and world.fleet.history[-7]["source"] == "proxy"


def test_group_limits_bind_their_group_only_and_keep_fifo_per_bucket(tmp_path):
    text = hosts(4, "slow", "wake_rate = 1\n") + "[group.fast]\nhosts = f1\n[host.f1]\nmac = 52:54:00:00:0d:01\n"
    world = World(tmp_path, text)
    world.asleep("h01", "h02", "h03", "f1")
    for name in ("h01", "h02", "h03", "f1"):
        world.rails.wake(world.host(name), "x", source="schedule")
    # slow is held to one a minute; fast is not held behind slow's queue (it goes at the next tick).
    world.advance(0.25)
    assert world.sent.wol == ["52:54:00:00:0c:01", "52:54:00:00:0d:01"]
    world.advance(58.75)
    assert len(world.sent.wol) == 2
    world.advance(1)
    assert world.sent.wol[-1] == "52:54:00:00:0c:02"


def test_the_queue_keeps_one_request_per_host_and_an_opposite_one_cancels_it(tmp_path):
    world = World(tmp_path, hosts(3), server="wake_rate = 1\nnap_rate = 1\n")
    world.asleep("h01", "h02", "h03")
    world.rails.wake(world.host("h01"), "first", source="proxy")
    world.rails.wake(world.host("h02"), "second", source="proxy")
    again = world.rails.wake(world.host("h02"), "second again", source="cluster")
    assert again["what"] == "queued" and list(world.rails.queue) == ["h02"]
    assert world.rails.wake(world.host("h02"), "second again", source="api")["position"] == 1
    world.rails.wake(world.host("h02"), "second again", source="cluster")
    assert world.rails.queue["h02"].cause == "second again"
    world.report("h02", "awake")  # it came up by itself: its queued wake is moot
    world.rails.nap(world.host("h02"), None, "nap it", source="api")  # uses the nap bucket: goes at once
    assert world.naps() == ["h02"]
    world.rails.wake(world.host("h03"), "third", source="proxy")
    world.report("h01", "awake")
    world.rails.nap(world.host("h01"), None, "a", source="api")
    world.rails.nap(world.host("h03"), None, "b", source="api")  # h03 is asleep; replaces its queued wake
    assert "h03" in world.rails.queue and world.rails.queue["h03"].kind == "nap"
    assert world.rails.counts["cancelled"] == 2  # h02's moot wake by the nap, h03's wake by its nap


def test_asking_again_for_every_queued_host_costs_linear_time_not_quadratic(tmp_path):
    # A schedule asks again for each of its hosts every minute while the nap rate limit holds them:
    # with 10,000 queued, a walk of the queue per request made that one tick take seconds.
    world = World(tmp_path, hosts(10000), server="nap_rate = 1\nqueue_size = 100000\n")
    records = [world.host(name) for name in sorted(world.config.hosts)]
    for record in records:
        world.rails.nap(record, None, "nap window", source="schedule")
    assert len(world.rails.queue) == 9999
    started = time.perf_counter()
    for record in records[1:]:
        assert world.rails.nap(record, None, "nap window again", source="schedule")["what"] == "queued"
    assert time.perf_counter() - started < 1.0
    assert list(world.rails.queue) == [r.name for r in records[1:]]  # each kept its place


def test_a_burst_of_wakes_inside_their_cooldown_costs_linear_time(tmp_path):
    # A schedule's wake time shortly after its hosts napped: 10,000 wakes wait out wake_after_nap; each new one
    # walked every cooling-down request ahead of it to see whether it would overtake one (4 s in one tick).
    world = World(
        tmp_path, hosts(10000, extra="wake_after_nap = 10m\n"), server="queue_size = 100000\nwake_rate = 100000\n"
    )
    records = [world.host(name) for name in sorted(world.config.hosts)]
    for record in records:
        world.report(record.name, "suspending", event="action-start")
    world.clock.advance(30)
    world.registry.tick(world.clock.wall())
    started = time.perf_counter()
    for record in records:
        assert world.rails.wake(record, "wake time", source="schedule")["what"] == "queued"
    assert time.perf_counter() - started < 1.5
    world.advance(571)
    assert (
        len(world.sent.wol) == 10000 and not world.rails.queue
    )  # no rate limit: a limit that does not bind: all go once cooled down


def test_every_group_view_with_a_full_queue_costs_the_group_not_the_queue(tmp_path):
    # GET /v1/groups asks every group's view under the daemon's lock: 1,000 groups each walking a queue of
    # 10,000 held the lock for over a second.
    text = ""
    for group in range(1000):
        names = ["h%05d" % (group * 10 + i) for i in range(10)]
        text += "[group.g%04d]\nhosts = %s\n" % (group, ", ".join(names))
        for i, name in enumerate(names):
            index = group * 10 + i
            text += "[host.%s]\nmac = 52:54:00:%02x:%02x:%02x\n" % (name, index >> 16, (index >> 8) & 255, index & 255)
    world = World(tmp_path, text, server="nap_rate = 1\nqueue_size = 100000\n")
    for name in sorted(world.config.hosts):
        world.rails.nap(world.host(name), None, "nap window", source="schedule")
    assert len(world.rails.queue) == 9999
    started = time.perf_counter()
    views = [world.rails.group_view(group, world.clock.wall()) for group in sorted(world.config.groups)]
    assert time.perf_counter() - started < 0.4
    assert views[0]["queued"] == {"wake": 0, "nap": 9} and views[1]["queued"] == {"wake": 0, "nap": 10}


def test_a_full_queue_drops_its_oldest_request_with_a_reason(tmp_path):
    world = World(tmp_path, hosts(5), server="wake_rate = 1\nqueue_size = 2\n")
    world.asleep(*sorted(world.config.hosts))
    for name in sorted(world.config.hosts):
        world.rails.wake(world.host(name), "x", source="proxy")
    assert list(world.rails.queue) == ["h04", "h05"]
    assert [r["host"] for r in world.rails.refused] == ["h02", "h03"]
    assert "queue_size = 2" in world.rails.refused[0]["reason"]


def test_a_queued_request_too_old_is_dropped(tmp_path):
    world = World(tmp_path, hosts(2), server="wake_rate = 0.01\nqueue_timeout = 10m\n")
    world.asleep("h01", "h02")
    world.rails.wake(world.host("h01"), "x", source="proxy")
    world.rails.wake(world.host("h02"), "x", source="proxy")
    world.advance(601)
    assert not world.rails.queue and "queue_timeout" in world.rails.refused[-1]["reason"]


def test_ups_emergency_naps_pass_the_nap_rate_limit_and_on_battery_naps_do_not(tmp_path):
    text = hosts(4) + "[ups.rack]\nups = rack\ngroups = web\nafter = 0\n"
    world = World(tmp_path, text, server="nap_rate = 1\n")
    policy = UpsPolicy("rack", world.config.named["ups"]["rack"], world.rails, world.members, LOG)
    policy.observe((["OB"], 50.0, "ok"), world.clock.wall())
    assert len(world.naps()) == 1 and len(world.rails.queue) == 3  # on battery: paced
    (tmp_path / "2").mkdir()
    world2 = World(tmp_path / "2", text, server="nap_rate = 1\n")
    policy2 = UpsPolicy("rack", world2.config.named["ups"]["rack"], world2.rails, world2.members, LOG)
    policy2.observe((["OB", "LB"], 5.0, "ok"), world2.clock.wall())
    assert sorted(world2.naps()) == ["h01", "h02", "h03", "h04"]  # low battery: all at once
    assert all(e.get("urgent") and e["source"] == "ups" for e in world2.fleet.history)


def test_low_battery_hurries_the_on_battery_naps_still_waiting_in_the_queue(tmp_path):
    # On battery the first group's naps are paced; when LB comes, those still queued must go at once too.
    text = hosts(4) + "[ups.rack]\nups = rack\ngroups = web\nafter = 0\n"
    world = World(tmp_path, text, server="nap_rate = 1\n")
    policy = UpsPolicy("rack", world.config.named["ups"]["rack"], world.rails, world.members, LOG)
    policy.observe((["OB"], 50.0, "ok"), world.clock.wall())
    assert len(world.naps()) == 1 and len(world.rails.queue) == 3
    world.clock.advance(5)
    policy.observe((["OB", "LB"], 5.0, "ok"), world.clock.wall())
    assert sorted(world.naps()) == ["h01", "h02", "h03", "h04"] and not world.rails.queue
    assert all(e.get("urgent") for e in world.fleet.history[1:])
    policy.observe((["OB", "LB"], 4.0, "ok"), world.clock.wall())
    assert len(world.naps()) == 4  # asked once, not again on every reading


def test_mains_back_withdraws_the_shed_naps_still_waiting_in_the_queue(tmp_path):
    # A short outage: on battery the group's naps are paced; mains is back before the queue has drained.
    text = hosts(4) + "[ups.rack]\nups = rack\ngroups = web\nafter = 0\nstep = 30s\n"
    world = World(tmp_path, text, server="nap_rate = 1\n")
    policy = UpsPolicy("rack", world.config.named["ups"]["rack"], world.rails, world.members, LOG)
    policy.observe((["OB"], 90.0, "ok"), world.clock.wall())
    assert world.naps() == ["h01"] and len(world.rails.queue) == 3
    world.advance(31)
    policy.observe((["OL"], 95.0, "ok"), world.clock.wall())
    assert not policy.shed and not any(r.kind == "nap" for r in world.rails.queue.values())
    for _minute in range(5):
        world.advance(60)
    assert world.naps() == ["h01"]  # nobody napped after the power came back
    assert all(not world.host(name).hold for name in ("h01", "h02", "h03", "h04"))


def test_a_queued_wake_of_a_host_put_on_hold_meanwhile_is_not_sent(tmp_path):
    # Mains back: the wake-back is paced; the power fails again and the group is shed (held) before the
    # queue has drained: the waiting wakes must not wake held hosts during the outage.
    text = hosts(3) + "[ups.rack]\nups = rack\ngroups = web\nafter = 0\nstep = 30s\nresume_delay = 0\n"
    world = World(tmp_path, text, server="wake_rate = 1\n")
    policy = UpsPolicy("rack", world.config.named["ups"]["rack"], world.rails, world.members, LOG)
    policy.observe((["OB", "LB"], 5.0, "ok"), world.clock.wall())
    world.asleep("h01", "h02", "h03")
    world.advance(31)
    policy.observe((["OL"], 90.0, "ok"), world.clock.wall())
    assert len(world.sent.wol) == 1 and len(world.rails.queue) == 2  # paced wake-back
    world.advance(31)
    policy.observe((["OB", "LB"], 5.0, "ok"), world.clock.wall())  # out again: h02, h03 are held
    for _minute in range(5):
        world.advance(60)
    assert len(world.sent.wol) == 1 and not world.rails.queue
    assert "on hold" in world.rails.refused[-1]["reason"]
    assert world.rails.wake(world.host("h02"), "admin", source="api")["what"] == "wake"  # an admin still may


# -- anti-flap ------------------------------------------------------------------------------------
FLAP = "wake_after_nap = 10m\nnap_after_wake = 15m\n"


def test_a_wake_inside_wake_after_nap_waits_for_the_cooldown_but_an_admin_wake_does_not(tmp_path):
    world = World(tmp_path, hosts(2, extra=FLAP))
    world.asleep("h01", "h02")  # napped on their own: the registry saw it
    world.clock.advance(60)
    answer = world.rails.wake(world.host("h01"), "who-has", source="proxy")
    assert answer["what"] == "queued" and answer["reason"].startswith("anti-flap: napped")
    assert world.sent.wol == []
    assert world.rails.wake(world.host("h02"), "admin", source="api")["what"] == "wake"
    world.advance(509)  # h01 napped (went suspending) 9 min 59 s ago
    assert world.sent.wol == ["52:54:00:00:0c:02"]
    world.advance(2)
    assert world.sent.wol == ["52:54:00:00:0c:02", "52:54:00:00:0c:01"]


def test_an_admin_wake_that_joins_a_cooling_down_request_waits_for_the_rate_limit_only(tmp_path):
    world = World(tmp_path, hosts(2, extra=FLAP), server="wake_rate = 1\n")
    world.asleep("h01", "h02")
    world.clock.advance(60)
    assert world.rails.wake(world.host("h02"), "admin", source="api")["what"] == "wake"  # the minute's token
    assert world.rails.wake(world.host("h01"), "who-has", source="proxy")["reason"].startswith("anti-flap")
    answer = world.rails.wake(world.host("h01"), "admin", source="api")  # waits for the token, not the cooldown
    assert answer["what"] == "queued" and answer["reason"] == "rate limit"
    world.advance(61)
    assert world.sent.wol == ["52:54:00:00:0c:02", "52:54:00:00:0c:01"]


def test_a_clock_stepped_back_holds_a_host_for_its_cooldown_at_most(tmp_path):
    # The server ran with a clock days ahead (a bad RTC) and NTP stepped it back: its transition times lie
    # in the future; a cooldown must still end one cooldown from now, not when the clock catches up.
    world = World(tmp_path, hosts(2, extra=FLAP))
    world.asleep("h01", "h02")
    ahead = world.clock.wall() + 10 * 86400
    world.rails.restore({"hosts": {"h01": {"last_nap": ahead, "last_wake": ahead}}})
    world.rails.transitions["h02"].last_nap = ahead  # as a live step back leaves it
    for name in ("h01", "h02"):
        assert world.rails.wake(world.host(name), "who-has", source="proxy")["what"] == "queued"
    world.advance(601)
    assert len(world.sent.wol) == 2


def test_a_policy_nap_inside_nap_after_wake_is_refused_with_its_reason_and_a_ups_nap_is_not(tmp_path):
    world = World(tmp_path, hosts(2, extra=FLAP))
    world.asleep("h01", "h02")
    world.clock.advance(3600)
    for name in ("h01", "h02"):
        world.rails.wake(world.host(name), "schedule", source="schedule")
        world.report(name, "awake")
    world.clock.advance(60)
    answer = world.rails.nap(world.host("h01"), None, "idle", source="cluster")
    assert answer["what"] == "refused" and answer["reason"].startswith("anti-flap: woken 60s ago")
    assert world.rails.refused[-1]["host"] == "h01" and world.naps() == []
    assert world.rails.nap(world.host("h02"), None, "battery", source="ups")["what"] == "nap"
    world.clock.advance(15 * 60)
    assert world.rails.nap(world.host("h01"), None, "idle", source="cluster")["what"] == "nap"


def test_flapping_cluster_load_does_not_cycle_a_host_faster_than_its_cooldowns(tmp_path):
    cluster = "[cluster.web]\ngroup = web\nmin_awake = 1\ncapacity = 1\nlow_for = 0\nstep = 1\n"
    world = World(tmp_path, hosts(2, extra=FLAP) + cluster)
    policy = ClusterPolicy("web", world.config.named["cluster"]["web"], world.rails, world.members, LOG)
    transitions = []  # (time, host, nap|wake): the real transitions, as the gate counts them

    def note(record, old, cause):
        if record.up and old in P.SLEEPING_STATES + (P.WAKING,):
            transitions.append((world.clock.wall(), record.name, "wake"))
        elif record.asleep and old in P.UP_STATES:
            transitions.append((world.clock.wall(), record.name, "nap"))

    world.registry.listeners.append(note)
    for minute in range(240):
        high = (minute // 3) % 2 == 0  # the load flips every 3 minutes
        for name in ("h01", "h02"):
            record = world.host(name)
            if record.up:
                world.report(name, "awake", load=1.5 if high else 0.1)
        for data, _address in world.sent.datagrams:  # the engines obey their nap commands
            world.report(engine_decode(data)["to"], "suspending", event="action-start")
        world.sent.datagrams.clear()
        for mac in world.sent.wol:  # and WoL wakes them
            world.report(next(n for n, h in world.config.hosts.items() if h["mac"][0] == mac), "awake")
        world.sent.wol.clear()
        world.registry.tick(world.clock.wall())
        policy.tick(world.clock.wall())
        world.advance(60)
    assert len(transitions) >= 6  # it did cycle...
    for name in ("h01", "h02"):
        mine = [(t, kind) for t, n, kind in transitions if n == name]
        for (before, first), (after, then) in zip(mine, mine[1:]):
            cooldown = 10 * 60 if (first, then) == ("nap", "wake") else 15 * 60
            assert after - before >= cooldown, (name, mine)  # ...never faster than its cooldowns


def test_the_daily_cap_counts_real_transitions_and_resets_the_next_day(tmp_path):
    world = World(tmp_path, hosts(1, extra="max_transitions = 2\n"))
    world.asleep("h01")  # 1
    world.rails.wake(world.host("h01"), "x", source="proxy")
    world.report("h01", "awake")  # 2
    answer = world.rails.nap(world.host("h01"), None, "idle", source="schedule")
    assert answer["what"] == "refused" and "daily cap: 2 transitions today" in answer["reason"]
    assert world.rails.nap(world.host("h01"), None, "admin", source="api")["what"] == "nap"  # admins are not capped
    assert world.rails.host_view("h01", world.clock.wall())["transitions_today"] == 2
    world.clock.advance(13 * 3600)  # the next day
    assert world.rails.nap(world.host("h01"), None, "idle", source="schedule")["what"] == "nap"


# -- nap windows ----------------------------------------------------------------------------------
WINDOW = "nap_from = Mon..Fri 20:00\nnap_until = Mon..Fri 07:00\n"


def test_policy_naps_only_inside_the_nap_window_admin_and_ups_naps_always(tmp_path):
    world = World(tmp_path, hosts(3, extra=WINDOW))
    answer = world.rails.nap(world.host("h01"), None, "idle", source="schedule")
    assert answer["what"] == "refused" and "outside the nap window of group web" in answer["reason"]
    assert world.rails.nap(world.host("h01"), None, "idle", source="cluster")["what"] == "refused"
    assert world.rails.nap(world.host("h02"), None, "admin", source="api")["what"] == "nap"
    assert world.rails.nap(world.host("h03"), None, "battery", source="ups")["what"] == "nap"
    view = world.rails.group_view("web", world.clock.wall())["nap_window"]
    assert view["open"] is False and view["opens"] == NOON + 8 * 3600
    world.clock.advance(8 * 3600 + 1)  # 20:00:01
    assert world.rails.nap(world.host("h01"), None, "idle", source="cluster")["what"] == "nap"
    assert world.rails.group_view("web", world.clock.wall())["nap_window"]["closes"] == NOON + 19 * 3600
    world.clock.advance(11 * 3600)  # 07:00:01 the next morning
    assert world.rails.nap(world.host("h01"), None, "idle", source="cluster")["what"] == "refused"


def test_nap_from_needs_nap_until(tmp_path):
    path = tmp_path / "powerwaked.conf"
    path.write_text("[powerwaked]\nsecret = %s\nlisten = 127.0.0.1\n[group.web]\nnap_from = 20:00\n" % SECRET)
    _config, errors = load_config([str(path)])
    assert any("nap_from and nap_until go together" in str(e) and ":5:" in str(e) for e in errors), errors


@pytest.mark.parametrize(
    "line",
    ["[powerwaked]\nwake_rate = -1", "[powerwaked]\nqueue_size = 0", "[powerwaked]\nmax_veto = 30d",
     "[group.web]\nmode = dry", "[group.web]\nmax_transitions = x", "[group.web]\nnap_from = 25:00\nnap_until = 1:00"],
)  # fmt: skip
def test_policy_options_are_typed_and_bounded(tmp_path, line):
    path = tmp_path / "powerwaked.conf"
    section, option = line.split("\n", 1)
    head = "[powerwaked]\nsecret = %s\nlisten = 127.0.0.1\n" % SECRET
    text = head + option + "\n" if section == "[powerwaked]" else head + section + "\n" + option + "\n"
    path.write_text(text)
    _config, errors = load_config([str(path)])
    assert errors and "option" in str(errors[0])


# -- recommend-only -------------------------------------------------------------------------------
def test_recommend_only_records_decisions_does_nothing_and_acts_once_approved(tmp_path):
    world = World(tmp_path, hosts(3, extra="mode = recommend\n"), server="decision_ttl = 10m\n")
    world.asleep("h03")
    first = world.rails.nap(world.host("h01"), None, "cluster: surplus", source="cluster")
    assert first["what"] == "decision" and first["kind"] == "nap" and first["group"] == "web"
    again = world.rails.nap(world.host("h01"), None, "cluster: still surplus", source="cluster")
    assert again["id"] == first["id"] and len(world.rails.list_decisions()) == 1
    wake = world.rails.wake(world.host("h03"), "schedule: 07:00", source="schedule")
    assert wake["what"] == "decision"
    assert world.naps() == [] and world.sent.wol == []  # no power change at all
    assert world.rails.group_view("web", world.clock.wall())["decisions"] == 2
    assert world.rails.wake(world.host("h03"), "admin", source="api")["what"] == "wake"  # admins still act
    assert [d["id"] for d in world.rails.list_decisions()] == [first["id"]]  # the wake decision is moot now
    done = world.rails.decide(first["id"], True, "alice")
    assert done["what"] == "nap" and done["source"] == "approved" and "approved by alice" in done["cause"]
    assert world.naps() == ["h01"] and world.rails.decide(first["id"], True, "alice") is None
    second = world.rails.nap(world.host("h02"), None, "surplus", source="cluster")
    rejected = world.rails.decide(second["id"], False, "bob")
    assert rejected["what"] == "rejected" and not world.rails.list_decisions() and world.naps() == ["h01"]
    third = world.rails.nap(world.host("h02"), None, "surplus", source="schedule")
    world.clock.advance(601)
    assert world.rails.list_decisions() == [] and world.rails.decide(third["id"], True, "late") is None


def test_decisions_are_found_by_host_not_by_a_walk_of_them_all(tmp_path):
    # A schedule in recommend-only mode asks again for each of 10,000 hosts every minute: a walk of up to
    # max_decisions per request made that tick take seconds, and /v1/hosts walked them once per host.
    world = World(tmp_path, hosts(10000, extra="mode = recommend\n"), server="max_decisions = 10000\n")
    records = [world.host(name) for name in sorted(world.config.hosts)]
    first = [world.rails.nap(record, None, "idle", source="schedule")["id"] for record in records]
    started = time.perf_counter()
    again = [world.rails.nap(record, None, "still idle", source="schedule")["id"] for record in records]
    views = [world.rails.host_view(record.name, world.clock.wall()) for record in records]
    assert time.perf_counter() - started < 1.0
    assert again == first and len(world.rails.decisions) == 10000
    assert views[5]["decisions"] == [{"id": first[5], "kind": "nap", "expires": world.clock.wall() + 3600}]
    assert world.rails.group_view("web", world.clock.wall())["decisions"] == 10000
    assert world.rails.decide(first[5], False, "admin")["what"] == "rejected"
    assert world.rails.host_view("h06", world.clock.wall())["decisions"] == []
    assert world.rails.nap(records[5], None, "idle", source="schedule")["id"] != first[5]  # a new one


def test_a_decision_whose_point_is_gone_is_dropped(tmp_path):
    world = World(tmp_path, hosts(2, extra="mode = recommend\n"))
    world.asleep("h01")
    decision = world.rails.wake(world.host("h01"), "cluster: need", source="cluster")
    assert [d["id"] for d in world.rails.list_decisions()] == [decision["id"]]
    world.report("h01", "awake")  # it came up by itself
    assert world.rails.list_decisions() == [] and world.rails.decide(decision["id"], True, "late") is None


def test_decisions_are_bounded(tmp_path):
    world = World(tmp_path, hosts(5, extra="mode = recommend\n"), server="max_decisions = 2\n")
    for name in sorted(world.config.hosts):
        world.rails.nap(world.host(name), None, "x", source="cluster")
    assert [d["host"] for d in world.rails.list_decisions()] == ["h04", "h05"]


def test_decisions_dropped_for_room_are_logged_once_per_five_minutes(tmp_path, caplog):
    world = World(tmp_path, hosts(50, extra="mode = recommend\n"), server="max_decisions = 2\n")
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        for _round in range(3):
            for name in sorted(world.config.hosts):
                world.rails.nap(world.host(name), None, "x", source="schedule")
    dropped = [r for r in caplog.records if "max_decisions" in r.getMessage()]
    assert len(dropped) == 1 and world.rails.counts["decisions_dropped"] == 148


# -- vetoes ---------------------------------------------------------------------------------------
def test_a_veto_stops_policy_naps_for_its_time_with_its_reason(tmp_path):
    world = World(tmp_path, hosts(2), server="max_veto = 1h\n")
    veto = world.rails.veto("web", "api alice", 7 * 86400, "quarter-end batch", world.clock.wall())
    assert veto["until"] == world.clock.wall() + 3600  # cut to max_veto
    answer = world.rails.nap(world.host("h01"), None, "idle", source="cluster")
    assert answer["what"] == "refused" and "vetoed by api alice" in answer["reason"]
    assert "quarter-end batch" in answer["reason"]
    view = world.rails.group_view("web", world.clock.wall())
    assert view["vetoed"] and view["vetoes"][0]["reason"] == "quarter-end batch"
    assert world.rails.nap(world.host("h01"), None, "admin", source="api")["what"] == "refused"
    assert world.rails.nap(world.host("h01"), None, "admin", source="api", force=True)["what"] == "nap"
    assert world.rails.nap(world.host("h02"), None, "battery", source="ups")["what"] == "nap"
    world.report("h01", "awake")
    world.clock.advance(3601)
    assert world.rails.nap(world.host("h01"), None, "idle", source="cluster")["what"] == "nap"
    assert world.rails.group_view("web", world.clock.wall())["vetoed"] is False


def test_an_engine_report_vetoes_its_groups_and_lifts_the_veto_with_zero(tmp_path):
    world = World(tmp_path, hosts(2))
    record = world.host("h01")
    world.rails.engine_veto(record, {"veto_for": 600.0, "veto_reason": "monitor backup: rsync"}, world.clock.wall())
    answer = world.rails.nap(world.host("h02"), None, "idle", source="schedule")
    assert answer["what"] == "refused" and "host h01" in answer["reason"] and "rsync" in answer["reason"]
    world.rails.engine_veto(record, {"veto_for": 0.0}, world.clock.wall())
    assert world.rails.nap(world.host("h02"), None, "idle", source="schedule")["what"] == "nap"
    world.rails.engine_veto(record, {}, world.clock.wall())  # says nothing: changes nothing
    assert not world.rails.vetoes["web"]


def test_a_queued_nap_meets_a_veto_that_came_while_it_waited(tmp_path):
    world = World(tmp_path, hosts(2), server="nap_rate = 1\n")
    world.rails.nap(world.host("h01"), None, "idle", source="cluster")
    assert world.rails.nap(world.host("h02"), None, "idle", source="cluster")["what"] == "queued"
    world.rails.veto("web", "api ops", 3600, "incident", world.clock.wall())
    world.advance(61)
    assert world.naps() == ["h01"] and "incident" in world.rails.refused[-1]["reason"]


# -- rules: the extension point, and failure isolation --------------------------------------------
def test_a_registered_rule_refuses_and_a_broken_rule_is_logged_not_fatal(tmp_path, caplog):
    world = World(tmp_path, hosts(2))

    class KeepH01(Rule):
        name = "keep-h01"

        def check(self, request, now):
            if request.kind == "nap" and request.host == "h01":
                return Refusal("wake of h01 failed: kept out of napping")
            return None

    class Broken(Rule):
        name = "broken"

        def check(self, request, now):
            raise RuntimeError("boom")

    world.rails.add_rule(Broken())
    world.rails.add_rule(KeepH01())
    assert world.rails.nap(world.host("h01"), None, "idle", source="cluster")["reason"].startswith("wake of h01")
    assert world.rails.nap(world.host("h02"), None, "idle", source="cluster")["what"] == "nap"
    assert "rule broken failed" in caplog.text


def test_unknown_sources_are_a_programming_error():
    with pytest.raises(ValueError):
        Request("wake", "h1", "somebody", "x")


# -- persistence ----------------------------------------------------------------------------------
def test_queue_decisions_vetoes_and_transitions_survive_a_restart(tmp_path):
    text = hosts(4, extra="mode = act\n") + "[group.rec]\nhosts = h04\nmode = recommend\n"
    world = World(tmp_path, text, server="wake_rate = 1\n", state_file=True)
    world.asleep("h01", "h02", "h03")
    for name in ("h01", "h02", "h03"):
        world.rails.wake(world.host(name), "x", source="proxy")
    decision = world.rails.nap(world.host("h04"), None, "surplus", source="cluster")
    world.rails.veto("web", "api ops", 3600, "incident", world.clock.wall())
    assert world.registry.save(world.clock.wall())
    again = Registry(str(tmp_path / "registry.json"))
    again.load()
    fleet = Fleet(again, world.config, world.clock, Sent().send_wol, Sent().send_datagram, background=False)
    rails = PowerRails(fleet, world.config, world.clock, LOG)
    assert rails.restore(again.saved_extras.get("rails")) == []
    assert list(rails.queue) == ["h02", "h03"]
    assert [d["id"] for d in rails.list_decisions()] == [decision["id"]]
    assert rails.active_vetoes("web", world.clock.wall())[0]["reason"] == "incident"
    assert rails.transitions["h01"].last_nap == world.rails.transitions["h01"].last_nap
    assert rails.host_view("h01", world.clock.wall())["transitions_today"] == 1


def test_hostile_saved_policy_state_is_dropped_entry_by_entry(tmp_path):
    world = World(tmp_path, hosts(2))
    problems = world.rails.restore(
        {
            "queue": [{"kind": "wake", "host": "h01", "source": "proxy", "cause": "x", "at": 1.0},
                      {"kind": "explode", "host": "h02"}, "nonsense"],
            "decisions": [{"id": "zz"}],
            "vetoes": [{"group": "web", "owner": "x", "until": 1e30, "reason": "r"}],
            "hosts": {"h01": {"count": -5}, "h02": {"last_nap": 5.0}},
        }
    )  # fmt: skip
    assert len(problems) == 5 and list(world.rails.queue) == ["h01"]
    assert not world.rails.decisions and not world.rails.vetoes and list(world.rails.transitions) == ["h02"]
    assert world.rails.restore("not a dict") and world.rails.restore(None) == []


def test_saved_times_ahead_of_the_clock_cannot_hold_a_request_or_a_decision_for_ever(tmp_path):
    world = World(tmp_path, hosts(3, extra="[group.rec]\nhosts = h03\nmode = recommend\n"))
    world.asleep("h01", "h02", "h03")
    far = 1e11  # the schema's upper bound for a time: the year 5138
    problems = world.rails.restore(
        {
            "queue": [{"kind": "wake", "host": "h01", "source": "proxy", "cause": "x", "at": far, "not_before": far},
                      {"kind": "wake", "host": "h02", "source": "proxy", "cause": "y", "at": far}],
            "decisions": [{"id": "0123abcd", "kind": "wake", "host": "h03", "source": "schedule", "cause": "z",
                           "at": far, "expires": far, "group": "rec"}],
        }
    )  # fmt: skip
    assert problems == [] and len(world.rails.queue) == 2 and len(world.rails.decisions) == 1
    world.advance(1)
    assert len(world.sent.wol) == 2 and not world.rails.queue  # no cooldown pending: served at once
    world.advance(3601)
    assert world.rails.list_decisions() == []  # lapsed after decision_ttl


def test_saved_vetoes_are_held_to_the_per_group_cap(tmp_path):
    world = World(tmp_path, hosts(2))
    now = world.clock.wall()
    saved = [{"group": "web", "owner": "api o%d" % i, "until": now + 600, "reason": "r"} for i in range(1000)]
    problems = world.rails.restore({"vetoes": saved})
    assert len(world.rails.vetoes["web"]) == 64 and problems  # MAX_VETOES_PER_GROUP, as a live veto is held


# -- the callers ----------------------------------------------------------------------------------
def test_a_schedule_over_10000_hosts_lists_them_in_linear_time(tmp_path):
    # In its nap window a schedule lists its hosts every tick; a list membership test per host made that
    # O(n^2): a third of a second per tick at 10,000 hosts, more than the loop's tick.
    text = hosts(10000) + "[group.also]\nhosts = h01, h02\n"
    text += "[schedule.night]\ngroups = web, also\nwake = 07:00\nnap = 20:00\n"
    world = World(tmp_path, text)
    schedule = SchedulePolicy("night", world.config.named["schedule"]["night"], world.rails, world.members,
                              LOG, world.clock.wall())  # fmt: skip
    started = time.perf_counter()
    listed = schedule.hosts()
    assert time.perf_counter() - started < 0.1
    assert len(listed) == 10000 and listed[0].name == world.members["web"][0]  # each once, in group order


def test_schedule_naps_and_wakes_pass_the_gate_with_their_source(tmp_path):
    text = hosts(2, extra="nap_from = Mon..Fri 21:00\nnap_until = Mon..Fri 06:00\n")
    text += "[schedule.office]\ngroups = web\nwake = Mon..Fri 07:00\nnap = Mon..Fri 20:00\nidle = 1m\n"
    world = World(tmp_path, text, start=NOON + 8 * 3600 - 10)  # 19:59:50
    schedule = SchedulePolicy("office", world.config.named["schedule"]["office"], world.rails, world.members,
                              LOG, world.clock.wall())  # fmt: skip
    world.clock.advance(20)  # 20:00:10: the schedule's window is open, the group's nap window is not yet
    world.report("h01", "awake", idle_seconds=600.0)
    schedule.tick(world.clock.wall())
    assert world.naps() == [] and "outside the nap window" in world.rails.refused[-1]["reason"]
    world.clock.advance(3600)  # 21:00:10
    world.report("h01", "awake", idle_seconds=4000.0)
    schedule.tick(world.clock.wall())
    assert world.naps() == ["h01"] and world.fleet.history[-1]["source"] == "schedule"


# -- the daemon: every path goes through the gate; the API -----------------------------------------
def _server(tmp_path, text, sent, server=""):
    from test_server_api import Running, free_port

    port = free_port()
    config = server_config(tmp_path, "port = %d\nwake_rate = 2\n%s\n%s" % (port, server, text))
    handle = Running.__new__(Running)
    from powernap.server.daemon import Server

    handle.server = Server(config, log=LOG)
    handle.server.fleet.send_wol = sent.send_wol  # nothing leaves 127.0.0.1
    handle.server.fleet.send_datagram = sent.send_datagram
    handle.server.start()
    import threading

    handle.thread = threading.Thread(target=handle.server.run, kwargs={"max_seconds": 60}, daemon=True)
    handle.thread.start()
    handle.url = "http://127.0.0.1:%d" % port
    return handle, port


def test_api_wakes_are_rate_limited_and_queued_work_shows_in_status(tmp_path):
    sent = Sent()
    handle, _port = _server(tmp_path, hosts(5), sent)
    try:
        client = powerwake.ServerClient(handle.url, SECRET)
        answers = [client.post("/v1/wake", {"host": "h%02d" % i}) for i in range(1, 6)]
        assert [a["what"] for a in answers] == ["wake", "wake", "queued", "queued", "queued"]
        assert answers[0]["source"] == "api" and len(sent.wol) == 2
        status = client.get("/v1/status")
        assert status["policy"]["queue"]["wake"] == 3 and status["test_clock"] is False
        assert client.get("/v1/groups/web")["policy"]["queued"]["wake"] == 3
        assert client.get("/v1/hosts/h03")["policy"]["queued"]["kind"] == "wake"
    finally:
        handle.stop()


def test_api_veto_decisions_approve_and_an_engine_veto_over_udp(tmp_path):
    import socket

    from test_server_api import wait_until

    sent = Sent()
    handle, port = _server(tmp_path, hosts(2, extra="mode = recommend\n"), sent)
    try:
        client = powerwake.ServerClient(handle.url, SECRET)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(signed_report("h01", state="awake", event="heartbeat", veto_for=600,
                                      veto_reason="monitor backup: rsync"), ("127.0.0.1", port))  # fmt: skip
            wait_until(lambda: handle.server.reports == 1, what="the report")
        veto = client.get("/v1/groups/web")["policy"]["vetoes"][0]
        assert veto["owner"] == "host h01" and veto["reason"] == "monitor backup: rsync"
        answer = client.post("/v1/groups/web/veto", {"ttl": 120, "reason": "change window"})
        assert answer["owner"].startswith("api ") and answer["until"] > time.time()
        assert len(client.get("/v1/status")["policy"]["vetoes"]) == 2
        assert client.post("/v1/groups/web/veto", {"clear": True})["lifted"] == 2
        with handle.server.lock:
            decision = handle.server.rails.wake(handle.server.registry.get("h02"), "cluster: need", source="cluster")
        listed = client.get("/v1/decisions")["decisions"]
        assert [d["id"] for d in listed] == [decision["id"]] and sent.wol == []
        done = client.post("/v1/decisions/%s/approve" % decision["id"], {})
        assert done["what"] == "wake" and done["decision"] == decision["id"] and len(sent.wol) == 1
        import urllib.error

        with pytest.raises(urllib.error.HTTPError) as info:
            client.post("/v1/decisions/%s/approve" % decision["id"], {})
        assert info.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as info:
            client.post("/v1/groups/web/veto", {"reason": "no ttl"})
        assert info.value.code == 400
    finally:
        handle.stop()


def test_the_proxy_wakes_through_the_gate(tmp_path):
    world = World(tmp_path, hosts(3), server="wake_rate = 1\n")
    from powernap.server.proxy import SleepProxy

    world.asleep("h01", "h02")
    proxy = SleepProxy(world.registry, lambda r, c: world.rails.wake(r, c, source="proxy"), now=world.clock.wall())
    world.host("h01").ips = ["10.0.0.1"]
    world.host("h02").ips = ["10.0.0.2"]
    world.registry._reindex()
    from server_fakes import arp_request

    for target in ("10.0.0.1", "10.0.0.2"):
        proxy.on_frame(arp_request("52:54:00:99:99:99", "10.0.0.9", target), world.clock.wall())
    assert len(world.sent.wol) == 1 and list(world.rails.queue) == ["h02"]


def test_the_test_clock_needs_its_environment_variable(monkeypatch, capsys, tmp_path):
    from powernap.server import daemon

    monkeypatch.delenv(daemon.TEST_CLOCK_ENV, raising=False)
    config = tmp_path / "c.conf"
    config.write_text("[powerwaked]\nsecret = %s\nlisten = 127.0.0.1\n" % SECRET)
    config.chmod(0o600)
    assert daemon.main(["--config", str(config), "--test-clock-start", "1700000000"]) == 2
    assert "tests only" in capsys.readouterr().err
    clock = daemon.TestClock(1_700_000_000.0)
    assert abs(clock.wall() - 1_700_000_000.0) < 5 and abs(clock.real_wall() - time.time()) < 1


def test_the_cli_lists_approves_and_vetoes(tmp_path, monkeypatch):
    import io
    import json

    sent = Sent()
    handle, _port = _server(tmp_path, hosts(2, extra="mode = recommend\n"), sent)
    monkeypatch.setenv("POWERWAKE_SECRET", SECRET)
    common = ["--server", handle.url, "--config", str(tmp_path / "none.conf")]
    try:
        with handle.server.lock:
            decision = handle.server.rails.nap(handle.server.registry.get("h01"), None, "surplus", source="cluster")
        out = io.StringIO()
        assert powerwake.main(["decisions", *common], out=out) == 0
        assert decision["id"] in out.getvalue() and "surplus" in out.getvalue()
        out = io.StringIO()
        assert powerwake.main(["veto", "web", "--for", "2h", "--reason", "audit", *common], out=out) == 0
        assert "naps vetoed until" in out.getvalue() and "(audit)" in out.getvalue()
        out = io.StringIO()
        assert powerwake.main(["approve", decision["id"], "--json", *common], out=out) == 1  # the veto refuses
        assert "vetoed by api" in json.loads(out.getvalue())["reason"]
        assert powerwake.main(["approve", decision["id"], *common], out=io.StringIO()) == 1  # gone: 404
        out = io.StringIO()
        assert powerwake.main(["veto", "web", "--clear", *common], out=out) == 0
        assert "1 veto(es) lifted" in out.getvalue()
    finally:
        handle.stop()


# -- the engine's side of a veto --------------------------------------------------------------------
def test_the_engine_reports_a_veto_while_a_veto_monitor_is_busy_and_lifts_it_after():
    reporter = P.FleetReporter.__new__(P.FleetReporter)
    reporter.veto_monitors, reporter.veto_for = ("backup",), 900.0
    busy = {"monitors": [{"name": "ssh", "active": True}, {"name": "backup", "active": True, "reason": "rsync"}]}
    assert reporter.veto(busy) == {"veto_for": 900.0, "veto_reason": "monitor backup: rsync"}
    idle = {"monitors": [{"name": "ssh", "active": True}, {"name": "backup", "active": False}]}
    assert reporter.veto(idle) == {"veto_for": 0.0}
    assert reporter.veto({}) == {}  # status unknown: says nothing either way
    reporter.veto_monitors = ()
    assert reporter.veto(busy) == {}
    message = {"kind": "report", "from": "h1", "host": "h1", "v": 1, "ts": 1.0, "nonce": "ab",
               "veto_for": 900.0, "veto_reason": "monitor backup: rsync"}  # fmt: skip
    assert P.check_message(message)["veto_for"] == 900.0
    with pytest.raises(P.ProtocolError):
        P.check_message(dict(message, veto_for=30 * 86400))  # bounded
    with pytest.raises(P.ProtocolError):
        P.check_message(dict(message, veto_reason="x" * 300))


def test_engine_veto_monitors_must_name_configured_monitors(tmp_path):
    from powernap.config import load_config as load_engine_config

    path = tmp_path / "powernap.conf"
    path.write_text(
        "[monitor.ssh]\ntype = tcp\nports = 22\n[stage.1]\nafter = 10m\naction = suspend\n"
        "[server]\nveto_monitors = ssh, backup\nveto_for = 30m\n"
    )
    config, errors = load_engine_config([str(path)])
    assert [str(e) for e in errors] == ["%s:8: veto_monitors: no [monitor.backup] section" % path]
    assert config.server["veto_for"] == 1800.0


def test_heartbeats_carry_the_idle_time_and_the_veto_from_the_daemon_status():
    reporter = P.FleetReporter.__new__(P.FleetReporter)
    reporter.host, reporter.state, reporter.stage, reporter.heartbeat = "h1", "awake", None, 30.0
    reporter.root, reporter.control_path, reporter._facts = None, None, {"macs": []}
    reporter.veto_monitors, reporter.veto_for = ("backup",), 600.0
    status = {"state": "awake", "stage": None, "idle_seconds": 321.0, "next_wake": None,
              "monitors": [{"name": "backup", "active": True, "reason": "tar"}]}  # fmt: skip
    reporter._status = lambda: status
    message = reporter._message({"event": "heartbeat"})
    assert message["idle_seconds"] == 321.0 and message["veto_for"] == 600.0
    assert P.check_message(dict(message, v=1, ts=1.0, nonce="ab"))["veto_reason"] == "monitor backup: tar"


def test_a_cluster_nap_the_gate_held_is_asked_again_at_the_next_step(tmp_path):
    cluster = "[cluster.web]\ngroup = web\nmin_awake = 2\ncapacity = 10\nlow_for = 0\nstep = 5s\n"
    world = World(tmp_path, hosts(3, extra=WINDOW) + cluster, start=NOON + 8 * 3600 - 10)  # 19:59:50
    policy = ClusterPolicy("web", world.config.named["cluster"]["web"], world.rails, world.members, LOG)
    for _second in range(0, 20, 5):
        for name in ("h01", "h02", "h03"):
            world.report(name, "awake", load=0.0)
        policy.tick(world.clock.wall())
        world.advance(5)
    # Refused at 19:59:50 and 19:59:55; napped at 20:00:00, not a minute later.
    assert world.naps() == ["h01"] and world.fleet.history[-1]["time"] == NOON + 8 * 3600


def test_the_daemon_hands_every_policy_and_the_proxy_the_gate(tmp_path):
    text = hosts(3) + "[schedule.s]\ngroups = web\nwake = 07:00\n[cluster.c]\ngroup = web\n"
    text += "[ups.u]\nups = u\nhost = 127.0.0.1\nport = 1\ngroups = web\npoll = 60s\ntimeout = 0.2s\n"
    sent = Sent()
    handle, _port = _server(tmp_path, text, sent)
    try:
        server = handle.server
        assert server.schedules[0].fleet is server.rails and server.clusters["web"].fleet is server.rails
        assert server.ups[0][0].fleet is server.rails
        with server.lock:
            for name in ("h01", "h02", "h03"):
                server.registry.get(name).state = "asleep"
                answer = server._proxy_wake(server.registry.get(name), "who-has")
        assert answer["what"] == "queued" and answer["source"] == "proxy" and len(sent.wol) == 2  # wake_rate = 2
    finally:
        handle.stop()


def test_unsigned_readers_get_no_causes_they_may_name_addresses(tmp_path):
    import json
    import urllib.request

    sent = Sent()
    handle, _port = _server(tmp_path, hosts(3), sent, server="read_auth = no\n")
    try:
        client = powerwake.ServerClient(handle.url, SECRET)
        for name in ("h01", "h02", "h03"):
            client.post("/v1/wake", {"host": name})
        with handle.server.lock:
            handle.server._proxy_wake(handle.server.registry.get("h03"), "who-has 10.0.0.3 from 10.0.0.9")
        with urllib.request.urlopen(handle.url + "/v1/status", timeout=5) as reply:
            head = json.loads(reply.read())["policy"]["queue"]["head"]
        assert head and all("cause" not in entry for entry in head)
        with urllib.request.urlopen(handle.url + "/v1/hosts/h03", timeout=5) as reply:
            queued = json.loads(reply.read())["policy"]["queued"]
        assert queued["source"] == "proxy" and "cause" not in queued
        assert "10.0.0.9" in client.get("/v1/status")["policy"]["queue"]["head"][0]["cause"]  # signed: all of it
    finally:
        handle.stop()


def test_unsigned_readers_get_an_engine_veto_reason_without_the_clients_its_monitor_names(tmp_path):
    import urllib.request

    handle, _port = _server(tmp_path, hosts(3), Sent(), server="read_auth = no\n")
    private = "monitor ssh: 1 established connection on port 22 (from 198.51.100.7)"
    try:
        server = handle.server
        with server.lock:
            server.rails.veto("web", "host h01", 600, private, server.clock.wall())
            refused = server.rails.nap(server.registry.get("h02"), None, "idle", source="cluster")
        assert refused["what"] == "refused" and "198.51.100.7" in refused["reason"]
        for path in ("/v1/status", "/v1/groups", "/v1/groups/web", "/v1/hosts/h01", "/v1/hosts"):
            with urllib.request.urlopen(handle.url + path, timeout=5) as reply:
                text = reply.read().decode()
            assert "198.51.100.7" not in text, path
            assert "monitor ssh" in text, path  # the veto and which monitor holds it still show
        client = powerwake.ServerClient(handle.url, SECRET)
        assert client.get("/v1/groups/web")["policy"]["vetoes"][0]["reason"] == private  # signed: all of it
        assert private in client.get("/v1/status")["policy"]["refused"][-1]["reason"]
    finally:
        handle.stop()
