"""The embedded default: one SQLite file (standard library), WAL, ``synchronous=FULL``, mode 0600.

Durability: in WAL mode a commit is one append to the ``-wal`` file; ``synchronous=FULL`` fsyncs it
before the commit returns, so a journaled report is on disk before its ack goes out and survives
``kill -9`` and a power cut alike (NORMAL would survive ``kill -9`` only: the ack promise is the
stronger one).  A torn tail of the WAL after a crash is discarded by SQLite itself (checksums).

Damage: a file that is not a database, fails ``PRAGMA quick_check`` or cannot be read is handled as
issue 13 handles a damaged registry: what can still be read is salvaged, the file (with its ``-wal``)
is kept aside as ``PATH.corrupt-TIME``, the server starts loudly with a fresh file and the problem is
shown in ``/v1/status``.  A file written by a newer powerwaked (a higher schema) is refused instead:
moving it aside would lose a registry that is not damaged.

A full disk is SQLITE_FULL: the transaction is rolled back, raised as StoreError (an OSError), and
the next commit tries again.
"""

import os
import sqlite3
import time
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote

from . import SCHEMA, StoreError
from .sql import TABLES, SqlStore

DDL = (
    "CREATE TABLE IF NOT EXISTS powerwaked_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS powerwaked_hosts (name TEXT PRIMARY KEY, record TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS powerwaked_replay (sender TEXT PRIMARY KEY, ts REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS powerwaked_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS powerwaked_journal (seq INTEGER PRIMARY KEY, entry TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS powerwaked_history (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, "
    "entry TEXT NOT NULL)",
)
BUSY_TIMEOUT = 10.0  # seconds to wait for another connection's write lock (a sqlite3 shell, a backup)
FREE_PAGES_KEPT = 256  # pages (1 MiB) of a shrunk journal kept for the next burst; more are given back


class Damaged(Exception):
    """The file is not a readable SQLite database of ours."""


class SqliteStore(SqlStore):
    ERRORS = (sqlite3.Error,)
    kind = "sqlite"

    def __init__(self, path: str, log: Any = None):
        super().__init__(log)
        self.path = path
        self.where = path
        self.conn: Optional[sqlite3.Connection] = None
        self._salvaged: Optional[Tuple[Optional[Dict[str, Any]], List[Dict[str, Any]]]] = None
        self._problems: List[str] = []
        self._open()

    # -- opening --------------------------------------------------------------------------------------
    def _open(self) -> None:
        directory = os.path.dirname(self.path) or "."
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            # Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the same mode.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600))
            mode = os.stat(self.path).st_mode
            if mode & 0o077:
                os.chmod(self.path, 0o600)
                self._problems.append("store %s was readable by its group or others: now 0600" % self.path)
        except OSError as exc:
            raise StoreError("SQLite store %s: %s" % (self.path, exc.strerror or exc)) from None
        try:
            self.conn = self._connect()
        except Damaged as exc:
            self._set_aside(str(exc))
            self.conn = self._connect()  # a fresh file; a second failure is not damage but a real error

    def _connect(self) -> sqlite3.Connection:
        conn = None
        try:
            # isolation_level=None: this class says BEGIN and COMMIT itself (see _begin).
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
            # A new file gives back the pages the journal no longer needs (see after_snapshot); an
            # existing file keeps the mode it was made with (changing it takes a VACUUM).
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                self._problems.append("store %s: WAL mode refused by the file system (%s)" % (self.path, mode))
            conn.execute("PRAGMA synchronous=FULL")  # durable before the ack (see the module doc)
            check = conn.execute("PRAGMA quick_check").fetchall()
            if [row[0] for row in check] != ["ok"]:
                raise Damaged("quick_check: %s" % "; ".join(str(row[0]) for row in check[:3]))
            conn.execute("BEGIN IMMEDIATE")
            for statement in DDL:
                conn.execute(statement)
            row = conn.execute("SELECT value FROM powerwaked_meta WHERE key = 'store_schema'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA:
                conn.execute("ROLLBACK")
                raise StoreError(
                    "SQLite store %s has schema %d, written by a newer powerwaked (this one knows %d): "
                    "refusing to touch it" % (self.path, version, SCHEMA)
                )
            if version < SCHEMA:
                conn.execute(
                    "INSERT OR REPLACE INTO powerwaked_meta (key, value) VALUES ('store_schema', ?)", (str(SCHEMA),)
                )
            conn.execute("COMMIT")
            return conn
        except (Damaged, StoreError):
            if conn is not None:
                conn.close()
            raise
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            if _is_damage(exc):
                raise Damaged(str(exc)) from None
            raise StoreError("SQLite store %s: %s" % (self.path, exc)) from None
        except ValueError as exc:  # a store_schema that is not a number
            if conn is not None:
                conn.close()
            raise Damaged(str(exc)) from None

    def _set_aside(self, reason: str) -> None:
        """Salvage what can be read, keep the damaged file aside, start with a fresh one."""
        salvage: List[str] = []
        self._salvaged = self._salvage(salvage)
        aside = "%s.corrupt-%d" % (self.path, int(time.time()))
        try:
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                if os.path.exists(self.path + suffix):
                    os.replace(self.path + suffix, aside + suffix)
            where = "kept as %s" % aside
        except OSError as exc:
            raise StoreError("SQLite store %s is damaged and cannot be moved aside: %s" % (self.path, exc)) from None
        hosts = len((self._salvaged[0] or {}).get("hosts") or []) if self._salvaged else 0
        self._problems.append(
            "registry %s unreadable (%s), %s; %d host records salvaged" % (self.path, reason[:200], where, hosts)
        )
        self._problems.extend(salvage[:10])
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600))

    def _salvage(self, problems: List[str]) -> Optional[Tuple[Optional[Dict[str, Any]], List[Dict[str, Any]]]]:
        """Whatever the damaged file still yields, table by table (read-only, bounded by the file)."""
        try:
            conn = sqlite3.connect("file:%s?mode=ro" % quote(self.path), uri=True, timeout=1.0)
        except sqlite3.Error:
            return None
        try:
            reader = _Salvager(conn)
            return reader.read(problems)
        finally:
            conn.close()

    # -- SqlStore's hooks -----------------------------------------------------------------------------
    def _connection(self) -> Any:
        if self.conn is None:
            raise StoreError("SQLite store %s is closed" % self.path)
        self.conn.execute("BEGIN IMMEDIATE")  # take the write lock at once: no upgrade deadlock later
        return self.conn

    def _error(self, exc: Exception) -> StoreError:
        return StoreError("SQLite store %s: %s" % (self.path, exc))

    def _after_snapshot(self) -> None:
        """A snapshot emptied the journal: give the free pages beyond FREE_PAGES_KEPT back to the file system."""
        with self.lock:
            if self.conn is None:
                return
            try:
                free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
                if free > FREE_PAGES_KEPT:
                    # executescript steps it to the end (execute frees a single page)
                    self.conn.executescript("PRAGMA incremental_vacuum(%d);" % (free - FREE_PAGES_KEPT))
            except sqlite3.Error as exc:  # only space not given back: the snapshot itself is committed
                if self.log is not None:
                    self.log.warning("store %s: incremental vacuum failed: %s", self.path, exc)

    def read(self, problems: List[str]) -> Tuple[Optional[Dict[str, Any]], List[Dict[str, Any]]]:
        problems.extend(self._problems)
        self._problems = []
        snapshot, entries = super().read(problems)
        if snapshot is None and not entries and self._salvaged is not None:
            snapshot, entries = self._salvaged  # written to the fresh file by the registry's next save
            self.seq = max([self.seq] + [int(e.get("seq") or 0) for e in entries])
        self._salvaged = None
        return snapshot, entries

    def close(self) -> None:
        with self.lock:
            if self.conn is not None:
                self.conn.close()
                self.conn = None


class _Salvager(SqlStore):
    """SqlStore's reader over a damaged file: each table read on its own, a failing one skipped."""

    ERRORS = (sqlite3.Error,)

    def __init__(self, conn: sqlite3.Connection):
        super().__init__()
        self.conn = conn

    def read(self, problems: List[str]) -> Tuple[Optional[Dict[str, Any]], List[Dict[str, Any]]]:
        cursor = _TolerantCursor(self.conn, problems)
        return self._read_tables(cursor, problems)

    def close(self) -> None:
        self.conn.close()


class _TolerantCursor:
    """A cursor whose failing SELECT yields no rows (and a note) instead of an error."""

    def __init__(self, conn: sqlite3.Connection, problems: List[str]):
        self.conn = conn
        self.problems = problems
        self.rows: List[Any] = []

    def execute(self, sql: str, params: Tuple[Any, ...] = ()) -> None:
        try:
            self.rows = self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            self.rows = [] if "count(" not in sql else [(0,)]
            if not any(table in sql for table in TABLES):
                return
            self.problems.append("salvage: %s: %s" % (sql.split(" FROM ")[-1].split()[0], exc))

    def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> List[Any]:
        return self.rows


def _is_damage(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return True
    return exc.__class__ is sqlite3.DatabaseError  # SQLITE_NOTADB / SQLITE_CORRUPT; not its subclasses (locked, misuse)
