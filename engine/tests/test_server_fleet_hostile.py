"""Fleet mode against hostile rows (issue 18): a database row is no trusted source.

Each test writes what a broken or hostile writer could put in the shared database (a job with a payload out of
range, of the wrong type or nested beyond reason) and checks that the instance that takes it refuses it as it is,
changes nothing, and goes on with the next job.  The same harness as test_server_fleet.py."""

import json
import time

import pytest
import test_server_fleet
from server_fakes import signed_report
from test_server_fleet import pump, settle

from powernap.server import protocol as P

database, fleet = test_server_fleet.database, test_server_fleet.fleet  # its fixtures
CLUSTER = "[cluster.web]\ngroup = web\nmin_awake = 0\n"


def _conn(server):
    """A connection of the test's own (the instance's may be what a bad row breaks)."""
    conn = getattr(server, "_test_conn", None)
    if conn is None:
        import psycopg  # the fixtures skip a run without it (Python 3.9's venv), so only here

        conn = server._test_conn = psycopg.connect(server.registry.store.conninfo(), autocommit=True)
    return conn


def _insert_job(server, segment, kind, payload_text):
    """A job row as a hostile writer would put it: the payload's text as it is (not through JobQueue.submit)."""
    conn = _conn(server)
    row = conn.execute(
        "INSERT INTO powerwaked_jobs (segment, kind, payload, expires) VALUES (%s, %s, %s, now() + interval '5 min') "
        "RETURNING id",
        (segment, kind, payload_text),
    ).fetchone()
    conn.execute("SELECT pg_notify('powerwaked_jobs', %s)", (segment,))
    return int(row[0])


def _job_state(server, job_id):
    return _conn(server).execute("SELECT state, attempts FROM powerwaked_jobs WHERE id = %s", (job_id,)).fetchone()


def _policy_leader(fleet):
    a = fleet.start("seg-a-1", "lan-a", CLUSTER)
    settle(lambda: a.fleetmode.policy_leader and a.fleetmode.segment_leader and a.fleetmode.queue is not None, [a],
           what="a leads")  # fmt: skip
    return a


def test_a_demand_job_out_of_the_apis_range_is_refused_and_sets_no_demand(fleet):
    """The API takes ``more`` in 0..10000 and ``ttl`` in 1 s..7 days: a job row is held to the same schema (a
    demand for ever, or for a billion hosts, would keep the whole cluster awake)."""
    a = _policy_leader(fleet)
    cluster = a.clusters["web"]
    bad = [
        {"host": "web", "more": 10**9, "ttl": 60.0, "source": "x"},
        {"host": "web", "more": 1, "ttl": "Infinity", "source": "x"},
        {"host": "web", "more": -5, "ttl": 60.0, "source": "x"},
        {"host": "web", "more": "3", "ttl": 60.0, "source": "x"},
        {"host": "web", "more": 1, "ttl": 10**400, "source": "x"},
    ]
    ids = [_insert_job(a, "@policy", "demand", json.dumps(p).replace('"Infinity"', "Infinity")) for p in bad]
    settle(lambda: all(_job_state(a, i)[0] == "failed" for i in ids), [a], what="every bad demand refused")
    assert cluster.demands == []
    assert [_job_state(a, i) for i in ids] == [("failed", 1)] * len(ids)  # refused at once, not tried again


def test_a_veto_job_with_a_duration_out_of_range_is_refused(fleet):
    a = _policy_leader(fleet)
    ids = [
        _insert_job(a, "@policy", "veto", '{"host": "web", "source": "x", "ttl": NaN, "clear": false}'),
        _insert_job(a, "@policy", "veto", '{"host": "web", "source": "x", "ttl": -60, "clear": false}'),
        _insert_job(a, "@policy", "veto", '{"host": "web", "source": "x", "ttl": 60, "clear": "no"}'),
        _insert_job(
            a,
            "@policy",
            "veto",
            '{"host": "web", "source": "x", "ttl": 60, "clear": false, "cause": "%s"}' % ("r" * 5000),
        ),  # fmt: skip
    ]
    settle(lambda: all(_job_state(a, i)[0] == "failed" for i in ids), [a], what="every bad veto refused")
    assert not a.rails.vetoes.get("web")


def test_a_job_nested_beyond_reason_is_refused_at_once_and_the_next_job_runs(fleet):
    """A payload JSON cannot even be parsed into (nested 100,000 deep) is failed for good at once: it must not
    break the instance's job connection, nor come back twice more and delay every job behind it."""
    a = _policy_leader(fleet)
    pump(a)
    conn_before = a.fleetmode.conn
    nested = _insert_job(a, "lan-a", "clear-mark", "[" * 100000 + "]" * 100000)
    broken = _insert_job(a, "lan-a", "clear-mark", "{not json")
    good = _insert_job(a, "lan-a", "clear-mark", '{"host": "a1", "source": "admin"}')
    settle(lambda: _job_state(a, good)[0] == "done", [a], seconds=5.0, what="the good job done")
    assert a.fleetmode.conn is conn_before  # the job connection was never dropped
    assert _job_state(a, nested) == ("failed", 1) and _job_state(a, broken) == ("failed", 1)


def test_a_signed_report_with_a_number_too_large_for_a_float_is_refused_naming_its_field(fleet):
    """JSON numbers have no size limit: an integer of 400 digits in a report (or a job) is a bad value of its field
    (ProtocolError, counted as rejected), not an OverflowError out of the schema check."""
    a = _policy_leader(fleet)
    datagram = signed_report("a1", ts=time.time(), nonce="ab12", state="awake", event="heartbeat", load=10**400)
    with pytest.raises(P.ProtocolError, match="'load'"):
        a.endpoint.accept(datagram)
    rejected = a.rejected
    with a.lock:
        a._on_datagram(datagram, ("127.0.0.1", 9), [])
    assert a.rejected == rejected + 1 and a.errors == 0


def test_a_report_forwarded_to_the_leader_of_another_segment_goes_on_to_its_hosts_leader(fleet):
    """A forwarded report names its host; the leader that takes the job applies it only to a host of its own segment,
    and sends it on to the host's otherwise.  Applied to its mirror of another segment's host, the report was
    journaled in the wrong segment's scope (and the host taken into that segment when that journal is replayed)
    while the host's writer never saw it."""
    a, b = fleet.start("seg-a-1", "lan-a"), fleet.start("seg-b-1", "lan-b")
    settle(lambda: a.fleetmode.segment_leader and b.fleetmode.segment_leader and b.fleetmode.queue, [a, b],
           what="both leads")  # fmt: skip
    a1 = a.endpoint.accept(signed_report("a1", ts=time.time(), nonce="a1a1", state="awake", event="heartbeat"))
    assert a.accept_report(a1, None)["state"] == "awake"
    settle(lambda: b.api_host("a1")["state"] == "awake", [a, b], what="b mirrors a1")
    journal = b.registry.store.journal_length
    # What a forwarding instance whose view was behind sends (verified by it): a1's next report, to segment lan-b.
    datagram = signed_report("a1", ts=time.time(), nonce="a1a2", state="awake", event="heartbeat", idle_seconds=777.0)
    message = P.check_message(json.loads(datagram.split(b" ", 2)[2]))
    job = b.fleetmode.submit("lan-b", "report", {"message": message, "sender": None})
    settle(lambda: a.registry.get("a1").idle_seconds == 777.0, [a, b], what="a1's leader applied it")
    assert _job_state(b, job) == ("done", 1) and b.reports == 0
    assert b.registry.store.journal_length == journal and b.registry.get("a1").segment == "lan-a"
    settle(lambda: b.api_host("a1")["idle_seconds"] == 777.0, [a, b], what="b mirrors it from a1's row")


def test_forwarded_reports_do_not_pile_up_in_the_job_table_for_a_day(fleet):
    """Every report an instance that does not lead takes is a job row: at 100,000 hosts reporting every 30 s through
    a standby, a day of done report jobs is millions of rows.  A done report job is deleted at the policy leader's
    next cleanup once older than ``max_skew`` (nothing reads it); a failed one is kept the day, as every other job."""
    first = fleet.start("seg-a-1", "lan-a")
    settle(lambda: first.fleetmode.segment_leader and first.fleetmode.policy_leader, [first], what="first leads")
    second = fleet.start("seg-a-2", "lan-a")
    pump(first, second)
    jobs = []
    for index in range(5):
        message = second.endpoint.accept(signed_report("a1", ts=time.time(), nonce="f%d" % index, state="awake",
                                                       event="heartbeat", idle_seconds=float(index)))  # fmt: skip
        jobs.append(second.accept_report(message, None)["job"])
    settle(lambda: all(_job_state(first, job)[0] == "done" for job in jobs), [first, second], what="applied")
    skew = float(first.config.server["max_skew"])
    _conn(first).execute("UPDATE powerwaked_jobs SET finished = now() - make_interval(secs => %s)", (skew + 1,))
    kept = _insert_job(first, "@policy", "demand", '{"host": "web", "more": 1, "ttl": 60, "source": "x"}')
    settle(lambda: _job_state(first, kept)[0] in ("done", "failed"), [first, second], what="the demand ran")
    _conn(first).execute("UPDATE powerwaked_jobs SET finished = now() - make_interval(secs => %s) WHERE id = %s",
                         (skew + 1, kept))  # fmt: skip
    first.fleetmode._next_cleanup = 0.0
    settle(
        lambda: all(_job_state(first, job) is None for job in jobs), [first, second], what="the done reports deleted"
    )
    assert _job_state(first, kept) is not None  # any other job: kept its day


def test_a_segments_sleep_proxy_never_answers_or_wakes_for_a_host_of_another_segment(fleet):
    """The registry of every instance holds the whole fleet (the mirror); the sleep proxy of lan-a must still act
    only for lan-a's hosts: an ARP on lan-a for the address of a sleeper on lan-b (anyone on lan-a can send one) is
    not answered there with lan-a's MAC, and does not wake the lan-b host (L2 work is its own segment's)."""
    from powernap.server.proxy import Frame, SleepProxy

    a, b = fleet.start("seg-a-1", "lan-a"), fleet.start("seg-b-1", "lan-b")
    settle(lambda: a.fleetmode.segment_leader and b.fleetmode.segment_leader, [a, b], what="both leads")
    message = b.endpoint.accept(signed_report("b1", ts=time.time(), nonce="b1b1", state="awake", event="heartbeat",
                                              ips=["198.18.1.5"]))  # fmt: skip
    b.accept_report(message, None)
    b.registry.set_state(b.registry.get("b1"), "asleep", "test: asleep", time.time())
    settle(lambda: a.api_host("b1")["state"] == "asleep" and a.registry.by_ip("198.18.1.5"), [a, b], what="a mirrors")
    proxy = SleepProxy(a.registry, a._proxy_wake, now=time.time())  # lan-a's proxy, as the daemon makes it
    arp = Frame("who-has", "02:50:4e:00:00:63", "198.18.0.99", "198.18.1.5")
    assert proxy.on_parsed(arp, time.time()) is None
    for _turn in range(10):
        pump(a, b)
    assert a.sent.wol == [] and b.sent.wol == [] and a.registry.get("b1").state == "asleep"


def test_an_address_a_host_gave_up_resolves_to_no_host_at_every_instance(fleet):
    """``/v1/wake`` takes a name, IP or MAC.  A host whose address changed must not be found by its old one at the
    instances that saw it before (the mirror's and the writer's index kept it) while an instance started later finds
    nothing: one request, the same answer everywhere, and never a wake for a host that no longer has the address."""
    a, b = fleet.start("seg-a-1", "lan-a"), fleet.start("seg-b-1", "lan-b")
    settle(lambda: a.fleetmode.segment_leader and b.fleetmode.segment_leader, [a, b], what="both leads")
    for nonce, ip, mac in (("a1f1", "198.18.0.5", "02:50:4e:00:00:55"), ("a1f2", "198.18.0.6", "02:50:4e:00:00:66")):
        message = a.endpoint.accept(signed_report("n1", ts=time.time(), nonce=nonce, state="awake", event="heartbeat",
                                                  ips=[ip], macs=[mac]))  # fmt: skip
        a.accept_report(message, None)  # n1: no [host] section (registered)
        settle(lambda: b.registry.get("n1") and b.registry.get("n1").ips == [ip], [a, b], what="b mirrors n1's address")  # noqa: B023
    c = fleet.start("seg-a-2", "lan-a")
    pump(a, b, c)
    for server in (a, b, c):
        assert server.registry.find("198.18.0.6").name == "n1"
        assert server.registry.find("198.18.0.5") is None, server.config.instance
        assert server.registry.find("02:50:4e:00:00:55") is None, server.config.instance


def test_l2_jobs_for_a_host_of_another_segment_are_refused_not_sent_on_the_wrong_wire(fleet):
    """A send-wake, send-nap or clear-mark job names its host; the leader that takes it acts only on a host of its
    own segment (as a hold job already did).  One sent by a policy leader whose view of the host was behind (it
    moved) or written by a broken writer must not put a magic packet for a lan-a host on lan-b's wire."""
    a, b = fleet.start("seg-a-1", "lan-a"), fleet.start("seg-b-1", "lan-b")
    settle(lambda: a.fleetmode.segment_leader and b.fleetmode.segment_leader and b.fleetmode.queue, [a, b],
           what="both leads")  # fmt: skip
    a.registry.set_state(a.registry.get("a1"), "asleep", "test: asleep", time.time())
    settle(lambda: b.api_host("a1")["state"] == "asleep", [a, b], what="b mirrors a1 asleep")
    jobs = [
        b.fleetmode.submit("lan-b", "send-wake", {"host": "a1", "cause": "test", "method": "auto", "source": "x"}),
        b.fleetmode.submit("lan-b", "send-nap", {"host": "a1", "cause": "test", "action": "suspend", "source": "x"}),
        b.fleetmode.submit("lan-b", "clear-mark", {"host": "a1", "source": "x"}),
    ]
    settle(lambda: all(_job_state(b, job)[0] in ("done", "failed") for job in jobs), [a, b], what="the jobs taken")
    assert [_job_state(b, job) for job in jobs] == [("failed", 1)] * 3
    assert b.sent.wol == [] and a.sent.wol == [] and b.registry.get("a1").state == "asleep"


def test_hostile_host_tombstone_and_instance_rows_neither_stop_an_instance_nor_reach_its_own_hosts(fleet):
    """Rows no writer of this version would write: records of the wrong type, with NaN, lists beyond their bound, a
    bad name, a name that is one of our hosts under another segment, an unknown segment; a tombstone for a host that
    has a row; an instance row from the far future.  The instance goes on (no error, the next job runs), keeps its
    own hosts, and takes from the rows only what its schema admits."""
    a = _policy_leader(fleet)
    conn = _conn(a)
    rows = [
        ("r1", "[1, 2]", "lan-b"),
        ("r2", '{"name": "r2", "state": NaN, "ips": %s, "interval": 1e999}' % json.dumps(["198.18.1.1"] * 10000), "zz"),
        ("r3", '{"name": "bad name!", "state": "asleep"}', "lan-b"),
        ("r4", '{"name": "a1", "state": "asleep", "macs": ["02:50:4e:00:00:99"]}', "lan-b"),
        ("r5", "[" * 100000 + "]" * 100000, "lan-b"),
    ]
    for name, record, segment in rows:
        conn.execute(
            "INSERT INTO powerwaked_hosts (name, record, segment) VALUES (%s, %s, %s)", (name, record, segment)
        )
    conn.execute("INSERT INTO powerwaked_hosts_gone (name, segment, version) VALUES ('a1', 'lan-a', "
                 "nextval('powerwaked_host_version')) ON CONFLICT DO NOTHING")  # fmt: skip
    conn.execute("INSERT INTO powerwaked_instances (name, segment, roles, heartbeat) VALUES ('ghost', 'lan-a', "
                 "'segment,policy', 'infinity')")  # fmt: skip
    a.fleetmode._next_cleanup = 0.0
    for _turn in range(10):
        pump(a)
        time.sleep(0.05)
    good = _insert_job(a, "lan-a", "clear-mark", '{"host": "a1", "source": "admin"}')
    settle(lambda: _job_state(a, good)[0] == "done", [a], seconds=5.0, what="the next job done")
    assert a.errors == 0 and a.fleetmode.segment_leader
    a1 = a.registry.get("a1")
    assert a1.segment == "lan-a" and a.registry.owns(a1) and a1.macs == ["02:50:4e:00:00:01"]
    r2 = a.registry.get("r2")
    assert r2 is None or (r2.ips == [] and r2.state != "NaN")
    assert a.registry.get("bad name!") is None


def test_a_row_whose_record_names_another_host_does_not_replace_that_host(fleet):
    """A host row is keyed by its name; its record names a host too.  A row 'r4' of lan-b whose record says 'a1'
    would replace a1 (of lan-a) at every instance that does not write a1: its segment, MACs and state would become
    the row's, so wakes for a1 asked there would go to lan-b.  A record whose ``name`` is not the row's is a problem
    (noted, skipped), like a row that is not JSON."""
    a = _policy_leader(fleet)
    standby = fleet.start("seg-a-2", "lan-a")
    pump(a, standby)
    _conn(a).execute("INSERT INTO powerwaked_hosts (name, record, segment) VALUES ('r4', %s, 'lan-b')",
                     ('{"name": "a1", "state": "asleep", "macs": ["02:50:4e:00:00:99"]}',))  # fmt: skip
    for _turn in range(10):
        pump(a, standby)
        time.sleep(0.05)
    a1 = standby.registry.get("a1")
    assert a1.segment == "lan-a" and a1.macs == ["02:50:4e:00:00:01"]


def test_a_report_job_carrying_another_kind_of_message_is_refused(fleet):
    """A report job's message must be a report: a valid message of another kind (an API request, a command ack)
    under a host's name was applied as that host's report."""
    a = _policy_leader(fleet)
    request = {"v": 1, "kind": "request", "from": "a1", "ts": time.time(), "nonce": "c0ffee", "host": "a1"}
    job = _insert_job(a, "lan-a", "report", json.dumps({"message": request, "sender": None}))
    settle(lambda: _job_state(a, job)[0] in ("done", "failed"), [a], what="the job taken")
    assert _job_state(a, job) == ("failed", 1) and a.reports == 0
