"""The powerwaked wire protocol: signed JSON messages, replay protection, and the engines' reporter.

Every message is one UDP datagram (or one HTTP POST body to ``/v1/report``)::

    PWK1 <hex HMAC-SHA256> <JSON object>

The HMAC covers ``b"PWK1\\n" + <direction label> + b"\\n" + <JSON bytes>``.  Keys:
each host has its own (``fleet_keys.host_key(master, name)``, derived by the
role on the controller), and powerwaked holds the master secret it derives
them all from.  Engine reports and command acks are signed with the
sender's host key (label ``engine>server``), and the server signs acks and
commands for one host with that host's key (label ``server>engine``), so a
host can speak only for itself and accepts only what was signed for it.
Admin requests to the HTTP API are signed with the master secret, and their
label is ``http METHOD PATH``: a body signed for ``/v1/wake`` is refused at
``/v1/nap``.
The JSON object always carries ``v`` (1), ``kind``, ``from`` (sender name),
``ts`` (sender wall clock, epoch seconds) and ``nonce`` (random hex).  A
receiver drops a message whose signature is wrong, whose ``ts`` is further
than ``max_skew`` from its own clock, or whose ``(from, nonce)`` it has seen
(``ReplayGuard``); nothing unauthenticated changes any state.

Kinds:

``report`` (engine to server)
    ``host``, ``event`` (the engine event that caused it, or ``heartbeat``),
    ``state`` (``STATES``), ``stage``, ``idle_seconds``, ``next_wake``,
    ``macs``, ``ips``, ``wol`` (``{mac: "g"|"d"|null}``), ``load``, ``cpus``,
    ``interval`` (seconds to the next heartbeat), ``veto_for`` and
    ``veto_reason`` (keep the host's groups from napping: ``[server]
    veto_monitors``).  The server answers ``ack``.
``ack`` (server to engine)
    ``re`` (the acknowledged nonce).
``command`` (server to engine, sent to the address the last report came from)
    ``to``, ``id``, ``command`` (``nap`` with ``action``, or ``wake-alarm``),
    ``wake_at``.  The engine runs it through its control socket and answers
    ``command-ack`` with ``re``, ``ok`` and ``detail``.

A compromised engine holds only its own key: it can lie about itself, but
cannot report for another host, claim addresses the server protects
(``trust``), or command any engine.
"""

import collections
import hashlib
import hmac
import json
import logging
import math
import os
import selectors
import socket
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple, Union
from urllib.parse import urlsplit

from ..fleet_keys import host_key
from ..options import (
    Boolean,
    Choice,
    Declared,
    Duration,
    Integer,
    IpAddress,
    ListOf,
    Mac,
    MapOf,
    Number,
    Option,
    OptionType,
    Scalar,
    String,
    json_type,
)
from ..report import Reporter
from . import DEFAULT_PORT

MAGIC = b"PWK1"
VERSION = 1
MAX_MESSAGE = 16384
DEFAULT_SKEW = 120.0
SERVER_NAME = "powerwaked"
# Direction labels: a signature is only good in the direction (or HTTP method and path) it was made for.
URL_SCHEMES = ("udp", "http", "https")
TO_SERVER = b"engine>server"
TO_ENGINE = b"server>engine"
# A report waits for its ack this many times (timeout / REPORT_TRIES each), with a fresh nonce each time: one datagram
# lost on the way (a server's full receive buffer) costs a report no more than that.
REPORT_TRIES = 3
HOST_KINDS = ("report", "command-ack")  # signed by an engine with its host key; the rest with the master

# Host states as the registry keeps them.  Engines report the first seven;
# the server derives the rest.
AWAKE = "awake"
GRACE = "grace"
NAPPING = "napping"
SUSPENDING = "suspending"
HIBERNATING = "hibernating"
POWERING_OFF = "powering-off"
RESUMED = "resumed"
STOPPED = "stopped"
ASLEEP = "asleep"  # the server's own conclusion: it was suspending and has gone quiet
OFF = "off"  # powered off (reported powering-off and gone quiet, or powered off by policy)
WAKING = "waking"  # a wake was sent and is not confirmed yet
UNKNOWN = "unknown"  # an awake host whose reports stopped
STATES = (AWAKE, GRACE, NAPPING, SUSPENDING, HIBERNATING, POWERING_OFF, RESUMED, STOPPED)
SLEEPING_STATES = (SUSPENDING, HIBERNATING, POWERING_OFF, ASLEEP, OFF)
UP_STATES = (AWAKE, GRACE, NAPPING, RESUMED, STOPPED)

# Engine events (see powernap.daemon) and the state each one means.
_EVENT_STATES = {
    "start": AWAKE,
    "activity": AWAKE,
    "cancel": AWAKE,
    "wake": AWAKE,
    "powersave-restore": AWAKE,
    "action-failed": AWAKE,
    "reload": None,
    "warn": GRACE,
    "powersave-apply": NAPPING,
    "resume": RESUMED,
    "stop": STOPPED,
}
_ACTION_STATES = {
    "suspend": SUSPENDING,
    "hybrid-sleep": SUSPENDING,
    "suspend-then-hibernate": SUSPENDING,
    "best-effort": SUSPENDING,
    "hibernate": HIBERNATING,
    "poweroff": POWERING_OFF,
}


class ProtocolError(ValueError):
    """A message was rejected; the text says why (never includes the secret)."""


def new_nonce() -> str:
    return os.urandom(8).hex()


def http_label(method: str, path: str) -> bytes:
    """The label an HTTP request is signed for: method and path (query string left out)."""
    return ("http %s %s" % (method.upper(), path.split("?")[0])).encode("utf-8")


def _mac(key: bytes, body: bytes, label: bytes = TO_SERVER) -> str:
    return hmac.new(key, MAGIC + b"\n" + label + b"\n" + body, hashlib.sha256).hexdigest()


def encode(key: bytes, message: Dict[str, Any], label: bytes = TO_SERVER) -> bytes:
    """Sign ``message`` for ``label`` (fills in v/ts/nonce when missing) and return the wire bytes."""
    message = dict(message)
    message.setdefault("v", VERSION)
    message.setdefault("ts", round(time.time(), 3))
    message.setdefault("nonce", new_nonce())
    body = json.dumps(message, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return MAGIC + b" " + _mac(key, body, label).encode("ascii") + b" " + body


KeyFor = Union[bytes, Callable[[Dict[str, Any]], Optional[bytes]]]


def decode(key: KeyFor, data: bytes, label: bytes = TO_SERVER) -> Dict[str, Any]:
    """Check the signature and shape of wire bytes; ProtocolError on anything wrong.

    ``key`` is the verifying key, or a callable that picks it from the (not yet
    trusted) message, e.g. the sender's host key; None from it refuses the message.
    """
    if len(data) > MAX_MESSAGE:
        raise ProtocolError("message too long (%d bytes)" % len(data))
    parts = data.split(b" ", 2)
    if len(parts) != 3 or parts[0] != MAGIC:
        raise ProtocolError("not a powerwaked message")
    signature, body = parts[1], parts[2]
    try:
        message = loads_strict(body)
    except (ValueError, RecursionError):
        raise ProtocolError("body is not strict JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("body is not a JSON object")
    verify_key = key(message) if callable(key) else key
    if verify_key is None or not hmac.compare_digest(signature, _mac(verify_key, body, label).encode("ascii")):
        raise ProtocolError("bad signature")
    if message.get("v") != VERSION:
        raise ProtocolError("unsupported message version")
    for name, kind in (("kind", str), ("from", str), ("nonce", str)):
        if not isinstance(message.get(name), kind) or not message[name]:
            raise ProtocolError("message lacks %r" % name)
    if not isinstance(message.get("ts"), (int, float)):
        raise ProtocolError("message lacks 'ts'")
    return message


def _refuse_constant(name: str) -> Any:
    raise ValueError("non-finite number %s" % name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("non-finite number")
    return value


def loads_strict(data: Any) -> Any:
    """``json.loads`` that refuses NaN, Infinity and numbers too large for a float (they become inf)."""
    if isinstance(data, (bytes, bytearray)):
        data = data.decode("utf-8")
    return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)


# -- the declared schema of every message kind --------------------------------------------------
# One table per kind, built from the option types every config section uses (powernap.options):
# type, range, size and count of each field.  ``check_message`` refuses a message with an
# unknown field or a bad value and says which field, so no handler ever sees a wrong type.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}"
MAX_MACS = 32
MAX_IPS = 64
NAP_ACTIONS = tuple(_ACTION_STATES)
ALL_STATES = STATES + (ASLEEP, OFF, WAKING, UNKNOWN)


def _name() -> String:
    return String(nonempty=True, max_length=253, pattern=NAME_PATTERN, form="a host or sender name")


def _nonce() -> String:
    return String(nonempty=True, max_length=64, pattern=r"[0-9a-fA-F]{1,64}", form="a hex nonce")


class PeerAddress(OptionType):
    """``[ip, port]``: where a host's reports come from (its commands go there)."""

    def check(self, value: Any) -> List[Any]:
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError("must be [ip, port], not %s" % json_type(value))
        return [IpAddress().check(value[0]), Integer(1, 65535).check(value[1])]


class StageIndex(OptionType):
    """A nap stage: its index, or the engine status' stage object (whose ``index`` is kept)."""

    def check(self, value: Any) -> int:
        if isinstance(value, dict):
            value = value.get("index")
        return Integer(0, 1000).check(value)


WOL_MODES = MapOf(Mac(), String(max_length=16, pattern=r"[a-z]*", form="ethtool Wake-on letters"), MAX_MACS, True)
TIME = Number(minimum=0, maximum=1e11)  # epoch seconds (before the year 5138)


class Envelope(Declared):
    """Fields every message carries."""

    OPTIONS: Tuple[Option, ...] = (
        Option("v", Integer(VERSION, VERSION), required=True, doc="Protocol version."),
        Option("kind", Choice("report", "ack", "command", "command-ack", "request", "read"), required=True,
               doc="What the message is."),
        Option("from", _name(), required=True, doc="Sender name (a host, or powerwaked)."),
        Option("ts", TIME, required=True, doc="Sender wall clock, epoch seconds."),
        Option("nonce", _nonce(), required=True, doc="Random hex, unique per sender."),
    )  # fmt: skip


class ReportMessage(Envelope):
    """report: engine to server."""

    KIND = "message"
    TYPE = "report"
    OPTIONS = Envelope.OPTIONS + (
        Option("host", _name(), doc="The host reported on (default: from)."),
        Option("event", String(nonempty=True, max_length=64, pattern=r"[a-z][a-z0-9-]*", form="an event name"),
               doc="Engine event that caused the report, or heartbeat."),
        Option("state", Choice(*STATES), doc="The engine's state."),
        Option("stage", StageIndex(), doc="Current nap stage."),
        Option("idle_seconds", Number(0, 1e10), doc="Seconds idle."),
        Option("next_wake", TIME, doc="Next scheduled wake (epoch)."),
        Option("macs", ListOf(Mac(), max_items=MAX_MACS), default=(), doc="The host's MACs."),
        Option("ips", ListOf(IpAddress(), max_items=MAX_IPS), default=(), doc="The host's addresses."),
        Option("wol", WOL_MODES, default={}, doc="Wake-on setting per MAC."),
        Option("load", Number(0, 1e6), doc="1-minute load average."),
        Option("cpus", Integer(1, 65536), doc="CPU count."),
        Option("interval", Duration(minimum=1, maximum=3600), default=30.0, doc="Seconds to the next heartbeat."),
        Option("detail", MapOf(String(nonempty=True, max_length=64), Scalar(1024), 32), default={},
               doc="The engine event's own fields."),
        Option("veto_for", Duration(maximum=7 * 86400),
               doc="Keep this host's groups from napping for this long (a [server] veto_monitors monitor is busy); "
                   "0 lifts the host's veto. The server cuts it to its max_veto."),
        Option("veto_reason", String(max_length=200), doc="Why (shown with the veto)."),
    )  # fmt: skip


class AckMessage(Envelope):
    """ack: server to engine."""

    KIND = "message"
    TYPE = "ack"
    OPTIONS = Envelope.OPTIONS + (Option("re", _nonce(), required=True, doc="The acknowledged nonce."),)


class CommandMessage(Envelope):
    """command: server to engine."""

    KIND = "message"
    TYPE = "command"
    OPTIONS = Envelope.OPTIONS + (
        Option("to", _name(), required=True, doc="The host that must carry it out."),
        Option("id", String(max_length=300), doc="Command id."),
        Option("command", Choice("nap", "wake-alarm"), required=True, doc="What to do."),
        Option("action", Choice(*NAP_ACTIONS), doc="The nap action (default: the next stage)."),
        Option("wake_at", TIME, doc="RTC wake alarm (epoch)."),
    )  # fmt: skip


class CommandAckMessage(Envelope):
    """command-ack: engine to server."""

    KIND = "message"
    TYPE = "command-ack"
    OPTIONS = Envelope.OPTIONS + (
        Option("re", _nonce(), required=True, doc="The command's nonce."),
        Option("id", String(max_length=300), doc="The command's id."),
        Option("ok", Boolean(), default=False, doc="Whether it was carried out."),
        Option("detail", Scalar(1024), doc="What happened (free text from the engine)."),
    )  # fmt: skip


class RequestMessage(Envelope):
    """request: an API write (wake, nap, demand, clear-mark)."""

    KIND = "message"
    TYPE = "request"
    OPTIONS = Envelope.OPTIONS + (
        Option("host", String(nonempty=True, max_length=253, pattern=r"[A-Za-z0-9_.:-]+", form="a name, IP or MAC"),
               doc="Target host by name, IP or MAC."),
        Option("method", Choice("auto", "wol", "ipmi"), doc="Wake method."),
        Option("action", Choice(*NAP_ACTIONS), doc="Nap action."),
        Option("more", Integer(0, 10000), doc="Demand: this many more awake hosts."),
        Option("ttl", Duration(minimum=1, maximum=7 * 86400), doc="Demand, veto: for this long."),
        Option("reason", String(max_length=200), doc="Veto: why the group must not nap."),
        Option("clear", Boolean(), doc="Veto: lift the group's vetoes instead."),
        Option("force", Boolean(),
               doc="Nap, approve: act even though the group's naps are vetoed or the host is marked by a failed wake."),
    )  # fmt: skip


class ReadMessage(Envelope):
    """read: an authenticated API read."""

    KIND = "message"
    TYPE = "read"
    OPTIONS = Envelope.OPTIONS + (Option("path", String(nonempty=True, max_length=1024), required=True,
                                         doc="The path read."),)  # fmt: skip


MESSAGES = {cls.TYPE: cls for cls in (ReportMessage, AckMessage, CommandMessage, CommandAckMessage,
                                      RequestMessage, ReadMessage)}  # fmt: skip


def check_message(message: Any) -> Dict[str, Any]:
    """Validate a decoded message against its kind's schema; ProtocolError names the bad field."""
    kind = message.get("kind") if isinstance(message, dict) else None
    schema = MESSAGES.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise ProtocolError("unknown message kind")
    try:
        return schema.check_values(message)
    except ValueError as exc:
        raise ProtocolError("%s: %s" % (kind, exc)) from None


class ServerKeys:
    """powerwaked's keys: every host's key derived from the master secret (cached), the master for admins."""

    def __init__(self, master: bytes):
        self.master = master
        self._hosts: Dict[str, bytes] = {}

    def host(self, name: str) -> bytes:
        key = self._hosts.get(name)
        if key is None:
            key = host_key(self.master, name).encode("ascii")
            if len(self._hosts) < 100000:  # bounded: names come from signed-or-not traffic
                self._hosts[name] = key
        return key

    def for_message(self, message: Dict[str, Any]) -> Optional[bytes]:
        """The key that must have signed ``message``: the sender's host key for engine kinds, else the master."""
        sender = message.get("from")
        if not isinstance(sender, str) or not sender or len(sender) > 253:
            return None
        if message.get("kind") in HOST_KINDS:
            return self.host(sender)
        return self.master


class ReplayGuard:
    """Rejects stale, future and repeated messages, per sender, in bounded memory.

    Per sender it keeps the last ``per_sender`` nonces; once that window is
    full, anything older than its oldest entry is refused as well, so a
    captured message can never be replayed later.
    """

    def __init__(self, max_skew: float = DEFAULT_SKEW, per_sender: int = 64):
        self.max_skew = max_skew
        self.per_sender = per_sender
        self._seen: Dict[str, Tuple[Deque[Tuple[float, str]], Set[str]]] = {}
        # Per sender, the newest ts accepted (persisted with the registry), and the floor restored
        # at start: after a restart nothing at or below it is accepted, so a message captured
        # before the restart cannot be replayed within the skew window.
        self.newest: Dict[str, float] = {}
        self.floor: Dict[str, float] = {}

    def restore(self, newest: Dict[str, float]) -> None:
        for sender, ts in newest.items():
            if ts > self.floor.get(sender, float("-inf")):
                self.floor[sender] = ts
                self.newest[sender] = max(ts, self.newest.get(sender, ts))

    def prune(self, now: float) -> None:
        """Forget senders quiet for longer than the skew window: the clock check refuses their old messages."""
        for sender, ts in list(self.newest.items()):
            if now - ts > self.max_skew:
                del self.newest[sender]
                self.floor.pop(sender, None)
                self._seen.pop(sender, None)

    def check(self, message: Dict[str, Any], now: float) -> None:
        ts = float(message["ts"])
        if not math.isfinite(ts) or not abs(ts - now) <= self.max_skew:
            raise ProtocolError("timestamp %.0fs away from ours (clock skew or replay)" % (ts - now))
        if ts <= self.floor.get(message["from"], float("-inf")):
            raise ProtocolError("not newer than the last message accepted before the restart")
        window, nonces = self._seen.setdefault(message["from"], (collections.deque(), set()))
        nonce = message["nonce"]
        if nonce in nonces:
            raise ProtocolError("replayed message")
        if len(window) >= self.per_sender:
            if ts < window[0][0]:
                raise ProtocolError("message older than the replay window")
            _old_ts, old_nonce = window.popleft()
            nonces.discard(old_nonce)
        window.append((ts, nonce))
        nonces.add(nonce)
        if ts > self.newest.get(message["from"], float("-inf")):
            self.newest[message["from"]] = ts

    def senders(self) -> int:
        return len(self._seen)


class Endpoint:
    """A verifying receiver: ``decode`` + ``ReplayGuard`` in one call."""

    def __init__(self, key: KeyFor, max_skew: float = DEFAULT_SKEW, clock: Callable[[], float] = time.time):
        self.key = key
        self.guard = ReplayGuard(max_skew)
        self.clock = clock

    def accept(self, data: bytes, label: bytes = TO_SERVER) -> Dict[str, Any]:
        message = check_message(decode(self.key, data, label))
        self.guard.check(message, self.clock())
        return message


def parse_server_url(url: str) -> Tuple[str, str, int]:
    """``udp://host[:port]``, ``http(s)://host[:port]`` or bare ``host[:port]`` (UDP) → (scheme, host, port).

    Every form names one server: reports go to its UDP port, the API is the TCP port of the same number.
    """
    text = url.strip()
    if "://" not in text:
        text = "udp://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError("server url %r: bad port" % url) from None
    if parts.scheme not in URL_SCHEMES or not parts.hostname:
        raise ValueError("server url %r: use udp://HOST[:PORT], http://HOST[:PORT] or https://HOST[:PORT]" % url)
    return parts.scheme, parts.hostname, port or DEFAULT_PORT


def state_for_event(event: Dict[str, Any], previous: str) -> str:
    """The host state an engine event means (``previous`` when the event changes nothing)."""
    name = event.get("event")
    if name == "action-start":
        return _ACTION_STATES.get(str(event.get("action")), previous)
    if name == "action-done":
        # A sleep action returns after the resume (which reports it); poweroff never returns.
        return previous
    state = _EVENT_STATES.get(str(name))
    return state if state is not None else previous


# -- the engine side ----------------------------------------------------------------------------
def host_facts(root: Any) -> Dict[str, Any]:
    """MACs with their WoL setting, IP addresses and load of this host, read through a SysRoot."""
    from ..platform import list_nics

    macs: List[str] = []
    wol: Dict[str, Optional[str]] = {}
    for nic in list_nics(root):
        if nic.get("mac") and nic.get("mac") != "00:00:00:00:00:00":
            macs.append(nic["mac"])
            wol[nic["mac"]] = nic.get("wol")
    load_text = root.read("/proc/loadavg", "") or ""
    try:
        load = float(load_text.split()[0])
    except (IndexError, ValueError):
        load = None
    return {
        "macs": macs,
        "wol": wol,
        "ips": local_ipv4(root.read("/proc/net/fib_trie", "") or "")
        + local_ipv6(root.read("/proc/net/if_inet6", "") or ""),
        "load": load,
        "cpus": os.cpu_count() or 1,
    }


def local_ipv4(fib_trie: str) -> List[str]:
    """This host's IPv4 addresses from /proc/net/fib_trie (the ``/32 host LOCAL`` leaves), loopback left out."""
    found: List[str] = []
    last = ""
    for line in fib_trie.splitlines():
        text = line.strip()
        if text.startswith(("|--", "+--")):
            last = text[3:].strip().split()[0]
        elif "/32 host LOCAL" in text and last and not last.startswith("127.") and last not in found:
            found.append(last)
    return found


def local_ipv6(if_inet6: str) -> List[str]:
    """Global and link-local IPv6 addresses from /proc/net/if_inet6, loopback left out."""
    found = []
    for line in if_inet6.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[5] == "lo":
            continue
        raw = bytes.fromhex(fields[0])
        found.append(socket.inet_ntop(socket.AF_INET6, raw))
    return found


class FleetReporter(Reporter):
    """The engine's reporter (``[server] url/token``): never blocks or crashes the daemon.

    ``report(event)`` only appends to a bounded queue and pokes a socketpair;
    one daemon thread signs and sends reports over UDP, waits briefly for the
    ack (retrying with a fresh nonce), sends a heartbeat every ``heartbeat``
    seconds with the daemon's status (read through its control socket), and
    carries out the server's signed ``command`` messages through the same
    control socket, so nothing here touches the daemon's objects.

    ``secret`` is this host's own key (``[server] token``).  Acks and commands
    count only when signed with it for this direction and sent from the
    server's address; a server found by DNS-SD is trusted only once it has
    acknowledged a report (which proves it holds this host's key), and is
    forgotten (found again) when it stops answering.
    """

    veto_monitors: Tuple[str, ...] = ()  # their activity vetoes the fleet's naps of our groups
    veto_for = 900.0

    def __init__(
        self,
        secret: str,
        host: str,
        url: str = "",
        timeout: float = 5.0,
        control_path: Optional[str] = None,
        root: Any = None,
        heartbeat: float = 30.0,
        log: Optional[logging.Logger] = None,
        discover: Optional[Callable[[float], Optional[Tuple[str, int]]]] = None,
        veto_monitors: Tuple[str, ...] = (),
        veto_for: float = 900.0,
    ):
        self.secret = secret.encode("utf-8")
        self.veto_monitors = tuple(veto_monitors)
        self.veto_for = veto_for
        self.host = host
        self.timeout = timeout
        self.control_path = control_path
        self.root = root
        self.heartbeat = heartbeat
        self.log = log or logging.getLogger("powernap.report")
        self.server: Optional[Tuple[str, int]] = None
        if url:
            # http://HOST:PORT names the same server: reports go to its UDP port of the same number.
            _scheme, address, port = parse_server_url(url)
            self.server = (address, port)
        self.discover = discover
        self.state = AWAKE
        self.stage: Optional[int] = None
        self.sent = 0
        self.acked = 0
        self.commands = 0
        self._facts: Dict[str, Any] = {}
        self._queue: Deque[Dict[str, Any]] = collections.deque(maxlen=100)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._sock = socket.socket(
            socket.AF_INET6 if self.server and ":" in self.server[0] else socket.AF_INET, socket.SOCK_DGRAM
        )
        self._endpoint = Endpoint(self.secret, clock=time.time)
        self._server_ip: Optional[str] = None  # the server's resolved address: the only source of acks and commands
        self.discovered = False
        self.verified = False  # the server has proved it holds our key (a signed ack)
        self._thread = threading.Thread(target=self._run, name="powernap-fleet-report", daemon=True)
        self._thread.start()

    # called from the daemon's loop: cheap and non-blocking
    def report(self, event: Dict[str, Any]) -> None:
        with self._lock:
            self._queue.append(dict(event))
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # the pipe is full: the thread is awake already

    def close(self) -> None:
        self._stop.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(timeout=self.timeout + 1.0)
        for sock in (self._sock, self._wake_r, self._wake_w):
            sock.close()

    # the worker thread
    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ)
        selector.register(self._sock, selectors.EVENT_READ)
        next_beat = time.monotonic()
        try:
            while not self._stop.is_set():
                for key, _mask in selector.select(max(0.0, next_beat - time.monotonic())):
                    if key.fileobj is self._wake_r:
                        self._wake_r.recv(4096)
                    else:
                        self._receive()
                while not self._stop.is_set():
                    with self._lock:
                        event = self._queue.popleft() if self._queue else None
                    if event is None:
                        break
                    self._send_event(event)
                if time.monotonic() >= next_beat and not self._stop.is_set():
                    self._send_event({"event": "heartbeat"})
                    next_beat = time.monotonic() + self.heartbeat
            with self._lock:
                pending = list(self._queue)
            for event in pending[-3:]:  # the stop event, mostly: one quick try, no ack wait
                self._send(self._message(event), wait=False)
        except Exception as exc:  # the reporter must never take the daemon down
            self.log.warning("fleet reporter stopped: %s", exc)
        finally:
            selector.close()

    def _message(self, event: Dict[str, Any]) -> Dict[str, Any]:
        name = event.get("event")
        beat: Dict[str, Any] = {}
        if name == "heartbeat":
            status = beat = self._status()
            if status:
                # The daemon's own state wins on heartbeats, except while a sleep action runs.
                if self.state not in (SUSPENDING, HIBERNATING, POWERING_OFF) or status.get("state") == AWAKE:
                    self.state = str(status.get("state") or self.state)
                stage = status.get("stage")
                self.stage = stage.get("index") if isinstance(stage, dict) else stage
        else:
            self.state = state_for_event(event, self.state)
            if name in ("powersave-apply", "action-start", "warn"):
                self.stage = event.get("stage")
            elif self.state == AWAKE:
                self.stage = None
        if name in ("start", "heartbeat", "resume", "reload") or not self._facts:
            self._facts = host_facts(self.root) if self.root is not None else {}
        if name == "heartbeat":
            status = beat
        else:
            status = self._status() if self.state not in SLEEPING_STATES else {}
        message = {
            "kind": "report",
            "from": self.host,
            "host": self.host,
            "event": name,
            "state": self.state,
            "stage": self.stage,
            "interval": self.heartbeat,
            "detail": {
                k: v[:1024] if isinstance(v, str) else v
                for k, v in list(event.items())[:32]
                if k not in ("event", "time") and _plain(v)
            },
        }
        message.update(self._facts)
        for key in ("idle_seconds", "next_wake"):
            if key in status:
                message[key] = status[key]
        message.update(self.veto(status))
        return message

    def veto(self, status: Dict[str, Any]) -> Dict[str, Any]:
        """``veto_for``/``veto_reason`` while a ``veto_monitors`` monitor is busy, ``veto_for = 0`` once none is."""
        if not self.veto_monitors or not isinstance(status.get("monitors"), list):
            return {}  # no veto monitors, or the daemon's status unknown: say nothing either way
        for monitor in status["monitors"]:
            if isinstance(monitor, dict) and monitor.get("name") in self.veto_monitors and monitor.get("active"):
                reason = "monitor %s: %s" % (monitor["name"], monitor.get("reason") or "busy")
                return {"veto_for": self.veto_for, "veto_reason": reason[:200]}
        return {"veto_for": 0.0}

    def _status(self) -> Dict[str, Any]:
        if not self.control_path:
            return {}
        from ..control import ControlError, request

        try:
            result = request(self.control_path, "status", timeout=min(self.timeout, 2.0))
        except ControlError:
            return {}
        return result if isinstance(result, dict) else {}

    def _send_event(self, event: Dict[str, Any]) -> None:
        self._send(self._message(event), wait=True)

    def _resolve(self) -> Optional[Tuple[str, int]]:
        if self.server is None and self.discover is not None:
            self.server = self.discover(min(self.timeout, 3.0))
            self.discovered = self.verified = False
            if self.server:
                self.discovered = True
                self.log.info("fleet server found by DNS-SD at %s:%d (not trusted until it acknowledges)", *self.server)
        if self.server is not None and self._server_ip is None:
            try:
                infos = socket.getaddrinfo(self.server[0], self.server[1], self._sock.family, socket.SOCK_DGRAM)
            except (OSError, UnicodeError) as exc:
                self.log.debug("cannot resolve the fleet server %s: %s", self.server[0], exc)
                return None
            self._server_ip = str(infos[0][4][0])
        return (self._server_ip, self.server[1]) if self.server is not None and self._server_ip else None

    def _forget_unverified(self) -> None:
        """A discovered server that never proved our key may be an impostor: look again next time."""
        if self.discovered and not self.verified and self.server is not None:
            self.log.warning("fleet server %s:%d did not prove our key: ignoring it", *self.server)
            self.server = None
            self._server_ip = None

    def _send(self, message: Dict[str, Any], wait: bool) -> bool:
        server = self._resolve()
        if server is None:
            return False
        tries = REPORT_TRIES if wait else 1
        for _attempt in range(tries):
            data = encode(self.secret, message)  # a fresh ts and nonce on every try
            nonce = json.loads(data.split(b" ", 2)[2])["nonce"]
            try:
                self._sock.sendto(data, server)
            except OSError as exc:
                self.log.debug("fleet report to %s:%d failed: %s", server[0], server[1], exc)
                return False
            self.sent += 1
            if not wait:
                return True
            if self._await_ack(nonce, self.timeout / tries):
                self.acked += 1
                self.verified = True
                return True
        self._forget_unverified()
        self.log.debug("fleet server %s:%d did not acknowledge %s", server[0], server[1], message.get("event"))
        return False

    def _await_ack(self, nonce: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._sock.settimeout(left)
            try:
                data, sender = self._sock.recvfrom(MAX_MESSAGE)
            except socket.timeout:
                return False
            except OSError:
                return False
            finally:
                self._sock.settimeout(None)
            message = self._verify(data, sender)
            if message is None:
                continue
            if message["kind"] == "ack" and message.get("re") == nonce:
                return True
            if message["kind"] == "command" and self.verified:
                self._run_command(message, sender)
        return False

    def _receive(self) -> None:
        self._sock.setblocking(False)
        try:
            data, sender = self._sock.recvfrom(MAX_MESSAGE)
        except OSError:
            return
        finally:
            self._sock.setblocking(True)
        message = self._verify(data, sender)
        if message is not None and message["kind"] == "command" and self.verified:
            self._run_command(message, sender)

    def _verify(self, data: bytes, sender: Tuple[str, int]) -> Optional[Dict[str, Any]]:
        """A message from the server to us, or None: the server's address, our key, the server>engine label."""
        server = (self._server_ip, self.server[1]) if self.server is not None else None
        if server is None or not _same_address(sender, server):
            self.log.debug("dropped a message from %s: not the fleet server", sender[0])
            return None
        try:
            message = self._endpoint.accept(data, TO_ENGINE)
        except ProtocolError as exc:
            self.log.debug("dropped a message from %s: %s", sender[0], exc)
            return None
        if message["from"] != SERVER_NAME:
            return None
        return message

    def _run_command(self, message: Dict[str, Any], sender: Tuple[str, int]) -> None:
        if message.get("to") != self.host:
            return
        self.commands += 1
        ok, detail = self.execute(message)
        reply = {
            "kind": "command-ack",
            "from": self.host,
            "re": message["nonce"],
            "id": message.get("id"),
            "ok": ok,
            "detail": detail[:1024],
        }
        try:
            self._sock.sendto(encode(self.secret, reply, TO_SERVER), sender)
        except OSError as exc:
            self.log.debug("command ack failed: %s", exc)

    def execute(self, message: Dict[str, Any]) -> Tuple[bool, str]:
        """Carry out one server command through the control socket."""
        from ..control import ControlError, request

        command = message.get("command")
        if command != "nap":
            return False, "unknown command %r" % command
        if not self.control_path:
            return False, "no control socket"
        action = message.get("action") or None
        self.log.info("fleet server asks to nap now (%s)", action or "next stage")
        try:
            if message.get("wake_at") and self.root is not None:
                set_rtc_alarm(self.root, float(message["wake_at"]))
            request(self.control_path, "now", timeout=min(self.timeout, 2.0), action=action)
        except (ControlError, OSError, ValueError) as exc:
            return False, str(exc)
        return True, "napping (%s)" % (action or "next stage")


def make_fleet_reporter(
    server: Dict[str, Any], host: str, log: Optional[logging.Logger], control_path: Optional[str], root: Any
) -> FleetReporter:
    """The engine's reporter from its ``[server]`` options; an empty url means DNS-SD discovery."""
    discover = None
    if not server.get("url"):
        from .mdns import browse

        discover = browse
    return FleetReporter(
        str(server.get("token") or ""),
        host,
        str(server.get("url") or ""),
        float(server.get("timeout") or 5.0),
        control_path=control_path,
        root=root,
        log=log,
        discover=discover,
        veto_monitors=tuple(server.get("veto_monitors") or ()),
        veto_for=float(server.get("veto_for") or 900.0),
    )


def _same_address(sender: Tuple[Any, ...], server: Tuple[Any, int]) -> bool:
    """Whether a datagram came from the server's address and port (IPv4-mapped IPv6 compared as IPv4)."""
    host = str(sender[0])
    if host.startswith("::ffff:"):
        host = host[7:]
    return host == str(server[0]) and int(sender[1]) == int(server[1])


def set_rtc_alarm(root: Any, epoch: float) -> None:
    """Program the RTC wake alarm (the ``echo 0`` first avoids EBUSY when one is set)."""
    path = "/sys/class/rtc/rtc0/wakealarm"
    if not root.exists(path):
        return
    root.write(path, "0")
    root.write(path, "%d" % int(epoch))


def _plain(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)  # the server refuses NaN and Infinity
    return value is None or isinstance(value, (str, int, bool))
