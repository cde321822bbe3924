"""``store = postgresql://…``: the registry in PostgreSQL (psycopg 3, imported here only).

Server hosts get psycopg from their distribution (Debian 12: ``python3-psycopg`` 3.1); hosts that only
run the engine never import this module.  Supported servers: PostgreSQL 12 and later (tested with 15).

- The schema is the server's: created and migrated on start (``MIGRATIONS``), versioned in
  ``powerwaked_meta``, under a transaction-level advisory lock so two servers starting at once do
  not both migrate.  A database migrated by a newer powerwaked is refused.
- One server per database, unless fleet mode: a single server holds the session advisory lock
  ``INSTANCE_LOCK`` while connected; a second one on the same database is refused with a clear error
  instead of overwriting the first one's registry.  Fleet-mode instances (``scope`` given) hold it
  shared (so a single server cannot join them, nor they it) plus a lock on their own name (two
  instances of one name are refused).
- Fleet mode (schema 2): the journal, replay floors, snapshot header and keyed state carry the writer's
  ``scope`` (``segment:NAME`` or ``policy``), so one instance's snapshot never drops another's rows;
  host rows carry their ``segment`` and a ``version`` from one sequence (``powerwaked_host_version``),
  and ``mirror`` reads the rows changed since a version.  Host rows are written under a
  transaction lock (``VERSION_LOCK``), so versions become visible in the order they were taken and a
  reader that saw version N never misses a later commit of a smaller one.
- A commit returns once PostgreSQL has made it durable (``synchronous_commit`` as the database sets
  it; ``on`` is the default): the journal is durable before the ack, as with SQLite.
- The connection string holds a password: it is never logged nor put into an error (``redact``;
  libpq's own messages are scrubbed of it too).  A lost connection is made again on a thread of its
  own (``BackgroundConnect``), tried at most every ``RECONNECT_EVERY`` seconds; meanwhile every
  statement fails at once (commits: no ack) and the daemon keeps serving from what it holds.
- A database that stops answering (its host gone, a network that drops packets) must not hold the
  daemon's loop for the minutes TCP would retry: unless the connection string says otherwise, libpq's
  TCP keepalives and ``tcp_user_timeout`` (``TCP_DEFAULTS``) end such a connection within about
  ``DEAD_PEER`` seconds, and the next statement fails fast until a new connection is made.  Each session
  asks the server for the same bound (``SESSION_SETUP``): a dead instance's session, and its leads, end
  within ``DEAD_PEER`` seconds too (PostgreSQL 12 and later; ignored on a unix socket).
"""

import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

from . import StoreError, redact
from .coord import JOB_DDL, JOB_DDL_3
from .sql import SqlStore, _loads, split_liveness

INSTANCE_LOCK = 0x70776B64  # "pwkd": the session lock one server holds on its database
MIGRATE_LOCK = 0x70776B6D  # "pwkm": taken for the length of a schema migration
CONNECT_TIMEOUT = 5  # seconds; a statement gets STATEMENT_TIMEOUT
STATEMENT_TIMEOUT = "10s"
RECONNECT_EVERY = 5.0
# A peer that stops answering ends the connection within DEAD_PEER s: unacknowledged data for tcp_user_timeout, or
# an idle connection after keepalives_idle + count × interval.  Settings the connection string names win.
DEAD_PEER = 8.0
TCP_DEFAULTS = {
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "1",
    "keepalives_count": "3",
    "tcp_user_timeout": str(int(DEAD_PEER * 1000)),
}
# Every session's settings.  The server's side of the same bound: when an instance's host vanishes, PostgreSQL ends its
# session (and the leads it holds) within DEAD_PEER s, whatever the server's defaults (Debian: keepalives after 2 h).
SESSION_SETUP = (
    "SET statement_timeout = '%s'" % STATEMENT_TIMEOUT,
    "SET tcp_keepalives_idle = %s" % TCP_DEFAULTS["keepalives_idle"],
    "SET tcp_keepalives_interval = %s" % TCP_DEFAULTS["keepalives_interval"],
    "SET tcp_keepalives_count = %s" % TCP_DEFAULTS["keepalives_count"],
    "SET tcp_user_timeout = %s" % TCP_DEFAULTS["tcp_user_timeout"],
)
VERSION_LOCK = 0x70776B76  # "pwkv": host rows are written one transaction at a time (versions commit in order)
SCHEMA = 3  # PostgreSQL's own schema version (SQLite's is store.SCHEMA, unchanged by fleet mode)
MIRROR_BATCH = 5000  # host rows one mirror read returns at most (the rest comes with the next tick)

# Version N's statements take a database from version N-1 to N.
MIGRATIONS = {
    1: (
        "CREATE TABLE IF NOT EXISTS powerwaked_hosts (name text PRIMARY KEY, record text NOT NULL)",
        "CREATE TABLE IF NOT EXISTS powerwaked_replay (sender text PRIMARY KEY, ts double precision NOT NULL)",
        "CREATE TABLE IF NOT EXISTS powerwaked_state (key text PRIMARY KEY, value text NOT NULL)",
        "CREATE TABLE IF NOT EXISTS powerwaked_journal (seq bigint PRIMARY KEY, entry text NOT NULL)",
        "CREATE TABLE IF NOT EXISTS powerwaked_history (id bigserial PRIMARY KEY, at double precision NOT NULL, "
        "entry text NOT NULL)",
    ),
    # Fleet mode: writer scopes, host rows with segment and version, the instances' table and the jobs.
    2: (
        "CREATE SEQUENCE IF NOT EXISTS powerwaked_host_version",
        "ALTER TABLE powerwaked_hosts ADD COLUMN IF NOT EXISTS segment text NOT NULL DEFAULT ''",
        "ALTER TABLE powerwaked_hosts ADD COLUMN IF NOT EXISTS version bigint NOT NULL "
        "DEFAULT nextval('powerwaked_host_version')",
        "CREATE INDEX IF NOT EXISTS powerwaked_hosts_version ON powerwaked_hosts (version)",
    )
    + tuple(
        statement
        for table, key in (("powerwaked_replay", "sender"), ("powerwaked_state", "key"), ("powerwaked_journal", "seq"))
        for statement in (
            "ALTER TABLE %s ADD COLUMN IF NOT EXISTS scope text NOT NULL DEFAULT ''" % table,
            "ALTER TABLE %s DROP CONSTRAINT IF EXISTS %s_pkey" % (table, table),
            "ALTER TABLE %s ADD PRIMARY KEY (scope, %s)" % (table, key),
        )
    )
    + (
        "CREATE TABLE IF NOT EXISTS powerwaked_instances (name text PRIMARY KEY, segment text NOT NULL, "
        "roles text NOT NULL DEFAULT '', heartbeat timestamptz NOT NULL DEFAULT now())",
    )
    + JOB_DDL,
    # Jobs get a deadline; a host row deleted by its writer leaves a tombstone, so the mirrors drop it too.
    # Signed API writes' nonces, for the whole fleet (a request taken by one instance is a replay at every other one).
    3: JOB_DDL_3
    + (
        "CREATE TABLE IF NOT EXISTS powerwaked_nonces (sender text NOT NULL, nonce text NOT NULL, "
        "ts double precision NOT NULL, PRIMARY KEY (sender, nonce))",
        "CREATE INDEX IF NOT EXISTS powerwaked_nonces_ts ON powerwaked_nonces (ts)",
        "CREATE TABLE IF NOT EXISTS powerwaked_hosts_gone (name text PRIMARY KEY, segment text NOT NULL, "
        "version bigint NOT NULL, at timestamptz NOT NULL DEFAULT now())",
        "CREATE INDEX IF NOT EXISTS powerwaked_hosts_gone_version ON powerwaked_hosts_gone (version)",
    ),
}


class PostgresStore(SqlStore):
    PLACEHOLDER = "%s"
    SCOPED = True
    kind = "postgresql"

    def __init__(self, url: str, log: Any = None, fleet: Optional[Dict[str, str]] = None):
        """``fleet``: fleet mode's ``{"instance": NAME, "scope": SCOPE, "segment": SEGMENT OR None}`` (the writer
        scope and the segment whose host rows this instance owns); None: the one server of the database."""
        super().__init__(log)
        if fleet is not None:
            self.instance = fleet["instance"]
            self.scope = fleet["scope"]
            self.rows_segment = fleet.get("segment")
        self.where = redact(url)
        self._url = url
        self._secrets = _secrets_of(url)
        try:
            import psycopg  # only servers with store = postgresql need it
        except ImportError:
            raise StoreError(
                "store = postgresql needs psycopg 3 (Debian/Ubuntu: apt install python3-psycopg; "
                "RHEL family: python3-psycopg3)"
            ) from None
        self._psycopg = psycopg
        self.ERRORS = (psycopg.Error,)
        self.conn: Optional[Any] = None
        self._reconnect = BackgroundConnect(self._connect)
        self._connect_error: Optional[str] = None  # why the last attempt to connect again failed
        self.session = 1  # counts connections: a lead taken on one session is gone with it
        self.leads: Dict[str, int] = {}  # lock name -> the session that holds it
        self.fallback: Optional[Tuple[str, Optional[str]]] = (
            None  # fleet mode: the scope of an instance leading nothing
        )
        self.conn = self._connect()  # a database we cannot reach or may not use: refuse to start

    def conninfo(self) -> str:
        """The connection string with this daemon's TCP defaults (``TCP_DEFAULTS``) where it names none."""
        conninfo = self._psycopg.conninfo
        params = conninfo.conninfo_to_dict(self._url)
        for key, value in TCP_DEFAULTS.items():
            params.setdefault(key, value)
        return str(conninfo.make_conninfo(**params))

    def _connect(self) -> Any:
        """A new session (on the loop at start, else on ``BackgroundConnect``'s thread): touches only its own."""
        psycopg = self._psycopg
        try:
            conn = psycopg.connect(self.conninfo(), connect_timeout=CONNECT_TIMEOUT, application_name="powerwaked")
        except psycopg.Error as exc:
            raise self._error(exc) from None
        try:
            with conn.cursor() as cursor:
                for statement in SESSION_SETUP:
                    cursor.execute(statement)
                if not self.instance:
                    cursor.execute("SELECT pg_try_advisory_lock(%s)", (INSTANCE_LOCK,))
                    if not cursor.fetchone()[0]:
                        raise StoreError(
                            "PostgreSQL store %s is in use by another powerwaked (one server per database, unless "
                            "fleet mode: [powerwaked] segment)" % self.where
                        )
                else:
                    cursor.execute("SELECT pg_try_advisory_lock_shared(%s)", (INSTANCE_LOCK,))
                    if not cursor.fetchone()[0]:
                        raise StoreError(
                            "PostgreSQL store %s is in use by a powerwaked that is not in fleet mode" % self.where
                        )
                    cursor.execute(
                        "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                        ("powerwaked-instance:" + self.instance,),
                    )
                    if not cursor.fetchone()[0]:
                        raise StoreError(
                            "PostgreSQL store %s: another powerwaked runs as instance %r ([powerwaked] instance "
                            "must be unique)" % (self.where, self.instance)
                        )
                conn.commit()
                self._migrate(cursor)
                conn.commit()
        except (StoreError, psycopg.Error) as exc:
            conn.close()
            if isinstance(exc, StoreError):
                raise
            raise self._error(exc) from None
        return conn

    def _migrate(self, cursor: Any) -> None:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        cursor.execute("CREATE TABLE IF NOT EXISTS powerwaked_meta (key text PRIMARY KEY, value text NOT NULL)")
        cursor.execute("SELECT value FROM powerwaked_meta WHERE key = 'store_schema'")
        row = cursor.fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA:
            raise StoreError(
                "PostgreSQL store %s has schema %d, migrated by a newer powerwaked (this one knows %d)"
                % (self.where, version, SCHEMA)
            )
        for step in range(version + 1, SCHEMA + 1):
            for statement in MIGRATIONS[step]:
                cursor.execute(statement)
            cursor.execute(
                "INSERT INTO powerwaked_meta (key, value) VALUES ('store_schema', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(step),),
            )
            if self.log is not None:
                self.log.info("store %s: schema migrated to version %d", self.where, step)

    # -- fleet mode ------------------------------------------------------------------------------------
    def _rows_only(self, cursor: Any) -> None:
        # Host rows between snapshots are a copy for the other instances, not what makes a report durable (the
        # journal is, and a snapshot's commit waits for the flush of everything before it): such a commit need not
        # wait for its own WAL flush while it holds VERSION_LOCK, which every segment's writer queues for.
        cursor.execute("SET LOCAL synchronous_commit = off")

    def _write_host_rows(self, cursor: Any, changed: List[Tuple[str, str]], gone: List[Tuple[str]]) -> None:
        if (not changed and not gone) or (self.rows_segment or "").startswith("@"):
            return  # "@...": an instance leading no segment (or the policy leader) writes nobody's rows
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (VERSION_LOCK,))  # versions commit in order
        segment = self.rows_segment or ""
        if changed:
            cursor.executemany(
                "INSERT INTO powerwaked_hosts (name, record, segment) VALUES (%s, %s, %s) ON CONFLICT (name) "
                "DO UPDATE SET record = excluded.record, segment = excluded.segment, "
                "version = nextval('powerwaked_host_version')",
                [(name, text, segment) for name, text in changed],
            )
        if gone:
            if self.rows_segment is None:
                cursor.executemany("DELETE FROM powerwaked_hosts WHERE name = %s", gone)
            else:  # only our own rows: a host that moved to another segment is that writer's now
                # A tombstone for the other instances' mirrors (``gone_since``), only where a row went.
                cursor.execute(
                    "WITH gone AS (DELETE FROM powerwaked_hosts WHERE segment = %s AND name = ANY(%s) RETURNING name) "
                    "INSERT INTO powerwaked_hosts_gone (name, segment, version) "
                    "SELECT name, %s, nextval('powerwaked_host_version') FROM gone ON CONFLICT (name) DO UPDATE "
                    "SET segment = excluded.segment, version = excluded.version, at = now()",
                    (self.rows_segment, [name for (name,) in gone], self.rows_segment),
                )

    def mirror(
        self, since: int, problems: List[str], held: Optional[Callable[[str], Optional[int]]] = None
    ) -> Tuple[List[Tuple[Any, ...]], int]:
        """Host rows other writers changed after version ``since``, oldest first: ``([(segment, record)], newest)``.

        At most MIRROR_BATCH rows a call (the caller asks again next tick). Rows of our own segment are skipped
        (we write them); an unreadable row, or one whose record names another host than its row (it would replace
        that host at every instance), is noted in ``problems`` and skipped.

        ``held(name)``: the ``core`` (``split_liveness``) of the row text the caller's record of that host was made
        from, or None.  With it, rows come as ``(segment, record, core)``, and a row that differs from the held one
        only in its liveness (``last_seen``, ``last_ts``: every heartbeat) as ``(segment, (name, last_seen, last_ts),
        core)``, not decoded at all: each instance takes in every row of the fleet, ~3,000 a second at 100,000 hosts.
        """

        def work(cursor: Any) -> List[Any]:
            # Our own rows count for the version read but are not sent (we write them: their text is ours already).
            cursor.execute(
                "SELECT name, segment, CASE WHEN segment = %s THEN NULL ELSE record END, version FROM powerwaked_hosts "
                "WHERE version > %s ORDER BY version LIMIT %s",
                (self.rows_segment, int(since), MIRROR_BATCH),
            )
            return cursor.fetchall()

        rows = self._transaction(work)
        records: List[Tuple[Any, ...]] = []
        decoded = set()
        newest = int(since)
        for name, segment, text, version in rows:
            newest = max(newest, int(version))
            if self.rows_segment is not None and segment == self.rows_segment:
                continue
            if held is None:
                record = _mirrored(name, text, problems)
                if record is not None:
                    records.append((segment, record))
                continue
            core, liveness = split_liveness(text)
            if liveness is not None and name not in decoded and core == held(name):
                records.append((segment, (name,) + liveness, core))
                continue
            decoded.add(name)  # a later row of it in this batch is compared with this one, which the caller lacks yet
            record = _mirrored(name, text, problems)
            if record is not None:
                records.append((segment, record, core))
        return records, newest

    def gone_since(self, since: int) -> Tuple[List[Tuple[str, str]], int]:
        """Fleet mode: hosts whose rows their writers deleted after version ``since`` and that have no row now
        (a host that moved to another segment or came back has one): ``([(name, segment)], newest)``."""

        def work(cursor: Any) -> Tuple[List[Any], Optional[int]]:
            cursor.execute("SELECT max(version) FROM powerwaked_hosts_gone")
            newest = cursor.fetchone()[0]
            cursor.execute(
                "SELECT g.name, g.segment FROM powerwaked_hosts_gone g WHERE g.version > %s AND g.version <= %s "
                "AND NOT EXISTS (SELECT 1 FROM powerwaked_hosts h WHERE h.name = g.name)",
                (int(since), newest or 0),
            )
            return cursor.fetchall(), newest

        rows, newest = self._transaction(work)
        return [(str(name), str(segment)) for name, segment in rows], max(int(since), int(newest or 0))

    def forget_gone(self, older_than: float) -> None:
        """Tombstones older than ``older_than`` seconds are deleted (every mirror has read them by then)."""

        def work(cursor: Any) -> None:
            cursor.execute("DELETE FROM powerwaked_hosts_gone WHERE at < now() - make_interval(secs => %s)",
                           (float(older_than),))  # fmt: skip

        self._transaction(work)

    def rescope(self, scope: str, segment: Optional[str]) -> None:
        """Write as another scope from now on (a lead taken or lost): the caller reads it again (``read``)."""
        with self.lock:
            self._rescope(scope, segment)

    def _rescope(self, scope: str, segment: Optional[str]) -> None:
        self.scope, self.rows_segment = scope, segment
        self.seq = 0
        self.journal_length = 0
        self._hosts, self._replay, self._state = {}, {}, {}

    def try_lead(self, lock: str) -> bool:
        """Take the session advisory lock ``lock`` on the store's own connection, or prove we still hold it.

        The writer's session is the lock's: a leader whose connection broke cannot write as leader on a new one
        (``_connection`` rescopes first), so two writers of one segment never overlap.  False on any error.
        """

        def work(cursor: Any) -> bool:
            if self.leads.get(lock) == self.session:
                cursor.execute("SELECT 1")
                return True
            cursor.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (lock,))
            return bool(cursor.fetchone()[0])

        try:
            held = self._transaction(work)
        except StoreError:
            self.leads.pop(lock, None)
            return False
        if held:
            self.leads[lock] = self.session
        else:
            self.leads.pop(lock, None)
        return held

    def resign(self, lock: str) -> None:
        """Give a lead back (shutdown): the next instance takes it at its next poll, not after a timeout."""
        if self.leads.pop(lock, None) == self.session:

            def work(cursor: Any) -> None:
                cursor.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (lock,))

            try:
                self._transaction(work)
            except StoreError:
                pass

    def claim_nonce(self, sender: str, nonce: str, ts: float) -> bool:
        """Fleet mode: take a signed message's nonce for the whole fleet; False when some instance took it already."""

        def work(cursor: Any) -> bool:
            cursor.execute(
                "INSERT INTO powerwaked_nonces (sender, nonce, ts) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (sender, nonce, float(ts)),
            )
            return bool(cursor.rowcount == 1)

        return bool(self._transaction(work))

    def write_keyed(self, scope: str, key: str, text: str) -> None:
        """One keyed state of another writer scope (the policy leader's ``policy``), in its own transaction."""

        def work(cursor: Any) -> None:
            cursor.execute(
                "INSERT INTO powerwaked_state (scope, key, value) VALUES (%s, %s, %s) "
                "ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value",
                (scope, key, text),
            )

        self._transaction(work)

    def read_keyed(self, scope: str, key: str) -> Optional[str]:
        def work(cursor: Any) -> Optional[str]:
            cursor.execute("SELECT value FROM powerwaked_state WHERE scope = %s AND key = %s", (scope, key))
            row = cursor.fetchone()
            return None if row is None else str(row[0])

        return self._transaction(work)

    def heartbeat(self, instance: str, segment: str, roles: str) -> List[Tuple[str, str, str, float]]:
        """Publish our name, segment, roles and heartbeat; returns every instance's (name, segment, roles, age)."""

        def work(cursor: Any) -> List[Any]:
            cursor.execute(
                "INSERT INTO powerwaked_instances (name, segment, roles, heartbeat) VALUES (%s, %s, %s, now()) "
                "ON CONFLICT (name) DO UPDATE SET segment = excluded.segment, roles = excluded.roles, "
                "heartbeat = now()",
                (instance, segment, roles),
            )
            cursor.execute(
                "SELECT name, segment, roles, extract(epoch FROM now() - heartbeat) FROM powerwaked_instances "
                "ORDER BY name LIMIT 1000"
            )
            return cursor.fetchall()

        return [(str(n), str(seg), str(r), float(age)) for n, seg, r, age in self._transaction(work)]

    # -- SqlStore's hooks -----------------------------------------------------------------------------
    def _connection(self) -> Any:
        if self.conn is None:
            conn, error = self._reconnect.take()
            if conn is None:
                if error is not None:
                    self._connect_error = str(error)
                self._reconnect.start(RECONNECT_EVERY)
                raise StoreError(self._connect_error or "PostgreSQL store %s: not connected (connecting)" % self.where)
            self.conn, self._connect_error = conn, None
            self.session += 1
            if self.log is not None:
                self.log.warning("store %s: reconnected", self.where)
            if self.leads or (self.fallback is not None and (self.scope, self.rows_segment) != self.fallback):
                # Fencing: the leads went with the old session; until the daemon takes one again (try_lead), this
                # process writes only as an instance leading nothing, never another leader's rows.
                self.leads = {}
                if self.fallback is not None:
                    self._rescope(*self.fallback)
        return self.conn

    def _broken(self, exc: Exception) -> None:
        if isinstance(exc, self._psycopg.errors.QueryCanceled) and self.conn is not None and not self.conn.closed:
            # A statement timeout (a write queued behind the other writers of a busy fleet) leaves the session as it
            # was once rolled back: keeping it keeps its leads, where a new session would give them up.
            return
        if self.conn is not None and (self.conn.closed or isinstance(exc, self._psycopg.OperationalError)):
            try:
                self.conn.close()
            except self._psycopg.Error:
                pass
            self.conn = None

    def _error(self, exc: Exception) -> StoreError:
        text = str(exc).strip() or type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return StoreError("PostgreSQL store %s: %s" % (self.where, text[:500]))

    def close(self) -> None:
        with self.lock:
            self._reconnect.close()
            if self.conn is not None:
                try:
                    # Released now, not when the server gets round to ending the backend: a successor starting
                    # at once (a restart, the next leader) must not find the locks still held.
                    self.conn.rollback()
                    self.conn.execute("SELECT pg_advisory_unlock_all()")
                    self.conn.commit()
                except self._psycopg.Error:
                    pass
                self.conn.close()  # the session's advisory locks go with it in any case
                self.conn = None
                self.leads = {}


def _mirrored(name: str, text: Any, problems: List[str]) -> Optional[Dict[str, Any]]:
    """A host row's record, or None (noted in ``problems``) when it is unreadable or names another host."""
    record = _loads(text, "mirrored host %r" % name, problems)
    if not isinstance(record, dict):
        return None
    if record.get("name") != name:
        problems.append("mirrored host %r: its record names %r: skipped" % (name, str(record.get("name"))[:64]))
        return None
    return record


class BackgroundConnect:
    """Makes a connection on a thread of its own: a database that does not answer never holds the caller's loop
    for ``connect_timeout``.  ``start`` an attempt (none if one runs or one started less than ``every`` seconds
    ago), ``take`` what the last one gave."""

    def __init__(self, connect: Callable[[], Any]):
        self._connect = connect
        self._thread: Optional[threading.Thread] = None
        self._result: Optional[Tuple[Any, Optional[Exception]]] = None
        self._closed = False
        self._started = float("-inf")

    def start(self, every: float) -> None:
        now = time.monotonic()
        if self._closed or now - self._started < every or (self._thread is not None and self._thread.is_alive()):
            return
        self._started = now

        def attempt() -> None:
            try:
                self._result = (self._connect(), None)
            except Exception as exc:  # StoreError above all; whatever it is, the caller hears of it
                self._result = (None, exc)
            if self._closed:  # closed while we were connecting: nobody will take it
                self._discard()

        self._thread = threading.Thread(target=attempt, name="postgresql-connect", daemon=True)
        self._thread.start()

    def take(self) -> Tuple[Any, Optional[Exception]]:
        """(connection, None) once an attempt succeeded, (None, error) once one failed, else (None, None)."""
        result, self._result = self._result, None
        return result if result is not None else (None, None)

    def close(self) -> None:
        self._closed = True
        self._discard()

    def _discard(self) -> None:
        conn, _error = self.take()
        if conn is not None:
            try:
                conn.close()
            except Exception:  # closing a connection nobody uses: nothing more to do
                pass


def _secrets_of(url: str) -> List[str]:
    """The password in a URL, raw and decoded, so that it can be scrubbed from any message."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = []
    raw = parts.netloc.rpartition("@")[0].partition(":")[2] if "@" in parts.netloc else ""
    for value in [raw, unquote(raw)] + parse_qs(parts.query).get("password", []):
        if value and value not in found:
            found.append(value)
    return sorted(found, key=len, reverse=True)
