"""powerwaked's /metrics scraped by a real Prometheus, and energy accounting over real transitions (root, lab).

powerwaked runs in the lab's controller namespace (``test_powerwaked.Powerwaked``).  A real
Prometheus server (Debian's ``prometheus``), started by this test in the same namespace with a
temporary config and data directory and stopped by its PID, scrapes it three ways: over loopback
(no token), over the LAN address with the bearer token, and over the LAN address without it (which
must fail).  The test then asks Prometheus' HTTP API for ``powernap_host_state`` of a lab host that
was really powered off (IPMI soft-off through its ipmi_sim BMC) and woken again.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from . import test_powerwaked
from .test_powerwaked import ENGINE, PORT, PYTHON, SECRET

pytestmark = pytest.mark.lab

powerwaked = test_powerwaked.powerwaked  # the fixture that runs powerwaked in the lab

PROMETHEUS_PORT = 9490  # inside the controller namespace: its own loopback
TOKEN = "lab-metrics-token-0123456789"
OFF_SECONDS = 40.0

PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: local
    static_configs: [{targets: ["127.0.0.1:%(port)d"]}]
  - job_name: remote
    authorization: {type: Bearer, credentials_file: %(token_file)s}
    static_configs: [{targets: ["%(controller)s:%(port)d"]}]
  - job_name: remote-without-token
    static_configs: [{targets: ["%(controller)s:%(port)d"]}]
"""

HTTP_GET = r"""
import json, sys, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1], headers=json.loads(sys.argv[2]))
try:
    with urllib.request.urlopen(request, timeout=5) as answer:
        print(json.dumps({"status": answer.status, "body": answer.read().decode()}))
except urllib.error.HTTPError as exc:
    print(json.dumps({"status": exc.code, "body": exc.read().decode()}))
except OSError as exc:
    print(json.dumps({"status": 0, "body": str(exc)}))
"""

API_POST = r"""
import json, sys
sys.path.insert(0, %(engine)r)
from powernap.powerwake import ServerClient
print(json.dumps(ServerClient("http://127.0.0.1:%(port)d", %(secret)r).post(sys.argv[1], json.loads(sys.argv[2]))))
"""


class Prometheus:
    """A Prometheus server in the controller namespace, on a temporary config and data directory."""

    def __init__(self, lab, controller):
        self.lab = lab
        self.dir = tempfile.mkdtemp(prefix="prometheus-lab-")
        token_file = os.path.join(self.dir, "token")
        with open(os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600), "w", encoding="utf-8") as handle:
            handle.write(TOKEN + "\n")
        config = os.path.join(self.dir, "prometheus.yml")
        with open(config, "w", encoding="utf-8") as handle:
            handle.write(PROMETHEUS_CONFIG % {"port": PORT, "token_file": token_file, "controller": controller})
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: apt-get install prometheus (tools/system-packages.txt)"
        self.log = open(os.path.join(self.dir, "prometheus.log"), "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", "%s-ctl" % lab.name, binary, "--config.file", config,
             "--storage.tsdb.path", os.path.join(self.dir, "data"),
             "--web.listen-address", "127.0.0.1:%d" % PROMETHEUS_PORT],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def get(self, url, headers=None):
        proc = self.lab.ctl([PYTHON, "-c", HTTP_GET, url, json.dumps(headers or {})], timeout=30)
        return json.loads(proc.stdout)

    def query(self, expr):
        """The instant vector for ``expr``, as {labels as a sorted tuple: value}."""
        from urllib.parse import quote

        answer = self.get("http://127.0.0.1:%d/api/v1/query?query=%s" % (PROMETHEUS_PORT, quote(expr)))
        if answer["status"] != 200:
            return None
        data = json.loads(answer["body"])
        return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in data["data"]["result"]}

    def wait_value(self, expr, predicate, timeout, what):
        def check():
            result = self.query(expr)
            values = list(result.values()) if result else []
            return len(values) == 1 and predicate(values[0])

        return self.lab.wait_for(check, timeout, what, interval=0.5)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def test_prometheus_scrapes_powerwaked_and_the_energy_figures_follow_real_transitions(lab, powerwaked):
    token_dir = tempfile.mkdtemp(prefix="powerwaked-metrics-")
    token_file = os.path.join(token_dir, "token")
    with open(os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600), "w", encoding="utf-8") as handle:
        handle.write(TOKEN + "\n")
    server = powerwaked(
        "[group.webservers]\nhosts = h1, h2\nnap_action = poweroff\n"
        "[metrics]\ntoken_file = %s\n"
        "[energy]\nwatts_on = 250\nwatts_off = 5\nprice_per_kwh = 0.40\ncurrency = EUR\n" % token_file,
        proxy=["enabled = no"],  # no wake but the test's own
    )
    prometheus = Prometheus(lab, lab.controller)
    try:
        # /metrics itself: loopback without a token, the LAN address only with it.
        local = prometheus.get("http://127.0.0.1:%d/metrics" % PORT)
        remote = "http://%s:%d/metrics" % (lab.controller, PORT)
        assert local["status"] == 200 and "# TYPE powernap_host_state gauge" in local["body"]
        assert prometheus.get(remote)["status"] == 401  # a token is set: without it, not authenticated
        assert prometheus.get(remote, {"Authorization": "Bearer wrong"})["status"] == 401
        assert prometheus.get(remote, {"Authorization": "Bearer " + TOKEN})["status"] == 200

        # A real power-off (IPMI soft-off through h1's BMC), some time off, a real wake.
        post = API_POST % {"engine": ENGINE, "port": PORT, "secret": SECRET}
        lab.ctl([PYTHON, "-c", post, "/v1/nap", json.dumps({"kind": "request", "host": "h1", "action": "poweroff"})])
        lab.wait_power("h1", "off", timeout=40)
        lab.wait_for(lambda: server.host("h1")["state"] == "off", 30, "the registry to see h1 off")
        prometheus.wait_value('powernap_host_state{job="remote",host="h1",state="off"}', lambda v: v == 1, 60,
                              "Prometheus to answer that h1 is off")  # fmt: skip
        prometheus.wait_value('up{job="local"}', lambda v: v == 1, 30, "the loopback scrape to work")
        prometheus.wait_value('up{job="remote-without-token"}', lambda v: v == 0, 30, "the tokenless scrape to fail")
        time.sleep(OFF_SECONDS)
        lab.ctl([PYTHON, "-c", post, "/v1/wake", json.dumps({"kind": "request", "host": "h1", "method": "ipmi"})])
        lab.wait_booted("h1", timeout=120)
        lab.wait_for(lambda: server.host("h1")["state"] == "awake", 60, "the registry to confirm h1's wake")
        prometheus.wait_value('powernap_host_state{job="remote",host="h1",state="awake"}', lambda v: v == 1, 60,
                              "Prometheus to answer that h1 is awake")  # fmt: skip
        prometheus.wait_value('powernap_wake_duration_seconds_count{job="local",method="ipmi"}', lambda v: v == 1, 30,
                              "the wake duration histogram to hold h1's wake")  # fmt: skip

        # Energy: the off time the meter counted is the time the server saw h1 off (its history),
        # within 1 %, and the joules and cost follow from the configured watts.
        history = server.get("/v1/history")["history"]
        went_off = next(e["time"] for e in history if e["host"] == "h1" and e["what"] == "ipmi" and e["ok"])
        woken = next(e["time"] for e in history if e["host"] == "h1" and e["what"] == "wake")
        energy = server.host("h1")["energy"]
        assert energy["seconds"]["off"] == pytest.approx(woken - went_off, rel=0.01)
        assert energy["seconds"]["off"] >= OFF_SECONDS
        assert energy["saved_joules"] == pytest.approx((250 - 5) * (woken - went_off), rel=0.01)
        assert energy["saved_cost"] == pytest.approx(energy["saved_joules"] / 3.6e6 * 0.40, rel=0.01)
        # And against the lab's own record of the power states (its event log): within 1 % plus the
        # IPMI round trips (the server counts from ipmitool's answer to the wake it sent).
        events = lab.events(host="h1", event="power")
        lab_off = next(e for e in reversed(events) if e.get("to") == "off")
        lab_on = next(e for e in events if e["t"] > lab_off["t"] and e.get("to") == "on")
        assert energy["seconds"]["off"] == pytest.approx(lab_on["t"] - lab_off["t"], rel=0.01, abs=3.0)
        prometheus.wait_value('powernap_host_energy_saved_joules_total{job="remote",host="h1"}',
                              lambda v: v == pytest.approx(energy["saved_joules"], rel=0.01), 30,
                              "Prometheus to hold h1's saved energy")  # fmt: skip
        status = server.get("/v1/status")["energy"]
        assert status["currency"] == "EUR" and status["saved_joules"] >= energy["saved_joules"]
    finally:
        prometheus.stop()
        shutil.rmtree(token_dir, ignore_errors=True)
