"""Issue 13's findings replayed against a RUNNING powerwaked (a subprocess on 127.0.0.1, bounded in time).

Every test starts the real daemon (``python3 -m powernap.server.daemon``) with a config of its own,
talks to it over UDP and HTTP on loopback only (magic packets go to 127.0.0.1), stops it by its pid,
and checks that it kept serving.  Wakes never leave the machine: ``broadcast = 127.0.0.1``.
Reports are signed with each host's own key, API requests with the master secret for their method
and path (``protocol``).  Two halves: hostile input and persistence (``Daemon``), then identity,
signatures, exposure, slow clients and threads (``Powerwaked``; the slowloris test prints its
figures, run with ``-s`` to see them).
"""

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import pytest
from server_fakes import SECRET, key_of, signed_report

from powernap import powerwake
from powernap.server import protocol as P
from powernap.server.netinfo import NetView

ENGINE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MASTER = SECRET.encode()
BMC_PASSWORD = "bmc-password-never-shown"
SECUREON = "11:22:33:44:55:66"


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
        text = "[powerwaked]\nsecret = %s\nport = %d\nannounce = no\nbroadcast = 127.0.0.1\nconfirm_timeout = %s\n" % (
            SECRET,
            self.port,
            confirm,
        )
        if not extra.startswith("listen ="):  # listen has no default; a test may name its own
            text += "listen = 127.0.0.1\n"
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
        return get(self.url, "/v1/status")

    def hosts(self):
        return {h["name"]: h for h in get(self.url, "/v1/hosts")["hosts"]}

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
            sock.sendto(raw if raw is not None else signed_report(message["from"], message), ("127.0.0.1", self.port))

    def report_acked(self, message, timeout=3.0):
        """Send a report and wait for the server's signed ack of it; returns the ack."""
        data = signed_report(message["from"], message)
        nonce = json.loads(data.split(b" ", 2)[2])["nonce"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.sendto(data, ("127.0.0.1", self.port))
            reply, _sender = sock.recvfrom(P.MAX_MESSAGE)
        ack = P.decode(key_of(message["from"]).encode(), reply, P.TO_ENGINE)
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


def get(url, path):
    """A read signed with the master secret (reads need a signature by default)."""
    return powerwake.ServerClient(url, SECRET).get(path)


def admin_request(path, **fields):
    """An API request body signed with the master secret for POST ``path``."""
    return P.encode(MASTER, dict(fields, kind="request", **{"from": "admin"}), P.http_label("POST", path))


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


def signed_raw(body_text, key, label=P.TO_SERVER):
    """Sign a hand-written JSON body (json.dumps would never write some of the hostile forms)."""
    body = body_text.encode()
    return P.MAGIC + b" " + P._mac(key, body, label).encode() + b" " + body


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
    nonfinite = [  # (sender, hand-written body)
        '{"from":"nan-ts","host":"nan-ts","kind":"report","nonce":"aa01","ts":NaN,"v":1}',
        '{"from":"inf-load","host":"inf-load","kind":"report","load":Infinity,"nonce":"aa02","ts":%f,"v":1}' % ts,
        '{"from":"big-load","host":"big-load","kind":"report","load":1e999,"nonce":"aa03","ts":%f,"v":1}' % ts,
        '{"from":"deep","host":"deep","kind":"report","detail":%s,"nonce":"aa04","ts":%f,"v":1}'
        % ("[" * 5000 + "]" * 5000, ts),
    ]
    for text in nonfinite:
        sender = text.split('"from":"', 1)[1].split('"', 1)[0]
        daemon.send(None, raw=signed_raw(text, key_of(sender).encode()))
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
    status = post(daemon.url + "/v1/wake", admin_request("/v1/wake", host="h1"))[0]
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
    captured = admin_request("/v1/wake", host="h1", method="wol")
    assert post(daemon.url + "/v1/wake", captured)[0] == 200
    assert post(daemon.url + "/v1/wake", captured)[0] == 401  # within the run: the in-memory guard
    daemon.stop()
    daemon.start()
    code, answer = post(daemon.url + "/v1/wake", captured)
    assert code == 401 and "restart" in answer["error"]
    fresh = admin_request("/v1/wake", host="h1", method="wol")
    assert post(daemon.url + "/v1/wake", fresh)[0] == 200


def test_nan_timestamps_are_refused_over_http_too(tmp_path, daemons):
    daemon = daemons(tmp_path, "[host.h1]\nmac = 52:54:00:00:00:01\n").start()
    body = signed_raw(
        '{"from":"admin","host":"h1","kind":"request","nonce":"ab12","ts":NaN,"v":1}',
        MASTER,
        P.http_label("POST", "/v1/wake"),
    )
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
    code, _answer = post(closed.url + "/v1/report", signed_report("stranger2", report("stranger2")))
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
        check=False,
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
    config.write_text("[powerwaked]\nsecret_file = %s\nlisten = 127.0.0.1\n" % secret)
    config.chmod(0o600)
    proc = subprocess.run(
        [sys.executable, "-m", "powernap.server.daemon", "--config", str(config), "--check-config"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
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
        check=False,
        env=dict(os.environ, PYTHONPATH=ENGINE),
        cwd=ENGINE,
    )
    assert proc.returncode == 0, proc.stderr


# -- identity, signatures, exposure, slow clients, threads (issue 13, second half) ---------------
class Powerwaked:
    """powerwaked in a subprocess on 127.0.0.1; ``user`` and ``nproc`` run it unprivileged with a task limit."""

    def __init__(self, extra="", user=None, nproc=None):
        self.dir = tempfile.mkdtemp(prefix="powerwaked-hostile-")
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.config = os.path.join(self.dir, "powerwaked.conf")
        with open(self.config, "w", encoding="utf-8") as handle:
            handle.write(
                "[powerwaked]\nsecret = %s\nlisten = 127.0.0.1\nport = %d\nstate_file = %s\n"
                "request_timeout = 3s\n%s\n[host.h9]\nbmc = 10.9.9.9\nbmc_password = %s\nsecureon = %s\n"
                % (SECRET, self.port, os.path.join(self.dir, "registry.json"), extra, BMC_PASSWORD, SECUREON)
            )
        os.chmod(self.config, 0o600)
        preexec = None
        if user is not None:
            os.chmod(self.dir, 0o755)
            for path in (self.dir, self.config):
                os.chown(path, user, user)

            def preexec():
                os.setgroups([])
                os.setgid(user)
                os.setuid(user)
                if nproc is not None:
                    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

        self.log = open(os.path.join(self.dir, "powerwaked.log"), "w+", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        # An unprivileged user cannot reach a virtualenv under /root: the system Python (the engine is stdlib only).
        python = sys.executable if user is None else "/usr/bin/python3"
        env = dict(os.environ, PYTHONPATH=ENGINE, PYTHONDONTWRITEBYTECODE="1")
        self.proc = subprocess.Popen(
            [python, "-m", "powernap.server.daemon", "--config", self.config, "--log-level", "debug"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=preexec,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("powerwaked did not start:\n" + self.logs()) from None
                time.sleep(0.05)

    def logs(self):
        self.log.flush()
        with open(self.log.name, encoding="utf-8", errors="replace") as handle:
            return handle.read()[-6000:]

    def get(self, path, signed=True):
        if signed:
            return powerwake.ServerClient(self.url, SECRET).get(path)
        with urllib.request.urlopen(self.url + path, timeout=5) as reply:
            return json.loads(reply.read())

    def post(self, path, message, signed_for=None):
        label = P.http_label("POST", signed_for or path)
        body = P.encode(MASTER, dict(message, kind="request", **{"from": "test"}), label)
        request = urllib.request.Request(self.url + path, data=body, method="POST")
        with urllib.request.urlopen(request, timeout=5) as reply:
            return json.loads(reply.read())

    def send(self, *datagrams):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for data in datagrams:
                sock.sendto(data, ("127.0.0.1", self.port))

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def server():
    handle = Powerwaked()
    yield handle
    handle.stop()


def host_or_none(server, name):
    try:
        return server.get("/v1/hosts/" + name)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


# -- 7: one key per host ----------------------------------------------------------------------
def test_a_member_cannot_report_for_another_host(server):
    # h1's own key, a report naming h2 (in 'host', or as the sender): both refused.
    server.send(
        P.encode(key_of("h1").encode(), {"kind": "report", "from": "h1", "host": "h2", "state": "suspending"}),
        P.encode(key_of("h1").encode(), {"kind": "report", "from": "h2", "host": "h2", "state": "suspending"}),
        signed_report("h1", state="awake"),
    )
    wait_until(lambda: host_or_none(server, "h1"), what="h1's own report")
    assert host_or_none(server, "h2") is None
    assert "host h1 sent a report for 'h2': refused" in server.logs()
    assert server.get("/v1/status")["rejected"] == 2


def test_nobody_claims_the_gateways_or_the_servers_addresses(server):
    ips, macs = NetView().refresh().protected()
    assert ips and macs, "this machine has no address or MAC of its own to protect"
    ip, mac = sorted(ips)[0], sorted(macs)[0]
    server.send(
        signed_report("h1", state="awake", ips=[ip, "198.18.0.11"], macs=[mac, "52:54:00:00:00:01"]),
        signed_report("h2", state="awake", ips=["198.18.0.11"], macs=["52:54:00:00:00:01"]),  # h1's, pinned
    )
    h1 = wait_until(lambda: host_or_none(server, "h1"), what="h1")
    h2 = wait_until(lambda: host_or_none(server, "h2"), what="h2")
    assert ip not in h1["ips"] and "198.18.0.11" in h1["ips"]
    assert h1["macs"] == ["52:54:00:00:00:01"]
    assert "198.18.0.11" not in h2["ips"] and h2["macs"] == []
    assert server.get("/v1/status")["refused_claims"] == 4


def test_the_engine_obeys_only_its_server(server, tmp_path, monkeypatch):
    executed = []
    monkeypatch.setattr(P.FleetReporter, "execute", lambda self, message: (executed.append(message), (True, "ok"))[1])
    reporter = P.FleetReporter(key_of("h1"), "h1", "udp://127.0.0.1:%d" % server.port, timeout=2.0, heartbeat=60)
    try:
        reporter.report({"event": "start"})
        record = wait_until(lambda: (host_or_none(server, "h1") or {}).get("addr"), what="h1's address")
        engine = (record[0], record[1])
        forged = {"kind": "command", "from": P.SERVER_NAME, "to": "h1", "command": "nap", "action": "poweroff"}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
            # The old shared secret, another host's key, and h1's own key from the wrong address.
            for key in (SECRET.encode(), key_of("h2").encode(), key_of("h1").encode()):
                attacker.sendto(P.encode(key, forged, P.TO_ENGINE), engine)
        time.sleep(0.5)
        assert executed == []
        assert server.post("/v1/nap", {"host": "h1", "action": "suspend"})["method"] == "engine"
        wait_until(lambda: executed, what="the server's own command")
        assert [m["action"] for m in executed] == ["suspend"]
    finally:
        reporter.close()


# -- 9: method, path and body are signed -------------------------------------------------------
def test_a_signed_wake_body_does_not_nap(server):
    server.send(signed_report("h1", state="awake"))
    wait_until(lambda: host_or_none(server, "h1"), what="h1")
    with pytest.raises(urllib.error.HTTPError) as info:
        server.post("/v1/nap", {"host": "h1", "method": "wol"}, signed_for="/v1/wake")
    assert info.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as info:  # a signed read is no write either
        server.post("/v1/wake", {"host": "h1"}, signed_for="/v1/hosts")
    assert info.value.code == 401
    assert server.get("/v1/hosts/h1")["state"] == "awake"
    assert server.get("/v1/history")["history"] == []


# -- 10, 17: closed by default, nothing given away ---------------------------------------------
def test_reads_need_a_signature_by_default_and_the_server_header_names_no_python(server):
    with pytest.raises(urllib.error.HTTPError) as info:
        server.get("/v1/hosts", signed=False)
    assert info.value.code == 401
    assert info.value.headers["Server"] == "powerwaked"
    hosts = json.dumps(server.get("/v1/hosts"))
    for secret in (SECRET, BMC_PASSWORD, SECUREON):
        assert secret not in hosts


def test_open_reads_show_no_addresses():
    server = Powerwaked("read_auth = no\n")
    try:
        server.send(signed_report("h1", state="awake", macs=["52:54:00:00:00:01"], ips=["198.18.0.11"]))
        wait_until(lambda: host_or_none(server, "h1"), what="h1")
        shown = server.get("/v1/hosts", signed=False)["hosts"]
        assert {h["name"] for h in shown} == {"h1", "h9"}
        for record in shown:
            assert not {"macs", "ips", "bmc", "addr", "wol"} & set(record), record
        assert server.get("/v1/hosts/h1", signed=False)["state"] == "awake"
        for path in ("/v1/hosts/52:54:00:00:00:01", "/v1/hosts/198.18.0.11"):
            with pytest.raises(urllib.error.HTTPError) as info:
                server.get(path, signed=False)
            assert info.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as info:
            server.get("/v1/history", signed=False)
        assert info.value.code == 401
        assert server.get("/v1/hosts/52:54:00:00:00:01")["macs"] == ["52:54:00:00:00:01"]  # signed: all of it
    finally:
        server.stop()


# -- 11: slow clients and thread exhaustion ----------------------------------------------------
def _get_from(source_ip, port, path="/v1/status"):
    """A signed GET from a given loopback source address: (latency in seconds, the JSON answer)."""
    signed = P.encode(
        SECRET.encode(), {"kind": "read", "from": "test", "path": path}, P.http_label("GET", path)
    ).decode()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source_ip, 0)) as sock:
        sock.sendall(("GET %s HTTP/1.0\r\nAuthorization: %s\r\n\r\n" % (path, signed)).encode())
        reply = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.0 200"), reply[:200]
    return time.monotonic() - started, json.loads(reply.split(b"\r\n\r\n", 1)[1])


def test_slow_clients_hold_few_connections_and_others_are_served():
    server = Powerwaked("max_clients = 16\n")
    attackers = []
    stop = threading.Event()
    try:
        # One slowloris source opens 300 connections and drips a header byte into each every second.
        for _index in range(300):
            try:
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=2)
                sock.sendall(b"GET /v1/status HTTP/1.1\r\n")
                attackers.append(sock)
            except OSError:
                pass

        def drip():
            while not stop.is_set():
                for sock in list(attackers):
                    try:
                        sock.send(b"X")
                    except OSError:
                        attackers.remove(sock)
                stop.wait(1.0)

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        time.sleep(1.5)
        # Another client, from another address, during the attack.
        latencies = sorted(_get_from("127.0.0.2", server.port)[0] for _index in range(20))
        held = _get_from("127.0.0.2", server.port)[1]["api"]["connections"] - 1  # less the status request
        time.sleep(4.0)  # past request_timeout (3 s): the dripping connections are cut off
        after = _get_from("127.0.0.2", server.port)[1]["api"]
        print(
            "\nslowloris: 300 connections opened, %d held by the server (cap per client 4, total 16); "
            "other client GET latency median %.1f ms, max %.1f ms; cut off after the deadline: %d; refused: %d"
            % (held, latencies[10] * 1000, latencies[-1] * 1000, after["cut_off"], after["refused"])
        )
        assert held <= 4
        assert latencies[-1] < 2.0
        assert after["cut_off"] >= 1 and after["connections"] <= 1
        assert server.alive()
    finally:
        stop.set()
        for sock in attackers:
            sock.close()
        server.stop()


def test_no_crash_when_a_thread_cannot_start():
    if os.geteuid() != 0:
        pytest.fail("needs root: the server runs as nobody with a task limit")
    nobody = 65534
    # Main thread + the API thread + one connection thread: the next connection cannot get a thread.
    server = Powerwaked("max_clients = 32\nmax_clients_per_ip = 32\n", user=nobody, nproc=3)
    idle = []
    try:
        for _index in range(10):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=2))
        wait_until(lambda: "cannot start a thread" in server.logs(), what="the refused thread to be logged")
        assert server.alive()
        for sock in idle:
            sock.close()
        idle = []
        time.sleep(3.5)  # request_timeout frees the one thread the idle connections held
        assert server.alive()
        assert wait_until(lambda: _try_status(server), seconds=8, what="the API to serve again")
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def _try_status(server):
    try:
        return server.get("/v1/status")
    except (OSError, ValueError):
        return None


# -- 10: TLS --------------------------------------------------------------------------------------
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def test_the_api_speaks_https_with_a_certificate():
    cert, key = os.path.join(DATA, "test-tls.crt"), os.path.join(DATA, "test-tls.key")
    server = Powerwaked("tls_cert = %s\ntls_key = %s\n" % (cert, key))
    try:
        https = "https://127.0.0.1:%d" % server.port
        client = powerwake.ServerClient(https, SECRET, cafile=cert)
        assert client.get("/v1/status")["hosts"] == 1
        # powerwake finds the local server's URL and certificate from powerwaked.conf.
        config = powerwake.read_server_config(server.config)
        url, secret = powerwake.server_from_configs("", "/nonexistent", config)
        assert url == https and secret == SECRET
        assert powerwake.server_client(url, secret, config).get("/v1/hosts/h9")["name"] == "h9"
        with pytest.raises((urllib.error.URLError, OSError, ValueError)):
            server.get("/v1/status")  # plain HTTP is not spoken
        assert server.alive()
    finally:
        server.stop()


# -- 18: Type=notify with a watchdog ----------------------------------------------------------------
def test_the_daemon_tells_systemd_it_is_ready_and_pings_the_watchdog(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(path)
        notify.settimeout(0.5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # pings every 0.5 s
        server = Powerwaked()
        try:
            seen = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not (
                any("READY=1" in m for m in seen) and sum("WATCHDOG=1" in m for m in seen) >= 2
            ):
                try:
                    seen.append(notify.recv(4096).decode())
                except socket.timeout:
                    pass
            assert any("READY=1" in m for m in seen), seen
            assert sum("WATCHDOG=1" in m for m in seen) >= 2, seen
        finally:
            server.stop()
