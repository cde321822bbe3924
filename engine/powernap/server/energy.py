"""Energy accounting: the energy (and its cost) the fleet saved against leaving every host on.

Each registry state maps to a power state (``POWER_OF``); ``[energy]`` and
``[energy_profile.NAME]`` give the watts of each.  The meter integrates over
the registry's real state changes: ``Registry.set_state`` calls ``close``
before a state ends, which adds the time since ``record.since`` to the
host's accumulators; the state still running is added when a figure is read
(``figures``), without changing anything.  The accumulators live in the host
record (``energy``: seconds per power state, joules and cost saved), so they
are saved with the registry and survive restarts.

Saved = (watts_on - watts of the state) x time, summed; every state draws at
most watts_on (the config check refuses more), so the totals only grow and
are Prometheus counters.  The cost is added at the price in force when the
time is counted, so a price change never rewrites the past.

Registry states that are "up" but unconfirmed (``waking``, ``unknown``)
count as on: no saving is claimed for what is not known.  A state whose start
is unknown (``since`` 0: a host the config names that never reported) is
not counted.
"""

from typing import Any, Dict, Iterable, List

from ..prometheus import COUNTER, GAUGE, escape_label
from . import protocol as P
from .config import POWER_STATES

POWER_OF = {
    P.AWAKE: "on",
    P.RESUMED: "on",
    P.STOPPED: "on",
    P.WAKING: "on",
    P.UNKNOWN: "on",
    P.GRACE: "idle",
    P.NAPPING: "powersave",
    P.SUSPENDING: "suspended",
    P.HIBERNATING: "suspended",
    P.ASLEEP: "suspended",
    P.POWERING_OFF: "off",
    P.OFF: "off",
}
SAVED_J = "saved_joules"
SAVED_COST = "saved_cost"
KEYS = POWER_STATES + (SAVED_J, SAVED_COST)  # the record's ``energy`` map
JOULES_PER_KWH = 3.6e6


class EnergyMeter:
    def __init__(self, config: Any):
        self.config = config
        self.price = float(config.energy["price_per_kwh"])
        self.currency = str(config.energy["currency"])
        self.default = config.watts()
        self.by_host: Dict[str, Dict[str, float]] = {}
        self.by_group: Dict[str, Dict[str, float]] = {}
        for _name, opts in sorted(config.named["energy_profile"].items()):
            watts = config.watts(opts)
            for host in opts["hosts"]:
                self.by_host[host] = watts
            for group in opts["groups"]:
                self.by_group[group] = watts

    def watts(self, record: Any) -> Dict[str, float]:
        """The host's watts per power state: its own profile, its first group's, or [energy]'s."""
        watts = self.by_host.get(record.name)
        if watts is not None:
            return watts
        for group in record.groups:
            watts = self.by_group.get(group)
            if watts is not None:
                return watts
        return self.default

    def close(self, record: Any, now: float) -> None:
        """The state ``record`` is in ends at ``now``: add its time to the accumulators (Registry.set_state)."""
        seconds = _elapsed(record, now)
        if seconds <= 0:
            return
        state = POWER_OF.get(record.state, "on")
        watts = self.watts(record)
        saved = (watts["on"] - watts[state]) * seconds
        energy = record.energy
        energy[state] = energy.get(state, 0.0) + seconds
        energy[SAVED_J] = energy.get(SAVED_J, 0.0) + saved
        energy[SAVED_COST] = energy.get(SAVED_COST, 0.0) + saved / JOULES_PER_KWH * self.price

    def figures(self, record: Any, now: float) -> Dict[str, float]:
        """The accumulators plus the state still running (seconds per state, joules and cost saved)."""
        out = {key: float(record.energy.get(key, 0.0)) for key in KEYS}
        seconds = _elapsed(record, now)
        if seconds > 0:
            state = POWER_OF.get(record.state, "on")
            watts = self.watts(record)
            saved = (watts["on"] - watts[state]) * seconds
            out[state] += seconds
            out[SAVED_J] += saved
            out[SAVED_COST] += saved / JOULES_PER_KWH * self.price
        return out

    def report(self, records: Iterable[Any], now: float) -> Dict[str, Any]:
        """Totals over ``records`` as the API shows them: seconds per state, joules, kWh and cost saved."""
        total = dict.fromkeys(KEYS, 0.0)
        for record in records:
            for key, value in self.figures(record, now).items():
                total[key] += value
        return self.shown(total)

    def shown(self, figures: Dict[str, float]) -> Dict[str, Any]:
        return {
            "seconds": {state: round(figures[state], 3) for state in POWER_STATES},
            "saved_joules": round(figures[SAVED_J], 1),
            "saved_kwh": round(figures[SAVED_J] / JOULES_PER_KWH, 6),
            "saved_cost": round(figures[SAVED_COST], 6),
            "currency": self.currency,
        }

    def host_report(self, record: Any, now: float) -> Dict[str, Any]:
        shown = self.shown(self.figures(record, now))
        state = POWER_OF.get(record.state, "on")
        shown["power_state"] = state
        shown["watts"] = self.watts(record)[state]
        return shown

    def register_metrics(self, metrics: Any, hosts: Any, server: Any) -> None:
        """The energy families of /metrics (``metrics.server_collectors`` calls this)."""

        cache: Dict[str, Any] = {"scrape": -1, "rows": []}

        def per_host() -> List[Any]:
            """Each host's figures, computed once per scrape for the families below."""
            if cache["scrape"] != metrics.scrapes:
                now = server.clock.wall()
                cache["rows"] = [(record, self.figures(record, now)) for record in hosts()]
                cache["scrape"] = metrics.scrapes
            return cache["rows"]

        metrics.register(
            "powernap_host_power_state_seconds_total",
            COUNTER,
            "Time the host spent in each power state (on, idle, powersave, suspended, off), as accounted.",
            lambda: [
                ('{host="%s",power_state="%s"}' % (escape_label(r.name), s), f[s])
                for r, f in per_host()
                for s in POWER_STATES
            ],
        )
        metrics.register(
            "powernap_host_power_watts",
            GAUGE,
            "The power the host draws now, by its state and its configured watts.",
            lambda: [({"host": r.name}, self.watts(r)[POWER_OF.get(r.state, "on")]) for r in hosts()],
        )
        metrics.register(
            "powernap_host_energy_saved_joules_total",
            COUNTER,
            "Energy the host saved against staying on.",
            lambda: [({"host": r.name}, f[SAVED_J]) for r, f in per_host()],
        )

        def per_group() -> List[Any]:
            sums: Dict[str, Dict[str, float]] = {}
            for record, figures in per_host():
                for group in record.groups:
                    total = sums.setdefault(group, {SAVED_J: 0.0, SAVED_COST: 0.0})
                    total[SAVED_J] += figures[SAVED_J]
                    total[SAVED_COST] += figures[SAVED_COST]
            return sorted(sums.items())

        metrics.register(
            "powernap_group_energy_saved_joules_total",
            COUNTER,
            "Energy the group's hosts saved against staying on.",
            lambda: [({"group": g}, t[SAVED_J]) for g, t in per_group()],
        )

        def fleet() -> Dict[str, float]:
            total = {SAVED_J: 0.0, SAVED_COST: 0.0}
            for _record, figures in per_host():
                total[SAVED_J] += figures[SAVED_J]
                total[SAVED_COST] += figures[SAVED_COST]
            return total

        metrics.register(
            "powernap_fleet_energy_saved_joules_total",
            COUNTER,
            "Energy the whole fleet saved against staying on.",
            lambda: [({}, fleet()[SAVED_J])],
        )
        metrics.register(
            "powernap_fleet_energy_cost_saved_total",
            COUNTER,
            "What the saved energy would have cost, at [energy] price_per_kwh, in the currency of the label.",
            lambda: [({"currency": self.currency}, fleet()[SAVED_COST])],
        )


def _elapsed(record: Any, now: float) -> float:
    since = float(record.since or 0.0)
    if since <= 0.0 or now <= since:
        return 0.0
    return now - since
