"""The registry: reports, staleness, sleepers going quiet, atomic persistence across restarts; the fleet's
wake confirmation, IPMI escalation and engine commands."""

import json
import os

import pytest
from server_fakes import Sent, engine_decode, server_config

from powernap.clock import FakeClock
from powernap.server.fleet import Fleet
from powernap.server.registry import HostRecord, Registry
from powernap.server.store import encoded, open_store


def report(host, state, ts, event="heartbeat", **extra):
    message = {
        "v": 1,
        "kind": "report",
        "from": host,
        "host": host,
        "state": state,
        "event": event,
        "ts": ts,
        "nonce": "%016x" % int(ts * 1000),
        "interval": 30.0,
        "macs": ["52:54:00:00:00:01"],
        "ips": ["198.18.0.11"],
    }
    message.update(extra)
    return message


def test_report_creates_and_updates_a_host(tmp_path):
    registry = Registry(str(tmp_path / "r.sqlite3"))
    record = registry.accept_report(
        report("h1", "awake", 100.0, idle_seconds=12.5, load=0.4, cpus=2), ("198.18.0.11", 40000), 100.0
    )
    assert record.state == "awake" and record.idle_seconds == 12.5 and record.addr == ["198.18.0.11", 40000]
    assert registry.by_ip("198.18.0.11") is record and registry.by_mac("52:54:00:00:00:01") is record
    registry.accept_report(report("h1", "suspending", 101.0, event="action-start"), None, 101.0)
    assert record.state == "suspending" and record.since == 101.0


def test_older_report_does_not_override_a_newer_state(tmp_path):
    registry = Registry(None)
    registry.accept_report(report("h1", "suspending", 200.0, event="action-start"), None, 200.0)
    record = registry.accept_report(report("h1", "awake", 150.0), None, 201.0)
    assert record.state == "suspending" and record.last_seen == 201.0


def test_quiet_hosts_become_asleep_off_or_unknown(tmp_path):
    registry = Registry(None, stale_factor=3.0)
    registry.accept_report(report("up", "awake", 0.0), None, 0.0)
    registry.accept_report(report("sleeper", "suspending", 0.0, event="action-start"), None, 0.0)
    registry.accept_report(report("gone", "powering-off", 0.0, event="action-start"), None, 0.0)
    registry.tick(60.0)
    assert [registry.get(n).state for n in ("up", "sleeper", "gone")] == ["awake", "asleep", "off"]
    registry.tick(91.0)
    assert registry.get("up").state == "unknown"
    # Sleepers are never "unknown": being quiet is what sleeping is.
    registry.tick(10_000.0)
    assert registry.get("sleeper").state == "asleep"


def test_registry_survives_a_restart(store_url):
    first = Registry(store_url)
    first.define("h3", macs=["52:54:00:00:00:03"], ips=["198.18.0.13"], groups=["fileservers"], bmc="198.19.0.13")
    first.accept_report(report("h1", "awake", 10.0), ("198.18.0.11", 5000), 10.0)
    first.accept_report(report("h2", "suspending", 10.0, event="action-start", ips=["198.18.0.12"]), None, 10.0)
    first.get("h3").hold = "ups rack1"
    first.save(10.0)
    first.close()
    second = Registry(store_url)
    assert second.load() == 3
    assert second.get("h2").state == "suspending"
    assert second.get("h3").hold == "ups rack1" and second.get("h3").bmc == "198.19.0.13"
    assert second.by_ip("198.18.0.11").name == "h1"
    assert second.find("52:54:00:00:00:03").name == "h3"


def test_save_is_lazy_for_heartbeats_and_immediate_for_state_changes(store_url):
    registry = Registry(store_url, save_every=10.0)
    registry.accept_report(report("h1", "awake", 1.0), None, 1.0)
    assert registry.save_if_due(1.0)  # new host: a state change
    registry.wait_saved()  # the snapshot is written by a background thread
    registry.accept_report(report("h1", "awake", 2.0), None, 2.0)
    assert not registry.save_if_due(2.0)
    assert registry.save_if_due(12.0)
    registry.wait_saved()
    registry.accept_report(report("h1", "grace", 12.5, event="warn"), None, 12.5)
    assert not registry.save_if_due(12.5)  # a burst of state changes costs one write per second
    assert registry.save_if_due(13.0)
    registry.wait_saved()
    registry.close()
    assert Registry(store_url).load() == 1


def _fleet(tmp_path, text=""):
    config = server_config(tmp_path, "[ipmi]\nuser = admin\npassword = pw\n" + text)
    clock = FakeClock()
    sent = Sent()
    registry = Registry(None)
    fleet = Fleet(registry, config, clock, sent.send_wol, sent.send_datagram, ipmi=sent.run_ipmi, background=False)
    return fleet, registry, clock, sent


def test_wake_is_confirmed_by_a_report(tmp_path):
    fleet, registry, clock, sent = _fleet(tmp_path, "[host.h1]\nmac = 52:54:00:00:00:01\nbmc = 10.9.9.1\n")
    registry.define("h1", ["52:54:00:00:00:01"], bmc="10.9.9.1", wake=["wol", "ipmi"])
    record = registry.get("h1")
    record.state = "asleep"
    fleet.wake(record, "test")
    assert sent.wol == ["52:54:00:00:00:01"] and record.state == "waking" and record.wakes == 1
    clock.advance(5)
    registry.accept_report(report("h1", "resumed", clock.wall(), event="resume"), None, clock.wall())
    fleet.tick()
    assert "h1" not in fleet.waiting and sent.ipmi == []
    assert fleet.history[-1]["what"] == "confirmed"


def test_unconfirmed_wol_escalates_to_ipmi_once(tmp_path):
    fleet, registry, clock, sent = _fleet(tmp_path, "[host.h1]\nmac = 52:54:00:00:00:01\nbmc = 10.9.9.1\n")
    registry.define("h1", ["52:54:00:00:00:01"], bmc="10.9.9.1", wake=["wol", "ipmi"])
    record = registry.get("h1")
    record.state = "asleep"
    fleet.wake(record, "test")
    clock.advance(44)
    fleet.tick()
    assert sent.ipmi == []
    clock.advance(2)
    fleet.tick()
    assert sent.ipmi == [("10.9.9.1", "on")]
    clock.advance(46)
    fleet.tick()
    assert sent.ipmi == [("10.9.9.1", "on")]
    assert record.state == "asleep" and "h1" not in fleet.waiting


def test_nap_sends_a_signed_command_and_resends_until_acked(tmp_path):
    fleet, registry, clock, sent = _fleet(tmp_path)
    record = registry.accept_report(report("h1", "awake", clock.wall()), ("198.18.0.11", 4321), clock.wall())
    fleet.nap(record, "suspend", "test", wake_at=clock.wall() + 3600)
    data, address = sent.datagrams[-1]
    assert address == ("198.18.0.11", 4321)
    command = engine_decode(data)
    assert command["command"] == "nap" and command["action"] == "suspend" and command["to"] == "h1"
    clock.advance(2.5)
    fleet.tick()
    assert len(sent.datagrams) == 2
    resent = engine_decode(sent.datagrams[-1][0])
    assert resent["nonce"] != command["nonce"] and resent["id"] == command["id"]
    fleet.on_command_ack({"re": resent["nonce"], "from": "h2", "ok": True, "detail": "napping"})
    assert fleet.commands != {}, "another host cannot ack h1's command"
    fleet.on_command_ack({"re": resent["nonce"], "from": "h1", "ok": True, "detail": "napping"})
    clock.advance(10)
    fleet.tick()
    assert len(sent.datagrams) == 2 and fleet.commands == {}


def test_poweroff_without_an_engine_uses_ipmi_soft(tmp_path):
    fleet, registry, clock, sent = _fleet(tmp_path, "[host.h3]\nbmc = 10.9.9.3\n")
    registry.define("h3", bmc="10.9.9.3", wake=["wol", "ipmi"])
    record = registry.get("h3")
    record.state = "awake"
    fleet.nap(record, "poweroff", "test")
    fleet.tick()
    assert sent.ipmi == [("10.9.9.3", "soft")] and record.state == "off"


# -- issue 13: persistence that survives crashes, corruption and a full disk; bounded growth ------
# (issue 18: the same guarantees from the store, SQLite and PostgreSQL alike; the store's own tests are in
# test_server_store.py)
def test_journaled_reports_survive_without_a_snapshot(store_url):
    registry = Registry(store_url)
    registry.save(0.0)
    registry.accept_report(report("h1", "suspending", 10.0, event="action-start"), ("198.18.0.11", 4000), 10.0)
    registry.accept_report(report("h2", "awake", 11.0), None, 11.0)
    assert registry.commit()
    registry.store.close()  # as if killed: no snapshot after the commit
    again = Registry(store_url)
    assert again.load() == 2
    assert again.get("h1").state == "suspending" and again.get("h1").addr == ["198.18.0.11", 4000]
    assert again.replay == {"h1": 10.0, "h2": 11.0} and again.problems == {}
    assert again.store.journal_length == 2
    again.save(20.0)  # the snapshot takes the journal in, in the same transaction
    assert again.store.journal_length == 0
    again.close()
    third = Registry(store_url)
    assert third.load() == 2 and third.problems == {} and third.store.read([])[1] == []


def test_a_source_address_the_claims_check_refused_stays_refused_after_a_replayed_journal(store_url):
    # Merge of issue 13's halves: the sender still gets acks and commands (addr), but an address the
    # host may not claim (the gateway's, another host's) must not join its ips, live or from the journal.
    registry = Registry(store_url)
    registry.save(0.0)
    registry.accept_report(report("h1", "awake", 10.0), ("198.18.0.1", 4000), 10.0, sender_ip_ok=False)
    registry.accept_report(report("h2", "awake", 11.0), ("198.18.0.12", 4000), 11.0)
    assert registry.commit()
    assert "198.18.0.1" not in registry.get("h1").ips and registry.get("h1").addr == ["198.18.0.1", 4000]
    registry.store.close()
    again = Registry(store_url)
    assert again.load() == 2 and again.problems == {}
    assert "198.18.0.1" not in again.get("h1").ips and again.get("h1").addr == ["198.18.0.1", 4000]
    assert "198.18.0.12" in again.get("h2").ips


def test_a_json_registry_with_its_journal_is_imported_once_and_renamed(tmp_path):
    # 0.1's format (and the snapshot + journal of later JSON versions): imported on the first start only.
    path = tmp_path / "registry.json"
    hosts = [{"name": "h1", "state": "asleep", "macs": ["52:54:00:00:00:01"], "groups": ["web"], "wakes": 3}]
    path.write_text(json.dumps({"schema": 1, "saved": 5.0, "seq": 1, "replay": {"h1": 5.0}, "hosts": hosts}))
    journal = json.dumps({"seq": 2, "report": report("h2", "awake", 9.0), "sender": ["198.18.0.12", 4000], "at": 9.0})
    (tmp_path / "registry.json.journal").write_text(journal + '\n{"seq": 3, "report": {"kind": "rep')  # torn
    sqlite = str(tmp_path / "registry.sqlite3")
    registry = Registry(sqlite)
    assert registry.load(import_json=str(path)) == 2
    assert registry.get("h1").state == "asleep" and registry.get("h1").wakes == 3
    assert registry.get("h2").addr == ["198.18.0.12", 4000] and registry.replay == {"h1": 5.0, "h2": 9.0}
    assert "1 unreadable entries skipped" in registry.problems["load"]
    assert sorted(p.name for p in tmp_path.iterdir() if "json" in p.name) == [
        "registry.json.imported",
        "registry.json.journal.imported",
    ]
    registry.close()
    path.write_text(json.dumps({"schema": 1, "hosts": [{"name": "stale"}]}))  # an old copy put back later
    again = Registry(sqlite)
    assert again.load(import_json=str(path)) == 2 and again.get("stale") is None  # imported once only
    assert path.exists()


def test_a_json_registry_that_cannot_be_imported_now_is_imported_on_the_next_start(tmp_path, monkeypatch):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"schema": 1, "hosts": [{"name": "h1"}]}))
    registry = Registry(str(tmp_path / "registry.sqlite3"))

    def full(data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(registry.store, "write_snapshot", full)
    assert registry.load(import_json=str(path)) == 1
    assert "imported again" in registry.problems["import"] and path.exists()
    monkeypatch.undo()
    registry.close()
    again = Registry(str(tmp_path / "registry.sqlite3"))
    assert again.load(import_json=str(path)) == 1 and not path.exists()


def test_a_corrupt_json_registry_is_kept_aside_on_import(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"schema": 1, "hosts": [')
    registry = Registry(str(tmp_path / "r.sqlite3"))
    assert registry.load(import_json=str(path)) == 0
    kept = [p for p in os.listdir(tmp_path) if p.startswith("r.json.corrupt-")]
    assert len(kept) == 1 and "unreadable" in registry.problems["load"] and not path.exists()


def _fill_to_the_limit(registry):
    """SQLite's own SQLITE_FULL: the file may not grow beyond the pages it has now (a disk that is full)."""
    pages = registry.store.conn.execute("PRAGMA page_count").fetchone()[0]
    registry.store.conn.execute("PRAGMA max_page_count = %d" % pages)
    return pages


def test_a_full_disk_is_retried_and_reported_not_fatal(tmp_path):
    registry = Registry(str(tmp_path / "r.sqlite3"))
    registry.save(0.0)
    pages = _fill_to_the_limit(registry)
    for index in range(40):
        registry.accept_report(report("h%d" % index, "awake", 1.0, load=0.5), None, 1.0)
    assert not registry.commit() and "full" in registry.problems["journal"]  # no ack for these
    assert registry.save_if_due(2.0)
    registry.wait_saved()
    assert "full" in registry.problems["save"] and registry.save_failures == 1
    assert not registry.save_if_due(3.0)  # retried after SAVE_RETRY, not on every tick
    registry.store.conn.execute("PRAGMA max_page_count = %d" % (pages * 1000))  # space came back
    registry.accept_report(report("h0", "awake", 4.0), None, 4.0)
    assert registry.commit() and "journal" not in registry.problems
    assert registry.save_if_due(8.0)
    registry.wait_saved()
    assert "save" not in registry.problems
    registry.close()
    assert Registry(str(tmp_path / "r.sqlite3")).load() == 40


def test_host_cap_and_registration(tmp_path):
    from powernap.server.registry import Refused

    registry = Registry(None, max_hosts=2)
    registry.accept_report(report("h1", "awake", 1.0), None, 1.0)
    registry.accept_report(report("h2", "awake", 1.0), None, 1.0)
    with pytest.raises(Refused, match="max_hosts"):
        registry.accept_report(report("h3", "awake", 1.0), None, 1.0)
    registry.accept_report(report("h1", "awake", 2.0), None, 2.0)  # known hosts keep reporting
    closed = Registry(None, register=False)
    closed.define("known")
    closed.accept_report(report("known", "awake", 1.0), None, 1.0)
    with pytest.raises(Refused, match="registration is off"):
        closed.accept_report(report("stranger", "awake", 1.0), None, 1.0)
    assert len(registry) == 2 and len(closed) == 1


def test_bad_saved_fields_fall_back_to_defaults(store_url):
    hosts = [{"name": "h1", "wol": "x", "load": "x", "interval": 1e9, "macs": ["not-a-mac"], "cpus": True}]
    store = open_store(store_url)
    store.write_snapshot({"schema": 1, "seq": 0, "hosts": hosts + [{"name": "../x"}], "replay": {}})
    store.close()
    registry = Registry(store_url)
    assert registry.load() == 1
    record = registry.get("h1")
    assert (record.wol, record.load, record.interval, record.macs, record.cpus) == ({}, None, 30.0, [], None)
    for field in ("wol", "load", "interval", "macs", "cpus"):
        assert "field %r" % field in registry.problems["load"]


def test_a_record_read_like_the_one_held_reuses_only_equal_fields_and_checks_every_other():
    """The fleet mirror reads every row of the fleet: fields equal to the held (checked) record's are taken from it,
    anything else is checked as ever, and the result is the same record as a full check gives."""
    held = HostRecord.from_dict({"name": "h1", "macs": ["02:00:00:00:00:01"], "ips": ["10.0.0.1"], "load": 0.5,
                                 "wake_health": {"result": "succeeded", "marked": False}})  # fmt: skip
    row = dict(held.to_dict(), load=0.25, idle_seconds=12.0, last_seen=100.0)
    assert HostRecord.from_dict(row, like=held).to_dict() == HostRecord.from_dict(row).to_dict()
    taken = HostRecord.from_dict(row, like=held)
    assert taken.macs == held.macs and taken.macs is not held.macs  # a copy: the two records never share a list
    problems = []
    hostile = dict(row, macs=["not-a-mac"], interval=1e9, wake_health={"result": "x" * 5000}, cpus=True)
    checked = HostRecord.from_dict(hostile, problems, like=held)
    assert (checked.macs, checked.interval, checked.cpus) == ([], 30.0, None)
    assert checked.wake_health == {"result": "never", "marked": False}
    assert len(problems) == 4
    other = HostRecord.from_dict(dict(row, name="h2", macs=["bad"]), like=held)  # another host's record: no reuse
    assert other.macs == []


def test_a_fleet_larger_than_max_hosts_is_reported_not_silently_cut_at_the_mirror():
    """Fleet mode: every instance holds every host of the fleet; rows the cap leaves out are said in the status."""

    class Rows:  # the store's mirror read: rows of another segment's writer
        def mirror(self, since, problems, held=None):
            return [("lan-b", {"name": "b%d" % n, "state": "awake"}, None) for n in range(3)], since + 3

    registry = Registry(max_hosts=2)
    registry.store = Rows()
    assert registry.mirror(1.0) == 2 and len(registry) == 2
    assert "1 hosts of other segments left out" in registry.problems["mirror"]
    assert "max_hosts = 2" in registry.problems["mirror"]


def test_a_wake_lost_across_a_restart_is_resumed_by_the_wake_service(tmp_path):
    fleet, registry, clock, sent = _fleet(tmp_path, "[host.h1]\nmac = 52:54:00:00:00:01\nbmc = 10.9.9.1\n")
    registry.define("h1", ["52:54:00:00:00:01"], bmc="10.9.9.1", wake=["wol", "ipmi"])
    record = registry.get("h1")
    record.state, record.since = "waking", clock.wall() - 50  # saved by a server that then restarted
    record.last_wake = {"time": clock.wall() - 50, "method": "wol", "cause": "proxy"}
    fleet.tick()
    assert sent.ipmi == [("10.9.9.1", "on")]  # it escalates as the lost wake would have
    clock.advance(46)
    fleet.tick()
    assert record.state == "asleep" and "h1" not in fleet.waiting


def test_waking_has_a_timeout_of_its_own(tmp_path):
    registry = Registry(None, waking_timeout=100.0)
    record = registry.define("h1", ["52:54:00:00:00:01"])
    registry.set_state(record, "waking", "test", 0.0)
    registry.tick(99.0)
    assert record.state == "waking"
    registry.tick(101.0)
    assert record.state == "asleep"


def _fleet_registry(segment="lan-a"):
    """A registry as fleet mode sets it up (fleetmode.py): it writes the records of the segment it leads."""
    registry = Registry(None)
    led = {"segment": segment}
    registry.owned_segment = lambda: led["segment"]
    registry.owns = lambda record: record.segment is not None and record.segment == led["segment"]
    return registry, led


def test_owned_follows_records_placed_and_the_lead_without_walking_every_host_each_time():
    """Fleet mode at 100,000 hosts: ``owned`` was a walk of every host, four times a tick; it is computed again only
    when a record is placed (added, replaced, given a segment) or the segment led changes."""

    class Walks(dict):
        count = 0

        def values(self):
            Walks.count += 1
            return super().values()

    registry, led = _fleet_registry()
    registry.hosts = Walks()
    a1 = registry.accept_report(report("a1", "awake", 1.0), None, 1.0)
    a1.segment = "lan-a"  # as the daemon sets it after the first report
    registry.placed()
    b1 = registry.define("b1")
    b1.segment = "lan-b"
    registry.placed()
    assert registry.owned() == [a1]
    walks = Walks.count
    for _time in range(5):
        assert registry.owned() == [a1]
        registry.accept_report(report("a1", "awake", 2.0), None, 2.0)  # a known host's report places nothing
    assert Walks.count == walks
    led["segment"] = "lan-b"
    assert registry.owned() == [b1]
    led["segment"] = None
    assert registry.owned() == []
    led["segment"] = "lan-a"
    a2 = registry.define("a2")
    a2.segment = "lan-a"
    registry.placed()
    assert sorted(r.name for r in registry.owned()) == ["a1", "a2"]
    owned = registry.owned()
    owned.clear()  # a copy: the caller's to change
    assert len(registry.owned()) == 2


def test_the_mirror_places_a_record_that_came_to_the_led_segment():
    registry, _led = _fleet_registry()

    class Rows:
        def __init__(self):
            self.rows = [("lan-b", {"name": "h1", "state": "awake"}, None)]

        def mirror(self, since, problems, held=None):
            rows, self.rows = self.rows, []
            return rows, since + 1

    registry.store = Rows()
    registry.mirror(1.0)
    assert registry.owned() == []
    registry.store.rows = [("lan-a", {"name": "h1", "state": "asleep"}, None)]  # moved to our segment
    registry.mirror(2.0)
    assert [r.name for r in registry.owned()] == ["h1"]


def test_in_fleet_mode_a_state_change_writes_its_row_at_the_next_tick_not_a_whole_snapshot(store_url):
    """At 100,000 hosts registering, every new host is a state change: a full snapshot each second cost most of an
    instance.  Fleet mode writes the rows of the records that changed at the next tick (their reports are journaled
    already); the snapshot keeps its own pace (save_every).  One server: as before, a state change is urgent."""

    class Store:
        seq = journal_length = 0

        def __init__(self):
            self.snapshots, self.rows = 0, []

        def append(self, entries):
            self.journal_length += len(entries)

        def append_history(self, entries):
            pass

        def write_snapshot(self, data):
            self.snapshots += 1

        def write_rows(self, records):
            self.rows.append(sorted(encoded(r)[0] for r in records))

    registry, _led = _fleet_registry()
    registry.store = store = Store()
    registry._saved_at = 0.0
    record = registry.accept_report(report("a1", "awake", 1.0), None, 1.0)
    record.segment = "lan-a"
    registry.placed()
    registry.commit()
    assert not registry.save_if_due(2.0)  # not a snapshot ...
    registry.wait_saved()
    assert store.rows == [["a1"]] and store.snapshots == 0  # ... but its row
    registry.accept_report(report("a1", "suspending", 2.5, event="action-start"), None, 2.5)
    assert not registry.save_if_due(3.0)
    registry.wait_saved()
    assert store.rows == [["a1"], ["a1"]] and store.snapshots == 0
    assert registry.save_if_due(12.0)  # save_every
    registry.wait_saved()
    assert store.snapshots == 1
    single = Registry(store_url, save_every=10.0)
    single.accept_report(report("h1", "awake", 1.0), None, 1.0)
    assert single.save_if_due(1.0)  # one server: a new host is written within a second, as before
    single.close()


def test_in_fleet_mode_a_snapshot_between_full_ones_holds_only_the_rows_not_written_yet():
    """A leader's rows are written at each tick; serialising all 10,000 of its records for every snapshot was a
    quarter of an instance's time at 100,000 hosts.  Between full snapshots (FULL_SNAPSHOT_EVERY, or after a
    ``touch``, which does not say what changed) a snapshot holds only the records whose rows are not written yet."""
    from powernap.server import registry as registry_module

    class Store:
        seq = journal_length = 0

        def __init__(self):
            self.snapshots = []

        def append(self, entries):
            pass

        def append_history(self, entries):
            pass

        def write_snapshot(self, data, partial=False):
            self.snapshots.append((partial, sorted(encoded(r)[0] for r in data["hosts"])))

        def write_rows(self, records):
            pass

    registry, _led = _fleet_registry()
    registry.store = store = Store()
    for name in ("a1", "a2", "a3"):
        registry.accept_report(report(name, "awake", 1.0), None, 1.0).segment = "lan-a"
    registry.placed()
    registry.changed_rows = set()
    assert registry.save_if_due(11.0)  # the first one is full
    registry.wait_saved()
    registry.accept_report(report("a2", "asleep", 12.0, event="action-start"), None, 12.0)
    assert registry.save_if_due(22.0)
    registry.wait_saved()
    assert store.snapshots == [(False, ["a1", "a2", "a3"]), (True, ["a2"])]
    registry.get("a3").wakes += 1  # nothing marks this: the next full snapshot finds it
    registry.touch()
    assert registry.save_if_due(33.0)
    registry.wait_saved()
    assert store.snapshots[-1] == (False, ["a1", "a2", "a3"])
    registry.accept_report(report("a1", "awake", 40.0), None, 40.0)
    assert registry.save_if_due(44.0)
    registry.wait_saved()
    assert store.snapshots[-1] == (True, ["a1"])
    registry.accept_report(report("a1", "awake", 50.0), None, 50.0)
    assert registry.save_if_due(33.0 + registry_module.FULL_SNAPSHOT_EVERY)  # and every FULL_SNAPSHOT_EVERY
    registry.wait_saved()
    assert store.snapshots[-1] == (False, ["a1", "a2", "a3"])
