"""powerwaked's policy gate in the lab (root, lab): a paced burst of wakes seen on the wire, flapping load
that never cycles a host faster than its cooldowns, nap windows with a test clock, recommend-only mode
and vetoes.

As in test_powerwaked.py, powerwaked runs in the controller namespace and the test plays the hosts'
engines (signed reports); the server naps by IPMI soft-off (``nap_action = poweroff``) and wakes by
WoL (escalating to IPMI). Power changes are read from the lab's event log, magic packets from tcpdump.
"""

import json
import os
import signal
import subprocess
import tempfile
import time

import pytest

from .conftest import LabHandle
from .test_powerwaked import ENGINE, LOAD_SERVER, PORT, PYTHON, SECRET, Powerwaked, power_events

pytestmark = pytest.mark.lab

API_POST = r"""
import json, sys
sys.path.insert(0, %(engine)r)
from powernap.powerwake import ServerClient
client = ServerClient("http://127.0.0.1:%(port)d", %(secret)r)
print(json.dumps([client.post(path, body) for path, body in json.loads(sys.argv[1])]))
"""

# Fake hosts (MAC only, nobody answers): the burst needs more hosts than the lab has.
FAKE_MACS = ["02:00:00:16:0a:%02x" % i for i in range(1, 8)]


class RailsServer(Powerwaked):
    """powerwaked with [powerwaked] overrides in a drop-in and, optionally, a test clock."""

    def __init__(self, lab, extra="", server_options="", clock_start=None):
        super().__init__(lab, extra)
        os.makedirs(os.path.join(self.dir, "powerwaked.d"))
        dropin = os.path.join(self.dir, "powerwaked.d", "rails.conf")
        with open(dropin, "w", encoding="utf-8") as handle:
            handle.write("[powerwaked]\nconfirm_timeout = 8s\n" + server_options)
        os.chmod(dropin, 0o600)
        self.clock_start = clock_start

    def start(self):
        argv = ["ip", "netns", "exec", "%s-ctl" % self.lab.name, PYTHON, "-m", "powernap.server.daemon",
                "--config", self.config, "--log-level", "debug"]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=ENGINE)
        if self.clock_start is not None:
            argv += ["--test-clock-start", str(self.clock_start)]
            env["POWERWAKED_TEST_CLOCK"] = "yes"
        self.log = open(os.path.join(self.dir, "powerwaked.log"), "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(argv, cwd=ENGINE, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.lab.wait_for(self._api_ok, 15, "powerwaked API")

    def post(self, *requests):
        script = API_POST % {"engine": ENGINE, "secret": SECRET, "port": PORT}
        proc = self.lab.ctl([PYTHON, "-c", script, json.dumps([list(r) for r in requests])], check=False)
        if proc.returncode != 0:
            raise AssertionError("API POST failed: %s" % proc.stderr[-500:])
        return json.loads(proc.stdout)


@pytest.fixture
def rails_server(lab_reset):
    import shutil

    servers = []

    def make(extra="", server_options="", clock_start=None):
        server = RailsServer(lab_reset, extra, server_options, clock_start)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)  # it holds the BMC passwords


class TimedCapture:
    """tcpdump -tt of magic packets on the controller's LAN interface: (epoch, hex of the packet)."""

    def __init__(self, lab):
        fd, self.path = tempfile.mkstemp(prefix="pw-rails-capture-", suffix=".txt")
        self.out = os.fdopen(fd, "wb")  # closed in stop()
        # waits until tcpdump captures: with a fixed sleep the burst's first packets could go unseen
        self.proc = lab.tcpdump(["-l", "-n", "-tt", "-x", "-i", "eth0", "ether proto 0x0842 or udp port 9"], self.out)

    def stop(self):
        time.sleep(0.5)
        LabHandle.stop_tcpdump(self.proc)
        self.out.close()
        with open(self.path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        os.unlink(self.path)
        packets, current = [], None
        for line in text.splitlines():
            if line and not line[0].isspace():
                current = [float(line.split()[0]), ""]
                packets.append(current)
            elif current is not None:
                current[1] += "".join(line.split(":", 1)[-1].split())
        return packets

    @staticmethod
    def first_time(packets, mac):
        compact = mac.replace(":", "").lower() * 3
        return next((t for t, data in packets if compact in data), None)


def _hosts_text(lab, fake=()):
    text = "[group.web]\nhosts = %s\nnap_action = poweroff\n" % ", ".join([h["name"] for h in lab.hosts] + list(fake))
    for index, mac in enumerate(FAKE_MACS):
        if "f%d" % (index + 1) in fake:
            text += "[host.f%d]\nmac = %s\n" % (index + 1, mac)
    return text


def test_a_burst_of_ten_wakes_at_three_a_minute_wakes_three_at_once_and_paces_the_rest(lab, rails_server):
    fake = ["f%d" % i for i in range(1, 8)]
    server = rails_server(_hosts_text(lab, fake), "wake_rate = 3\n")
    names = [h["name"] for h in lab.hosts] + fake
    macs = [h["mac"] for h in lab.hosts] + FAKE_MACS
    capture = TimedCapture(lab)
    try:
        asked = time.time()
        answers = server.post(*(("/v1/wake", {"host": name}) for name in names))
        queued = server.get("/v1/status")["policy"]["queue"]
        time.sleep(46)
    finally:
        packets = capture.stop()
    assert [a["what"] for a in answers] == ["wake"] * 3 + ["queued"] * 7, answers
    assert queued["wake"] == 7 and [e["host"] for e in queued["head"]] == names[3:]
    sent = [TimedCapture.first_time(packets, mac) for mac in macs]
    # The burst's time is its first packet's: the server got the burst then. (``asked`` also counts the client's
    # start, a process in the lab's namespace that a loaded machine may take seconds to run.)
    assert all(t is not None for t in sent[:3]), (asked, sent)
    burst = min(sent[:3])
    assert 0 <= burst - asked < 15, (asked, sent)
    # Three at once...
    assert all(t - burst < 3 for t in sent[:3]), (burst, sent)
    # ...then one every 20 s, in the order asked (the 4th after ~20 s, the 5th after ~40 s), none early.
    assert sent[3] is not None and 17 <= sent[3] - burst <= 25, (burst, sent)
    assert sent[4] is not None and 37 <= sent[4] - burst <= 45, (burst, sent)
    assert all(t is None for t in sent[5:]), (asked, sent)
    assert server.get("/v1/status")["policy"]["queue"]["wake"] == 5


def test_flapping_load_does_not_cycle_a_host_faster_than_its_cooldowns(lab, rails_server):
    fd, load_file = tempfile.mkstemp(prefix="pw-rails-load-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("1\n")
    loader = subprocess.Popen(["ip", "netns", "exec", "%s-ctl" % lab.name, PYTHON, "-c", LOAD_SERVER, load_file])
    cooldown = 30
    try:
        server = rails_server(
            _hosts_text(lab) + "wake_after_nap = %ds\nnap_after_wake = %ds\n" % (cooldown, cooldown)
            + "[cluster.web]\ngroup = web\nmin_awake = 1\ncapacity = 10\nsource = url\n"
            "url = http://127.0.0.1:8099/\nlow_for = 0\nstep = 1s\n"
        )  # fmt: skip
        server.report(*({"host": h["name"], "state": "awake", "event": "start"} for h in lab.hosts))
        since = time.time()
        deadline = since + 150
        high = False
        while time.time() < deadline:  # the load flips every 6 s: 1 (one host is enough) <-> 25 (three)
            high = not high
            with open(load_file, "w", encoding="utf-8") as handle:
                handle.write("25\n" if high else "1\n")
            time.sleep(6)
        history = server.get("/v1/history")["history"]
        refused = server.get("/v1/status")["policy"]["refused"]
    finally:
        loader.send_signal(signal.SIGTERM)
        loader.wait(timeout=10)
        os.unlink(load_file)
    changes = 0
    for host in (h["name"] for h in lab.hosts):
        events = [(e["t"], e["to"]) for e in power_events(lab, host, since) if e.get("to") in ("on", "off")]
        changes += len(events)
        for (t1, first), (t2, then) in zip(events, events[1:], strict=False):
            # Power-on follows the wake and power-off the nap by a few seconds: allow 5 s.
            assert t2 - t1 >= cooldown - 5, (host, first, then, t2 - t1, events)
    assert changes >= 3, "the load never made the cluster act"
    assert any(e["what"] in ("wake", "nap") and e.get("source") == "cluster" for e in history)
    assert any(r["reason"].startswith("anti-flap") for r in refused) or any(
        "waited" in e.get("cause", "") for e in history
    ), (refused, history[-10:])


def test_nap_windows_hold_policy_naps_until_the_window_opens_on_a_test_clock(lab, rails_server):
    # Monday 2030-01-07 19:59:30 UTC; the group may nap from 20:00 to 06:00 UTC.
    start = 1894046370.0
    assert time.strftime("%a %H:%M:%S", time.gmtime(start)) == "Mon 19:59:30"
    # Before the server starts: its clock starts after this, so 20:00 on it comes 30 s after this at the earliest
    # (measured after the start, the calls in between on a loaded machine would eat the margin).
    since = time.time()
    server = rails_server(
        _hosts_text(lab) + "nap_from = *-*-* 20:00 UTC\nnap_until = *-*-* 06:00 UTC\n"
        "[cluster.web]\ngroup = web\nmin_awake = 2\ncapacity = 10\nsource = reports\nlow_for = 0\nstep = 1s\n",
        clock_start=start,
    )  # fmt: skip
    status = server.get("/v1/status")
    assert status["test_clock"] is True
    reports = [{"host": h["name"], "state": "awake", "event": "heartbeat", "load": 0.0, "cpus": 1} for h in lab.hosts]
    server.report(*reports)
    window = server.get("/v1/groups/web")["policy"]["nap_window"]
    assert window["open"] is False and window["opens"] == start + 30
    time.sleep(12)
    server.report(*reports)
    assert all(lab.power_state(h["name"]) == "on" for h in lab.hosts)
    refused = server.get("/v1/status")["policy"]["refused"]
    assert any("outside the nap window of group web" in r["reason"] and r["source"] == "cluster" for r in refused)
    lab.wait_for(lambda: server.report(*reports) or any(lab.power_state(h["name"]) == "off" for h in lab.hosts),
                 60, "a policy nap once the window opened", interval=2)  # fmt: skip
    offs = [e for h in lab.hosts for e in power_events(lab, h["name"], since) if e.get("to") == "off"]
    assert len(offs) == 1 and offs[0]["t"] - since >= 30, offs  # not before 20:00 on the server's clock
    assert server.get("/v1/groups/web")["policy"]["nap_window"]["open"] is True


def test_recommend_only_decides_without_power_changes_and_approve_acts(lab, rails_server):
    server = rails_server(
        _hosts_text(lab) + "mode = recommend\n"
        "[cluster.web]\ngroup = web\nmin_awake = 2\ncapacity = 10\nsource = reports\nlow_for = 0\nstep = 1s\n"
    )  # fmt: skip
    reports = [{"host": h["name"], "state": "awake", "event": "heartbeat", "load": 0.0, "cpus": 1} for h in lab.hosts]
    since = time.time()
    server.report(*reports)
    lab.wait_for(lambda: server.get("/v1/decisions")["decisions"], 20, "a decision")
    for _round in range(4):  # the cluster keeps asking: still one decision, still no power change
        server.report(*reports)
        time.sleep(2)
    decisions = server.get("/v1/decisions")["decisions"]
    assert len(decisions) == 1 and decisions[0]["kind"] == "nap" and decisions[0]["source"] == "cluster"
    assert all(lab.power_state(h["name"]) == "on" for h in lab.hosts)
    assert not [e for h in lab.hosts for e in power_events(lab, h["name"], since)]
    assert server.get("/v1/groups/web")["policy"]["decisions"] == 1
    (answer,) = server.post(("/v1/decisions/%s/approve" % decisions[0]["id"], {}))
    assert answer["what"] == "nap" and answer["source"] == "approved", answer
    lab.wait_power(decisions[0]["host"], "off", timeout=40)


def test_a_veto_from_the_api_or_an_engine_stops_policy_naps_until_lifted(lab, rails_server):
    server = rails_server(
        _hosts_text(lab)
        + "[cluster.web]\ngroup = web\nmin_awake = 2\ncapacity = 10\nsource = reports\nlow_for = 0\nstep = 1s\n"
    )
    (veto,) = server.post(("/v1/groups/web/veto", {"ttl": 600, "reason": "quarter-end batch"}))
    assert veto["reason"] == "quarter-end batch"
    reports = [{"host": h["name"], "state": "awake", "event": "heartbeat", "load": 0.0, "cpus": 1} for h in lab.hosts]
    reports[0].update(veto_for=600, veto_reason="monitor backup: rsync")  # an engine's veto monitor is busy
    since = time.time()
    for _round in range(4):
        server.report(*reports)
        time.sleep(2)
    assert all(lab.power_state(h["name"]) == "on" for h in lab.hosts)
    vetoes = server.get("/v1/groups/web")["policy"]["vetoes"]
    assert {(v["owner"].split()[0], v["reason"]) for v in vetoes} == {
        ("api", "quarter-end batch"), ("host", "monitor backup: rsync")
    }  # fmt: skip
    assert any("vetoed by" in r["reason"] for r in server.get("/v1/status")["policy"]["refused"])
    server.post(("/v1/groups/web/veto", {"clear": True}))
    reports[0].update(veto_for=0)  # the engine's monitor went idle: its next report lifts its veto
    reports[0].pop("veto_reason")
    lab.wait_for(lambda: server.report(*reports) or any(lab.power_state(h["name"]) == "off" for h in lab.hosts),
                 60, "a nap once the vetoes are lifted", interval=2)  # fmt: skip
    assert len([e for h in lab.hosts for e in power_events(lab, h["name"], since) if e.get("to") == "off"]) == 1
