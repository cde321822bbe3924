"""Issue 13 (identity, exposure, proxy, mDNS): each host is trusted only for itself, signatures are bound to
their direction and HTTP path, claims are checked, the proxy resists chatty sources, mDNS stays on the link."""

import collections
import hashlib
import hmac
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
from server_fakes import SECRET, Sent, arp_request, engine_decode, key_of, server_config, signed_report

from powernap.clock import FakeClock
from powernap.config import load_config as load_engine_config
from powernap.fleet_keys import host_key
from powernap.server import mdns
from powernap.server import protocol as P
from powernap.server.config import load_config
from powernap.server.fleet import Fleet
from powernap.server.netinfo import NetView, default_gateways, neighbour_macs, on_link_networks
from powernap.server.proxy import SleepProxy, solicited_node_mac
from powernap.server.registry import Registry
from powernap.server.trust import ClaimFilter

NOW = 1_700_000_000.0


# -- keys and signatures ------------------------------------------------------------------------
def test_host_key_is_hmac_of_the_host_label_under_the_master():
    expected = hmac.new(SECRET.encode(), b"host:web1", hashlib.sha256).hexdigest()
    assert host_key(SECRET, "web1") == expected and host_key(SECRET, "web2") != expected


def test_server_verifies_each_report_with_its_senders_own_key():
    keys = P.ServerKeys(SECRET.encode())
    endpoint = P.Endpoint(keys.for_message, clock=time.time)
    assert endpoint.accept(signed_report("h1", state="awake"))["from"] == "h1"
    # h1's key does not sign for h2, and the master is not a host key.
    forged = P.encode(key_of("h1").encode(), {"kind": "report", "from": "h2", "host": "h2"})
    with pytest.raises(P.ProtocolError, match="bad signature"):
        endpoint.accept(forged)
    with pytest.raises(P.ProtocolError, match="bad signature"):
        endpoint.accept(P.encode(SECRET.encode(), {"kind": "report", "from": "h1", "host": "h1"}))
    # A host key cannot sign an admin request either.
    request = P.encode(key_of("h1").encode(), {"kind": "request", "from": "h1"}, P.http_label("POST", "/v1/nap"))
    with pytest.raises(P.ProtocolError, match="bad signature"):
        endpoint.accept(request, P.http_label("POST", "/v1/nap"))


def test_a_signature_is_good_only_for_its_direction_and_path():
    wake = P.encode(SECRET.encode(), {"kind": "request", "from": "admin"}, P.http_label("POST", "/v1/wake"))
    assert P.decode(SECRET.encode(), wake, P.http_label("POST", "/v1/wake"))["kind"] == "request"
    with pytest.raises(P.ProtocolError, match="bad signature"):
        P.decode(SECRET.encode(), wake, P.http_label("POST", "/v1/nap"))
    report = signed_report("h1")
    with pytest.raises(P.ProtocolError, match="bad signature"):
        P.decode(key_of("h1").encode(), report, P.TO_ENGINE)  # a report reflected back is not a command


def test_deeply_nested_json_is_refused_not_a_crash():
    data = b"PWK1 " + b"0" * 64 + b" " + b"[" * 10000 + b"]" * 10000
    with pytest.raises(P.ProtocolError):
        P.decode(SECRET.encode(), data[: P.MAX_MESSAGE])


def test_commands_are_signed_with_the_target_hosts_key_and_only_it_may_ack(tmp_path):
    config = server_config(tmp_path, "")
    registry = Registry(str(tmp_path / "r.json"))
    clock = FakeClock(NOW)
    sent = Sent()
    fleet = Fleet(registry, config, clock, sent.send_wol, sent.send_datagram, background=False)
    record = registry.accept_report(
        {"kind": "report", "from": "h1", "host": "h1", "ts": NOW, "state": "awake"}, ("198.18.0.11", 4000), NOW
    )
    fleet.nap(record, "suspend", "test")
    data, _address = sent.datagrams[-1]
    command = engine_decode(data)
    assert command["to"] == "h1"
    with pytest.raises(P.ProtocolError):
        P.decode(key_of("h2").encode(), data, P.TO_ENGINE)
    fleet.on_command_ack({"re": command["nonce"], "from": "h2", "ok": False, "detail": "forged"})
    assert command["nonce"] in fleet.commands


# -- claims ---------------------------------------------------------------------------------------
class _Rec:
    def __init__(self, name):
        self.name = name


def _claims(owners=None, static=None):
    owners = owners or {}
    registry = collections.namedtuple("Reg", "by_mac by_ip")(
        lambda mac: _Rec(owners[mac]) if mac in owners else None,
        lambda ip: _Rec(owners[ip]) if ip in owners else None,
    )
    claims = ClaimFilter(registry, static or {}, logging.getLogger("test.trust"))
    claims.protect(["198.18.0.1", "198.18.0.254"], ["02:00:00:00:00:fe"])
    return claims


def test_nobody_may_claim_the_gateway_or_the_server_or_another_hosts_address():
    claims = _claims(owners={"198.18.0.12": "h2", "52:54:00:00:00:02": "h2"})
    kept = claims.filter(
        "h1",
        {
            "macs": ["52:54:00:00:00:01", "02:00:00:00:00:FE", "52:54:00:00:00:02"],
            "wol": {"52:54:00:00:00:01": "g", "02:00:00:00:00:fe": "g"},
            "ips": ["198.18.0.11", "198.18.0.254", "198.18.0.1", "198.18.0.12"],
        },
    )
    assert kept["macs"] == ["52:54:00:00:00:01"] and kept["wol"] == {"52:54:00:00:00:01": "g"}
    assert kept["ips"] == ["198.18.0.11"]
    assert claims.refused == 5
    assert not claims.sender_ok("h1", "198.18.0.254") and claims.sender_ok("h1", "198.18.0.11")


def test_a_configured_host_may_claim_only_its_configured_addresses():
    claims = _claims(static={"h1": {"mac": ["52:54:00:00:00:01"], "ip": ["198.18.0.11"]}})
    kept = claims.filter("h1", {"macs": ["52:54:00:00:00:01", "52:54:00:00:00:99"], "ips": ["198.18.0.50"]})
    assert kept["macs"] == ["52:54:00:00:00:01"] and kept["ips"] == []


# -- the network view ------------------------------------------------------------------------------
ROUTE = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
)
ROUTE6 = (
    "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n"
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n"
)
ARP = (
    "IP address       HW type     Flags       HW address            Mask     Device\n"
    "192.0.2.1        0x1         0x2         02:FC:00:00:00:05     *        eth0\n"
)


def test_gateways_links_and_gateway_macs_come_from_proc():
    assert default_gateways(ROUTE, ROUTE6) == ["192.0.2.1", "fd00::1"]
    assert [str(n) for n in on_link_networks(ROUTE, ROUTE6)] == ["192.0.2.0/24", "fd00::/64"]
    assert neighbour_macs(ARP, ["192.0.2.1"]) == ["02:fc:00:00:00:05"]


def test_on_link_means_a_connected_subnet_link_local_or_loopback():
    view = NetView()
    view.networks = on_link_networks(ROUTE, ROUTE6)
    assert view.on_link("192.0.2.77") and view.on_link("fd00::5") and view.on_link("fe80::1")
    assert view.on_link("169.254.3.3") and view.on_link("127.0.0.1")
    assert not view.on_link("203.0.113.9") and not view.on_link("fd01::1") and not view.on_link("garbage")


# -- the sleep proxy -------------------------------------------------------------------------------
def _proxy(**kwargs):
    registry = Registry()
    registry.define("h2", ["52:54:00:00:00:02"], ["198.18.0.12"])
    registry.set_state(registry.get("h2"), P.ASLEEP, "test", NOW)
    woken = []
    proxy = SleepProxy(registry, lambda record, cause: woken.append(cause), cooldown=1, now=NOW, **kwargs)
    return proxy, woken


def test_one_chatty_source_is_limited_and_logged_once(caplog):
    proxy, woken = _proxy(source_wakes=3, source_window=600, log=logging.getLogger("test.proxy"))
    outcomes = []
    with caplog.at_level(logging.WARNING, logger="test.proxy"):
        for index in range(25):  # one MAC asking every 2.4 s, for a minute
            outcomes.append(
                proxy.on_frame(arp_request("02:00:00:00:00:66", "198.18.0.66", "198.18.0.12"), NOW + index * 2.4)
            )
    assert len(woken) == 3 and outcomes.count("source-limited") == 22 - outcomes.count("collapsed")
    assert sum("02:00:00:00:00:66" in r.getMessage() for r in caplog.records) == 1
    # Another source is not punished for it.
    assert proxy.on_frame(arp_request("02:00:00:00:00:77", "198.18.0.77", "198.18.0.12"), NOW + 100) == "woke"


def test_gateway_and_own_frames_never_wake():
    proxy, woken = _proxy()
    proxy.protect(["198.18.0.1"], ["02:00:00:00:00:fe"])
    assert proxy.on_frame(arp_request("02:00:00:00:00:fe", "198.18.0.254", "198.18.0.12"), NOW) == "gateway"
    assert proxy.on_frame(arp_request("02:00:00:00:00:aa", "198.18.0.1", "198.18.0.12"), NOW) == "ignored-mac"
    assert woken == []


def test_solicited_node_multicast_mac():
    assert solicited_node_mac("fd00::12:3456") == "33:33:ff:12:34:56"
    assert solicited_node_mac("not an address") is None


# -- mDNS ------------------------------------------------------------------------------------------
def _mdns_answers(on_link):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    responder = mdns.Responder(
        "testbox.example", 7491, address="127.0.0.1", group=(mdns.MDNS_ADDR, port), on_link=on_link
    )
    try:
        query = mdns.message(7, 0, [(mdns.SERVICE, mdns.T_PTR)], [])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(0.5)
            client.sendto(query, ("127.0.0.1", port))
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                responder.on_readable()
                time.sleep(0.02)
            try:
                return client.recvfrom(9000)[0], responder.off_link
            except socket.timeout:
                return None, responder.off_link
    finally:
        responder.close()


def test_mdns_answers_on_link_sources_only():
    answer, off_link = _mdns_answers(lambda ip: True)
    assert answer is not None
    answer, off_link = _mdns_answers(lambda ip: False)  # a unicast query from off the link: no reflection
    assert answer is None and off_link >= 1


# -- defaults --------------------------------------------------------------------------------------
def test_defaults_are_closed(tmp_path):
    path = tmp_path / "powerwaked.conf"
    path.write_text("[powerwaked]\nsecret = %s\n" % SECRET)
    config, errors = load_config([str(path)])
    assert any("listen is required" in str(e) and str(e).startswith(str(path)) for e in errors)
    path.write_text("[powerwaked]\nsecret = %s\nlisten = 127.0.0.1\n" % SECRET)
    config, errors = load_config([str(path)])
    assert errors == []
    assert config.server["read_auth"] is True and config.server["announce"] is False
    assert config.ipmi["privilege"] == "OPERATOR"


def test_tls_needs_cert_and_key_files(tmp_path):
    path = tmp_path / "powerwaked.conf"
    path.write_text("[powerwaked]\nsecret = %s\nlisten = 127.0.0.1\ntls_cert = %s\n" % (SECRET, tmp_path / "no"))
    _config, errors = load_config([str(path)])
    text = " ".join(str(e) for e in errors)
    assert "tls_cert and tls_key go together" in text and "no such file" in text


@pytest.mark.parametrize(
    "url, ok", [("https://fleet.example:8443", True), ("udp://10.0.0.1", True), ("ftp://x", False)]
)
def test_engine_check_config_agrees_with_the_reporter_on_server_urls(tmp_path, url, ok):
    path = tmp_path / "powernap.conf"
    path.write_text("[server]\nurl = %s\ntoken = %s\n" % (url, "k" * 64))
    _config, errors = load_engine_config([str(path)])
    url_errors = [str(e) for e in errors if "url" in str(e)]
    assert (url_errors == []) == ok, url_errors
    if ok:
        P.parse_server_url(url)  # what the reporter does at run time: no surprise there
    else:
        assert url_errors[0].startswith("%s:2" % path)


# -- the engine side -------------------------------------------------------------------------------
class _Server:
    """A UDP socket playing powerwaked: acks reports signed with the host's key."""

    def __init__(self, host, key=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.key = (key or key_of(host)).encode()
        self.engine = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.stop.is_set():
            try:
                data, sender = self.sock.recvfrom(P.MAX_MESSAGE)
            except socket.timeout:
                continue
            message = json.loads(data.split(b" ", 2)[2])
            if message.get("kind") == "report":
                self.engine = sender
                ack = {"kind": "ack", "from": P.SERVER_NAME, "re": message["nonce"]}
                self.sock.sendto(P.encode(self.key, ack, P.TO_ENGINE), sender)

    def command(self, key, label=P.TO_ENGINE, sock=None):
        message = {"kind": "command", "from": P.SERVER_NAME, "to": "h1", "command": "nap", "action": "poweroff"}
        (sock or self.sock).sendto(P.encode(key, message, label), self.engine)

    def close(self):
        self.stop.set()
        self.thread.join(timeout=2)
        self.sock.close()


def _wait(predicate, seconds=3.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_engine_obeys_only_commands_signed_for_it_from_the_server(monkeypatch):
    server = _Server("h1")
    executed = []
    monkeypatch.setattr(P.FleetReporter, "execute", lambda self, message: (executed.append(message), (True, "ok"))[1])
    reporter = P.FleetReporter(key_of("h1"), "h1", "udp://127.0.0.1:%d" % server.port, timeout=1.0, heartbeat=60)
    try:
        reporter.report({"event": "start"})
        assert _wait(lambda: reporter.acked >= 1 and server.engine is not None)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.bind(("127.0.0.1", 0))
            server.command(key_of("h1").encode(), sock=other)  # right key, wrong source
        server.command(SECRET.encode())  # the master is not this host's key
        server.command(key_of("h2").encode())  # another host's key
        server.command(key_of("h1").encode(), label=P.TO_SERVER)  # the engine>server direction
        time.sleep(0.5)
        assert executed == [] and reporter.commands == 0
        server.command(key_of("h1").encode())
        assert _wait(lambda: len(executed) == 1)
    finally:
        reporter.close()
        server.close()


def test_engine_distrusts_a_discovered_server_until_it_proves_the_key(monkeypatch):
    impostor = _Server("h1", key="not the key of h1 at all, an impostor")
    executed = []
    monkeypatch.setattr(P.FleetReporter, "execute", lambda self, message: (executed.append(message), (True, "ok"))[1])
    found = []

    def discover(timeout):
        found.append(1)
        return ("127.0.0.1", impostor.port)

    reporter = P.FleetReporter(key_of("h1"), "h1", "", timeout=0.6, heartbeat=60, discover=discover)
    try:
        reporter.report({"event": "start"})
        assert _wait(lambda: impostor.engine is not None)
        assert _wait(lambda: reporter.server is None and len(found) >= 1)  # forgotten: it never proved our key
        assert not reporter.verified and reporter.acked == 0
        impostor.command(b"not the key of h1 at all, an impostor")
        time.sleep(0.3)
        assert executed == []
    finally:
        reporter.close()
        impostor.close()


# -- IPv6 solicited-node groups, on a real interface in a network namespace of our own ---------------
JOIN_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
from powernap.server.proxy import RawListener
listener = RawListener("pwk0", ipv6=True)
listener.join_solicited(["fd00::12:3456", "fe80::5054:ff:fe00:1"])
print(open("/proc/net/dev_mcast").read())
print("--")
listener.join_solicited(["fd00::12:3456"])
print(open("/proc/net/dev_mcast").read())
listener.close()
"""


def test_the_proxy_joins_the_sleepers_solicited_node_groups():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.fail("needs root and iproute2 (a network namespace of its own)")
    netns = "pwk-sn-%d" % os.getpid()
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=10)
    try:
        link = ["ip", "-n", netns, "link", "add", "pwk0", "type", "veth", "peer", "name", "pwk1"]
        subprocess.run(link, check=True, timeout=10)
        subprocess.run(["ip", "-n", netns, "link", "set", "pwk0", "up"], check=True, timeout=10)
        engine = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        proc = subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, "-c", JOIN_SCRIPT, engine],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        joined, _sep, after = proc.stdout.partition("--")
        assert "3333ff123456" in joined and "3333ff000001" in joined
        assert "3333ff123456" in after and "3333ff000001" not in after  # a woken host's group is left
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=False, timeout=10)


# -- 17: least privilege on the BMC ------------------------------------------------------------------
def test_ipmi_uses_operator_everywhere_by_default(tmp_path):
    from powernap import powerwake
    from powernap.server.wake import ipmi_command

    config = {"host.db1": {"mac": "52:54:00:00:00:09", "bmc": "198.19.0.19"}, "ipmi": {"user": "u", "password": "p"}}
    cli_target = powerwake.Resolver(None, config, ethers=[], arp_path="/nonexistent").resolve("db1").bmc
    server = server_config(tmp_path, "[host.db1]\nbmc = 198.19.0.19\n")
    fleet = Fleet(Registry(), server, FakeClock(NOW), Sent().send_wol, Sent().send_datagram, background=False)
    registry_record = fleet.registry.define("db1", bmc="198.19.0.19", wake=["wol", "ipmi"])
    for target in (cli_target, fleet._ipmi_target(registry_record)):
        argv, _env = ipmi_command(target, "on")
        assert argv[argv.index("-L") + 1] == "OPERATOR"


def test_the_daemon_protects_the_gateway_it_reads_from_proc(tmp_path):
    from powernap.server.daemon import Server
    from powernap.sysroot import SysRoot

    root = tmp_path / "root"
    (root / "proc/net").mkdir(parents=True)
    (root / "proc/net/route").write_text(ROUTE)
    (root / "proc/net/ipv6_route").write_text(ROUTE6)
    (root / "proc/net/arp").write_text(ARP)
    (root / "proc/net/fib_trie").write_text("Local:\n  |-- 192.0.2.9\n     /32 host LOCAL\n")
    (root / "proc/net/if_inet6").write_text("")
    (root / "sys/class/net/eth0").mkdir(parents=True)
    (root / "sys/class/net/eth0/address").write_text("02:00:00:00:00:09\n")
    port = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = server_config(tmp_path, "port = %d\n" % port)
    server = Server(config, log=logging.getLogger("test.daemon"), api=False, net=NetView(SysRoot(str(root))))
    server.start()
    try:
        claimed = {"kind": "report", "from": "h1", "host": "h1", "ts": time.time(), "nonce": "n1", "state": "awake"}
        claimed.update(ips=["192.0.2.1", "192.0.2.9", "192.0.2.50"], macs=["02:fc:00:00:00:05", "02:00:00:00:00:09"])
        server.accept_report(claimed, ("192.0.2.1", 4000))  # even its source address is the gateway's
        record = server.registry.get("h1")
        assert record.ips == ["192.0.2.50"] and record.macs == []
        assert record.addr == ["192.0.2.1", 4000]  # acks and commands still go back where it came from
    finally:
        server.shutdown()


def test_derive_key_prints_the_key_the_server_verifies_with(tmp_path, capsys):
    from powernap.server.daemon import main

    path = tmp_path / "powerwaked.conf"
    path.write_text("[powerwaked]\nsecret = %s\nlisten = 127.0.0.1\n" % SECRET)
    assert main(["--config", str(path), "--derive-key", "web1"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == key_of("web1") and SECRET not in printed
