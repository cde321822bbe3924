"""Fleet mode: several powerwaked instances on one PostgreSQL (issue 18 part 2; the design is FLEETMODE.md).

On when ``[powerwaked] segment`` is set.  Each instance:

- **mirrors** every host row of the database into its registry each tick (``Registry.mirror``: rows with a
  version newer than the last it read), so its API shows every host of every segment;
- tries every ``lead_poll`` to take two leads, PostgreSQL session advisory locks held **on the store's own
  connection** (so a writer whose session died cannot go on writing as leader: ``PostgresStore.try_lead``):
  the **segment leader** (``powerwaked-segment:NAME``) is the one writer of its segment's host rows, runs
  the sleep proxy, the per-host timers and the segment's jobs; the **policy leader** (``powerwaked-policy``)
  runs the policy gate's queue, UPS, schedules and clusters once for the fleet, and the ``@policy`` jobs;
- publishes its name, segment, roles and heartbeat (``powerwaked_instances``), read back for /v1/status.

Writes go as **jobs** (``store/coord.JobQueue``; a NOTIFY on its own autocommit connection wakes the
leader at once): a wake or nap asked at any instance goes to the policy leader (``@policy``: the gate's
rate limits are fleet-wide), whose gate sends it on as ``send-wake``/``send-nap`` to the host's segment,
whose leader runs it through the existing wake path (``Fleet``) and keeps the job leased until the wake is
confirmed or given up; a job whose holder died is redone by the next leader of its segment.  A report at
an instance that does not lead its segment is verified there and forwarded as a ``report`` job.

A database that goes away never stops the daemon: it leads nothing (the store rescopes itself on the next
session), answers from what it holds and retries every ``lead_poll``.
"""

import collections
import json
import time
from typing import Any, Dict, List, Optional, Tuple

from ..options import Boolean, Choice, Declared, Option, OptionType, Scalar, String
from . import protocol as P
from .store import StoreError, dumps
from .store.coord import JOB_TTL, JOB_TTL_DEFAULT, JOB_TTL_MAX
from .store.postgres import SESSION_SETUP, BackgroundConnect

POLICY = "@policy"  # the pseudo-segment of the policy leader's jobs
POLICY_LOCK = "powerwaked-policy"
POLICY_SCOPE = "policy"  # the writer scope of the policy gate's state (queue, vetoes, decisions, cooldowns)
SEGMENT_LOCK = "powerwaked-segment:"  # + the segment's name (store/coord.SegmentLeader's lock)
# A claimed job stays ours this long without renewal: at least JOB_LEASE, and three lead polls (it is renewed every
# poll while it runs), so a dead holder's job is redone by the next leader within about that.
JOB_LEASE = 5.0
CLAIMS_PER_TICK = 64  # jobs taken per tick and segment at most (the rest at the next tick)
JOBS_KEPT = 86400.0  # finished jobs are deleted after a day (by the policy leader; done reports sooner)
CONNECT_TIMEOUT = 3  # seconds: the job connection is made from the loop
RECONNECT_EVERY = 5.0  # seconds between attempts to make it again (as the store's own connection)
# wake, nap, clear-mark, demand, veto, decide, send-wake, send-nap, report, engine-veto, hold: each with its deadline
JOB_KINDS = tuple(JOB_TTL)
# The jobs a segment's leader runs on one of its own hosts (refused for a host of another segment: never sent on the
# wrong wire, never written into another writer's record).
SEGMENT_JOBS = ("send-wake", "send-nap", "clear-mark", "hold")
EXPIRED_LOGGED = 100  # expired jobs logged one by one per sweep (the rest, if ever, in one line: a bounded log)
GONE_KEPT = 86400.0  # tombstones of deleted host rows are kept a day (every mirror has read them by then)
_TEXT = 512  # longest cause / name text taken from a job's payload


class _Message(OptionType):
    """A forwarded report: the engine's message as the forwarding instance verified it, checked again here."""

    def check(self, value: Any) -> Dict[str, Any]:
        message = P.check_message(value)
        if message["kind"] != "report":  # any other kind is checked against its own schema: it is no report
            raise ValueError("a %s message, not a report" % message["kind"])
        return message


_REQUEST, _REPORT = P.RequestMessage.option, P.ReportMessage.option
# The fields of job payloads, each of the wire's type (the API request's or the report's, where the job carries
# one of theirs), so that a job row holds no value the API or a report could not have brought.
_TARGET = Option("host", String(nonempty=True, max_length=253), required=True,
                 doc="The host (a group for veto and demand, a decision id for decide).")  # fmt: skip
_CAUSE = Option("cause", Scalar(_TEXT), doc="Why (free text, cut to %d characters)." % _TEXT)
_SOURCE = Option("source", Scalar(_TEXT), doc="Who asked (free text).")
_TEST = Option("test", Boolean(), doc="A test wake (wake health).")
_ACTION = Option("action", Choice(*P.NAP_ACTIONS), doc="The nap action.")
_FORCE, _METHOD = _REQUEST("force"), _REQUEST("method")


class JobPayload(Declared):
    """Base of the job payloads (``JOB_SCHEMAS``): a job row is checked against its kind's before it is run."""


class _WakeJob(JobPayload):
    """wake (to the policy leader) and send-wake (to the host's segment)."""

    OPTIONS = (_TARGET, _CAUSE, _SOURCE, _METHOD, _TEST)


class _NapJob(JobPayload):
    """nap: to the policy leader."""

    OPTIONS = (_TARGET, _CAUSE, _SOURCE, _ACTION, _FORCE)


class _SendNapJob(JobPayload):
    """send-nap: to the host's segment."""

    OPTIONS = (_TARGET, _CAUSE, _SOURCE, _ACTION, Option("wake_at", P.TIME, doc="RTC wake alarm (epoch)."),
               Option("urgent", Boolean(), doc="Sent before its turn (a UPS shed)."))  # fmt: skip


class _ReportJob(JobPayload):
    """report: a verified report forwarded to the leader of its host's segment."""

    OPTIONS = (Option("message", _Message(), required=True, doc="The report."),
               Option("sender", P.PeerAddress(), doc="[ip, port] it came from."))  # fmt: skip


class _ClearMarkJob(JobPayload):
    """clear-mark: to the host's segment."""

    OPTIONS = (_TARGET, _SOURCE)


class _EngineVetoJob(JobPayload):
    """engine-veto: a report's veto, to the policy leader."""

    OPTIONS = (_TARGET, Option("veto_for", _REPORT("veto_for").type, required=True, doc="Seconds (0 lifts it)."),
               _REPORT("veto_reason"))  # fmt: skip


class _VetoJob(JobPayload):
    """veto: an API veto (or its lifting), to the policy leader."""

    OPTIONS = (_TARGET, _SOURCE, _REQUEST("ttl"), Option("cause", _REQUEST("reason").type, doc="Why."),
               Option("clear", Boolean(), required=True, doc="Lift the group's vetoes instead."))  # fmt: skip


class _DemandJob(JobPayload):
    """demand: an API demand, to the policy leader."""

    OPTIONS = (_TARGET, _SOURCE, Option("more", _REQUEST("more").type, required=True, doc="More awake hosts."),
               Option("ttl", _REQUEST("ttl").type, required=True, doc="For this long."))  # fmt: skip


class _DecideJob(JobPayload):
    """decide: an API approval or rejection, to the policy leader."""

    OPTIONS = (_TARGET, _SOURCE, Option("approve", Boolean(), required=True, doc="Approve (else reject)."), _FORCE)


class _HoldJob(JobPayload):
    """hold: a UPS policy's hold or its release, from the policy leader to the host's segment."""

    OPTIONS = (_TARGET, Option("hold", String(nonempty=True, max_length=_TEXT), doc="The hold (null: released)."),
               Option("policy", String(nonempty=True, max_length=_TEXT), required=True,
                      doc="The policy's hold."))  # fmt: skip


JOB_SCHEMAS = {"wake": _WakeJob, "send-wake": _WakeJob, "nap": _NapJob, "send-nap": _SendNapJob,
               "report": _ReportJob, "clear-mark": _ClearMarkJob, "engine-veto": _EngineVetoJob, "veto": _VetoJob,
               "demand": _DemandJob, "decide": _DecideJob, "hold": _HoldJob}  # fmt: skip
assert set(JOB_SCHEMAS) == set(JOB_KINDS), "a job kind without its payload's schema"


class FleetMode:
    """One instance's part of the fleet (called from the daemon's loop and API, with the daemon's lock held)."""

    def __init__(self, server: Any):
        self.server = server
        config = server.config
        self.instance = config.instance
        self.segment = str(config.server["segment"])
        self.poll = float(config.server["lead_poll"])
        self.lease = max(JOB_LEASE, 3 * self.poll + 2.0)
        self.log = server.log.getChild("fleet")
        self.store: Any = None  # the registry's PostgresStore (attach)
        self._jobs_connect = BackgroundConnect(self._connect_jobs)
        self.segment_leader = False
        self.policy_leader = False
        self.conn: Any = None  # autocommit: jobs and LISTEN
        self.queue: Any = None
        self._listening_fd: Optional[int] = None
        self._next_poll = 0.0
        self._next_cleanup = 0.0
        self._notified = True
        self.running: Dict[int, Dict[str, Any]] = {}  # our send-wake jobs awaiting confirmation
        self.instances: List[Tuple[str, str, str, float]] = []  # (name, segment, roles, heartbeat age)
        self.jobs = {"queued": 0, "running": 0, "expired": 0}
        self.counts: Dict[str, int] = collections.Counter()  # submitted, done, failed, forwarded
        self.problem: Optional[str] = None
        self._logged: Dict[str, float] = {}
        self._policy_saved: Optional[int] = None  # hash of the policy state last written
        self._vetoes_sent: Dict[str, float] = {}  # host -> until when the veto we forwarded holds
        # Holds the policy leader set or lifted on other segments' hosts, until their rows show them:
        # host -> (hold or None, the policy's hold, when last sent (monotonic)).
        self.holds: Dict[str, Tuple[Optional[str], str, float]] = {}
        # Hosts of other segments marked waking here when their wake went out as a job, until their row changes:
        # host -> (the record marked, its state before, when the job expires (wall)).
        self.marks: Dict[str, Tuple[Any, str, float]] = {}

    # -- wiring -----------------------------------------------------------------------------------
    def store_options(self) -> Dict[str, Any]:
        """The store's writer while this instance leads nothing (``open_store(fleet=...)``)."""
        return {"instance": self.instance, "scope": "instance:" + self.instance, "segment": "@none"}

    def attach(self, store: Any) -> None:
        self.store = store
        store.fallback = ("instance:" + self.instance, "@none")
        registry = self.server.registry
        registry.owned_segment = self._led_segment
        registry.owns = lambda record: record.segment is not None and record.segment == self._led_segment()
        registry.remote_hold = self.remote_hold

    def _led_segment(self) -> Optional[str]:
        """The segment whose host rows this instance writes: its own while it leads it, else none."""
        return self.segment if self.segment_leader else None

    def segment_of(self, record: Any) -> str:
        """The segment a host's L2 work goes to (its record's, the config's, else ours)."""
        if record.segment:
            return str(record.segment)
        return self.server.config.segment_of(record.name, record.ips) or self.segment

    # -- the loop ---------------------------------------------------------------------------------
    def start(self, now: float) -> None:
        """At start-up, before the sockets: take what leads are free and mirror the fleet (no job runs yet)."""
        self._next_poll = time.monotonic() + self.poll
        self._poll_leads()
        self._heartbeat()
        self._ensure_jobs(wait=True)
        try:
            self.server.registry.mirror(now)
        except StoreError as exc:
            self._note("mirror", "cannot read the other instances' hosts: %s" % exc)

    def tick(self, now: float) -> None:
        mono = time.monotonic()
        polled = mono >= self._next_poll
        if polled:
            self._next_poll = mono + self.poll
            self._poll_leads()
            self._heartbeat()
            self._jobs_poll(mono)
            self._notified = True  # a lease of a dead holder runs out without a NOTIFY: look on every poll
        registry = self.server.registry
        # The records our holds and waking marks are on: one the mirror replaces came with its writer's row.
        edited = {name: registry.get(name) for name in list(self.holds) + list(self.marks)}
        try:
            registry.mirror(now)
            if polled:
                registry.drop_gone()
        except StoreError as exc:
            self._note("mirror", "cannot read the other instances' hosts: %s" % exc)
        if self.holds or self.marks:
            self._reconcile(edited, now, mono)
        if self.segment_leader and self.store.scope != "segment:" + self.segment:
            # The store's session broke and it fenced itself: we lead again only once the lock is ours again.
            self.segment_leader = False
            self.log.warning("instance %s lost the lead of segment %s with its database session", self.instance,
                             self.segment)  # fmt: skip
        if self._notified and self._ensure_jobs():
            self._notified = False
            self._claim()
        self._check_running()

    def _poll_leads(self) -> None:
        store, registry = self.store, self.server.registry
        was_segment, was_policy = self.segment_leader, self.policy_leader
        segment = store.try_lead(SEGMENT_LOCK + self.segment)
        if segment and (not was_segment or store.scope != "segment:" + self.segment):
            # Taken (or taken again on a new session): read the segment's rows and the previous leader's journal.
            registry.wait_saved()
            store.rescope("segment:" + self.segment, self.segment)
            self.segment_leader = True
            try:
                count = registry.take_over()
            except StoreError as exc:
                self.segment_leader = False
                store.rescope(*store.fallback)
                store.resign(SEGMENT_LOCK + self.segment)
                self._note("lead", "cannot read segment %s to lead it: %s" % (self.segment, exc))
                return
            self.log.warning("instance %s leads segment %s (%d hosts read)", self.instance, self.segment, count)
        elif was_segment and not segment:
            self.segment_leader = False
            registry.wait_saved()
            store.rescope(*store.fallback)
            self.log.warning("instance %s no longer leads segment %s", self.instance, self.segment)
        self.policy_leader = store.try_lead(POLICY_LOCK)
        if self.policy_leader != was_policy:
            self.log.warning("instance %s %s the fleet's policies", self.instance,
                             "leads" if self.policy_leader else "no longer leads")  # fmt: skip
            if self.policy_leader:
                self._take_policy_state()
                for policy, _poller in self.server.ups:
                    policy.restore_shed()  # the groups shed are the ones the rows show held (the last leader's)
            else:
                self.holds.clear()  # the next policy leader decides the holds now
        elif self.policy_leader:
            self._save_policy_state()

    def _take_policy_state(self) -> None:
        """A new policy leader carries on with the gate's queue, vetoes, decisions and cooldowns of the last one."""
        try:
            text = self.store.read_keyed(POLICY_SCOPE, "rails")
        except StoreError as exc:
            self._note("policy", "cannot read the policy state: %s" % exc)
            return
        if text is None:
            return
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        for problem in self.server.rails.restore(data)[:10]:
            self.log.warning("policy state: %s", problem)
        self._policy_saved = hash(text)

    def _save_policy_state(self) -> None:
        """Every lead poll, what changed of the gate's state goes to the ``policy`` scope (for the next leader)."""
        text = dumps(self.server.rails.export())
        if hash(text) == self._policy_saved:
            return
        try:
            self.store.write_keyed(POLICY_SCOPE, "rails", text)
            self._policy_saved = hash(text)
        except StoreError as exc:
            self._note("policy", "cannot save the policy state: %s" % exc)

    def _heartbeat(self) -> None:
        roles = ",".join(r for r, on in (("segment", self.segment_leader), ("policy", self.policy_leader)) if on)
        try:
            self.instances = self.store.heartbeat(self.instance, self.segment, roles)
            self.problem = None
        except StoreError as exc:
            self.problem = str(exc)
            self._note("heartbeat", "cannot publish this instance: %s" % exc)

    # -- the job connection -----------------------------------------------------------------------
    def _connect_jobs(self) -> Any:
        """The job connection, listening (on ``BackgroundConnect``'s thread: a database that does not answer never
        holds the loop); StoreError when it cannot be made."""
        import psycopg

        from .store.coord import JobListener

        try:
            conn = psycopg.connect(self.store.conninfo(), autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                                   application_name="powerwaked-jobs")  # fmt: skip
        except psycopg.Error as exc:
            raise self.store._error(exc) from None
        try:
            for statement in SESSION_SETUP:
                conn.execute(statement)
            JobListener(conn, [self.segment, POLICY])
        except psycopg.Error as exc:
            conn.close()
            raise self.store._error(exc) from None
        return conn

    def _ensure_jobs(self, wait: bool = False) -> bool:
        """The job connection is up, or one is being made (``wait``: made now, on this thread, as at start-up)."""
        if self.conn is not None:
            return True
        if wait:
            try:
                conn, error = self._connect_jobs(), None
            except StoreError as exc:
                conn, error = None, exc
        else:
            conn, error = self._jobs_connect.take()
        if error is not None:
            self._note("jobs", "cannot connect for jobs: %s" % error)
        if conn is None:
            self._jobs_connect.start(max(self.poll, RECONNECT_EVERY))
            return False
        from .store.coord import JobQueue

        self.conn, self.queue = conn, JobQueue(conn, self.instance)
        conn.add_notify_handler(self._on_notify)
        try:
            self.server.watch_fd(conn.fileno(), self._on_readable)
            self._listening_fd = conn.fileno()
        except (OSError, ValueError):
            self._listening_fd = None
        return True

    def _drop_jobs(self, exc: Exception) -> None:
        self._note("jobs", "job connection lost: %s" % self.store._error(exc))
        if self._listening_fd is not None:
            self.server.unwatch_fd(self._listening_fd)
            self._listening_fd = None
        try:
            self.conn.close()
        except Exception:  # closing a broken connection: nothing more to do
            pass
        self.conn = self.queue = None

    def _on_notify(self, notify: Any) -> None:
        self._notified = True

    def _on_readable(self, fd: int) -> None:
        """NOTIFYs came: let psycopg read them (its handler sets _notified), claim at once."""
        if self.conn is None:
            return
        try:
            self.conn.execute("SELECT 1")
        except Exception as exc:  # psycopg.Error: the connection is gone
            self._drop_jobs(exc)
            return
        if self._notified:
            self._notified = False
            self._claim()

    def _jobs_poll(self, mono: float) -> None:
        if not self._ensure_jobs():
            return
        try:
            self._expire()
            rows = self.conn.execute(
                "SELECT state, count(*) FROM powerwaked_jobs WHERE state IN ('queued', 'running') GROUP BY state"
            ).fetchall()
            jobs = {"queued": 0, "running": 0}
            jobs.update({str(state): int(count) for state, count in rows})
            # Expired jobs (failed, kept JOBS_KEPT): the partial index on failed jobs keeps this cheap.
            jobs["expired"] = int(self.conn.execute(
                "SELECT count(*) FROM powerwaked_jobs WHERE state = 'failed' AND result LIKE %s", (EXPIRED_LIKE,)
            ).fetchone()[0])  # fmt: skip
            self.jobs = jobs
            if self.policy_leader and mono >= self._next_cleanup:
                self._next_cleanup = mono + 60.0
                self.queue.reap()
                # Older than the clock-skew window: every instance refuses such a message by its time already.
                skew = float(self.server.config.server["max_skew"])
                self.conn.execute("DELETE FROM powerwaked_nonces WHERE ts < %s", (time.time() - 2 * skew,))
                # A done report job (one per report a standby forwarded: millions a day in a large fleet) has no
                # reader: it goes once older than max_skew; any other finished job is kept JOBS_KEPT.
                self.conn.execute(
                    "DELETE FROM powerwaked_jobs WHERE state IN ('done', 'failed') "
                    "AND (finished < now() - make_interval(secs => %s) OR (kind = 'report' AND state = 'done' "
                    "AND finished < now() - make_interval(secs => %s)))",
                    (JOBS_KEPT, skew),
                )
                self.store.forget_gone(GONE_KEPT)
            for job_id in list(self.running):
                if not self.queue.renew(job_id, self.lease):
                    self.log.warning("job %d went to another instance (our lease ran out)", job_id)
                    del self.running[job_id]
        except Exception as exc:  # psycopg.Error
            self._drop_jobs(exc)

    def _expire(self) -> None:
        """Jobs past their deadline are failed, each by one instance, which logs it (at most 1000 a poll)."""
        expired = self.queue.expire()
        if not expired:
            return
        self.counts["expired"] += len(expired)
        for job in expired[:EXPIRED_LOGGED]:
            self.log.warning("job %d (%s of %s for segment %s) expired: no instance of its segment started it in "
                             "time", job["id"], job["kind"][:32], (job["host"] or "-")[:64],
                             job["segment"][:64])  # fmt: skip
        if len(expired) > EXPIRED_LOGGED:
            self.log.warning("%d more jobs expired", len(expired) - EXPIRED_LOGGED)

    # -- submitting -------------------------------------------------------------------------------
    def job_ttl(self, kind: str, payload: Dict[str, Any]) -> float:
        """How long a job of ``kind`` may wait to be started (coord.JOB_TTL; None there: the report's ``max_skew``,
        a wake's or nap's waking timeout); a veto, demand or engine veto expires with its own duration."""
        ttl = JOB_TTL.get(kind, JOB_TTL_DEFAULT)
        if ttl is None and kind == "report":
            ttl = float(self.server.config.server["max_skew"])
        elif ttl is None:
            ttl = float(self.server.registry.waking_timeout)
        own = payload.get({"veto": "ttl", "demand": "ttl", "engine-veto": "veto_for"}.get(kind, ""))
        if isinstance(own, (int, float)) and not isinstance(own, bool) and own > 0:
            ttl = float(own)
        return min(ttl, JOB_TTL_MAX)

    def submit(self, segment: str, kind: str, payload: Dict[str, Any]) -> int:
        """Queue a job (durable once this returns); StoreError when the database refuses."""
        if not self._ensure_jobs():
            raise StoreError("fleet: no database connection for jobs (retrying)")
        payload = {key: value[:_TEXT] if isinstance(value, str) else value for key, value in payload.items()}
        try:
            job_id = self.queue.submit(segment, kind, payload, self.job_ttl(kind, payload))
        except Exception as exc:  # psycopg.Error
            self._drop_jobs(exc)
            raise StoreError("fleet: job not queued: %s" % self.store._error(exc)) from None
        self.counts["submitted"] += 1
        if segment in self._led():
            self._notified = True  # ours: taken at the next tick even if the NOTIFY is read later
        return job_id

    def _led(self) -> List[str]:
        return ([self.segment] if self.segment_leader else []) + ([POLICY] if self.policy_leader else [])

    def claim(self, message: Dict[str, Any]) -> None:
        """A signed API write, once for the whole fleet: the same request sent to another instance (a replay of one
        captured on the way to the first) is refused there.  P.ProtocolError when taken already; StoreError when the
        database cannot tell (the request is refused: it cannot be checked)."""
        if not self.store.claim_nonce(str(message["from"]), str(message["nonce"]), float(message["ts"])):
            raise P.ProtocolError("replayed message (taken by another instance of the fleet)")

    def engine_veto(self, record: Any, message: Dict[str, Any], now: float) -> None:
        """A report's veto (busy engine) at the segment leader: the policy leader's gate must know it.  Sent when it
        starts, ends, or half of the last one forwarded has run out (not with every heartbeat)."""
        if "veto_for" not in message:
            return
        if self.policy_leader:
            self.server.rails.engine_veto(record, message, now)
            return
        seconds = float(message.get("veto_for") or 0.0)
        until = self._vetoes_sent.get(record.name)
        if (seconds > 0 and until is not None and now + seconds / 2 < until) or (seconds <= 0 and until is None):
            return
        payload = {"host": record.name, "veto_for": seconds, "veto_reason": str(message.get("veto_reason") or "")}
        try:
            self.submit(POLICY, "engine-veto", payload)
        except StoreError as exc:
            self._note("veto", "cannot forward the veto of %s: %s" % (record.name, exc))
            return
        if seconds > 0:
            if len(self._vetoes_sent) >= 100000:
                self._vetoes_sent.clear()  # bounded: at worst a few vetoes are sent again
            self._vetoes_sent[record.name] = now + seconds
        else:
            self._vetoes_sent.pop(record.name, None)

    def remote_hold(self, record: Any, hold: Optional[str], policy_hold: str) -> None:
        """A policy (at the policy leader) holds or releases a host another instance writes: its segment's leader
        gets a ``hold`` job (its proxy must not wake the host, and it writes the row).  Until the row shows it,
        our copy keeps the hold (the mirror would take it away) and the job is sent again each JOB_TTL["hold"]."""
        self.holds[record.name] = (hold, policy_hold, float("-inf"))
        _apply_hold(record, hold, policy_hold)
        self._send_holds(time.monotonic())

    def _send_holds(self, mono: float) -> None:
        every = float(JOB_TTL["hold"] or JOB_TTL_DEFAULT)
        for name, (hold, policy_hold, sent) in list(self.holds.items()):
            if mono - sent < every:
                continue
            record = self.server.registry.get(name)
            if record is None:
                del self.holds[name]
                continue
            payload = {"host": name, "hold": hold, "policy": policy_hold}
            try:
                self.submit(self.segment_of(record), "hold", payload)
            except StoreError as exc:
                self._note("hold", "cannot send the hold of %s: %s" % (name, exc))
                return  # the next poll tries again
            self.holds[name] = (hold, policy_hold, mono)

    def _reconcile(self, edited: Dict[str, Any], now: float, mono: float) -> None:
        """After the mirror: a hold whose row shows it is done, else it stays on our copy (and is sent again); a
        waking mark whose row did not change until its job expired is taken back (the wake never went out)."""
        registry = self.server.registry
        for name, (hold, policy_hold, _sent) in list(self.holds.items()):
            record = registry.get(name)
            if record is None:
                del self.holds[name]
            elif registry.owns is not None and registry.owns(record):  # it is ours now: set it here
                del self.holds[name]
                registry.set_hold(record, hold, policy_hold)
            elif record is not edited.get(name):  # its writer's row came
                if (record.hold == hold) if hold is not None else (record.hold != policy_hold):
                    del self.holds[name]
                else:
                    _apply_hold(record, hold, policy_hold)
        if self.holds:
            self._send_holds(mono)
        for name, (marked, before, expires) in list(self.marks.items()):
            record = registry.get(name)
            if record is not marked or record.state != P.WAKING:
                del self.marks[name]  # its row came (the writer's state), or the host is ours now
            elif now > expires:
                del self.marks[name]
                registry.set_state(record, before, "its wake job expired (segment %s)" % record.segment, now)

    def mark_waking(self, record: Any, job: int, cause: str, now: float, expires: float) -> None:
        """A wake sent as a job: the host is seen waking here at once (the policies must not ask again while its
        row catches up); its segment's leader writes the real state, and the mirror brings it back."""
        before = record.state
        self.server.registry.set_state(record, P.WAKING, "%s (job %d)" % (cause, job), now)
        if not (self.server.registry.owns is not None and self.server.registry.owns(record)):
            self.marks[record.name] = (record, before, expires)

    # -- running jobs -----------------------------------------------------------------------------
    def _claim(self) -> None:
        for segment in self._led():
            for _index in range(CLAIMS_PER_TICK):
                try:
                    job = self.queue.claim(segment, self.lease)
                except Exception as exc:  # psycopg.Error
                    self._drop_jobs(exc)
                    return
                if job is None:
                    break
                self._run(job)

    def _run(self, job: Dict[str, Any]) -> None:
        job_id = job["id"]
        try:
            result = self._execute(job)
        except (ValueError, KeyError, TypeError, P.ProtocolError) as exc:
            self.log.warning("job %d (%s) refused: %s", job_id, str(job.get("kind"))[:32], exc)
            self._finish(job_id, {"error": str(exc)[:500]}, failed=True, final=True)  # as it is: no try would do
            return
        if result is not None:  # None: still running (a wake awaiting its confirmation)
            self._finish(job_id, result)

    def _finish(self, job_id: int, result: Dict[str, Any], failed: bool = False, final: bool = False) -> None:
        self.running.pop(job_id, None)
        if self.queue is None:
            return  # the lease runs out and the next leader redoes it
        try:
            dumps(result)
        except (TypeError, ValueError):
            result = {"result": "not JSON"}
        try:
            if failed:
                self.queue.fail(job_id, str(result.get("error")), final)
            else:
                self.queue.done(job_id, result)
        except Exception as exc:  # psycopg.Error
            self._drop_jobs(exc)
            return
        self.counts["failed" if failed else "done"] += 1

    def _execute(self, job: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Do one job; its payload is checked like any input (a database row is no trusted source)."""
        server = self.server
        kind = job["kind"]
        if kind not in JOB_SCHEMAS:
            raise ValueError("unknown job kind %r" % str(kind)[:32])
        payload = JOB_SCHEMAS[kind].check_values(job["payload"])  # ValueError names the field
        if kind == "report":
            message, sender = payload["message"], payload.get("sender")
            address = tuple(sender) if sender is not None else None
            answer = server.accept_report(message, address, forwarded=True)
            if answer is not None and answer.get("forwarded"):  # the host is of another segment: sent on to it
                return {"host": message["from"], "applied": False, "job": answer["job"]}
            return {"host": message["from"], "applied": answer is not None}
        host = _text(payload.get("host"))
        cause = _text(payload.get("cause") or "job %d" % job["id"])
        source = _text(payload.get("source") or "api")
        if kind == "demand":
            return _json(server.api_demand(host, int(payload["more"]), float(payload["ttl"]), source))
        if kind == "veto":
            ttl = payload.get("ttl")
            reason = _text(payload.get("cause") or "")
            answer = server.api_veto(host, source, None if ttl is None else float(ttl), reason, bool(payload["clear"]))
            return _json(answer)
        if kind == "decide":
            return _json(server.api_decide(host, bool(payload["approve"]), source, bool(payload.get("force"))))
        record = server.registry.get(host)
        if record is None:
            raise ValueError("no host %r" % host[:64])
        if kind in SEGMENT_JOBS and self.segment_of(record) != self.segment:  # L2 work, record writes: its writer's
            raise ValueError("host %s is of segment %s, not %s" % (host[:64], self.segment_of(record), self.segment))
        if kind == "engine-veto":
            veto = {"veto_for": float(payload["veto_for"]), "veto_reason": _text(payload.get("veto_reason") or "")}
            server.rails.engine_veto(record, veto, server.clock.wall())
            return {"host": host, "veto_for": veto["veto_for"]}
        if kind == "clear-mark":
            return _json(server.rails.health.clear(record, source, server.clock.wall()))
        if kind == "hold":  # a UPS policy's hold (or its release) on one of our hosts, from the policy leader
            policy_hold, hold = _text(payload["policy"]), payload.get("hold")
            if policy_hold not in {policy.hold for policy, _poller in server.ups} or hold not in (None, policy_hold):
                raise ValueError("no such hold here: %r" % policy_hold[:64])  # the configs of the fleet differ
            server.registry.set_hold(record, hold, policy_hold)
            server.registry.touch(urgent=True)
            return {"host": host, "hold": record.hold}
        if kind == "wake":
            return _json(server.rails.wake(record, cause, _method(payload), source=source))
        if kind == "nap":
            action = _text(payload.get("action") or "") or server.config.nap_action(
                record.groups[0] if record.groups else ""
            )
            return _json(server.rails.nap(record, action, cause, source=source, force=bool(payload.get("force"))))
        if kind == "send-nap":
            wake_at = payload.get("wake_at")
            entry = server.fleet.nap(record, _text(payload.get("action") or "suspend"), cause,
                                     None if wake_at is None else float(wake_at), source=source,
                                     urgent=bool(payload.get("urgent")))  # fmt: skip
            return _json(entry)
        # send-wake: the segment's wake path; the job stays ours (leased) until the wake is confirmed or given up.
        if record.up:
            return {"host": host, "method": "none", "already": record.state}
        entry = server.fleet.wake(record, cause, _method(payload), source=source, test=bool(payload.get("test")))
        if entry.get("method") in (None, "none") or host not in server.fleet.waiting:
            return _json(entry)
        self.running[job["id"]] = {"host": host, "entry": _json(entry)}
        return None

    def _check_running(self) -> None:
        waiting = self.server.fleet.waiting
        for job_id, job in list(self.running.items()):
            record = self.server.registry.get(job["host"])
            if record is None or record.up or job["host"] not in waiting or not self.segment_leader:
                confirmed = record is not None and record.up
                self._finish(job_id, dict(job["entry"], confirmed=confirmed))

    # -- views ------------------------------------------------------------------------------------
    def status(self) -> Dict[str, Any]:
        alive = 3 * self.poll + 10.0  # a heartbeat older than this is a dead instance's
        segments: Dict[str, Dict[str, Any]] = {name: {"leader": None} for name in self.server.config.segments}
        policy = None
        for name, segment, roles, age in self.instances:
            if age > alive:
                continue
            if "segment" in roles.split(","):
                segments.setdefault(segment, {"leader": None})["leader"] = name
            if "policy" in roles.split(","):
                policy = name
        return {
            "instance": self.instance,
            "segment": self.segment,
            "segment_leader": self.segment_leader,
            "policy_leader": self.policy_leader,
            "policy": {"leader": policy},
            "segments": segments,
            "jobs": dict(self.jobs),
            "counts": dict(self.counts),
            "problem": self.problem,
        }

    def register_metrics(self, metrics: Any) -> None:
        from ..prometheus import COUNTER, GAUGE

        metrics.register(
            "powerwaked_fleet_leader",
            GAUGE,
            "1 while this instance holds the lead of role (segment: its segment's writer and proxy; policy).",
            lambda: [({"role": "segment"}, int(self.segment_leader)), ({"role": "policy"}, int(self.policy_leader))],
        )
        metrics.register(
            "powerwaked_fleet_jobs",
            GAUGE,
            "Jobs of the whole fleet by state (queued, running; expired: those failed at their deadline in the last "
            "day), as of the last lead poll.",
            lambda: [({"state": state}, count) for state, count in sorted(self.jobs.items())],
        )
        metrics.register(
            "powerwaked_fleet_job_events_total",
            COUNTER,
            "Jobs this instance submitted, finished (done, failed), found past their deadline (expired) and reports "
            "it forwarded.",
            lambda: [
                ({"event": e}, self.counts.get(e, 0)) for e in ("submitted", "done", "failed", "expired", "forwarded")
            ],  # fmt: skip
        )

    def close(self) -> None:
        """Shutdown: give the leads back (the next instance takes them at its next poll) and close."""
        self._jobs_connect.close()
        if self.conn is not None:
            if self._listening_fd is not None:
                self.server.unwatch_fd(self._listening_fd)
                self._listening_fd = None
            try:
                self.conn.close()
            except Exception:  # shutting down
                pass
            self.conn = self.queue = None
        if self.store is not None:
            self.server.registry.wait_saved()
            if self.segment_leader:
                self.server.registry.save(self.server.clock.wall())
            # Write nothing more as leader: a later snapshot (the daemon's last) owns no rows, and in the segment's
            # scope it would drop them all.
            self.store.rescope(*self.store.fallback)
            if self.policy_leader:
                self._save_policy_state()
            self.segment_leader = self.policy_leader = False
            self.store.resign(SEGMENT_LOCK + self.segment)
            self.store.resign(POLICY_LOCK)

    def _note(self, what: str, message: str) -> None:
        """Log a database trouble once a minute per kind (a database that is down must not flood the log)."""
        mono = time.monotonic()
        if mono - self._logged.get(what, float("-inf")) >= 60.0:
            self._logged[what] = mono
            self.log.error("%s", message)


class RoutedFleet:
    """The policy gate's fleet in fleet mode: a wake or nap that passed the gate goes to the host's segment as a
    job (even our own segment: one path); everything else is the real ``Fleet``'s."""

    def __init__(self, fleet: Any, mode: FleetMode):
        self.fleet = fleet
        self.mode = mode

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fleet, name)

    def wake(
        self, record: Any, cause: str, method: str = "auto", source: str = "", test: bool = False
    ) -> Dict[str, Any]:
        payload = {"host": record.name, "cause": cause, "method": method, "source": source, "test": test}
        return self._send(record, "wake", "send-wake", payload)

    def nap(self, record: Any, action: str, cause: str, wake_at: Optional[float] = None, source: str = "",
            urgent: bool = False) -> Dict[str, Any]:  # fmt: skip
        payload = {"host": record.name, "cause": cause, "action": action, "wake_at": wake_at, "source": source,
                   "urgent": urgent}  # fmt: skip
        return self._send(record, "nap", "send-nap", payload)

    def _send(self, record: Any, what: str, kind: str, payload: Dict[str, Any]) -> Dict[str, Any]:
        segment = self.mode.segment_of(record)
        entry = {"time": self.fleet.clock.wall(), "host": record.name, "what": what, "cause": payload["cause"],
                 "segment": segment, "errors": []}  # fmt: skip
        try:
            entry["job"] = self.mode.submit(segment, kind, payload)
            entry["method"] = "job"
            if what == "wake" and not record.up and record.state != P.WAKING:
                expires = entry["time"] + self.mode.job_ttl(kind, payload)
                self.mode.mark_waking(record, entry["job"], payload["cause"], entry["time"], expires)
        except StoreError as exc:
            entry["method"] = "none"
            entry["errors"] = [str(exc)]
            self.mode.log.warning("cannot send the %s of %s to segment %s: %s", what, record.name, segment, exc)
        return entry


EXPIRED_LIKE = '{"error": "expired%'  # an expired job's result (store/coord.JobQueue.expire)


def _apply_hold(record: Any, hold: Optional[str], policy_hold: str) -> None:
    """Our copy of another writer's record shows the hold we asked for (or its release)."""
    if hold is not None:
        record.hold = hold
    elif record.hold == policy_hold:
        record.hold = None


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a job's text field is not text")
    return value[:_TEXT]


def _method(payload: Dict[str, Any]) -> str:
    method = payload.get("method") or "auto"
    return method if method in ("auto", "wol", "ipmi") else "auto"


def _json(value: Any) -> Dict[str, Any]:
    """A job's result: the answer as it is when it is a JSON object (else wrapped)."""
    if isinstance(value, dict):
        return {key: item for key, item in value.items() if isinstance(key, str)}
    return {"result": value}
