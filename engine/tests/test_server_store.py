"""powerwaked's store (issue 18): the interface on SQLite and on a private PostgreSQL, SQLite's file rules
(WAL, FULL, 0600, damage kept aside, a newer schema refused), PostgreSQL's (one server per database,
reconnect, the password never shown), and the config option.  The daemon-level tests (kill -9 in the
middle of a stream of reports, on both stores) are at the end."""

import itertools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from pg_cluster import reconnected
from server_fakes import SECRET, signed_report

from powernap.server import protocol as P
from powernap.server.config import load_config
from powernap.server.registry import Registry
from powernap.server.store import HISTORY_KEEP, StoreError, open_store, parse_url, redact

ENGINE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def snapshot(seq=0, hosts=(), replay=None, **state):
    return dict({"schema": 1, "saved": 1.0, "seq": seq, "hosts": list(hosts), "replay": replay or {}}, **state)


# -- the interface, on both backends -------------------------------------------------------------------
def test_a_fresh_store_holds_nothing(store_url):
    store = open_store(store_url)
    assert store.read([]) == (None, []) and store.seq == 0 and store.journal_length == 0
    store.close()


def test_keyed_state_the_store_does_not_know_comes_back_as_it_was(store_url):
    # Other parts of powerwaked (policy queues, vetoes, decisions, energy) add snapshot keys: kept as given.
    store = open_store(store_url)
    queues = {"web": [{"host": "h1", "at": 5.5, "why": "demand \u0000 x"}]}
    store.write_snapshot(snapshot(hosts=[{"name": "h1", "new_field": {"a": [1, 2]}}], queues=queues, energy=12.5))
    store.close()
    again = open_store(store_url)
    data, entries = again.read([])
    assert data["queues"] == queues and data["energy"] == 12.5 and entries == []
    assert data["hosts"] == [{"name": "h1", "new_field": {"a": [1, 2]}}]
    again.write_snapshot(snapshot(hosts=[], queues=queues))  # a key and a host that are gone are dropped
    again.close()
    third = open_store(store_url)
    data, _entries = third.read([])
    assert "energy" not in data and data["hosts"] == [] and data["queues"] == queues
    third.close()


def test_the_snapshot_and_the_journal_it_includes_are_one_transaction(store_url):
    store = open_store(store_url)
    store.append([{"sender_ts": ["h1", 1.0]}, {"sender_ts": ["h2", 2.0]}])
    store.append([{"sender_ts": ["h3", 3.0]}])
    assert store.seq == 3 and store.journal_length == 3
    store.write_snapshot(snapshot(seq=2, replay={"h1": 1.0, "h2": 2.0}))
    assert store.journal_length == 1
    store.close()
    again = open_store(store_url)
    data, entries = again.read([])
    assert data["replay"] == {"h1": 1.0, "h2": 2.0} and data["seq"] == 2
    assert entries == [{"sender_ts": ["h3", 3.0], "seq": 3}] and again.seq == 3
    again.close()


def test_history_is_kept_bounded_and_read_newest_last(store_url, monkeypatch):
    from powernap.server.store import sql

    monkeypatch.setattr(sql, "HISTORY_KEEP", 5)
    store = open_store(store_url)
    store.append_history([{"time": float(i), "what": "wake", "host": "h%d" % i} for i in range(4)])
    store.append_history([{"time": float(i), "what": "nap", "host": "h%d" % i} for i in range(4, 8)])
    assert [entry["host"] for entry in store.read_history(100)] == ["h3", "h4", "h5", "h6", "h7"]
    assert [entry["host"] for entry in store.read_history(2)] == ["h6", "h7"]
    store.close()
    assert HISTORY_KEEP >= 1000


def test_the_wake_history_survives_a_restart_of_the_registry(store_url):
    registry = Registry(store_url)
    registry.remember({"time": 5.0, "what": "wake", "host": "h1", "method": "wol"})
    assert registry.save_if_due(100.0)
    registry.wait_saved()
    registry.close()
    again = Registry(store_url)
    again.load()
    assert again.recent_history(10) == [{"time": 5.0, "what": "wake", "host": "h1", "method": "wol"}]
    again.close()


# -- SQLite's file ----------------------------------------------------------------------------------------
def test_sqlite_is_one_private_file_in_wal_mode_with_full_sync(tmp_path):
    path = tmp_path / "state" / "registry.sqlite3"
    store = open_store("sqlite://%s" % path)
    store.append([{"sender_ts": ["h1", 1.0]}])
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    for name in os.listdir(path.parent):
        assert os.stat(path.parent / name).st_mode & 0o077 == 0, name
    store.close()
    os.chmod(path, 0o644)
    problems = []
    again = open_store(str(path))  # a bare absolute path is a SQLite file too
    again.read(problems)
    assert os.stat(path).st_mode & 0o777 == 0o600 and "now 0600" in problems[0]
    again.close()


def test_a_file_that_is_not_a_database_is_kept_aside_and_the_store_starts_empty(tmp_path):
    path = tmp_path / "registry.sqlite3"
    path.write_bytes(b"this is not SQLite, it is what a bad restore left here" * 100)
    registry = Registry(str(path))
    assert registry.load() == 0
    kept = [p.name for p in tmp_path.iterdir() if p.name.startswith("registry.sqlite3.corrupt-")]
    assert kept and "unreadable" in registry.problems["load"] and str(path) in registry.problems["load"]
    assert (tmp_path / kept[0]).read_bytes().startswith(b"this is not SQLite")
    registry.accept_report(_report("h1", 10.0), None, 10.0)
    assert registry.commit() and registry.save(11.0)  # the fresh file works
    registry.close()
    assert Registry(str(path)).load() == 1


def test_a_damaged_database_is_kept_aside_and_what_can_be_read_is_salvaged(tmp_path):
    path = tmp_path / "registry.sqlite3"
    registry = Registry(str(path))
    for index in range(300):
        registry.accept_report(_report("h%03d" % index, 10.0), None, 10.0).hold = "x" * 250
    registry.save(11.0)
    registry.close()
    conn = sqlite3.connect(str(path))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    pages = path.stat().st_size // 4096
    assert pages > 40
    with open(path, "r+b") as handle:  # garble ten pages in the middle (some of the hosts table's leaves)
        handle.seek(pages // 2 * 4096)
        handle.write(os.urandom(10 * 4096))
    again = Registry(str(path))
    loaded = again.load()
    assert "unreadable" in again.problems["load"] and "salvaged" in again.problems["load"]
    assert any(p.name.startswith("registry.sqlite3.corrupt-") for p in tmp_path.iterdir())
    assert 0 <= loaded < 300
    again.save(12.0)
    again.close()
    assert Registry(str(path)).load() == loaded  # the salvage was written to the fresh file


def test_a_database_of_a_newer_powerwaked_is_refused_not_moved(tmp_path):
    path = tmp_path / "registry.sqlite3"
    open_store(str(path)).close()
    conn = sqlite3.connect(str(path))
    conn.execute("UPDATE powerwaked_meta SET value = '99' WHERE key = 'store_schema'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="schema 99, written by a newer powerwaked"):
        open_store(str(path))
    assert path.exists() and not [p for p in tmp_path.iterdir() if "corrupt" in p.name]


# -- PostgreSQL --------------------------------------------------------------------------------------------
def test_postgresql_refuses_a_second_server_on_the_same_database(postgresql):
    url = postgresql.create_database("second_server")
    first = open_store(url)
    with pytest.raises(StoreError, match="in use by another powerwaked"):
        open_store(url)
    first.close()
    open_store(url).close()  # the lock went with the first connection


def test_postgresql_reconnects_after_the_connection_is_lost(postgresql, monkeypatch):
    import psycopg

    from powernap.server.store import postgres

    monkeypatch.setattr(postgres, "RECONNECT_EVERY", 0.0)
    url = postgresql.create_database("reconnect")
    store = open_store(url)
    pid = store.conn.info.backend_pid
    with psycopg.connect(postgresql.url(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(StoreError):
        store.append([{"sender_ts": ["h1", 1.0]}])  # lost: not journaled, so not acknowledged
    reconnected(lambda: store.append([{"sender_ts": ["h1", 2.0]}]))  # (and the instance lock taken again)
    assert store.read([])[1] == [{"sender_ts": ["h1", 2.0], "seq": 1}]
    store.close()


def test_postgresql_schema_is_versioned_and_a_newer_one_refused(postgresql):
    import psycopg

    url = postgresql.create_database("schema")
    open_store(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT value FROM powerwaked_meta WHERE key = 'store_schema'").fetchone() == ("3",)
        conn.execute("UPDATE powerwaked_meta SET value = '7' WHERE key = 'store_schema'")
    with pytest.raises(StoreError, match="schema 7, migrated by a newer powerwaked"):
        open_store(url)


def test_the_postgresql_password_is_never_shown(postgresql):
    url = "postgresql://powerwaked:S3cr%%40tPw@/nosuchdb?host=%s" % postgresql.socket_dir
    with pytest.raises(StoreError) as caught:
        open_store(url)
    assert "S3cr" not in str(caught.value) and "***" in str(caught.value)
    assert redact("postgresql://u:pw@db.example/x?password=pw2&sslmode=require") == (
        "postgresql://u:***@db.example/x?password=***&sslmode=require"
    )
    from powernap.server.store.postgres import PostgresStore

    store = PostgresStore.__new__(PostgresStore)  # only its error scrubbing, no connection
    store.where, store._secrets = redact(url), ["S3cr@tPw", "S3cr%40tPw"]
    assert "S3cr" not in str(store._error(RuntimeError("auth failed for password S3cr@tPw")))


def test_psycopg_is_imported_only_for_a_postgresql_store(tmp_path):
    code = (
        "import sys; from powernap.server.daemon import Server; from powernap.server.store import open_store;"
        "open_store('sqlite://%s/r.sqlite3').close(); assert 'psycopg' not in sys.modules, 'psycopg imported'"
        % tmp_path
    )
    subprocess.run([sys.executable, "-c", code], cwd=ENGINE, check=True, timeout=60)
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from powernap.server.store import open_store\n"
        "try:\n    open_store('postgresql:///db')\nexcept OSError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ENGINE, check=True, timeout=60, capture_output=True)
    assert b"apt install python3-psycopg" in out.stdout


# -- the option ---------------------------------------------------------------------------------------------
def _config(tmp_path, text):
    path = tmp_path / "powerwaked.conf"
    path.write_text("[powerwaked]\nsecret = %s\nlisten = 127.0.0.1\n%s" % (SECRET, text))
    return load_config([str(path)])


@pytest.mark.parametrize(
    "value, problem",
    [
        ("sqlite://relative.db", "needs an absolute path"),
        ("mysql://u:hunter2hunter2@db/x", "scheme was not recognised"),
        ("postgresql://u:hunter2hunter2@db:99999/x", "bad host or port"),
        ("postgresql://u:hunter2hunter2@db", "must name the database"),
    ],
)
def test_a_bad_store_is_located_and_never_echoed(tmp_path, value, problem):
    _config_, errors = _config(tmp_path, "store = %s\n" % value)
    assert len(errors) == 1 and problem in str(errors[0]) and ":4:" in str(errors[0])
    assert "hunter2" not in str(errors[0]) and "relative.db" not in str(errors[0])


def test_the_default_store_is_sqlite_beside_the_state_file(tmp_path):
    config, errors = _config(tmp_path, "state_file = /srv/pw/registry.json\n")
    assert errors == [] and config.store == "sqlite:///srv/pw/registry.sqlite3"
    config, errors = _config(tmp_path, "")
    assert config.store == "sqlite:///var/lib/powerwaked/registry.sqlite3"
    config, errors = _config(tmp_path, "store = postgresql://pw@db.example/powernap\n")
    assert errors == [] and parse_url(config.store) == ("postgresql", "postgresql://pw@db.example/powernap")


# -- the daemon: kill -9 in the middle of a stream of reports loses nothing acknowledged ---------------------
_NONCES = itertools.count(1)


def _report(host, ts, **extra):
    # A nonce of its own per report: one made from int(ts * 1000) was shared by two reports whose ts differed by
    # 1 ms but truncated alike (x.685000 and x.685999), so the stream below matched one report's ack to the other.
    message = {"v": 1, "kind": "report", "from": host, "host": host, "state": "awake", "event": "heartbeat",
               "ts": ts, "nonce": "%016x" % next(_NONCES), "interval": 30.0}  # fmt: skip
    message.update(extra)
    return message


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        return udp.getsockname()[1]


class _Powerwaked:
    def __init__(self, tmp_path, store):
        self.port = _free_port()
        self.config = tmp_path / "powerwaked.conf"
        self.config.write_text(
            "[powerwaked]\nsecret = %s\nlisten = 127.0.0.1\nport = %d\nannounce = no\nbroadcast = 127.0.0.1\n"
            "state_file = %s\nstore = %s\nmax_hosts = 1000\n" % (SECRET, self.port, tmp_path / "registry.json", store)
        )
        self.config.chmod(0o600)
        self.log = tmp_path / "powerwaked.log"
        self.proc = None

    def start(self):
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "powernap.server.daemon", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=ENGINE), cwd=ENGINE,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            if "READY" in self.log.read_text() or self._api_up():
                return self
            time.sleep(0.05)
        raise AssertionError("powerwaked did not start: %s" % self.log.read_text())

    def _api_up(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self):
        """SIGTERM, and the daemon's own clean stop (its last snapshot, the store closed: SQLite removes its -wal and
        -shm files), within systemd's default stop timeout (90 s) on a busy machine; else SIGKILL and a failure."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
                log = self.log.read_text()[-3000:]
                raise AssertionError("powerwaked did not stop within 90 s of SIGTERM:\n" + log) from None


def _stream(port, hosts, stop, acked):
    """Send reports as fast as acks come (a window of 16 in flight); record each acknowledged (host, ts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        in_flight = {}
        counter = 0
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            while len(in_flight) < 16:
                counter += 1
                host = hosts[counter % len(hosts)]
                ts = round(time.time(), 3) + counter * 1e-3  # a new, increasing ts per report
                data = signed_report(host, _report(host, ts, load=counter % 7 / 10.0))
                in_flight[json.loads(data.split(b" ", 2)[2])["nonce"]] = (host, ts)
                sock.sendto(data, ("127.0.0.1", port))
            try:
                reply, _sender = sock.recvfrom(P.MAX_MESSAGE)
            except (socket.timeout, ConnectionRefusedError):
                in_flight.clear()  # the server is gone (killed): these were never acknowledged
                continue
            sent = in_flight.pop(json.loads(reply.split(b" ", 2)[2]).get("re"), None)
            if sent is not None:
                acked.append(sent)


def test_kill_9_in_the_middle_of_a_stream_loses_no_acknowledged_report(store_url, tmp_path):
    daemon = _Powerwaked(tmp_path, store_url).start()
    hosts = ["h%02d" % index for index in range(20)]
    acked = []
    stop = threading.Event()
    sender = threading.Thread(target=_stream, args=(daemon.port, hosts, stop, acked), daemon=True)
    try:
        sender.start()
        deadline = time.monotonic() + 20
        while len(acked) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        daemon.kill()  # SIGKILL while reports keep arriving: no shutdown save, journal writes in flight
        killed_at = len(acked)
        stop.set()
        sender.join(10)
    finally:
        daemon.stop()
    assert killed_at >= 300, "only %d acks before the kill (log: %s)" % (killed_at, daemon.log.read_text()[-2000:])
    # The restart: the daemon loads the store (snapshot plus journal), takes it in and saves, then stops.
    for attempt in range(20):  # PostgreSQL: until the killed server's session (and its lock) is gone
        try:
            daemon.start()
            break
        except AssertionError:
            if attempt == 19 or "in use by another powerwaked" not in daemon.log.read_text():
                raise
            time.sleep(0.5)
    daemon.stop()
    newest = {}
    for host, ts in acked:
        newest[host] = max(ts, newest.get(host, 0.0))
    registry = _reopened(store_url)  # what the restarted daemon starts from: the snapshot plus the journal
    lost = [(h, ts) for h, ts in newest.items() if registry.get(h) is None or registry.get(h).last_ts < ts]
    stored = [(h, registry.get(h).last_ts if registry.get(h) else None) for h, _ts in lost[:5]]
    problems = dict(registry.problems)
    registry.close()
    # On failure: what the store held, the registry's problems and the daemon's log tell why.
    assert lost == [], "acknowledged but not in the store after kill -9: %s (stored: %s, problems: %s, log: %s)" % (
        lost[:5],
        stored,
        problems,
        daemon.log.read_text()[-3000:],
    )


def _reopened(store_url):
    """The registry as a restart loads it (PostgreSQL: once the killed server's session is gone)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            registry = Registry(store_url)
            break
        except StoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    registry.load()
    assert registry.problems == {}, registry.problems
    return registry


def test_a_database_it_cannot_use_stops_the_start_with_the_reason_and_no_password(postgresql, tmp_path):
    config = tmp_path / "powerwaked.conf"
    config.write_text(
        "[powerwaked]\nsecret = %s\nlisten = 127.0.0.1\nport = %d\nannounce = no\nstate_file = %s\n"
        "store = postgresql://powerwaked:Pa55-never-shown@/nosuchdb?host=%s\n"
        % (SECRET, _free_port(), tmp_path / "registry.json", postgresql.socket_dir)
    )
    config.chmod(0o600)
    run = subprocess.run(
        [sys.executable, "-m", "powernap.server.daemon", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ENGINE), cwd=ENGINE, check=False,
    )  # fmt: skip
    assert run.returncode == 1
    assert "cannot start: PostgreSQL store postgresql://powerwaked:***@/nosuchdb" in run.stderr
    assert "nosuchdb" in run.stderr.split("cannot start", 1)[1] and "Pa55" not in run.stdout + run.stderr
    check = subprocess.run(
        [sys.executable, "-m", "powernap.server.daemon", "--config", str(config), "--check-config"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ENGINE), cwd=ENGINE, check=False,
    )  # fmt: skip
    assert check.returncode == 0 and "Pa55" not in check.stdout + check.stderr


def test_the_daemon_imports_the_json_registry_once_into_its_default_sqlite_store(tmp_path):
    state = tmp_path / "registry.json"
    hosts = [{"name": "old1", "state": "asleep", "macs": ["52:54:00:00:00:41"], "wakes": 2}]
    state.write_text(json.dumps({"schema": 1, "saved": 1.0, "seq": 0, "hosts": hosts}))
    (tmp_path / "registry.json.journal").write_text(
        json.dumps({"seq": 1, "report": _report("old2", time.time()), "sender": ["127.0.0.1", 4000], "at": 2.0}) + "\n"
    )
    daemon = _Powerwaked(tmp_path, "").start()  # store unset: registry.sqlite3 beside state_file
    daemon.stop()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("registry")) == [
        "registry.json.imported",
        "registry.json.journal.imported",
        "registry.sqlite3",
    ]
    assert "imported 2 hosts" in daemon.log.read_text()
    state.write_text(json.dumps({"schema": 1, "hosts": [{"name": "stale"}]}))  # an old copy, put back
    daemon.start().stop()
    registry = _reopened("sqlite://%s" % (tmp_path / "registry.sqlite3"))
    assert registry.get("old1").wakes == 2 and registry.get("old2").addr == ["127.0.0.1", 4000]
    assert registry.get("stale") is None and "not imported" in daemon.log.read_text()
    registry.close()


def test_a_new_sqlite_file_gives_back_the_room_of_an_emptied_journal(tmp_path):
    path = tmp_path / "registry.sqlite3"
    store = open_store(str(path))
    entry = {"report": {"host": "h1", "filler": "x" * 2000}}
    for _batch in range(100):
        store.append([dict(entry) for _entry in range(20)])  # about 4 MB of journal
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    grown = path.stat().st_size
    store.write_snapshot(snapshot(seq=store.seq))
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert store.journal_length == 0 and grown > 3_000_000
    assert path.stat().st_size < 2_000_000, "the emptied journal's pages were kept"
    store.close()
