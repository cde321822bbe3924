"""UPS, schedule and cluster policies, driven by a FakeClock and a recording fleet; read_ups against a
fake upsd on 127.0.0.1."""

import logging
import socket
import threading
import time

import pytest
from server_fakes import Sent, engine_decode, server_config

from powernap.clock import FakeClock
from powernap.server import protocol as P
from powernap.server.cluster import ClusterPolicy, parse_load
from powernap.server.fleet import Fleet
from powernap.server.registry import Registry
from powernap.server.schedule import SchedulePolicy
from powernap.server.ups import UpsPolicy, read_ups

HOSTS = """
[group.batch]
hosts = b1, b2
nap_action = hibernate
[group.web]
hosts = w1, w2, w3
[host.b1]
mac = 52:54:00:00:0b:01
[host.b2]
mac = 52:54:00:00:0b:02
[host.w1]
mac = 52:54:00:00:0a:01
[host.w2]
mac = 52:54:00:00:0a:02
[host.w3]
mac = 52:54:00:00:0a:03
"""


class World:
    def __init__(self, tmp_path, extra="", start=1_700_000_000.0):
        self.config = server_config(tmp_path, HOSTS + extra)
        self.clock = FakeClock(start_wall=start)
        self.sent = Sent()
        self.registry = Registry(None)
        for name, host in self.config.hosts.items():
            self.registry.define(name, host["mac"], groups=[])
        self.members = self.config.group_members()
        for group, names in self.members.items():
            for name in names:
                self.registry.get(name).groups.append(group)
        self.fleet = Fleet(
            self.registry,
            self.config,
            self.clock,
            self.sent.send_wol,
            self.sent.send_datagram,
            ipmi=self.sent.run_ipmi,
            background=False,
        )
        for index, name in enumerate(sorted(self.config.hosts)):
            self.report(name, "awake", load=0.1, cpus=1, addr=("10.0.0.%d" % (index + 1), 5000))

    def report(self, name, state, addr=None, **extra):
        message = {
            "kind": "report",
            "from": name,
            "host": name,
            "state": state,
            "event": "heartbeat",
            "ts": self.clock.wall(),
            "nonce": P.new_nonce(),
            "interval": 30.0,
        }
        message.update(extra)
        return self.registry.accept_report(message, addr, self.clock.wall())

    def commands(self):
        """(host, action) of every nap command sent, in order."""
        out = []
        for data, _address in self.sent.datagrams:
            message = engine_decode(data)
            out.append((message["to"], message["action"]))
        return out

    def state(self, name):
        return self.registry.get(name).state


def ups_policy(world, **overrides):
    opts = dict(world.config.named["ups"]["rack1"])
    opts.update(overrides)
    return UpsPolicy("rack1", opts, world.fleet, world.members, logging.getLogger("t"))


UPS = "\n[ups.rack1]\nups = rack1\ngroups = batch, web\nafter = 60s\nstep = 10s\nresume_charge = 80\n"


def test_ups_on_battery_sheds_in_order_then_wakes_back_in_reverse(tmp_path):
    world = World(tmp_path, UPS)
    policy = ups_policy(world)
    policy.observe((["OL"], 100.0, "ok"), world.clock.wall())
    policy.observe((["OB", "DISCHRG"], 90.0, "ok"), world.clock.wall())
    world.clock.advance(59)
    policy.observe((["OB"], 85.0, "ok"), world.clock.wall())
    assert world.commands() == []
    world.clock.advance(2)
    policy.observe((["OB"], 84.0, "ok"), world.clock.wall())
    assert world.commands() == [("b1", "hibernate"), ("b2", "hibernate")]
    assert world.registry.get("b1").hold == "ups rack1"
    world.clock.advance(5)
    policy.observe((["OB"], 80.0, "ok"), world.clock.wall())
    assert len(world.commands()) == 2  # the step has not passed
    world.clock.advance(6)
    policy.observe((["OB"], 79.0, "ok"), world.clock.wall())
    assert world.commands()[2:] == [("w1", "suspend"), ("w2", "suspend"), ("w3", "suspend")]
    assert policy.shed == ["batch", "web"]
    for name in ("b1", "b2", "w1", "w2", "w3"):
        world.report(name, "suspending", event="action-start")
    world.clock.advance(30)
    world.registry.tick(world.clock.wall())
    # Mains back but the battery is still low: nothing yet.
    policy.observe((["OL", "CHRG"], 50.0, "ok"), world.clock.wall())
    assert world.sent.wol == []
    world.clock.advance(30)
    policy.observe((["OL", "CHRG"], 81.0, "ok"), world.clock.wall())
    assert sorted(world.sent.wol) == ["52:54:00:00:0a:01", "52:54:00:00:0a:02", "52:54:00:00:0a:03"]
    assert world.registry.get("w1").hold is None and world.registry.get("b1").hold == "ups rack1"
    world.clock.advance(11)
    policy.observe((["OL"], 85.0, "ok"), world.clock.wall())
    assert world.sent.wol[3:] == ["52:54:00:00:0b:01", "52:54:00:00:0b:02"]
    assert policy.shed == []


def test_low_battery_or_fsd_sheds_everything_at_once(tmp_path):
    world = World(tmp_path, UPS)
    policy = ups_policy(world, action="poweroff")
    policy.observe((["OB", "LB"], 10.0, "ok"), world.clock.wall())
    assert [h for h, _a in world.commands()] == ["b1", "b2", "w1", "w2", "w3"]
    assert {a for _h, a in world.commands()} == {"poweroff"}
    assert policy.state == "critical"


def test_unknown_ups_state_takes_no_action(tmp_path):
    world = World(tmp_path, UPS)
    policy = ups_policy(world, after=0.0)
    policy.observe((None, None, "UPS rack1 state unknown (DATA-STALE)"), world.clock.wall())
    world.clock.advance(3600)
    policy.observe((None, None, "cannot reach upsd"), world.clock.wall())
    assert world.commands() == [] and policy.state == "unknown"
    # Shed, then the data goes stale while on mains: no wake-back until the state is known again.
    policy.observe((["OB"], 50.0, "ok"), world.clock.wall())
    assert len(world.commands()) == 2
    world.clock.advance(3600)
    policy.observe((None, None, "DRIVER-NOT-CONNECTED"), world.clock.wall())
    assert world.sent.wol == []


def test_shed_groups_are_remembered_across_a_restart(tmp_path):
    world = World(tmp_path, UPS)
    ups_policy(world, after=0.0).observe((["OB"], 50.0, "ok"), world.clock.wall())
    assert ups_policy(world).shed == ["batch"]


def test_held_hosts_are_not_woken_by_schedules(tmp_path):
    world = World(tmp_path, UPS + "\n[schedule.office]\ngroups = batch\nwake = *-*-* *:*:00\n")
    world.registry.get("b1").hold = "ups rack1"
    for name in ("b1", "b2"):
        world.report(name, "suspending", event="action-start")
    world.clock.advance(30)
    world.registry.tick(world.clock.wall())
    schedule = SchedulePolicy(
        "office",
        world.config.named["schedule"]["office"],
        world.fleet,
        world.members,
        logging.getLogger("t"),
        world.clock.wall(),
    )
    world.clock.advance(60)
    schedule.tick(world.clock.wall())
    assert world.sent.wol == ["52:54:00:00:0b:02"]


class FakeUpsd:
    """Answers the few NUT commands read_ups sends, on 127.0.0.1."""

    def __init__(self, replies):
        self.replies = replies
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        conn, _addr = self.listener.accept()
        with conn, conn.makefile("rwb") as stream:
            for _line_index in range(10):
                line = stream.readline().decode().strip()
                if not line or line == "LOGOUT":
                    return
                stream.write((self.replies.get(line, "ERR UNKNOWN-COMMAND") + "\n").encode())
                stream.flush()

    def close(self):
        self.listener.close()
        self.thread.join(timeout=2)


@pytest.mark.parametrize(
    "replies, expected",
    [
        (
            {
                "GET VAR rack1 ups.status": 'VAR rack1 ups.status "OB LB"',
                "GET VAR rack1 battery.charge": 'VAR rack1 battery.charge "12"',
            },
            (["OB", "LB"], 12.0),
        ),
        (
            {
                "GET VAR rack1 ups.status": 'VAR rack1 ups.status "OL"',
                "GET VAR rack1 battery.charge": "ERR VAR-NOT-SUPPORTED",
            },
            (["OL"], None),
        ),
        ({"GET VAR rack1 ups.status": "ERR DATA-STALE"}, (None, None)),
        ({"GET VAR rack1 ups.status": "ERR DRIVER-NOT-CONNECTED"}, (None, None)),
    ],
)
def test_read_ups_against_a_fake_upsd(replies, expected):
    upsd = FakeUpsd(replies)
    try:
        tokens, charge, detail = read_ups("127.0.0.1", upsd.port, "rack1", "", "", 2.0)
    finally:
        upsd.close()
    assert (tokens, charge) == expected
    if tokens is None:
        assert "unknown" in detail


def test_read_ups_without_upsd_is_unknown():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tokens, _charge, detail = read_ups("127.0.0.1", port, "rack1", "", "", 1.0)
    assert tokens is None and "cannot reach upsd" in detail


SCHEDULE = "\n[schedule.office]\ngroups = web\nwake = Mon..Fri 07:00\nnap = Mon..Fri 20:00\nidle = 10m\n"


def test_schedule_naps_idle_hosts_after_nap_time_and_wakes_them_at_wake_time(tmp_path):
    # 2023-11-14 is a Tuesday; start at 19:00 local time.
    world = World(tmp_path, SCHEDULE, start=time.mktime((2023, 11, 14, 19, 0, 0, 0, 0, -1)))
    for name in ("w1", "w2", "w3"):
        world.report(name, "awake", idle_seconds=5.0, addr=("10.0.0.9", 5000))
    schedule = SchedulePolicy(
        "office",
        world.config.named["schedule"]["office"],
        world.fleet,
        world.members,
        logging.getLogger("t"),
        world.clock.wall(),
    )
    assert not schedule.napping
    world.clock.advance(3600 + 1)  # 20:00:01
    schedule.tick(world.clock.wall())
    assert schedule.napping and world.commands() == []  # nobody idle long enough yet
    world.report("w2", "awake", idle_seconds=700.0, addr=("10.0.0.9", 5000))
    schedule.tick(world.clock.wall())
    assert world.commands() == [("w2", "suspend")]
    command = engine_decode(world.sent.datagrams[-1][0])
    assert command["wake_at"] == time.mktime((2023, 11, 15, 7, 0, 0, 0, 0, -1))
    world.report("w2", "suspending", event="action-start")
    world.clock.advance(60)
    for name in ("w1", "w3"):
        world.report(name, "awake", idle_seconds=5.0)
    world.registry.tick(world.clock.wall())
    assert world.state("w2") == "asleep"
    world.clock.advance(11 * 3600)  # 07:01 the next morning
    for name in ("w1", "w3"):
        world.report(name, "awake", idle_seconds=5.0)
    schedule.tick(world.clock.wall())
    assert world.sent.wol == ["52:54:00:00:0a:02"] and not schedule.napping


def test_schedule_starts_inside_the_nap_window(tmp_path):
    world = World(tmp_path, SCHEDULE)
    schedule = SchedulePolicy(
        "office",
        world.config.named["schedule"]["office"],
        world.fleet,
        world.members,
        logging.getLogger("t"),
        time.mktime((2023, 11, 14, 23, 0, 0, 0, 0, -1)),
    )
    assert schedule.napping


CLUSTER = "\n[cluster.web]\ngroup = web\nmin_awake = 1\ncapacity = 0.7\nlow_for = 5m\nstep = 2m\n"


def cluster_policy(world, url_load=None):
    return ClusterPolicy(
        "web", world.config.named["cluster"]["web"], world.fleet, world.members, logging.getLogger("t"), url_load
    )


def test_cluster_naps_surplus_one_at_a_time_and_never_the_last(tmp_path):
    world = World(tmp_path, CLUSTER)
    cluster = cluster_policy(world)
    for _second in range(0, 301, 30):
        for name, load in (("w1", 0.2), ("w2", 0.1), ("w3", 0.05)):
            world.report(name, "awake", load=load, cpus=1)
        cluster.tick(world.clock.wall())
        world.clock.advance(30)
    assert cluster.needed == 1
    assert world.commands() == [("w3", "suspend")]  # the least loaded, only one
    world.report("w3", "suspending", event="action-start")
    for _second in range(0, 600, 30):
        for name in ("w1", "w2"):
            if (name, "suspend") in world.commands():  # the engine naps at once
                world.report(name, "suspending", event="action-start")
            else:
                world.report(name, "awake", load=0.1, cpus=1)
        cluster.tick(world.clock.wall())
        world.clock.advance(30)
    assert world.commands() == [("w3", "suspend"), ("w1", "suspend")]  # equal load: by name
    for _second in range(0, 1200, 30):
        world.report("w2", "awake", load=0.0, cpus=1)
        cluster.tick(world.clock.wall())
        world.clock.advance(30)
    assert len(world.commands()) == 2  # min_awake = 1: never the last one


def test_cluster_wakes_hosts_when_load_rises(tmp_path):
    world = World(tmp_path, CLUSTER)
    cluster = cluster_policy(world)
    for name in ("w2", "w3"):
        world.report(name, "suspending", event="action-start")
    world.clock.advance(30)
    world.registry.tick(world.clock.wall())
    world.report("w1", "awake", load=1.3, cpus=1)
    cluster.tick(world.clock.wall())
    assert cluster.needed == 2 and world.sent.wol == ["52:54:00:00:0a:02"]
    assert world.state("w2") == "waking"
    cluster.tick(world.clock.wall())
    assert len(world.sent.wol) == 1  # a waking host counts as awake: no second wake
    world.report("w1", "awake", load=2.0, cpus=1)
    cluster.tick(world.clock.wall())
    assert world.sent.wol == ["52:54:00:00:0a:02", "52:54:00:00:0a:03"]


def test_unknown_load_naps_nobody(tmp_path):
    world = World(tmp_path, CLUSTER)
    cluster = cluster_policy(world)
    for _round in range(40):
        world.report("w1", "awake", load=0.0, cpus=1)
        world.report("w2", "awake", load=0.0, cpus=1)
        cluster.tick(world.clock.wall())  # w3 stopped reporting: the total load is unknown
        world.clock.advance(30)
    assert cluster.load is None and world.commands() == []


def test_external_demand_raises_the_need_until_it_expires(tmp_path):
    world = World(tmp_path, CLUSTER)
    cluster = cluster_policy(world)
    for name in ("w2", "w3"):
        world.report(name, "suspending", event="action-start")
    world.clock.advance(30)
    world.registry.tick(world.clock.wall())
    world.report("w1", "awake", load=0.0, cpus=1)
    answer = cluster.demand(2, 600, "ci-farm", world.clock.wall())
    assert answer["needed"] == 3 and answer["awake"] == 3
    assert sorted(world.sent.wol) == ["52:54:00:00:0a:02", "52:54:00:00:0a:03"]
    world.clock.advance(601)
    assert cluster.compute_needed(world.clock.wall()) == 1


def test_external_demands_are_bounded_and_the_largest_need_is_kept(tmp_path):
    world = World(tmp_path, CLUSTER)
    cluster = cluster_policy(world)
    world.report("w1", "awake", load=0.0, cpus=1)
    need = cluster.demand(3, 3600, "big", world.clock.wall())["needed"]
    for i in range(5000):  # a signed client calling in a loop must not grow the list (nor /v1/status) for ever
        cluster.demand(0, 3600, "loop%d" % i, world.clock.wall())
    assert len(cluster.demands) <= 100 and len(cluster.to_dict(world.clock.wall())["demands"]) <= 100
    assert cluster.compute_needed(world.clock.wall()) == need  # the demand for 3 more stands


def test_parse_load_forms():
    assert parse_load("17\n") == 17.0
    assert parse_load("Active connections: 291 \nserver accepts handled requests\n") == 291.0
    assert parse_load('{"web": {"load": 3.5}}', "web.load") == 3.5
    with pytest.raises(ValueError):
        parse_load("no number here")
