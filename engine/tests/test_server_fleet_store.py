"""Fleet mode's PostgreSQL store (FLEETMODE.md): writer scopes, host rows with segment and version, the mirror
read, the migration from schema 1, and who may share a database; against the private cluster (``pg_cluster``)."""

import os

import pytest
from pg_cluster import reconnected

from powernap.server.store import StoreError, open_store, sql
from powernap.server.store.postgres import MIGRATIONS


@pytest.fixture
def database(postgresql, request):
    return postgresql.create_database("fleet_%d_%s" % (os.getpid(), request.node.name[5:40].lower()))


def _writer(url, instance, segment):
    scope = "segment:" + segment if segment else "policy"
    return open_store(url, fleet={"instance": instance, "scope": scope, "segment": segment or "@policy"})


def _host(name, state="awake"):
    return {"name": name, "state": state}


def _snapshot(seq, hosts=(), replay=None, **state):
    return dict({"schema": 1, "saved": 1.0, "seq": seq, "hosts": list(hosts), "replay": replay or {}}, **state)


def test_one_writers_snapshot_never_drops_anothers_journal_state_or_rows(database):
    a, b = _writer(database, "seg-a-1", "lan-a"), _writer(database, "seg-b-1", "lan-b")
    a.append([{"sender_ts": ["a1", 1.0]}, {"sender_ts": ["a1", 2.0]}])
    b.append([{"sender_ts": ["b1", 1.0]}])
    b.write_snapshot(_snapshot(b.seq, [_host("b1")], {"b1": 1.0}, extras={"rails": "b"}))
    a.write_snapshot(_snapshot(1, [_host("a1")], {"a1": 1.0}, extras={"rails": "a"}))  # the journal up to seq 1 only
    b.write_snapshot(_snapshot(b.seq, [], {}, extras={"rails": "b2"}))  # b drops its host: a's row stays
    a.close(), b.close()
    a, b = _writer(database, "seg-a-1", "lan-a"), _writer(database, "seg-b-1", "lan-b")
    snap_a, journal_a = a.read([])
    snap_b, journal_b = b.read([])
    assert [h["name"] for h in snap_a["hosts"]] == ["a1"] and snap_a["replay"] == {"a1": 1.0}
    assert snap_a["extras"] == {"rails": "a"} and journal_a == [{"sender_ts": ["a1", 2.0], "seq": 2}]
    assert snap_b["hosts"] == [] and snap_b["replay"] == {} and snap_b["extras"] == {"rails": "b2"}
    assert journal_b == []
    a.close(), b.close()


def test_the_mirror_reads_the_other_writers_rows_changed_since_a_version(database):
    a, b = _writer(database, "seg-a-1", "lan-a"), _writer(database, "seg-b-1", "lan-b")
    a.write_snapshot(_snapshot(0, [_host("a1"), _host("a2")]))
    b.write_snapshot(_snapshot(0, [_host("b1")]))
    rows, seen = b.mirror(0, [])
    assert sorted((segment, record["name"]) for segment, record in rows) == [("lan-a", "a1"), ("lan-a", "a2")]
    assert b.mirror(seen, []) == ([], seen)  # nothing new (its own row b1 is never mirrored)
    a.write_snapshot(_snapshot(0, [_host("a1", "asleep"), _host("a2")]))  # only a1 changed: one row written
    rows, newer = b.mirror(seen, [])
    assert rows == [("lan-a", _host("a1", "asleep"))] and newer > seen
    a.close(), b.close()


def test_a_row_its_writer_deletes_leaves_a_tombstone_for_the_mirrors_unless_the_host_has_a_row_again(database):
    a, b = _writer(database, "seg-a-1", "lan-a"), _writer(database, "seg-b-1", "lan-b")
    a.write_snapshot(_snapshot(0, [_host("a1"), _host("a2"), _host("a3")]))
    assert b.gone_since(0) == ([], 0)
    a.write_snapshot(_snapshot(0, [_host("a1")]))  # a2 and a3 pruned by their writer
    gone, seen = b.gone_since(0)
    assert sorted(gone) == [("a2", "lan-a"), ("a3", "lan-a")] and seen > 0
    assert b.gone_since(seen) == ([], seen)  # read once
    b.write_snapshot(_snapshot(0, [_host("a2")]))  # a2 moved to lan-b (a row again): not gone
    assert b.gone_since(0)[0] == [("a3", "lan-a")]
    b.write_snapshot(_snapshot(0, [_host("a2"), _host("a1")]))  # a1 taken by lan-b first: a's delete is no row going
    a.write_snapshot(_snapshot(0, []))
    assert b.gone_since(seen)[0] == []
    b.forget_gone(0.0)
    a.close(), b.close()


def test_a_policy_writer_owns_no_host_rows(database):
    a, policy = _writer(database, "seg-a-1", "lan-a"), _writer(database, "seg-a-2", None)
    a.write_snapshot(_snapshot(0, [_host("a1")]))
    policy.write_snapshot(_snapshot(0, [], queue=[1, 2]))  # no hosts in its snapshot: nobody's row is dropped
    assert [record["name"] for _segment, record in policy.mirror(0, [])[0]] == ["a1"]
    assert policy.read([])[0]["queue"] == [1, 2] and a.read([])[0]["hosts"] == [_host("a1")]
    a.close(), policy.close()


def test_history_is_shared_and_names_the_instance(database):
    a, b = _writer(database, "seg-a-1", "lan-a"), _writer(database, "seg-b-1", "lan-b")
    a.append_history([{"time": 1.0, "host": "a1", "action": "wake"}])
    b.append_history([{"time": 2.0, "host": "b1", "action": "nap"}])
    assert [(e["host"], e["instance"]) for e in a.read_history(10)] == [("a1", "seg-a-1"), ("b1", "seg-b-1")]
    a.close(), b.close()


def test_the_history_bound_is_the_fleets_not_each_instances(database, monkeypatch):
    monkeypatch.setattr(sql, "HISTORY_KEEP", 4)
    a, b = _writer(database, "seg-a-1", "lan-a"), _writer(database, "seg-b-1", "lan-b")
    for second in range(6):
        (a if second % 2 else b).append_history([{"time": float(second), "host": "h", "what": "wake"}])
    kept = b.read_history(100)
    assert [e["time"] for e in kept] == [2.0, 3.0, 4.0, 5.0]  # 4 for the fleet, not 4 per instance
    assert [e["instance"] for e in a.read_history(2)] == ["seg-b-1", "seg-a-1"]  # the newest two, oldest first
    a.close(), b.close()


def test_who_may_share_a_database(database):
    single = open_store(database)
    with pytest.raises(StoreError, match="not in fleet mode"):
        _writer(database, "seg-a-1", "lan-a")
    single.close()
    a = _writer(database, "seg-a-1", "lan-a")
    with pytest.raises(StoreError, match="in use by another powerwaked"):
        open_store(database)
    with pytest.raises(StoreError, match="instance 'seg-a-1'"):
        _writer(database, "seg-a-1", "lan-b")
    _writer(database, "seg-a-2", "lan-a").close()
    a.close()


def test_a_schema_1_database_is_migrated_with_its_data(database):
    import psycopg

    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE TABLE powerwaked_meta (key text PRIMARY KEY, value text NOT NULL)")
        for statement in MIGRATIONS[1]:
            conn.execute(statement)
        conn.execute("INSERT INTO powerwaked_meta VALUES ('store_schema', '1'), "
                     "('snapshot', '{\"schema\":1,\"saved\":1.0,\"seq\":1}')")  # fmt: skip
        conn.execute("INSERT INTO powerwaked_hosts VALUES ('h1', '{\"name\":\"h1\"}'), ('h2', '{\"name\":\"h2\"}')")
        conn.execute("INSERT INTO powerwaked_replay VALUES ('h1', 5.0)")
        conn.execute("INSERT INTO powerwaked_state VALUES ('extras', '{\"rails\":1}')")
        conn.execute("INSERT INTO powerwaked_journal VALUES (1, '{\"sender_ts\":[\"h1\",4.0]}'), "
                     "(2, '{\"sender_ts\":[\"h1\",6.0]}')")  # fmt: skip
    store = open_store(database)  # one server, as before: scope "" holds all that was there
    snapshot, journal = store.read([])
    assert [h["name"] for h in snapshot["hosts"]] == ["h1", "h2"] and snapshot["replay"] == {"h1": 5.0}
    assert snapshot["extras"] == {"rails": 1} and journal == [{"sender_ts": ["h1", 6.0], "seq": 2}]
    store.append([{"sender_ts": ["h1", 7.0]}])
    store.write_snapshot(_snapshot(3, [_host("h1")], {"h1": 7.0}, extras={"rails": 2}))
    store.close()
    with psycopg.connect(database, autocommit=True) as conn:
        assert conn.execute("SELECT value FROM powerwaked_meta WHERE key = 'store_schema'").fetchone() == ("3",)
        versions = conn.execute("SELECT name, segment, version FROM powerwaked_hosts ORDER BY name").fetchall()
        assert [(name, segment) for name, segment, _v in versions] == [("h1", "")]
        assert conn.execute("SELECT count(*) FROM powerwaked_journal").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM powerwaked_jobs").fetchone() == (0,)  # the job table is there


def test_a_schema_2_database_is_migrated_and_its_queued_jobs_get_a_deadline(database):
    """Schema 3: every job has a deadline; jobs queued before it get one from their age (JOB_TTL_DEFAULT), so a
    wake queued an hour ago never runs once the instances are upgraded."""
    import psycopg

    from powernap.server.store.coord import JOB_TTL_DEFAULT, JobQueue

    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE TABLE powerwaked_meta (key text PRIMARY KEY, value text NOT NULL)")
        for step in (1, 2):
            for statement in MIGRATIONS[step]:
                conn.execute(statement)
        conn.execute("INSERT INTO powerwaked_meta VALUES ('store_schema', '2')")
        conn.execute("INSERT INTO powerwaked_jobs (segment, kind, payload, created) VALUES "
                     "('lan-a', 'send-wake', '{\"host\": \"old\"}', now() - interval '1 hour'), "
                     "('lan-a', 'send-wake', '{\"host\": \"new\"}', now())")  # fmt: skip
    store = _writer(database, "seg-a-1", "lan-a")
    store.close()
    with psycopg.connect(database, autocommit=True) as conn:
        assert conn.execute("SELECT value FROM powerwaked_meta WHERE key = 'store_schema'").fetchone() == ("3",)
        ages = conn.execute("SELECT payload, extract(epoch FROM expires - created) FROM powerwaked_jobs ORDER BY id")
        assert [float(age) for _payload, age in ages.fetchall()] == [JOB_TTL_DEFAULT, JOB_TTL_DEFAULT]
        assert conn.execute("SELECT count(*) FROM powerwaked_hosts_gone").fetchone() == (0,)  # the tombstones
    with psycopg.connect(database) as conn:
        queue = JobQueue(conn, "seg-a-1")
        job = queue.claim("lan-a", 5.0)
        assert job["payload"] == {"host": "new"} and queue.claim("lan-a", 5.0) is None  # the old one: expired
        expired = queue.expire()
        assert [(j["kind"], j["host"]) for j in expired] == [("send-wake", "old")] and queue.expire() == []


def test_a_writer_whose_session_died_never_writes_as_leader_on_the_next(database, postgresql, monkeypatch):
    import psycopg

    from powernap.server.store import postgres

    monkeypatch.setattr(postgres, "RECONNECT_EVERY", 0.0)
    old = _writer(database, "seg-a-1", "lan-a")
    old.fallback = ("instance:seg-a-1", "@none")
    assert old.try_lead("powerwaked-segment:lan-a")
    old.write_snapshot(_snapshot(0, [_host("a1")]))
    with psycopg.connect(postgresql.url(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (old.conn.info.backend_pid,))
    new = _writer(database, "seg-a-2", "lan-a")
    assert new.try_lead("powerwaked-segment:lan-a")  # the lock went with the old session
    new.write_snapshot(_snapshot(0, [_host("a1", "asleep")]))
    with pytest.raises(StoreError):
        old.write_snapshot(_snapshot(0, [_host("a1", "awake")]))  # the broken session: refused
    reconnected(lambda: old.write_snapshot(_snapshot(0, [_host("a1", "awake")])))  # as an instance leading nothing
    assert old.scope == "instance:seg-a-1" and not old.leads
    assert not old.try_lead("powerwaked-segment:lan-a")
    assert new.read([])[0]["hosts"] == [_host("a1", "asleep")]  # the new leader's row stands
    old.close(), new.close()


def test_a_statement_timeout_keeps_the_session_and_its_leads(database):
    """A write that waited past the statement timeout (a busy fleet's writers queue for the version lock) fails, but
    the session stays: a new one would drop the segment's lead, and the leader would re-read all of its hosts."""
    store = _writer(database, "seg-a-1", "lan-a")
    store.fallback = ("instance:seg-a-1", "@none")
    assert store.try_lead("powerwaked-segment:lan-a")
    session, pid = store.session, store.conn.info.backend_pid

    def slow(cursor):
        cursor.execute("SET LOCAL statement_timeout = '50ms'")
        cursor.execute("SELECT pg_sleep(1)")

    with pytest.raises(StoreError, match="statement timeout"):
        store._transaction(slow)
    assert store.try_lead("powerwaked-segment:lan-a") and store.scope == "segment:lan-a"
    assert (store.session, store.conn.info.backend_pid) == (session, pid)
    store.write_snapshot(_snapshot(0, [_host("a1")]))  # still the segment's writer
    assert store.read([])[0]["hosts"] == [_host("a1")]
    store.close()


def test_a_heartbeat_row_is_taken_in_without_decoding_it(database):
    """At 100,000 hosts every instance takes in ~3,000 rows a second, nearly all heartbeats: a row that differs from
    the one the reader's record was made from only in last_seen/last_ts comes as those two values, not decoded."""
    from powernap.server.registry import HostRecord

    a, b = _writer(database, "seg-a-1", "lan-a"), _writer(database, "seg-b-1", "lan-b")
    record = HostRecord("a1")
    record.last_seen, record.last_ts, record.idle_seconds = 100.0, 99.5, 10.0
    a.write_snapshot(_snapshot(0, [record.to_dict()]))
    (row,), seen = b.mirror(0, [], held=lambda name: None)
    segment, data, core = row
    assert segment == "lan-a" and data == record.to_dict() and isinstance(core, int)
    record.last_seen, record.last_ts = 130.0, 129.5  # a heartbeat
    a.write_rows([record.to_dict()])
    held = {"a1": core}
    (row,), seen = b.mirror(seen, [], held=held.get)
    assert row == ("lan-a", ("a1", 130.0, 129.5), core)
    (row,), seen = b.mirror(seen - 1, [], held=lambda name: None)  # a reader holding nothing: the whole record
    assert row[1] == record.to_dict()
    record.idle_seconds = 1000.0  # anything else: the whole record, with its new core
    a.write_rows([record.to_dict()])
    (row,), seen = b.mirror(seen, [], held=held.get)
    assert row[1] == record.to_dict() and row[2] != core
    a.close(), b.close()


def test_liveness_is_found_only_as_the_records_own_two_plain_values():
    record = {"name": "h1", "last_seen": 5.0, "last_ts": 4.0, "last_event": "x", "last_wake": None}
    core, liveness = sql.split_liveness(sql.dumps(record))
    assert liveness == (5.0, 4.0)
    assert sql.split_liveness(sql.dumps(dict(record, last_seen=6.0, last_ts=7.0)))[0] == core
    assert sql.split_liveness(sql.dumps(dict(record, last_event="y")))[0] != core
    assert sql.split_liveness(sql.dumps(dict(record, last_seen=None))) == (sql.split_liveness(
        sql.dumps(dict(record, last_seen=None)))[0], (None, 4.0))  # fmt: skip
    # A string that spells the keys is escaped JSON, never taken for them; a record without them has no liveness.
    hostile = {"name": "h1", "hold": ',"last_seen":1,"last_ts":2,'}
    assert sql.split_liveness(sql.dumps(hostile)) == (None, None)
    assert sql.split_liveness(sql.dumps(dict(record, last_seen={"a": 1}))) == (None, None)
    assert sql.split_liveness(None) == (None, None) and sql.split_liveness("{") == (None, None)
