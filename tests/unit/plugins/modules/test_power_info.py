# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import yaml

from ansible_collections.powernap.fleet.plugins.module_utils import fleet_server
from ansible_collections.powernap.fleet.plugins.modules import power_info
from ansible_collections.powernap.fleet.tests.unit.plugins.modules.utils import patch_module_args

RECORD = {
    "name": "web1",
    "state": "asleep",
    "stage": 2,
    "since": 1790000000.5,
    "last_seen": 1790000001.25,
    "last_ts": 1790000001.0,
    "last_event": "action-start",
    "macs": ["52:54:00:12:34:61"],
    "ips": ["192.0.2.31"],
    "wol": {"eth0": "g"},
    "wake": ["wol", "ipmi"],
    "bmc": None,
    "groups": ["webservers"],
    "next_wake": None,
    "idle_seconds": 3600.0,
    "load": 0.1,
    "cpus": 4,
    "interval": 30.0,
    "addr": ["192.0.2.31", 40000],
    "engine": True,
    "hold": None,
    "wakes": 3,
    "last_wake": None,
    "static": False,
    "energy": {
        "seconds": {"on": 60.0, "idle": 0.0, "powersave": 0.0, "suspended": 3600.0, "off": 0.0},
        "saved_joules": 698400.0,
        "saved_kwh": 0.194,
        "saved_cost": 0.0291,
        "currency": "USD",
        "power_state": "suspended",
        "watts": 6.0,
    },
    "power_since": 1790000000.5,
    "wake_health": {
        "result": "failed",
        "marked": True,
        "method": "escalated",
        "cause": "cluster web: 1 awake, 2 needed",
        "started": 1789999900.0,
        "ended": 1790000000.0,
        "seconds": 100.0,
        "error": "not confirmed within 45s",
        "test": False,
        "in_flight": False,
        "failures": 2,
        "retries": 1,
        "retry_at": 1790000120.0,
        "last_success": 1789000000.0,
        "cleared": "admin (192.0.2.1) at 1789500000",
    },
}


class FakeApi(BaseHTTPRequestHandler):
    """powerwaked's GET /v1/hosts/NAME: web1 is known (by name or IP), everything else is a 404."""

    def do_GET(self):
        self.server.paths.append(self.path)
        if self.path in ("/v1/hosts/web1", "/v1/hosts/192.0.2.31"):
            status, answer = 200, RECORD
        else:
            status, answer = 404, {"error": "no such host %r" % self.path.rsplit("/", 1)[-1]}
        data = json.dumps(answer).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        """Quiet."""


@pytest.fixture
def api():
    httpd = HTTPServer(("127.0.0.1", 0), FakeApi)
    httpd.paths = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture(autouse=True)
def no_host_probing(monkeypatch):
    """The host's own facts are not what these tests are about: no engine, fixed direct facts."""
    monkeypatch.setattr(power_info, "find_engine", lambda module: None)
    monkeypatch.setattr(
        power_info,
        "direct_facts",
        lambda module: {
            "platform": "physical",
            "virt": "none",
            "power_source": "ac",
            "sleep_states": ["mem"],
            "can_hibernate": False,
            "nics": [],
        },
    )


def run_module(capsys, args):
    with patch_module_args(args), pytest.raises(SystemExit) as info:
        power_info.main()
    return info.value.code, json.loads(capsys.readouterr().out)


def base_url(api):
    return "http://127.0.0.1:%d" % api.server_address[1]


def test_server_view_of_the_host(capsys, api):
    code, result = run_module(capsys, {"server_url": base_url(api) + "/", "server_host": "web1"})
    assert code == 0 and result["changed"] is False
    server = result["server"]
    assert server["url"] == base_url(api) and server["host"] == "web1"
    assert server["reachable"] is True and server["found"] is True
    assert server["state"] == "asleep" and server["last_seen"] == 1790000001.25 and server["stage"] == 2
    assert server["groups"] == ["webservers"] and server["engine"] is True and server["wakes"] == 3
    assert set(server) == set(fleet_server.SERVER_KEYS) | {"url", "host", "reachable", "found"}
    assert server["energy"]["saved_kwh"] == 0.194 and server["energy"]["currency"] == "USD"
    assert api.paths == ["/v1/hosts/web1"]


def test_server_wake_health_is_returned_as_documented(capsys, api):
    code, result = run_module(capsys, {"server_url": base_url(api), "server_host": "web1"})
    assert code == 0
    health = result["server"]["wake_health"]
    assert health == RECORD["wake_health"]
    documented = yaml.safe_load(power_info.RETURN)["server"]["contains"]["wake_health"]["contains"]
    assert set(health) == set(documented)  # every field the server keeps is documented, and no more
    assert {key for key, spec in documented.items() if spec["returned"] == "always"} == {"result", "marked"}


def test_host_defaults_to_the_system_host_name(capsys, api, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "web1")
    code, result = run_module(capsys, {"server_url": base_url(api)})
    assert code == 0 and result["server"]["host"] == "web1" and result["server"]["found"] is True


def test_unknown_host_is_reachable_but_not_found(capsys, api):
    code, result = run_module(capsys, {"server_url": base_url(api), "server_host": "ghost/1"})
    assert code == 0
    server = result["server"]
    assert server["reachable"] is True and server["found"] is False
    assert "HTTP 404" in server["error"] and "no such host" in server["error"]
    assert "state" not in server
    assert api.paths == ["/v1/hosts/ghost%2F1"]


def test_unreachable_server(capsys):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    code, result = run_module(capsys, {"server_url": "http://127.0.0.1:%d" % port, "server_host": "web1"})
    assert code == 0
    server = result["server"]
    assert server["reachable"] is False and server["found"] is False
    assert "cannot reach the fleet server" in server["error"]


def test_no_server_url_no_server_key(capsys):
    code, result = run_module(capsys, {})
    assert code == 0 and "server" not in result and result["engine"] == {"present": False}


def test_bad_server_url_fails(capsys):
    code, result = run_module(capsys, {"server_url": "ftp://nas1"})
    assert code == 1 and result["failed"] is True and "server_url must be" in result["msg"]


@pytest.mark.parametrize(
    "url, base",
    [
        ("udp://nas1.example.net", "http://nas1.example.net:7490"),
        ("udp://nas1.example.net:7500", "http://nas1.example.net:7500"),
        ("http://nas1:7490/", "http://nas1:7490"),
        ("https://fleet.example.net/powerwaked/", "https://fleet.example.net/powerwaked"),
    ],
)
def test_server_base_url(url, base):
    assert fleet_server.server_base_url(url) == base
