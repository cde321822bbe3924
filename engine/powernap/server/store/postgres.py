"""``store = postgresql://…``: the registry in PostgreSQL (psycopg 3, imported here only).

Server hosts get psycopg from their distribution (Debian 12: ``python3-psycopg`` 3.1); hosts that only
run the engine never import this module.  Supported servers: PostgreSQL 12 and later (tested with 15).

- The schema is the server's: created and migrated on start (``MIGRATIONS``), versioned in
  ``powerwaked_meta``, under a transaction-level advisory lock so two servers starting at once do
  not both migrate.  A database migrated by a newer powerwaked is refused.
- One powerwaked per database until the multi-instance work lands: a session advisory lock
  (``INSTANCE_LOCK``) is held while connected; a second server on the same database is refused
  with a clear error instead of overwriting the first one's registry.
- A commit returns once PostgreSQL has made it durable (``synchronous_commit`` as the database sets
  it; ``on`` is the default): the journal is durable before the ack, as with SQLite.
- The connection string holds a password: it is never logged nor put into an error (``redact``;
  libpq's own messages are scrubbed of it too).  A lost connection is retried at most every
  ``RECONNECT_EVERY`` seconds; meanwhile commits fail (no ack) and the daemon keeps serving.
"""

import time
from typing import Any, List, Optional
from urllib.parse import parse_qs, unquote, urlsplit

from . import SCHEMA, StoreError, redact
from .sql import SqlStore

INSTANCE_LOCK = 0x70776B64  # "pwkd": the session lock one server holds on its database
MIGRATE_LOCK = 0x70776B6D  # "pwkm": taken for the length of a schema migration
CONNECT_TIMEOUT = 5  # seconds; a statement gets STATEMENT_TIMEOUT
STATEMENT_TIMEOUT = "10s"
RECONNECT_EVERY = 5.0

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
}


class PostgresStore(SqlStore):
    PLACEHOLDER = "%s"
    kind = "postgresql"

    def __init__(self, url: str, log: Any = None):
        super().__init__(log)
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
        self._retry_at = 0.0
        self.conn = self._connect()  # a database we cannot reach or may not use: refuse to start

    def _connect(self) -> Any:
        psycopg = self._psycopg
        try:
            conn = psycopg.connect(self._url, connect_timeout=CONNECT_TIMEOUT, application_name="powerwaked")
        except psycopg.Error as exc:
            raise self._error(exc) from None
        try:
            with conn.cursor() as cursor:
                cursor.execute("SET statement_timeout = '%s'" % STATEMENT_TIMEOUT)
                cursor.execute("SELECT pg_try_advisory_lock(%s)", (INSTANCE_LOCK,))
                if not cursor.fetchone()[0]:
                    raise StoreError(
                        "PostgreSQL store %s is in use by another powerwaked (one server per database for now)"
                        % self.where
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

    # -- SqlStore's hooks -----------------------------------------------------------------------------
    def _connection(self) -> Any:
        if self.conn is None:
            now = time.monotonic()
            if now < self._retry_at:
                raise StoreError("PostgreSQL store %s: not connected (retrying)" % self.where)
            self._retry_at = now + RECONNECT_EVERY
            self.conn = self._connect()
            if self.log is not None:
                self.log.warning("store %s: reconnected", self.where)
        return self.conn

    def _broken(self, exc: Exception) -> None:
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
            if self.conn is not None:
                self.conn.close()  # the session's advisory lock goes with it
                self.conn = None


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
