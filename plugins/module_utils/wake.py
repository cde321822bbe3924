# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Waking many hosts at once: the one implementation behind the ``wake`` module and action plugin.

Steps, each bounded: skip hosts that already answer; power on BMC targets in
parallel (bounded concurrency); send every magic packet in a few rounds over
shared sockets; then, when asked, confirm each host by an SSH handshake (in
parallel) and escalate WoL targets that stay silent to IPMI.
Python 3.8 syntax.
"""

import time

from ansible_collections.powernap.fleet.plugins.module_utils import ipmi, probe
from ansible_collections.powernap.fleet.plugins.module_utils.common import invalid_host
from ansible_collections.powernap.fleet.plugins.module_utils.ipmi import IpmiDriver
from ansible_collections.powernap.fleet.plugins.module_utils.power import PowerError, backoff_delays
from ansible_collections.powernap.fleet.plugins.module_utils.wol import WolPacket, send_packets

METHODS = ("auto", "wol", "ipmi")
TARGET_OPTIONS = (
    "name",
    "address",
    "ssh_port",
    "method",
    "mac",
    "secureon",
    "broadcast",
    "port",
    "interface",
    "source",
    "transport",
    "bmc_host",
    "bmc_port",
    "bmc_user",
    "bmc_password",
    "bmc_kg",
    "bmc_privilege",
)


class Target:
    """One host to wake and, as the run goes on, what happened to it."""

    def __init__(self, options, defaults):
        merged = dict(defaults)
        merged.update({k: v for k, v in options.items() if v is not None})
        self.options = merged
        self.name = merged.get("name") or merged.get("address") or merged.get("mac") or merged.get("bmc_host")
        self.address = merged.get("address")
        self.ssh_port = int(merged.get("ssh_port") or 22)
        self.packet = None
        self.ipmi = None
        self.method = None
        self.result = {"name": self.name, "changed": False, "failed": False, "method": None, "woken_by": None}
        self.start = None

    def fail(self, error, kind=None):
        self.result["failed"] = True
        self.result["msg"] = str(error)
        self.result["error"] = kind or getattr(error, "kind", "fatal")

    @property
    def done(self):
        return self.result["failed"] or self.result.get("confirmed") is not None

    def prepare(self, ipmi_timeout, deadline=None, clock=time.monotonic):
        """Build the packet / BMC driver and pick the method; setting errors fail this target only.

        ``deadline`` (a monotonic clock value) bounds all BMC calls together: the task's hard timeout."""
        opts = self.options
        method = opts.get("method") or "auto"
        if method not in METHODS:
            return self.fail("unknown method %r (expected auto, wol or ipmi)" % method, "setting")
        if self.address is not None and invalid_host(self.address):
            return self.fail("address: %s" % invalid_host(self.address), "setting")
        try:
            if opts.get("mac"):
                self.packet = WolPacket(
                    opts["mac"],
                    opts.get("secureon"),
                    opts.get("broadcast"),
                    opts.get("port"),
                    opts.get("interface"),
                    opts.get("source"),
                    opts.get("transport") or "udp",
                )
            # A WoL-only wake uses the BMC only to escalate: without pyghmi it goes without escalation.
            if opts.get("bmc_host") and (method != "wol" or ipmi.HAS_PYGHMI):
                self.ipmi = IpmiDriver(
                    opts["bmc_host"],
                    opts.get("bmc_user"),
                    opts.get("bmc_password"),
                    opts.get("bmc_port") or 623,
                    opts.get("bmc_kg"),
                    opts.get("bmc_privilege"),
                    timeout=ipmi_timeout,
                    clock=clock,
                    deadline=deadline,
                )
        except PowerError as exc:
            return self.fail(exc)
        if method == "auto":
            method = "ipmi" if self.ipmi else "wol"
        if method == "wol" and not self.packet:
            return self.fail("no MAC address known for %s (set mac or powernap_mac)" % self.name, "setting")
        if method == "ipmi" and not self.ipmi:
            return self.fail("no BMC known for %s (set bmc_host or powernap_bmc_host)" % self.name, "setting")
        self.method = method
        self.result["method"] = method
        return None


def _ipmi_power_on(target, check_mode, force_request=False):
    """Power on through the BMC.  A machine the BMC reports on but that does not answer is suspended:
    it gets a magic packet too when a MAC is known (and ``force_request`` sends chassis power-on anyway)."""
    try:
        if force_request:
            if not check_mode:
                target.ipmi.chassis_control("on")
            target.result.update(changed=True, woken_by="ipmi", bmc_power="on")
            return None
        outcome = target.ipmi.set_state("on", check_mode=check_mode)
    except PowerError as exc:
        return target.fail(exc)
    target.result["bmc_power"] = outcome["after"]
    if outcome["changed"]:
        target.result.update(changed=True, woken_by="ipmi")
        return None
    if not target.address:
        # Nothing to probe: the BMC's "on" is all there is to know, so the host counts as up (ipmi_power's view).
        target.result.update(confirmed=True, msg="already on (the BMC reports power on)")
        return None
    # BMC says on but the host did not answer: asleep (S3/S4) rather than off.
    if target.packet is not None:
        target.result["suspended"] = True
        return "wol"
    return target.fail(
        "the BMC reports power on but the host does not answer, and no MAC is known to wake it from sleep",
        "connection",
    )


def wake_targets(
    targets,
    defaults=None,
    repeat=3,
    interval=0.1,
    wait=False,
    timeout=300.0,
    escalate=True,
    escalate_after=30.0,
    probe_method="ssh",
    probe_timeout=2.0,
    skip_if_up=True,
    concurrency=64,
    ipmi_timeout=15.0,
    check_mode=False,
    clock=time.monotonic,
    sleep=time.sleep,
):
    """Wake every target (dicts of TARGET_OPTIONS); returns one result dict per target, in order."""
    start = clock()
    items = [Target(t, defaults or {}) for t in targets]
    for item in items:
        item.start = start
        item.prepare(ipmi_timeout, deadline=start + timeout, clock=clock)
    live = [t for t in items if not t.result["failed"]]

    def remaining(cap):
        """A single step's time limit: ``cap``, but never past the task's timeout."""
        return max(0.05, min(cap, timeout - (clock() - start)))

    # 1. Idempotence: a host that already answers is left alone.
    if skip_if_up:
        addressed = [t for t in live if t.address]
        states = probe.parallel_map(
            lambda t: probe.tcp_probe(t.address, t.ssh_port, remaining(min(probe_timeout, 1.5))), addressed, concurrency
        )
        for item, state in zip(addressed, states):
            item.result["state_before"] = "up" if state == probe.UP else "down"
            if state == probe.UP:
                item.result.update(confirmed=True, msg="already up", elapsed=0.0)
        live = [t for t in live if not t.done]

    # 2. BMC targets, in parallel: every pyghmi call has its own hard deadline.
    ipmi_items = [t for t in live if t.method == "ipmi"]
    followups = probe.parallel_map(lambda t: _ipmi_power_on(t, check_mode), ipmi_items, concurrency)
    wol_items = [t for t in live if t.method == "wol"] + [
        t for t, followup in zip(ipmi_items, followups) if followup == "wol"
    ]

    # 3. Magic packets, all targets per round.
    if wol_items and not check_mode:
        errors = {}
        send_packets([t.packet for t in wol_items], repeat, interval, sleep, errors)
        for item in wol_items:
            if id(item.packet) in errors:
                item.fail(errors[id(item.packet)])
    for item in wol_items:
        if not item.result["failed"]:
            item.result.update(changed=True, woken_by="wol" if not item.result.get("woken_by") else "wol+ipmi")
    if check_mode:
        for item in items:
            if not item.result["failed"] and not item.done:
                item.result["changed"] = True
                item.result["msg"] = "would wake by %s" % (item.result["woken_by"] or item.method)
            item.result.setdefault("elapsed", round(clock() - start, 3))
        return [t.result for t in items]

    # 4. Confirmation (and escalation of silent WoL targets to their BMC): a target is confirmed only
    # by an answer from its address, or -- with no address to probe -- by its BMC reporting power on.
    def confirm(target):
        if target.address:
            return probe.probe(
                probe_method, target.address, target.ssh_port, remaining(probe_timeout), target.options.get("interface")
            )
        try:
            return probe.UP if target.ipmi.power_query() == "on" else probe.DOWN
        except PowerError:
            return probe.UNKNOWN

    pending = [
        t for t in items if not t.done and (t.address or (t.ipmi is not None and t.result["woken_by"] == "ipmi"))
    ]
    escalating = [t for t in pending if escalate and t.ipmi is not None and t.result["woken_by"] == "wol"]
    if not wait:
        # Without wait, confirm only what escalation needs, and only until escalate_after.
        pending = escalating
        timeout = min(timeout, escalate_after + probe_timeout * 2 + 5)
    delays = backoff_delays(first=0.5, cap=5.0)
    while pending and clock() - start < timeout:
        states = probe.parallel_map(confirm, pending, concurrency)
        for item, state in zip(pending, states):
            if state == probe.UP:
                item.result.update(confirmed=True, elapsed=round(clock() - start, 3))
        if escalate and clock() - start >= escalate_after:
            late = [t for t in pending if not t.done and t in escalating and not t.result.get("escalated")]
            for item in late:
                item.result["escalated"] = True
            probe.parallel_map(lambda t: _ipmi_power_on(t, False, force_request=True), late, concurrency)
            for item in late:
                if not item.result["failed"]:
                    item.result["woken_by"] = "wol+ipmi"
        pending = [t for t in pending if not t.done]
        if not wait:
            pending = [t for t in pending if not t.result.get("escalated")]
        if pending:
            sleep(min(next(delays), max(0.0, timeout - (clock() - start))))
    for item in items:
        if wait and not item.done:
            if item.address or item.result["woken_by"] == "ipmi":
                how = probe_method if item.address else "BMC power state"
                item.result["confirmed"] = False
                item.fail("Timed out waiting for %s to answer (%s) after %.0f s" % (item.name, how, timeout), "timeout")
            else:
                item.result["confirmed"] = None
                item.result["msg"] = "sent; not confirmed (no address known to probe)"
        item.result.setdefault("elapsed", round(clock() - start, 3))
    return [t.result for t in items]


def summarize(results):
    """Counts for the task result."""
    return {
        "total": len(results),
        "changed": sum(1 for r in results if r.get("changed")),
        "failed": sum(1 for r in results if r.get("failed")),
        "already_up": sum(1 for r in results if r.get("msg") == "already up"),
        "confirmed": sum(1 for r in results if r.get("confirmed")),
        "by_wol": sum(1 for r in results if r.get("woken_by") in ("wol", "wol+ipmi")),
        "by_ipmi": sum(1 for r in results if r.get("woken_by") in ("ipmi", "wol+ipmi")),
    }
