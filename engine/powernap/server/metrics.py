"""Prometheus metrics: a small registry of metric families, each fed by a callable, rendered as text.

``GET /metrics`` on powerwaked (``api.route``) renders ``MetricsRegistry.render()``
in the Prometheus text exposition format (version 0.0.4).  Whoever owns a figure
registers a family for it once, with a collector that returns its samples when
a scrape comes::

    metrics.register("powernap_hosts", GAUGE, "Hosts in the registry.", lambda: [({}, len(registry))])

A collector returns an iterable of ``(labels, value)``: ``labels`` a dict of
label name to value (escaped here), ``value`` a number, or a ``Histogram``
for a histogram family.  ``server_collectors`` registers everything powerwaked
has today (registry states and transitions, wake durations and failures, proxy
wakes, UPS states, energy saved); **the registration point for more** is
``Server.metrics.register`` — the policy gate's queue lengths and decisions and
the wake-health figures add their families there (see ``register``'s doc).

Naming follows Prometheus' rules (promtool lints them in the tests): a
``powernap_`` prefix, base units (seconds, joules, ratios), ``_total`` on
counters and on nothing else, a HELP and a TYPE line per family.  Label values
are escaped (backslash, double quote, line feed); host names come from the
registry, so the series count is bounded by ``max_hosts``.  A collector that
raises costs only its own family (counted in
``powernap_metrics_collector_errors_total``), never the scrape.
"""

import bisect
import math
import re
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# A wake takes seconds (WoL resume) to minutes (IPMI power-on and boot): buckets for that range.
WAKE_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0)

Labels = Dict[str, str]
Sample = Tuple[Labels, Any]
Collector = Callable[[], Iterable[Sample]]


class Histogram:
    """Cumulative bucket counts, a sum and a count (thread-safe ``observe``; ``snapshot`` for rendering)."""

    def __init__(self, buckets: Sequence[float] = WAKE_BUCKETS):
        bounds = sorted(float(b) for b in buckets)
        if not bounds or any(not math.isfinite(b) for b in bounds) or len(set(bounds)) != len(bounds):
            raise ValueError("histogram buckets must be distinct finite numbers")
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        value = float(value)
        if not math.isfinite(value):
            return
        with self._lock:
            self.counts[bisect.bisect_left(self.bounds, value)] += 1
            self.sum += value
            self.count += 1

    def snapshot(self) -> Tuple[List[Tuple[float, int]], float, int]:
        """``([(upper bound, cumulative count)...], sum, count)``; the last bound is +Inf."""
        with self._lock:
            counts, total, count = list(self.counts), self.sum, self.count
        cumulative, running = [], 0
        for bound, n in zip(self.bounds + [math.inf], counts):
            running += n
            cumulative.append((bound, running))
        return cumulative, total, count


class Family:
    """One metric family: its name, type, help text and the collector that yields its samples."""

    __slots__ = ("name", "kind", "help", "collect")

    def __init__(self, name: str, kind: str, help: str, collect: Collector):
        if not _NAME_RE.match(name):
            raise ValueError("bad metric name %r" % name)
        if kind not in (COUNTER, GAUGE, HISTOGRAM):
            raise ValueError("bad metric type %r" % kind)
        if (kind == COUNTER) != name.endswith("_total"):
            raise ValueError("%s: counters, and only counters, end in _total" % name)
        if not help:
            raise ValueError("%s needs a help text" % name)
        self.name = name
        self.kind = kind
        self.help = help
        self.collect = collect


class MetricsRegistry:
    """The families /metrics serves, in registration order."""

    def __init__(self) -> None:
        self.families: Dict[str, Family] = {}
        self.collector_errors = 0
        self.log: Any = None
        # Rendered last, so that it counts the failures of this very scrape.
        self._errors = Family(
            "powernap_metrics_collector_errors_total",
            COUNTER,
            "Collectors that raised during a scrape (their family was left out).",
            lambda: [({}, self.collector_errors)],
        )

    def register(self, name: str, kind: str, help: str, collect: Collector) -> None:
        """Add a family.  ``collect()`` is called at every scrape, with the daemon's lock held.

        The registration point for parts that come later (the policy gate's queue
        lengths and decisions, wake health): e.g.
        ``server.metrics.register("powernap_queue_length", GAUGE, "...", lambda: [({"queue": "wake"}, n)])``.
        Each name once; counters end in ``_total``; labels are bounded (hosts, groups, fixed words).
        """
        if name in self.families or name == self._errors.name:
            raise ValueError("metric %s is registered twice" % name)
        self.families[name] = Family(name, kind, help, collect)

    def render(self) -> str:
        out: List[str] = []
        for family in list(self.families.values()) + [self._errors]:
            try:
                lines = list(_family_lines(family))
            except Exception as exc:  # one broken collector must not cost the whole scrape
                self.collector_errors += 1
                if self.log is not None:
                    self.log.warning("metrics: collector %s failed: %s", family.name, exc)
                continue
            out.append("# HELP %s %s" % (family.name, escape_help(family.help)))
            out.append("# TYPE %s %s" % (family.name, family.kind))
            out.extend(lines)
        return "\n".join(out) + "\n"


def _family_lines(family: Family) -> Iterable[str]:
    for labels, value in family.collect():
        if family.kind == HISTOGRAM:
            buckets, total, count = value.snapshot()
            for bound, cumulative in buckets:
                le = dict(labels, le="+Inf" if bound == math.inf else format_value(bound))
                yield "%s_bucket%s %d" % (family.name, format_labels(le), cumulative)
            yield "%s_sum%s %s" % (family.name, format_labels(labels), format_value(total))
            yield "%s_count%s %d" % (family.name, format_labels(labels), count)
        else:
            yield "%s%s %s" % (family.name, format_labels(labels), format_value(value))


def escape_label(value: Any) -> str:
    """A label value as the text format wants it: backslash, double quote and line feed escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_labels(labels: Optional[Labels]) -> str:
    if not labels:
        return ""
    for name in labels:
        if not _LABEL_RE.match(name) or name.startswith("__"):
            raise ValueError("bad label name %r" % name)
    return "{%s}" % ",".join('%s="%s"' % (name, escape_label(value)) for name, value in labels.items())


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


# -- powerwaked's own families -------------------------------------------------------------------


class WakeStats:
    """Wake outcomes seen as registry state changes: waking -> up (a duration), waking -> down (a failure).

    A registry listener, so every wake path (proxy, schedules, cluster, UPS, API)
    counts; the duration runs from the wake's first send (``last_wake.time``, kept
    across an IPMI escalation) to the confirmation.
    """

    def __init__(self) -> None:
        self.durations = Histogram(WAKE_BUCKETS)
        self.by_method: Dict[str, Histogram] = {}
        self.failures: Dict[str, int] = {}
        self.transitions: Dict[Tuple[str, str], int] = {}
        self.host_transitions: Dict[str, int] = {}

    def on_state_change(self, record: Any, old: str, cause: str) -> None:
        """A registry listener (``record.since`` is the time of the change)."""
        from . import protocol as P

        now = record.since

        key = (old, record.state)
        self.transitions[key] = self.transitions.get(key, 0) + 1
        self.host_transitions[record.name] = self.host_transitions.get(record.name, 0) + 1
        if old != P.WAKING:
            return
        if record.up:
            sent = (record.last_wake or {}).get("time")
            if isinstance(sent, (int, float)) and now >= sent:
                method = str((record.last_wake or {}).get("method") or "unknown")
                if method not in ("wol", "ipmi", "wol+ipmi"):
                    method = "other"
                hist = self.by_method.get(method)
                if hist is None:
                    hist = self.by_method[method] = Histogram(WAKE_BUCKETS)
                hist.observe(now - sent)
        else:
            self.failures["unconfirmed"] = self.failures.get("unconfirmed", 0) + 1

    def forget(self, names: Iterable[str]) -> None:
        for name in names:
            self.host_transitions.pop(name, None)


def server_collectors(server: Any) -> MetricsRegistry:
    """The families powerwaked serves today, fed from the daemon ``server`` (called with its lock held)."""
    from . import protocol as P

    metrics = MetricsRegistry()
    metrics.log = server.log.getChild("metrics")
    registry = server.registry
    stats: WakeStats = server.wake_stats
    meter = server.energy

    def hosts() -> List[Any]:
        return sorted(registry, key=lambda r: r.name)

    metrics.register("powernap_hosts", GAUGE, "Hosts in the registry.", lambda: [({}, len(registry))])
    metrics.register(
        "powernap_hosts_max", GAUGE, "The registry's host cap (max_hosts).", lambda: [({}, registry.max_hosts)]
    )
    metrics.register(
        "powernap_host_state",
        GAUGE,
        "1 for the host's current registry state, 0 for the others.",
        lambda: [({"host": r.name, "state": s}, 1 if r.state == s else 0) for r in hosts() for s in P.ALL_STATES],
    )
    metrics.register(
        "powernap_host_state_since_timestamp_seconds",
        GAUGE,
        "When the host entered its current state (Unix time; 0 when never known).",
        lambda: [({"host": r.name}, r.since) for r in hosts()],
    )
    metrics.register(
        "powernap_host_transitions_total",
        COUNTER,
        "State changes of the host since the server started.",
        lambda: [({"host": r.name}, stats.host_transitions.get(r.name, 0)) for r in hosts()],
    )
    metrics.register(
        "powernap_transitions_total",
        COUNTER,
        "State changes of all hosts since the server started, by old and new state.",
        lambda: [({"from": a, "to": b}, n) for (a, b), n in sorted(stats.transitions.items())],
    )
    metrics.register(
        "powernap_host_wakes_total",
        COUNTER,
        "Wakes sent to the host (kept across restarts).",
        lambda: [({"host": r.name}, r.wakes) for r in hosts()],
    )
    metrics.register(
        "powernap_wake_duration_seconds",
        HISTOGRAM,
        "Time from a wake's first send to its confirmation (a report or a probe answer), by method.",
        lambda: [({"method": m}, h) for m, h in sorted(stats.by_method.items())],
    )
    metrics.register(
        "powernap_wake_failures_total",
        COUNTER,
        "Wakes that failed: unconfirmed (timed out waking) or unsent (no way to send it).",
        lambda: [
            ({"reason": "unconfirmed"}, stats.failures.get("unconfirmed", 0)),
            ({"reason": "unsent"}, server.fleet.wake_failures),
        ],
    )
    metrics.register(
        "powernap_proxy_wakes_total",
        COUNTER,
        "Wakes the sleep proxy caused.",
        lambda: [({}, server.proxy.counts.get("woke", 0))] if server.proxy is not None else [],
    )
    metrics.register(
        "powernap_proxy_frames_total",
        COUNTER,
        "Frames the sleep proxy decided on, by outcome (woke, ignored-mac, rate-limited, ...).",
        lambda: sorted(({"outcome": k}, v) for k, v in server.proxy.counts.items()) if server.proxy is not None else [],
    )
    metrics.register(
        "powernap_ups_state",
        GAUGE,
        "1 for the UPS policy's current state, 0 for the others.",
        lambda: [
            ({"ups": policy.name, "state": s}, 1 if policy.state == s else 0)
            for policy, _poller in server.ups
            for s in ("online", "on-battery", "critical", "unknown")
        ],
    )
    metrics.register(
        "powernap_ups_battery_charge_ratio",
        GAUGE,
        "The UPS battery charge (0..1), where the UPS reports it.",
        lambda: [({"ups": p.name}, p.charge / 100.0) for p, _poller in server.ups if p.charge is not None],
    )
    for name, attribute, text in (
        ("powernap_reports_total", "reports", "Engine reports accepted."),
        ("powernap_messages_rejected_total", "rejected", "Messages rejected (bad signature, schema, replay)."),
        ("powernap_reports_refused_total", "refused", "Valid reports refused (unregistered host, host cap)."),
        ("powernap_errors_total", "errors", "Inputs or ticks that raised (logged; the server went on)."),
    ):
        metrics.register(name, COUNTER, text, lambda attribute=attribute: [({}, getattr(server, attribute))])
    metrics.register(
        "powernap_registry_save_failures_total",
        COUNTER,
        "Registry snapshots that could not be written (a full disk).",
        lambda: [({}, registry.save_failures)],
    )
    meter.register_metrics(metrics, hosts, server)
    return metrics
