"""Web service load from a status page: nginx stub_status, apache mod_status (?auto), or JSON."""

import json
import re
import urllib.error
import urllib.request
from typing import Any, Optional, Tuple

from ..errors import MonitorError
from ..options import Choice, Duration, Number, Option, String
from .base import MONITOR_COMMON_OPTIONS
from .probing import Job, ProbingMonitor, ThreadJob

_NGINX_ACTIVE = re.compile(r"Active connections:\s*(\d+)")
_NGINX_COUNTERS = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s*$", re.MULTILINE)
_APACHE_FIELD = re.compile(r"^([A-Za-z ]+):\s*([0-9.]+)\s*$", re.MULTILINE)


def parse_status(text: str, fmt: str, json_path: str) -> Tuple[str, Optional[float], Optional[int]]:
    """(format, connections, request counter) from a status page; missing figures are None."""
    if fmt == "json" or (fmt == "auto" and json_path):
        try:
            value: Any = json.loads(text)
        except ValueError:
            raise MonitorError("status page is not JSON") from None
        for key in [k for k in json_path.split(".") if k]:
            if isinstance(value, list) and key.isdigit() and int(key) < len(value):
                value = value[int(key)]
            elif isinstance(value, dict) and key in value:
                value = value[key]
            else:
                raise MonitorError("JSON path %r not found (stopped at %r)" % (json_path, key))
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MonitorError("JSON path %r is not a number: %r" % (json_path, value))
        return "json", float(value), None
    if fmt in ("auto", "nginx") and _NGINX_ACTIVE.search(text):
        counters = _NGINX_COUNTERS.search(text)
        return "nginx", float(_NGINX_ACTIVE.search(text).group(1)), int(counters.group(3)) if counters else None
    fields = dict(_APACHE_FIELD.findall(text))
    if fmt in ("auto", "apache") and "BusyWorkers" in fields:
        total = fields.get("Total Accesses")
        return "apache", float(fields["BusyWorkers"]), int(float(total)) if total is not None else None
    raise MonitorError("status page is not in %s format" % ("a known" if fmt == "auto" else fmt))


class HttpMonitor(ProbingMonitor):
    """Activity while a web service's status page shows connections or requests per second above thresholds."""

    TYPE = "http"
    OPTIONS = MONITOR_COMMON_OPTIONS + (
        Option(
            "url",
            String(nonempty=True),
            required=True,
            doc="Status URL, e.g. http://127.0.0.1/nginx_status (stub_status) or "
            "http://127.0.0.1/server-status?auto (apache mod_status).",
        ),
        Option(
            "format",
            Choice("auto", "nginx", "apache", "json"),
            default="auto",
            doc="Status page format; 'auto' recognises nginx and apache pages, and JSON when json_path is set.",
        ),
        Option(
            "json_path",
            String(),
            default="",
            doc="For JSON status pages: dotted path to the number to compare with connections_above, e.g. "
            "'connections.active' or 'workers.0.busy'.",
        ),
        Option(
            "connections_above",
            Number(minimum=0),
            default=1,
            doc="Activity when the active connections (nginx), busy workers (apache) or JSON value exceed "
            "this. The default 1 discounts the status request itself.",
        ),
        Option(
            "requests_per_second_above",
            Number(minimum=0),
            default=0,
            doc="Activity when requests per second since the previous probe exceed this (nginx and apache; "
            "this monitor's own status requests are not counted).",
        ),
        Option(
            "every", Duration(minimum=1), default=10.0, doc="How often the status page is fetched (in the background)."
        ),
        Option(
            "timeout", Duration(minimum=0.1), default=5.0, doc="How long a fetch may take before it counts as an error."
        ),
    )

    def __init__(self, name, options, ctx):
        super().__init__(name, options, ctx)
        self.previous: Optional[Tuple[float, int]] = None  # (monotonic time, request counter)

    def fetch(self) -> str:
        request = urllib.request.Request(self.options["url"], headers={"User-Agent": "powernap-monitor"})
        try:
            with urllib.request.urlopen(request, timeout=self.options["timeout"]) as response:
                return response.read(1 << 20).decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            raise MonitorError("%s answered HTTP %d" % (self.options["url"], exc.code)) from None
        except urllib.error.URLError as exc:
            raise MonitorError("cannot fetch %s: %s" % (self.options["url"], exc.reason)) from None

    def evaluate(self, text: str, now: float) -> Optional[str]:
        fmt, connections, requests = parse_status(text, self.options["format"], self.options["json_path"])
        rate = None
        if requests is not None:
            if self.previous is not None and now > self.previous[0] and requests >= self.previous[1]:
                # Minus one: our own previous status request is in the counter.
                rate = max(0, requests - self.previous[1] - 1) / (now - self.previous[0])
            self.previous = (now, requests)
        if connections is not None and connections > self.options["connections_above"]:
            return "%s status: %g active connections" % (fmt, connections)
        if rate is not None and rate > self.options["requests_per_second_above"]:
            return "%s status: %.2f requests/s" % (fmt, rate)
        return None

    def start_probe(self, now: float) -> Job:
        def probe() -> Optional[str]:
            return self.evaluate(self.fetch(), now)

        return ThreadJob(probe, self.options["timeout"], now, name=self.name)

    def describe(self) -> str:
        return "http %s" % self.options["url"]
