"""The nap state machine: pure logic, clock-injected, no I/O.

The daemon feeds it activity, ticks, action results and resumes; it answers
with ``Decision`` objects (warn, cancel, apply/restore powersave, act) that
the daemon carries out.  Everything here can be driven by a ``FakeClock``.

States: ``awake`` → ``grace`` (a warning is out for the next stage) →
``napping`` (a stage is in effect: powersave applied, or a command action ran).
Rules:

* Idle time is measured on CLOCK_BOOTTIME (monotonic, counts suspended time)
  from the last activity.  Stages fire in order of ``after``; when several are
  due at once (e.g. after a long scheduled sleep) the highest due one fires.
* A stage whose action is denied (hardware verdict) or held (next scheduled
  wake closer than ``min_sleep``) is skipped: the next allowed stage takes
  over at its own time, and ``snapshot()`` lists the skipped stage and why.
* Any activity cancels a grace period and undoes powersave at once.
* Powersave is restored before any other action runs (a host must not sleep
  or power off with CPUs offline); if that action fails, powersave comes back.
* Nothing fires during the settle period after start, resume and ``wake``.
* After a resume that was not ours (WoL, power button, IPMI) idleness starts
  over; after a resume at our own RTC alarm it continues, so the host goes
  back to sleep once the scheduled job has run and the settle period is over.
"""

from typing import Any, Dict, List, Optional, Sequence, Set

from .actions import POWERSAVE
from .clock import Clock
from .config import Stage

AWAKE = "awake"
GRACE = "grace"
NAPPING = "napping"


class Decision:
    """One thing for the daemon to do.

    kinds: ``warn`` (grace warning for ``stage``, fires in ``in_seconds``),
    ``cancel`` (a warned stage was called off), ``apply`` / ``restore``
    (powersave), ``act`` (run ``stage.action``; report back with
    ``NapMachine.action_finished``).
    """

    __slots__ = ("kind", "stage", "reason", "in_seconds")

    def __init__(self, kind: str, stage: Stage, reason: str = "", in_seconds: float = 0.0):
        self.kind = kind
        self.stage = stage
        self.reason = reason
        self.in_seconds = in_seconds

    @property
    def action(self) -> str:
        return self.stage.action

    def __repr__(self) -> str:
        return "Decision(%s, stage %d %s)" % (self.kind, self.stage.index, self.stage.action)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Decision):
            return NotImplemented
        return (self.kind, self.stage.index, self.stage.action) == (other.kind, other.stage.index, other.stage.action)

    def __hash__(self) -> int:
        return hash((self.kind, self.stage.index, self.stage.action))


class NapMachine:
    def __init__(
        self,
        stages: Sequence[Stage],
        clock: Clock,
        settle: float = 120.0,
        min_sleep: float = 1200.0,
        denied: Optional[Dict[str, str]] = None,
    ):
        self.stages = sorted(stages, key=lambda s: s.index)
        self.clock = clock
        self.settle = settle
        self.min_sleep = min_sleep
        self.denied: Dict[str, str] = dict(denied or {})
        now = clock.boottime()
        self._idle_since = now
        self._last_activity_wall: Optional[float] = None
        self._last_reason: Optional[str] = None
        self._settle_until = now + settle
        self._done: Set[int] = set()
        self._failed: Dict[int, str] = {}
        self._powersave: Optional[Stage] = None
        self._effect: Optional[Stage] = None
        self._effect_since = 0.0
        self._grace: Optional[Stage] = None
        self._grace_fire = 0.0
        self._pending: Optional[Stage] = None
        self._active_during_pending = False

    # inputs ----------------------------------------------------------------
    def activity(self, reason: str) -> List[Decision]:
        """A monitor saw activity now."""
        self._idle_since = self.clock.boottime()
        self._last_activity_wall = self.clock.wall()
        self._last_reason = reason
        if self._pending is not None:
            self._active_during_pending = True
            return []  # the running action reports back first, then the host is awake
        return self._back_to_awake("activity: %s" % reason)

    def wake(self, reason: str = "wake requested") -> List[Decision]:
        """``powernap wake`` / SIGUSR2: counts as activity and starts a settle period."""
        decisions = self.activity(reason)
        self._settle_until = self.clock.boottime() + self.settle
        return decisions

    def tick(self, next_wake: Optional[float] = None) -> List[Decision]:
        """Called every interval (and after events); ``next_wake`` is the next scheduled wake (epoch)."""
        if self._pending is not None:
            return []
        now = self.clock.boottime()
        if now < self._settle_until:
            return []
        stage = self._candidate(now, next_wake)
        if stage is None:
            if self._grace is not None:  # e.g. now held by min_sleep: call the warning off
                grace, self._grace = self._grace, None
                return [Decision("cancel", grace, "no longer due")]
            return []
        if self._grace is not stage:
            due = self._idle_since + stage.after
            if stage.warn > 0:
                self._grace = stage
                self._grace_fire = max(due, now + stage.warn)
                idle = human_duration(now - self._idle_since)
                return [Decision("warn", stage, "idle for %s" % idle, self._grace_fire - now)]
            if now < due:
                return []
        elif now < self._grace_fire:
            return []
        return self._fire(stage, "idle for %s" % human_duration(now - self._idle_since))

    def nap_now(self, action: Optional[str] = None) -> List[Decision]:
        """``powernap now [ACTION]`` / SIGUSR1: fire the next stage (or ``action``) at once, no grace."""
        return self._fire(self.now_stage(action), "requested")

    def now_stage(self, action: Optional[str] = None) -> Stage:
        """The stage ``nap_now(action)`` would fire; raises ValueError when there is none (changes nothing)."""
        if self._pending is not None:
            raise ValueError("stage %d (%s) is still running" % (self._pending.index, self._pending.action))
        if action is None:
            current = self._effect.index if self._effect is not None else 0
            stage = next((s for s in self.stages if s.index > current and s.action not in self.denied), None)
            if stage is None:
                raise ValueError(
                    "no further stage to go to (configured: %s)"
                    % (", ".join("%d %s" % (s.index, s.action) for s in self.stages) or "none")
                )
        else:
            if action in self.denied:
                raise ValueError("%s is not allowed on this host: %s" % (action, self.denied[action]))
            # A configured stage keeps its index (and command); anything else is stage 0, "on request".
            stage = next((s for s in self.stages if s.action == action), None) or Stage(0, 0.0, action, 0.0)
        if self._powersave is not None and stage.action == POWERSAVE:
            raise ValueError("powersave is already in effect")
        return stage

    def action_finished(self, ok: bool, detail: str = "") -> List[Decision]:
        """The command action from the last ``act`` decision ended."""
        stage, self._pending = self._pending, None
        if stage is None:
            return []
        if self._active_during_pending:
            # Someone became active while the command ran: whatever it did, the host is in use now.
            return self._back_to_awake("activity during %s" % stage.action)
        if not ok:
            self._failed[stage.index] = detail or "failed"
            self._effect = None
            # Powersave was restored before this action: let it apply again on the next tick.
            self._done = {i for i in self._done if i >= stage.index or self._stage(i).action != POWERSAVE}
        return []

    def powersave_lost(self) -> None:
        """The daemon restored powersave on its own (shutdown, reload)."""
        self._powersave = None
        if self._effect is not None and self._effect.action == POWERSAVE:
            self._effect = None
        self._done = {i for i in self._done if self._stage(i).action != POWERSAVE}

    def resumed(self, scheduled: bool, slept: float = 0.0) -> List[Decision]:
        """The host came back from sleep (or the daemon was frozen).  ``scheduled``: at our own RTC alarm."""
        now = self.clock.boottime()
        decisions = self._back_to_awake("resumed after %s" % human_duration(slept))
        self._pending = None
        self._settle_until = now + self.settle
        if not scheduled:
            self._idle_since = now
            self._last_activity_wall = self.clock.wall()
            self._last_reason = "resumed from sleep"
        return decisions

    def carry_over(self, old: "NapMachine") -> None:
        """After a reload: keep the idle history, settle period and powersave, start the other stages afresh."""
        self._idle_since = old._idle_since
        self._last_activity_wall = old._last_activity_wall
        self._last_reason = old._last_reason
        self._settle_until = old._settle_until
        # Powersave stays in effect across a reload when the new stages still have it (the daemon keeps
        # the tweaks that did not change); its stage and the ones before it count as done.
        stage = next((s for s in self.stages if s.action == POWERSAVE), None)
        if old._powersave is not None and stage is not None and old._pending is None:
            self._powersave = stage
            self._done = {s.index for s in self.stages if s.index <= stage.index}
            if old._effect is old._powersave:
                self._effect = stage
                self._effect_since = old._effect_since

    def set_denied(self, denied: Dict[str, str]) -> None:
        self.denied = dict(denied)

    # outputs ---------------------------------------------------------------
    @property
    def state(self) -> str:
        if self._grace is not None:
            return GRACE
        if self._effect is not None or self._pending is not None:
            return NAPPING
        return AWAKE

    @property
    def powersave_active(self) -> bool:
        return self._powersave is not None

    def deadline(self) -> Optional[float]:
        """Boottime at which the next tick can change something (lets the loop sleep precisely)."""
        upcoming = self._upcoming(self.clock.boottime(), None)
        return upcoming[0] if upcoming else None

    def snapshot(self, next_wake: Optional[float] = None) -> Dict[str, Any]:
        """The machine's part of ``powernap status --json``."""
        now = self.clock.boottime()
        wall = self.clock.wall()
        stage = None
        if self._effect is not None:
            stage = {
                "index": self._effect.index,
                "action": self._effect.action,
                "since": wall - (now - self._effect_since),
            }
        upcoming = self._upcoming(now, next_wake)
        next_action = None
        if upcoming:
            fire, upcoming_stage = upcoming
            next_action = {
                "stage": upcoming_stage.index,
                "action": upcoming_stage.action,
                "in_seconds": round(max(0.0, fire - now), 3),
            }
        skipped = []
        for s in self.stages:
            if s.index in self._failed:
                skipped.append({"stage": s.index, "action": s.action, "reason": "failed: " + self._failed[s.index]})
            elif s.index not in self._done:
                why = self._blocked(s, next_wake)
                if why:
                    skipped.append({"stage": s.index, "action": s.action, "reason": why})
        return {
            "state": self.state,
            "stage": stage,
            "idle_seconds": round(now - self._idle_since, 3),
            "settle_remaining": round(max(0.0, self._settle_until - now), 3),
            "next_action": next_action,
            "grace": None
            if self._grace is None
            else {
                "stage": self._grace.index,
                "action": self._grace.action,
                "in_seconds": round(max(0.0, self._grace_fire - now), 3),
            },
            "running": None
            if self._pending is None
            else {"stage": self._pending.index, "action": self._pending.action},
            "last_activity": self._last_activity_wall,
            "last_activity_reason": self._last_reason,
            "skipped": skipped,
        }

    # internals -------------------------------------------------------------
    def _stage(self, index: int) -> Stage:
        return next((s for s in self.stages if s.index == index), Stage(index, 0.0, "", 0.0))

    def _blocked(self, stage: Stage, next_wake: Optional[float]) -> Optional[str]:
        if stage.action in self.denied:
            return "%s denied: %s" % (stage.action, self.denied[stage.action])
        if stage.action != POWERSAVE and next_wake is not None:
            until = next_wake - self.clock.wall()
            if until < self.min_sleep:
                return "held: next scheduled wake in %s, closer than min_sleep %s" % (
                    human_duration(max(0.0, until)),
                    human_duration(self.min_sleep),
                )
        return None

    def _candidate(self, now: float, next_wake: Optional[float]) -> Optional[Stage]:
        """The highest stage not yet done, not blocked, whose warning (or firing) time has come."""
        for stage in reversed(self.stages):
            if stage.index in self._done or self._blocked(stage, next_wake):
                continue
            if now >= self._idle_since + stage.after - stage.warn:
                return stage
        return None

    def _upcoming(self, now: float, next_wake: Optional[float]):
        """(boottime, stage) of the next firing, or None."""
        if self._pending is not None:
            return None
        best = None
        for stage in self.stages:
            if stage.index in self._done or self._blocked(stage, next_wake):
                continue
            if stage is self._grace:
                fire = self._grace_fire
            else:
                warn_start = max(self._idle_since + stage.after - stage.warn, self._settle_until, now)
                fire = max(self._idle_since + stage.after, warn_start + stage.warn)
            if best is None or fire < best[0] or (fire == best[0] and stage.index > best[1].index):
                best = (fire, stage)
        return best

    def _fire(self, stage: Stage, reason: str) -> List[Decision]:
        now = self.clock.boottime()
        self._grace = None
        self._done.update(s.index for s in self.stages if s.index <= stage.index)
        self._failed.pop(stage.index, None)
        self._effect = stage
        self._effect_since = now
        if stage.action == POWERSAVE:
            self._powersave = stage
            return [Decision("apply", stage, reason)]
        decisions = []
        if self._powersave is not None:
            decisions.append(Decision("restore", self._powersave, "before %s" % stage.action))
            self._powersave = None
        self._pending = stage
        self._active_during_pending = False
        decisions.append(Decision("act", stage, reason))
        return decisions

    def _back_to_awake(self, why: str) -> List[Decision]:
        decisions = []
        if self._grace is not None:
            decisions.append(Decision("cancel", self._grace, why))
            self._grace = None
        if self._powersave is not None:
            decisions.append(Decision("restore", self._powersave, why))
            self._powersave = None
        self._effect = None
        self._done.clear()
        self._failed.clear()
        return decisions


def held_awake_by(status: Dict[str, Any]) -> List[str]:
    """From a status dict: the monitors that hold the host awake now (failing ones count unless ignored).

    While there are any, no stage is "in N seconds": each poll resets the idle time.
    """
    if status.get("state") != AWAKE:
        return []
    return [m["name"] for m in status.get("monitors", []) if m.get("active")]


def stage_after(status: Dict[str, Any], index: int) -> float:
    """From a status dict: the idle time after which stage ``index`` fires."""
    return next((float(s["after"]) for s in status.get("stages", []) if s["index"] == index), 0.0)


def human_duration(seconds: float) -> str:
    """90 → '90s', 754 → '12m34s', 9000 → '2h30m'."""
    seconds = int(round(seconds))
    if seconds < 120:
        return "%ds" % seconds
    if seconds < 7200:
        return "%dm%02ds" % divmod(seconds, 60)
    hours, rest = divmod(seconds, 3600)
    return "%dh%02dm" % (hours, rest // 60)
