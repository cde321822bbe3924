"""powerwake: resolving targets (MAC, ethers, neighbour table, config, server), sending real magic packets
to 127.0.0.1, --wait, and a non-zero exit on failure."""

import io
import socket

import pytest

from powernap import magic_packet, powerwake


@pytest.fixture
def receiver():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    yield sock
    sock.close()


def run(argv):
    out = io.StringIO()
    code = powerwake.main(argv + ["--config", "/nonexistent", "--engine-config", "/nonexistent"], out=out)
    return code, out.getvalue()


def test_wake_by_mac_sends_a_standard_magic_packet(receiver, monkeypatch):
    monkeypatch.delenv("POWERWAKE_SERVER", raising=False)
    port = receiver.getsockname()[1]
    code, out = run(["--broadcast", "127.0.0.1", "--wol-port", str(port), "52-54-00-12-34-56"])
    assert code == 0 and "sent wol to 52:54:00:12:34:56" in out
    data = receiver.recv(2048)
    assert len(data) == 102 and magic_packet.matches(data, "52:54:00:12:34:56")


def test_secureon_and_repeat(receiver):
    port = receiver.getsockname()[1]
    code, _out = run(
        [
            "--broadcast",
            "127.0.0.1",
            "--wol-port",
            str(port),
            "--secureon",
            "01:02:03:04:05:06",
            "--repeat",
            "2",
            "52:54:00:12:34:56",
        ]
    )
    assert code == 0
    first, second = receiver.recv(2048), receiver.recv(2048)
    assert first == second and len(first) == 108
    assert magic_packet.matches(first, "52:54:00:12:34:56", b"\x01\x02\x03\x04\x05\x06")


def test_unresolvable_target_exits_non_zero(receiver):
    port = receiver.getsockname()[1]
    code, _out = run(["--broadcast", "127.0.0.1", "--wol-port", str(port), "no-such-host.invalid"])
    assert code == 1


def test_resolution_order_ethers_then_neighbour_table(tmp_path):
    ethers = tmp_path / "ethers"
    ethers.write_text("# comment\n52:54:00:00:00:01 web1\nbad line\n52:54:00:00:00:02 198.18.0.12\n")
    arp = tmp_path / "arp"
    arp.write_text(
        "IP address       HW type     Flags       HW address            Mask     Device\n"
        "198.18.0.13      0x1         0x2         52:54:00:00:00:03     *        br0\n"
        "198.18.0.14      0x1         0x0         00:00:00:00:00:00     *        br0\n"
    )
    cache = tmp_path / "cache" / "ethers"
    resolver = powerwake.Resolver(None, {}, ethers=[str(ethers)], arp_path=str(arp), cache_path=str(cache))
    assert resolver.resolve("web1").mac == "52:54:00:00:00:01"
    assert resolver.resolve("198.18.0.12").mac == "52:54:00:00:00:02"
    found = resolver.resolve("198.18.0.13")
    assert (found.mac, found.source, found.ip) == ("52:54:00:00:00:03", "arp", "198.18.0.13")
    assert resolver.resolve("198.18.0.14").mac is None  # incomplete neighbour entry
    # What the neighbour table taught us is cached for when the host has gone to sleep.
    assert cache.read_text() == "52:54:00:00:00:03 198.18.0.13\n"
    assert powerwake.read_ethers([str(cache)]) == [("52:54:00:00:00:03", "198.18.0.13")]


def test_config_host_gives_mac_ip_and_bmc_without_leaking_the_password():
    config = {
        "host.db1": {"mac": "52:54:00:00:00:09", "ip": "198.18.0.19", "bmc": "198.19.0.19"},
        "ipmi": {"user": "admin", "password": "s3cret"},
    }
    target = powerwake.Resolver(None, config, ethers=[], arp_path="/nonexistent").resolve("db1")
    assert (target.mac, target.ip, target.source) == ("52:54:00:00:00:09", "198.18.0.19", "config")
    assert target.bmc.address == "198.19.0.19" and target.bmc.password == "s3cret"
    assert "s3cret" not in repr(target.bmc)


def test_ipmi_command_keeps_the_password_off_the_command_line():
    from powernap.server.wake import IpmiTarget, ipmi_command

    argv, env = ipmi_command(IpmiTarget("198.19.0.11", "admin", "s3cret"), "on")
    assert "s3cret" not in argv and env["IPMI_PASSWORD"] == "s3cret"
    assert argv[:5] == ["ipmitool", "-I", "lanplus", "-C", "3"] and argv[-3:] == ["chassis", "power", "on"]
    assert "-E" in argv


def test_wait_succeeds_when_the_host_answers_and_fails_when_it_does_not(receiver):
    port = receiver.getsockname()[1]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        tcp_port = listener.getsockname()[1]
        code, out = run(
            [
                "--broadcast",
                "127.0.0.1",
                "--wol-port",
                str(port),
                "--wait",
                "--port",
                str(tcp_port),
                "--timeout",
                "5",
                "127.0.0.1",
            ]
        )
    # 127.0.0.1 has no MAC in the neighbour table: no WoL, no BMC, no server -> cannot wake.
    assert code == 1
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        tcp_port = listener.getsockname()[1]
        code, out = run(
            [
                "--broadcast",
                "127.0.0.1",
                "--wol-port",
                str(port),
                "--wait",
                "--port",
                str(tcp_port),
                "--timeout",
                "5",
                "52:54:00:00:00:01",
            ]
        )
    assert code == 1  # a MAC alone gives no address to wait for
    assert powerwake.wait_up("127.0.0.1", tcp_port, 1.0)  # closed port: RST is an answer, the host is up


def test_wait_with_an_address_resolved_from_ethers(receiver, tmp_path, monkeypatch):
    port = receiver.getsockname()[1]
    ethers = tmp_path / "ethers"
    ethers.write_text("52:54:00:00:00:07 127.0.0.1\n")
    monkeypatch.setattr(powerwake, "ETHERS_FILES", (str(ethers),))
    monkeypatch.setattr(powerwake, "ARP_TABLE", "/nonexistent")
    monkeypatch.setattr(powerwake, "SYSTEM_CACHE", str(tmp_path / "cache"))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        code, out = run(
            [
                "--broadcast",
                "127.0.0.1",
                "--wol-port",
                str(port),
                "--wait",
                "--port",
                str(listener.getsockname()[1]),
                "--timeout",
                "5",
                "127.0.0.1",
            ]
        )
    assert code == 0 and "127.0.0.1: up" in out
    assert magic_packet.matches(receiver.recv(2048), "52:54:00:00:00:07")


def test_list_without_a_server_fails(monkeypatch):
    monkeypatch.delenv("POWERWAKE_SERVER", raising=False)
    code, _out = run(["list"])
    assert code == 1
