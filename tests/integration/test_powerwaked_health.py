"""Wake health and cluster rotation in the lab (issue 16): a host whose wake fails is marked and kept out of
napping, and comes back after a successful test wake; the cluster naps the host awake longest and wakes the
host asleep longest (root, lab).

powerwaked runs in the controller namespace as in test_powerwaked.py.  h2 has WoL disabled on its NIC
(``lab wol h2 d``) and no BMC in the server's config, so the magic packet reaches a NIC that ignores it.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from .test_powerwaked import API_POST, ENGINE, LOAD_SERVER, PORT, PYTHON, SECRET, Powerwaked, power_events

pytestmark = pytest.mark.lab


def post(lab, path, message):
    script = API_POST % {"engine": ENGINE, "secret": SECRET, "port": PORT}
    return json.loads(lab.ctl([PYTHON, "-c", script, path, json.dumps(message)]).stdout)


@pytest.fixture
def make_server(lab_reset):
    """powerwaked servers for one test (``edit(config_path)`` may change the config before the start)."""
    made = []

    def make(extra, edit=None):
        server = Powerwaked(lab_reset, extra)
        made.append(server)
        if edit is not None:
            edit(server.config)
        server.start()
        return server

    yield make
    for server in made:
        if server.proc is not None:
            server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)  # it holds the BMC passwords


def without_bmc(config_path, host):
    """Drop the bmc* lines of [host.HOST] from the server config: this host has no BMC."""
    with open(config_path, encoding="utf-8") as handle:
        text = handle.read()
    section = re.compile(r"(\[host\.%s\]\n(?:(?!\[).*\n)*)" % re.escape(host))
    text = section.sub(
        lambda match: "".join(line for line in match.group(1).splitlines(True) if not line.startswith("bmc")), text
    )
    with open(config_path, "w", encoding="utf-8") as handle:
        handle.write(text)


def test_a_host_that_cannot_wake_is_marked_kept_out_of_napping_and_back_after_a_test_wake(lab_reset, make_server):
    lab = lab_reset
    h2 = lab.host("h2")
    # The test-wake window (UTC seconds in the calendar) must open after the failed wake and its mark below
    # however slow they are: after every wait before it could have timed out (the server's start, asleep, marked).
    asleep_timeout, marked_timeout = 40, 40
    opens = time.gmtime(time.time() + 15 + asleep_timeout + marked_timeout + 25)

    def edit(config_path):
        with open(config_path, encoding="utf-8") as handle:
            text = handle.read()
        # No automatic retries (the test wake is what brings it back here), a quicker confirmation.
        text = text.replace("announce = no\n", "announce = no\nwake_retries = 0\n")
        text = text.replace("confirm_timeout = 20s\n", "confirm_timeout = 10s\n")
        with open(config_path, "w", encoding="utf-8") as handle:
            handle.write(text)
        without_bmc(config_path, "h2")

    server = make_server(
        "[group.web]\nhosts = h2\nnap_action = poweroff\ntest_wake = *-*-* %02d:%02d:%02d UTC\n"
        "test_wake_window = 10m\n" % (opens.tm_hour, opens.tm_min, opens.tm_sec),
        edit,
    )
    try:
        server.report({"host": "h2", "state": "suspending", "event": "action-start", "ips": [h2["address"]]})
        lab.power("h2", "suspend")
        lab.wol("h2", "d")
        lab.wait_for(lambda: server.host("h2")["state"] == "asleep", asleep_timeout, "h2 asleep in the registry")
        assert server.host("h2")["wake_health"]["result"] == "never"
        since = time.time()

        # 1. The wake fails: WoL is off and there is no BMC. The host is marked.
        assert post(lab, "/v1/wake", {"host": "h2"})["answer"]["method"] == "wol"
        lab.wait_for(lambda: server.host("h2")["wake_health"].get("marked"), marked_timeout, "h2 marked")
        health = server.host("h2")["wake_health"]
        assert health["result"] == "failed" and health["method"] == "wol" and health["seconds"] >= 10
        assert lab.power_state("h2") == "suspended"
        assert server.get("/v1/status")["wake_health"]["marked_hosts"] == ["h2"]

        # 2. Kept out of napping: an API nap is refused with the reason.
        refused = post(lab, "/v1/nap", {"host": "h2", "action": "poweroff"})
        assert refused["status"] == 409 and "marked" in refused["answer"]["error"], refused

        # 3. WoL back on; the test wake in the window wakes h2, the server confirms it, the mark is gone.
        lab.wol("h2", "g")
        lab.wait_power("h2", "on", timeout=150)
        lab.wait_for(lambda: server.host("h2")["wake_health"]["result"] == "succeeded", 60, "test wake confirmed")
        health = server.host("h2")["wake_health"]
        assert health["marked"] is False and health["test"] is True and "test wake" in health["cause"]
        assert 0 < health["seconds"] < 60
        assert [e.get("cause") for e in power_events(lab, "h2", since) if e.get("to") == "on"] == ["wol"]
        history = [e for e in server.get("/v1/history")["history"] if e["host"] == "h2" and e["what"] == "wake"]
        assert [e["cause"].split(" ")[0] for e in history] == ["API", "test"], history
        accepted = post(lab, "/v1/nap", {"host": "h2", "action": "poweroff"})
        assert accepted["status"] == 200 and "refused" not in accepted["answer"]
    finally:
        server.stop()  # the nap command would power h2 off (lab_reset powers it on again)


def test_cluster_rotation_naps_the_host_awake_longest_and_wakes_the_host_asleep_longest(lab_reset, make_server):
    lab = lab_reset
    fd, load_file = tempfile.mkstemp(prefix="pw-load-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("1\n")
    loader = subprocess.Popen(["ip", "netns", "exec", "%s-ctl" % lab.name, PYTHON, "-c", LOAD_SERVER, load_file])
    try:
        server = make_server(
            "[group.web]\nhosts = h1, h2, h3\nnap_action = poweroff\n[cluster.web]\ngroup = web\nmin_awake = 1\n"
            "capacity = 10\nsource = url\nurl = http://127.0.0.1:8099/\nlow_for = 15s\nstep = 15s\n"
            "rotation = longest\n"
        )
        server.report(*({"host": h, "state": "awake", "event": "start"} for h in ("h2", "h3", "h1")))
        lab.wait_for(lambda: all(server.host(h)["state"] == "awake" for h in ("h1", "h2", "h3")), 20, "all up")
        # Equal load (the status URL's total). h3, then h1 come back from a nap: h2 is the one awake longest.
        for name in ("h3", "h1"):
            time.sleep(1.5)
            server.report(
                {"host": name, "state": "suspending", "event": "action-start"},
                {"host": name, "state": "awake", "event": "resume"},
            )
        since = time.time()
        lab.wait_for(lambda: lab.power_state("h3") == "off", 150, "h2 then h3 powered off")
        lab.stays("h1", "on", seconds=8)  # min_awake = 1: the host awake the shortest stays
        offs = {h: min(e["t"] for e in power_events(lab, h, since) if e.get("to") == "off") for h in ("h2", "h3")}
        assert offs["h2"] < offs["h3"]
        naps = [e["host"] for e in server.get("/v1/history")["history"] if e["what"] == "nap"]
        assert naps == ["h2", "h3"]
        raised = time.time()
        with open(load_file, "w", encoding="utf-8") as handle:
            handle.write("15\n")  # needs 2: one sleeper wakes, the one asleep longest (h2)
        lab.wait_power("h2", "on", timeout=90)
        assert lab.power_state("h3") == "off"
        # (At the start, before any report, the hosts were unknown and the cluster woke one: not counted here.)
        history = server.get("/v1/history")["history"]
        assert [e["host"] for e in history if e["what"] == "wake" and e["time"] >= raised] == ["h2"], history
    finally:
        loader.send_signal(signal.SIGTERM)
        loader.wait(timeout=10)
        os.unlink(load_file)
