"""command, ping, http and nut monitors: background probes, real loopback servers, fake clock."""

import http.server
import json
import socket
import threading

import pytest
from monitor_fakes import make, probe, wait_probe, write

from powernap.clock import FakeClock
from powernap.errors import MonitorError


def test_command_exit_status_decides(tmp_path):
    assert probe(make("command", command="echo busy: 3 jobs; exit 0")) == "command succeeded: busy: 3 jobs"
    assert probe(make("command", command="exit 1")) is None
    with pytest.raises(MonitorError, match="could not run"):
        probe(make("command", command="/nonexistent/program"))


def test_command_runs_in_background_once_per_every(tmp_path):
    clock = FakeClock()
    counter = tmp_path / "runs"
    monitor = make("command", clock=clock, every="60s", command="echo x >> %s; exit 0" % counter)
    assert monitor.check() is None  # started, not waited for
    wait_probe(monitor)
    assert monitor.check() == "command succeeded"
    clock.advance(30)
    assert monitor.check() == "command succeeded"  # last result stands, no new run
    assert monitor.job is None
    clock.advance(31)
    monitor.check()
    wait_probe(monitor)
    assert counter.read_text().count("x") == 2


def test_command_timeout_kills_and_is_an_error():
    clock = FakeClock()
    monitor = make("command", clock=clock, command="sleep 30", timeout="5s")
    monitor.check()
    proc = monitor.job.proc
    clock.advance(6)
    with pytest.raises(MonitorError, match="timed out after 5s"):
        monitor.check()
    assert proc.poll() is not None, "timed-out command was not killed"


def test_ping_loopback_answers():
    assert probe(make("ping", hosts="127.0.0.1", timeout="2s")) == "127.0.0.1 answers ping"


def test_ping_no_reply_is_idle_and_failure_is_an_error(tmp_path):
    silent = write(tmp_path, "/bin/ping-silent", "#!/bin/sh\nexit 1\n", mode=0o755)
    broken = write(tmp_path, "/bin/ping-broken", "#!/bin/sh\necho 'unknown host' >&2; exit 2\n", mode=0o755)
    assert probe(make("ping", hosts="192.0.2.1, 192.0.2.2", ping=silent)) is None
    with pytest.raises(MonitorError, match="unknown host"):
        probe(make("ping", hosts="nosuchhost.invalid", ping=broken))


class StatusServer:
    """A tiny HTTP server on 127.0.0.1 serving whatever ``page`` holds."""

    def __init__(self):
        self.page = ""
        self.status = 200
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = owner.page.encode()
                self.send_response(owner.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/status" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def status_server():
    server = StatusServer()
    yield server
    server.close()


NGINX = (
    "Active connections: {active} \nserver accepts handled requests\n 16 16 {requests} \n"
    "Reading: 0 Writing: 1 Waiting: 0 \n"
)
APACHE = (
    "localhost\nServerVersion: Apache/2.4\nTotal Accesses: {total}\nTotal kBytes: 10\n"
    "BusyWorkers: {busy}\nIdleWorkers: 49\nScoreboard: _W___\n"
)


def test_http_nginx_connections_and_requests_per_second(status_server):
    clock = FakeClock()
    monitor = make("http", clock=clock, url=status_server.url, every="10s")
    status_server.page = NGINX.format(active=1, requests=100)  # only our own status request
    assert probe(monitor) is None
    clock.advance(10)
    status_server.page = NGINX.format(active=1, requests=151)  # 50 other requests in 10 s
    assert probe(monitor) == "nginx status: 5.00 requests/s"
    clock.advance(10)
    status_server.page = NGINX.format(active=1, requests=152)  # just us again
    assert probe(monitor) is None
    clock.advance(10)
    status_server.page = NGINX.format(active=4, requests=153)
    assert probe(monitor) == "nginx status: 4 active connections"


def test_http_apache_and_json(status_server):
    status_server.page = APACHE.format(total=10, busy=1)
    assert probe(make("http", url=status_server.url, requests_per_second_above="1000")) is None
    status_server.page = APACHE.format(total=10, busy=3)
    assert probe(make("http", url=status_server.url)) == "apache status: 3 active connections"
    status_server.page = json.dumps({"pool": {"workers": [{"active": 0}, {"active": 7}]}})
    monitor = make("http", url=status_server.url, json_path="pool.workers.1.active", connections_above="5")
    assert probe(monitor) == "json status: 7 active connections"
    with pytest.raises(MonitorError, match="not found"):
        probe(make("http", url=status_server.url, json_path="pool.missing"))


def test_http_errors(status_server):
    status_server.page = "<html>hello</html>"
    with pytest.raises(MonitorError, match="not in a known format"):
        probe(make("http", url=status_server.url))
    status_server.status = 404
    with pytest.raises(MonitorError, match="HTTP 404"):
        probe(make("http", url=status_server.url))
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(MonitorError, match="cannot fetch"):
        probe(make("http", url="http://127.0.0.1:%d/" % port, timeout="2s"))


class FakeUpsd:
    """Answers the NUT protocol lines the monitor sends, from a dict of replies (one client at a time)."""

    def __init__(self, status_reply, password=None):
        self.status_reply = status_reply
        self.password = password
        self.seen = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(5)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        try:
            conn, _unused = self.sock.accept()
        except OSError:
            return
        with conn, conn.makefile("rwb") as stream:
            for _unused in range(10):
                line = stream.readline().decode().strip()
                if not line:
                    return
                self.seen.append(line)
                if line.startswith("USERNAME"):
                    reply = "OK"
                elif line.startswith("PASSWORD"):
                    reply = "OK" if line.split(" ", 1)[1] == self.password else "ERR ACCESS-DENIED"
                elif line.startswith("GET VAR"):
                    reply = self.status_reply
                elif line == "LOGOUT":
                    reply = "OK Goodbye"
                else:
                    reply = "ERR UNKNOWN-COMMAND"
                stream.write(reply.encode() + b"\n")
                stream.flush()
                if line == "LOGOUT":
                    return

    def close(self):
        self.sock.close()
        self.thread.join(5)


def nut(server, **options):
    return make("nut", ups="rack1", port=str(server.port), timeout="3s", **options)


@pytest.mark.parametrize(
    "reply, expected",
    [
        ('VAR rack1 ups.status "OL CHRG"', None),
        ('VAR rack1 ups.status "OB DISCHRG"', "UPS rack1 status OB DISCHRG"),
        ('VAR rack1 ups.status "OB LB"', "UPS rack1 status OB LB"),
    ],
)
def test_nut_status_tokens(reply, expected):
    server = FakeUpsd(reply)
    try:
        assert probe(nut(server)) == expected
    finally:
        server.close()
    assert server.seen == ["GET VAR rack1 ups.status", "LOGOUT"]


def test_nut_custom_states_and_login():
    server = FakeUpsd('VAR rack1 ups.status "OL CHRG"', password="s3cret")
    try:
        assert probe(nut(server, states="CHRG", username="monuser", password="s3cret")) == "UPS rack1 status OL CHRG"
        assert server.seen[:2] == ["USERNAME monuser", "PASSWORD s3cret"]
    finally:
        server.close()
    server = FakeUpsd('VAR rack1 ups.status "OL"', password="right")
    try:
        with pytest.raises(MonitorError, match="refused PASSWORD"):
            probe(nut(server, username="monuser", password="wrong"))
    finally:
        server.close()


@pytest.mark.parametrize(
    "reply, message",
    [
        ("ERR DATA-STALE", "state unknown"),
        ("ERR DRIVER-NOT-CONNECTED", "state unknown"),
        ("ERR UNKNOWN-UPS", "UNKNOWN-UPS"),
        ("garbage", "unexpected upsd reply"),
    ],
)
def test_nut_unknown_state_is_an_error(reply, message):
    server = FakeUpsd(reply)
    try:
        with pytest.raises(MonitorError, match=message):
            probe(nut(server))
    finally:
        server.close()


def test_nut_unreachable_is_an_error():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(MonitorError, match="cannot reach upsd"):
        probe(make("nut", ups="rack1", port=str(port), timeout="2s"))
