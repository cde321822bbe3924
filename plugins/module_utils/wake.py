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

from ansible_collections.powernap.fleet.plugins.module_utils import ipmi, probe, redfish
from ansible_collections.powernap.fleet.plugins.module_utils.common import invalid_host
from ansible_collections.powernap.fleet.plugins.module_utils.ipmi import IpmiDriver
from ansible_collections.powernap.fleet.plugins.module_utils.power import PowerError, backoff_delays
from ansible_collections.powernap.fleet.plugins.module_utils.redfish import RedfishDriver
from ansible_collections.powernap.fleet.plugins.module_utils.wol import WolPacket, send_packets

METHODS = ("auto", "wol", "ipmi", "redfish")
# The BMC protocols, and how ``woken_by`` names a WoL wake that a BMC completed.
BMC_METHODS = ("redfish", "ipmi")
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
    "redfish_host",
    "redfish_system_id",
    "redfish_validate_certs",
    "redfish_ca_path",
)


def redfish_endpoint(options):
    """The Redfish base URL (or name) to use for these options, or None when the host has no Redfish BMC.

    ``redfish_host`` names it; else a ``bmc_host`` given as an http(s) URL means Redfish; with
    ``method: redfish`` a plain ``bmc_host`` is taken as the Redfish service's name.
    """
    if options.get("redfish_host"):
        return options["redfish_host"]
    bmc_host = options.get("bmc_host") or ""
    if bmc_host.lower().startswith(("https://", "http://")) or (options.get("method") == "redfish" and bmc_host):
        return bmc_host
    return None


def bmc_driver(options, method, timeout, deadline=None, clock=time.monotonic):
    """The BMC driver of ``method`` (redfish or ipmi) for these options, or None when none is configured."""
    if method == "redfish":
        endpoint = redfish_endpoint(options)
        if not endpoint:
            return None
        return RedfishDriver(
            endpoint,
            options.get("bmc_user"),
            options.get("bmc_password"),
            system_id=options.get("redfish_system_id"),
            validate_certs=options.get("redfish_validate_certs") is not False,
            ca_path=options.get("redfish_ca_path"),
            timeout=timeout,
            clock=clock,
            deadline=deadline,
        )
    bmc_host = options.get("bmc_host")
    if not bmc_host or bmc_host.lower().startswith(("https://", "http://")):
        return None
    return IpmiDriver(
        bmc_host,
        options.get("bmc_user"),
        options.get("bmc_password"),
        options.get("bmc_port") or 623,
        options.get("bmc_kg"),
        options.get("bmc_privilege"),
        timeout=timeout,
        clock=clock,
        deadline=deadline,
    )


def auto_method(options, has_mac):
    """``method: auto``: Redfish > IPMI > Wake-on-LAN, the first the options give the means for."""
    if redfish_endpoint(options):
        return "redfish"
    if options.get("bmc_host"):
        return "ipmi"
    return "wol" if has_mac else None


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
        self.bmc = None  # the BMC driver (Redfish or IPMI), when one is configured
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

    def prepare(self, bmc_timeout, deadline=None, clock=time.monotonic):
        """Build the packet / BMC driver and pick the method; setting errors fail this target only.

        ``deadline`` (a monotonic clock value) bounds all BMC calls together: the task's hard timeout."""
        opts = self.options
        method = opts.get("method") or "auto"
        if method not in METHODS:
            return self.fail("unknown method %r (expected %s)" % (method, ", ".join(METHODS)), "setting")
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
            if method == "auto":
                method = auto_method(opts, self.packet is not None)
            # The BMC this target can be powered on through: its method's, or for Wake-on-LAN the one that
            # escalation would use (Redfish before IPMI).
            bmc_method = method if method in BMC_METHODS else auto_method(opts, False)
            # A WoL-only wake uses the BMC only to escalate: without its library (say, on a relay) it goes without.
            if method == "wol" and not {"ipmi": ipmi.HAS_PYGHMI, "redfish": redfish.HAS_SUSHY}.get(bmc_method, True):
                bmc_method = None
            if bmc_method:
                self.bmc = bmc_driver(opts, bmc_method, bmc_timeout, deadline=deadline, clock=clock)
        except PowerError as exc:
            return self.fail(exc)
        if method is None:
            return self.fail(
                "no MAC address known for %s and no BMC (set mac, bmc_host or redfish_host)" % self.name, "setting"
            )
        if method == "wol" and not self.packet:
            return self.fail("no MAC address known for %s (set mac or powernap_mac)" % self.name, "setting")
        if method in BMC_METHODS and not self.bmc:
            where = "redfish_host or bmc_host" if method == "redfish" else "bmc_host or powernap_bmc_host"
            return self.fail("no BMC known for %s to use %s (set %s)" % (self.name, method, where), "setting")
        self.method = method
        self.result["method"] = method
        return None


def _bmc_power_on(target, check_mode, force_request=False, bmc_wait=0.0):
    """Power on through the BMC (Redfish or IPMI).  A machine the BMC reports on but that does not answer is
    suspended: it gets a magic packet too when a MAC is known.  ``force_request`` (escalation) sends IPMI's
    chassis power-on even when the BMC says on; Redfish refuses On for a system that is on, so there the
    request is sent only when the system is off.  Over Redfish the reset is asynchronous (the service
    answers before the system changes), so the task waits up to ``bmc_wait`` seconds for PowerState On:
    the confirmation community.general's redfish_command leaves out."""
    bmc = target.bmc
    try:
        if force_request and bmc.name == "ipmi":
            if not check_mode:
                bmc.chassis_control("on")
            target.result.update(changed=True, woken_by=bmc.name, bmc_power="on")
            return None
        outcome = bmc.set_state("on", wait_timeout=bmc_wait if bmc.name == "redfish" else 0.0, check_mode=check_mode)
    except PowerError as exc:
        return target.fail(exc)
    target.result["bmc_power"] = outcome["after"]
    if outcome["changed"]:
        target.result.update(changed=True, woken_by=bmc.name)
        return None
    if force_request:
        return None  # escalation: the BMC says on, so the magic packet already sent is all there is to do
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
    bmc_timeout=15.0,
    check_mode=False,
    clock=time.monotonic,
    sleep=time.sleep,
):
    """Wake every target (dicts of TARGET_OPTIONS); returns one result dict per target, in order."""
    start = clock()
    items = [Target(t, defaults or {}) for t in targets]
    for item in items:
        item.start = start
        item.prepare(bmc_timeout, deadline=start + timeout, clock=clock)
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

    # 2. BMC targets (Redfish and IPMI), in parallel: every BMC call has its own hard deadline.
    bmc_items = [t for t in live if t.method in BMC_METHODS]
    followups = probe.parallel_map(
        lambda t: _bmc_power_on(t, check_mode, bmc_wait=remaining(timeout)), bmc_items, concurrency
    )
    wol_items = [t for t in live if t.method == "wol"] + [
        t for t, followup in zip(bmc_items, followups) if followup == "wol"
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
            woken_by = item.result.get("woken_by")
            item.result.update(changed=True, woken_by="wol+%s" % woken_by if woken_by else "wol")
    if check_mode:
        for item in items:
            if not item.result["failed"] and not item.done:
                item.result["changed"] = True
                item.result["msg"] = "would wake by %s" % (item.result["woken_by"] or item.method)
            item.result.setdefault("elapsed", round(clock() - start, 3))
        _close_sessions(items, concurrency)
        return [t.result for t in items]

    # 4. Confirmation (and escalation of silent WoL targets to their BMC): a target is confirmed only
    # by an answer from its address, or -- with no address to probe -- by its BMC reporting power on.
    def confirm(target):
        if target.address:
            return probe.probe(
                probe_method, target.address, target.ssh_port, remaining(probe_timeout), target.options.get("interface")
            )
        try:
            return probe.UP if target.bmc.power_query() == "on" else probe.DOWN
        except PowerError:
            return probe.UNKNOWN

    pending = [
        t for t in items if not t.done and (t.address or (t.bmc is not None and t.result["woken_by"] in BMC_METHODS))
    ]
    escalating = [t for t in pending if escalate and t.bmc is not None and t.result["woken_by"] == "wol"]
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
            probe.parallel_map(
                lambda t: _bmc_power_on(t, False, force_request=True, bmc_wait=remaining(timeout)), late, concurrency
            )
            for item in late:
                if not item.result["failed"]:
                    item.result["woken_by"] = "wol+%s" % item.bmc.name
        pending = [t for t in pending if not t.done]
        if not wait:
            pending = [t for t in pending if not t.result.get("escalated")]
        if pending:
            sleep(min(next(delays), max(0.0, timeout - (clock() - start))))
    for item in items:
        if wait and not item.done:
            if item.address or item.result["woken_by"] in BMC_METHODS:
                how = probe_method if item.address else "BMC power state"
                item.result["confirmed"] = False
                item.fail("Timed out waiting for %s to answer (%s) after %.0f s" % (item.name, how, timeout), "timeout")
            else:
                item.result["confirmed"] = None
                item.result["msg"] = "sent; not confirmed (no address known to probe)"
        item.result.setdefault("elapsed", round(clock() - start, 3))
    _close_sessions(items, concurrency)
    return [t.result for t in items]


def _close_sessions(items, concurrency):
    """Log out of every Redfish session the run opened (BMCs have few session slots)."""
    sessions = [t.bmc for t in items if t.bmc is not None and hasattr(t.bmc, "close")]
    probe.parallel_map(lambda bmc: bmc.close(), sessions, concurrency)


def summarize(results):
    """Counts for the task result."""
    return {
        "total": len(results),
        "changed": sum(1 for r in results if r.get("changed")),
        "failed": sum(1 for r in results if r.get("failed")),
        "already_up": sum(1 for r in results if r.get("msg") == "already up"),
        "confirmed": sum(1 for r in results if r.get("confirmed")),
        "by_wol": sum(1 for r in results if r.get("woken_by") in ("wol", "wol+ipmi", "wol+redfish")),
        "by_ipmi": sum(1 for r in results if r.get("woken_by") in ("ipmi", "wol+ipmi")),
        "by_redfish": sum(1 for r in results if r.get("woken_by") in ("redfish", "wol+redfish")),
    }
