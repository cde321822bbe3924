"""Issue 13's findings (identity, signatures, exposure, slow clients, threads) replayed against a RUNNING powerwaked.

Each test starts ``python3 -m powernap.server.daemon`` as a subprocess on 127.0.0.1 with its own config,
talks to it only over loopback, and stops it by its pid.  Every wait is bounded.  The slowloris test
prints its figures (run with ``-s`` to see them).
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
from test_server_api import free_port

from powernap import powerwake
from powernap.server import protocol as P
from powernap.server.netinfo import NetView

ENGINE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BMC_PASSWORD = "bmc-password-never-shown"
SECUREON = "11:22:33:44:55:66"


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
        body = P.encode(SECRET.encode(), dict(message, kind="request", **{"from": "test"}), label)
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


def wait_for(predicate, seconds=5.0, what="condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s" % what)


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
    wait_for(lambda: host_or_none(server, "h1"), what="h1's own report")
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
    h1 = wait_for(lambda: host_or_none(server, "h1"), what="h1")
    h2 = wait_for(lambda: host_or_none(server, "h2"), what="h2")
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
        record = wait_for(lambda: (host_or_none(server, "h1") or {}).get("addr"), what="h1's address")
        engine = (record[0], record[1])
        forged = {"kind": "command", "from": P.SERVER_NAME, "to": "h1", "command": "nap", "action": "poweroff"}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
            # The old shared secret, another host's key, and h1's own key from the wrong address.
            for key in (SECRET.encode(), key_of("h2").encode(), key_of("h1").encode()):
                attacker.sendto(P.encode(key, forged, P.TO_ENGINE), engine)
        time.sleep(0.5)
        assert executed == []
        assert server.post("/v1/nap", {"host": "h1", "action": "suspend"})["method"] == "engine"
        wait_for(lambda: executed, what="the server's own command")
        assert [m["action"] for m in executed] == ["suspend"]
    finally:
        reporter.close()


# -- 9: method, path and body are signed -------------------------------------------------------
def test_a_signed_wake_body_does_not_nap(server):
    server.send(signed_report("h1", state="awake"))
    wait_for(lambda: host_or_none(server, "h1"), what="h1")
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
        wait_for(lambda: host_or_none(server, "h1"), what="h1")
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
        wait_for(lambda: "cannot start a thread" in server.logs(), what="the refused thread to be logged")
        assert server.alive()
        for sock in idle:
            sock.close()
        idle = []
        time.sleep(3.5)  # request_timeout frees the one thread the idle connections held
        assert server.alive()
        assert wait_for(lambda: _try_status(server), seconds=8, what="the API to serve again")
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
