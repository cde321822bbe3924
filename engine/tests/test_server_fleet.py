"""Fleet mode in the daemon (FLEETMODE.md): several Server objects on one private PostgreSQL, in process.

Each test drives its instances by hand (``pump``: the loop's input dispatch and tick), so every step is
deterministic; the WoL and command senders are recorders and the hosts have no addresses (no packet leaves,
no probe).  The lab tests (tests/integration/test_powerwaked_fleet.py) run it with real hosts and packets."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from server_fakes import SECRET, Sent, server_config, signed_report
from test_server_api import free_port

from powernap import powerwake
from powernap.server import fleetmode
from powernap.server import protocol as P
from powernap.server.daemon import Server

ENGINE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A1_MAC, B1_MAC = "02:50:4e:00:00:01", "02:50:4e:01:00:01"
HOSTS = """
[segment.lan-a]
subnets = 198.18.0.0/24
[segment.lan-b]
subnets = 198.18.1.0/24
[host.a1]
mac = %s
segment = lan-a
groups = web
[host.b1]
mac = %s
segment = lan-b
groups = web
[group.web]
""" % (A1_MAC, B1_MAC)


@pytest.fixture
def database(postgresql, request):
    return postgresql.create_database("fleetd_%d_%s" % (os.getpid(), request.node.name[5:40].lower()))


class Instances:
    def __init__(self, tmp_path, url):
        self.tmp_path, self.url = tmp_path, url
        self.servers = []

    def start(self, instance, segment, extra=""):
        directory = self.tmp_path / instance
        directory.mkdir()
        text = "store = %s\ninstance = %s\nsegment = %s\nlead_poll = 0.2s\nport = %d\n%s%s" % (
            self.url, instance, segment, free_port(), HOSTS, extra)  # fmt: skip
        server = Server(server_config(directory, text), api=False)
        server.sent = Sent()
        server.fleet.send_wol = server.sent.send_wol
        server.fleet.send_datagram = server.sent.send_datagram
        server.start()
        self.servers.append(server)
        return server

    def stop(self, server):
        self.servers.remove(server)
        server.shutdown()


def pump(*servers):
    """One turn of each instance's loop: its ready inputs (the job NOTIFYs), then its tick."""
    for server in servers:
        for key, _mask in server._selector.select(0):
            with server.lock:
                server._isolated("input", key.data, key.fd)
        with server.lock:
            server.tick()


def settle(predicate, servers, seconds=10.0, what="condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pump(*servers)
        if predicate():
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError("timed out waiting for %s" % what)


@pytest.fixture
def fleet(tmp_path, database):
    instances = Instances(tmp_path, database)
    yield instances
    for server in list(instances.servers):
        server.shutdown()


def _report(server, host, **fields):
    """A host's signed report, as the UDP path verifies it; no sender address, so that nothing (a confirmation
    probe, a command) is ever sent anywhere but loopback."""
    message = server.endpoint.accept(signed_report(host, ts=time.time(), nonce=os.urandom(8).hex(), state="awake",
                                                   event="heartbeat", interval=30.0, **fields))  # fmt: skip
    return server.accept_report(message, None)


def test_each_instance_leads_its_segment_and_shows_every_host_of_the_fleet(fleet):
    a, b = fleet.start("seg-a-1", "lan-a"), fleet.start("seg-b-1", "lan-b")
    settle(lambda: a.fleetmode.segment_leader and b.fleetmode.segment_leader, [a, b], what="both leads")
    assert a.fleetmode.policy_leader != b.fleetmode.policy_leader  # the policies run once
    assert _report(a, "a1")["state"] == P.AWAKE
    settle(lambda: b.api_host("a1")["state"] == P.AWAKE, [a, b], what="b mirrors a1")
    assert b.api_host("a1")["segment"] == "lan-a" and a.api_host("b1")["segment"] == "lan-b"
    status = b.api_status()["fleet"]
    assert status["instance"] == "seg-b-1" and status["segment"] == "lan-b" and status["segment_leader"]
    assert status["segments"] == {"lan-a": {"leader": "seg-a-1"}, "lan-b": {"leader": "seg-b-1"}}
    assert status["jobs"] == {"queued": 0, "running": 0, "expired": 0}
    metrics = a.api_metrics()
    assert 'powerwaked_fleet_leader{role="segment"} 1' in metrics
    # Only the writer of a row ticks it: a1 at b is a mirror, never made stale or saved by b.
    assert [r.name for r in b.registry.owned()] == ["b1"] and [r.name for r in a.registry.owned()] == ["a1"]


def test_a_heartbeat_shows_at_the_other_instances_within_a_few_ticks_not_at_the_next_snapshot(fleet):
    """A report that changes no state (most of them) must not wait for ``save_every`` (10 s) to be seen elsewhere:
    the leader writes the rows reports touched at its next tick, and the mirror reads them at the reader's."""
    a, b = fleet.start("seg-a-1", "lan-a"), fleet.start("seg-b-1", "lan-b")
    settle(lambda: a.fleetmode.segment_leader and b.fleetmode.segment_leader, [a, b], what="both leads")
    _report(a, "a1")
    settle(lambda: b.api_host("a1")["state"] == P.AWAKE, [a, b], what="b mirrors a1")
    saves = a.registry.saves
    for marker in (1234.5, 2345.5, 3456.5):  # heartbeats in a row: each one shows, none waits for a snapshot
        sent = time.monotonic()
        _report(a, "a1", idle_seconds=marker)
        shown = settle(lambda: b.api_host("a1")["idle_seconds"] == marker, [a, b], seconds=5.0,  # noqa: B023
                       what="b shows a1's heartbeat")  # fmt: skip
        assert shown - sent < 2.0
    assert a.registry.saves - saves <= 1  # rows, not snapshots: at most one (save_every) came due meanwhile


def test_a_wake_asked_at_one_segment_is_sent_by_the_leader_of_the_hosts_segment(fleet):
    a, b = fleet.start("seg-a-1", "lan-a"), fleet.start("seg-b-1", "lan-b")
    settle(lambda: a.fleetmode.segment_leader and b.fleetmode.segment_leader, [a, b], what="both leads")
    answer = a.api_wake("b1", "auto", "API request from admin")
    assert answer["queued"] is True and answer["segment"] == "lan-b" and answer["host"] == "b1"
    assert isinstance(answer["job"], int) or answer["job"] is None  # None: the gate queued it (rate limit)
    settle(lambda: b.sent.wol == [B1_MAC], [a, b], what="b's WoL for b1")
    assert a.sent.wol == []  # never on segment A
    settle(lambda: a.api_host("b1")["state"] == P.WAKING, [a, b], what="a sees b1 waking")
    assert b.fleetmode.running  # the send-wake job stays leased until the wake is confirmed
    _report(b, "b1")
    settle(lambda: not b.fleetmode.running and b.fleetmode.jobs == {"queued": 0, "running": 0, "expired": 0},
           [a, b], what="the job done")  # fmt: skip
    assert b.fleetmode.counts["done"] >= 1 and b.sent.wol == [B1_MAC]


def test_a_report_at_an_instance_that_does_not_lead_is_forwarded_verified(fleet):
    first = fleet.start("seg-a-1", "lan-a")
    settle(lambda: first.fleetmode.segment_leader, [first], what="first leads")
    second = fleet.start("seg-a-2", "lan-a")
    pump(first, second)
    assert not second.fleetmode.segment_leader
    answer = _report(second, "a1")
    assert answer["forwarded"] is True and isinstance(answer["job"], int)
    settle(lambda: first.registry.get("a1").state == P.AWAKE, [first, second], what="the leader applied it")
    settle(lambda: second.api_host("a1")["state"] == P.AWAKE, [first, second], what="the mirror shows it")
    with pytest.raises(P.ProtocolError):  # nothing unauthenticated is forwarded
        second.endpoint.accept(signed_report("a1", master="another secret of the wrong fleet", ts=time.time()))


def test_a_report_replayed_to_another_instance_of_the_segment_is_refused_by_the_leader(fleet):
    """Each instance's replay guard knows only what reached it: a report the leader took, captured and sent again to
    the standby, passes the standby's guard and is forwarded; the leader refuses it against its own."""
    first = fleet.start("seg-a-1", "lan-a")
    settle(lambda: first.fleetmode.segment_leader, [first], what="first leads")
    second = fleet.start("seg-a-2", "lan-a")
    pump(first, second)
    datagram = signed_report("a1", ts=time.time(), nonce=os.urandom(8).hex(), state="awake", event="heartbeat",
                             interval=30.0, idle_seconds=5.0)  # fmt: skip
    assert first.accept_report(first.endpoint.accept(datagram), None)["state"] == P.AWAKE
    assert second.accept_report(second.endpoint.accept(datagram), None)["forwarded"] is True
    settle(lambda: first.fleetmode.counts["failed"] >= 1, [first, second], what="the replay refused")
    pump(first, second)
    # Failed for good at once: a job refused as it is is not tried again (nor by another instance)
    assert first.fleetmode.counts == {"failed": 1} and first.reports == 1
    assert first.fleetmode.queue.conn.execute("SELECT state, attempts FROM powerwaked_jobs").fetchall() == [
        ("failed", 1)
    ]


def test_the_policy_leader_forgets_nonces_older_than_the_skew_window(fleet):
    a = fleet.start("seg-a-1", "lan-a")
    settle(lambda: a.fleetmode.policy_leader, [a], what="a leads the policies")
    skew = float(a.config.server["max_skew"])
    store = a.registry.store
    assert store.claim_nonce("admin", "old", time.time() - 3 * skew)
    assert store.claim_nonce("admin", "new", time.time())
    assert not store.claim_nonce("admin", "new", time.time())  # taken: a replay
    a.fleetmode._next_cleanup = 0.0
    settle(lambda: store.claim_nonce("admin", "old", time.time() - 3 * skew), [a], what="the old nonce forgotten")
    assert not store.claim_nonce("admin", "new", time.time())  # still within the window: still a replay


def test_the_lead_and_a_leased_job_of_a_dead_leader_go_to_the_other_instance_of_the_segment(
    fleet, monkeypatch, postgresql
):
    import psycopg

    monkeypatch.setattr(fleetmode, "JOB_LEASE", 1.0)  # the lease: max(this, 3 lead polls + 2 s) = 2.6 s
    first = fleet.start("seg-b-1", "lan-b")
    settle(lambda: first.fleetmode.segment_leader and first.fleetmode.policy_leader, [first], what="first leads")
    second = fleet.start("seg-b-2", "lan-b")
    pump(first, second)
    first.api_wake("b1", "auto", "API request from admin")
    settle(lambda: first.sent.wol == [B1_MAC] and first.fleetmode.running, [first, second], what="first's wake")
    # first dies (kill -9): its sessions end, it never ticks again.
    with psycopg.connect(postgresql.url(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE "
                      "'powerwaked%%' AND pid <> pg_backend_pid() AND pid IN (%s, %s)",
                      (first.registry.store.conn.info.backend_pid, first.fleetmode.conn.info.backend_pid))  # fmt: skip
    died = time.monotonic()
    took = settle(lambda: second.fleetmode.segment_leader, [second], what="second takes the lead")
    assert took - died <= 0.2 + 1.0 + 0.5  # lead_poll + 1 s (+ the test's own turns)
    settle(lambda: second.sent.wol == [B1_MAC], [second], seconds=10, what="the job redone by second")
    assert second.registry.get("b1").state == P.WAKING
    # The dead leader's session is gone: if it came back it could not write as leader any more.
    pump(first)
    assert not first.fleetmode.segment_leader and first.registry.store.scope == "instance:seg-b-1"


def test_a_database_that_goes_away_costs_the_lead_not_the_daemon(fleet, postgresql):
    import psycopg

    a = fleet.start("seg-a-1", "lan-a")
    settle(lambda: a.fleetmode.segment_leader, [a], what="a leads")
    with psycopg.connect(postgresql.url(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (a.registry.store.conn.info.backend_pid,))
    pump(a)  # the lost session: the store reconnects fenced (no lead until it is taken again); nothing raised
    pump(a)
    assert a.errors == 0
    settle(lambda: a.fleetmode.segment_leader and a.registry.store.scope == "segment:lan-a", [a], what="leads again")
    assert a.errors == 0 and a.api_status()["fleet"]["segment_leader"]


def test_a_leader_that_stops_leaves_its_segments_rows_to_the_next(fleet):
    first = fleet.start("seg-a-1", "lan-a")
    settle(lambda: first.fleetmode.segment_leader, [first], what="first leads")
    _report(first, "a1")
    pump(first)
    fleet.stop(first)  # a clean stop gives the lead back at once, and keeps the rows
    second = fleet.start("seg-a-2", "lan-a")
    assert second.fleetmode.segment_leader  # taken at its start: free
    assert second.registry.get("a1").state == P.AWAKE and second.registry.get("a1").engine


def _crash(fleet, server):
    """kill -9 in process: the sessions end (their leads with them) and nothing more is written or saved."""
    fleet.servers.remove(server)
    server.registry.wait_saved()
    if server.fleetmode.conn is not None:
        server.fleetmode.conn.close()
    server.registry.store.conn.close()
    server._selector.close()
    server.wol.close()
    if server.udp is not None:
        server.udp.close()


def test_a_new_leader_writes_the_rows_of_reports_it_replays_from_a_killed_leaders_journal(fleet):
    """Reports acknowledged by a leader killed before it wrote their rows are in its segment's journal only: the
    next leader replays them and must write those hosts' rows (the other instances see them) and keep them in its
    snapshot (which truncates the journal), also for hosts that had no row yet."""
    first, b = fleet.start("seg-a-1", "lan-a"), fleet.start("seg-b-1", "lan-b")
    settle(lambda: first.fleetmode.segment_leader and b.fleetmode.segment_leader, [first, b], what="both leads")
    _report(first, "a1")
    pump(first)
    settle(lambda: b.registry.get("a1") is not None and b.registry.get("a1").engine, [first, b], what="a1 at b")
    for name in ("a7", "a8"):  # new hosts: acknowledged (journaled), no row yet
        assert _report(first, name, ips=["198.18.0.%s" % name[1]])["saved"] is True
    _crash(fleet, first)
    second = fleet.start("seg-a-2", "lan-a")
    assert second.fleetmode.segment_leader
    assert {r.name for r in second.registry.owned()} == {"a1", "a7", "a8"}
    settle(lambda: all(b.registry.get(n) is not None for n in ("a7", "a8")), [second, b], what="a7, a8 at b")
    assert b.api_host("a7")["segment"] == "lan-a" and b.api_host("a8")["state"] == P.AWAKE
    assert second.registry.save(time.time())  # the snapshot truncates the journal: the rows must be in it
    problems = []
    snapshot, entries = second.registry.store.read(problems)
    assert {h["name"] for h in snapshot["hosts"]} == {"a1", "a7", "a8"} and entries == [] and problems == []


def test_the_history_is_one_for_the_fleet_at_every_instance(fleet):
    """Issue 18: /v1/history is the fleet's, not each instance's: a wake done at B shows at A, and the other way
    round; each entry names the instance that carried it out."""
    a, b = fleet.start("seg-a-1", "lan-a"), fleet.start("seg-b-1", "lan-b")
    settle(lambda: a.fleetmode.segment_leader and b.fleetmode.segment_leader, [a, b], what="both leads")
    a.api_wake("b1", "auto", "API request from admin")  # asked at A, carried out at B
    settle(lambda: b.sent.wol == [B1_MAC], [a, b], what="b's WoL for b1")
    b.api_wake("a1", "auto", "API request from admin")  # asked at B, carried out at A
    settle(lambda: a.sent.wol == [A1_MAC], [a, b], what="a's WoL for a1")

    def wakes(server):
        return [(e["host"], e.get("instance")) for e in server.api_history() if e["what"] == "wake"]

    # at once: each instance shows its own wake before it is written (and names itself)
    assert ("a1", "seg-a-1") in wakes(a) and ("b1", "seg-b-1") in wakes(b)
    settle(lambda: a.api_history() == b.api_history(), [a, b], what="one history at both instances")
    assert wakes(a) == [("b1", "seg-b-1"), ("a1", "seg-a-1")]  # in time order
    times = [e["time"] for e in a.api_history()]
    assert times == sorted(times)
    for server in (a, b):
        assert "history" not in server.api_status()["registry"]["problems"]
    # a restarted instance shows the same one history
    fleet.stop(a)
    again = fleet.start("seg-a-2", "lan-a")
    assert wakes(again) == wakes(b)


def test_the_history_is_this_instances_own_while_the_database_does_not_answer(fleet, postgresql):
    import psycopg

    a = fleet.start("seg-a-1", "lan-a")
    settle(lambda: a.fleetmode.segment_leader, [a], what="a leads")
    a.api_wake("a1", "auto", "API request from admin")
    settle(lambda: a.sent.wol == [A1_MAC], [a], what="a's WoL for a1")
    dbname = a.registry.store.conn.info.dbname
    with psycopg.connect(postgresql.url(), autocommit=True) as admin:
        admin.execute('ALTER DATABASE "%s" ALLOW_CONNECTIONS false' % dbname)
        admin.execute("SELECT pg_terminate_backend(%s)", (a.registry.store.conn.info.backend_pid,))
        try:
            assert [(e["host"], e["instance"]) for e in a.api_history() if e["what"] == "wake"] == [("a1", "seg-a-1")]
            assert "history" in a.api_status()["registry"]["problems"] and a.errors == 0
        finally:
            admin.execute('ALTER DATABASE "%s" ALLOW_CONNECTIONS true' % dbname)
    settle(lambda: a.api_history() and "history" not in a.api_status()["registry"]["problems"], [a],
           what="the fleet's history again")  # fmt: skip


def test_a_cluster_group_spanning_two_segments_is_led_once_and_woken_on_each_segment(fleet):
    cluster = "[cluster.web]\ngroup = web\nmin_awake = 2\n"
    a, b = fleet.start("seg-a-1", "lan-a", cluster), fleet.start("seg-b-1", "lan-b", cluster)
    servers = [a, b]
    settle(lambda: a.sent.wol == [A1_MAC] and b.sent.wol == [B1_MAC], servers, what="one wake on each segment")
    leader = a if a.fleetmode.policy_leader else b
    assert leader.clusters["web"].to_dict() is not None
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # the policy leader sees both waking (mirrored): no second wake
        pump(*servers)
        time.sleep(0.02)
    assert a.sent.wol == [A1_MAC] and b.sent.wol == [B1_MAC]
    assert {r.name: r.state for r in leader.registry} == {"a1": P.WAKING, "b1": P.WAKING}


def test_the_next_policy_leader_carries_on_with_the_gates_vetoes_and_queue(fleet):
    first = fleet.start("seg-a-1", "lan-a")
    settle(lambda: first.fleetmode.policy_leader, [first], what="first leads the policies")
    second = fleet.start("seg-b-1", "lan-b")
    pump(first, second)
    assert not second.fleetmode.policy_leader
    answer = second.api_veto("web", "admin", 600.0, "maintenance", False)  # asked at the other instance: a job
    assert answer["queued"] is True and answer["segment"] == "@policy" and answer["group"] == "web"
    settle(lambda: first.rails.vetoes.get("web"), [first, second], what="the policy leader took the veto")
    pump(first)
    time.sleep(0.25)
    pump(first)  # a lead poll: the gate's state is written to the policy scope
    fleet.stop(first)
    settle(lambda: second.fleetmode.policy_leader, [second], what="second leads the policies")
    assert list(second.rails.vetoes["web"]) == ["api admin"]
    assert second.api_status()["fleet"]["policy_leader"]


def test_a_busy_engines_veto_reaches_the_policy_leaders_gate_from_another_segment(fleet):
    a = fleet.start("seg-a-1", "lan-a")
    settle(lambda: a.fleetmode.policy_leader, [a], what="a leads the policies")
    b = fleet.start("seg-b-1", "lan-b")
    settle(lambda: b.fleetmode.segment_leader, [a, b], what="b leads lan-b")
    _report(b, "b1", veto_for=600.0, veto_reason="backup running")
    _report(b, "b1", veto_for=600.0, veto_reason="backup running")  # a refresh: not forwarded again
    settle(lambda: "host b1" in a.rails.vetoes.get("web", {}), [a, b], what="the veto at the policy leader")
    assert b.fleetmode.counts["submitted"] == 1 and not b.rails.vetoes
    _report(b, "b1", veto_for=0.0)
    settle(lambda: not a.rails.vetoes.get("web"), [a, b], what="the veto lifted")


# -- the daemon itself: three powerwaked processes on loopback, one private PostgreSQL ----------------------------
class _Daemon:
    """A powerwaked process whose magic packets go to its own loopback port (which instance sent one is known)."""

    def __init__(self, tmp_path, url, instance, segment, extra=""):
        import socket

        from test_server_api import free_port

        self.instance = instance
        self.wol = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.wol.bind(("127.0.0.1", 0))
        self.wol.settimeout(0.05)
        self.port = free_port()
        directory = tmp_path / instance
        directory.mkdir()
        self.config = directory / "powerwaked.conf"
        self.config.write_text(
            "[powerwaked]\nsecret = %s\nlisten = 127.0.0.1\nport = %d\nannounce = no\nbroadcast = 127.0.0.1\n"
            "wol_port = %d\nstore = %s\ninstance = %s\nsegment = %s\nlead_poll = 0.5s\nstate_file = %s\n%s%s"
            % (SECRET, self.port, self.wol.getsockname()[1], url, instance, segment, directory / "r.json", HOSTS, extra)
        )
        self.config.chmod(0o600)
        self.log = directory / "powerwaked.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "powernap.server.daemon", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=ENGINE), cwd=ENGINE,
            )  # fmt: skip
        self.url = "http://127.0.0.1:%d" % self.port

    def status(self):
        return powerwake.ServerClient(self.url, SECRET).get("/v1/status")

    def magic_packets(self):
        """The MACs of the magic packets this instance sent since the last call."""
        macs = []
        for _index in range(100):
            try:
                data = self.wol.recv(1024)
            except OSError:
                break
            macs.append(":".join("%02x" % b for b in data[6:12]))
        return macs

    def stop(self, kill=False):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.wol.close()


def _until(predicate, seconds, what, daemons):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:  # an API not up yet
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting for %s\n%s" % (what, "\n".join(d.log.read_text()[-3000:] for d in daemons)))


def test_the_daemons_carry_a_wake_to_the_hosts_segment_and_redo_it_when_its_leader_is_killed(tmp_path, database):
    import urllib.request

    daemons = []
    try:
        a = _Daemon(tmp_path, database, "seg-a-1", "lan-a")
        daemons.append(a)
        _until(lambda: a.status()["fleet"]["segment_leader"], 20, "seg-a-1 leads", daemons)
        b1 = _Daemon(tmp_path, database, "seg-b-1", "lan-b")
        daemons.append(b1)
        _until(lambda: a.status()["fleet"]["segments"]["lan-b"]["leader"] == "seg-b-1", 20, "seg-b-1 leads", daemons)
        b2 = _Daemon(tmp_path, database, "seg-b-2", "lan-b")
        daemons.append(b2)
        _until(lambda: not b2.status()["fleet"]["segment_leader"], 20, "seg-b-2 up, not leading", daemons)
        # A wake asked at segment A's instance, for a host on segment B: 202, sent by B's leader only.
        label = P.http_label("POST", "/v1/wake")
        body = P.encode(SECRET.encode(), {"kind": "request", "from": "admin", "host": "b1"}, label)
        with urllib.request.urlopen(urllib.request.Request(a.url + "/v1/wake", data=body, method="POST"),
                                    timeout=5) as reply:  # fmt: skip
            assert reply.status == 202
            answer = json.loads(reply.read())
        assert answer["queued"] is True and answer["segment"] == "lan-b" and answer["host"] == "b1"
        _until(lambda: b1.magic_packets() == [B1_MAC], 10, "seg-b-1's magic packet", daemons)
        assert a.magic_packets() == [] and b2.magic_packets() == []
        # The same signed request, captured on its way to A and replayed to another instance: refused there.
        with pytest.raises(urllib.error.HTTPError) as replayed:
            urllib.request.urlopen(urllib.request.Request(b2.url + "/v1/wake", data=body, method="POST"), timeout=5)
        assert replayed.value.code == 401 and b"replayed" in replayed.value.read()
        for daemon in daemons:  # every instance shows the same host, waking
            _until(lambda d=daemon: powerwake.ServerClient(d.url, SECRET).get("/v1/hosts/b1")["state"] == "waking",
                   10, "b1 waking at %s" % daemon.instance, daemons)  # fmt: skip
        # kill -9 the leader of B while it holds the wake's job (no confirmation comes): seg-b-2 takes the lead
        # within lead_poll + 1 s (+ the API's own turn), and redoes the job once its lease has run out.
        b1.stop(kill=True)
        killed = time.monotonic()
        _until(lambda: b2.status()["fleet"]["segment_leader"], 5, "seg-b-2 leads", daemons)
        assert time.monotonic() - killed <= 0.5 + 1.0 + 1.0
        _until(lambda: b2.magic_packets() == [B1_MAC], 15, "the job redone by seg-b-2", daemons)
        assert a.magic_packets() == []
    finally:
        for daemon in daemons:
            daemon.stop()


# -- jobs have deadlines; holds reach the host's writer; deleted rows leave the mirrors (issue 18, j18) ------------
def _job(server, job_id):
    """(state, result) of a job, read from the database."""
    row = server.fleetmode.conn.execute("SELECT state, result FROM powerwaked_jobs WHERE id = %s", (job_id,))
    state, result = row.fetchone()
    return state, json.loads(result) if result else None


def _row(server, host):
    """A host's row as its writer last wrote it (what every mirror, and the next leader, reads)."""
    row = server.fleetmode.conn.execute("SELECT segment, record FROM powerwaked_hosts WHERE name = %s", (host,))
    found = row.fetchone()
    return None if found is None else (found[0], json.loads(found[1]))


def test_a_wake_for_a_segment_without_an_instance_expires_instead_of_running_when_one_comes_back(fleet, monkeypatch):
    """A wake queued while no instance runs on the host's segment fails at its deadline (logged, counted, shown in
    /v1/status), and is not done when an instance of that segment starts later; the policy leader's own 'waking'
    mark of the host is taken back with it."""
    monkeypatch.setitem(fleetmode.JOB_TTL, "send-wake", 1.0)  # else the waking timeout (2 × 45 s + 30 s + IPMI)
    a = fleet.start("seg-a-1", "lan-a")
    settle(lambda: a.fleetmode.segment_leader and a.fleetmode.policy_leader, [a], what="a leads")
    answer = a.api_wake("b1", "auto", "API request from admin")
    assert answer["queued"] is True and answer["segment"] == "lan-b"
    rows = a.fleetmode.conn.execute("SELECT id, kind, extract(epoch FROM expires - created) FROM powerwaked_jobs "
                                    "WHERE segment = 'lan-b'").fetchall()  # fmt: skip
    assert [(kind, round(float(ttl), 3)) for _id, kind, ttl in rows] == [("send-wake", 1.0)]
    job_id = rows[0][0]
    assert a.registry.get("b1").state == P.WAKING  # seen waking at once, here
    settle(lambda: _job(a, job_id)[0] == "failed", [a], seconds=5, what="the job expired")
    state, result = _job(a, job_id)
    assert result["error"].startswith("expired") and "lan-b" in result["error"]
    settle(lambda: a.api_status()["fleet"]["jobs"]["expired"] == 1, [a], what="expired in the status")
    assert a.fleetmode.counts["expired"] == 1
    assert 'powerwaked_fleet_job_events_total{event="expired"} 1' in a.api_metrics()
    assert a.registry.get("b1").state != P.WAKING  # the mark went with its job
    b = fleet.start("seg-b-1", "lan-b")
    settle(lambda: b.fleetmode.segment_leader, [a, b], what="b leads lan-b")
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        pump(a, b)
        time.sleep(0.02)
    assert b.sent.wol == [] and _job(a, job_id)[0] == "failed"  # hours later or a second later: never done
    assert a.fleetmode.counts["expired"] + b.fleetmode.counts["expired"] == 1  # marked (and logged) once


def test_a_policy_job_expires_with_its_own_ttl_and_a_queued_wake_of_a_host_now_up_finishes_as_already_up(fleet):
    a = fleet.start("seg-a-1", "lan-a")
    settle(lambda: a.fleetmode.policy_leader, [a], what="a leads the policies")
    # The deadlines: a veto's and a demand's are their own ttl; a report's is short; a wake's the waking timeout.
    ttl = a.fleetmode.job_ttl
    assert ttl("veto", {"ttl": 30.0}) == 30.0 and ttl("veto", {"ttl": None}) == fleetmode.JOB_TTL_DEFAULT
    assert ttl("engine-veto", {"veto_for": 10.0}) == 10.0 and ttl("report", {}) == a.config.server["max_skew"]
    assert ttl("wake", {}) == a.registry.waking_timeout and ttl("veto", {"ttl": 1e9}) == fleetmode.JOB_TTL_MAX
    a.api_wake("b1", "auto", "API request from admin")  # lan-b has no instance yet: the job waits
    b = fleet.start("seg-b-1", "lan-b")
    assert _report(b, "b1")["state"] == P.AWAKE  # it came up in the meantime (before b ran any job)
    settle(lambda: b.fleetmode.counts["done"] >= 1, [a, b], what="b ran the job")
    (job_id,) = a.fleetmode.conn.execute("SELECT id FROM powerwaked_jobs WHERE kind = 'send-wake'").fetchone()
    state, result = _job(a, job_id)
    assert state == "done" and result["method"] == "none" and result["already"] == P.AWAKE and b.sent.wol == []


UPS = """
[host.b2]
mac = 02:50:4e:01:00:02
ip = 198.18.1.12
segment = lan-b
groups = db
[group.db]
[ups.rack]
ups = rack
port = %d
groups = db
after = 0s
step = 0s
resume_charge = 50
poll = 3600s
"""


def test_a_ups_hold_set_by_the_policy_leader_lands_in_the_row_of_another_segments_host(fleet):
    """The policy leader (lan-a) sheds a group with a host on lan-b: the hold reaches lan-b's leader, which writes
    it into the host's row and whose sleep proxy no longer wakes the host for an ARP; mains back lifts it there."""
    from powernap.server.proxy import Frame, SleepProxy

    extra = UPS % free_port()  # no upsd there: the test gives the policy leader its readings
    a = fleet.start("seg-a-1", "lan-a", extra)
    settle(lambda: a.fleetmode.segment_leader and a.fleetmode.policy_leader, [a], what="a leads")
    b = fleet.start("seg-b-1", "lan-b", extra)
    settle(lambda: b.fleetmode.segment_leader, [a, b], what="b leads lan-b")
    b2 = b.registry.get("b2")
    b.registry.set_state(b2, P.ASLEEP, "test: asleep", time.time())
    settle(lambda: a.registry.get("b2").state == P.ASLEEP, [a, b], what="a mirrors b2 asleep")
    policy, poller = a.ups[0]
    settle(lambda: poller.latest is not None, [a], what="the first UPS poll")
    poller.latest = (["OB"], 90.0, "test: on battery")
    settle(lambda: policy.shed == ["db"], [a], what="the group shed")
    # Before lan-b's leader runs the hold job, b2's row changes (without it): a's copy keeps the hold meanwhile.
    held = a.registry.get("b2")
    assert held.hold == "ups rack"
    b.registry.store.write_rows([dict(b2.to_dict(), idle_seconds=12.5)])
    settle(lambda: a.registry.get("b2") is not held, [a], what="a mirrors b2's row again")
    assert a.registry.get("b2").idle_seconds == 12.5 and a.registry.get("b2").hold == "ups rack"
    settle(lambda: b.registry.get("b2").hold == "ups rack", [a, b], what="the hold at b2's writer")
    settle(lambda: (_row(b, "b2") or (0, {}))[1].get("hold") == "ups rack", [a, b], what="the hold in b2's row")
    for _turn in range(20):  # the mirror brings the row back to a: its hold stays
        pump(a, b)
        assert a.registry.get("b2").hold == "ups rack"
    assert not a.fleetmode.holds  # the row shows it: nothing more to send
    proxy = SleepProxy(b.registry, b._proxy_wake, now=time.time())  # lan-b's proxy, as the daemon makes it
    arp = Frame("who-has", "02:50:4e:01:00:63", "198.18.1.99", "198.18.1.12")
    assert proxy.on_parsed(arp, time.time()) == "held"
    pump(a, b)
    assert b.sent.wol == [] and a.sent.wol == []
    # Mains back: the hold is lifted at its writer too, and b2 woken on its own segment.
    poller.latest = (["OL"], 100.0, "test: on mains")
    settle(lambda: b.registry.get("b2").hold is None and (_row(b, "b2") or (0, {}))[1].get("hold") is None,
           [a, b], what="the hold lifted in b2's row")  # fmt: skip
    settle(lambda: b.sent.wol == ["02:50:4e:01:00:02"], [a, b], what="b2 woken by lan-b")
    assert a.sent.wol == []


def test_a_hold_job_is_checked_like_any_input(fleet):
    extra = UPS % free_port()
    a = fleet.start("seg-a-1", "lan-a", extra)
    b = fleet.start("seg-b-1", "lan-b", extra)
    settle(lambda: b.fleetmode.segment_leader, [a, b], what="b leads lan-b")
    bad = [{"host": "b2", "hold": "ups other", "policy": "ups other"},  # no such UPS policy at b
           {"host": "b2", "hold": "anything", "policy": "ups rack"},  # a hold that is not the policy's
           {"host": "b2", "hold": 7, "policy": "ups rack"},
           {"host": "a1", "hold": "ups rack", "policy": "ups rack"}]  # fmt: skip  # not b's host
    jobs = [a.fleetmode.submit("lan-b", "hold", payload) for payload in bad]
    settle(lambda: all(_job(a, job)[0] == "failed" for job in jobs), [a, b], what="the jobs refused")
    assert b.registry.get("b2").hold is None and a.registry.get("a1").hold is None and b.errors == 0


def test_the_next_policy_leader_knows_the_groups_shed_from_the_rows(fleet):
    extra = UPS % free_port()
    a = fleet.start("seg-a-1", "lan-a", extra)
    settle(lambda: a.fleetmode.policy_leader, [a], what="a leads the policies")
    b = fleet.start("seg-b-1", "lan-b", extra)  # started before the shedding: its UPS policy saw no hold then
    settle(lambda: b.fleetmode.segment_leader, [a, b], what="b leads lan-b")
    settle(lambda: a.ups[0][1].latest is not None, [a], what="the first UPS poll")
    a.ups[0][1].latest = (["OB"], 90.0, "test: on battery")
    settle(lambda: (_row(b, "b2") or (0, {}))[1].get("hold") == "ups rack", [a, b], what="the hold in b2's row")
    assert b.ups[0][0].shed == []
    fleet.stop(a)
    settle(lambda: b.fleetmode.policy_leader, [b], what="b leads the policies")
    assert b.ups[0][0].shed == ["db"]  # so that mains back lifts it


def test_a_host_row_deleted_by_its_writer_leaves_the_other_instances_mirrors(fleet):
    a, b = fleet.start("seg-a-1", "lan-a"), fleet.start("seg-b-1", "lan-b")
    settle(lambda: a.fleetmode.segment_leader and b.fleetmode.segment_leader, [a, b], what="both leads")
    assert _report(a, "a7")["state"] == P.AWAKE  # a host the config does not name, registered by its report
    settle(lambda: b.registry.get("a7") is not None, [a, b], what="b mirrors a7")
    with a.lock:  # lan-a's writer drops it (pruned): its row goes at the next snapshot
        del a.registry.hosts["a7"]
        a.registry.placed()  # as anything that drops a record tells the registry
        a.registry.save(time.time())
        a.registry.wait_saved()
    assert _row(a, "a7") is None
    settle(lambda: b.registry.get("a7") is None, [a, b], what="b forgets a7")
    assert b.registry.by_ip("198.18.0.7") is None and "a7" not in [h["name"] for h in b.api_hosts()]
    assert b.registry.get("a1") is not None  # only that one


class _Upsd:
    """A NUT upsd on 127.0.0.1 answering ``ups.status`` with ``self.status`` (any number of connections)."""

    def __init__(self, status):
        import socket
        import threading

        self.status = status
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopped.is_set():
            try:
                conn, _addr = self.listener.accept()
            except OSError:
                continue
            conn.settimeout(2.0)
            try:
                with conn, conn.makefile("rwb") as stream:
                    for _line_index in range(10):
                        line = stream.readline().decode().strip()
                        if not line or line == "LOGOUT":
                            break
                        replies = {"GET VAR rack ups.status": 'VAR rack ups.status "%s"' % self.status,
                                   "GET VAR rack battery.charge": 'VAR rack battery.charge "90"'}  # fmt: skip
                        stream.write((replies.get(line, "ERR UNKNOWN-COMMAND") + "\n").encode())
                        stream.flush()
            except OSError:
                pass

    def close(self):
        self.stopped.set()
        self.thread.join(timeout=2)
        self.listener.close()


def test_the_daemons_write_a_ups_hold_of_the_policy_leader_into_the_row_of_another_segments_host(tmp_path, database):
    """Two powerwaked processes: seg-a-1 leads lan-a and the policies and reads the UPS; b2 is on lan-b. The hold
    it sets on battery lands in b2's row, written by seg-b-1 (whose proxy reads the record), and mains back lifts
    it there and wakes b2 from lan-b."""
    import psycopg

    upsd = _Upsd("OL")
    extra = UPS.replace("ip = 198.18.1.12\n", "").replace("poll = 3600s", "poll = 0.2s") % upsd.port
    daemons = []

    def row_hold():
        with psycopg.connect(database) as conn:
            (text,) = conn.execute("SELECT record FROM powerwaked_hosts WHERE name = 'b2'").fetchone() or ("{}",)
        return json.loads(text).get("hold")

    try:
        a = _Daemon(tmp_path, database, "seg-a-1", "lan-a", extra)
        daemons.append(a)
        _until(lambda: a.status()["fleet"]["policy_leader"], 20, "seg-a-1 leads the policies", daemons)
        b = _Daemon(tmp_path, database, "seg-b-1", "lan-b", extra)
        daemons.append(b)
        _until(lambda: a.status()["fleet"]["segments"]["lan-b"]["leader"] == "seg-b-1", 20, "seg-b-1 leads", daemons)
        _until(lambda: row_hold() is None and powerwake.ServerClient(b.url, SECRET).get("/v1/hosts/b2"), 10,
               "b2's row", daemons)  # fmt: skip
        upsd.status = "OB"
        _until(lambda: row_hold() == "ups rack", 15, "the hold in b2's row", daemons)
        _until(lambda: powerwake.ServerClient(b.url, SECRET).get("/v1/hosts/b2").get("hold") == "ups rack", 5,
               "the hold at seg-b-1", daemons)  # fmt: skip
        assert a.magic_packets() == [] and b.magic_packets() == []
        upsd.status = "OL"
        _until(lambda: row_hold() is None, 15, "the hold lifted in b2's row", daemons)
        _until(lambda: b.magic_packets() == ["02:50:4e:01:00:02"], 10, "b2 woken by seg-b-1", daemons)
        assert a.magic_packets() == []
    finally:
        for daemon in daemons:
            daemon.stop()
        upsd.close()
