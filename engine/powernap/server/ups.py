"""UPS policy over NUT: shed groups on battery, bring them back when mains returns.

On battery (``OB``) for longer than ``after``: nap (or power off) the hosts
of the listed groups, least important first, one group per ``step``.  Low
battery (``LB``) or forced shutdown (``FSD``): every remaining group at
once.  Shed hosts are put on *hold*, so neither the sleep proxy nor a
schedule or cluster policy wakes them while the power is out.  Back on
mains (``OL``) with ``battery.charge`` at or above ``resume_charge`` (or,
when the UPS does not report a charge, after ``resume_delay``): the groups
come back in reverse order, one per ``step``.  An unknown UPS state (upsd
unreachable, ``ERR DATA-STALE``, ``ERR DRIVER-NOT-CONNECTED``) takes no
action at all: the policy waits where it is.

Requests go through the policy gate (``rails.PowerRails``, source ``ups``):
UPS naps pass its anti-flap, daily-cap, nap-window and veto rules, and LB/FSD
naps (``urgent``) its nap rate limit too (so do on-battery naps still queued
when LB/FSD comes); wakes back on mains are paced by
the wake rate limit (the surge the limit exists for).

The NUT protocol client is the nut monitor's (``powernap.monitors.nut``),
the one home of that protocol in the engine.  upsd is asked from a
background thread so that a slow upsd never stalls the sleep proxy.
"""

import threading
from typing import Any, Dict, List, Optional, Tuple

from ..errors import MonitorError
from ..monitors.nut import UNKNOWN_STATE_ERRORS, NutClient
from . import protocol as P

Reading = Tuple[Optional[List[str]], Optional[float], str]  # (status tokens or None if unknown, charge, detail)


def read_ups(host: str, port: int, ups: str, username: str, password: str, timeout: float) -> Reading:
    """``ups.status`` tokens and ``battery.charge`` from upsd; tokens None when the state is unknown."""
    try:
        client = NutClient(host, port, timeout)
    except OSError as exc:
        return None, None, "cannot reach upsd at %s:%d: %s" % (host, port, exc)
    try:
        for verb, value in (("USERNAME", username), ("PASSWORD", password)):
            if value:
                reply = client.command("%s %s" % (verb, value))
                if not reply.startswith("OK"):
                    return None, None, "upsd refused %s" % verb
        values: Dict[str, Optional[str]] = {}
        for var in ("ups.status", "battery.charge"):
            reply = client.command("GET VAR %s %s" % (ups, var))
            prefix = "VAR %s %s " % (ups, var)
            if reply.startswith(prefix):
                values[var] = reply[len(prefix) :].strip().strip('"')
            elif var == "ups.status":
                code = reply[4:].strip() if reply.startswith("ERR ") else reply[:60]
                why = "state unknown" if code in UNKNOWN_STATE_ERRORS else "error"
                return None, None, "UPS %s %s (%s)" % (ups, why, code)
    except (OSError, MonitorError) as exc:
        return None, None, "talking to upsd: %s" % exc
    finally:
        client.close()
    charge: Optional[float]
    try:
        charge = float(values["battery.charge"]) if values.get("battery.charge") else None
    except ValueError:
        charge = None
    if charge is not None and not 0.0 <= charge <= 100.0:
        charge = None  # NaN, infinity or nonsense: as if the UPS did not report a charge
    return str(values["ups.status"]).split(), charge, "ok"


class UpsPoller:
    """Asks upsd every ``poll`` seconds on a daemon thread; ``latest`` is the last reading."""

    def __init__(self, opts: Dict[str, Any], log: Any):
        self.opts = opts
        self.log = log
        self.latest: Optional[Reading] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ups-poll", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        opts = self.opts
        while not self._stop.is_set():
            try:
                self.latest = read_ups(
                    opts["host"], opts["port"], opts["ups"], opts["username"], opts["password"], opts["timeout"]
                )
            except Exception as exc:  # a dead poller would leave the last reading standing forever
                self.log.warning("UPS poll failed: %s", exc)
                self.latest = (None, None, "poll failed: %s" % type(exc).__name__)
            self._stop.wait(opts["poll"])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=float(self.opts["timeout"]) + 1.0)


class UpsPolicy:
    """The decisions, fed one reading at a time (``observe``) on the daemon's loop."""

    def __init__(self, name: str, opts: Dict[str, Any], fleet: Any, members: Dict[str, List[str]], log: Any):
        self.name = name
        self.opts = opts
        self.fleet = fleet
        self.registry = fleet.registry
        self.members = members
        self.log = log
        self.hold = "ups %s" % name
        self.state = "unknown"
        self.detail = "no reading yet"
        self.charge: Optional[float] = None
        self._last_status: Optional[str] = None
        self.on_battery_since: Optional[float] = None
        self.online_since: Optional[float] = None
        self.last_step: Optional[float] = None
        self.shed: List[str] = []
        self.restore_shed()

    def restore_shed(self) -> None:
        """Groups shed and not yet back, in shedding order: rebuilt from the registry's holds after a restart (and
        in fleet mode by the next policy leader, from the rows)."""
        self.shed = [g for g in self.opts["groups"] if any(r.hold == self.hold for r in self._hosts(g))]

    def _hosts(self, group: str) -> List[Any]:
        return [r for r in (self.registry.get(n) for n in self.members.get(group, ())) if r is not None]

    def observe(self, reading: Optional[Reading], now: float) -> None:
        if reading is None:
            return
        tokens, charge, detail = reading
        status = " ".join(tokens) if tokens is not None else "unknown"
        if status != self._last_status:
            self._last_status = status
            self.log.info("UPS %s: %s (%s)", self.name, status, detail)
        self.detail = detail
        if tokens is None:
            self.state = "unknown"  # no action on an unknown state, in either direction
            return
        self.charge = charge
        if "FSD" in tokens or "LB" in tokens:
            if self.state != "critical":
                self._hurry(now, "UPS %s %s" % (self.name, " ".join(tokens)))
            self.state = "critical"
            self.online_since = None
            self.on_battery_since = self.on_battery_since or now
            while len(self.shed) < len(self.opts["groups"]):
                self._shed_next(now, "UPS %s %s" % (self.name, " ".join(tokens)), urgent=True)
        elif "OB" in tokens:
            self.state = "on-battery"
            self.online_since = None
            if self.on_battery_since is None:
                self.on_battery_since = now
                self.log.warning("UPS %s on battery", self.name)
            due = now - self.on_battery_since >= self.opts["after"] and len(self.shed) < len(self.opts["groups"])
            stepped = not self.shed or self.last_step is None or now - self.last_step >= self.opts["step"]
            if due and stepped:
                self._shed_next(now, "UPS %s on battery for %ds" % (self.name, now - self.on_battery_since))
        elif "OL" in tokens:
            self.state = "online"
            self.on_battery_since = None
            if self.online_since is None:
                self.online_since = now
            if (
                self.shed
                and self._recharged(now)
                and (self.last_step is None or now - self.last_step >= self.opts["step"])
            ):
                self._restore_last(now)

    def _recharged(self, now: float) -> bool:
        if self.charge is not None:
            return self.charge >= self.opts["resume_charge"]
        return self.online_since is not None and now - self.online_since >= self.opts["resume_delay"]

    def _shed_next(self, now: float, cause: str, urgent: bool = False) -> None:
        group = next(g for g in self.opts["groups"] if g not in self.shed)
        self.shed.append(group)
        self.last_step = now
        action = "poweroff" if self.opts["action"] == "poweroff" else self.fleet.config.nap_action(group)
        self.log.warning("UPS %s: shedding group %s (%s)", self.name, group, action)
        for record in self._hosts(group):
            self.registry.set_hold(record, self.hold, self.hold)  # fleet mode: also on other segments' rows
            if record.up or record.state in (P.WAKING, P.UNKNOWN):
                self.fleet.nap(record, action, cause, source="ups", urgent=urgent)
        self.registry.save(now)

    def _hurry(self, now: float, cause: str) -> None:
        """LB/FSD: the naps of groups shed on battery that still wait for the nap rate limit go now."""
        queued = getattr(self.fleet, "queue", None) or {}  # the policy gate's queue (host -> request)
        for group in self.shed:
            action = "poweroff" if self.opts["action"] == "poweroff" else self.fleet.config.nap_action(group)
            for record in self._hosts(group):
                waiting = queued.get(record.name)
                if record.hold == self.hold and waiting is not None and waiting.kind == "nap":
                    self.fleet.nap(record, action, cause, source="ups", urgent=True)

    def _restore_last(self, now: float) -> None:
        group = self.shed.pop()
        self.last_step = now
        self.log.warning("UPS %s: mains back, waking group %s", self.name, group)
        withdraw = getattr(self.fleet, "withdraw", None)  # the policy gate's (a bare Fleet queues nothing)
        for record in self._hosts(group):
            self.registry.set_hold(record, None, self.hold)
            if withdraw is not None:
                withdraw(record.name, "nap", "ups")  # a shed nap still waiting for the nap rate: mains is back
            if not record.up:
                self.fleet.wake(record, "UPS %s back on mains" % self.name, source="ups")
        self.registry.save(now)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "detail": self.detail,
            "charge": self.charge,
            "on_battery_since": self.on_battery_since,
            "shed": list(self.shed),
            "groups": list(self.opts["groups"]),
        }
