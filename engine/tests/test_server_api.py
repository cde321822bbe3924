"""powerwaked end to end on 127.0.0.1: engine reporter -> UDP -> registry -> HTTP API -> powerwake CLI,
server commands back to the engine's control socket, and a restart that keeps every host."""

import io
import json
import logging
import select
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from server_fakes import SECRET, key_of, server_config, signed_report

from powernap import powerwake
from powernap.control import ControlServer
from powernap.server import protocol as P
from powernap.server.daemon import Server
from powernap.server.store import open_store
from powernap.sysroot import SysRoot

LOG = logging.getLogger("test.powerwaked")


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


def wait_until(predicate, seconds=5.0, what="condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out waiting for %s" % what)


class Running:
    """A Server on its own thread (signals are not installed off the main thread)."""

    def __init__(self, config):
        self.server = Server(config, log=LOG)
        self.server.start()
        self.thread = threading.Thread(target=self.server.run, kwargs={"max_seconds": 60}, daemon=True)
        self.thread.start()
        self.url = "http://127.0.0.1:%d" % config.server["port"]

    def stop(self):
        self.server.stop()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()


class FakeEngine:
    """A control socket answering like powernapd (status, now) from a thread."""

    def __init__(self, path):
        self.requests = []
        self.state = "awake"
        self.control = ControlServer(str(path), self.handle, LOG)
        self.control.open()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def handle(self, request):
        self.requests.append(request)
        if request["cmd"] == "now":
            self.state = "napping"
        return {"state": self.state, "stage": None, "idle_seconds": 42.0, "next_wake": None}

    def loop(self):
        while not self.stopping.is_set():
            ready, _w, _x = select.select(self.control.fds(), [], [], 0.05)
            for fd in ready:
                self.control.on_readable(fd)

    def close(self):
        self.stopping.set()
        self.thread.join(timeout=2)
        self.control.close()


def fake_root(tmp_path):
    root = tmp_path / "root"
    (root / "proc/net").mkdir(parents=True)
    (root / "proc/loadavg").write_text("0.50 0.40 0.30 1/100 999\n")
    (root / "proc/net/fib_trie").write_text("Local:\n     |-- 127.0.0.1\n        /32 host LOCAL\n")
    (root / "proc/net/if_inet6").write_text("")
    nic = root / "sys/class/net/eth0"
    nic.mkdir(parents=True)
    (nic / "address").write_text("52:54:00:aa:bb:01\n")
    (root / "run/powernap-fake/ethtool").mkdir(parents=True)
    (root / "run/powernap-fake/ethtool/eth0").write_text("Supports Wake-on: pumbg\nWake-on: g\n")
    return SysRoot(str(root))


@pytest.fixture
def running(tmp_path):
    port = free_port()
    config = server_config(tmp_path, "port = %d\n\n[group.web]\nhosts = h1, h2\n" % port)
    handle = Running(config)
    yield handle, config, port
    handle.stop()


def get(url, signed=True):
    """GET a full API URL, signed with the master secret (reads need it by default)."""
    if signed:
        parts = urllib.parse.urlsplit(url)
        return powerwake.ServerClient("%s://%s" % (parts.scheme, parts.netloc), SECRET).get(parts.path)
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


def test_reporter_to_registry_to_api_and_cli(running, tmp_path, monkeypatch):
    handle, _config, port = running
    monkeypatch.setenv("POWERWAKE_SECRET", SECRET)  # the admin's master secret: reads are signed
    engine = FakeEngine(tmp_path / "control.sock")
    reporter = P.FleetReporter(
        key_of("h1"),
        "h1",
        "udp://127.0.0.1:%d" % port,
        timeout=2.0,
        control_path=str(tmp_path / "control.sock"),
        root=fake_root(tmp_path),
        heartbeat=60,
    )
    try:
        reporter.report({"event": "start", "time": 1.0})
        wait_until(lambda: (_host(handle.url, "h1") or {}).get("macs"), what="h1 reported")
        host = _host(handle.url, "h1")
        assert host["macs"] == ["52:54:00:aa:bb:01"] and host["wol"] == {"52:54:00:aa:bb:01": "g"}
        assert host["load"] == 0.5 and host["groups"] == ["web"] and host["idle_seconds"] == 42.0
        assert "127.0.0.1" in host["ips"]
        reporter.report({"event": "warn", "stage": 2, "action": "suspend", "in_seconds": 60})
        wait_until(lambda: _host(handle.url, "h1")["state"] == "grace", what="grace")
        reporter.report({"event": "action-start", "stage": 2, "action": "suspend"})
        wait_until(lambda: _host(handle.url, "h1")["state"] == "suspending", what="suspending")
        assert wait_until(lambda: reporter.acked >= 3, what="acks")

        out = io.StringIO()
        assert powerwake.main(["list", "--server", handle.url, "--config", "/nonexistent"], out=out) == 0
        lines = out.getvalue().splitlines()
        assert lines[0].split()[:2] == ["HOST", "STATE"]
        assert any(line.split()[:2] == ["h1", "suspending"] for line in lines)
        assert any(line.split()[:2] == ["h2", "unknown"] for line in lines)
        out = io.StringIO()
        assert powerwake.main(["status", "h1", "--server", handle.url, "--config", "/nonexistent"], out=out) == 0
        assert "state:     suspending (stage 2)" in out.getvalue()
        out = io.StringIO()
        assert powerwake.main(["status", "h1", "--json", "--server", handle.url, "--config", "/x"], out=out) == 0
        assert json.loads(out.getvalue())["state"] == "suspending"
        assert powerwake.main(["status", "nosuch", "--server", handle.url, "--config", "/x"], out=out) == 1
        groups = get(handle.url + "/v1/groups/web")
        assert groups["members"] == ["h1", "h2"] and groups["asleep"] == 1
    finally:
        reporter.close()
        engine.close()


def test_server_command_reaches_the_engine_control_socket(running, tmp_path):
    handle, _config, port = running
    engine = FakeEngine(tmp_path / "control.sock")
    reporter = P.FleetReporter(
        key_of("h1"),
        "h1",
        "udp://127.0.0.1:%d" % port,
        timeout=2.0,
        control_path=str(tmp_path / "control.sock"),
        root=fake_root(tmp_path),
        heartbeat=60,
    )
    try:
        reporter.report({"event": "start"})
        wait_until(lambda: (_host(handle.url, "h1") or {}).get("addr"), what="h1 reported")
        answer = _post(handle.url + "/v1/nap", {"host": "h1", "action": "suspend"})
        assert answer["method"] == "engine"
        wait_until(lambda: any(r["cmd"] == "now" for r in engine.requests), what="engine told to nap")
        assert [r for r in engine.requests if r["cmd"] == "now"][0]["action"] == "suspend"
        wait_until(lambda: not handle.server.fleet.commands, what="command acknowledged")
        assert reporter.commands == 1
    finally:
        reporter.close()
        engine.close()


def test_unauthenticated_and_replayed_requests_change_nothing(running):
    handle, _config, port = running
    forged = P.encode(
        b"not the fleet secret at all", {"kind": "report", "from": "evil", "host": "evil", "state": "awake"}
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(forged, ("127.0.0.1", port))
        good = signed_report("h9", state="awake")
        sock.sendto(good, ("127.0.0.1", port))
        sock.sendto(good, ("127.0.0.1", port))  # the replay
        wait_until(lambda: handle.server.reports == 1 and handle.server.rejected == 2, what="one accepted")
    assert _host(handle.url, "evil") is None
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(handle.url + "/v1/wake", data=forged, method="POST"), timeout=5)
    assert info.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as info:
        get(handle.url + "/v1/nothing")
    assert info.value.code == 404


def test_read_auth_requires_a_signed_read(tmp_path):
    port = free_port()
    config = server_config(tmp_path, "port = %d\n" % port)  # read_auth is on by default
    handle = Running(config)
    try:
        with pytest.raises(urllib.error.HTTPError) as info:
            get(handle.url + "/v1/hosts", signed=False)
        assert info.value.code == 401
        assert powerwake.ServerClient(handle.url, SECRET).get("/v1/hosts") == {"hosts": []}
    finally:
        handle.stop()


def test_restart_keeps_every_host(tmp_path):
    port = free_port()
    config = server_config(tmp_path, "port = %d\n" % port)
    handle = Running(config)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for index in range(20):
            state = "suspending" if index % 2 else "awake"
            sock.sendto(
                signed_report("h%d" % index, state=state, macs=["52:54:00:00:00:%02x" % index]),
                ("127.0.0.1", port),
            )
    wait_until(lambda: len(handle.server.registry) == 20, what="20 hosts")
    handle.stop()
    again = Running(config)
    try:
        hosts = {h["name"]: h for h in get(again.url + "/v1/hosts")["hosts"]}
        assert len(hosts) == 20
        assert hosts["h3"]["state"] == "suspending" and hosts["h4"]["state"] == "awake"
        assert hosts["h7"]["macs"] == ["52:54:00:00:00:07"]
    finally:
        again.stop()


def _host(url, name):
    try:
        return get(url + "/v1/hosts/" + name)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def _post(url, message):
    label = P.http_label("POST", urllib.parse.urlsplit(url).path)
    body = P.encode(SECRET.encode(), dict(message, kind="request", **{"from": "test"}), label)
    request = urllib.request.Request(url, data=body, method="POST")
    with urllib.request.urlopen(request, timeout=5) as reply:
        return json.loads(reply.read())


def test_a_failing_policy_step_or_handler_is_isolated_and_counted(tmp_path, monkeypatch, caplog):
    # Issue 13 item 1: no single input or policy tick may stop the daemon.
    from powernap.server.cluster import ClusterPolicy

    def broken_tick(self, now):
        raise ValueError("could not convert string to float: 'x'")

    monkeypatch.setattr(ClusterPolicy, "tick", broken_tick)
    port = free_port()
    config = server_config(
        tmp_path, "listen = 127.0.0.1\nport = %d\n[group.web]\nhosts = h1\n[cluster.web]\ngroup = web\n" % port
    )
    handle = Running(config)
    try:
        wait_until(lambda: handle.server.errors >= 3, what="failing ticks")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(
                signed_report("h1", state="awake"),
                ("127.0.0.1", port),
            )
        wait_until(lambda: handle.server.registry.get("h1").engine, what="the report despite the failing policy")
        status = get(handle.url + "/v1/status")
        assert status["errors"] >= 3 and handle.thread.is_alive()
        tracebacks = [r for r in caplog.records if r.exc_info and "cluster web failed" in r.getMessage()]
        assert len(tracebacks) == 1  # once a minute, not once a tick
    finally:
        handle.stop()


def test_a_full_disk_keeps_the_server_running_and_shows_in_status(tmp_path):
    # Issue 13 item 2, on the SQLite store (issue 18): a full disk must not kill the daemon; reports are
    # not acknowledged while the store refuses them, the trouble shows in /v1/status, and it recovers.
    # The full disk is SQLite's own SQLITE_FULL (the file may not grow), not a mock.
    port = free_port()
    config = server_config(tmp_path, "listen = 127.0.0.1\nport = %d\n" % port)
    handle = Running(config)
    store = handle.server.registry.store
    try:
        with handle.server.lock:
            pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
            store.conn.execute("PRAGMA max_page_count = %d" % pages)

        def acked(host, timeout):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(timeout)
                sock.sendto(signed_report(host, state="awake", load=0.25, ips=["198.18.9.%s" % host[1:]]),
                            ("127.0.0.1", port))  # fmt: skip
                try:
                    return P.decode(key_of(host).encode(), sock.recvfrom(P.MAX_MESSAGE)[0], P.TO_ENGINE)
                except socket.timeout:
                    return None

        acks = [acked("h%d" % index, 0.3) for index in range(30)]  # the last free bytes of a page go first
        assert None in acks and set(acks[acks.index(None) :]) == {None}  # then nothing is journaled: no ack

        def status_with_the_refused_journal():
            status = get(handle.url + "/v1/status")
            return status if "journal" in status["registry"]["problems"] else None

        status = wait_until(status_with_the_refused_journal, what="the refused journal in /v1/status")
        assert "full" in status["registry"]["problems"]["journal"] and not status["registry"]["ok"]
        assert status["registry"]["store"] == "sqlite"
        assert handle.thread.is_alive()
        with handle.server.lock:
            store.conn.execute("PRAGMA max_page_count = %d" % (pages * 1000))  # space is back
        ack = acked("h1", 3.0)
        assert ack is not None and ack["kind"] == "ack"
        wait_until(lambda: get(handle.url + "/v1/status")["registry"]["ok"], seconds=10, what="the retried save")
    finally:
        handle.stop()
    hosts = {record["name"] for record in open_store(config.store).read([])[0]["hosts"]}
    assert {"h1", "h29"} <= hosts  # the snapshot took in what was accepted while the journal refused
