"""powerwaked: the main loop of the fleet server (one per L2 segment).

One selector loop serves: the UDP report socket (engine reports, command
acks), the sleep proxy's raw sockets, the mDNS socket and the signal
wake-up socket; every ``TICK`` it runs the time-based work (registry
staleness, wake confirmation and IPMI escalation, command resends, UPS,
schedule and cluster policies, saving the registry).  The HTTP API runs on
its own thread and takes ``self.lock`` like the loop does.

Run: ``python3 -m powernap.server.daemon [--config FILE] [--check-config]``.
"""

import argparse
import gc
import logging
import os
import queue
import selectors
import signal
import socket
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import __version__
from ..clock import Clock
from ..daemon import sd_notify, watchdog_interval
from ..fleet_keys import host_key
from ..magic_packet import format_mac
from . import mdns
from . import protocol as P
from .api import ApiError, ApiServer, tls_context
from .cluster import ClusterPolicy, UrlLoad
from .config import DEFAULT_CONFIG, ServerConfig, config_files, insecure_mode, load_config
from .energy import EnergyMeter
from .fleet import HISTORY_SHOWN, Fleet
from .fleetmode import POLICY, FleetMode, RoutedFleet
from .metrics import WakeStats, server_collectors
from .netinfo import NetView
from .proxy import RawListener, SleepProxy, tcp_probe
from .rails import PowerRails
from .registry import Refused, Registry
from .schedule import SchedulePolicy, earliest
from .store import StoreError, dumps, open_store
from .trust import ClaimFilter
from .ups import UpsPolicy, UpsPoller
from .wake import WolSender, interface_mac

TICK = 0.25
TEST_CLOCK_ENV = "POWERWAKED_TEST_CLOCK"  # must be "yes" for --test-clock-start to be taken (tests only)
PROBE_EVERY = 5.0  # seconds between confirmation probes of one host
MAX_PROBES = 16  # probes running at once
NET_REFRESH = 60.0  # seconds between re-reads of our addresses, gateways and links
# Seconds (message time) between walks of the replay state for senders quiet beyond the skew window: a walk of
# every sender each tick cost 5 % of an instance at 100,000 hosts, and a floor kept a few seconds longer is harmless.
REPLAY_PRUNE_EVERY = 5.0


class Server:
    def __init__(
        self,
        config: ServerConfig,
        clock: Optional[Clock] = None,
        log: Optional[logging.Logger] = None,
        api: bool = True,
        net: Optional[NetView] = None,
    ):
        self.config = config
        self.clock = clock or Clock()
        self.log = log or logging.getLogger("powernap.powerwaked")
        self.lock = threading.RLock()
        self.want_api = api
        opts = config.server
        self.read_auth = bool(opts["read_auth"])
        # Each host's key is derived from the master secret: a report verifies only with its sender's key.
        self.keys = P.ServerKeys(config.secret.encode("utf-8"))
        # Signed messages are checked against the real clock even under a test clock (their senders use it).
        self.endpoint = _Endpoint(
            self.keys.for_message, float(opts["max_skew"]), clock=getattr(self.clock, "real_wall", self.clock.wall)
        )
        # Fleet mode (FLEETMODE.md): several instances on one PostgreSQL; None: the one server of its segment.
        self.fleetmode: Optional[FleetMode] = FleetMode(self) if config.fleet else None
        store: Any = config.store  # opened by the registry: a store it cannot open stops the start
        if self.fleetmode is not None:
            store = open_store(config.store, self.log.getChild("registry"), fleet=self.fleetmode.store_options())
        self.registry = Registry(
            store,
            float(opts["stale_factor"]),
            float(opts["save_every"]),
            log=self.log.getChild("registry"),
            max_hosts=int(opts["max_hosts"]),
            register=bool(opts["register"]),
            # Longer than any wake the wake service is still resolving (WoL, then IPMI, each confirmed).
            waking_timeout=2 * float(opts["confirm_timeout"]) + float(config.ipmi["timeout"]) + 30.0,
        )
        self.endpoint.registry = self.registry
        if self.fleetmode is not None:
            self.fleetmode.attach(self.registry.store)
        self.energy = EnergyMeter(config)
        self.registry.meter = self.energy
        self.wake_stats = WakeStats()
        self.registry.listeners.append(self.wake_stats.on_state_change)
        self.members = config.group_members()
        self.net = net or NetView()
        self.claims = ClaimFilter(self.registry, config.hosts, self.log.getChild("trust"))
        self._net_refreshed = 0.0
        self._replay_pruned = float("-inf")  # message time of the last ``_prune_replay`` walk
        self.wol = WolSender(opts["interface"], opts["broadcast"], opts["wol_port"], opts["wol_transport"])
        self.fleet = Fleet(
            self.registry, config, self.clock, self.wol.send, self._send_datagram, log=self.log.getChild("fleet")
        )
        # Every wake and nap (proxy, policies, API) passes the policy gate on its way to the fleet.
        gate_fleet: Any = self.fleet if self.fleetmode is None else RoutedFleet(self.fleet, self.fleetmode)
        self.rails = PowerRails(gate_fleet, config, self.clock, log=self.log.getChild("rails"))
        if self.fleetmode is not None:  # wake-health retries and test wakes pass the fleet-wide gate too
            self.fleet.health.request_wake = lambda record, cause, test=False: self.gated_wake(
                record, cause, source="health", test=test
            )
        self.registry.extras["rails"] = self.rails.export
        self.registry.listeners.append(self.rails.on_state_change)
        self.udp: Optional[socket.socket] = None
        self.api: Optional[ApiServer] = None
        self.raw: Optional[RawListener] = None
        self.proxy: Optional[SleepProxy] = None
        self.mdns: Optional[mdns.Responder] = None
        self.ups: List[Tuple[UpsPolicy, UpsPoller]] = []
        self.schedules: List[SchedulePolicy] = []
        self.clusters: Dict[str, ClusterPolicy] = {}
        self.url_loads: List[UrlLoad] = []
        self.reports = 0
        self.rejected = 0
        self.refused = 0  # valid reports the registry would not take (unregistered host, host cap)
        self.errors = 0  # inputs or ticks that raised: logged with a traceback, the daemon goes on
        self.insecure_files: List[str] = []
        self._refusals_logged: Dict[str, float] = {}
        self._failures_logged: Dict[str, float] = {}
        self._probes: Dict[str, float] = {}  # host -> when it was last probed after a hint
        self._probe_results: queue.SimpleQueue[Tuple[str, str, str]] = queue.SimpleQueue()
        self.started = self.clock.wall()
        # /metrics: the families powerwaked has; later parts register theirs with self.metrics.register.
        self.metrics = server_collectors(self)
        if self.fleetmode is not None:
            self.fleetmode.register_metrics(self.metrics)
        self._selector = selectors.DefaultSelector()
        self._watchdog: Optional[float] = None
        self._stopping = False
        self._signal_r: Optional[socket.socket] = None
        self._signal_w: Optional[socket.socket] = None
        # Parts of /v1/status contributed by the policy modules (name -> callable(now)); the policy gate
        # (rate limits, queues, vetoes, decisions) adds its own here.
        self.status_parts: Dict[str, Any] = {"wake_health": self.fleet.health.to_dict}

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        opts = self.config.server
        now = self.clock.wall()
        # Fleet mode: no 0.1 JSON import (one file of one server); the first lead poll reads the segment's rows.
        loaded = self.registry.load(import_json=None if self.fleetmode is not None else str(opts["state_file"]))
        if self.fleetmode is not None:
            self.fleetmode.start(now)
            loaded = len(self.registry)
        self.fleet.history = self.registry.recent_history(HISTORY_SHOWN)
        if self.registry.problems:
            self.log.error("registry: started with what could be read; see /v1/status 'registry'")
        self.endpoint.guard.restore(self.registry.replay)
        for name, host in self.config.hosts.items():
            record = self.registry.define(name, host["mac"], host["ip"], host["groups"], host["bmc"] or None,
                                          host["wake"])  # fmt: skip
            if self.fleetmode is not None and record.segment is None:
                record.segment = self.config.segment_of(name)
                self.registry.placed()
        for group, names in self.members.items():
            for name in names:
                record = self.registry.get(name) or self.registry.define(name)
                if group not in record.groups:
                    record.groups.append(group)
        if self.rails.restore(self.registry.saved_extras.get("rails")):
            self.registry.problems["policy"] = "some saved policy state was dropped (see the log)"
        self.log.info("powerwaked %s: %d hosts (%d from the saved registry)", __version__, len(self.registry), loaded)
        self._refresh_net(time.monotonic())
        family = socket.AF_INET6 if ":" in opts["listen"] else socket.AF_INET
        self.udp = socket.socket(family, socket.SOCK_DGRAM)
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _large_receive_buffer(self.udp)
        self.udp.bind((opts["listen"], opts["port"]))
        self.udp.setblocking(False)
        self._selector.register(self.udp, selectors.EVENT_READ, self._on_udp)
        if self.want_api:
            tls = tls_context(opts["tls_cert"], opts["tls_key"]) if opts["tls_cert"] else None
            self.api = ApiServer(
                self,
                opts["listen"],
                opts["port"],
                opts["max_clients"],
                opts["request_timeout"],
                tls,
                opts["max_clients_per_ip"],
            )
            self.api.start()
        if opts["interface"] and self.config.proxy["enabled"]:
            self._start_proxy(now)
        self._watchdog = watchdog_interval()
        for name, ups_opts in self.config.named["ups"].items():
            poller = UpsPoller(ups_opts, self.log.getChild("ups"))
            poller.start()
            self.ups.append((UpsPolicy(name, ups_opts, self.rails, self.members, self.log.getChild("ups")), poller))
        holds = {policy.hold for policy, _poller in self.ups}
        for record in self.registry.owned():  # fleet mode: the hosts whose rows we write (their writers do the rest)
            if record.hold and record.hold not in holds:
                # Its policy left the config: a hold nothing will ever lift would keep the host down for good.
                self.log.warning("host %s: releasing hold %r (no such policy any more)", record.name, record.hold)
                self.registry.set_hold(record, None, record.hold)
        for name, sched_opts in self.config.named["schedule"].items():
            self.schedules.append(
                SchedulePolicy(name, sched_opts, self.rails, self.members, self.log.getChild("schedule"), now)
            )
        for name, cl_opts in self.config.named["cluster"].items():
            url_load = None
            if cl_opts["source"] == "url":
                url_load = UrlLoad(cl_opts["url"], cl_opts["json_key"], self.log.getChild("cluster"), self.clock)
                url_load.start()
                self.url_loads.append(url_load)
            self.clusters[cl_opts["group"]] = ClusterPolicy(
                name, cl_opts, self.rails, self.members, self.log.getChild("cluster"), url_load
            )
        if opts["announce"]:
            try:
                self.mdns = mdns.Responder(
                    socket.gethostname(),
                    opts["port"],
                    opts["interface"],
                    self.log.getChild("mdns"),
                    on_link=self.net.on_link,
                )
                self._selector.register(self.mdns.sock, selectors.EVENT_READ, self._on_mdns)
            except OSError as exc:
                self.log.warning("mDNS announce disabled: %s", exc)
                self.mdns = None
        self.registry.save(now)
        # What start-up built (config, up to max_hosts records, policies) lives as long as the daemon:
        # out of the collector's sight, a full collection no longer walks it (at 10,000 hosts each one
        # paused the loop for 0.2-0.3 s; benchmarks/bench_policy.py).  Nothing of it is ever a cycle to free.
        gc.freeze()
        sd_notify("READY=1\nSTATUS=%d hosts" % len(self.registry))

    def _refresh_net(self, mono: float) -> None:
        """Re-read our addresses and the gateways: nobody may claim them, and the proxy ignores their frames."""
        self._net_refreshed = mono
        try:
            self.net.refresh()
        except (OSError, ValueError) as exc:
            self.log.warning("cannot read the network view: %s", exc)
            return
        ips, macs = self.net.protected()
        self.claims.protect(ips, macs)
        if self.proxy is not None:
            self.proxy.protect(self.net.own_ips, self.net.gateway_macs if self.config.proxy["ignore_gateway"] else ())

    def _start_proxy(self, now: float) -> None:
        opts, proxy_opts = self.config.server, self.config.proxy
        self.raw = RawListener(opts["interface"], ipv6=proxy_opts["ipv6"], ipv4=proxy_opts["answer_arp"])
        own = format_mac(interface_mac(opts["interface"]))
        self.proxy = SleepProxy(
            self.registry,
            self._proxy_wake,
            own_macs=[own],
            ignore_macs=proxy_opts["ignore_macs"],
            cooldown=proxy_opts["cooldown"],
            rate=proxy_opts["rate"],
            burst=proxy_opts["burst"],
            answer_arp=proxy_opts["answer_arp"],
            ports=proxy_opts["ports"],
            proxy_mac=own,
            send_frame=self.raw.send,
            now=now,
            wake_unreported=proxy_opts["wake_unreported"],
            probe=self.probe,
            source_wakes=proxy_opts["source_wakes"],
            source_window=proxy_opts["source_window"],
            log=self.log.getChild("proxy"),
        )
        self.proxy.protect(self.net.own_ips, self.net.gateway_macs if proxy_opts["ignore_gateway"] else ())
        self.registry.listeners.append(self._on_state_change)
        for fd in self.raw.fds():
            self._selector.register(fd, selectors.EVENT_READ, self._on_raw)
        self.log.info("sleep proxy on %s (answer_arp=%s)", opts["interface"], proxy_opts["answer_arp"])

    def _proxy_wake(self, record: Any, cause: str) -> Any:
        return self.gated_wake(record, cause, source="proxy")

    # -- fleet mode: who does what ------------------------------------------------------------
    def _leads(self, role: str) -> bool:
        """Single-instance mode does everything; in fleet mode only the leader of ``role`` (segment, policy)."""
        if self.fleetmode is None:
            return True
        return self.fleetmode.segment_leader if role == "segment" else self.fleetmode.policy_leader

    def gated_wake(self, record: Any, cause: str, method: str = "auto", *, source: str, test: bool = False) -> Any:
        return self._gated("wake", record, cause, source, method=method, test=test)

    def gated_nap(self, record: Any, action: str, cause: str, *, source: str, force: bool = False) -> Any:
        return self._gated("nap", record, cause, source, action=action, force=force)

    def _gated(self, kind: str, record: Any, cause: str, source: str, **options: Any) -> Any:
        """A wake or nap through the policy gate: here, or in fleet mode at the policy leader (its rate limits are
        the fleet's) as an ``@policy`` job; StoreError when that job cannot be queued."""
        gate = self.rails.wake if kind == "wake" else self.rails.nap
        if self.fleetmode is None:
            return gate(record, cause=cause, source=source, **options)
        if self.fleetmode.policy_leader:
            return self._accepted(record, gate(record, cause=cause, source=source, **options))
        return self._to_policy(record, kind, dict(options, host=record.name, cause=cause, source=source))

    def _to_policy(self, record: Any, kind: str, payload: Dict[str, Any]) -> Dict[str, Any]:
        job = self.fleetmode.submit(POLICY, kind, payload)
        return {"host": record.name, "job": job, "segment": self.fleetmode.segment_of(record), "queued": True}

    def _accepted(self, record: Any, entry: Dict[str, Any]) -> Dict[str, Any]:
        """The policy leader's gate answered: a refusal as it is, else the fleet's 'queued' answer."""
        if entry.get("what") == "refused":
            return entry
        segment = entry.get("segment") or self.fleetmode.segment_of(record)
        return {"host": record.name, "job": entry.get("job"), "segment": segment, "queued": True,
                "what": entry.get("what")}  # fmt: skip

    def watch_fd(self, fd: int, callback: Any) -> None:
        """Fleet mode: read ``fd`` from the loop (the job connection's NOTIFYs)."""
        self._selector.register(fd, selectors.EVENT_READ, callback)

    def unwatch_fd(self, fd: int) -> None:
        try:
            self._selector.unregister(fd)
        except (KeyError, ValueError, OSError):
            pass

    def _on_state_change(self, record: Any, old: str, cause: str) -> None:
        if self.proxy is not None and old == P.WAKING and record.up and self._leads("segment"):
            self.proxy.announce(record)

    def run(self, max_seconds: Optional[float] = None) -> int:
        self._install_signals()
        give_up = None if max_seconds is None else time.monotonic() + max_seconds
        next_tick = time.monotonic()
        next_ping = time.monotonic()
        try:
            while not self._stopping:
                if give_up is not None and time.monotonic() >= give_up:
                    break
                for key, _mask in self._selector.select(max(0.0, next_tick - time.monotonic())):
                    with self.lock:
                        self._isolated("input", key.data, key.fd)
                if time.monotonic() >= next_tick:
                    with self.lock:
                        self.tick()
                    next_tick = time.monotonic() + TICK
                if self._watchdog is not None and time.monotonic() >= next_ping:
                    # Pinged from the loop itself: a wedged loop (or lock) misses it and systemd restarts us.
                    sd_notify("WATCHDOG=1\nSTATUS=%d hosts, %d reports" % (len(self.registry), self.reports))
                    next_ping = time.monotonic() + self._watchdog
        finally:
            self.shutdown()
        return 0

    def _isolated(self, what: str, function: Any, *args: Any) -> None:
        """Run one handler or policy step; whatever it raises is logged and counted, never fatal.

        The traceback is logged once a minute per kind of step (``what``): a step that fails on
        every tick must not flood the journal.
        """
        try:
            function(*args)
        except Exception as exc:
            self.errors += 1
            now = time.monotonic()
            if now - self._failures_logged.get(what, float("-inf")) >= 60.0:
                self._failures_logged[what] = now
                self.log.exception("%s failed (the server goes on; %d failures so far)", what, self.errors)
            else:
                self.log.debug("%s failed again: %s", what, exc)

    def tick(self) -> None:
        now = self.clock.wall()
        if time.monotonic() - self._net_refreshed >= NET_REFRESH:
            self._isolated("network view refresh", self._refresh_net, time.monotonic())
        if self.fleetmode is not None:
            self._isolated("fleet mode", self.fleetmode.tick, now)
        self._isolated("registry tick", self.registry.tick, now)
        self._isolated("probe results", self._apply_probes, now)
        if self.proxy is not None and self._leads("segment"):
            self._isolated("proxy tick", self.proxy.tick, now)
            if self.raw is not None:
                self._isolated(
                    "solicited-node groups",
                    self.raw.join_solicited,
                    [ip for record in self.registry for ip in record.ips if ":" in ip],
                )
        self._isolated("wake service tick", self.fleet.tick)
        if self._leads("policy"):  # fleet mode: the fleet's policies run once, at the policy leader
            self._isolated("policy gate", self.rails.tick)
            for policy, poller in self.ups:
                self._isolated("UPS %s" % policy.name, policy.observe, poller.latest, now)
            for schedule in self.schedules:
                self._isolated("schedule %s" % schedule.name, schedule.tick, now)
            for cluster in self.clusters.values():
                self._isolated("cluster %s" % cluster.name, cluster.tick, now)
        self._isolated("replay state", self._prune_replay, self.endpoint.clock())  # message time (real)
        self._isolated("registry save", self.registry.save_if_due, now)

    # -- confirmation probes ------------------------------------------------------------------
    def probe(self, record: Any) -> None:
        """Check in the background whether a host is up (a hint came, or a wake waits for confirmation)."""
        now = self.clock.wall()
        if not record.ips or now - self._probes.get(record.name, float("-inf")) < PROBE_EVERY:
            return
        if sum(1 for t in threading.enumerate() if t.name.startswith("probe-")) >= MAX_PROBES:
            return
        self._probes[record.name] = now
        name, ips, ports = record.name, list(record.ips)[:4], self.config.proxy["probe_ports"]

        def run() -> None:
            try:
                self._probe_results.put((name, tcp_probe(ips, ports), ""))
            except OSError as exc:
                self._probe_results.put((name, "", str(exc)))

        threading.Thread(target=run, name="probe-" + name, daemon=True).start()

    def _apply_probes(self, now: float) -> None:
        while True:
            try:
                name, answer, error = self._probe_results.get_nowait()
            except queue.Empty:
                break
            record = self.registry.get(name)
            if record is not None and answer:
                self.registry.seen(record, now, "probe: %s" % answer)
            elif error:
                self.log.debug("probe of %s: %s", name, error)
        for record in self.registry.owned():
            if record.state == P.WAKING:
                self.probe(record)  # a woken host without an engine is confirmed this way
        if len(self._probes) > 4 * MAX_PROBES:
            self._probes = {n: t for n, t in self._probes.items() if now - t < PROBE_EVERY}

    def _prune_replay(self, now: float) -> None:
        if 0.0 <= now - self._replay_pruned < REPLAY_PRUNE_EVERY:
            return
        self._replay_pruned = now
        self.endpoint.guard.prune(now)
        self.registry.prune_replay(now, self.endpoint.guard.max_skew)

    def shutdown(self) -> None:
        sd_notify("STOPPING=1")
        with self.lock:
            if self.api is not None:
                self.api.close()
                self.api = None
            for _policy, poller in self.ups:
                poller.close()
            for url_load in self.url_loads:
                url_load.close()
            if self.mdns is not None:
                self.mdns.close()
                self.mdns = None
            if self.raw is not None:
                self.raw.close()
                self.raw = None
            self.wol.close()
            if self.fleetmode is not None:
                self.fleetmode.close()
            if self.udp is not None:
                self.registry.wait_saved()
                self.registry.save(self.clock.wall())
                self.udp.close()
                self.udp = None
            self.registry.close()
            self._selector.close()
            self._restore_signals()

    # -- signals ------------------------------------------------------------------------------
    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._signal_r, self._signal_w = socket.socketpair()
        for sock in (self._signal_r, self._signal_w):
            sock.setblocking(False)
        signal.set_wakeup_fd(self._signal_w.fileno())
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _note_signal)
        self._selector.register(self._signal_r, selectors.EVENT_READ, self._on_signal)

    def _restore_signals(self) -> None:
        if self._signal_r is None:
            return
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        self._signal_r.close()
        self._signal_w.close()
        self._signal_r = self._signal_w = None

    def _on_signal(self, fd: int) -> None:
        try:
            data = self._signal_r.recv(64)
        except OSError:
            return
        if any(b in (signal.SIGTERM, signal.SIGINT) for b in data):
            self.log.info("stopping on signal")
            self._stopping = True

    def stop(self) -> None:
        self._stopping = True

    # -- sockets ------------------------------------------------------------------------------
    def _send_datagram(self, data: bytes, address: Tuple[str, int]) -> None:
        if self.udp is not None:
            self.udp.sendto(data, address)

    def _on_udp(self, fd: int) -> None:
        """Drain the report socket; each datagram is handled on its own, acks go out once journaled."""
        acks: List[Tuple[bytes, Tuple[str, int]]] = []
        try:
            for _index in range(256):
                try:
                    data, sender = self.udp.recvfrom(P.MAX_MESSAGE + 1)
                except (BlockingIOError, InterruptedError):
                    return
                self._isolated("a UDP message", self._on_datagram, data, sender, acks)
        finally:
            # Save (journal, fsync) before the ack: an acknowledged report survives kill -9.
            if not self.registry.pending or self.registry.commit():
                for ack, address in acks:
                    try:
                        self.udp.sendto(ack, address)
                    except OSError as exc:
                        self.log.debug("ack to %s failed: %s", address[0], exc)

    def _on_datagram(self, data: bytes, sender: Tuple[str, int], acks: List[Tuple[bytes, Tuple[str, int]]]) -> None:
        try:
            message = self.endpoint.accept(data)
        except P.ProtocolError as exc:
            self.rejected += 1
            self.log.debug("rejected a message from %s: %s", sender[0], exc)
            return
        if message["kind"] == "report":
            try:
                answer = self.accept_report(message, sender, commit=False)
            except Refused as exc:
                return self._refuse(exc, message)
            if answer is None:
                return  # a report for another host than its signer: no ack
            ack = P.encode(
                self.keys.host(message["from"]),
                {"kind": "ack", "from": P.SERVER_NAME, "re": message["nonce"]},
                P.TO_ENGINE,
            )
            acks.append((ack, sender))
        elif message["kind"] == "command-ack":
            self.registry.note_sender(message["from"], float(message["ts"]))
            self.fleet.on_command_ack(message)
        else:
            self.rejected += 1
            self.log.debug("rejected a %s message from %s: not taken over UDP", message["kind"], sender[0])

    def _refuse(self, exc: Exception, message: Dict[str, Any]) -> None:
        """Count a refused report; log each refused name once an hour (a flood must not flood the log)."""
        self.refused += 1
        name = str(message.get("host") or message["from"])
        now = self.clock.wall()
        if now - self._refusals_logged.get(name, float("-inf")) >= 3600.0:
            if len(self._refusals_logged) > 1000:
                self._refusals_logged.clear()
            self._refusals_logged[name] = now
            self.log.warning("refused a report: %s", exc)

    def _on_raw(self, fd: int) -> None:
        now = self.clock.wall()
        frames = self.raw.read(fd)
        if not self._leads("segment"):
            return  # fleet mode: the segment's leader answers and wakes; we only drain the socket
        for frame in frames:
            self._isolated("a proxy frame", self.proxy.on_frame, frame, now)

    def _on_mdns(self, fd: int) -> None:
        self.mdns.on_readable()

    # -- the API's view (called with self.lock held) ------------------------------------------
    def accept_report(
        self, message: Dict[str, Any], sender: Optional[Tuple[str, int]], commit: bool = True, forwarded: bool = False
    ) -> Optional[Dict[str, Any]]:
        """Apply a verified report; ``commit`` journals it at once (the API answers only after that).

        None (logged) when it speaks for another host than its signer; Refused when the registry
        will not take the host (unregistered, host cap).
        """
        host = message["from"]
        if forwarded:
            # Verified by the instance that took it, against what reached that instance: here against what reached
            # the leader too, so a report captured on its way to one instance and replayed to another is refused.
            self.endpoint.guard.check(message, self.clock.wall())
        if message.get("host", host) != host:
            self.rejected += 1
            self.log.warning("host %s sent a report for %r: refused (a host reports only for itself)", host,
                             str(message.get("host"))[:64])  # fmt: skip
            return None
        if self.fleetmode is not None:
            known = self.registry.get(host)
            segment = (known.segment if known is not None else None) or self.config.segment_of(
                host, message.get("ips") or ()
            )
            if not (self.fleetmode.segment_leader and segment in (None, self.fleetmode.segment)):
                # Verified here, applied by the leader of the host's segment (durable before the ack).  A forwarded one
                # that reached the leader of another segment (the forwarder's view was behind) goes on to the host's:
                # never applied to a mirror here, and never round in circles (each leader's guard took its nonce).
                payload = {"message": message, "sender": list(sender) if sender else None}
                job = self.fleetmode.submit(segment or self.fleetmode.segment, "report", payload)
                self.fleetmode.counts["forwarded"] += 1
                return {"host": host, "state": known.state if known is not None else P.UNKNOWN, "saved": True,
                        "forwarded": True, "job": job}  # fmt: skip
        claimed = self.claims.filter(host, message)
        # The source address joins the host's addresses only where it may claim it (never the gateway's);
        # acks and commands still go there.
        sender_ip_ok = sender is not None and self.claims.sender_ok(host, sender[0])
        record = self.registry.accept_report(claimed, sender, self.clock.wall(), sender_ip_ok=sender_ip_ok)
        if self.fleetmode is not None and record.segment is None:  # its first report decides (FLEETMODE.md)
            record.segment = self.config.segment_of(record.name, record.ips) or self.fleetmode.segment
            self.registry.placed()
        if self.fleetmode is not None:  # the fleet's gate is the policy leader's
            self.fleetmode.engine_veto(record, claimed, self.clock.wall())
        else:
            self.rails.engine_veto(record, claimed, self.clock.wall())
        self.reports += 1
        saved = self.registry.commit() if commit else True
        return {"host": record.name, "state": record.state, "saved": saved}

    def api_status(self, full: bool = True) -> Dict[str, Any]:
        counts: Dict[str, int] = {}
        for record in self.registry:
            counts[record.state] = counts.get(record.state, 0) + 1
        return {
            "version": __version__,
            "started": self.started,
            "hosts": len(self.registry),
            "states": counts,
            "reports": self.reports,
            "rejected": self.rejected,
            "refused": self.refused,
            "errors": self.errors,
            "registry": {
                "ok": not self.registry.problems,
                "store": self.registry.store.kind if self.registry.store is not None else None,
                "problems": dict(self.registry.problems),
                "saves": self.registry.saves,
                "save_failures": self.registry.save_failures,
                "max_hosts": self.registry.max_hosts,
            },
            "insecure_files": list(self.insecure_files),
            "proxy": dict(self.proxy.counts) if self.proxy is not None else None,
            "api": self._api_counts(),
            "refused_claims": self.claims.refused,
            "ups": [policy.to_dict() for policy, _poller in self.ups],
            "schedules": [schedule.to_dict() for schedule in self.schedules],
            "clusters": [cluster.to_dict() for cluster in self.clusters.values()],
            "energy": dict(self.energy.report(self.registry, self.clock.wall()), price_per_kwh=self.energy.price),
            "policy": self.rails.to_dict(self.clock.wall(), full),
            "test_clock": isinstance(self.clock, TestClock),
            **({"fleet": self.fleetmode.status()} if self.fleetmode is not None else {}),
            **{name: part(self.clock.wall()) for name, part in self.status_parts.items()},
        }

    def api_hosts(self, full: bool = True) -> List[Dict[str, Any]]:
        return [self._host(record, full) for record in sorted(self.registry, key=lambda r: r.name)]

    def api_host(self, target: str, full: bool = True) -> Optional[Dict[str, Any]]:
        # By IP or MAC only for signed readers: an open lookup would confirm addresses one by one.
        record = self.registry.find(target) if full else self.registry.get(target)
        return self._host(record, full) if record is not None else None

    def _host(self, record: Any, full: bool) -> Dict[str, Any]:
        shown = dict(_shown(record.to_dict(), full), policy=self.rails.host_view(record.name, self.clock.wall(), full))
        shown["energy"] = self.energy.host_report(record, self.clock.wall())  # the accumulators plus the running state
        if self.fleetmode is not None:
            shown["segment"] = self.fleetmode.segment_of(record)
        return shown

    def api_metrics(self) -> str:
        """The Prometheus text of GET /metrics (api.route checks who may read it)."""
        return self.metrics.render()

    def _api_counts(self) -> Optional[Dict[str, int]]:
        if self.api is None:
            return None
        httpd = self.api.httpd
        return {"connections": httpd.connections(), "refused": httpd.refused, "cut_off": httpd.cut_off}

    def api_groups(self, full: bool = True) -> List[Dict[str, Any]]:
        return [self._group(name, full) for name in sorted(self.members)]

    def api_group(self, name: str, full: bool = True) -> Optional[Dict[str, Any]]:
        return self._group(name, full) if name in self.members else None

    def _group(self, name: str, full: bool = True) -> Dict[str, Any]:
        records = [r for r in (self.registry.get(n) for n in self.members[name]) if r is not None]
        info = {
            "name": name,
            "members": [r.name for r in records],
            "awake": sum(1 for r in records if r.up),
            "asleep": sum(1 for r in records if r.asleep),
            "waking": sum(1 for r in records if r.state == P.WAKING),
            "unknown": sum(1 for r in records if r.state == P.UNKNOWN),
            "held": sum(1 for r in records if r.hold),
            "marked": sum(1 for r in records if r.wake_health.get("marked")),  # a failed wake keeps them up
            "needed": None,
            "next_wake": earliest(self.schedules, name),
            "energy": self.energy.report(records, self.clock.wall()),
        }
        cluster = self.clusters.get(name)
        if cluster is not None:
            info["needed"] = cluster.needed
            info["cluster"] = cluster.to_dict()
        info["policy"] = self.rails.group_view(name, self.clock.wall(), full)
        return info

    def api_history(self) -> List[Dict[str, Any]]:
        if self.fleetmode is None:
            return list(self.fleet.history)
        return self._fleet_history()

    def _fleet_history(self) -> List[Dict[str, Any]]:
        """Fleet mode: the fleet's one history, the same at every instance (FLEETMODE.md).

        The newest HISTORY_SHOWN entries of the shared table (each names the instance that wrote it), plus
        this instance's own entries the registry has not written yet, in time order.  While the database does
        not answer, this instance's own entries, and a registry problem in /v1/status says so."""
        store = self.registry.store
        me = getattr(store, "instance", "")
        try:
            stored = store.read_history(HISTORY_SHOWN)
        except OSError as exc:
            self.registry.problems["history"] = "cannot read the fleet's history: %s" % exc
            return [dict(entry, instance=entry.get("instance", me)) for entry in self.fleet.history]
        self.registry.problems.pop("history", None)
        held = {dumps(entry) for entry in stored}
        # Older than the stored window: written and dropped from the newest N already, not unsaved.
        oldest = _entry_time(stored[0]) if len(stored) >= HISTORY_SHOWN else float("-inf")
        unsaved = []
        for entry in self.fleet.history:
            mine = dict(entry, instance=entry.get("instance", me))
            if _entry_time(mine) >= oldest and dumps(mine) not in held:
                unsaved.append(mine)
        # Instances write their entries in batches (with snapshots): time order, stable within one time.
        merged = sorted(stored + unsaved, key=_entry_time)
        return merged[-HISTORY_SHOWN:]

    def api_wake(self, target: str, method: str, cause: str) -> Optional[Dict[str, Any]]:
        record = self.registry.find(target)
        if record is None:
            return None
        if method not in ("auto", "wol", "ipmi"):
            method = "auto"
        return self._fleet_api(self.gated_wake, record, cause, method, source="api")

    def api_nap(self, target: str, action: Optional[str], cause: str, force: bool = False) -> Optional[Dict[str, Any]]:
        """Nap a host through the policy gate (a veto or a failed-wake mark refuse it unless ``force``)."""
        record = self.registry.find(target)
        if record is None:
            return None
        group = record.groups[0] if record.groups else ""
        return self._fleet_api(
            self.gated_nap, record, str(action or self.config.nap_action(group)), cause, source="api", force=force
        )

    def claim_signed(self, message: Dict[str, Any]) -> None:
        """A verified API write: in fleet mode, its nonce is taken for the whole fleet (each instance's replay guard
        knows only what reached it); ProtocolError when another instance took it, 503 when the database cannot tell."""
        if self.fleetmode is not None:
            self._fleet_api(self.fleetmode.claim, message)

    def _fleet_api(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        """An API write; in fleet mode a database that refuses the job is a 503 (nothing was queued)."""
        try:
            return call(*args, **kwargs)
        except StoreError as exc:
            raise ApiError(503, "not queued, the fleet's database refused: %s" % exc) from None

    def _policy_job(self, kind: str, payload: Dict[str, Any]) -> Dict[str, Any]:
        """Fleet mode: a policy-state write asked at an instance that does not lead the policies."""
        job = self._fleet_api(self.fleetmode.submit, POLICY, kind, payload)
        return {"job": job, "segment": POLICY, "queued": True}

    def api_decisions(self) -> List[Dict[str, Any]]:
        return self.rails.list_decisions()

    def api_decide(self, decision_id: str, approve: bool, who: str, force: bool = False) -> Optional[Dict[str, Any]]:
        if not self._leads("policy"):
            payload = {"host": decision_id, "approve": approve, "source": who, "force": force}
            return dict(self._policy_job("decide", payload), decision=decision_id)
        return self.rails.decide(decision_id, approve, who, force)

    def api_veto(
        self, group: str, who: str, ttl: Optional[float], reason: str, clear: bool
    ) -> Optional[Dict[str, Any]]:
        """Set (or with ``clear``, lift) the API client ``who``'s veto on a group's naps; None: no such group."""
        if group not in self.members:
            return None
        if not self._leads("policy"):
            payload = {"host": group, "source": who, "ttl": ttl, "cause": reason, "clear": clear}
            return dict(self._policy_job("veto", payload), group=group)
        now = self.clock.wall()
        owner = "api %s" % who
        if clear:  # every veto of the group (an engine whose monitor is still busy sets its own again)
            return {"group": group, "lifted": self.rails.clear_veto(group, None)}
        return self.rails.veto(group, owner, float(ttl if ttl is not None else 3600.0), reason, now)

    def api_clear_mark(self, target: str, who: str) -> Optional[Dict[str, Any]]:
        """An admin clears a host's failed-wake mark (it may nap again, and the policies wake it again)."""
        record = self.registry.find(target)
        if record is None:
            return None
        if self.fleetmode is not None and not (
            self.fleetmode.segment_leader and self.fleetmode.segment_of(record) == self.fleetmode.segment
        ):  # the mark is in the host's record: its segment's leader writes it
            segment = self.fleetmode.segment_of(record)
            payload = {"host": record.name, "source": who}
            job = self._fleet_api(self.fleetmode.submit, segment, "clear-mark", payload)
            return {"host": record.name, "job": job, "segment": segment, "queued": True}
        return self.rails.health.clear(record, who, self.clock.wall())

    def api_demand(self, group: str, more: int, ttl: float, who: str) -> Optional[Dict[str, Any]]:
        cluster = self.clusters.get(group)
        if cluster is None:
            return None
        if not self._leads("policy"):
            payload = {"host": group, "more": more, "ttl": ttl, "source": who}
            return dict(self._policy_job("demand", payload), group=group)
        return cluster.demand(more, ttl, who, self.clock.wall())


class TestClock(Clock):
    """TESTS ONLY: the server's policy clock started at another wall time (calendar events come sooner).

    Enabled by ``--test-clock-start EPOCH`` together with ``POWERWAKED_TEST_CLOCK=yes`` in the
    environment (either alone is refused), never by a config file; logged as a warning and shown as
    ``test_clock`` in /v1/status.  It runs at real speed, offset; signed messages are still checked
    against the real clock (``real_wall``).
    """

    def __init__(self, start: float):
        self.offset = start - time.time()

    def wall(self) -> float:
        return time.time() + self.offset

    def real_wall(self) -> float:
        return time.time()


class _Endpoint(P.Endpoint):
    """The server's receiver: API requests also persist their sender's newest time (no replay after a restart)."""

    registry: Optional[Registry] = None

    def accept(self, data: bytes, label: bytes = P.TO_SERVER) -> Dict[str, Any]:
        message = super().accept(data, label)
        if message["kind"] == "request" and self.registry is not None:
            self.registry.note_sender(message["from"], float(message["ts"]))
            self.registry.commit()
        return message


# Record fields an unsigned reader does not get (read_auth = no): where hosts are and how to reach them.
SENSITIVE_FIELDS = ("macs", "ips", "wol", "bmc", "addr", "last_wake")
# Wake-health fields that may name a client's address ("API request from admin (192.0.2.1)").
SENSITIVE_HEALTH = ("cause", "cleared")


def _shown(record: Dict[str, Any], full: bool) -> Dict[str, Any]:
    if full:
        return record
    shown = {key: value for key, value in record.items() if key not in SENSITIVE_FIELDS}
    if isinstance(shown.get("wake_health"), dict):
        shown["wake_health"] = {k: v for k, v in shown["wake_health"].items() if k not in SENSITIVE_HEALTH}
    return shown


def _entry_time(entry: Dict[str, Any]) -> float:
    """A history entry's time, for ordering (0 for an entry without a usable one)."""
    when = entry.get("time")
    return float(when) if isinstance(when, (int, float)) and not isinstance(when, bool) else 0.0


def _large_receive_buffer(sock: socket.socket, size: int = 4 << 20) -> None:
    """Room for a burst of reports while the loop writes the registry (FORCE needs root)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUFFORCE, size)
    except (OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _note_signal(signum: int, frame: Any) -> None:
    """The wake-up fd tells the loop; nothing to do here."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="powerwaked", description="The powernap fleet server (one per L2 segment).")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="main config file (default %(default)s)")
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit")
    parser.add_argument(
        "--shown-as",
        metavar="PATH",
        help="name the --config file PATH in errors (a copy is checked before it replaces PATH: the role's validate)",
    )
    parser.add_argument(
        "--derive-key",
        metavar="HOST",
        help="print HOST's own key (its engine's [server] token), derived from the config's master secret",
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--test-clock-start", type=float, metavar="EPOCH", help=argparse.SUPPRESS)
    parser.add_argument("--schema-markdown", action="store_true", help="print the option reference and exit")
    parser.add_argument("--version", action="version", version="powerwaked " + __version__)
    args = parser.parse_args(argv)
    from ..cli import schema_markdown, setup_logging

    if args.schema_markdown:
        from .config import schema

        print(schema_markdown(schema()))
        return 0

    log = setup_logging(args.log_level).getChild("powerwaked")
    config, errors = load_config(config_files(args.config))
    for error in errors:
        text = str(error)
        if args.shown_as and text.startswith(args.config + ":"):
            text = args.shown_as + text[len(args.config) :]
        print(text, file=sys.stderr)
    if errors:
        return 1
    if args.derive_key:
        print(host_key(config.secret, args.derive_key))
        return 0
    if args.check_config:
        print("%s: OK (%d hosts, %d groups)" % (args.config, len(config.hosts), len(config.group_members())))
        return 0
    insecure = [path for path in config.files if insecure_mode(path)]
    for path in insecure:
        log.warning("%s holds secrets but its group or others can read it: chmod 0600 it", path)
    clock: Optional[Clock] = None
    if args.test_clock_start is not None:
        if os.environ.get(TEST_CLOCK_ENV) != "yes":
            print("powerwaked: --test-clock-start is for tests only (needs %s=yes)" % TEST_CLOCK_ENV, file=sys.stderr)
            return 2
        clock = TestClock(args.test_clock_start)
        log.warning("TEST CLOCK: the policy clock starts at %s, not now", time.ctime(args.test_clock_start))
    try:
        server = Server(config, clock=clock, log=log)
    except OSError as exc:  # the store: StoreError names it (never its password)
        log.error("cannot start: %s", exc)
        return 1
    server.insecure_files = insecure
    try:
        server.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        server.shutdown()
        return 1
    return server.run()


if __name__ == "__main__":
    sys.exit(main())
