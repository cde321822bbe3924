"""Cluster-aware napping: keep enough hosts of a load-balanced group awake, nap the surplus.

needed = max(min_awake, ceil(load / capacity) + headroom, external demand)

* ``load`` is the sum of the awake members' reported 1-minute load per CPU
  (``source = reports``) or a number read from a status URL (``source =
  url``: plain text, a JSON key, or nginx's ``Active connections: N``).
  When the load is unknown (stale reports, URL down) nothing is napped.
* Fewer awake (or waking) than needed: wake the missing hosts at once.
* More awake than needed for ``low_for`` seconds: nap one surplus host (the
  least loaded), then wait ``step`` before the next; never below
  ``min_awake``.  Hosts on hold (UPS) are neither woken nor counted.
* Rotation (``rotation = longest``, the default): among equally good
  candidates (nap: load per CPU within ``rotation_margin`` of the least
  loaded) the host awake longest naps first, and the host asleep longest
  wakes first; ties go by name.  ``rotation = name`` takes the least loaded,
  then name order.
* Hosts whose wake failed (``health``) are neither napped nor woken by the
  policy: their retries and test wakes wake them, and a healthy host is
  woken in their place.
* External schedulers ask for "N more awake hosts" through the API
  (``demand``): the need becomes at least the awake count at that moment
  plus N, until the demand's ttl ends.
* ``fleet`` is the policy gate (``rails.PowerRails``): its rate limits, nap
  windows, anti-flap rules and recommend-only mode apply (source ``cluster``).
"""

import math
import re
import threading
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

from . import protocol as P
from .registry import by_power_since

URL_POLL = 10.0
MAX_DEMANDS = 100  # live external demands kept per cluster (each API call adds one)
_ACTIVE_RE = re.compile(r"Active connections:\s*(\d+)")


def parse_load(text: str, json_key: str = "") -> float:
    """A load figure from a status page; ValueError when there is none (NaN and infinity are none)."""
    match = _ACTIVE_RE.search(text)
    if match:
        return float(match.group(1))
    if json_key:
        value: Any = P.loads_strict(text)
        for part in json_key.split("."):
            value = value[part] if isinstance(value, dict) else value[int(part)]
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError("the value at %s is not a number" % json_key)
        load = float(value)
    else:
        load = float(text.strip())
    if not math.isfinite(load) or load < 0:
        raise ValueError("load %r is not a finite, non-negative number" % text[:40])
    return load


class UrlLoad:
    """Fetches a status URL every URL_POLL seconds on a daemon thread."""

    def __init__(self, url: str, json_key: str, log: Any, clock: Any):
        self.url = url
        self.json_key = json_key
        self.log = log
        self.clock = clock
        self.value: Optional[float] = None
        self.at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-url", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=5) as reply:
                    self.value = parse_load(reply.read(65536).decode("utf-8", "replace"), self.json_key)
                    self.at = self.clock.wall()
            except Exception as exc:  # whatever fails, the poller lives on (the value ages out in current())
                self.log.debug("status URL %s: %s", self.url, exc)
            self._stop.wait(URL_POLL)

    def current(self, now: float) -> Optional[float]:
        return self.value if self.value is not None and now - self.at < 3 * URL_POLL else None

    def close(self) -> None:
        self._stop.set()


class ClusterPolicy:
    def __init__(
        self,
        name: str,
        opts: Dict[str, Any],
        fleet: Any,
        members: Dict[str, List[str]],
        log: Any,
        url_load: Optional[Any] = None,
    ):
        self.name = name
        self.opts = opts
        self.group = opts["group"]
        self.fleet = fleet
        self.registry = fleet.registry
        self.members = members
        self.log = log
        self.url_load = url_load
        self.low_since: Optional[float] = None
        self.last_nap: Optional[float] = None
        self.demands: List[Tuple[float, int, str]] = []  # (until, awake target, who asked)
        self.load: Optional[float] = None
        self.needed = int(opts["min_awake"])
        self.napped: Dict[str, float] = {}  # host -> when we told it to nap

    def hosts(self) -> List[Any]:
        return [r for r in (self.registry.get(n) for n in self.members.get(self.group, ())) if r is not None]

    def awake(self, now: Optional[float] = None) -> List[Any]:
        """Members up or waking, less those told to nap within the last step (their report may lag)."""
        return [
            r for r in self.hosts() if (r.up or r.state == P.WAKING) and not r.hold and not self._napping(r.name, now)
        ]

    def _napping(self, name: str, now: Optional[float]) -> bool:
        told = self.napped.get(name)
        return told is not None and now is not None and now - told < max(float(self.opts["step"]), 60.0)

    def measure(self, now: float) -> Optional[float]:
        if self.opts["source"] == "url":
            return self.url_load.current(now) if self.url_load is not None else None
        total = 0.0
        for record in self.awake(now):
            if record.state == P.WAKING:
                continue
            if record.load is None or record.last_seen is None or now - record.last_seen > 3 * record.interval:
                return None  # one silent member makes the total unknown
            total += float(record.load) / max(1, int(record.cpus or 1))
        return total

    def demand(self, more: int, ttl: float, who: str, now: float) -> Dict[str, Any]:
        target = len(self.awake(now)) + more
        self.demands = [d for d in self.demands if d[0] > now]
        if len(self.demands) >= MAX_DEMANDS:
            # Bounded: the smallest target makes room (the need never drops for it), ties the one ending first.
            self.demands.remove(min(self.demands, key=lambda d: (d[1], d[0])))
        self.demands.append((now + ttl, target, who))
        self.log.info("cluster %s: %s asks for %d more awake (target %d for %ds)", self.name, who, more, target, ttl)
        self.tick(now)
        return self.to_dict(now)

    def compute_needed(self, now: float) -> int:
        self.demands = [d for d in self.demands if d[0] > now]
        self.load = self.measure(now)
        needed = int(self.opts["min_awake"])
        if self.load is not None:
            needed = max(
                needed, int(math.ceil(self.load / float(self.opts["capacity"]) - 1e-9)) + self.opts["headroom"]
            )
        for _until, target, _who in self.demands:
            needed = max(needed, target)
        return needed

    def tick(self, now: float) -> None:
        self.needed = self.compute_needed(now)
        awake = self.awake(now)
        if len(awake) < self.needed:
            self.low_since = None
            sleepers = [
                r
                for r in self.hosts()
                if not r.up and r.state != P.WAKING and not r.hold and self.fleet.health.wake_refusal(r, now) is None
            ]
            for record in self._wake_order(sleepers)[: self.needed - len(awake)]:
                self.napped.pop(record.name, None)
                self.fleet.wake(
                    record, "cluster %s: %d awake, %d needed" % (self.name, len(awake), self.needed), source="cluster"
                )
            return
        surplus = len(awake) > self.needed and self.load is not None
        if not surplus:
            self.low_since = None
            return
        if self.low_since is None:
            self.low_since = now
        if now - self.low_since < self.opts["low_for"]:
            return
        if self.last_nap is not None and now - self.last_nap < self.opts["step"]:
            return
        action = self.fleet.config.nap_action(self.group)
        candidates = [
            r for r in awake if r.up and self.fleet.can_nap(r, action) and self.fleet.health.nap_refusal(r, now) is None
        ]
        if len(awake) - 1 < int(self.opts["min_awake"]) or not candidates:
            return
        victim = self._nap_choice(candidates)
        self.last_nap = now
        self.napped[victim.name] = now
        answer = self.fleet.nap(
            victim,
            self.fleet.config.nap_action(self.group),
            "cluster %s: load %.2f needs %d of %d awake" % (self.name, self.load, self.needed, len(awake)),
            source="cluster",
        )
        if answer.get("what") in ("refused", "decision"):
            self.napped.pop(victim.name, None)  # the policy gate held it: nothing napped, ask again next step

    def _wake_order(self, sleepers: List[Any]) -> List[Any]:
        """Sleepers in the order they are woken: asleep longest first (rotation), or by name."""
        if self.opts["rotation"] == "name":
            return sorted(sleepers, key=lambda r: r.name)
        return by_power_since(sleepers)

    def _nap_choice(self, candidates: List[Any]) -> Any:
        """The host to nap: the least loaded; with rotation, the one awake longest among the equally loaded."""

        def per_cpu(record: Any) -> float:
            return float(record.load or 0.0) / max(1, int(record.cpus or 1))

        if self.opts["rotation"] == "name":
            return min(candidates, key=lambda r: (per_cpu(r), r.name))
        least = min(per_cpu(r) for r in candidates)
        equal = [r for r in candidates if per_cpu(r) <= least + float(self.opts["rotation_margin"]) + 1e-9]
        return by_power_since(equal)[0]

    def to_dict(self, now: Optional[float] = None) -> Dict[str, Any]:
        return {
            "name": self.name,
            "group": self.group,
            "awake": len(self.awake(now)),
            "needed": self.needed,
            "load": self.load,
            "min_awake": self.opts["min_awake"],
            "rotation": self.opts["rotation"],
            "demands": [{"until": until, "target": target, "from": who} for until, target, who in self.demands],
        }
