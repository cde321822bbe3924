# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet tables of status.yml, wake.yml and nap.yml (plugins/filter/status.py)."""

from ansible_collections.powernap.fleet.plugins.plugin_utils.status import human_duration, play_summary, status_table


def test_human_duration():
    assert [human_duration(s) for s in (None, 0, 59.6, 61, 3600 * 3 + 125, 86400 * 2 + 3600 * 4)] == [
        "-",
        "0s",
        "1m00s",
        "1m01s",
        "3h02m",
        "2d04h",
    ]


def test_status_table_covers_every_kind_of_host():
    hostvars = {
        "web1": {
            "info": {
                "engine": {
                    "present": True,
                    "running": True,
                    "state": "napping",
                    "idle_seconds": 1250,
                    "stage": {"index": 1, "action": "powersave"},
                    "next_action": {"stage": 2, "action": "suspend", "in_seconds": 90},
                },
                "verdict": {"allowed_actions": ["powersave"], "denied": {"suspend": "BIOS bug"}},
            }
        },
        "web2": {"info": {"unreachable": True, "msg": "ssh: timed out"}},
        "db1": {
            "info": {
                "engine": {"present": True, "running": False},
                "verdict": {"allowed_actions": ["powersave", "suspend"], "denied": {}},
            }
        },
        "new": {"info": {"engine": {"present": False}}},
        "bad": {"info": {"failed": True, "msg": "module failed\ntraceback"}},
        "gone": {},
    }
    lines = status_table(sorted(hostvars), hostvars, "info")
    assert lines[0].split() == ["HOST", "STATE", "IDLE", "NEXT", "ACTION", "VERDICT"]
    assert set(lines[1]) == {"-", " "}
    rows = {line.split()[0]: line for line in lines[2:]}
    assert list(rows) == ["bad", "db1", "gone", "new", "web1", "web2"]
    assert "napping (stage 1 powersave)" in rows["web1"]
    assert "20m50s" in rows["web1"] and "suspend in 1m30s" in rows["web1"]
    assert rows["web1"].endswith("denied: suspend (BIOS bug)")
    assert "unreachable (asleep or off)" in rows["web2"]
    assert "engine stopped" in rows["db1"] and rows["db1"].endswith("all actions allowed")
    assert "no engine" in rows["new"]
    assert rows["bad"].endswith("module failed")
    assert "no result" in rows["gone"]
    # Columns line up: every row is as wide as its header cells.
    state_col = lines[0].index("STATE")
    assert all(line[state_col - 2 : state_col] == "  " for line in lines[2:])


def test_play_summary_outcomes_and_fields():
    hostvars = {
        "a": {"r": {"changed": True, "woken_by": "wol", "confirmed": True, "elapsed": 12.345}},
        "b": {"r": {"failed": True, "msg": "Timed out waiting for b\nmore"}},
        "c": {"r": {"changed": False, "verdict": {"denied": {"suspend": "no S3"}}}},
        "d": {},
    }
    lines = play_summary(["d", "c", "b", "a"], hostvars, "r", ["woken_by", "confirmed", "elapsed", "verdict"])
    rows = {line.split()[0]: line for line in lines[2:]}
    assert rows["a"].split() == ["a", "changed", "wol", "yes", "12.3", "-"]
    assert "FAILED: Timed out waiting for b" in rows["b"]
    assert "denied: suspend (no S3)" in rows["c"]
    assert rows["d"].split()[:2] == ["d", "not"]


def test_verdict_names_each_reason_once():
    denied = {"hibernate": "no swap", "hybrid-sleep": "no swap", "poweroff": "nas"}
    engine = {"present": True, "running": True, "state": "awake"}
    hostvars = {"h": {"r": {"engine": engine, "verdict": {"denied": denied}}}}
    row = status_table(["h"], hostvars, "r")[2]
    assert row.endswith("denied: hibernate, hybrid-sleep (no swap); poweroff (nas)")


def test_multi_line_texts_stay_on_their_row():
    hostvars = {
        "nas": {
            "info": {
                "engine": {"present": True, "running": True, "state": "awake", "idle_seconds": 5},
                "verdict": {"denied": {"suspend": "systemctl said:\nFailed to connect to bus\n  (no systemd)"}},
            }
        },
        "web1": {"info": {"failed": True, "msg": "systemctl failed:\nJob for x.service failed."}},
    }
    lines = status_table(["nas", "web1"], hostvars, "info")
    assert len(lines) == 4
    assert lines[2].startswith("nas") and lines[2].endswith(
        "denied: suspend (systemctl said: Failed to connect to bus (no systemd))"
    )
    assert lines[3].startswith("web1") and lines[3].endswith("systemctl failed:")


def test_the_fleet_policy_column_shows_vetoes_decisions_and_queued_requests():
    engine = {"present": True, "running": True, "state": "awake", "idle_seconds": 5}
    veto = {"group": "web", "owner": "host nas1", "reason": "monitor backup: rsync", "until": 2e9, "since": 1e9}
    hostvars = {
        "web1": {"r": {"engine": engine, "server": {"found": True, "policy": {
            "vetoes": [veto], "decisions": [], "queued": None}}}},
        "web2": {"r": {"engine": engine, "server": {"found": True, "policy": {
            "vetoes": [], "decisions": [{"id": "0a1b2c3d", "kind": "nap", "expires": 2e9}],
            "queued": {"kind": "wake", "source": "proxy"}}}}},
        "web3": {"r": {"engine": engine}},
    }  # fmt: skip
    lines = status_table(["web1", "web2", "web3"], hostvars, "r")
    assert lines[0].split()[-2:] == ["FLEET", "POLICY"]
    assert lines[2].endswith("web vetoed by host nas1: monitor backup: rsync")
    assert lines[3].endswith("nap awaits approval (decision 0a1b2c3d); wake queued (proxy)")
    assert lines[4].endswith("-")
    assert status_table(["web3"], hostvars, "r")[0].split()[-1] == "VERDICT"  # no server asked: no column
    del veto["reason"]  # a veto without a reason (an older server, a hand-made result): no ": None"
    assert status_table(["web1"], hostvars, "r")[2].endswith("web vetoed by host nas1")


def test_status_table_shows_wake_health_when_the_fleet_server_was_asked():
    engine = {"present": True, "running": True, "state": "awake", "idle_seconds": 5}

    def info(server):
        return {"info": {"engine": engine, "verdict": {"denied": {}}, "server": server}}

    hostvars = {
        "h1": info(
            {"found": True, "wake_health": {"result": "failed", "marked": True, "method": "wol", "seconds": 45.0}}
        ),
        "h2": info(
            {
                "found": True,
                "wake_health": {
                    "result": "succeeded",
                    "marked": False,
                    "method": "escalated",
                    "seconds": 75,
                    "test": True,
                },
            }
        ),  # fmt: skip
        "h3": info({"found": True, "wake_health": {"result": "never", "marked": False}}),
        "h4": info({"found": False, "error": "HTTP 404"}),
        "h5": {"info": {"unreachable": True}},
    }
    lines = status_table(sorted(hostvars), hostvars, "info")
    assert lines[0].split()[-2:] == ["LAST", "WAKE"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert rows["h1"].endswith("FAILED, marked (wol, 45s)")
    assert rows["h2"].endswith("succeeded (escalated, 1m15s, test)")
    assert rows["h3"].endswith("never") and rows["h4"].endswith("-") and rows["h5"].endswith("-")
    without = {"h1": {"info": {"engine": engine}}}
    assert "LAST WAKE" not in status_table(["h1"], without, "info")[0]  # no server asked: no column


def test_the_energy_saved_column_and_the_totals_of_the_hosts_shown():
    engine = {"present": True, "running": True, "state": "awake", "idle_seconds": 5}

    def info(energy, groups=("web",)):
        server = {"found": True, "groups": list(groups), "wake_health": {"result": "never"}, "energy": energy}
        return {"r": {"engine": engine, "verdict": {"denied": {}}, "server": server}}

    def saved(kwh, cost, currency="EUR"):
        return {"saved_kwh": kwh, "saved_cost": cost, "currency": currency, "saved_joules": kwh * 3.6e6}

    hostvars = {
        "web1": info(saved(12.5, 1.875)),
        "web2": info(saved(0.000417, 0.0000625), groups=("web", "db")),
        "db1": info(saved(0.0, 0.0), groups=("db",)),
        "old": info(None),  # a server before energy accounting
        "odd": info({"saved_kwh": "12", "saved_cost": True}),  # not figures: shown as none
        "gone": {"r": {"unreachable": True}},
    }
    lines = status_table(sorted(hostvars), hostvars, "r")
    header = lines[0]
    assert header.split()[-4:] == ["LAST", "WAKE", "ENERGY", "SAVED"]
    rows = {line.split()[0]: line for line in lines[2:8]}
    energy_col = header.index("ENERGY SAVED")
    cells = {host: row[energy_col:] for host, row in rows.items()}
    assert cells == {
        "web1": "12.50 kWh, 1.88 EUR",
        "web2": "0.000417 kWh, 0.000063 EUR",
        "db1": "0.00 kWh, 0.00 EUR",
        "old": "-",  # a server before energy accounting
        "odd": "-",
        "gone": "-",
    }
    assert all(row[energy_col - 2 : energy_col] == "  " for row in rows.values())
    # Under the table: the hosts shown, summed for the fleet and per group (each host in each of its groups).
    assert lines[8:] == [
        "",
        "ENERGY SAVED against always-on:",
        "  fleet (3 hosts shown): 12.50 kWh, 1.88 EUR",
        "  group db (2 hosts shown): 0.000417 kWh, 0.000063 EUR",
        "  group web (2 hosts shown): 12.50 kWh, 1.88 EUR",
    ]
    # Hosts asked of servers with different currencies: the costs are not added across currencies.
    hostvars["db1"] = info(saved(1.0, 0.3, "USD"), groups=())
    assert "  fleet (3 hosts shown): 13.50 kWh, 1.88 EUR, 0.30 USD" in status_table(sorted(hostvars), hostvars, "r")
    # No server view with energy: neither the column nor the totals.
    plain = {"h": {"r": {"engine": engine, "server": {"found": True, "wake_health": {"result": "never"}}}}}
    lines = status_table(["h"], plain, "r")
    assert "ENERGY SAVED" not in lines[0] and len(lines) == 3


def test_the_energy_saved_column_comes_before_the_fleet_policy_column():
    engine = {"present": True, "running": True, "state": "awake", "idle_seconds": 5}
    veto = {"group": "web", "owner": "API 127.0.0.1", "reason": "backup", "until": 2e9, "since": 1e9}
    server = {"found": True, "energy": {"saved_kwh": 2, "saved_cost": 0.3, "currency": "USD"},
              "policy": {"vetoes": [veto], "decisions": [], "queued": None}}  # fmt: skip
    lines = status_table(["h"], {"h": {"r": {"engine": engine, "server": server}}}, "r")
    assert lines[0].split()[-5:] == ["WAKE", "ENERGY", "SAVED", "FLEET", "POLICY"]
    assert lines[2][lines[0].index("ENERGY SAVED") :].split("  ")[0] == "2.00 kWh, 0.30 USD"
    assert lines[2].endswith("  web vetoed by API 127.0.0.1: backup")
    assert lines[-1] == "  fleet (1 host shown): 2.00 kWh, 0.30 USD"


def test_a_host_that_did_not_answer_shows_the_fleet_servers_view():
    # power_info asked the server from the controller (server.asked_from): state, wake health, energy, policy.
    server = {"found": True, "asked_from": "controller", "state": "asleep", "groups": ["web"],
              "wake_health": {"result": "succeeded", "marked": False, "method": "wol", "seconds": 12},
              "energy": {"saved_kwh": 1.5, "saved_cost": 0.45, "currency": "EUR"},
              "policy": {"vetoes": [], "decisions": [], "queued": None}}  # fmt: skip
    hostvars = {
        "h1": {"r": {"unreachable": True, "msg": "timed out", "server": server}},
        "h2": {"r": {"unreachable": True, "msg": "timed out", "server": {"found": False, "error": "HTTP 404"}}},
    }
    lines = status_table(["h1", "h2"], hostvars, "r")
    header = lines[0]
    rows = {line.split()[0]: line for line in lines[2:4]}
    assert rows["h1"][header.index("STATE") : header.index("IDLE")].strip() == "unreachable, server: asleep"
    assert rows["h1"][header.index("LAST WAKE") :].split("  ")[0] == "succeeded (wol, 12s)"
    assert rows["h1"][header.index("ENERGY SAVED") :].split("  ")[0] == "1.50 kWh, 0.45 EUR"
    assert rows["h2"][header.index("STATE") : header.index("IDLE")].strip() == "unreachable (asleep or off)"
    assert lines[-2:] == [
        "  fleet (1 host shown): 1.50 kWh, 0.45 EUR",
        "  group web (1 host shown): 1.50 kWh, 0.45 EUR",
    ]
