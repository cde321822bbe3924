"""The fleet's actions on hosts: wake (WoL, confirm, escalate to IPMI) and nap (engine command or IPMI).

Everything that wakes or naps a host (sleep proxy, UPS policy, schedules,
cluster policy, the API) goes through the policy gate (``rails.PowerRails``:
rules, rate limits, recommend-only mode) and then ``Fleet.wake`` /
``Fleet.nap``, so the confirmation, escalation and logging rules live in one
place.  The class owns
no sockets: the daemon hands it ``send_wol(mac, secureon)``,
``send_datagram(data, addr)`` and an ``ipmi(target, action)`` runner, so
tests drive it with fakes and a FakeClock.
"""

import logging
import queue
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import protocol as P
from .health import WakeHealth
from .registry import HostRecord, Registry
from .wake import IpmiTarget, WakeError, ipmi_power

HISTORY_SHOWN = 200  # wakes and naps /v1/history shows (the newest)
COMMAND_RETRY = 2.0  # seconds between resends of an unacknowledged engine command


class Fleet:
    def __init__(
        self,
        registry: Registry,
        config: Any,
        clock: Any,
        send_wol: Callable[[str, str], None],
        send_datagram: Optional[Callable[[bytes, Tuple[str, int]], None]] = None,
        ipmi: Optional[Callable[[IpmiTarget, str, float], str]] = None,
        log: Optional[logging.Logger] = None,
        background: bool = True,
    ):
        self.registry = registry
        self.config = config
        self.clock = clock
        self.send_wol = send_wol
        self.send_datagram = send_datagram
        self.ipmi = ipmi or ipmi_power
        self.log = log or logging.getLogger("powerwaked")
        self.background = background  # False in tests: IPMI runs inline
        self.keys = P.ServerKeys(config.secret.encode("utf-8"))  # commands are signed with the host's own key
        self.confirm_timeout = float(config.server["confirm_timeout"])
        self.retries = int(config.server["command_retries"])
        self.waiting: Dict[str, Dict[str, Any]] = {}  # host -> wake awaiting confirmation
        self.commands: Dict[str, Dict[str, Any]] = {}  # nonce -> command awaiting its ack
        self.results: queue.Queue[Tuple[str, str, bool, str]] = queue.Queue()
        self.history: List[Dict[str, Any]] = []  # recent wakes and naps, for the API and tests
        self.listeners: List[Callable[[HostRecord], None]] = []  # told when a wake is sent (proxy announce)
        self.wake_failures = 0  # wakes with no way to send them (metrics: powernap_wake_failures_total unsent)
        self.health = WakeHealth(self, config, self.log.getChild("health"))  # records every wake's outcome

    # -- wake ---------------------------------------------------------------------------------
    def wake(
        self, record: HostRecord, cause: str, method: str = "auto", source: str = "", test: bool = False
    ) -> Dict[str, Any]:
        """Wake a host now; ``method`` auto (WoL, then IPMI if unconfirmed), wol or ipmi; ``source``: who asked;
        ``test``: a test wake (wake health)."""
        now = self.clock.wall()
        sent: List[str] = []
        errors: List[str] = []
        use_wol = method in ("auto", "wol") and record.macs and ("wol" in record.wake or method == "wol")
        if use_wol:
            for mac in record.macs:
                if record.wol.get(mac) == "d" and len(record.macs) > 1:
                    continue  # the engine told us this NIC has WoL off; try the others
                try:
                    self.send_wol(mac, self._secureon(record))
                    sent.append("wol")
                except (WakeError, ValueError) as exc:  # ValueError: a bad MAC must not stop the caller
                    errors.append(str(exc))
        ipmi_now = method == "ipmi" or (method == "auto" and not sent and self._ipmi_target(record) is not None)
        if ipmi_now:
            if self._start_ipmi(record, "on"):
                sent.append("ipmi")
            else:
                errors.append("no BMC configured for %s" % record.name)
        entry = {
            "time": now,
            "host": record.name,
            "what": "wake",
            "method": "+".join(sent) or "none",
            "cause": cause,
            "errors": errors,
        }
        if source:
            entry["source"] = source
        self._remember(entry)
        if not sent:
            self.wake_failures += 1
            self.log.warning("cannot wake %s (%s): %s", record.name, cause, "; ".join(errors) or "no wake method")
            if not record.up:  # a wake was wanted and there is no way to do it
                self.health.failed(record, now, "no way to wake it (no MAC with WoL, no BMC)", method="none")
            return entry
        record.wakes += 1
        record.last_wake = {"time": now, "method": entry["method"], "cause": cause}
        self.log.info("waking %s by %s: %s", record.name, entry["method"], cause)
        self.waiting[record.name] = {"sent": now, "escalated": "ipmi" in sent, "method": method}
        if not record.up:  # waking an up host proves nothing about its wake path: not an attempt
            self.health.started(record, now, "ipmi" if "ipmi" in sent else "wol", cause, test)
        if not record.up:
            self.registry.set_state(record, P.WAKING, cause, now)
        for listener in self.listeners:
            listener(record)
        return entry

    def _secureon(self, record: HostRecord) -> str:
        return str(self.config.hosts.get(record.name, {}).get("secureon") or "")

    def _ipmi_target(self, record: HostRecord) -> Optional[IpmiTarget]:
        opts = self.config.hosts.get(record.name, {})
        address = opts.get("bmc") or record.bmc
        if not address or "ipmi" not in record.wake:
            return None
        ipmi = self.config.ipmi
        return IpmiTarget(
            address,
            opts.get("bmc_user") or ipmi["user"],
            opts.get("bmc_password") or ipmi["password"],
            opts.get("bmc_port") or ipmi["port"],
            ipmi["cipher"],
            ipmi["privilege"],
        )

    def _start_ipmi(self, record: HostRecord, action: str) -> bool:
        target = self._ipmi_target(record)
        if target is None:
            return False
        timeout = float(self.config.ipmi["timeout"])

        def run() -> None:
            try:
                detail = self.ipmi(target, action, timeout)
                self.results.put((record.name, action, True, detail))
            except WakeError as exc:
                self.results.put((record.name, action, False, str(exc)))

        if self.background:
            try:
                threading.Thread(target=run, name="ipmi-%s" % record.name, daemon=True).start()
            except RuntimeError as exc:  # "can't start new thread" (TasksMax): report it, never crash
                self.results.put((record.name, action, False, "cannot start IPMI: %s" % exc))
        else:
            run()
        return True

    # -- nap ----------------------------------------------------------------------------------
    def can_nap(self, record: HostRecord, action: str) -> bool:
        """True when ``nap`` has a way: the host's engine, or its BMC for a power-off."""
        if record.engine and record.addr and self.send_datagram is not None:
            return True
        return action == "poweroff" and self._ipmi_target(record) is not None

    def nap(
        self,
        record: HostRecord,
        action: str,
        cause: str,
        wake_at: Optional[float] = None,
        source: str = "",
        urgent: bool = False,
    ) -> Dict[str, Any]:
        """Ask a host's engine to nap now (``action``: suspend, poweroff, ...); IPMI soft-off as the fallback.

        ``source`` (who asked) and ``urgent`` (a UPS emergency) are recorded in the history.
        """
        now = self.clock.wall()
        entry: Dict[str, Any] = {"time": now, "host": record.name, "what": "nap", "action": action, "cause": cause}
        if source:
            entry["source"] = source
        if urgent:
            entry["urgent"] = True
        self.health.napped(record)
        self.waiting.pop(record.name, None)
        if record.engine and record.addr and self.send_datagram is not None:
            message = {
                "kind": "command",
                "from": P.SERVER_NAME,
                "to": record.name,
                "command": "nap",
                "action": action,
                "wake_at": wake_at,
                "id": "%s-%d" % (record.name, int(now * 1000)),
            }
            data = P.encode(self.keys.host(record.name), message, P.TO_ENGINE)
            nonce = _nonce_of(data)
            self.commands[nonce] = {
                "host": record.name,
                "message": message,
                "sent": now,
                "tries": 1,
                "action": action,
                "cause": cause,
            }
            self._send(data, record)
            entry["method"] = "engine"
        elif action == "poweroff" and self._start_ipmi(record, "soft"):
            entry["method"] = "ipmi"
        else:
            entry["method"] = "none"
            self.log.warning("cannot nap %s (%s): no engine reporting and no BMC", record.name, cause)
        self.log.info("napping %s (%s) by %s: %s", record.name, action, entry["method"], cause)
        self._remember(entry)
        return entry

    def _send(self, data: bytes, record: HostRecord) -> None:
        try:
            self.send_datagram(data, (record.addr[0], int(record.addr[1])))
        except OSError as exc:
            self.log.warning("command to %s failed: %s", record.name, exc)

    def on_command_ack(self, message: Dict[str, Any]) -> None:
        pending = self.commands.get(str(message.get("re")))
        if pending is None or pending["host"] != message.get("from"):
            return  # not ours, or another host acking a command it never got
        del self.commands[str(message.get("re"))]
        self.log.info(
            "host %s: %s (%s)", pending["host"], message.get("detail"), "ok" if message.get("ok") else "refused"
        )
        if not message.get("ok"):
            self._fallback(pending, str(message.get("detail")))

    def _fallback(self, pending: Dict[str, Any], why: str) -> None:
        record = self.registry.get(pending["host"])
        if record is None:
            return
        if pending["action"] == "poweroff" and self._start_ipmi(record, "soft"):
            self.log.warning("engine of %s did not nap (%s): IPMI soft-off instead", record.name, why)

    # -- the clock ----------------------------------------------------------------------------
    def tick(self) -> None:
        now = self.clock.wall()
        while True:
            try:
                name, action, ok, detail = self.results.get_nowait()
            except queue.Empty:
                break
            self._remember({"time": now, "host": name, "what": "ipmi", "action": action, "ok": ok, "detail": detail})
            (self.log.info if ok else self.log.warning)("IPMI %s %s: %s", action, name, detail)
            record = self.registry.get(name)
            if record is not None and ok and action == "soft":
                self.registry.set_state(record, P.OFF, "IPMI soft-off", now)
        for record in self.registry.owned():  # fleet mode: another segment's wakes are its leader's
            if record.state == P.WAKING and record.name not in self.waiting:
                # A wake in flight across a restart (or lost otherwise): resume confirming it from
                # when it was sent, so it escalates or ends as asleep instead of waking forever.
                sent = float((record.last_wake or {}).get("time") or record.since or now)
                self.waiting[record.name] = {"sent": min(sent, now), "escalated": False, "method": "auto"}
        for name, wait in list(self.waiting.items()):
            record = self.registry.get(name)
            if record is None or record.up:
                if record is not None:
                    self._remember(
                        {"time": now, "host": name, "what": "confirmed", "after": round(now - wait["sent"], 3)}
                    )
                    self.health.succeeded(record, now)
                del self.waiting[name]
                continue
            if now - wait["sent"] < self.confirm_timeout:
                continue
            if not wait["escalated"] and wait["method"] == "auto" and self._start_ipmi(record, "on"):
                self.log.warning("%s did not wake by WoL within %gs: escalating to IPMI", name, self.confirm_timeout)
                self._remember({"time": now, "host": name, "what": "escalate", "method": "ipmi"})
                self.health.escalated(record)
                wait["escalated"] = True
                wait["sent"] = now
                continue
            self.log.warning("wake of %s not confirmed", name)
            del self.waiting[name]
            if record.state == P.WAKING:
                self.registry.set_state(record, P.ASLEEP, "wake not confirmed", now)
            self.health.failed(record, now, "not confirmed within %gs" % self.confirm_timeout)
        for nonce, pending in list(self.commands.items()):
            if now - pending["sent"] < COMMAND_RETRY * pending["tries"]:
                continue
            record = self.registry.get(pending["host"])
            del self.commands[nonce]
            if record is None or record.addr is None:
                continue
            if pending["tries"] > self.retries:
                self._fallback(pending, "no answer")
                continue
            data = P.encode(self.keys.host(pending["host"]), pending["message"], P.TO_ENGINE)
            pending["tries"] += 1
            self.commands[_nonce_of(data)] = pending
            self._send(data, record)
        self.health.tick(now)

    def _remember(self, entry: Dict[str, Any]) -> None:
        self.history.append(entry)
        del self.history[:-HISTORY_SHOWN]
        self.registry.remember(entry)  # the stored history outlives a restart


def _nonce_of(data: bytes) -> str:
    import json

    return str(json.loads(data.split(b" ", 2)[2])["nonce"])
