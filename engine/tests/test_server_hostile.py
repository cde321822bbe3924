"""Issue 13's findings replayed against a running powerwaked (a subprocess on 127.0.0.1, bounded in time).

Every test starts the real daemon (``python3 -m powernap.server.daemon``) with a config of its own,
talks to it over UDP and HTTP on loopback only (magic packets go to 127.0.0.1), and checks that it
is still serving afterwards.  Wakes never leave the machine: ``broadcast = 127.0.0.1``.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from server_fakes import SECRET

from powernap.server import protocol as P

ENGINE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = SECRET.encode()


def free_port():
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _attempt in range(50):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def wait_until(predicate, seconds=10.0, what="condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s" % what)


class Daemon:
    """powerwaked as a subprocess; every wait is bounded, it is stopped by its own PID."""

    def __init__(self, tmp_path, extra="", state=True, confirm="1"):
        self.tmp_path = tmp_path
        self.port = free_port()
        self.state_file = tmp_path / "registry.json"
        self.config = tmp_path / "powerwaked.conf"
        text = (
            "[powerwaked]\nsecret = %s\nlisten = 127.0.0.1\nport = %d\nannounce = no\nbroadcast = 127.0.0.1\n"
            "confirm_timeout = %s\n" % (SECRET, self.port, confirm)
        )
        if state:
            text += "state_file = %s\n" % self.state_file
        self.config.write_text(text + extra)
        self.config.chmod(0o600)
        self.url = "http://127.0.0.1:%d" % self.port
        self.proc = None
        self.log = tmp_path / "powerwaked.log"

    def start(self):
        env = dict(os.environ, PYTHONPATH=ENGINE)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "powernap.server.daemon", "--config", str(self.config), "--log-level", "debug"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ENGINE,
            )
        wait_until(self._answers, what="powerwaked to answer (log: %s)" % self.log)
        return self

    def _answers(self):
        if self.proc.poll() is not None:
            raise AssertionError("powerwaked exited with %s:\n%s" % (self.proc.returncode, self.log.read_text()))
        try:
            return self.status()
        except OSError:
            return None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def status(self):
        return get(self.url + "/v1/status")

    def hosts(self):
        return {h["name"]: h for h in get(self.url + "/v1/hosts")["hosts"]}

    def stop(self, sig=signal.SIGTERM):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def send(self, message, raw=None):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(raw if raw is not None else P.encode(KEY, message), ("127.0.0.1", self.port))

    def report_acked(self, message, timeout=3.0):
        """Send a report and wait for the server's signed ack of it; returns the ack."""
        data = P.encode(KEY, message)
        nonce = json.loads(data.split(b" ", 2)[2])["nonce"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.sendto(data, ("127.0.0.1", self.port))
            reply, _sender = sock.recvfrom(P.MAX_MESSAGE)
        ack = P.decode(KEY, reply)
        assert ack["kind"] == "ack" and ack["re"] == nonce
        return ack


@pytest.fixture
def daemons():
    started = []

    def make(tmp_path, extra="", state=True, confirm="1"):
        daemon = Daemon(tmp_path, extra, state, confirm)
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


def get(url):
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


def post(url, data):
    request = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def report(host, **fields):
    message = {"kind": "report", "from": host, "host": host, "event": "heartbeat", "state": "awake"}
    message.update(fields)
    return message


def signed_raw(body_text):
    """Sign a hand-written JSON body (json.dumps would never write some of the hostile forms)."""
    body = body_text.encode()
    return P.MAGIC + b" " + P._mac(KEY, body).encode() + b" " + body


BAD_REPORTS = {
    "wol-x": {"wol": "x"},
    "load-x": {"load": "x"},
    "interval-1e9": {"interval": 1e9},
    "mac-bad": {"macs": ["not-a-mac"]},
    "ip-bad": {"ips": ["not-an-ip"]},
    "stage-x": {"stage": "x"},
    "cpus-neg": {"cpus": -1},
    "state-bogus": {"state": "bogus"},
    "detail-nested": {"detail": {"a": {"b": [1, 2]}}},
    "idle-list": {"idle_seconds": [1]},
    "unknown-field": {"rootkit": True},
    "macs-many": {"macs": ["52:54:00:00:%02x:%02x" % (i // 256, i % 256) for i in range(300)]},
}


def test_wrong_types_are_refused_with_a_reason_and_the_server_keeps_serving(tmp_path, daemons):
    daemon = daemons(tmp_path, "[group.web]\nhosts = good\n[cluster.web]\ngroup = web\n").start()
    for name, fields in BAD_REPORTS.items():
        daemon.send(report(name, **fields))
    ts = time.time()
    nonfinite = [
        '{"from":"nan-ts","host":"nan-ts","kind":"report","nonce":"aa01","ts":NaN,"v":1}',
        '{"from":"inf-load","host":"inf-load","kind":"report","load":Infinity,"nonce":"aa02","ts":%f,"v":1}' % ts,
        '{"from":"big-load","host":"big-load","kind":"report","load":1e999,"nonce":"aa03","ts":%f,"v":1}' % ts,
        '{"from":"deep","host":"deep","kind":"report","detail":%s,"nonce":"aa04","ts":%f,"v":1}'
        % ("[" * 5000 + "]" * 5000, ts),
    ]
    for text in nonfinite:
        daemon.send(None, raw=signed_raw(text))
    daemon.report_acked(report("good", load=0.5, cpus=2, macs=["52:54:00:00:00:01"], wol={"52:54:00:00:00:01": "g"}))
    hosts = daemon.hosts()
    assert set(hosts) == {"good"}, sorted(hosts)
    status = daemon.status()
    assert status["rejected"] == len(BAD_REPORTS) + len(nonfinite)
    assert status["errors"] == 0
    log = daemon.log.read_text()
    assert "field 'wol': must be an object" in log and "field 'interval'" in log and "not strict JSON" in log
    time.sleep(1.0)  # policy ticks (the cluster measures the group's load) run over the good host
    assert daemon.alive() and daemon.status()["errors"] == 0
    daemon.stop()
    daemon.start()  # nothing bad was saved: no crash loop
    assert set(daemon.hosts()) == {"good"}


def test_bad_values_in_a_saved_registry_are_dropped_not_a_crash_loop(tmp_path, daemons):
    # A registry written before validation existed, holding what used to crash the server on every start.
    bad = [
        {"name": "h1", "state": "awake", "engine": True, "last_seen": time.time(), "wol": "x", "load": "x",
         "interval": 1e9, "macs": ["not-a-mac"], "ips": ["198.18.0.11"], "groups": ["web"], "cpus": "many"},
        {"name": "h2", "state": "bogus", "macs": ["52:54:00:00:00:02"], "addr": "nowhere"},
        {"state": "awake"},
        "not a record",
    ]  # fmt: skip
    (tmp_path / "registry.json").write_text(json.dumps({"schema": 1, "saved": 0, "hosts": bad}))
    daemon = daemons(tmp_path, "[group.web]\nhosts = h1\n[cluster.web]\ngroup = web\n").start()
    hosts = daemon.hosts()
    assert set(hosts) == {"h1", "h2"}
    assert hosts["h1"]["macs"] == [] and hosts["h1"]["load"] is None and hosts["h1"]["interval"] == 30.0
    assert hosts["h2"]["state"] == "unknown" and hosts["h2"]["macs"] == ["52:54:00:00:00:02"]
    registry = daemon.status()["registry"]
    assert not registry["ok"] and "field 'wol'" in registry["problems"]["load"]
    status = post(daemon.url + "/v1/wake", P.encode(KEY, {"kind": "request", "from": "admin", "host": "h1"}))[0]
    assert status == 200
    time.sleep(1.0)
    assert daemon.alive() and daemon.status()["errors"] == 0


def test_a_corrupt_registry_is_kept_aside_and_the_server_starts_loudly(tmp_path, daemons):
    (tmp_path / "registry.json").write_text('{"schema": 1, "hosts": [{"name": "h1", "st')
    daemon = daemons(tmp_path, "[host.static1]\nmac = 52:54:00:00:00:31\n").start()
    assert set(daemon.hosts()) == {"static1"}
    registry = daemon.status()["registry"]
    assert not registry["ok"] and "unreadable" in registry["problems"]["load"]
    kept = [p.name for p in tmp_path.iterdir() if p.name.startswith("registry.json.corrupt-")]
    assert len(kept) == 1
    assert (tmp_path / kept[0]).read_text().startswith('{"schema": 1')
    assert "unreadable" in daemon.log.read_text()


def test_a_wake_in_flight_across_a_restart_is_resolved(tmp_path, daemons):
    now = time.time()
    record = {"name": "h1", "state": "waking", "since": now - 30, "macs": ["52:54:00:00:00:01"],
              "last_wake": {"time": now - 30, "method": "wol", "cause": "test"}}  # fmt: skip
    (tmp_path / "registry.json").write_text(json.dumps({"schema": 1, "saved": now - 29, "hosts": [record]}))
    daemon = daemons(tmp_path).start()
    wait_until(lambda: daemon.hosts()["h1"]["state"] == "asleep", 8.0, "the lost wake to end as asleep")


def test_a_waking_host_is_confirmed_by_a_probe_it_answers(tmp_path, daemons):
    # Issue 13 item 5: proof of life is an answer to our probe, not a frame anyone could forge.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        now = time.time()
        record = {"name": "h1", "state": "waking", "since": now, "ips": ["127.0.0.1"],
                  "last_wake": {"time": now, "method": "wol", "cause": "test"}}  # fmt: skip
        (tmp_path / "registry.json").write_text(json.dumps({"schema": 1, "saved": now, "hosts": [record]}))
        daemon = daemons(tmp_path, "[proxy]\nprobe_ports = %d\n" % port, confirm="60").start()
        wait_until(lambda: daemon.hosts()["h1"]["state"] == "awake", 10.0, "the probe to confirm h1")
    assert "probe: 127.0.0.1:%d accepted" % port in daemon.log.read_text()


def test_an_acknowledged_report_survives_kill_9(tmp_path, daemons):
    daemon = daemons(tmp_path).start()
    for index in range(3):
        daemon.report_acked(report("h%d" % index, state="suspending", macs=["52:54:00:00:00:%02x" % index]))
    daemon.stop(signal.SIGKILL)  # at once: no shutdown save, no tick after the acks
    daemon.start()
    hosts = daemon.hosts()
    assert {"h0", "h1", "h2"} <= set(hosts)
    assert hosts["h1"]["state"] == "suspending" and hosts["h1"]["macs"] == ["52:54:00:00:00:01"]


def test_a_request_captured_before_a_restart_cannot_be_replayed_after_it(tmp_path, daemons):
    daemon = daemons(tmp_path, "[host.h1]\nmac = 52:54:00:00:00:01\n").start()
    captured = P.encode(KEY, {"kind": "request", "from": "admin", "host": "h1", "method": "wol"})
    assert post(daemon.url + "/v1/wake", captured)[0] == 200
    assert post(daemon.url + "/v1/wake", captured)[0] == 401  # within the run: the in-memory guard
    daemon.stop()
    daemon.start()
    code, answer = post(daemon.url + "/v1/wake", captured)
    assert code == 401 and "restart" in answer["error"]
    fresh = P.encode(KEY, {"kind": "request", "from": "admin", "host": "h1", "method": "wol"})
    assert post(daemon.url + "/v1/wake", fresh)[0] == 200


def test_nan_timestamps_are_refused_over_http_too(tmp_path, daemons):
    daemon = daemons(tmp_path, "[host.h1]\nmac = 52:54:00:00:00:01\n").start()
    body = signed_raw('{"from":"admin","host":"h1","kind":"request","nonce":"ab12","ts":NaN,"v":1}')
    code, answer = post(daemon.url + "/v1/wake", body)
    assert code == 401 and "strict JSON" in answer["error"]
    assert daemon.hosts()["h1"]["wakes"] == 0


def test_the_host_cap_and_registration_bound_the_registry(tmp_path, daemons):
    daemon = daemons(tmp_path, "max_hosts = 3\n").start()
    for index in range(6):
        daemon.send(report("h%d" % index))
    wait_until(lambda: daemon.status()["refused"] == 3, what="3 refusals")
    assert len(daemon.hosts()) == 3
    daemon.stop()
    (tmp_path / "closed").mkdir()
    closed = daemons(tmp_path / "closed", "register = no\n[host.known]\nmac = 52:54:00:00:00:01\n").start()
    closed.report_acked(report("known"))
    closed.send(report("stranger"))
    wait_until(lambda: closed.status()["refused"] == 1, what="the stranger refused")
    assert set(closed.hosts()) == {"known"}
    code, _answer = post(closed.url + "/v1/report", P.encode(KEY, report("stranger2")))
    assert code == 403


BAD_CONFIGS = {
    "bad calendar": ("[group.g]\nhosts = a\n[schedule.s]\ngroups = g\nwake = Someday 25:00\n", "wake"),
    "cluster without group": ("[cluster.c]\nmin_awake = 1\n", "group"),
    "ups without groups": ("[ups.u]\nups = dummy\n", "groups"),
    "bad source": ("[group.g]\nhosts = a\n[cluster.c]\ngroup = g\nsource = carrier-pigeon\n", "source"),
    "bad wol_transport": ("wol_transport = smoke-signal\n", "wol_transport"),
    "ip": ("[host.a]\nip = not-an-ip\n", "ip"),
    "broadcast": ("broadcast = nowhere\n", "broadcast"),
    "listen": ("listen = 999.1.1.1\n", "listen"),
    "secureon": ("[host.a]\nmac = 52:54:00:00:00:01\nsecureon = zz-hunter2-zz\n", "secureon"),
    "bmc": ("[host.a]\nbmc = -oProxyCommand=x\n", "bmc"),
    "url": ("[group.g]\nhosts = a\n[cluster.c]\ngroup = g\nsource = url\nurl = file:///etc/shadow\n", "url"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_check_config_names_file_and_line_and_never_a_secret(tmp_path, case):
    text, option = BAD_CONFIGS[case]
    daemon = Daemon(tmp_path, text, state=False)  # text without a section header lands in [powerwaked]
    proc = subprocess.run(
        [sys.executable, "-m", "powernap.server.daemon", "--config", str(daemon.config), "--check-config"],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=ENGINE),
        cwd=ENGINE,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "KeyError" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith(str(daemon.config) + ":") for line in lines), proc.stderr
    assert any(option in line for line in lines), proc.stderr
    assert "hunter2" not in proc.stderr and SECRET not in proc.stderr


@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_a_secret_file_others_can_read_is_refused(tmp_path, mode):
    secret = tmp_path / "fleet.secret"
    secret.write_text("a-secret-of-sufficient-length\n")
    secret.chmod(mode)
    config = tmp_path / "powerwaked.conf"
    config.write_text("[powerwaked]\nsecret_file = %s\nannounce = no\n" % secret)
    config.chmod(0o600)
    proc = subprocess.run(
        [sys.executable, "-m", "powernap.server.daemon", "--config", str(config), "--check-config"],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=ENGINE),
        cwd=ENGINE,
    )
    assert proc.returncode == 1
    assert "readable by its group or others" in proc.stderr and "a-secret-of" not in proc.stderr
    secret.chmod(0o600)
    proc = subprocess.run(
        [sys.executable, "-m", "powernap.server.daemon", "--config", str(config), "--check-config"],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=ENGINE),
        cwd=ENGINE,
    )
    assert proc.returncode == 0, proc.stderr
