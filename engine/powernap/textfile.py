"""The engine's node_exporter textfile: its state, stage, idle seconds and each monitor's activity.

With ``[powernap] metrics_textfile_dir`` set (off by default), the daemon writes
``DIR/powernap.prom`` in the Prometheus text format, for node_exporter's
textfile collector (``--collector.textfile.directory``; Debian's
prometheus-node-exporter reads ``/var/lib/prometheus/node-exporter``).  The file
is replaced whole (a temporary file in the same directory, then a rename), so
node_exporter never reads half of it; it is rewritten at every engine event
(a state change, a stage) and every ``metrics_textfile_interval`` in between.
It is not fsynced: a crash may cost the newest figures, never a torn file,
and a napping host's disks are not woken for it.
"""

import os
from typing import Any, Dict, List

from .atomicfile import atomic_write
from .prometheus import GAUGE, MetricsRegistry
from .state import AWAKE, GRACE, NAPPING

FILENAME = "powernap.prom"
ENGINE_STATES = (AWAKE, GRACE, NAPPING)


def render(status: Dict[str, Any]) -> str:
    """The textfile's content from ``Daemon.status()`` (the same dict as ``powernap status --json``)."""
    metrics = MetricsRegistry()
    stage = status.get("stage") or {}
    monitors: List[Dict[str, Any]] = list(status.get("monitors") or [])

    def each_monitor(key: str) -> Any:
        return lambda: [
            ({"monitor": m["name"], "type": m["type"]}, _number(m.get(key))) for m in monitors if m.get(key) is not None
        ]

    metrics.register(
        "powernap_engine_info",
        GAUGE,
        "Always 1: the engine's version and host name as labels.",
        lambda: [({"version": status.get("version", ""), "host": status.get("host", "")}, 1)],
    )
    metrics.register(
        "powernap_engine_state",
        GAUGE,
        "1 for the engine's current state (awake, grace, napping), 0 for the others.",
        lambda: [({"state": s}, 1 if status.get("state") == s else 0) for s in ENGINE_STATES],
    )
    metrics.register(
        "powernap_engine_stage",
        GAUGE,
        "The nap stage in effect (its number; 0: none), with its action as a label.",
        lambda: [({"action": str(stage.get("action") or "")}, int(stage.get("index") or 0))],
    )
    metrics.register(
        "powernap_engine_idle_seconds",
        GAUGE,
        "How long the host has been idle, as the monitors judge it.",
        lambda: [({}, _number(status.get("idle_seconds")))],
    )
    metrics.register(
        "powernap_engine_powersave_active",
        GAUGE,
        "1 while the powersave tweaks are applied.",
        lambda: [({}, 1 if (status.get("powersave") or {}).get("active") else 0)],
    )
    metrics.register(
        "powernap_engine_monitor_active",
        GAUGE,
        "1 while the monitor sees activity (it keeps the host awake).",
        lambda: [({"monitor": m["name"], "type": m["type"]}, 1 if m.get("active") else 0) for m in monitors],
    )
    metrics.register(
        "powernap_engine_monitor_last_activity_timestamp_seconds",
        GAUGE,
        "When the monitor last saw activity (Unix time).",
        each_monitor("last_activity"),
    )
    metrics.register(
        "powernap_engine_monitor_error",
        GAUGE,
        "1 when the monitor cannot read what it watches (see powernap status).",
        lambda: [({"monitor": m["name"], "type": m["type"]}, 1 if m.get("error") else 0) for m in monitors],
    )
    return metrics.render()


def write(directory: str, status: Dict[str, Any]) -> str:
    """Replace ``directory/powernap.prom`` (mode 0644: node_exporter runs as another user); its path.

    The directory is never created: a missing one is the admin's choice or typo (OSError).
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError("no such directory %s" % directory)
    path = os.path.join(directory, FILENAME)
    atomic_write(path, render(status).encode("utf-8"), mode=0o644, durable=False)
    return path


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0
