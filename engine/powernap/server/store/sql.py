"""What SQLite and PostgreSQL share: the tables, the snapshot diff, the journal and the history.

Both speak DB-API with the same SQL (``INSERT … ON CONFLICT … DO UPDATE`` is in SQLite since 3.24
and PostgreSQL since 9.5); a backend supplies its connection, its DDL and how its errors read.
Records and keyed state are stored as JSON text, not ``jsonb``: the round trip is exact and a
``\\u0000`` in some field can never make every later save fail.

A snapshot writes only what changed since the last one this process wrote or read (a hash per
host), so a 10,000-host registry with a few state changes costs a few row writes, not 10,000.
"""

import json
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import HISTORY_KEEP, RESERVED, Store, StoreError, dumps, encoded

TABLES = (
    "powerwaked_meta",
    "powerwaked_hosts",
    "powerwaked_replay",
    "powerwaked_state",
    "powerwaked_journal",
    "powerwaked_history",
)
SNAPSHOT_META = ("schema", "saved", "seq")  # kept in powerwaked_meta under "snapshot"


class SqlStore(Store):
    PLACEHOLDER = "?"  # the backend's DB-API paramstyle for one value

    def __init__(self, log: Any = None):
        self.log = log
        self.lock = threading.Lock()  # one connection, shared by the loop and the snapshot writer
        self.seq = 0
        self.journal_length = 0
        self._hosts: Dict[str, int] = {}  # what the store holds: name -> hash of the JSON text
        self._replay: Dict[str, float] = {}
        self._state: Dict[str, int] = {}
        # Fleet mode (PostgreSQL only): the writer scope of this process's journal, replay floors, snapshot header
        # and keyed state, and the segment whose host rows it owns (None: every row, as one server has them).
        self.scope = ""
        self.rows_segment: Optional[str] = None
        self.instance = ""  # fleet mode: history entries name the instance that wrote them

    # -- what a backend supplies ------------------------------------------------------------------
    def _connection(self) -> Any:
        """The open connection (a backend may reconnect here); StoreError when there is none."""
        raise NotImplementedError

    def _error(self, exc: Exception) -> StoreError:
        """A backend error as a StoreError whose text is safe to log."""
        raise NotImplementedError

    def _broken(self, exc: Exception) -> None:
        """After an error: drop a connection that is no longer usable (PostgreSQL reconnects later)."""

    ERRORS: Tuple[type, ...] = ()
    #: the tables carry a writer scope and host rows a segment and version (PostgreSQL's schema 2; SQLite: no)
    SCOPED = False

    # -- plumbing -----------------------------------------------------------------------------------
    def _sql(self, text: str) -> str:
        return text if self.PLACEHOLDER == "?" else text.replace("?", self.PLACEHOLDER)

    @property
    def _meta_key(self) -> str:
        """The snapshot header's key in powerwaked_meta: one per writer scope ("snapshot" for one server)."""
        return "snapshot@" + self.scope if self.scope else "snapshot"

    def _scoped(self, text: str) -> Tuple[str, Tuple[Any, ...]]:
        """A query on a scoped table limited to our scope (``{scope}`` marks where: " WHERE scope = ?" or nothing)."""
        if not self.SCOPED:
            return self._sql(text.format(scope="", and_scope="")), ()
        return self._sql(text.format(scope=" WHERE scope = ?", and_scope=" AND scope = ?")), (self.scope,)

    def _transaction(self, work: Callable[[Any], Any]) -> Any:
        """Run ``work(cursor)`` in one transaction: all of it is committed, or none of it."""
        with self.lock:
            conn = None
            try:
                conn = self._connection()
                cursor = conn.cursor()
                try:
                    result = work(cursor)
                finally:
                    cursor.close()
                conn.commit()
                return result
            except self.ERRORS as exc:
                try:
                    if conn is not None:
                        conn.rollback()
                except self.ERRORS:
                    pass
                self._broken(exc)
                raise self._error(exc) from None

    # -- the interface --------------------------------------------------------------------------------
    def read(self, problems: List[str]) -> Tuple[Optional[Dict[str, Any]], List[Dict[str, Any]]]:
        def work(cursor: Any) -> Tuple[Optional[Dict[str, Any]], List[Dict[str, Any]]]:
            return self._read_tables(cursor, problems)

        return self._transaction(work)

    def _read_tables(self, cursor: Any, problems: List[str]) -> Tuple[Optional[Dict[str, Any]], List[Dict[str, Any]]]:
        cursor.execute(self._sql("SELECT value FROM powerwaked_meta WHERE key = ?"), (self._meta_key,))
        row = cursor.fetchone()
        meta = _loads(row[0], "the snapshot's header", problems) if row else None
        snapshot: Optional[Dict[str, Any]] = dict(meta) if isinstance(meta, dict) else None
        done = snapshot.get("seq", 0) if snapshot is not None else 0
        done = done if isinstance(done, int) and not isinstance(done, bool) else 0
        hosts: List[Any] = []
        if self.rows_segment is None:
            cursor.execute("SELECT name, record FROM powerwaked_hosts ORDER BY name")
        else:  # fleet mode: the rows this writer owns (the rest is mirrored, see ``mirror``)
            cursor.execute(self._sql("SELECT name, record FROM powerwaked_hosts WHERE segment = ? ORDER BY name"),
                           (self.rows_segment,))  # fmt: skip
        for name, text in cursor.fetchall():
            self._hosts[name] = hash(text)  # a bad row is known too, so the next snapshot replaces or drops it
            record = _loads(text, "host %r" % name, problems)
            if record is not None:
                hosts.append(record)
        replay: Dict[str, float] = {}
        cursor.execute(*self._scoped("SELECT sender, ts FROM powerwaked_replay{scope}"))
        for sender, ts in cursor.fetchall():
            replay[sender] = self._replay[sender] = float(ts)
        state: Dict[str, Any] = {}
        cursor.execute(*self._scoped("SELECT key, value FROM powerwaked_state{scope}"))
        for key, text in cursor.fetchall():
            self._state[key] = hash(text)
            value = _loads(text, "state %r" % key, problems)
            if value is not None:
                state[key] = value
        if snapshot is not None or hosts or state:
            snapshot = dict(snapshot or {}, hosts=hosts, replay=replay, **state)
        entries: List[Dict[str, Any]] = []
        cursor.execute(*self._scoped("SELECT seq, entry FROM powerwaked_journal{scope} ORDER BY seq"))
        rows = cursor.fetchall()
        self.seq = max([done] + [int(seq) for seq, _entry in rows])
        for seq, text in rows:
            entry = _loads(text, "journal entry %d" % seq, problems)
            if isinstance(entry, dict) and seq > done:
                entry["seq"] = int(seq)
                entries.append(entry)
        self.journal_length = len(rows)
        return snapshot, entries

    def append(self, entries: List[Dict[str, Any]]) -> None:
        if not entries:
            return
        rows = []
        seq = self.seq
        for entry in entries:
            seq += 1
            entry["seq"] = seq
            rows.append((seq, dumps(entry)) + ((self.scope,) if self.SCOPED else ()))
        columns = "seq, entry, scope) VALUES (?, ?, ?)" if self.SCOPED else "seq, entry) VALUES (?, ?)"

        def work(cursor: Any) -> None:
            cursor.executemany(self._sql("INSERT INTO powerwaked_journal (" + columns), rows)

        self._transaction(work)
        self.seq = seq  # only once durable: a refused batch leaves no gap the next one must explain
        self.journal_length += len(rows)

    def write_snapshot(self, data: Dict[str, Any], partial: bool = False) -> None:
        hosts = {}
        for record in data.get("hosts") or ():
            name, text = encoded(record)
            hosts[name] = (text, hash(text))
        changed_hosts = [(name, text) for name, (text, digest) in hosts.items() if self._hosts.get(name) != digest]
        gone_hosts = [] if partial else [(name,) for name in self._hosts if name not in hosts]
        replay = {str(k): float(v) for k, v in (data.get("replay") or {}).items()}
        changed_replay = [(k, v) for k, v in replay.items() if self._replay.get(k) != v]
        gone_replay = [(k,) for k in self._replay if k not in replay]
        state = {}
        for key, value in data.items():
            if key not in RESERVED and key not in SNAPSHOT_META:
                text = dumps(value)
                state[key] = (text, hash(text))
        changed_state = [(key, text) for key, (text, digest) in state.items() if self._state.get(key) != digest]
        gone_state = [(key,) for key in self._state if key not in state]
        header = dumps({key: data.get(key) for key in SNAPSHOT_META})
        upto = int(data.get("seq") or 0)

        def work(cursor: Any) -> int:
            upsert = "INSERT INTO %s (%s, %s) VALUES (?, ?) ON CONFLICT (%s) DO UPDATE SET %s = excluded.%s"
            if self.SCOPED:
                scoped = (
                    "INSERT INTO %s (%s, %s, scope) VALUES (?, ?, ?) "
                    "ON CONFLICT (scope, %s) DO UPDATE SET %s = excluded.%s"
                )
                for table, key, value, changed, gone in (
                    ("powerwaked_replay", "sender", "ts", changed_replay, gone_replay),
                    ("powerwaked_state", "key", "value", changed_state, gone_state),
                ):
                    if changed:
                        rows = [row + (self.scope,) for row in changed]
                        cursor.executemany(self._sql(scoped % (table, key, value, key, value, value)), rows)
                    if gone:
                        rows = [row + (self.scope,) for row in gone]
                        cursor.executemany(self._sql("DELETE FROM %s WHERE %s = ? AND scope = ?" % (table, key)), rows)
            else:
                for table, key, value, changed, gone in (
                    ("powerwaked_hosts", "name", "record", changed_hosts, gone_hosts),
                    ("powerwaked_replay", "sender", "ts", changed_replay, gone_replay),
                    ("powerwaked_state", "key", "value", changed_state, gone_state),
                ):
                    if changed:
                        cursor.executemany(self._sql(upsert % (table, key, value, key, value, value)), changed)
                    if gone:
                        cursor.executemany(self._sql("DELETE FROM %s WHERE %s = ?" % (table, key)), gone)
            cursor.execute(self._sql(upsert % ("powerwaked_meta", "key", "value", "key", "value", "value")),
                           (self._meta_key, header))  # fmt: skip
            sql, scope = self._scoped("DELETE FROM powerwaked_journal WHERE seq <= ?{and_scope}")
            cursor.execute(sql, (upto,) + scope)
            cursor.execute(*self._scoped("SELECT count(*) FROM powerwaked_journal{scope}"))
            remaining = int(cursor.fetchone()[0])
            if self.SCOPED:
                # Last: the host rows take the version lock every segment's writer queues for, held until the commit;
                # the replay floors (every sender's, at 100,000 hosts thousands a snapshot) are written before it.
                self._write_host_rows(cursor, changed_hosts, gone_hosts)
            return remaining

        remaining = self._transaction(work)
        # Committed: only now does this process believe the store holds it.
        if partial:
            self._hosts.update((name, digest) for name, (_text, digest) in hosts.items())
        else:
            self._hosts = {name: digest for name, (_text, digest) in hosts.items()}
        self._replay = replay
        self._state = {key: digest for key, (_text, digest) in state.items()}
        self.journal_length = remaining
        self._after_snapshot()

    def write_rows(self, records: List[Dict[str, Any]]) -> int:
        """Fleet mode: these host records' rows now, in one transaction, without a snapshot (those that differ from
        what the store holds); returns how many were written.  Called by one writer at a time, as snapshots are."""
        rows = []
        for record in records:
            name, text = encoded(record)
            digest = hash(text)
            if self._hosts.get(name) != digest:
                rows.append((name, text, digest))
        if not rows:
            return 0

        def work(cursor: Any) -> None:
            self._rows_only(cursor)
            self._write_host_rows(cursor, [(name, text) for name, text, _digest in rows], [])

        self._transaction(work)
        for name, _text, digest in rows:  # committed: only now does this process believe the store holds them
            self._hosts[name] = digest
        return len(rows)

    def _rows_only(self, cursor: Any) -> None:
        """A transaction of host rows only (``write_rows``) is about to run: a backend may commit it more cheaply."""

    def _after_snapshot(self) -> None:
        """Housekeeping after a committed snapshot (SQLite gives free pages back)."""

    def _write_host_rows(self, cursor: Any, changed: List[Tuple[str, str]], gone: List[Tuple[str]]) -> None:
        """Fleet mode's host rows (with their segment and a new version each): PostgreSQL's."""
        raise NotImplementedError

    def append_history(self, entries: List[Dict[str, Any]]) -> None:
        if not entries:
            return
        if self.instance:  # one history for the fleet: each entry says which instance wrote it
            entries = [dict(entry, instance=self.instance) for entry in entries]
        rows = [(float(entry.get("time") or 0.0), dumps(entry)) for entry in entries]

        def work(cursor: Any) -> None:
            cursor.executemany(self._sql("INSERT INTO powerwaked_history (at, entry) VALUES (?, ?)"), rows)
            cursor.execute("SELECT max(id) FROM powerwaked_history")
            newest = cursor.fetchone()[0] or 0
            cursor.execute(self._sql("DELETE FROM powerwaked_history WHERE id <= ?"), (newest - HISTORY_KEEP,))

        self._transaction(work)

    def read_history(self, limit: int) -> List[Dict[str, Any]]:
        def work(cursor: Any) -> List[Any]:
            cursor.execute(self._sql("SELECT entry FROM powerwaked_history ORDER BY id DESC LIMIT ?"), (int(limit),))
            return [row[0] for row in cursor.fetchall()]

        entries = []
        for text in reversed(self._transaction(work)):
            entry = _loads(text, "history entry", [])
            if isinstance(entry, dict):
                entries.append(entry)
        return entries


def split_liveness(text: Any) -> Tuple[Optional[int], Optional[Tuple[Any, Any]]]:
    """A stored host record's text (``dumps``: sorted keys, compact) split at its liveness fields.

    Returns ``(core, (last_seen, last_ts))``: ``core`` a hash of the text without ``"last_seen":…,"last_ts":…`` (two
    texts with equal cores differ at most there: a heartbeat), and the two values as they are stored (unchecked:
    the caller validates them).  ``(None, None)`` for a text where they are not found as two plain values.
    """
    if not isinstance(text, str):
        return None, None
    start = text.find(_LIVENESS_AT)
    middle = text.find(_LIVENESS_TS, start) if start >= 0 else -1
    end = text.find(",", middle + len(_LIVENESS_TS)) if middle >= 0 else -1
    if end < 0 or "{" in text[start:end] or "[" in text[start:end] or '"' in text[start + len(_LIVENESS_AT) : middle]:
        return None, None
    try:
        values = json.loads("{" + text[start + 1 : end] + "}")
    except ValueError:
        return None, None
    if not isinstance(values, dict) or len(values) != 2:
        return None, None
    return hash((text[:start], text[end:])), (values.get("last_seen"), values.get("last_ts"))


# Where a stored host record keeps its liveness: sorted keys put "last_ts" right after "last_seen", both plain values
# (a number, or null), and never first (their text is found by its leading comma: a key, not a string's content,
# since a quote inside a string is always escaped).
_LIVENESS_AT = ',"last_seen":'
_LIVENESS_TS = ',"last_ts":'


def _loads(text: Any, what: str, problems: List[str]) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:
        problems.append("%s unreadable (%s): skipped" % (what, str(exc)[:100]))
        return None
