"""powerwaked's metrics: the families ``GET /metrics`` serves (``api.route`` checks who may read them).

``server_collectors`` registers everything powerwaked has today (registry states
and transitions, wake durations and failures, proxy wakes, UPS states, energy
saved) in a ``prometheus.MetricsRegistry``.  **The registration point for
more** is ``Server.metrics.register(name, kind, help, collector)``: the policy
gate's queue lengths and decisions and the wake-health figures add their
families there, e.g.
``server.metrics.register("powernap_queue_length", GAUGE, "...", lambda: [({"queue": "wake"}, n)])``.
Host names come from the registry, so the series count is bounded by ``max_hosts``.
"""

from typing import Any, Callable, Dict, Iterable, List, Tuple

from ..prometheus import COUNTER, GAUGE, HISTOGRAM, WAKE_BUCKETS, Histogram, MetricsRegistry, escape_label

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

    sorted_hosts: Dict[str, Any] = {"scrape": -1, "hosts": []}

    def hosts() -> List[Any]:
        """The registry's hosts by name, sorted once per scrape (many families walk them)."""
        if sorted_hosts["scrape"] != metrics.scrapes:
            sorted_hosts["hosts"] = sorted(registry, key=lambda r: r.name)
            sorted_hosts["scrape"] = metrics.scrapes
        return sorted_hosts["hosts"]

    def host_states() -> List[Any]:
        """Every host x every state: by far the largest family, so its label text is made here, once per host."""
        out = []
        for record in hosts():
            head = '{host="%s",state="' % escape_label(record.name)
            out.extend((head + state + '"}', 1 if record.state == state else 0) for state in P.ALL_STATES)
        return out

    metrics.register("powernap_hosts", GAUGE, "Hosts in the registry.", lambda: [({}, len(registry))])
    metrics.register(
        "powernap_hosts_max", GAUGE, "The registry's host cap (max_hosts).", lambda: [({}, registry.max_hosts)]
    )
    metrics.register(
        "powernap_host_state",
        GAUGE,
        "1 for the host's current registry state, 0 for the others.",
        host_states,
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
    _policy_collectors(metrics, server)
    _health_collectors(metrics, hosts)
    return metrics


def _health_collectors(metrics: MetricsRegistry, hosts: Callable[[], List[Any]]) -> None:
    """Wake health (``health.WakeHealth``): how each host's last wake ended, and the failed-wake marks."""

    def results() -> List[Any]:
        counts = {"never": 0, "succeeded": 0, "failed": 0}
        for record in hosts():
            result = str(record.wake_health.get("result") or "never")
            counts[result] = counts.get(result, 0) + 1
        return [({"result": result}, n) for result, n in sorted(counts.items())]

    metrics.register("powernap_wake_health_hosts", GAUGE, "Hosts by how their last wake ended.", results)
    metrics.register(
        "powernap_host_wake_marked",
        GAUGE,
        "1 while a host is marked by a failed wake (kept out of napping until a wake succeeds).",
        lambda: [({"host": r.name}, 1 if r.wake_health.get("marked") else 0) for r in hosts()],
    )


# The policy gate's outcomes (rails.counts) that are events; the others in it are bookkeeping.
POLICY_OUTCOMES = (
    "wakes",
    "naps",
    "queued",
    "refused",
    "decisions",
    "decisions_expired",
    "merged",
    "cancelled",
    "moot",
)


def _policy_collectors(metrics: MetricsRegistry, server: Any) -> None:
    """The policy gate (``server.rails``): its queue, pending decisions, vetoes and what it did with requests."""
    rails = server.rails

    def queue_lengths() -> List[Any]:
        kinds = {"wake": 0, "nap": 0}
        for request in rails.queue.values():
            kinds[request.kind] = kinds.get(request.kind, 0) + 1
        return [({"kind": kind}, n) for kind, n in sorted(kinds.items())]

    def vetoes() -> List[Any]:
        now = server.clock.wall()
        return [({"group": group}, len(rails.active_vetoes(group, now))) for group in sorted(rails.vetoes)]

    metrics.register(
        "powernap_policy_queue_length", GAUGE, "Requests waiting for a rate limit or cooldown.", queue_lengths
    )
    metrics.register(
        "powernap_policy_queue_max", GAUGE, "The queue's size limit (queue_size).", lambda: [({}, rails.queue_size)]
    )
    metrics.register(
        "powernap_policy_decisions_pending",
        GAUGE,
        "Recommend-only decisions waiting for an admin.",
        lambda: [({}, len(rails.decisions))],
    )
    metrics.register("powernap_policy_vetoes", GAUGE, "Active vetoes on a group's naps.", vetoes)
    metrics.register(
        "powernap_policy_decisions_total",
        COUNTER,
        "What the policy gate did with wake and nap requests, by outcome (wakes/naps: sent on).",
        lambda: [({"outcome": outcome}, rails.counts.get(outcome, 0)) for outcome in POLICY_OUTCOMES],
    )
    metrics.register(
        "powernap_policy_rule_errors_total",
        COUNTER,
        "Policy rules that raised (logged; the request was let through the rule).",
        lambda: [({}, rails.counts.get("rule_errors", 0))],
    )
