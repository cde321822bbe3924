"""The status playbook with the fleet server's view (issue 16): playbooks/status.yml, with
``powernap_status_server_url`` pointing at a real powerwaked in the lab, prints each host's engine state, its
LAST WAKE after a real wake, its FLEET POLICY after a veto through the API, and the ENERGY SAVED while it slept,
with the totals of the hosts shown; an asleep host shows the server's view (root, lab).

powerwaked runs in the controller namespace as in test_powerwaked.py, with ``read_auth = no`` (power_info
reads the host's record unsigned, from the host).  h1 runs the engine deployed by playbooks/site.yml; h2
is asleep when the playbook runs, so power_info's action plugin asks the server about it from the controller.
"""

import json
import re
import shutil
import time

import pytest

from .test_modules import LAB_ENGINE_VARS, extra_vars, playbook, stop_engines
from .test_powerwaked import PORT, Powerwaked
from .test_powerwaked_health import post

pytestmark = pytest.mark.lab

# Watts and price unlike the defaults: the table's figures must be the server's, not a guess.
ENERGY = "[energy]\nwatts_on = 250\nwatts_suspended = 10\nprice_per_kwh = 0.40\ncurrency = EUR\n"


def printed_table(stdout):
    """The status table's lines from ansible-playbook's output (the debug task's msg, a list of lines)."""
    match = re.search(r'"msg": (\[\n.*?\n\s*\])', stdout, re.S)
    assert match, stdout[-4000:]
    return json.loads(match.group(1))


def test_status_playbook_shows_state_last_wake_fleet_policy_and_energy_saved(lab_reset):
    lab = lab_reset
    for name in ("h1", "h2"):
        lab.wait_booted(name)
    playbook(lab, "site", "-l", "h1", *extra_vars(lab, LAB_ENGINE_VARS))
    try:
        proc, record = _status_with_a_server(lab)
    finally:
        stop_engines(lab, ["h1"])  # the engine this test deployed: later tests expect hosts that run none
    _check_the_table(proc, record)


def _status_with_a_server(lab):
    """A real nap, wake and veto through powerwaked, then the status playbook: (its run, h1's record)."""
    h1, h2 = lab.host("h1"), lab.host("h2")
    server = Powerwaked(lab, "[group.web]\nhosts = h1\n" + ENERGY)
    with open(server.config, encoding="utf-8") as handle:
        text = handle.read()
    with open(server.config, "w", encoding="utf-8") as handle:
        handle.write(text.replace("announce = no\n", "announce = no\nread_auth = no\n", 1))
    server.start()
    try:
        # A real nap and a real wake: h1 suspends, the server sees it asleep, an API wake sends the magic packet.
        server.report({"host": "h1", "state": "suspending", "event": "action-start", "ips": [h1["address"]]})
        lab.power("h1", "suspend")
        lab.wait_for(lambda: server.host("h1")["state"] == "asleep", 40, "h1 asleep in the registry")
        time.sleep(5)  # asleep a while: energy to account
        assert post(lab, "/v1/wake", {"host": "h1"})["answer"]["method"] == "wol"
        lab.wait_power("h1", "on", timeout=60)
        lab.wait_for(lambda: server.host("h1")["wake_health"]["result"] == "succeeded", 60, "wake confirmed")
        vetoed = post(lab, "/v1/groups/web/veto", {"ttl": 600, "reason": "itest backup running"})
        assert vetoed["status"] == 200, vetoed
        # h2 naps and stays asleep: it cannot answer, so power_info asks the server about it from the controller.
        server.report({"host": "h2", "state": "suspending", "event": "action-start", "ips": [h2["address"]]})
        lab.power("h2", "suspend")
        lab.wait_for(lambda: server.host("h2")["state"] == "asleep", 40, "h2 asleep in the registry")
        lab.wait_booted("h1")

        proc = playbook(
            lab,
            "status",
            "-e",
            "powernap_hosts=h1,h2",
            "-e",
            "powernap_status_server_url=http://%s:%d" % (lab.controller, PORT),
        )
        record = server.host("h1")  # after the play: h1 is awake, so its saving no longer grows
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)  # it holds the BMC passwords
    return proc, record


def _check_the_table(proc, record):
    lines = printed_table(proc.stdout)
    header = lines[0]
    assert header.split()[:2] == ["HOST", "STATE"], lines
    for column in ("LAST WAKE", "ENERGY SAVED", "FLEET POLICY"):
        assert column in header, lines
    rows = {line.split()[0]: line for line in lines[2:] if line and not line.startswith(" ")}

    def cell(host, column, following):
        row = rows[host]
        return row[header.index(column) : header.index(following) if following else None].strip()

    # The engine's state, the wake the server confirmed, what it saved while asleep, the API's veto.
    assert cell("h1", "STATE", "IDLE") in ("awake", "grace"), lines
    health = record["wake_health"]
    assert health["result"] == "succeeded" and health["method"] == "wol", health
    assert re.fullmatch(r"succeeded \(wol, \d+s\)", cell("h1", "LAST WAKE", "ENERGY SAVED")), lines
    energy = record["energy"]
    # (250 - 10) W over the seconds asleep, within 1 %; the table shows the server's figures.
    asleep = energy["seconds"]["suspended"]
    assert asleep >= 5 and abs(energy["saved_joules"] - 240 * asleep) <= 0.01 * 240 * asleep, energy
    shown = "%.6f kWh, %.6f EUR" % (energy["saved_kwh"], energy["saved_cost"])
    assert cell("h1", "ENERGY SAVED", "FLEET POLICY") == shown, lines
    policy = cell("h1", "FLEET POLICY", None)
    assert policy.startswith("web vetoed by api ") and policy.endswith(": itest backup running"), lines
    # h2, asleep: unreachable, with the server's view of it (asked from the controller), still saving energy.
    assert cell("h2", "STATE", "IDLE") == "unreachable, server: asleep", lines
    assert cell("h2", "LAST WAKE", "ENERGY SAVED") == "never", lines
    h2_kwh, h2_cost = (float(x.split()[0]) for x in cell("h2", "ENERGY SAVED", "FLEET POLICY").split(", "))
    assert 0 < h2_kwh < 0.01 and h2_cost > 0 and cell("h2", "ENERGY SAVED", "FLEET POLICY").endswith(" EUR"), lines
    assert cell("h2", "FLEET POLICY", None) == "-", lines  # h2 is in no group: the veto on web is not its
    # Under the table: the hosts shown, summed (h1 and h2 for the fleet, h1 alone in web).
    fleet = lines[-2]
    assert fleet.startswith("  fleet (2 hosts shown): ") and fleet.endswith(" EUR"), lines
    fleet_kwh = float(fleet.split(": ")[1].split()[0])
    assert abs(fleet_kwh - (energy["saved_kwh"] + h2_kwh)) <= 2e-6, lines
    assert lines[-1] == "  group web (1 host shown): %s" % shown, lines
