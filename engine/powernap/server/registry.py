"""The fleet registry: every host of the segment, its state and how to wake it, kept on disk.

Hosts come from two places: ``[host.NAME]`` sections of the server config
(static facts: MAC, addresses, BMC, groups) and the engines' signed reports
(state, addresses, MACs, WoL setting, load, next scheduled wake).  Reports
refresh ``last_seen``; an up host whose reports stop for ``stale_factor``
heartbeat intervals becomes ``unknown``; a host that said it is suspending or
powering off and then went quiet becomes ``asleep`` / ``off`` (quiet is what
a sleeping host is, so it is never marked unknown).

Persistence goes through a ``Store`` (``store/``: SQLite by default,
PostgreSQL on request): a snapshot (records, replay floors, keyed state)
plus a journal of the reports accepted since.  A report is journaled (one
durable transaction) before its ack goes out, so an acknowledged report
survives ``kill -9``; the snapshot is written by a background thread
(``save_if_due``), never on the packet path, and drops the journal entries
it includes in the same transaction.  State changes reach the snapshot
within a second, heartbeats every ``save_every``.  A store that cannot be
read is kept aside and the server starts with what can be read; a write
that fails (ENOSPC, a database down) is retried and shown in
``/v1/status``.  The 0.1 JSON registry is imported once (``import_json``).
Every value read back is validated against the same declared types as the
wire messages (``RecordSchema``).
"""

import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Set, Tuple

from ..options import (
    Boolean,
    Choice,
    Declared,
    Duration,
    Fields,
    HostAddress,
    Integer,
    ListOf,
    MapOf,
    Number,
    Option,
    Scalar,
    String,
)
from . import protocol as P
from .energy import KEYS as ENERGY_KEYS
from .store import Encoded, Store, jsonfile, open_store

SCHEMA = 1
QUIET_TO_ASLEEP = 20.0  # seconds after "suspending" without a word before we call the host asleep
URGENT_SAVE = 1.0  # state changes reach the disk within this; a burst of them costs one write
SAVE_RETRY = 5.0  # after a failed save (a full disk), try again this much later
JOURNAL_LIMIT = 20000  # entries; beyond this a snapshot is written at once (it empties the journal)
# Fleet mode: a snapshot between these holds only the records whose rows are not written yet (the rest are, at each
# tick); every this many seconds, and after anything said ``touch``, one compares every record with the store's rows.
FULL_SNAPSHOT_EVERY = 60.0
HISTORY_QUEUE = 1000  # history entries held for the store while it refuses writes (the oldest go first)


class Refused(P.ProtocolError):
    """A valid report the registry will not take (unknown host, host cap reached)."""


class WakeHealthSchema(Declared):
    """A host's wake health (``HostRecord.wake_health``; kept by ``health.WakeHealth``), like DPM's
    "last time exited standby": the last wake attempt, its result, and the failed-wake mark."""

    OPTIONS = (
        Option("result", Choice("never", "succeeded", "failed"), default="never",
               doc="How the last finished wake attempt ended (never: no wake was ever tried)."),
        Option("marked", Boolean(), default=False,
               doc="A wake failed and no wake has succeeded since: the host is kept out of napping."),
        Option("method", Choice("wol", "ipmi", "escalated", "none"),
               doc="How the last attempt woke: wol, ipmi, escalated (WoL, then IPMI) or none (no way to wake)."),
        Option("cause", String(max_length=256), doc="Why the last attempt was made."),
        Option("started", P.TIME, doc="When the last attempt began."),
        Option("ended", P.TIME, doc="When its result was known."),
        Option("seconds", Number(0, 1e7), doc="How long the last finished attempt took (to the confirmation)."),
        Option("error", String(max_length=256), doc="Why the last attempt failed."),
        Option("test", Boolean(), default=False, doc="The last attempt was a test wake."),
        Option("in_flight", Boolean(), default=False, doc="An attempt is being confirmed."),
        Option("failures", Integer(0), default=0, doc="Failed attempts in a row."),
        Option("retries", Integer(0), default=0, doc="Automatic retries since the mark was set."),
        Option("retry_at", P.TIME, doc="When the next automatic retry is due (null: none)."),
        Option("last_success", P.TIME, doc="When a wake last succeeded."),
        Option("cleared", String(max_length=256), doc="Who cleared the mark by hand, and when (the last time)."),
    )  # fmt: skip


class RecordSchema(Declared):
    """A saved host record: the same field types as the wire messages it comes from."""

    REPORT = P.ReportMessage
    OPTIONS = (
        Option("name", REPORT.option("host").type, required=True, doc="Host name."),
        Option("state", Choice(*P.ALL_STATES), default=P.UNKNOWN, doc="Registry state."),
        Option("stage", REPORT.option("stage").type, doc="Nap stage."),
        Option("since", P.TIME, default=0.0, doc="When the state began."),
        Option("last_seen", P.TIME, doc="Last report or proof of life."),
        Option("last_ts", P.TIME, default=0.0, doc="Sender time of the newest report."),
        Option("last_event", REPORT.option("event").type, doc="Event of the newest report."),
        Option("macs", REPORT.option("macs").type, default=(), doc="MACs."),
        Option("ips", REPORT.option("ips").type, default=(), doc="Addresses."),
        Option("wol", P.WOL_MODES, default={}, doc="Wake-on per MAC."),
        Option("wake", ListOf(Choice("wol", "ipmi"), max_items=2), default=("wol",), doc="Wake methods."),
        Option("bmc", HostAddress(), doc="BMC address."),
        Option("groups", ListOf(String(nonempty=True, max_length=253), max_items=256), default=(), doc="Groups."),
        Option("next_wake", P.TIME, doc="Next scheduled wake."),
        Option("idle_seconds", REPORT.option("idle_seconds").type, doc="Idle seconds."),
        Option("load", REPORT.option("load").type, doc="Load."),
        Option("cpus", REPORT.option("cpus").type, doc="CPUs."),
        Option("interval", Duration(minimum=1, maximum=3600), default=30.0, doc="Heartbeat interval."),
        Option("addr", P.PeerAddress(), doc="Where reports come from."),
        Option("engine", Boolean(), default=False, doc="An engine reports for it."),
        Option("hold", String(max_length=256), doc="Policy hold."),
        Option("wakes", Integer(0), default=0, doc="Wakes sent."),
        Option("last_wake", MapOf(String(max_length=64), Scalar(1024), 16), doc="The last wake."),
        Option("static", Boolean(), default=False, doc="From the server config."),
        Option("energy", MapOf(Choice(*ENERGY_KEYS), Number(0, 1e18), 8), default={},
               doc="Energy accounting: seconds per power state, joules and cost saved (energy.py)."),
        Option("power_since", P.TIME, default=0.0, doc="When the host last came up or went down (rotation)."),
        Option("wake_health", Fields(WakeHealthSchema), default={}, doc="Wake health (WakeHealthSchema)."),
    )  # fmt: skip


_RECORD_OPTIONS = {opt.name: opt for opt in RecordSchema.OPTIONS}


class HostRecord:
    """What the server knows about one host."""

    FIELDS = (
        "name", "state", "stage", "since", "last_seen", "last_ts", "last_event", "macs", "ips", "wol",
        "wake", "bmc", "groups", "next_wake", "idle_seconds", "load", "cpus", "interval", "addr",
        "engine", "hold", "wakes", "last_wake", "static", "energy", "power_since", "wake_health",
    )  # fmt: skip

    def __init__(self, name: str):
        self.name = name
        self.state = P.UNKNOWN
        self.stage: Optional[int] = None
        self.since = 0.0
        self.last_seen: Optional[float] = None
        self.last_ts = 0.0
        self.last_event: Optional[str] = None
        self.macs: List[str] = []
        self.ips: List[str] = []
        self.wol: Dict[str, Optional[str]] = {}
        self.wake: List[str] = ["wol"]
        self.bmc: Optional[str] = None
        self.groups: List[str] = []
        self.next_wake: Optional[float] = None
        self.idle_seconds: Optional[float] = None
        self.load: Optional[float] = None
        self.cpus: Optional[int] = None
        self.interval = 30.0
        self.addr: Optional[List[Any]] = None  # [ip, port] the last report came from (commands go there)
        self.engine = False
        self.hold: Optional[str] = None  # a policy keeps this host down (e.g. "ups rack1"): no proxy wakes
        self.wakes = 0
        self.last_wake: Optional[Dict[str, Any]] = None
        self.static = False
        self.energy: Dict[str, float] = {}  # the energy meter's accumulators
        self.power_since = 0.0  # when it last went from down to up or back: the cluster's rotation order
        self.wake_health: Dict[str, Any] = {"result": "never", "marked": False}
        self.segment: Optional[str] = None  # fleet mode: the L2 segment whose leader writes this record

    @property
    def mac(self) -> Optional[str]:
        return self.macs[0] if self.macs else None

    @property
    def asleep(self) -> bool:
        return self.state in P.SLEEPING_STATES

    @property
    def up(self) -> bool:
        return self.state in P.UP_STATES

    def to_dict(self) -> Dict[str, Any]:
        """A copy (lists and maps too): a snapshot is serialised on another thread while this record changes."""
        return {field: _copy(getattr(self, field)) for field in self.FIELDS}

    @classmethod
    def from_dict(
        cls, data: Any, problems: Optional[List[str]] = None, like: Optional["HostRecord"] = None
    ) -> "HostRecord":
        """A record from saved JSON, every field validated; a bad field keeps its default (and is noted).

        ``like``: the record of the same host we hold (the mirror's): a field equal to its value (validated when it
        was taken in) is taken as it is, instead of being checked again (a heartbeat changes few fields,
        and every instance takes in every row of the fleet)."""
        if not isinstance(data, dict):
            raise ValueError("a host record must be an object")
        name = _RECORD_OPTIONS["name"].type.check(data.get("name"))
        record = cls(name)
        if like is not None and like.name != name:
            like = None
        for field, value in data.items():
            opt = _RECORD_OPTIONS.get(field) if isinstance(field, str) else None
            if opt is None or field == "name":
                continue
            if like is not None:
                known = getattr(like, field)
                if type(value) is type(known) and value == known:
                    setattr(record, field, value)  # equal to a checked value, and decoded just now: ours, no copy
                    continue
            try:
                checked = None if value is None and opt.default is None else opt.type.check(value)
            except ValueError as exc:
                if problems is not None:
                    problems.append("host %s: field %r: %s (default used)" % (name, field, exc))
                continue
            setattr(record, field, list(checked) if isinstance(checked, tuple) else checked)
        return record


class Registry:
    def __init__(
        self,
        store: Any = None,
        stale_factor: float = 3.0,
        save_every: float = 10.0,
        log=None,
        max_hosts: int = 100000,
        register: bool = True,
        waking_timeout: float = 300.0,
    ):
        # A Store, a store URL / SQLite path (opened here: StoreError when it cannot be), or None (memory only).
        self.store: Optional[Store] = open_store(store, log) if isinstance(store, str) else store
        self.path = self.store.where if self.store is not None else None
        self.stale_factor = stale_factor
        self.save_every = save_every
        self.log = log
        self.max_hosts = max_hosts
        self.register = register  # accept reports from hosts the config does not name
        self.waking_timeout = waking_timeout  # a wake nobody resolved (e.g. across a restart) ends as asleep
        self.hosts: Dict[str, HostRecord] = {}
        self._by_ip: Dict[str, str] = {}
        self._by_mac: Dict[str, str] = {}
        self._dirty = False
        self._urgent = False
        self._saved_at = 0.0
        self._retry_at = 0.0
        self.listeners: List[Any] = []  # callables(record, old_state, cause) told of every state change
        self.meter: Any = None  # the energy meter: told before a state ends (energy.EnergyMeter.close)
        self.replay: Dict[str, float] = {}  # per sender, the newest accepted ts (the replay guard's persisted part)
        self.pending: List[Dict[str, Any]] = []  # accepted, not yet journaled (``commit`` writes them)
        self.history: List[Dict[str, Any]] = []  # wakes and naps not yet in the store (written with snapshots)
        self.problems: Dict[str, str] = {}  # load / save / journal trouble, shown in /v1/status
        # Other parts' small state saved with the snapshot (name -> a function giving a JSON-able copy, called
        # under the caller's lock), e.g. the policy gate's queue and vetoes; what the last snapshot held is in
        # ``saved_extras`` after ``load`` (unvalidated: each owner checks its own).
        self.extras: Dict[str, Callable[[], Any]] = {}
        self.saved_extras: Dict[str, Any] = {}
        self.saves = 0
        self.save_failures = 0
        self._writer: Optional[threading.Thread] = None
        # (seq, when, error, history it could not write) from the writer thread
        self._written: Optional[Tuple[int, float, Optional[str], List[Dict[str, Any]]]] = None
        # Fleet mode: which records this instance writes (its segment's, while it leads it); the others are
        # mirrored from the store (``mirror``) and never ticked, saved or resolved here.  None: all of them.
        self.owns: Optional[Callable[[HostRecord], bool]] = None
        self.owned_segment: Optional[Callable[[], Optional[str]]] = None  # where ``owns`` is "records of segment X"
        self.mirrored_version = 0  # the newest host-row version the mirror has read
        # Fleet mode: a hold to set on a record another instance writes goes to that writer (``set_hold``):
        # callable(record, hold, policy_hold); None: every record is ours to edit.
        self.remote_hold: Optional[Callable[[HostRecord, Optional[str], str], None]] = None
        self.gone_version = 0  # the newest tombstone version ``drop_gone`` has read
        # Fleet mode: records a report or state change touched since their rows were last written.  Their rows are
        # written at the next tick (``save_if_due``), not with the next snapshot: the other instances' APIs show a
        # report within about a tick, not ``save_every``.  (The snapshot still writes anything else that changed.)
        self.changed_rows: Set[str] = set()
        # ``owned`` at 100,000 hosts: the records of the led segment, computed again only when ``hosts`` gained or
        # replaced one of that segment (``_placed``) or the segment led changed; (segment, generation, records).
        # Fleet mode's mirror: per host, the core (``store.sql.split_liveness``) of the row text our record was made
        # from, and that record: a row with the same core is a heartbeat, taken in without decoding it.
        self._mirror_cores: Dict[str, Tuple[int, HostRecord]] = {}
        self._full_due = True  # fleet mode: the next snapshot compares every record (FULL_SNAPSHOT_EVERY)
        self._full_at = 0.0
        self._owned_generation = 0
        self._owned_cache: Optional[Tuple[str, int, List[HostRecord]]] = None
        self._rows_written: Optional[Tuple[float, Optional[str]]] = None  # (when, error) from a row writer

    # -- lookup -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[HostRecord]:
        return iter(list(self.hosts.values()))

    def __len__(self) -> int:
        return len(self.hosts)

    def owned(self) -> List[HostRecord]:
        """The records this instance writes (all of them, unless fleet mode says otherwise)."""
        if self.owns is None:
            return list(self.hosts.values())
        if self.owned_segment is not None:  # the same test without a call per record (4 times a tick at 100,000)
            segment = self.owned_segment()
            if segment is None:
                return []
            cache = self._owned_cache
            if cache is None or cache[0] != segment or cache[1] != self._owned_generation:
                records = [record for record in self.hosts.values() if record.segment == segment]
                cache = self._owned_cache = (segment, self._owned_generation, records)
            return list(cache[2])  # a copy: callers change the registry while they walk it
        return [record for record in self.hosts.values() if self.owns(record)]

    def get(self, name: str) -> Optional[HostRecord]:
        return self.hosts.get(name)

    def by_ip(self, ip: str) -> Optional[HostRecord]:
        return self._lookup(self._by_ip, ip, lambda record: ip in record.ips)

    def by_mac(self, mac: str) -> Optional[HostRecord]:
        mac = mac.lower()
        return self._lookup(self._by_mac, mac, lambda record: any(own.lower() == mac for own in record.macs))

    def _lookup(self, index: Dict[str, str], key: str, holds: Callable[[HostRecord], bool]) -> Optional[HostRecord]:
        """The host ``index`` names for ``key`` if it still has that address.  The index only grows between
        reindexes: an entry left by a host that gave the address up is repaired (once) from the hosts that hold it,
        so every instance of a fleet answers the same whatever history its index saw."""
        name = index.get(key)
        if name is None:
            return None
        record = self.hosts.get(name)
        if record is not None and holds(record):
            return record
        record = next((other for other in self.hosts.values() if holds(other)), None)
        if record is None:
            del index[key]
        else:
            index[key] = record.name
        return record

    def find(self, target: str) -> Optional[HostRecord]:
        """A host by name, IP address or MAC."""
        return self.get(target) or self.by_ip(target) or self.by_mac(target)

    def in_group(self, group: str) -> List[HostRecord]:
        return [record for record in self.hosts.values() if group in record.groups]

    def _index(self, record: HostRecord) -> None:
        for ip in record.ips:
            self._by_ip[ip] = record.name
        for mac in record.macs:
            self._by_mac[mac.lower()] = record.name

    def placed(self) -> None:
        """A record was added to ``hosts``, replaced there or given another ``segment``: ``owned`` looks again."""
        self._owned_generation += 1

    def _reindex(self) -> None:
        self.placed()  # a whole registry read (load, take_over)
        self._full_due = True
        self._by_ip = {}
        self._by_mac = {}
        for record in self.hosts.values():
            self._index(record)

    # -- changes ----------------------------------------------------------------------------
    def define(
        self,
        name: str,
        macs: Iterable[str] = (),
        ips: Iterable[str] = (),
        groups: Iterable[str] = (),
        bmc: Optional[str] = None,
        wake: Iterable[str] = ("wol",),
    ) -> HostRecord:
        """A host from the server config; reported facts are merged on top later."""
        record = self.hosts.get(name) or HostRecord(name)
        record.static = True
        record.macs = _merge(list(macs), record.macs)
        record.ips = _merge(list(ips), record.ips)
        record.groups = list(groups) or record.groups
        record.bmc = bmc or record.bmc
        record.wake = list(wake)
        self.hosts[name] = record
        self.placed()
        self._index(record)
        self._dirty = True
        return record

    def admit(self, name: str) -> None:
        """Refuse a report for a host we may not take: not registered, or the host cap is reached."""
        if name in self.hosts:
            return
        if not self.register:
            raise Refused("host %s is not in the config and registration is off" % name)
        if len(self.hosts) >= self.max_hosts:
            raise Refused("host %s refused: the registry holds max_hosts = %d hosts" % (name, self.max_hosts))

    def accept_report(
        self,
        message: Dict[str, Any],
        sender: Optional[Tuple[str, int]],
        now: float,
        journal: bool = True,
        sender_ip_ok: bool = True,
    ) -> HostRecord:
        """Apply one verified, schema-checked engine report (``journal``: queue it for ``commit``).

        ``sender`` is where acks and commands go; its IP joins the host's addresses only with
        ``sender_ip_ok`` (the claims check said the host may claim it).
        """
        name = str(message.get("host") or message["from"])
        self.admit(name)
        record = self._apply(name, message, sender, now, sender_ip_ok)
        self._note_replay(message["from"], float(message["ts"]))
        if journal and self.store is not None:
            entry = {"report": message, "sender": list(sender) if sender else None, "at": now}
            if not sender_ip_ok:
                entry["sender_ip_ok"] = False
            self.pending.append(entry)
        return record

    def _apply(
        self,
        name: str,
        message: Dict[str, Any],
        sender: Optional[Tuple[str, int]],
        now: float,
        sender_ip_ok: bool = True,
    ) -> HostRecord:
        record = self.hosts.get(name)
        if record is None:
            record = self.hosts[name] = HostRecord(name)
            self.placed()
        record.last_seen = now
        record.engine = True
        if sender is not None:
            record.addr = [sender[0], sender[1]]
        ts = float(message["ts"])
        if ts < record.last_ts:  # an older report overtaken by a newer one: refresh last_seen only
            return record
        record.last_ts = ts
        record.last_event = message.get("event")
        record.stage = message.get("stage")
        for key in ("next_wake", "idle_seconds", "load", "cpus"):
            if key in message:
                setattr(record, key, message[key])
        if "interval" in message:
            record.interval = float(message["interval"])
        if "macs" in message:
            record.macs = _merge(record.macs if record.static else [], list(message["macs"]))
            record.wol = dict(message.get("wol") or {})
        if "ips" in message:
            record.ips = _merge(record.ips if record.static else [], list(message["ips"]))
        if sender is not None and sender_ip_ok and sender[0] not in record.ips and len(record.ips) < P.MAX_IPS:
            record.ips.append(sender[0])
        self._index(record)
        state = str(message.get("state") or P.AWAKE)
        if state not in P.STATES:
            state = P.AWAKE
        if state == P.RESUMED:
            state = P.AWAKE if message.get("event") == "heartbeat" else P.RESUMED
        self.set_state(record, state, "report %s" % message.get("event"), now)
        self._dirty = True
        if self.owns is not None:
            self.changed_rows.add(name)
        return record

    def note_sender(self, sender: str, ts: float) -> None:
        """Remember the time of an accepted message that is not a report (journaled with the next commit)."""
        self._note_replay(sender, ts)
        if self.store is not None:
            self.pending.append({"sender_ts": [sender, ts]})

    def _note_replay(self, sender: str, ts: float) -> None:
        if ts > self.replay.get(sender, float("-inf")):
            self.replay[sender] = ts

    def prune_replay(self, now: float, window: float) -> None:
        """Senders quiet for longer than the clock-skew window need no replay floor any more."""
        for sender, ts in list(self.replay.items()):
            if now - ts > window:
                del self.replay[sender]

    def commit(self) -> bool:
        """Journal what was accepted since the last commit (before acks go out); False when the disk refuses."""
        if self.store is None or not self.pending:
            self.pending = []
            return True
        entries, self.pending = self.pending, []
        try:
            self.store.append(entries)
        except OSError as exc:  # StoreError is one: a full disk, a database that is down
            self.problems["journal"] = "cannot journal accepted reports (not acknowledged): %s" % exc
            if self.log is not None:
                self.log.error("registry: cannot journal %d accepted reports: %s", len(entries), exc)
            return False
        self.problems.pop("journal", None)
        if self.store.journal_length > JOURNAL_LIMIT:
            self._urgent = True
        return True

    def set_state(self, record: HostRecord, state: str, cause: str, now: float) -> None:
        if record.state == state:
            return
        if self.meter is not None:
            self.meter.close(record, now)
        old = record.state
        record.state = state
        record.since = now
        if (old in P.UP_STATES) != (state in P.UP_STATES):
            record.power_since = now
        self._dirty = True
        if self.owns is None:
            self._urgent = True
        else:
            # Fleet mode: the record's row is written at the next tick (``_write_rows``), so a state change need not
            # hurry the whole snapshot too (a full one every second while hosts register costs most of a core at
            # 100,000 hosts); a report's state is in the journal already.
            self.changed_rows.add(record.name)
        if self.log is not None:
            self.log.info("host %s: %s -> %s (%s)", record.name, old, state, cause)
        for listener in self.listeners:
            listener(record, old, cause)

    def touch(self, urgent: bool = False) -> None:
        """Something saved with the snapshot (``extras``, wake health) changed: write it soon (``urgent``: within a
        second)."""
        self._dirty = True
        self._urgent = self._urgent or urgent
        self._full_due = True  # what changed is not said: the next snapshot compares every record

    def set_hold(self, record: HostRecord, hold: Optional[str], policy_hold: str) -> None:
        """A policy (``policy_hold``, e.g. "ups rack1") puts a host on hold (``hold``) or lifts its own hold (None).

        The record's writer must have it (its sleep proxy and its row): in fleet mode a record of another
        segment goes to its writer (``remote_hold``); ours is written with our next rows.
        """
        if self.remote_hold is not None and self.owns is not None and not self.owns(record):
            self.remote_hold(record, hold, policy_hold)
            return
        if hold is None and record.hold != policy_hold:
            return  # another policy's hold, or none
        if record.hold != hold:
            record.hold = hold
            self._dirty = True
            if self.owns is not None:
                self.changed_rows.add(record.name)

    def seen(self, record: HostRecord, now: float, cause: str) -> None:
        """Proof of life without a report (a confirmed probe, a TCP answer)."""
        record.last_seen = now
        if not record.up:
            self.set_state(record, P.AWAKE, cause, now)

    def tick(self, now: float) -> None:
        """Time-based conclusions: quiet sleepers are asleep/off, quiet up hosts unknown, stuck wakes end."""
        for record in self.owned():
            quiet = now - (record.last_seen or record.since or 0.0)
            if record.state in (P.SUSPENDING, P.HIBERNATING) and quiet > QUIET_TO_ASLEEP:
                self.set_state(record, P.ASLEEP, "quiet after %s" % record.state, now)
            elif record.state == P.POWERING_OFF and quiet > QUIET_TO_ASLEEP:
                self.set_state(record, P.OFF, "quiet after powering off", now)
            elif record.state == P.WAKING and now - record.since > self.waking_timeout:
                # The wake service resolves its own wakes; this catches any it lost (a restart).
                self.set_state(record, P.ASLEEP, "wake not confirmed within %ds" % self.waking_timeout, now)
            elif record.up and record.engine and quiet > self.stale_factor * record.interval:
                self.set_state(record, P.UNKNOWN, "no report for %ds" % quiet, now)

    # -- persistence ------------------------------------------------------------------------
    def snapshot(self, now: float, only: Optional[Set[str]] = None) -> Dict[str, Any]:
        """What the store keeps; ``only``: the records of these names (a partial snapshot), else every one we own."""
        if only is None:
            records = self.owned()
        else:
            owns = self.owns
            records = [r for r in (self.hosts.get(n) for n in only) if r is not None and (owns is None or owns(r))]
        return {
            "schema": SCHEMA,
            "saved": now,
            "seq": self.store.seq if self.store is not None else 0,
            "replay": dict(self.replay),
            "hosts": [self._stored(r) for r in records],
            "extras": {name: export() for name, export in self.extras.items()},
        }

    def _stored(self, record: HostRecord) -> Any:
        """A record as the snapshot or a row write hands it to the store: a copy (``to_dict``: it is serialised on the
        writer thread), or in fleet mode its text at once (``Encoded``: no copy; 100,000 hosts' worth of copies cost a
        quarter of an instance's time)."""
        if self.owns is None:
            return record.to_dict()
        return Encoded.of({field: getattr(record, field) for field in HostRecord.FIELDS})

    def save(self, now: float) -> bool:
        """Write a snapshot now, on this thread (start-up, shutdown, tests); False (and noted) on failure."""
        if self.store is None:
            return True
        if self._writer is not None and self._writer.is_alive():
            self._writer.join()  # an older snapshot must never land after this one
        self._collect(now)
        self.commit()
        self.changed_rows = set()  # the snapshot holds them
        data = self.snapshot(now)
        history, self.history = self.history, []
        try:
            self.store.append_history(history)
            history = []
            self.store.write_snapshot(data)
        except OSError as exc:
            self.history = (history + self.history)[-HISTORY_QUEUE:]
            self._save_failed(now, str(exc))
            return False
        self._save_done(data["seq"], now)
        return True

    def save_if_due(self, now: float, background: bool = True) -> bool:
        """State changes are written within URGENT_SAVE seconds, heartbeats within save_every.

        The snapshot is taken here (under the caller's lock); serialising and
        writing it happen on a background thread, off the packet path.
        """
        self._collect(now)
        if self.store is None or (self._writer is not None and self._writer.is_alive()) or now < self._retry_at:
            return False
        since = now - self._saved_at
        if not ((self._urgent and since >= URGENT_SAVE) or (self._dirty and since >= self.save_every)):
            if self.changed_rows and background:
                self._write_rows(now)
            return False
        if not background:
            return self.save(now)
        self.commit()
        # Fleet mode: the rows of the records that changed are written at each tick, so a snapshot need only hold those
        # not written yet; a full one (every record serialised and compared: a leader's whole segment) now and then
        # catches changes nothing marked (a wake count, an energy total), and after a ``touch``.
        partial = self.owns is not None and not self._full_due and now - self._full_at < FULL_SNAPSHOT_EVERY
        if not partial:
            self._full_due, self._full_at = False, now
        data = self.snapshot(now, only=self.changed_rows if partial else None)
        self.changed_rows = set()  # the snapshot holds them
        history, self.history = self.history, []
        self._dirty = self._urgent = False  # changes from now on mark it again

        def write() -> None:
            unsaved = history
            try:
                self.store.append_history(history)
                unsaved = []
                if partial:
                    self.store.write_snapshot(data, partial=True)
                else:
                    self.store.write_snapshot(data)
                self._written = (data["seq"], now, None, [])
            except Exception as exc:  # OSError (a full disk) above all; whatever it is, the loop hears of it
                self._written = (data["seq"], now, str(exc) or type(exc).__name__, unsaved)

        self._writer = threading.Thread(target=write, name="registry-save", daemon=True)
        self._writer.start()
        return True

    def _write_rows(self, now: float) -> None:
        """Fleet mode: the rows of the records reports and state changes touched, on the writer thread (one
        transaction; writers run one at a time and take their data in order, so no row is overwritten by an older
        one).  A failure leaves them to the next snapshot, which writes every row that differs from the store's."""
        owns = self.owns
        records = []
        for name in self.changed_rows:
            record = self.hosts.get(name)
            if record is not None and owns is not None and owns(record):
                records.append(self._stored(record))
        self.changed_rows = set()
        if not records:
            return

        def write() -> None:
            try:
                self.store.write_rows(records)
                self._rows_written = (now, None)
            except Exception as exc:  # OSError (a database that is down) above all; the loop hears of it
                self._rows_written = (now, str(exc) or type(exc).__name__)

        self._writer = threading.Thread(target=write, name="registry-rows", daemon=True)
        self._writer.start()

    def wait_saved(self, timeout: float = 10.0) -> None:
        """Let a background write finish (shutdown, tests)."""
        if self._writer is not None:
            self._writer.join(timeout)
        self._collect(time.time())

    def _collect(self, now: float) -> None:
        rows, self._rows_written = self._rows_written, None
        if rows is not None and rows[1] is not None:
            self._dirty = self._urgent = self._full_due = True  # the next snapshot writes the rows that differ
            self._save_failed(rows[0], rows[1])
        written, self._written = self._written, None
        if written is None:
            return
        seq, when, error, unsaved = written
        if error is None:
            self._save_done(seq, when, background=True)
        else:
            self._dirty = self._urgent = self._full_due = True  # what it held is still unsaved: retry soon
            self.history = (unsaved + self.history)[-HISTORY_QUEUE:]
            self._save_failed(when, error)

    def _save_done(self, seq: int, now: float, background: bool = False) -> None:
        if not background:  # a background snapshot was taken earlier: changes since then stay due
            self._dirty = self._urgent = False
        self._saved_at = now
        self._retry_at = 0.0
        self.saves += 1
        self.problems.pop("save", None)

    def _save_failed(self, now: float, error: str) -> None:
        self.save_failures += 1
        self._retry_at = now + SAVE_RETRY
        self.problems["save"] = "saving the registry failed (retrying every %ds): %s" % (SAVE_RETRY, error)
        if self.log is not None:
            self.log.error("registry: %s", self.problems["save"])

    def remember(self, entry: Dict[str, Any]) -> None:
        """A wake or nap for the stored history (written with the next snapshot)."""
        if self.store is not None:
            self.history.append(dict(entry))
            del self.history[:-HISTORY_QUEUE]
            self._dirty = True
            if self.owns is not None:  # fleet mode: the other instances show the fleet's history from the store
                self._urgent = True

    def recent_history(self, limit: int) -> List[Dict[str, Any]]:
        """The newest stored history entries (start-up: the API's history survives a restart)."""
        if self.store is None:
            return []
        try:
            return self.store.read_history(limit)
        except OSError as exc:
            self.problems["history"] = "cannot read the history: %s" % exc
            return []

    def close(self) -> None:
        """Let a background write finish and release the store (shutdown)."""
        self.wait_saved()
        if self.store is not None:
            self.store.close()

    def load(self, import_json: Optional[str] = None) -> int:
        """Read the snapshot and replay the journal; what cannot be read is noted, never fatal. Returns the count.

        ``import_json``: a JSON registry (0.1's ``state_file``) taken in when the store holds nothing yet;
        once the store has it, the file is renamed ``*.imported`` (so it is imported once).
        """
        if self.store is None:
            return 0
        problems: List[str] = []
        snapshot, entries = self.store.read(problems)
        imported = None
        if snapshot is None and not entries and import_json and jsonfile.exists(import_json):
            snapshot, entries = jsonfile.read(import_json, problems)
            imported = import_json
        elif import_json and jsonfile.exists(import_json) and self.log is not None:
            self.log.warning("registry: %s not imported: the store %s holds a registry already", import_json,
                             self.path)  # fmt: skip
        if snapshot is not None:
            replay = snapshot.get("replay")
            if isinstance(replay, dict):
                for sender, ts in replay.items():
                    if isinstance(sender, str) and isinstance(ts, (int, float)) and not isinstance(ts, bool):
                        self.replay[sender] = float(ts)
            extras = snapshot.get("extras")
            self.saved_extras = dict(extras) if isinstance(extras, dict) else {}
            items = snapshot.get("hosts")
            for item in items if isinstance(items, list) else ():
                try:
                    record = HostRecord.from_dict(item, problems)
                except ValueError as exc:
                    problems.append("a saved host record was dropped: %s" % str(exc)[:200])
                    continue
                self.hosts[record.name] = record
        self._reindex()
        for entry in entries:
            self._replay_entry(entry, problems)
        self.pending = []
        for problem in problems[:20]:  # a registry full of bad records must not flood the log
            if self.log is not None:
                self.log.error("registry: %s", problem)
        if len(problems) > 20 and self.log is not None:
            self.log.error("registry: %d more problems not shown", len(problems) - 20)
        if problems:
            self.problems["load"] = "; ".join(problems)[:2000]
        if imported is not None:
            self._imported(imported)
        return len(self.hosts)

    def mirror(self, now: float) -> int:
        """Fleet mode: take in the host rows other writers changed since the last call; returns how many.

        A mirrored record replaces ours wholesale (its writer is the authority); a state change is told to the
        listeners (the policy gate's cooldowns, the metrics) but not to the energy meter: the writer counts it.
        """
        mirror = getattr(self.store, "mirror", None)
        if mirror is None:
            return 0
        problems: List[str] = []
        rows, self.mirrored_version = mirror(self.mirrored_version, problems, self._mirrored_core)
        taken = capped = 0
        for segment, data, core in rows:
            if isinstance(data, tuple):  # only its liveness changed (a heartbeat): the record we hold is the rest
                if self._refresh_liveness(data, core, problems):
                    taken += 1
                continue
            old = self.hosts.get(data.get("name")) if isinstance(data.get("name"), str) else None
            try:
                record = HostRecord.from_dict(data, like=old)
            except ValueError:
                continue
            record.segment = segment or None
            if old is not None and self.owns is not None and self.owns(old):
                continue  # ours (a row written before we took the lead): we are its writer now
            if old is None and len(self.hosts) >= self.max_hosts:
                capped += 1
                continue
            self.hosts[record.name] = record
            if old is None or old.segment != record.segment:
                self.placed()  # a record that stays on another segment leaves ``owned`` as it was
            if core is None:
                self._mirror_cores.pop(record.name, None)
            else:
                self._mirror_cores[record.name] = (core, record)
            self._index(record)
            taken += 1
            if old is not None and old.state != record.state:
                for listener in self.listeners:
                    listener(record, old.state, "mirrored from segment %s" % segment)
        for problem in problems[:5]:
            if self.log is not None:
                self.log.warning("registry mirror: %s", problem)
        if capped:  # a fleet larger than max_hosts: never silently short of hosts at this instance's API
            if "mirror" not in self.problems and self.log is not None:
                self.log.error("registry mirror: hosts of other segments left out: max_hosts = %d counts every host "
                               "of the fleet", self.max_hosts)  # fmt: skip
            self.problems["mirror"] = (
                "%d hosts of other segments left out (not shown here): max_hosts = %d counts every host of the fleet"
                % (capped, self.max_hosts)
            )
        elif "mirror" in self.problems and len(self.hosts) < self.max_hosts:
            del self.problems["mirror"]
        return taken

    def drop_gone(self) -> List[str]:
        """Fleet mode: forget the mirrored hosts whose writers deleted their rows since the last call (a host
        pruned, or one that left its segment and has no row elsewhere); returns their names."""
        gone_since = getattr(self.store, "gone_since", None)
        if gone_since is None:
            return []
        rows, self.gone_version = gone_since(self.gone_version)
        dropped = []
        for name, segment in rows:
            record = self.hosts.get(name)
            if record is None or record.segment != segment or (self.owns is not None and self.owns(record)):
                continue  # not the row that went (it moved and we hold its new one), or ours to write
            del self.hosts[name]
            dropped.append(name)
        if dropped:
            self._reindex()
            if self.log is not None:
                self.log.info("registry mirror: %d hosts deleted by their writers: %s", len(dropped),
                              ", ".join(dropped[:10]))  # fmt: skip
        return dropped

    def _mirrored_core(self, name: str) -> Optional[int]:
        """The core (``split_liveness``) of the row text our record of ``name`` was made from, if the mirror made the
        record we hold (not replaced since: a take-over, a report of ours)."""
        entry = self._mirror_cores.get(name)
        return entry[0] if entry is not None and self.hosts.get(name) is entry[1] else None

    def _refresh_liveness(self, row: Tuple[Any, Any, Any], core: Optional[int], problems: List[str]) -> bool:
        """A mirrored row that differs from our record's only in ``last_seen`` / ``last_ts``: set those two."""
        name, last_seen, last_ts = row
        if core is None or self._mirrored_core(name) != core:
            return False
        try:
            last_seen = None if last_seen is None else _RECORD_OPTIONS["last_seen"].type.check(last_seen)
            last_ts = _RECORD_OPTIONS["last_ts"].type.check(last_ts)
        except ValueError as exc:
            problems.append("mirrored host %r: liveness unreadable (%s): skipped" % (name, str(exc)[:100]))
            return False
        record = self.hosts[name]
        record.last_seen, record.last_ts = last_seen, last_ts
        return True

    def take_over(self) -> int:
        """Fleet mode: the store now writes as our segment's leader: read its rows and journal (the previous
        leader's acknowledged reports) over what the mirror held; returns how many records it read."""
        problems: List[str] = []
        snapshot, entries = self.store.read(problems)
        items = (snapshot or {}).get("hosts")
        count = 0
        for item in items if isinstance(items, list) else ():
            try:
                record = HostRecord.from_dict(item, problems)
            except ValueError:
                continue
            record.segment = getattr(self.store, "rows_segment", None)
            self.hosts[record.name] = record
            count += 1
        self._reindex()
        segment = getattr(self.store, "rows_segment", None)
        for entry in entries:
            record = self._replay_entry(entry, problems)
            if record is not None and record.segment is None:
                # Journaled in our segment's scope, so accepted by its leader for it: its first report after a
                # kill -9 has no row yet, and without a segment it would be in neither our rows nor our snapshot.
                record.segment = segment
                self.changed_rows.add(record.name)
        for problem in problems[:20]:
            if self.log is not None:
                self.log.error("registry: %s", problem)
        self._dirty = self._urgent = True  # the journal just replayed is written into our snapshot soon
        return count

    def _imported(self, path: str) -> None:
        """The JSON registry is in memory: write it to the store, and only then rename it aside."""
        if not self.save(time.time()):
            self.problems["import"] = "%s not yet in the store (imported again on the next start)" % path
            return
        try:
            moved = jsonfile.set_aside(path)
        except OSError as exc:
            self.problems["import"] = "%s imported but cannot be renamed: %s" % (path, exc.strerror or exc)
            return
        if self.log is not None:
            self.log.warning("registry: imported %d hosts from %s into %s (kept as %s)", len(self.hosts), path,
                             self.path, ", ".join(moved))  # fmt: skip

    def _replay_entry(self, entry: Dict[str, Any], problems: List[str]) -> Optional[HostRecord]:
        """Apply one journal entry again; returns the record a report entry updated (None otherwise)."""
        if "sender_ts" in entry:
            try:
                sender, ts = entry["sender_ts"]
                if isinstance(sender, str) and isinstance(ts, (int, float)) and not isinstance(ts, bool):
                    self.replay[sender] = max(float(ts), self.replay.get(sender, float("-inf")))
            except (TypeError, ValueError):
                problems.append("a journal entry was dropped (bad sender_ts)")
            return None
        try:
            message = P.check_message(entry.get("report"))
            sender = entry.get("sender")
            address = tuple(P.PeerAddress().check(sender)) if sender is not None else None
            at = P.TIME.check(entry.get("at"))
            sender_ip_ok = Boolean().check(entry.get("sender_ip_ok", True))
            name = str(message.get("host") or message["from"])
            if name not in self.hosts:
                self.admit(name)
            record = self._apply(name, message, address, at, sender_ip_ok)
            self._note_replay(message["from"], float(message["ts"]))
            return record
        except (ValueError, KeyError, TypeError) as exc:
            problems.append("a journal entry was dropped: %s" % str(exc)[:200])
            return None


def by_power_since(records: Iterable[HostRecord]) -> List[HostRecord]:
    """Longest in its power state first (awake longest, or asleep longest), then by name: the rotation order."""
    return sorted(records, key=lambda record: (float(record.power_since or 0.0), record.name))


def _copy(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


def _merge(first: List[Any], second: List[Any]) -> List[Any]:
    out = list(first)
    for item in second:
        if item not in out:
            out.append(item)
    return out
