"""Several powerwaked instances on one PostgreSQL: the job table and the per-segment leader (issue 18, part 2).

The building blocks fleet mode (``server/fleetmode.py``) uses, tested against a private PostgreSQL
(``tests/test_server_coord.py``); the daemon holds its leads with ``PostgresStore.try_lead`` (the same
lock names, on the store's own session) rather than ``SegmentLeader``.

- **Jobs** (``JobQueue``): L2 work for a segment (a WoL, a proxy answer, a confirmation, a local
  escalation) is a row of ``powerwaked_jobs``.  An instance on that segment claims the oldest ready
  one with ``SELECT … FOR UPDATE SKIP LOCKED`` (two instances never get the same job, and neither
  waits for the other), under a lease.  A job whose instance died (its lease ran out) is ready again
  and goes to another instance of the same segment, up to ``max_attempts``; an instance whose lease
  ran out can no longer finish it.  Submitting a job sends ``NOTIFY powerwaked_jobs, SEGMENT`` in the
  same transaction, so a waiting instance (``JobListener``) wakes at once instead of polling.
- **Leader** (``SegmentLeader``): one sleep proxy per segment, chosen by a session advisory lock keyed
  by the segment's name.  The lock goes with the holder's session: when its process dies, PostgreSQL
  ends the session and the next ``try_lead`` of another instance wins it.  The takeover bound is the
  poll interval plus the time PostgreSQL takes to notice a dead peer (at once for a killed process,
  whose socket closes; for a host that vanished, the server's TCP keepalive settings, e.g.
  ``tcp_keepalives_idle = 5``, ``tcp_keepalives_interval = 1``, ``tcp_keepalives_count = 3``).
  A leader that loses its connection stops leading at its next ``try_lead``.
- **Deadlines**: every job has an ``expires`` time, set at submit (``JOB_TTL``): work asked for long ago must
  not run when an instance of its segment comes back, maybe hours later.  A claim never takes an expired job,
  and ``expire`` marks them failed (``{"error": "expired ..."}``), each exactly once.
"""

import select
import time
from typing import Any, Dict, List, Optional

from . import dumps

CHANNEL = "powerwaked_jobs"
JOB_DDL = (
    "CREATE TABLE IF NOT EXISTS powerwaked_jobs ("
    " id bigserial PRIMARY KEY,"
    " segment text NOT NULL,"
    " kind text NOT NULL,"
    " payload text NOT NULL,"
    " state text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'done', 'failed')),"
    " attempts integer NOT NULL DEFAULT 0,"
    " max_attempts integer NOT NULL DEFAULT 3,"
    " claimed_by text,"
    " lease_until timestamptz,"
    " created timestamptz NOT NULL DEFAULT now(),"
    " finished timestamptz,"
    " result text)",
    "CREATE INDEX IF NOT EXISTS powerwaked_jobs_ready ON powerwaked_jobs (segment, id) "
    "WHERE state IN ('queued', 'running')",
)
JOB_TTL_DEFAULT = 300.0  # seconds: most jobs' deadline (and that of jobs queued before schema 3)
# How long a job may wait for an instance to start it (seconds from its submit), by kind.  None: from the server's
# config: a wake or nap, its waking timeout (one asked long ago is not what an admin expects to happen now); a
# forwarded report, ``max_skew`` (an engine's report older than that is refused anyway, and a newer one supersedes
# it).  A veto, demand or engine veto that carries its own duration expires with it (at most JOB_TTL_MAX).
JOB_TTL: Dict[str, Optional[float]] = {
    "wake": None,
    "send-wake": None,
    "nap": None,
    "send-nap": None,
    "clear-mark": JOB_TTL_DEFAULT,
    "report": None,
    "engine-veto": JOB_TTL_DEFAULT,
    "veto": JOB_TTL_DEFAULT,
    "demand": JOB_TTL_DEFAULT,
    "decide": JOB_TTL_DEFAULT,
    "hold": 60.0,  # a UPS hold for another segment's host: sent again while its row does not show it
}
JOB_TTL_MAX = 3600.0
# Schema 3 (store/postgres.MIGRATIONS): the job's deadline.  Jobs of an older schema get one when migrated.
JOB_DDL_3 = (
    "ALTER TABLE powerwaked_jobs ADD COLUMN IF NOT EXISTS expires timestamptz",
    "UPDATE powerwaked_jobs SET expires = created + make_interval(secs => %d) WHERE expires IS NULL" % JOB_TTL_DEFAULT,
    "ALTER TABLE powerwaked_jobs ALTER COLUMN expires SET NOT NULL",
    "CREATE INDEX IF NOT EXISTS powerwaked_jobs_failed ON powerwaked_jobs (id) WHERE state = 'failed'",
)
SCHEMA_LOCK = 0x70776B6D  # the store's migration lock (postgres.MIGRATE_LOCK): one creator at a time


class JobQueue:
    """The job table, over one psycopg connection the caller owns (not shared across threads)."""

    def __init__(self, conn: Any, instance: str):
        self.conn = conn
        self.instance = instance

    def create_schema(self) -> None:
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            for statement in JOB_DDL + JOB_DDL_3:
                self.conn.execute(statement)

    def submit(
        self, segment: str, kind: str, payload: Dict[str, Any], ttl: float = JOB_TTL_DEFAULT, max_attempts: int = 3
    ) -> int:
        """Queue a job for the instances on ``segment``, to be started within ``ttl`` seconds (at most
        JOB_TTL_MAX), and wake them (NOTIFY, sent at commit)."""
        ttl = min(max(float(ttl), 0.0), JOB_TTL_MAX)
        with self.conn.transaction():
            row = self.conn.execute(
                "INSERT INTO powerwaked_jobs (segment, kind, payload, max_attempts, expires) "
                "VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s)) RETURNING id",
                (segment, kind, dumps(payload), max_attempts, ttl),
            ).fetchone()
            self.conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, segment))
        return int(row[0])

    def claim(self, segment: str, lease: float) -> Optional[Dict[str, Any]]:
        """The oldest ready job of ``segment``, now ours for ``lease`` seconds; None when there is none."""
        import json

        with self.conn.transaction():
            row = self.conn.execute(
                "UPDATE powerwaked_jobs SET state = 'running', claimed_by = %s, attempts = attempts + 1, "
                "lease_until = now() + make_interval(secs => %s) "
                "WHERE id = (SELECT id FROM powerwaked_jobs WHERE segment = %s AND attempts < max_attempts "
                "AND expires > now() AND (state = 'queued' OR (state = 'running' AND lease_until < now())) "
                "ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1) "
                "RETURNING id, kind, payload, attempts",
                (self.instance, float(lease), segment),
            ).fetchone()
        if row is None:
            return None
        try:
            payload = json.loads(row[2])
        except (ValueError, RecursionError):  # a row no JSON parser takes: the caller refuses it (None) for good
            payload = None
        return {"id": int(row[0]), "kind": row[1], "payload": payload, "attempts": int(row[3])}

    def renew(self, job_id: int, lease: float) -> bool:
        """Extend our lease on a job still running; False when it is no longer ours."""
        return self._update(
            "UPDATE powerwaked_jobs SET lease_until = now() + make_interval(secs => %s) "
            "WHERE id = %s AND claimed_by = %s AND state = 'running'",
            (float(lease), job_id, self.instance),
        )

    def done(self, job_id: int, result: Any = None) -> bool:
        """Mark our job done; False when our lease ran out and it went elsewhere (the result is dropped)."""
        return self._update(
            "UPDATE powerwaked_jobs SET state = 'done', finished = now(), result = %s "
            "WHERE id = %s AND claimed_by = %s AND state = 'running'",
            (dumps(result), job_id, self.instance),
        )

    def fail(self, job_id: int, error: str, final: bool = False) -> bool:
        """Our job failed: ready again for another try (of any instance on the segment), or failed for good (after
        its last attempt, or ``final``: a job refused as it is, which no other try could do)."""
        again = "attempts < max_attempts AND NOT %s"
        return self._update(
            "UPDATE powerwaked_jobs SET state = CASE WHEN %s THEN 'queued' ELSE 'failed' END, "
            "finished = CASE WHEN %s THEN NULL ELSE now() END, result = %%s "
            "WHERE id = %%s AND claimed_by = %%s AND state = 'running'" % (again, again),
            (final, final, dumps({"error": error[:500]}), job_id, self.instance),
        )

    def reap(self) -> int:
        """Jobs whose last allowed attempt's lease ran out are failed for good; returns how many."""
        with self.conn.transaction():
            cursor = self.conn.execute(
                "UPDATE powerwaked_jobs SET state = 'failed', finished = now(), result = %s "
                "WHERE state = 'running' AND lease_until < now() AND attempts >= max_attempts",
                (dumps({"error": "no instance finished it"}),),
            )
            return cursor.rowcount

    def expire(self, limit: int = 1000) -> List[Dict[str, Any]]:
        """Jobs past their deadline that no instance runs (queued, or a dead holder's lease ran out) are failed
        with ``{"error": "expired ..."}``; returns them (``id``, ``segment``, ``kind``, ``host``), each once."""
        import json

        with self.conn.transaction():
            rows = self.conn.execute(
                "UPDATE powerwaked_jobs SET state = 'failed', finished = now(), "
                "result = jsonb_build_object('error', 'expired after ' || "
                "round(extract(epoch FROM expires - created)) || ' s: no instance of segment ' || segment || "
                "' started it in time')::text "
                "WHERE id IN (SELECT id FROM powerwaked_jobs WHERE expires <= now() "
                "AND (state = 'queued' OR (state = 'running' AND lease_until < now())) "
                "ORDER BY id FOR UPDATE SKIP LOCKED LIMIT %s) "
                "RETURNING id, segment, kind, payload",
                (int(limit),),
            ).fetchall()
        expired = []
        for job_id, segment, kind, payload in rows:
            try:
                host = json.loads(payload).get("host")
            except (ValueError, AttributeError, RecursionError):
                host = None
            expired.append({"id": int(job_id), "segment": segment, "kind": kind,
                            "host": host if isinstance(host, str) else None})  # fmt: skip
        return expired

    def job(self, job_id: int) -> Optional[Dict[str, Any]]:
        row = self.conn.execute(
            "SELECT id, segment, kind, state, attempts, claimed_by FROM powerwaked_jobs WHERE id = %s", (job_id,)
        ).fetchone()
        self.conn.commit()
        if row is None:
            return None
        keys = ("id", "segment", "kind", "state", "attempts", "claimed_by")
        return dict(zip(keys, row))

    def _update(self, sql: str, params: Any) -> bool:
        with self.conn.transaction():
            return self.conn.execute(sql, params).rowcount == 1


class JobListener:
    """LISTEN on the job channel (its own autocommit connection): wait until a segment has new work."""

    def __init__(self, conn: Any, segments: List[str]):
        if not conn.autocommit:
            raise ValueError("the listener needs an autocommit connection (LISTEN takes effect at once)")
        self.conn = conn
        self.segments = set(segments)
        self._woken = False
        conn.add_notify_handler(self._on_notify)
        conn.execute("LISTEN %s" % CHANNEL)

    def _on_notify(self, notify: Any) -> None:
        if notify.payload in self.segments:
            self._woken = True

    def wait(self, timeout: float) -> bool:
        """True as soon as a job was submitted for one of our segments (since the last wait), else at timeout."""
        deadline = time.monotonic() + timeout
        while not self._woken:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            readable, _w, _x = select.select([self.conn.fileno()], [], [], left)
            if readable:
                self.conn.execute("SELECT 1")  # lets psycopg read the pending notifications (handlers run)
        woken, self._woken = self._woken, False
        return woken


class SegmentLeader:
    """Leads a segment (runs its sleep proxy) while it holds the segment's advisory lock on its own session."""

    def __init__(self, conn: Any, segment: str):
        if not conn.autocommit:
            raise ValueError("the leader needs an autocommit connection (a session lock, no open transaction)")
        self.conn = conn
        self.segment = segment
        self.leading = False

    def try_lead(self) -> bool:
        """Take the lead if it is free, keep it if ours; False (and not leading) when the connection is gone."""
        try:
            if self.leading:
                self.conn.execute("SELECT 1")  # still connected: a session lock lives as long as the session
            else:
                row = self.conn.execute(
                    "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", ("powerwaked-segment:" + self.segment,)
                ).fetchone()
                self.leading = bool(row[0])
        except Exception:  # psycopg.Error above all: a leader that cannot prove its lock must stop leading
            self.leading = False
        return self.leading

    def resign(self) -> None:
        if self.leading:
            self.conn.execute(
                "SELECT pg_advisory_unlock(hashtextextended(%s, 0))", ("powerwaked-segment:" + self.segment,)
            )
            self.leading = False
