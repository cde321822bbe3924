# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One table for the whole fleet, from each host's ``powernap status --json`` (or why there is none)."""

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_text

HEADERS = ("HOST", "STATE", "IDLE", "NEXT ACTION", "VERDICT")
WAKE_HEADER = "LAST WAKE"  # shown when the results carry the fleet server's view (power_info server_url)
ENERGY_HEADER = "ENERGY SAVED"  # likewise, when the server accounts energy (powerwaked 16+)


def human_duration(seconds):
    """Short duration: 45s, 12m05s, 3h20m, 2d04h."""
    if seconds is None:
        return "-"
    seconds = int(round(float(seconds)))
    if seconds < 60:
        return "%ds" % seconds
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return "%dm%02ds" % (minutes, secs)
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return "%dh%02dm" % (hours, minutes)
    days, hours = divmod(hours, 24)
    return "%dd%02dh" % (days, hours)


def _state(engine):
    state = to_text(engine.get("state") or "unknown")
    stage = engine.get("stage")
    if isinstance(stage, dict) and stage.get("action"):
        state = "%s (stage %s %s)" % (state, stage.get("index"), stage.get("action"))
    return state


def _next_action(engine):
    upcoming = engine.get("next_action")
    if not upcoming:
        return "none"
    return "%s in %s" % (upcoming.get("action"), human_duration(upcoming.get("in_seconds")))


def _verdict(verdict):
    if not isinstance(verdict, dict):
        return "-"
    denied = verdict.get("denied") or {}
    if not denied:
        return "all actions allowed"
    # One reason often denies several actions: name it once.
    by_reason = {}
    for action in sorted(denied):
        by_reason.setdefault(to_text(denied[action]), []).append(action)
    return "denied: " + "; ".join("%s (%s)" % (", ".join(actions), reason) for reason, actions in by_reason.items())


def fleet_policy(result):
    """What the fleet server's policy gate holds for the host (power_info's server.policy): vetoes, decisions,
    a queued request; None when the server was not asked."""
    server = result.get("server") if isinstance(result, dict) else None
    policy = server.get("policy") if isinstance(server, dict) else None
    if not isinstance(policy, dict):
        return None
    parts = []
    for veto in policy.get("vetoes") or ():
        reason = veto.get("reason")  # an unsigned read gets no reason (it may name addresses)
        parts.append("%s vetoed by %s%s" % (veto.get("group"), veto.get("owner"), ": %s" % reason if reason else ""))
    for decision in policy.get("decisions") or ():
        parts.append("%s awaits approval (decision %s)" % (decision.get("kind"), decision.get("id")))
    queued = policy.get("queued")
    if isinstance(queued, dict):
        parts.append("%s queued (%s)" % (queued.get("kind"), queued.get("source")))
    return "; ".join(to_text(part) for part in parts) or "-"


def status_row(host, result):
    """Cells for one host from its registered powernap.fleet.power_info result (or its absence)."""
    host = to_text(host)
    if not isinstance(result, dict):
        return (host, "no result", "-", "-", "-")
    if result.get("unreachable"):
        return (host, _unreachable_state(result), "-", "-", "-")
    if result.get("failed"):
        return (host, "error", "-", "-", to_text(result.get("msg") or "failed").splitlines()[0])
    engine = result.get("engine") or {}
    verdict = _verdict(result.get("verdict"))
    if not engine.get("present"):
        return (host, "no engine", "-", "-", verdict)
    if not engine.get("running"):
        return (host, "engine stopped", "-", "-", verdict)
    return (host, _state(engine), human_duration(engine.get("idle_seconds")), _next_action(engine), verdict)


def _unreachable_state(result):
    """A host that did not answer: the fleet server's state of it when power_info could ask (from the controller)."""
    server = result.get("server")
    if isinstance(server, dict) and server.get("found") and server.get("state"):
        return "unreachable, server: %s" % to_text(server["state"])
    return "unreachable (asleep or off)"


def wake_cell(result):
    """The fleet server's wake health of a host: "succeeded (wol, 12s)", "FAILED, marked (wol, 45s)", "never"."""
    server = result.get("server") if isinstance(result, dict) else None
    if not isinstance(server, dict) or not server.get("found"):
        return "-"
    health = server.get("wake_health")
    if not isinstance(health, dict):
        return "-"
    outcome = to_text(health.get("result") or "never")
    if outcome == "never":
        return "never"
    if health.get("marked"):
        outcome = "FAILED, marked" if outcome == "failed" else outcome + ", marked"
    seconds = health.get("seconds")
    how = to_text(health.get("method") or "?")
    if seconds is not None:
        how += ", " + human_duration(seconds)
    if health.get("test"):
        how += ", test"
    return "%s (%s)" % (outcome, how)


def server_energy(result):
    """The fleet server's energy figures of a host (power_info's server.energy), or None."""
    server = result.get("server") if isinstance(result, dict) else None
    if not isinstance(server, dict) or not server.get("found"):
        return None
    energy = server.get("energy")
    kwh = _number(energy.get("saved_kwh")) if isinstance(energy, dict) else None
    if kwh is None:
        return None
    return {
        "kwh": kwh,
        "cost": _number(energy.get("saved_cost")) or 0.0,
        "currency": _one_line(energy.get("currency") or "?"),
    }


def _number(value):
    """A figure from the server's answer, or None (a bool, a string or a missing key is not a figure)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def energy_text(kwh, costs):
    """Energy and cost saved: "12.50 kWh, 1.88 USD"; below 0.01, six decimals (a host asleep for minutes)."""
    kwh = float(kwh)
    parts = ["%s kWh" % _figure(kwh)]
    for currency in sorted(costs):
        parts.append("%s %s" % (_figure(costs[currency]), to_text(currency)))
    return ", ".join(parts)


def _figure(value):
    value = float(value)
    if value == 0 or abs(value) >= 0.01:
        return "%.2f" % value
    return "%.6f" % value  # 0.000417, not 0.00: a fresh host's saving still shows (the API's precision)


def energy_cell(result):
    energy = server_energy(result)
    if energy is None:
        return "-"
    return energy_text(energy["kwh"], {energy["currency"]: energy["cost"]})


def energy_totals(registered):
    """The lines under the table: energy and cost saved by the hosts shown, for the fleet and per group.

    Summed over the hosts in the table, from each one's server view: one GET per host already made; the
    server's own totals over every host it knows are in GET /v1/status, /v1/groups and /metrics.  Costs are
    summed per currency (hosts may be asked of servers with different prices)."""
    fleet = {"hosts": 0, "kwh": 0.0, "costs": {}}
    groups = {}
    for _host, result in registered:
        energy = server_energy(result)
        if energy is None:
            continue
        for total in [fleet] + [
            groups.setdefault(to_text(g), {"hosts": 0, "kwh": 0.0, "costs": {}})
            for g in _names(result["server"].get("groups"))
        ]:
            total["hosts"] += 1
            total["kwh"] += energy["kwh"]
            total["costs"][energy["currency"]] = total["costs"].get(energy["currency"], 0.0) + energy["cost"]
    if not fleet["hosts"]:
        return []

    def line(label, total):
        hosts = "%d host%s" % (total["hosts"], "" if total["hosts"] == 1 else "s")
        return "%s (%s shown): %s" % (label, hosts, energy_text(total["kwh"], total["costs"]))

    return ["", "ENERGY SAVED against always-on:", "  " + line("fleet", fleet)] + [
        "  " + line("group " + name, groups[name]) for name in sorted(groups)
    ]


def _names(value):
    """A host's distinct group names from the server's answer (anything but a list of names counts as none)."""
    if not isinstance(value, list):
        return []
    return sorted({to_text(name) for name in value if isinstance(name, str) and name})


def _one_line(cell):
    """A cell on one line: a command's multi-line error (systemctl's, say) must not break the table."""
    return " ".join(to_text(cell).split())


def _table(headers, rows):
    rows = [tuple(_one_line(cell) for cell in row) for row in [tuple(headers)] + list(rows)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return lines


def _registered(hosts, hostvars, var):
    if not isinstance(hosts, (list, tuple)):
        raise AnsibleFilterError("expected a list of host names, got %r" % (hosts,))
    for host in sorted(to_text(h) for h in hosts):
        yield host, (hostvars.get(host) or {}).get(var)


def status_table(hosts, hostvars, var):
    """A text table of every host (state, idle time, next action, verdict) from registered power_info results.

    With the fleet server's view in the results (power_info ``server_url``), a LAST WAKE column shows each
    host's wake health, an ENERGY SAVED column the energy and cost it saved against always-on (with lines
    under the table summing the hosts shown, for the fleet and per group), and a FLEET POLICY column its
    vetoes, pending decisions and queued requests (when any host has a policy view).
    """
    registered = list(_registered(hosts, hostvars, var))
    headers = HEADERS
    rows = [status_row(host, result) for host, result in registered]
    if any(isinstance(result, dict) and isinstance(result.get("server"), dict) for _host, result in registered):
        headers += (WAKE_HEADER,)
        rows = [row + (wake_cell(result),) for row, (_host, result) in zip(rows, registered)]
    totals = energy_totals(registered)
    if totals:
        headers += (ENERGY_HEADER,)
        rows = [row + (energy_cell(result),) for row, (_host, result) in zip(rows, registered)]
    policies = [fleet_policy(result) for _host, result in registered]
    if any(policy is not None for policy in policies):
        headers += ("FLEET POLICY",)
        rows = [row + (policy or "-",) for row, policy in zip(rows, policies)]
    return _table(headers, rows) + totals


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "%.1f" % value
    if isinstance(value, dict) and ("denied" in value or "allowed_actions" in value):
        return _verdict(value)
    return to_text(value)


def play_summary(hosts, hostvars, var, fields):
    """A text table of a registered result per host: OUTCOME plus the given result fields."""
    headers = ["HOST", "OUTCOME"] + [to_text(f).upper() for f in fields]
    rows = []
    for host, result in _registered(hosts, hostvars, var):
        if not isinstance(result, dict):
            rows.append(tuple([host, "not run"] + ["-"] * len(fields)))
            continue
        if result.get("unreachable"):
            outcome = "unreachable"
        elif result.get("failed"):
            outcome = "FAILED: " + to_text(result.get("msg") or "").splitlines()[0] if result.get("msg") else "FAILED"
        elif result.get("skipped"):
            outcome = "skipped"
        else:
            outcome = "changed" if result.get("changed") else "ok"
        rows.append(tuple([host, outcome] + [_cell(result.get(f)) for f in fields]))
    return _table(headers, rows)
