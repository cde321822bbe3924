"""The fleet registry: every host of the segment, its state and how to wake it, kept on disk.

Hosts come from two places: ``[host.NAME]`` sections of the server config
(static facts: MAC, addresses, BMC, groups) and the engines' signed reports
(state, addresses, MACs, WoL setting, load, next scheduled wake).  Reports
refresh ``last_seen``; an up host whose reports stop for ``stale_factor``
heartbeat intervals becomes ``unknown``; a host that said it is suspending or
powering off and then went quiet becomes ``asleep`` / ``off`` (quiet is what
a sleeping host is, so it is never marked unknown).

The registry is saved as JSON, written to a temporary file, fsynced and
renamed over the old one, so a crash leaves either the old or the new file.
Heartbeats only mark it dirty; ``save_if_due`` writes them at most every
``save_every`` seconds, and state changes within a second (policies that
put hosts on hold write at once).
"""

import json
import os
import tempfile
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from . import protocol as P

SCHEMA = 1
QUIET_TO_ASLEEP = 20.0  # seconds after "suspending" without a word before we call the host asleep
URGENT_SAVE = 1.0  # state changes reach the disk within this; a burst of them costs one write


class HostRecord:
    """What the server knows about one host."""

    FIELDS = (
        "name", "state", "stage", "since", "last_seen", "last_ts", "last_event", "macs", "ips", "wol",
        "wake", "bmc", "groups", "next_wake", "idle_seconds", "load", "cpus", "interval", "addr",
        "engine", "hold", "wakes", "last_wake", "static",
    )  # fmt: skip

    def __init__(self, name: str):
        self.name = name
        self.state = P.UNKNOWN
        self.stage: Optional[int] = None
        self.since = 0.0
        self.last_seen: Optional[float] = None
        self.last_ts = 0.0
        self.last_event: Optional[str] = None
        self.macs: List[str] = []
        self.ips: List[str] = []
        self.wol: Dict[str, Optional[str]] = {}
        self.wake: List[str] = ["wol"]
        self.bmc: Optional[str] = None
        self.groups: List[str] = []
        self.next_wake: Optional[float] = None
        self.idle_seconds: Optional[float] = None
        self.load: Optional[float] = None
        self.cpus: Optional[int] = None
        self.interval = 30.0
        self.addr: Optional[List[Any]] = None  # [ip, port] the last report came from (commands go there)
        self.engine = False
        self.hold: Optional[str] = None  # a policy keeps this host down (e.g. "ups rack1"): no proxy wakes
        self.wakes = 0
        self.last_wake: Optional[Dict[str, Any]] = None
        self.static = False

    @property
    def mac(self) -> Optional[str]:
        return self.macs[0] if self.macs else None

    @property
    def asleep(self) -> bool:
        return self.state in P.SLEEPING_STATES

    @property
    def up(self) -> bool:
        return self.state in P.UP_STATES

    def to_dict(self) -> Dict[str, Any]:
        return {field: getattr(self, field) for field in self.FIELDS}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "HostRecord":
        record = cls(str(data["name"]))
        for field in cls.FIELDS:
            if field in data and field != "name":
                setattr(record, field, data[field])
        return record


class Registry:
    def __init__(self, path: Optional[str] = None, stale_factor: float = 3.0, save_every: float = 10.0, log=None):
        self.path = path
        self.stale_factor = stale_factor
        self.save_every = save_every
        self.log = log
        self.hosts: Dict[str, HostRecord] = {}
        self._by_ip: Dict[str, str] = {}
        self._by_mac: Dict[str, str] = {}
        self._dirty = False
        self._urgent = False
        self._saved_at = 0.0
        self.listeners: List[Any] = []  # callables(record, old_state, cause) told of every state change

    # -- lookup -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[HostRecord]:
        return iter(list(self.hosts.values()))

    def __len__(self) -> int:
        return len(self.hosts)

    def get(self, name: str) -> Optional[HostRecord]:
        return self.hosts.get(name)

    def by_ip(self, ip: str) -> Optional[HostRecord]:
        name = self._by_ip.get(ip)
        return self.hosts.get(name) if name else None

    def by_mac(self, mac: str) -> Optional[HostRecord]:
        name = self._by_mac.get(mac.lower())
        return self.hosts.get(name) if name else None

    def find(self, target: str) -> Optional[HostRecord]:
        """A host by name, IP address or MAC."""
        return self.get(target) or self.by_ip(target) or self.by_mac(target)

    def in_group(self, group: str) -> List[HostRecord]:
        return [record for record in self.hosts.values() if group in record.groups]

    def _index(self, record: HostRecord) -> None:
        for ip in record.ips:
            self._by_ip[ip] = record.name
        for mac in record.macs:
            self._by_mac[mac.lower()] = record.name

    def _reindex(self) -> None:
        self._by_ip = {}
        self._by_mac = {}
        for record in self.hosts.values():
            self._index(record)

    # -- changes ----------------------------------------------------------------------------
    def define(
        self,
        name: str,
        macs: Iterable[str] = (),
        ips: Iterable[str] = (),
        groups: Iterable[str] = (),
        bmc: Optional[str] = None,
        wake: Iterable[str] = ("wol",),
    ) -> HostRecord:
        """A host from the server config; reported facts are merged on top later."""
        record = self.hosts.get(name) or HostRecord(name)
        record.static = True
        record.macs = _merge(list(macs), record.macs)
        record.ips = _merge(list(ips), record.ips)
        record.groups = list(groups) or record.groups
        record.bmc = bmc or record.bmc
        record.wake = list(wake)
        self.hosts[name] = record
        self._index(record)
        self._dirty = True
        return record

    def accept_report(self, message: Dict[str, Any], sender: Optional[Tuple[str, int]], now: float) -> HostRecord:
        """Apply one verified engine report."""
        name = str(message.get("host") or message["from"])
        record = self.hosts.get(name)
        if record is None:
            record = self.hosts[name] = HostRecord(name)
        record.last_seen = now
        record.engine = True
        if sender is not None:
            record.addr = [sender[0], sender[1]]
        ts = float(message["ts"])
        if ts < record.last_ts:  # an older report overtaken by a newer one: refresh last_seen only
            return record
        record.last_ts = ts
        record.last_event = message.get("event")
        record.stage = message.get("stage")
        for key in ("next_wake", "idle_seconds", "load", "cpus"):
            if key in message:
                setattr(record, key, message[key])
        if isinstance(message.get("interval"), (int, float)) and message["interval"] > 0:
            record.interval = float(message["interval"])
        if isinstance(message.get("macs"), list):
            record.macs = _merge(record.macs if record.static else [], [str(m).lower() for m in message["macs"]])
            record.wol = {str(k).lower(): v for k, v in (message.get("wol") or {}).items()}
        if isinstance(message.get("ips"), list):
            record.ips = _merge(record.ips if record.static else [], [str(ip) for ip in message["ips"]])
        if sender is not None and sender[0] not in record.ips:
            record.ips.append(sender[0])
        self._index(record)
        state = str(message.get("state") or P.AWAKE)
        if state not in P.STATES:
            state = P.AWAKE
        if state == P.RESUMED:
            state = P.AWAKE if message.get("event") == "heartbeat" else P.RESUMED
        self.set_state(record, state, "report %s" % message.get("event"), now)
        self._dirty = True
        return record

    def set_state(self, record: HostRecord, state: str, cause: str, now: float) -> None:
        if record.state == state:
            return
        old = record.state
        record.state = state
        record.since = now
        self._dirty = True
        self._urgent = True
        if self.log is not None:
            self.log.info("host %s: %s -> %s (%s)", record.name, old, state, cause)
        for listener in self.listeners:
            listener(record, old, cause)

    def seen(self, record: HostRecord, now: float, cause: str) -> None:
        """Proof of life without a report (a frame from its MAC, a TCP answer)."""
        record.last_seen = now
        if not record.up:
            self.set_state(record, P.AWAKE, cause, now)

    def tick(self, now: float) -> None:
        """Time-based conclusions: quiet sleepers are asleep/off, quiet up hosts unknown."""
        for record in list(self.hosts.values()):
            quiet = now - (record.last_seen or record.since or 0.0)
            if record.state in (P.SUSPENDING, P.HIBERNATING) and quiet > QUIET_TO_ASLEEP:
                self.set_state(record, P.ASLEEP, "quiet after %s" % record.state, now)
            elif record.state == P.POWERING_OFF and quiet > QUIET_TO_ASLEEP:
                self.set_state(record, P.OFF, "quiet after powering off", now)
            elif record.up and record.engine and quiet > self.stale_factor * record.interval:
                self.set_state(record, P.UNKNOWN, "no report for %ds" % quiet, now)

    # -- persistence ------------------------------------------------------------------------
    def save(self, now: float) -> None:
        if not self.path:
            return
        data = {"schema": SCHEMA, "saved": now, "hosts": [r.to_dict() for r in self.hosts.values()]}
        atomic_write(self.path, json.dumps(data, separators=(",", ":")).encode("utf-8"))
        self._dirty = False
        self._urgent = False
        self._saved_at = now

    def save_if_due(self, now: float) -> bool:
        """State changes are written within URGENT_SAVE seconds, heartbeats within save_every."""
        since = now - self._saved_at
        if (self._urgent and since >= URGENT_SAVE) or (self._dirty and since >= self.save_every):
            self.save(now)
            return True
        return False

    def load(self) -> int:
        """Read the saved registry (a missing file is an empty registry); returns the host count."""
        if not self.path or not os.path.exists(self.path):
            return 0
        with open(self.path, encoding="utf-8") as handle:
            data = json.load(handle)
        if data.get("schema") != SCHEMA:
            raise ValueError("%s: unknown registry schema %r" % (self.path, data.get("schema")))
        for item in data.get("hosts", ()):
            record = HostRecord.from_dict(item)
            self.hosts[record.name] = record
        self._reindex()
        return len(self.hosts)


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so that readers and crashes see the old file or the new one, never half."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _merge(first: List[Any], second: List[Any]) -> List[Any]:
    out = list(first)
    for item in second:
        if item not in out:
            out.append(item)
    return out
