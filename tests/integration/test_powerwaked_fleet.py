"""powerwaked fleet mode in the lab: several instances, two L2 segments, one PostgreSQL (issue 18, FLEETMODE.md).

Two labs on segments 1 and 2 (``segment_labs``, two hosts each) are the fleet's segments ``lan-a`` and
``lan-b``; their hosts are ``a1 a2`` (lab A's h1 h2) and ``b1 b2`` (lab B's).  A private PostgreSQL
cluster (``engine/tests/pg_cluster.py``, unix socket only, which every namespace reaches) holds one fresh
database per test.  Each instance runs in its segment's controller namespace (``Powerwaked`` of
test_powerwaked.py, with the fleet options); two instances of one segment share that namespace on two
ports.  The test plays the engines (signed reports, as in test_powerwaked.py).  Wakes are seen in the labs'
event logs and by tcpdump on each lab's LAN bridge.  Every instance is stopped by its PID at the end, and
its log printed (pytest shows it when the test fails).
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from .test_modules import module
from .test_powerwaked import (
    CONNECT_WITH_RETRIES,
    ENGINE,
    LOAD_SERVER,
    PORT,
    PYTHON,
    SECRET,
    Capture,
    Powerwaked,
    power_events,
)

sys.path.insert(0, os.path.join(ENGINE, "tests"))
from pg_cluster import PrivateCluster, binaries  # the engine's tests are not a package

pytestmark = pytest.mark.lab

LEAD_POLL = 1.0  # seconds: [powerwaked] lead_poll of every instance here
# FLEETMODE.md: a free lead is taken within lead_poll + 1 s; a few seconds more for the ARP retry and the wake
TAKEOVER_BOUND = LEAD_POLL + 6.0
SEGMENTS = ("lan-a", "lan-b")
MIRROR_BOUND = 5.0  # seconds: a row one instance wrote is in every other's API this soon (each mirrors every tick)


@pytest.fixture(scope="module")
def pg_cluster():
    bindir = binaries()
    if bindir is None:
        pytest.fail("PostgreSQL is not installed (tools/system-packages.txt: postgresql)", pytrace=False)
    cluster = PrivateCluster(bindir).start()
    try:
        yield cluster
    finally:
        cluster.stop()


class Fleet:
    """One test's fleet: a fresh database, the two segment labs, and the powerwaked instances it started."""

    def __init__(self, cluster, labs, database):
        # createdb (not psycopg): the test runner's Python need not have psycopg, only the daemon's does
        subprocess.run(
            [os.path.join(cluster.bindir, "createdb"), "-h", cluster.socket_dir, "-U", cluster.user, database],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self.store = cluster.url(database)
        self.labs = dict(zip(SEGMENTS, labs, strict=True))
        self.hosts = []  # the [host.*] sections: a1 a2 on lan-a, b1 b2 on lan-b (segment from the subnets)
        self.where = {}  # fleet host name -> (lab, lab host name)
        for segment, lab in self.labs.items():
            for h in lab.hosts:
                name = segment[-1] + h["name"][1:]
                self.hosts.append(dict(h, name=name))
                self.where[name] = (lab, h["name"])
        self.instances = []

    def start(self, instance, segment, port=PORT, extra="", confirm_timeout="20s", fleet_mode=True, options=()):
        """Start instance NAME on SEGMENT (in its lab's controller namespace) and wait for its API.

        ``fleet_mode=False``: one powerwaked of today (no segment option) on the PostgreSQL store.
        ``options``: more ``[powerwaked]`` lines.
        """
        options = ["store = %s" % self.store, *options]
        sections = ""
        if fleet_mode:
            options += ["instance = %s" % instance, "segment = %s" % segment, "lead_poll = %gs" % LEAD_POLL]
            sections = "".join("[segment.%s]\nsubnets = %s\n" % (s, lab.network["lan"]) for s, lab in self.labs.items())
        server = Powerwaked(
            self.labs[segment],
            sections + extra,
            options=options,
            hosts=self.hosts,
            port=port,
            confirm_timeout=confirm_timeout,
        )
        server.name, server.segment = instance, segment
        self.instances.append(server)
        server.start()
        return server

    @staticmethod
    def kill(server):
        """kill -9 the instance (by its PID: `ip netns exec` execs the daemon itself)."""
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=10)
        server.stop()  # only forgets the process and closes its log: it is gone
        return time.time()

    def host(self, name):
        return next(h for h in self.hosts if h["name"] == name)

    def lab_host(self, name):
        return self.where[name]

    def stop_all(self):
        for server in self.instances:
            if server.proc is not None:
                server.stop()
            print(
                "--- powerwaked %s (%s) log, last 4000 characters:\n%s" % (server.name, server.segment, server.logs())
            )
            shutil.rmtree(server.dir, ignore_errors=True)  # it holds the BMC passwords


@pytest.fixture
def fleet(pg_cluster, segment_labs, request):
    database = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:60]
    fleet = Fleet(pg_cluster, segment_labs, database)
    try:
        yield fleet
    finally:
        fleet.stop_all()
        for lab in segment_labs:  # as lab_reset does: every host on, booted, WoL "g"
            for h in lab.hosts:
                lab.wol(h["name"], "g")
                if lab.power_state(h["name"]) != "on":
                    lab.power(h["name"], "on")
                lab.wait_booted(h["name"])


def fleet_status(server):
    return server.get("/v1/status")["fleet"]


def wait_segment_leader(servers, timeout=15):
    """The one instance of ``servers`` (all on one segment) that says it leads the segment."""

    def one_leader():
        leaders = [s for s in servers if s.proc is not None and fleet_status(s)["segment_leader"]]
        return leaders[0] if len(leaders) == 1 else None

    return servers[0].lab.wait_for(one_leader, timeout, "one segment leader among %s" % [s.name for s in servers])


def suspend_reported(fleet, server, name):
    """Suspend the host, then report its suspend (to ``server``).

    In this order, not an engine's: a report first leaves the host up for a moment, and an instance that sees it
    answer then rightly takes it for awake again (nothing in these tests asks for the host meanwhile).
    """
    lab, lab_host = fleet.lab_host(name)
    host = fleet.host(name)
    lab.power(lab_host, "suspend")
    server.report(
        {"host": name, "state": "suspending", "event": "action-start", "macs": [host["mac"]], "ips": [host["address"]]}
    )


def wol_wakes(lab, lab_host, since):
    return [e for e in power_events(lab, lab_host, since) if e.get("to") == "on" and e.get("cause") == "wol"]


# ----------------------------------------------------------------------------- L2 work on the host's segment
def test_wake_asked_on_segment_a_is_carried_out_on_segment_b(fleet):
    a1 = fleet.start("seg-a-1", "lan-a")
    b1 = fleet.start("seg-b-1", "lan-b")
    lab_a, lab_b = fleet.labs["lan-a"], fleet.labs["lan-b"]
    suspend_reported(fleet, b1, "b2")
    try:
        lab_a.wait_for(lambda: a1.host("b2")["state"] == "suspending", MIRROR_BOUND, "seg-a-1 to show b2 suspending")
    except AssertionError:
        raise AssertionError("b2 at seg-a-1: %s; at seg-b-1: %s" % (a1.host("b2"), b1.host("b2"))) from None
    since = time.time()
    on_a, on_b = Capture(lab_a, bridge=True), Capture(lab_b, bridge=True)
    try:
        reply = a1.post("/v1/wake", {"host": "b2"})
        lab_b.wait_power("h2", "on", timeout=30)
        lab_b.stays("h2", "on", seconds=2)
    finally:
        seen_a, seen_b = on_a.stop(), on_b.stop()
    answer = reply["answer"]
    assert reply["status"] == 200 and answer["queued"] is True, reply  # 202 Accepted: a job of lan-b
    assert (answer["host"], answer["segment"]) == ("b2", "lan-b") and isinstance(answer["job"], int), answer
    mac = fleet.host("b2")["mac"]
    assert Capture.count(seen_b, mac) >= 1, seen_b[-2000:]
    assert Capture.count(seen_a, mac) == 0, seen_a[-2000:]  # A's instance sent nothing on its own segment
    assert len(wol_wakes(lab_b, "h2", since)) == 1
    assert not [e for h in ("h1", "h2") for e in power_events(lab_a, h, since)]


def test_power_info_reads_any_instance_about_any_segments_host(fleet):
    """Issue 18: power_info (and so the status playbook) reads any instance.  Here segment B's standby, which leads
    nothing, answers power_info on a host of lab B about a host of segment A, as A's leader last wrote it."""
    lab_b = fleet.labs["lan-b"]
    a1 = fleet.start("seg-a-1", "lan-a", options=["read_auth = no"])
    b1 = fleet.start("seg-b-1", "lan-b", port=PORT, options=["read_auth = no"])
    b2 = fleet.start("seg-b-2", "lan-b", port=PORT + 1, options=["read_auth = no"])
    assert wait_segment_leader([b1, b2]) is b1  # started first
    a1.report({"host": "a1", "state": "awake", "event": "heartbeat", "idle_seconds": 4321.0, "interval": 30.0})
    lab_b.wait_for(lambda: b2.host("a1").get("idle_seconds") == 4321.0, MIRROR_BOUND, "seg-b-2 to show a1's report")
    url = "http://%s:%d" % (lab_b.controller, PORT + 1)
    info = module(lab_b, "h1", "power_info", {"server_url": url, "server_host": "a1"})["h1"]
    server = info["server"]
    assert server["reachable"] and server["found"], server
    assert (server["name"], server["state"], server["segment"], server["idle_seconds"]) == (
        "a1",
        "awake",
        "lan-a",
        4321.0,
    ), server


# ----------------------------------------------------------------------------- losing an instance


def test_killed_proxy_leader_is_replaced_and_the_sleeper_woken_for_an_arp(fleet):
    lab_b = fleet.labs["lan-b"]
    b1 = fleet.start("seg-b-1", "lan-b", port=PORT)
    b2 = fleet.start("seg-b-2", "lan-b", port=PORT + 1)
    leader = wait_segment_leader([b1, b2])
    survivor = b2 if leader is b1 else b1
    lab_b.exec("h1", "ip neigh flush all")  # the who-has for b2 must go out after the kill
    suspend_reported(fleet, leader, "b2")
    lab_b.wait_for(lambda: survivor.host("b2")["state"] == "suspending", 10, "the other instance to show b2")
    killed_at = fleet.kill(leader)
    proc = lab_b.exec(
        "h1", [PYTHON, "-c", CONNECT_WITH_RETRIES, fleet.host("b2")["address"], "60", "3", "0.5"], timeout=90
    )
    assert "connected" in proc.stdout, proc.stdout
    wakes = wol_wakes(lab_b, "h2", killed_at)
    assert len(wakes) == 1, wakes  # woken once, by the new leader's proxy
    took = wakes[0]["t"] - killed_at
    print("b2 woken %.1fs after its proxy leader was killed (bound %.1fs)" % (took, TAKEOVER_BOUND))
    assert took <= TAKEOVER_BOUND, "woken %.1fs after the kill" % took
    status = fleet_status(survivor)
    assert status["segment_leader"] is True and status["segments"]["lan-b"]["leader"] == survivor.name, status
    history = [e for e in survivor.get("/v1/history")["history"] if e["host"] == "b2" and e["what"] == "wake"]
    assert len(history) == 1 and "who-has" in history[0]["cause"], history


def test_killed_instance_holding_a_wake_job_its_job_is_done_by_the_other(fleet):
    lab_b = fleet.labs["lan-b"]
    a1 = fleet.start("seg-a-1", "lan-a")
    b1 = fleet.start("seg-b-1", "lan-b", port=PORT, confirm_timeout="8s")
    b2 = fleet.start("seg-b-2", "lan-b", port=PORT + 1, confirm_timeout="8s")
    leader = wait_segment_leader([b1, b2])
    survivor = b2 if leader is b1 else b1
    lab_b.wol("h2", "d")  # WoL off on b2's NIC: the job stays waiting for a confirmation, then escalates to IPMI
    suspend_reported(fleet, leader, "b2")
    reply = a1.post("/v1/wake", {"host": "b2"})
    assert reply["answer"].get("queued") is True, reply
    lab_b.wait_for(lambda: fleet_status(leader)["jobs"]["running"] >= 1, 10, "the segment leader to run the wake job")
    killed_at = fleet.kill(leader)
    lab_b.wait_power("h2", "on", timeout=60)
    ons = [e for e in power_events(lab_b, "h2", killed_at) if e.get("to") == "on"]
    assert [e["cause"] for e in ons] == ["ipmi"], ons  # the escalation, by the instance that took the job over
    lab_b.wait_for(
        lambda: fleet_status(survivor)["jobs"] == {"queued": 0, "running": 0, "expired": 0},
        20,
        "the job queue of lan-b to empty",
    )
    assert fleet_status(a1)["segments"]["lan-b"]["leader"] == survivor.name


# ----------------------------------------------------------------------------- one view of the fleet
def test_every_instance_shows_the_same_hosts_and_states(fleet):
    a1 = fleet.start("seg-a-1", "lan-a")
    b1 = fleet.start("seg-b-1", "lan-b", port=PORT)
    b2 = fleet.start("seg-b-2", "lan-b", port=PORT + 1)
    leader = wait_segment_leader([b1, b2])
    follower = b2 if leader is b1 else b1
    a1.report(
        {"host": "a1", "state": "awake", "event": "start"},
        {"host": "a2", "state": "napping", "event": "powersave-apply", "stage": 1},
    )
    # to the instance that does not lead lan-b: it verifies and forwards them to the leader
    follower.report(
        {"host": "b1", "state": "napping", "event": "powersave-apply", "stage": 2},
        {"host": "b2", "state": "awake", "event": "start"},
    )
    want = {"a1": ("awake", "lan-a"), "a2": ("napping", "lan-a"), "b1": ("napping", "lan-b"), "b2": ("awake", "lan-b")}
    servers = (a1, b1, b2)

    def view(server):
        hosts = {h["name"]: h for h in server.get("/v1/hosts")["hosts"]}
        return {name: (hosts[name]["state"], hosts[name].get("stage")) for name in sorted(hosts)}

    def agreed():
        views = [view(s) for s in servers]
        return all(v == views[0] for v in views) and {n: s for n, (s, _seg) in views[0].items()} == {
            n: s for n, (s, _seg) in want.items()
        }

    a1.lab.wait_for(agreed, 15, "every instance to show the same hosts and states")
    for server in servers:
        for name, (state, segment) in want.items():
            host = server.host(name)
            assert (host["state"], host["segment"]) == (state, segment), (server.name, host)
        status = fleet_status(server)
        assert status["segments"] == {"lan-a": {"leader": "seg-a-1"}, "lan-b": {"leader": leader.name}}, status
    assert view(a1)["b1"] == ("napping", 2)


def test_history_is_one_for_the_fleet(fleet):
    """FLEETMODE.md: one shared history; a wake asked at A and done on B is in every instance's /v1/history."""
    a1 = fleet.start("seg-a-1", "lan-a")
    b1 = fleet.start("seg-b-1", "lan-b")
    suspend_reported(fleet, b1, "b2")
    reply = a1.post("/v1/wake", {"host": "b2"})
    assert reply["answer"].get("queued") is True, reply
    fleet.labs["lan-b"].wait_power("h2", "on", timeout=30)

    def wakes(server):
        return [(e["host"], e["time"]) for e in server.get("/v1/history")["history"] if e["what"] == "wake"]

    try:
        a1.lab.wait_for(lambda: wakes(a1) == wakes(b1) != [], MIRROR_BOUND, "one history at both instances")
    except AssertionError:
        raise AssertionError("wakes in the history: seg-a-1 %s, seg-b-1 %s" % (wakes(a1), wakes(b1))) from None
    assert [host for host, _instance in wakes(a1)] == ["b2"]


def test_cluster_group_spanning_both_segments_keeps_its_minimum_awake(fleet):
    fd, load_file = tempfile.mkstemp(prefix="pw-load-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("1\n")
    # the policy leader may sit on either segment: each controller namespace serves the same load figure
    loaders = [
        subprocess.Popen(["ip", "netns", "exec", "%s-ctl" % lab.name, PYTHON, "-c", LOAD_SERVER, load_file])
        for lab in fleet.labs.values()
    ]
    where = [fleet.lab_host(name) for name in ("a1", "a2", "b1", "b2")]

    def awake():
        return sum(lab.power_state(h) == "on" for lab, h in where)

    try:
        extra = (
            "[group.web]\nhosts = a1, a2, b1, b2\nnap_action = poweroff\n[cluster.web]\ngroup = web\nmin_awake = 2\n"
            "capacity = 10\nsource = url\nurl = http://127.0.0.1:8099/\nlow_for = 3s\nstep = 2s\n"
        )
        a1 = fleet.start("seg-a-1", "lan-a", extra=extra)
        b1 = fleet.start("seg-b-1", "lan-b", extra=extra)
        a1.report(*({"host": h, "state": "awake", "event": "start"} for h in ("a1", "a2")))
        b1.report(*({"host": h, "state": "awake", "event": "start"} for h in ("b1", "b2")))
        a1.lab.wait_for(lambda: awake() == 2, 90, "the cluster to nap two of the four web hosts")
        deadline = time.monotonic() + 8  # several steps: never below the minimum, on either segment
        while time.monotonic() < deadline:
            assert awake() == 2, [(lab.name, h, lab.power_state(h)) for lab, h in where]
            time.sleep(0.5)
        # the cluster ran once for the fleet: the policy leader decided one nap per napped host
        leader = next(s for s in (a1, b1) if fleet_status(s)["policy_leader"])
        naps = [e["host"] for e in leader.get("/v1/history")["history"] if e["what"] == "nap"]
        assert len(naps) == 2 and len(set(naps)) == 2, (leader.name, naps)
        with open(load_file, "w", encoding="utf-8") as handle:
            handle.write("35\n")  # needs all four
        a1.lab.wait_for(lambda: awake() == 4, 120, "the cluster to wake every web host")
    finally:
        for loader in loaders:
            loader.send_signal(signal.SIGTERM)
            loader.wait(timeout=10)
        os.unlink(load_file)


# ----------------------------------------------------------------------------- durability
SEND_ACKED = r"""
import json, socket, sys, time
sys.path.insert(0, %(engine)r)
from powernap.fleet_keys import host_key
from powernap.server import protocol as P
count, deadline, misses = int(sys.argv[1]), time.time() + 40, 0
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.settimeout(0.5)
    for i in range(count):
        if time.time() > deadline or misses >= 10:
            break
        host = "w%%04d" %% i
        report = {"kind": "report", "from": host, "host": host, "state": "awake", "event": "start", "interval": 3600}
        data = P.encode(host_key(%(secret)r, host).encode(), report)
        nonce = json.loads(data.split(b" ", 2)[2])["nonce"]
        s.sendto(data, ("127.0.0.1", %(port)d))
        try:
            reply = s.recv(P.MAX_MESSAGE)
        except (TimeoutError, ConnectionRefusedError):
            misses += 1
            continue
        if json.loads(reply.split(b" ", 2)[2]).get("re") == nonce:
            print(host, flush=True)
"""


@pytest.mark.parametrize("fleet_mode", [False, True], ids=["single", "fleet"])
def test_kill_9_during_writes_loses_nothing_acknowledged(fleet, fleet_mode):
    a1 = fleet.start("seg-a-1", "lan-a", fleet_mode=fleet_mode)
    others = [fleet.start("seg-b-1", "lan-b")] if fleet_mode else []
    script = SEND_ACKED % {"engine": ENGINE, "secret": SECRET, "port": a1.port}
    sender = subprocess.Popen(
        ["ip", "netns", "exec", "%s-ctl" % a1.lab.name, PYTHON, "-c", script, "100000"],
        stdout=subprocess.PIPE,
        text=True,
    )
    acked = []
    try:
        for line in sender.stdout:  # ends when the sender gives up (10 unanswered reports) or at its deadline
            acked.append(line.strip())
            if len(acked) == 300:
                fleet.kill(a1)  # in the middle of the stream of writes
        sender.wait(timeout=60)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
    assert a1.proc is None, "the instance was never killed: only %d reports acknowledged" % len(acked)
    acked = set(acked)
    a1.start()  # the same instance again, same database
    restarted = time.monotonic()
    for server in [a1, *others]:

        def missing(server=server):
            return sorted(acked - {h["name"] for h in server.get("/v1/hosts")["hosts"]})

        try:  # the other instances mirror the host rows within a few ticks
            server.lab.wait_for(
                lambda server=server: not missing(server), MIRROR_BOUND, "%s to show them" % server.name
            )
        except AssertionError:
            lost = missing()
            raise AssertionError("%s: %d acknowledged reports lost: %s" % (server.name, len(lost), lost[:10])) from None
        print(
            "%s shows every acknowledged report %.1fs after the restart" % (server.name, time.monotonic() - restarted)
        )
    if fleet_mode:  # a host known only from its reports sits on the segment of the instance that took the first
        assert a1.host(sorted(acked)[-1])["segment"] == "lan-a"
    print("acknowledged before the kill: %d" % len(acked))
