"""The policy gate: every wake and nap request passes these rails on its way to the Fleet.

The sleep proxy, schedules, the cluster policy, the UPS policy and the API
call ``PowerRails.wake`` / ``PowerRails.nap`` (never ``Fleet`` directly),
each with a ``source``.  A request then meets, in this order:

1. **Rules** (``Rule.check(request, now) -> Optional[Refusal]``): anti-flap
   cooldowns, the per-host daily cap on transitions, per-group nap windows
   and vetoes (``DEFAULT_RULES``); ``add_rule`` registers one more.  A
   refusal is recorded with its reason (``/v1/status`` ``policy.refused``);
   a refusal with ``retry_at`` (a wake inside its cooldown) is not dropped
   but waits in the queue until then.
2. **Recommend-only mode** (``[group.X] mode = recommend``): requests of the
   policy sources (schedule, cluster) become *decisions*
   (``GET /v1/decisions``) that do nothing until an admin approves one
   (``POST /v1/decisions/ID/approve``, ``powerwake approve ID``); they
   expire after ``decision_ttl``.
3. **Rate limits** in hosts per minute, for wakes and for naps, fleet-wide
   (``[powerwaked] wake_rate / nap_rate``) and per group (``[group.X]
   wake_rate / nap_rate``): token buckets holding one minute's worth, so a
   burst of 10 wakes at 3/min sends 3 at once and the rest 20 s apart.
   Requests over a limit wait in one FIFO queue (bounded by
   ``queue_size``, one entry per host: a newer request for a queued host
   replaces it, an opposite one cancels it), drained in order every tick.

Who may pass what (a host in several groups obeys every one of them):

==============  =====  ========  =======  ===  =============
rule            proxy  schedule  cluster  ups  api, approved
==============  =====  ========  =======  ===  =============
rate limit      yes    yes       yes      yes  yes
anti-flap       yes    yes       yes      no   no
daily cap       yes    yes       yes      no   no
nap window      -      yes       yes      no   no
veto (naps)     -      yes       yes      no   unless force
hold (wakes)    yes    yes       yes      yes  no
recommend-only  no     yes       yes      no   no
==============  =====  ========  =======  ===  =============

UPS naps on low battery or forced shutdown (LB/FSD, ``urgent``) pass the
nap rate limit too: the load must be shed now.  An admin is never locked
out of waking a host: nothing refuses an API wake, it can only wait its
turn in the rate limit.

State that must survive a restart (queue, decisions, vetoes, per-host
transition times and counts) is saved in the registry's snapshot under
``extras.rails`` and validated on the way back (``QueuedSchema`` ...).
"""

import collections
import logging
import os
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from ..options import Boolean, Choice, Declared, Integer, Option, String
from . import protocol as P
from .config import GroupSection

# Who may ask.  "health" is for the wake-health service's retries and test wakes: bound like the proxy.
SOURCES = ("proxy", "schedule", "cluster", "ups", "api", "approved", "health")
POLICY_SOURCES = ("schedule", "cluster")  # nap windows, recommend-only mode and vetoes govern these
ADMIN_SOURCES = ("api", "approved")  # an admin's explicit act
KINDS = ("wake", "nap")
MAX_VETOES_PER_GROUP = 64
REFUSALS_KEPT = 100
PUBLIC_REASON = "reason_public"  # a refusal's reason for unsigned readers, where it differs (never shown as such)
REFUSAL_LOG_EVERY = 300.0  # seconds: the same refusal of the same host is logged once in this


class Refusal:
    """Why a rule stops a request; with ``retry_at`` the request waits in the queue until then instead."""

    __slots__ = ("reason", "retry_at", "public")

    def __init__(self, reason: str, retry_at: Optional[float] = None, public: Optional[str] = None):
        self.reason = reason
        self.retry_at = retry_at
        self.public = public  # the reason for unsigned readers, where ``reason`` quotes free text (a veto's)

    def __repr__(self) -> str:
        return "Refusal(%r, retry_at=%r)" % (self.reason, self.retry_at)


class Request:
    """One wake or nap request (``record`` is the host's registry record while it is being checked)."""

    __slots__ = (
        "kind", "host", "source", "cause", "method", "action", "wake_at", "urgent", "force", "at", "not_before",
        "waited", "record", "test",
    )  # fmt: skip

    def __init__(
        self,
        kind: str,
        host: str,
        source: str,
        cause: str,
        method: str = "auto",
        action: Optional[str] = None,
        wake_at: Optional[float] = None,
        urgent: bool = False,
        force: bool = False,
        at: float = 0.0,
        test: bool = False,
    ):
        if kind not in KINDS:
            raise ValueError("unknown request kind %r" % kind)
        if source not in SOURCES:
            raise ValueError("unknown request source %r (known: %s)" % (source, ", ".join(SOURCES)))
        self.kind = kind
        self.host = host
        self.source = source
        self.cause = cause
        self.method = method
        self.action = action
        self.wake_at = wake_at
        self.urgent = urgent  # a UPS emergency (LB/FSD): passes the nap rate limit
        self.force = force  # an admin nap that overrides a veto or a failed-wake mark
        self.test = test  # a wake-health test wake (its failure is not retried)
        self.at = at
        self.not_before: Optional[float] = None
        self.waited = False  # it could not run when it came: at its turn, a moot request is dropped
        self.record: Any = None

    @property
    def admin(self) -> bool:
        return self.source in ADMIN_SOURCES

    @property
    def policy(self) -> bool:
        return self.source in POLICY_SOURCES

    def to_dict(self) -> Dict[str, Any]:
        out = {
            "kind": self.kind,
            "host": self.host,
            "source": self.source,
            "cause": self.cause[:256],
            "at": self.at,
        }
        if self.kind == "wake":
            out.update(method=self.method, test=self.test)
        else:
            out.update(action=self.action, wake_at=self.wake_at, urgent=self.urgent, force=self.force)
        if self.not_before is not None:
            out["not_before"] = self.not_before
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Request":
        values = QueuedSchema.check_values(data)
        request = cls(
            values["kind"],
            values["host"],
            values["source"],
            values["cause"],
            values.get("method") or "auto",
            values.get("action"),
            values.get("wake_at"),
            bool(values.get("urgent")),
            bool(values.get("force")),
            values["at"],
            bool(values.get("test")),
        )
        request.not_before = values.get("not_before")
        request.waited = True
        return request


_HOST = String(nonempty=True, max_length=253, pattern=P.NAME_PATTERN, form="a host name")
_CAUSE = String(max_length=256)
_REASON = String(max_length=200)


class QueuedSchema(Declared):
    """A queued request as saved in the registry snapshot."""

    OPTIONS = (
        Option("kind", Choice(*KINDS), required=True, doc="wake or nap."),
        Option("host", _HOST, required=True, doc="The host."),
        Option("source", Choice(*SOURCES), required=True, doc="Who asked."),
        Option("cause", _CAUSE, required=True, doc="Why."),
        Option("at", P.TIME, required=True, doc="When it was asked."),
        Option("method", Choice("auto", "wol", "ipmi"), doc="Wake method."),
        Option("action", Choice(*P.NAP_ACTIONS), doc="Nap action."),
        Option("wake_at", P.TIME, doc="RTC wake alarm."),
        Option("urgent", Boolean(), default=False, doc="A UPS emergency."),
        Option("force", Boolean(), default=False, doc="Overrides a veto or a failed-wake mark."),
        Option("test", Boolean(), default=False, doc="A wake-health test wake."),
        Option("not_before", P.TIME, doc="Waits until then (a cooldown)."),
    )


class DecisionSchema(Declared):
    """A pending decision (recommend-only mode) as saved and as shown by the API."""

    OPTIONS = QueuedSchema.OPTIONS + (
        Option("id", String(nonempty=True, max_length=16, pattern=r"[0-9a-f]{8,16}", form="a decision id"),
               required=True, doc="The decision's id."),
        Option("group", String(max_length=253), default="", doc="The group in recommend-only mode."),
        Option("expires", P.TIME, required=True, doc="When it lapses unapproved."),
    )  # fmt: skip


class VetoSchema(Declared):
    """A veto on a group's naps."""

    OPTIONS = (
        Option("group", String(nonempty=True, max_length=253), required=True, doc="The group."),
        Option("owner", String(nonempty=True, max_length=300), required=True, doc="Who set it (host NAME, api NAME)."),
        Option("until", P.TIME, required=True, doc="When it ends."),
        Option("reason", _REASON, default="", doc="Why."),
        Option("since", P.TIME, default=0.0, doc="When it was set."),
    )  # fmt: skip


class TransitionsSchema(Declared):
    """A host's recent transitions (anti-flap and the daily cap)."""

    OPTIONS = (
        Option("last_wake", P.TIME, doc="Last wake (sent or seen)."),
        Option("last_nap", P.TIME, doc="Last nap (sent or seen)."),
        Option("day", String(max_length=10, pattern=r"\d{4}-\d{2}-\d{2}", form="YYYY-MM-DD"), default="",
               doc="The local day of count."),
        Option("count", Integer(0, 1000000), default=0, doc="Transitions on that day."),
    )  # fmt: skip


def _day(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(now))


class Transitions:
    __slots__ = ("last_wake", "last_nap", "day", "count")

    def __init__(self) -> None:
        self.last_wake: Optional[float] = None
        self.last_nap: Optional[float] = None
        self.day = ""
        self.count = 0

    def today(self, now: float) -> int:
        return self.count if self.day == _day(now) else 0

    def note(self, kind: str, now: float, counted: bool) -> None:
        if kind == "wake":
            self.last_wake = max(now, self.last_wake or 0.0)
        else:
            self.last_nap = max(now, self.last_nap or 0.0)
        if counted:
            day = _day(now)
            self.count = self.count + 1 if self.day == day else 1
            self.day = day

    def last(self, kind: str, now: float) -> Optional[float]:
        """When the host last had a ``kind``; a time ahead of ``now`` (the clock was stepped back) becomes now,
        so a cooldown never runs longer than itself."""
        attribute = "last_wake" if kind == "wake" else "last_nap"
        value = getattr(self, attribute)
        if value is not None and value > now:
            value = now
            setattr(self, attribute, value)
        return value

    def to_dict(self) -> Dict[str, Any]:
        return {"last_wake": self.last_wake, "last_nap": self.last_nap, "day": self.day, "count": self.count}


class Bucket:
    """A token bucket of ``per_minute`` hosts: one minute's worth at once, then paced."""

    def __init__(self, per_minute: float, now: float):
        self.per_minute = float(per_minute)
        self.capacity = max(1.0, self.per_minute)
        self.tokens = self.capacity
        self.at = now

    def ready(self, now: float) -> bool:
        if now > self.at:
            self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.per_minute / 60.0)
        self.at = max(self.at, now)
        return self.tokens >= 1.0

    def take(self) -> None:
        self.tokens -= 1.0

    def to_dict(self) -> Dict[str, Any]:
        return {"per_minute": self.per_minute, "available": int(self.tokens)}


# -- the rules ------------------------------------------------------------------------------------
class Rule:
    """One rule of the gate.  Register more with ``PowerRails.add_rule``.

    ``check(request, now)`` returns None to let the request pass or a
    ``Refusal``.  ``request.record`` is the host's registry record,
    ``request.source`` who asks (``SOURCES``), ``request.admin`` /
    ``request.policy`` / ``request.urgent`` the usual exemptions; each rule
    decides which sources it binds (see the module's table).  Rules run on
    the daemon's loop under its lock: keep them cheap and never raise (an
    exception is logged and counts as no refusal).
    """

    name = "rule"

    def check(self, request: Request, now: float) -> Optional[Refusal]:  # pragma: no cover - interface
        raise NotImplementedError


class AntiFlapRule(Rule):
    """[group] wake_after_nap / nap_after_wake: a host is not cycled faster than its cooldowns."""

    name = "anti-flap"

    def __init__(self, rails: "PowerRails"):
        self.rails = rails

    def check(self, request: Request, now: float) -> Optional[Refusal]:
        if request.admin or request.source == "ups":
            return None
        seen = self.rails.transitions.get(request.host)
        if seen is None:
            return None
        groups = self.rails.group_options(request.record)
        if request.kind == "wake":
            gap = max((float(g["wake_after_nap"]) for g in groups), default=0.0)
            napped = seen.last("nap", now)
            if napped is not None and gap > 0 and now - napped < gap:
                return Refusal("anti-flap: napped %ds ago, wake_after_nap = %ds" % (now - napped, gap), napped + gap)
        else:
            gap = max((float(g["nap_after_wake"]) for g in groups), default=0.0)
            woken = seen.last("wake", now)
            if woken is not None and gap > 0 and now - woken < gap:
                return Refusal("anti-flap: woken %ds ago, nap_after_wake = %ds" % (now - woken, gap))
        return None


class DailyCapRule(Rule):
    """[group] max_transitions: at most this many naps plus wakes of a host per (local) day."""

    name = "daily-cap"

    def __init__(self, rails: "PowerRails"):
        self.rails = rails

    def check(self, request: Request, now: float) -> Optional[Refusal]:
        if request.admin or request.source == "ups":
            return None
        caps = [int(g["max_transitions"]) for g in self.rails.group_options(request.record) if g["max_transitions"]]
        seen = self.rails.transitions.get(request.host)
        if not caps or seen is None:
            return None
        if seen.today(now) >= min(caps):
            return Refusal("daily cap: %d transitions today, max_transitions = %d" % (seen.today(now), min(caps)))
        return None


class NapWindowRule(Rule):
    """[group] nap_from / nap_until: the policies nap a group's hosts only inside its nap window."""

    name = "nap-window"

    def __init__(self, rails: "PowerRails"):
        self.rails = rails

    def check(self, request: Request, now: float) -> Optional[Refusal]:
        if request.kind != "nap" or not request.policy:
            return None
        for group in request.record.groups if request.record is not None else ():
            window = self.rails.windows.get(group)
            if window is not None and not window.open(now):
                return Refusal("outside the nap window of group %s (opens %s)" % (group, _when(window.opens(now))))
        return None


class VetoRule(Rule):
    """A veto (an engine's monitor, an API client) stops its group's naps for a while."""

    name = "veto"

    def __init__(self, rails: "PowerRails"):
        self.rails = rails

    def check(self, request: Request, now: float) -> Optional[Refusal]:
        if request.kind != "nap" or request.source == "ups" or (request.admin and request.force):
            return None
        for group in request.record.groups if request.record is not None else ():
            for veto in self.rails.active_vetoes(group, now):
                why = "group %s vetoed by %s until %s: %%s" % (group, veto["owner"], _when(veto["until"]))
                return Refusal(why % veto["reason"], public=why % _public_veto_reason(veto))
        return None


class WakeHealthRule(Rule):
    """A host whose wake failed (``health.WakeHealth`` marks it) is kept out of napping until a wake succeeds:
    napped again, it might never come back.  UPS shedding and an admin's forced nap pass."""

    name = "wake-health"

    def __init__(self, rails: "PowerRails"):
        self.rails = rails

    def check(self, request: Request, now: float) -> Optional[Refusal]:
        if (
            request.kind != "nap"
            or request.record is None
            or request.source == "ups"
            or (request.admin and request.force)
        ):
            return None
        reason = self.rails.health.nap_refusal(request.record, now)
        return Refusal(reason) if reason is not None else None


class HoldRule(Rule):
    """A host on hold (a UPS policy shed it) is woken by no one but an admin: a wake that waited in the queue
    while the power failed again must not wake it during the outage (the callers check the hold when they ask)."""

    name = "hold"

    def check(self, request: Request, now: float) -> Optional[Refusal]:
        record = request.record
        if request.kind != "wake" or request.admin or record is None or not record.hold:
            return None
        return Refusal("on hold (%s)" % record.hold)


DEFAULT_RULES: Tuple[Callable[["PowerRails"], Rule], ...] = (
    AntiFlapRule, DailyCapRule, NapWindowRule, VetoRule, WakeHealthRule, lambda rails: HoldRule(),
)  # fmt: skip


class NapWindow:
    """Open from each ``nap_from`` event until the next ``nap_until`` event (calendar expressions)."""

    def __init__(self, start: Any, end: Any):
        self.start = start
        self.end = end
        self._valid_until = float("-inf")
        self._valid_from = float("inf")
        self._open = False
        self._opens: Optional[float] = None

    def _compute(self, now: float) -> None:
        if self._valid_from <= now < self._valid_until:
            return
        next_start = self.start.next_after(now)
        next_end = self.end.next_after(now)
        inf = float("inf")
        self._open = (next_end if next_end is not None else inf) < (next_start if next_start is not None else inf)
        self._opens = now if self._open else next_start
        self._valid_from = now
        self._valid_until = min(x for x in (next_start, next_end, inf) if x is not None)

    def open(self, now: float) -> bool:
        self._compute(now)
        return self._open

    def opens(self, now: float) -> Optional[float]:
        self._compute(now)
        return self._opens

    def closes(self, now: float) -> Optional[float]:
        self._compute(now)
        return self._valid_until if self._open and self._valid_until != float("inf") else None


def _when(epoch: Optional[float]) -> str:
    if epoch is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


# -- the gate -------------------------------------------------------------------------------------
class PowerRails:
    """Between every caller and the Fleet: rules, recommend-only mode, rate limits and their queue.

    It offers the interface the policies used of the Fleet (``wake``, ``nap``,
    ``can_nap``, ``registry``, ``config``), with a ``source`` on every request.
    """

    def __init__(self, fleet: Any, config: Any, clock: Any, log: Optional[logging.Logger] = None):
        self.fleet = fleet
        self.registry = fleet.registry
        self.config = config
        self.clock = clock
        self.log = log or logging.getLogger("powerwaked.rails")
        opts = config.server
        self.queue_size = int(opts["queue_size"])
        self.queue_timeout = float(opts["queue_timeout"])
        self.decision_ttl = float(opts["decision_ttl"])
        self.max_decisions = int(opts["max_decisions"])
        self.max_veto = float(opts["max_veto"])
        now = clock.wall()
        self.buckets: Dict[Tuple[str, str], Bucket] = {}
        for kind in KINDS:
            if float(opts[kind + "_rate"]) > 0:
                self.buckets[(kind, "")] = Bucket(opts[kind + "_rate"], now)
            for group, gopts in config.groups.items():
                if float(gopts[kind + "_rate"]) > 0:
                    self.buckets[(kind, group)] = Bucket(gopts[kind + "_rate"], now)
        self.windows: Dict[str, NapWindow] = {
            group: NapWindow(gopts["nap_from"], gopts["nap_until"])
            for group, gopts in config.groups.items()
            if gopts["nap_from"] is not None and gopts["nap_until"] is not None
        }
        self.queue: collections.OrderedDict[str, Request] = collections.OrderedDict()  # host -> request, FIFO
        self.decisions: collections.OrderedDict[str, Dict[str, Any]] = collections.OrderedDict()  # id -> decision
        # (host, kind) -> decision id: one decision per host and kind, found without a walk of them all
        # (a schedule asks again for each of 10,000 hosts every minute; /v1/hosts shows each host's).
        self.decided: Dict[Tuple[str, str], str] = {}
        self.vetoes: Dict[str, Dict[str, Dict[str, Any]]] = {}  # group -> owner -> veto
        self.transitions: Dict[str, Transitions] = {}
        self.refused: Deque[Dict[str, Any]] = collections.deque(maxlen=REFUSALS_KEPT)
        self.counts: Dict[str, int] = collections.Counter()
        self.rules: List[Rule] = [make(self) for make in DEFAULT_RULES]
        # Wake-health retries and test wakes pass the gate too (source "health": bound like the proxy).
        fleet.health.request_wake = lambda record, cause, test=False: self.wake(
            record, cause, source="health", test=test
        )
        self._logged: Dict[Tuple[str, str, str], float] = {}
        self._swept = now
        # No queued request may run before this (a lower bound of their not_before; a ready one counts as -inf):
        # while it lies ahead, a new request overtakes nobody, without a walk of a queue of cooling-down requests.
        self._due = float("inf")
        self._queue_logged = float("-inf")
        self.members = config.group_members()
        self.group_names = set(self.members)  # groups that may be vetoed

    # -- what the policies call -----------------------------------------------------------------
    def add_rule(self, rule: Rule) -> None:
        """Register one more rule (e.g. wake health: a host whose wake failed is kept out of napping)."""
        self.rules.append(rule)

    def can_nap(self, record: Any, action: str) -> bool:
        return bool(self.fleet.can_nap(record, action))

    def wake(self, record: Any, cause: str, method: str = "auto", *, source: str, test: bool = False) -> Dict[str, Any]:
        return self.submit(Request("wake", record.name, source, cause, method=method, at=self.clock.wall(), test=test))

    @property
    def health(self) -> Any:
        """The wake-health service (policies ask it which hosts to leave alone)."""
        return self.fleet.health

    def nap(
        self,
        record: Any,
        action: Optional[str],
        cause: str,
        wake_at: Optional[float] = None,
        *,
        source: str,
        urgent: bool = False,
        force: bool = False,
    ) -> Dict[str, Any]:
        request = Request(
            "nap", record.name, source, cause, action=action, wake_at=wake_at, urgent=urgent, force=force,
            at=self.clock.wall(),
        )  # fmt: skip
        return self.submit(request)

    def withdraw(self, host: str, kind: str, source: str) -> bool:
        """Drop ``host``'s queued ``kind`` request of ``source`` (its reason is gone); True if there was one."""
        queued = self.queue.get(host)
        if queued is None or queued.kind != kind or queued.source != source:
            return False
        del self.queue[host]
        self.counts["cancelled"] += 1
        self.registry.touch()
        return True

    def submit(self, request: Request) -> Dict[str, Any]:
        """Check, then act now, record a decision, queue or refuse; returns what happened (a history entry)."""
        now = self.clock.wall()
        record = request.record = self.registry.get(request.host)
        if record is None:
            return self._refuse(request, "no such host", now)
        refusal = self._check(request, now)
        if refusal is not None and refusal.retry_at is None:
            return self._refuse(request, refusal.reason, now, refusal.public)
        if request.policy and self.recommend_only(record):
            return self._recommend(request, now)
        if refusal is not None:
            request.not_before = refusal.retry_at
        keys = self._bucket_keys(request)
        # Straight through when nothing waits ahead of it (FIFO) and its buckets allow; a request that must
        # wait joins the queue, served every tick (so a burst costs O(1) per request, not a queue scan).
        # (Requests waiting out a cooldown hold no place in line.)
        ahead = (
            keys
            and self._due <= now
            and any(h != request.host and (r.not_before or 0.0) <= now for h, r in self.queue.items())
        )
        if request.not_before is None and not ahead and all(self.buckets[key].ready(now) for key in keys):
            for key in keys:
                self.buckets[key].take()
            superseded = self.queue.pop(request.host, None)
            if superseded is not None:
                self.counts["cancelled" if superseded.kind != request.kind else "merged"] += 1
                self.registry.touch()
            return self._dispatch(request, record, now)
        position = self._enqueue(request)
        request.waited = True
        why = refusal.reason if refusal is not None else "rate limit"
        self.counts["queued"] += 1
        self.log.debug("%s of %s (%s) queued: %s", request.kind, request.host, request.source, why)
        if now - self._queue_logged >= 60.0:
            self._queue_logged = now
            self.log.info("%d requests queued (rate limits, cooldowns); see /v1/status policy.queue", len(self.queue))
        return {
            "time": now,
            "host": request.host,
            "what": "queued",
            "kind": request.kind,
            "source": request.source,
            "cause": request.cause,
            "reason": why,
            "position": position,
        }

    # -- rules ----------------------------------------------------------------------------------
    def _check(self, request: Request, now: float) -> Optional[Refusal]:
        later: Optional[Refusal] = None
        for rule in self.rules:
            try:
                refusal = rule.check(request, now)
            except Exception:  # a broken rule must not stop the fleet (nor let it crash the daemon)
                self.counts["rule_errors"] += 1
                key = ("", "", "rule %s" % getattr(rule, "name", rule))
                if now - self._logged.get(key, float("-inf")) >= REFUSAL_LOG_EVERY:  # once per 5 minutes
                    self._logged[key] = now
                    self.log.exception("rule %s failed on %s (ignored)", getattr(rule, "name", rule), request.host)
                continue
            if refusal is None:
                continue
            if refusal.retry_at is None:
                return refusal
            if later is None or refusal.retry_at > (later.retry_at or 0.0):
                later = refusal
        return later

    def _refuse(self, request: Request, reason: str, now: float, public: Optional[str] = None) -> Dict[str, Any]:
        entry = {
            "time": now,
            "host": request.host,
            "what": "refused",
            "kind": request.kind,
            "source": request.source,
            "cause": request.cause[:256],
            "reason": reason,
        }
        if public is not None:
            entry[PUBLIC_REASON] = public
        self.refused.append(entry)
        self.counts["refused"] += 1
        key = (request.host, request.kind, reason.split(":")[0])
        if now - self._logged.get(key, float("-inf")) >= REFUSAL_LOG_EVERY:
            if len(self._logged) > 10000:
                self._logged.clear()
            self._logged[key] = now
            self.log.info("%s of %s (%s) refused: %s", request.kind, request.host, request.source, reason)
        return _shown(entry, True)

    # -- recommend-only -------------------------------------------------------------------------
    def recommend_only(self, record: Any) -> bool:
        return any(g["mode"] == "recommend" for g in self.group_options(record))

    def _add_decision(self, decision: Dict[str, Any]) -> None:
        self.decisions[decision["id"]] = decision
        self.decided[(decision["host"], decision["kind"])] = decision["id"]

    def _drop_decision(self, decision_id: str) -> Optional[Dict[str, Any]]:
        decision = self.decisions.pop(decision_id, None)
        if decision is not None and self.decided.get((decision["host"], decision["kind"])) == decision_id:
            del self.decided[(decision["host"], decision["kind"])]
        return decision

    def _recommend(self, request: Request, now: float) -> Dict[str, Any]:
        known = self.decisions.get(self.decided.get((request.host, request.kind), ""))
        if known is not None:
            known["cause"] = request.cause[:256]  # the same recommendation, asked again
            return dict(known, what="decision")
        while len(self.decisions) >= self.max_decisions:
            dropped_id = next(iter(self.decisions))
            dropped = self._drop_decision(dropped_id) or {}
            self.counts["decisions_dropped"] += 1
            if now - self._logged.get(("", "", "max_decisions"), float("-inf")) >= REFUSAL_LOG_EVERY:
                # Once per 5 minutes: more hosts in recommend-only mode than max_decisions drop one per request.
                self._logged[("", "", "max_decisions")] = now
                self.log.warning(
                    "decision %s (%s %s) dropped: max_decisions = %d (%d dropped so far; logged once per %ds)",
                    dropped_id, dropped.get("kind"), dropped.get("host"), self.max_decisions,
                    self.counts["decisions_dropped"], REFUSAL_LOG_EVERY,
                )  # fmt: skip
        decision = request.to_dict()
        decision.update(
            id=_new_id(self.decisions),
            group=next((g for g in request.record.groups if self._group(g)["mode"] == "recommend"), ""),
            expires=now + self.decision_ttl,
        )
        self._add_decision(decision)
        self.counts["decisions"] += 1
        self.registry.touch(urgent=True)
        self.log.info("recommend-only: would %s %s (%s); decision %s", request.kind, request.host, request.cause,
                      decision["id"])  # fmt: skip
        return dict(decision, what="decision")

    def decide(self, decision_id: str, approve: bool, who: str, force: bool = False) -> Optional[Dict[str, Any]]:
        """Approve (act as the admin: rate limits still apply) or reject a pending decision; None if unknown."""
        self._expire(self.clock.wall())
        decision = self._drop_decision(decision_id)
        if decision is None:
            return None
        self.registry.touch(urgent=True)
        if not approve:
            self.log.info("decision %s (%s %s) rejected by %s", decision_id, decision["kind"], decision["host"], who)
            return dict(decision, what="rejected", by=who)
        self.log.info("decision %s (%s %s) approved by %s", decision_id, decision["kind"], decision["host"], who)
        request = Request(
            decision["kind"],
            decision["host"],
            "approved",
            "approved by %s: %s" % (who, decision["cause"]),
            method=decision.get("method") or "auto",
            action=decision.get("action"),
            wake_at=decision.get("wake_at"),
            force=force,
            at=self.clock.wall(),
        )
        return dict(self.submit(request), decision=decision_id)

    def list_decisions(self) -> List[Dict[str, Any]]:
        self._expire(self.clock.wall())
        return [dict(d) for d in self.decisions.values()]

    def _expire(self, now: float) -> None:
        """Drop decisions that lapsed, and those whose point is gone (a wake of a host that came up)."""
        for decision_id, decision in list(self.decisions.items()):
            record = self.registry.get(decision["host"])
            if decision["expires"] > now and record is not None and not _moot(decision["kind"], record):
                continue
            self._drop_decision(decision_id)
            self.counts["decisions_expired"] += 1
            self.registry.touch()
            why = "expired unapproved" if decision["expires"] <= now else "dropped: no longer needed"
            self.log.info("decision %s (%s %s) %s", decision_id, decision["kind"], decision["host"], why)

    # -- vetoes ---------------------------------------------------------------------------------
    def veto(self, group: str, owner: str, seconds: float, reason: str, now: float) -> Dict[str, Any]:
        """Stop ``group``'s policy naps for ``seconds`` (at most ``max_veto``); renews the owner's veto."""
        seconds = max(0.0, min(float(seconds), self.max_veto))
        vetoes = self.vetoes.setdefault(group, {})
        if owner not in vetoes and len(vetoes) >= MAX_VETOES_PER_GROUP:
            del vetoes[min(vetoes, key=lambda o: vetoes[o]["until"])]  # the one ending first makes room
        old = vetoes.get(owner)
        veto = {
            "group": group,
            "owner": owner[:300],
            "until": now + seconds,
            "reason": (reason or "no reason given")[:200],
            "since": old["since"] if old else now,
        }
        vetoes[owner] = veto
        if old is None or old["reason"] != veto["reason"]:
            self.log.info("group %s: naps vetoed by %s for %ds: %s", group, owner, seconds, veto["reason"])
            self.registry.touch(urgent=True)
        else:
            self.registry.touch()
        return dict(veto)

    def clear_veto(self, group: str, owner: Optional[str]) -> int:
        """Lift ``owner``'s veto on ``group`` (every veto with owner None); returns how many were lifted."""
        vetoes = self.vetoes.get(group) or {}
        owners = list(vetoes) if owner is None else [o for o in vetoes if o == owner]
        for name in owners:
            del vetoes[name]
            self.log.info("group %s: veto of %s lifted", group, name)
        if owners:
            self.registry.touch(urgent=True)
        return len(owners)

    def engine_veto(self, record: Any, message: Dict[str, Any], now: float) -> None:
        """An engine report's ``veto_for`` / ``veto_reason``: veto (or, with 0, release) the host's groups."""
        if "veto_for" not in message:
            return
        owner = "host %s" % record.name
        seconds = float(message.get("veto_for") or 0.0)
        for group in record.groups:
            if group not in self.group_names:
                continue  # only configured groups (a report cannot grow the table)
            if seconds > 0:
                self.veto(group, owner, seconds, str(message.get("veto_reason") or "engine veto"), now)
            else:
                self.clear_veto(group, owner)

    def active_vetoes(self, group: str, now: float) -> List[Dict[str, Any]]:
        vetoes = self.vetoes.get(group)
        if not vetoes:
            return []
        for owner in [o for o, v in vetoes.items() if v["until"] <= now]:
            del vetoes[owner]
            self.registry.touch()
        return sorted(vetoes.values(), key=lambda v: v["since"])

    # -- transitions ----------------------------------------------------------------------------
    def on_state_change(self, record: Any, old: str, cause: str) -> None:
        """Registry listener: count real transitions (slept -> up is a wake, up -> sleeping a nap)."""
        now = self.clock.wall()
        if record.up and (old in P.SLEEPING_STATES or old == P.WAKING):
            kind = "wake"
        elif record.asleep and old in P.UP_STATES:
            kind = "nap"
        else:
            return
        self.transitions.setdefault(record.name, Transitions()).note(kind, now, counted=True)

    # -- the queue ------------------------------------------------------------------------------
    def _enqueue(self, request: Request) -> Optional[int]:
        """Queue ``request`` (one per host); returns its place in line (1 = next; None: not counted)."""
        queued = self.queue.get(request.host)
        if queued is not None and queued.kind == request.kind:
            # The same wish again: it keeps its place in line; the newer details win, its own cooldown too
            # (the rules just judged it: an admin's wake does not inherit the proxy's anti-flap wait).
            request.at, request.waited = queued.at, queued.waited
            self.queue[request.host] = request
            self._due = min(self._due, request.not_before if request.not_before is not None else float("-inf"))
            # Counting the place walks the queue: only for an admin, who reads the answer.  A schedule asks
            # again for each of its hosts every minute, and at 10,000 queued that walk per request made one
            # tick O(n^2) (seconds long).
            return list(self.queue).index(request.host) + 1 if request.admin else None
        if queued is not None:
            del self.queue[request.host]  # the opposite wish: the older one is void
            self.counts["cancelled"] += 1
        elif len(self.queue) >= self.queue_size:
            # Full: the oldest entry (likely moot by now) makes room; FIFO stays FIFO.
            host, dropped = self.queue.popitem(last=False)
            self._refuse(dropped, "dropped from a full queue (queue_size = %d)" % self.queue_size, self.clock.wall())
        self.queue[request.host] = request
        self._due = min(self._due, request.not_before if request.not_before is not None else float("-inf"))
        self.registry.touch()
        return len(self.queue)

    def drain(self, now: float) -> None:
        """Serve the queue in order, as rules and rate limits allow (every tick).

        A queued request needing a bucket that an earlier one is waiting for waits too (FIFO per
        bucket); one whose turn comes but is moot (a wake of a host that is up, a nap of one that is
        not) is dropped; rules are asked again at its turn (a veto may have come meanwhile).
        """
        if now - self._swept >= 60.0:
            self._swept = now
            self._expire(now)
        if not self.queue:
            return
        blocked: set = set()
        full_kinds: set = set()
        self._due = float("-inf")  # until the walk below ends and counts them again
        for host, request in list(self.queue.items()):
            if len(full_kinds) == len(KINDS):
                return  # every fleet-wide bucket is empty: nothing further can run this time
            if now - request.at > self.queue_timeout:
                del self.queue[host]
                self._refuse(request, "waited longer than queue_timeout (%ds)" % self.queue_timeout, now)
                continue
            if request.kind in full_kinds or (request.not_before is not None and now < request.not_before):
                continue
            record = request.record = self.registry.get(host)
            if record is None or (request.waited and _moot(request.kind, record)):
                del self.queue[host]
                self.counts["moot"] += 1
                continue
            if request.waited:
                refusal = self._check(request, now)
                if refusal is not None:
                    if refusal.retry_at is not None:
                        request.not_before = refusal.retry_at
                        continue
                    del self.queue[host]
                    self._refuse(request, refusal.reason, now, refusal.public)
                    continue
            keys = self._bucket_keys(request)
            waiting = [key for key in keys if key in blocked or not self.buckets[key].ready(now)]
            if waiting:
                # It keeps its place in the buckets it waits for (FIFO per bucket), not in the others.
                blocked.update(waiting)
                if (request.kind, "") in waiting:
                    full_kinds.add(request.kind)
                continue
            for key in keys:
                self.buckets[key].take()
            del self.queue[host]
            self.registry.touch()
            self._dispatch(request, record, now)
        self._due = min((r.not_before if r.not_before is not None else float("-inf") for r in self.queue.values()),
                        default=float("inf"))  # fmt: skip

    def _bucket_keys(self, request: Request) -> List[Tuple[str, str]]:
        if request.kind == "nap" and request.urgent:
            return []  # a UPS emergency sheds now
        keys = [(request.kind, "")] if (request.kind, "") in self.buckets else []
        if request.record is not None:
            keys += [(request.kind, g) for g in request.record.groups if (request.kind, g) in self.buckets]
        return keys

    def _dispatch(self, request: Request, record: Any, now: float) -> Dict[str, Any]:
        cause = request.cause if not request.waited else "%s (waited %ds)" % (request.cause, now - request.at)
        if request.kind == "wake":
            entry = self.fleet.wake(record, cause, request.method, source=request.source, test=request.test)
            sent = entry.get("method") not in (None, "none")
        else:
            action = request.action or self.config.nap_action(record.groups[0] if record.groups else "")
            entry = self.fleet.nap(record, action, cause, request.wake_at, source=request.source, urgent=request.urgent)
            sent = entry.get("method") not in (None, "none")
        if sent:
            # The cooldown starts when we act, before any report confirms the change.
            self.transitions.setdefault(record.name, Transitions()).note(request.kind, now, counted=False)
            self.counts[request.kind + "s"] += 1
        return entry

    def tick(self) -> None:
        self.drain(self.clock.wall())

    # -- views ----------------------------------------------------------------------------------
    def _group(self, name: str) -> Dict[str, Any]:
        """A group's options (the defaults for a group only named by [host.X] groups)."""
        return self.config.groups.get(name) or _group_defaults(GroupSection)

    def group_options(self, record: Any) -> List[Dict[str, Any]]:
        if record is None:
            return []
        return [self.config.groups[g] for g in record.groups if g in self.config.groups]

    def to_dict(self, now: float, full: bool = True) -> Dict[str, Any]:
        """For /v1/status: the rate limits, the queue (its head), vetoes, decisions and recent refusals.

        Not ``full`` (an unsigned reader): without the causes, which may name addresses (the proxy's).
        """
        queued = collections.Counter(r.kind for r in self.queue.values())
        self._expire(now)
        for bucket in self.buckets.values():
            bucket.ready(now)  # refills it: "available" as of now
        return {
            "rates": {"%s %s" % (kind, group or "fleet"): b.to_dict() for (kind, group), b in self.buckets.items()},
            "queue": {
                "length": len(self.queue),
                "wake": queued.get("wake", 0),
                "nap": queued.get("nap", 0),
                "max": self.queue_size,
                "head": [_shown(r.to_dict(), full) for r in list(self.queue.values())[:20]],
            },
            "decisions": len(self.decisions),
            "vetoes": [_veto_shown(v, full) for group in sorted(self.vetoes) for v in self.active_vetoes(group, now)],
            "refused": [_shown(r, full) for r in list(self.refused)[-20:]],
            "counts": dict(self.counts),
        }

    def group_view(self, group: str, now: float, full: bool = True) -> Dict[str, Any]:
        opts = self._group(group)
        window = self.windows.get(group)
        vetoes = self.active_vetoes(group, now)
        # By the group's members, not by a walk of the queue: GET /v1/groups asks this of every group.
        queued = [r for r in (self.queue.get(name) for name in self.members.get(group, ())) if r is not None]
        return {
            "mode": opts["mode"],
            "queued": {kind: sum(1 for r in queued if r.kind == kind) for kind in KINDS},
            "nap_window": None if window is None else {
                "open": window.open(now), "opens": window.opens(now), "closes": window.closes(now),
            },
            "vetoed": bool(vetoes),
            "vetoes": [_veto_shown(v, full) for v in vetoes],
            "decisions": sum(
                1
                for d in (self._decision_of(name, kind) for name in self.members.get(group, ()) for kind in KINDS)
                if d is not None and d.get("group") == group
            ),
        }  # fmt: skip

    def _decision_of(self, host: str, kind: str) -> Optional[Dict[str, Any]]:
        return self.decisions.get(self.decided.get((host, kind), ""))

    def host_view(self, name: str, now: float, full: bool = True) -> Dict[str, Any]:
        """For /v1/hosts/NAME (and so power_info): this host's transitions, queued request, decisions, vetoes."""
        seen = self.transitions.get(name)
        queued = self.queue.get(name)
        record = self.registry.get(name)
        return {
            "last_wake": seen.last_wake if seen else None,
            "last_nap": seen.last_nap if seen else None,
            "transitions_today": seen.today(now) if seen else 0,
            "queued": _shown(queued.to_dict(), full) if queued is not None else None,
            "decisions": [
                {"id": d["id"], "kind": d["kind"], "expires": d["expires"]}
                for d in (self._decision_of(name, kind) for kind in KINDS)
                if d is not None
            ],
            "vetoes": [
                _veto_shown(v, full)
                for g in (record.groups if record is not None else ())
                for v in self.active_vetoes(g, now)
            ],
        }

    # -- persistence (the registry snapshot's extras.rails) -------------------------------------
    def export(self) -> Dict[str, Any]:
        """What must survive a restart, small: called by the registry when it takes a snapshot."""
        return {
            "queue": [r.to_dict() for r in self.queue.values()],
            "decisions": [dict(d) for d in self.decisions.values()],
            "vetoes": [dict(v) for group in self.vetoes.values() for v in group.values()],
            "hosts": {name: t.to_dict() for name, t in self.transitions.items()},
        }

    def restore(self, data: Any) -> List[str]:
        """Take back an ``export`` (validated entry by entry; bad entries are dropped and named)."""
        problems: List[str] = []
        if not isinstance(data, dict):
            return ["policy state: not an object (ignored)"] if data is not None else []
        now = self.clock.wall()
        for item in _items(data.get("queue"), self.queue_size):
            try:
                request = Request.from_dict(item)
            except ValueError as exc:
                problems.append("a queued request was dropped: %s" % exc)
                continue
            if self.registry.get(request.host) is not None:
                # Times judged against this clock: none ahead of now (queue_timeout must be able to end it), and
                # the cooldown is asked of the rules again at its turn (a saved one could lie years ahead).
                request.at, request.not_before = min(request.at, now), None
                self.queue[request.host] = request
                self._due = float("-inf")
        for item in _items(data.get("decisions"), self.max_decisions):
            try:
                decision = DecisionSchema.check_values(item)
            except ValueError as exc:
                problems.append("a decision was dropped: %s" % exc)
                continue
            known = self._decision_of(decision["host"], decision["kind"])
            if decision["expires"] > now and self.registry.get(decision["host"]) is not None and known is None:
                decision["expires"] = min(decision["expires"], now + self.decision_ttl)  # it lapses as a new one would
                self._add_decision(dict(decision))
        for item in _items(data.get("vetoes"), 100000):
            try:
                veto = VetoSchema.check_values(item)
            except ValueError as exc:
                problems.append("a veto was dropped: %s" % exc)
                continue
            vetoes = self.vetoes.get(veto["group"]) or {}
            if len(vetoes) >= MAX_VETOES_PER_GROUP and veto["owner"] not in vetoes:
                problems.append("a veto on group %s was dropped: more than %d" % (veto["group"], MAX_VETOES_PER_GROUP))
                continue
            if veto["until"] > now and veto["group"] in self.group_names:
                veto["until"] = min(veto["until"], now + self.max_veto)
                self.vetoes.setdefault(veto["group"], {})[veto["owner"]] = dict(veto, since=veto.get("since", now))
        hosts = data.get("hosts")
        for name, item in list(hosts.items())[: len(self.registry) + 1] if isinstance(hosts, dict) else ():
            try:
                values = TransitionsSchema.check_values(item)
            except ValueError as exc:
                problems.append("transitions of %s dropped: %s" % (str(name)[:64], exc))
                continue
            if isinstance(name, str) and self.registry.get(name) is not None:
                seen = self.transitions[name] = Transitions()
                seen.last_wake, seen.last_nap = values.get("last_wake"), values.get("last_nap")
                seen.day, seen.count = values.get("day", ""), values.get("count", 0)
        for problem in problems[:10]:
            self.log.error("policy state: %s", problem)
        return problems


def _shown(entry: Dict[str, Any], full: bool) -> Dict[str, Any]:
    """A queued request or a refusal as a reader sees it: unsigned, without the cause (it may name addresses) and
    with the public form of the reason (a veto's reason is free text: an engine's monitor names its clients)."""
    shown = {key: value for key, value in entry.items() if key != PUBLIC_REASON and (full or key != "cause")}
    if not full and PUBLIC_REASON in entry:
        shown["reason"] = entry[PUBLIC_REASON]
    return shown


def _veto_shown(veto: Dict[str, Any], full: bool) -> Dict[str, Any]:
    """A veto as a reader sees it: unsigned, an engine's reason only up to its monitor's name."""
    return veto if full else dict(veto, reason=_public_veto_reason(veto))


def _public_veto_reason(veto: Dict[str, Any]) -> str:
    """An engine's veto reason is "monitor NAME: what it saw", and what it saw may name a client's address
    ("1 established connection on port 22 (from 192.0.2.7)"): unsigned readers get "monitor NAME".  An API
    client's reason is an admin's own text, shown as it is."""
    reason = str(veto.get("reason") or "")
    return reason.split(":", maxsplit=1)[0] if str(veto.get("owner") or "").startswith("host ") else reason


def _moot(kind: str, record: Any) -> bool:
    """A wake of a host that is up (or waking), a nap of one that is not up: nothing left to do."""
    if kind == "wake":
        return bool(record.up or record.state == P.WAKING)
    return not (record.up or record.state in (P.WAKING, P.UNKNOWN))


def _items(value: Any, limit: int) -> List[Any]:
    return list(value[:limit]) if isinstance(value, list) else []


def _new_id(taken: Dict[str, Any]) -> str:
    while True:
        candidate = os.urandom(4).hex()
        if candidate not in taken:
            return candidate


def _group_defaults(section: Any) -> Dict[str, Any]:
    return {opt.name: opt.default for opt in section.OPTIONS}
