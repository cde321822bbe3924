"""Where powerwaked keeps what must survive a restart: one small interface, two engines behind it.

The registry hands a store three things and never says what is in them:

- the **snapshot**: ``{"hosts": [record dicts], "replay": {sender: ts}, "seq": N, ...}``; every other
  top-level key (policy queues, vetoes, decisions, accumulators...) is *generic keyed state*, kept as
  JSON under its key and handed back as it was;
- the **journal**: what was accepted since the last snapshot (a report, a sender's newest time),
  appended in one transaction that is durable before the caller acknowledges anything;
- the **history**: an append-only log of wakes and naps, bounded (``HISTORY_KEEP``).

``write_snapshot`` is one transaction too: it writes the records that changed, the replay floors and
the keyed state, and drops the journal entries the snapshot includes, so a crash leaves the old
snapshot with its journal or the new one without it, never a mix.

Backends (``store =`` in ``[powerwaked]``): ``sqlite:///path`` (the default, standard library only:
WAL, ``synchronous=FULL``, one file, mode 0600) and ``postgresql://…`` (psycopg 3, imported only
there).  A store error is an ``OSError`` (``StoreError``), so a refusing database is handled exactly
like a full disk: nothing is acknowledged, the daemon stays up and retries.
"""

import abc
import json
import re
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

SCHEMA = 1  # the store's own schema version (tables); the snapshot keeps the registry's in "schema"
HISTORY_KEEP = 10000  # history entries kept; older ones are dropped as new ones come
RESERVED = ("hosts", "replay", "seq")  # snapshot keys with a table of their own; the rest is keyed state


class Encoded(str):
    """A host record already serialised by ``dumps``, with its ``name``: fleet mode's registry serialises its records
    under its own lock (no copy of each record first, to be serialised later on the writer thread: that copy was a
    quarter of an instance's time at 100,000 hosts).  A backend stores the text as it is."""

    name = ""

    @classmethod
    def of(cls, record: Dict[str, Any]) -> "Encoded":
        text = cls(dumps(record))
        text.name = str(record["name"])
        return text


def encoded(record: Any) -> Tuple[str, str]:
    """``(name, text)`` of a host record given as a dict or as ``Encoded``."""
    if isinstance(record, Encoded):
        return record.name, str(record)
    return str(record["name"]), dumps(record)


class StoreError(OSError):
    """The store refused (a full disk, a database down, a file not ours): nothing written, retry later."""


class Store(abc.ABC):
    """The registry's persistence. Not thread-safe by contract: implementations lock internally."""

    #: the last journal sequence number handed out (the snapshot records which ones it includes)
    seq = 0
    #: journal entries written and not yet covered by a snapshot
    journal_length = 0
    #: where it lives, safe to log (no password)
    where = ""
    #: the engine, for /v1/status ("sqlite", "postgresql")
    kind = ""

    @abc.abstractmethod
    def read(self, problems: List[str]) -> Tuple[Optional[Dict[str, Any]], List[Dict[str, Any]]]:
        """The snapshot (None when none was ever written) and the journal entries after it.

        What cannot be read is noted in ``problems`` and skipped, never fatal (a damaged file is kept
        aside and the store starts empty: issue 13's rule for the registry).
        """

    @abc.abstractmethod
    def append(self, entries: List[Dict[str, Any]]) -> None:
        """Journal entries durably, one transaction for the batch (each gets ``entry["seq"]``)."""

    @abc.abstractmethod
    def write_snapshot(self, data: Dict[str, Any], partial: bool = False) -> None:
        """Replace the snapshot and drop the journal entries up to ``data["seq"]``, one transaction.

        ``partial`` (fleet mode): ``data["hosts"]`` holds only records that changed; the others stay as stored."""

    @abc.abstractmethod
    def append_history(self, entries: List[Dict[str, Any]]) -> None:
        """Add entries to the history (oldest first); the oldest beyond HISTORY_KEEP are dropped."""

    @abc.abstractmethod
    def read_history(self, limit: int) -> List[Dict[str, Any]]:
        """The newest ``limit`` history entries, oldest first."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file or connection (and any lock held on it)."""


def dumps(value: Any) -> str:
    """The one JSON form every backend stores (strict: no NaN, compact)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False, sort_keys=True)


def redact(url: str) -> str:
    """A store URL safe to log: the password (and any password= parameter) replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable store URL>"
    netloc = parts.netloc
    if parts.password is not None:
        user, _at, host = netloc.rpartition("@")
        netloc = "%s:***@%s" % (user.split(":", 1)[0], host)
    query = re.sub(r"(?i)(^|&)(password)=[^&]*", r"\1\2=***", parts.query)
    return "%s://%s%s%s" % (parts.scheme, netloc, parts.path, "?" + query if query else "")


def parse_url(url: str) -> Tuple[str, str]:
    """``(kind, target)``: ``("sqlite", "/abs/path")`` or ``("postgresql", url)``; ValueError names the form.

    The message never repeats the URL (it may hold a password), nor even its scheme in lower case: a secret
    option's error is masked when it shows the value's first characters.
    """
    text = url.strip()
    if text.startswith("/"):
        return "sqlite", text  # a bare absolute path is a SQLite file
    scheme = text.partition(":")[0].lower()
    if scheme == "sqlite":
        if not text.startswith("sqlite:///") or len(text) <= len("sqlite:///") or "\0" in text:
            raise ValueError("a SQLite store URL needs an absolute path: three slashes after the scheme, then the path")
        return "sqlite", text[len("sqlite://") :]
    if scheme in ("postgresql", "postgres"):
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError("a PostgreSQL store URL with a bad host or port part") from None
        if not parts.path.strip("/") and "dbname=" not in parts.query:
            raise ValueError("a PostgreSQL store URL must name the database (…/DBNAME)")
        return "postgresql", text
    raise ValueError("the store must be a SQLite or PostgreSQL URL (the scheme was not recognised)")


def open_store(url: str, log: Any = None, fleet: Optional[Dict[str, Any]] = None) -> Store:
    """The store a URL names (PostgreSQL's module, and psycopg, are imported only when asked for).

    ``fleet``: fleet mode's writer (PostgreSQL only; see ``postgres.PostgresStore``)."""
    kind, target = parse_url(url)
    if kind == "sqlite":
        if fleet is not None:
            raise StoreError("fleet mode needs a PostgreSQL store")
        from .sqlite import SqliteStore

        return SqliteStore(target, log)
    from .postgres import PostgresStore

    return PostgresStore(target, log, fleet)
