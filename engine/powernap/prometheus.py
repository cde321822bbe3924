"""The Prometheus text exposition format (version 0.0.4): metric families fed by callables, rendered as text.

One home for the format, used by powerwaked's ``GET /metrics`` (``server/metrics.py``)
and by the engine's node_exporter textfile (``textfile.py``).  Whoever owns a
figure registers a family for it once, with a collector that returns its
samples when a scrape comes::

    metrics.register("powernap_hosts", GAUGE, "Hosts in the registry.", lambda: [({}, len(registry))])

A collector returns an iterable of ``(labels, value)``: ``labels`` a dict of
label name to value (escaped here), ``value`` a number, or a ``Histogram``
for a histogram family.  A family with very many samples may give ``labels``
as text already made by ``format_labels`` / ``escape_label`` (``'{host="a"}'``):
it is used as it is.  Names follow Prometheus' rules (checked at
registration): base units, ``_total`` on counters and on nothing else, a
HELP and a TYPE line per family.  Label values are escaped (backslash,
double quote, line feed).  A collector that raises costs only its own family
(counted in ``powernap_metrics_collector_errors_total``), never the scrape.
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
_GOOD_LABELS = {"le"}  # label names already checked (labels repeat on every sample of a family)
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
        self.scrapes = 0  # counts renders: collectors that share work across families cache on it
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
        self.scrapes += 1
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
        elif isinstance(labels, str):  # pre-formatted (and escaped) by the collector: the hot path
            yield family.name + labels + " " + format_value(value)
        else:
            yield "%s%s %s" % (family.name, format_labels(labels), format_value(value))


def escape_label(value: Any) -> str:
    """A label value as the text format wants it: backslash, double quote and line feed escaped."""
    text = str(value)
    if "\\" not in text and '"' not in text and "\n" not in text:
        return text  # the common case (host names), without three copies
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_labels(labels: Optional[Labels]) -> str:
    if not labels:
        return ""
    for name in labels:
        if name not in _GOOD_LABELS:
            if not _LABEL_RE.match(name) or name.startswith("__"):
                raise ValueError("bad label name %r" % name)
            _GOOD_LABELS.add(name)
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
