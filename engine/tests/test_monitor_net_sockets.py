"""tcp, udp and wol monitors: fake /proc socket tables, and real loopback traffic for the packet sockets."""

import ipaddress
import os
import socket
import struct

import pytest
from monitor_fakes import free_port, make, wait_event, write

from powernap import magic_packet
from powernap.clock import FakeClock
from powernap.errors import MonitorError
from powernap.monitors import procfs

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def hex_address(text, port):
    packed = ipaddress.ip_address(text).packed
    words = struct.unpack("=%dI" % (len(packed) // 4), packed)
    return "%s:%04X" % ("".join("%08X" % w for w in words), port)


def table(root, name, *rows):
    lines = [HEADER]
    for index, (local, lport, remote, rport, state) in enumerate(rows):
        lines.append(
            "%4d: %s %s %02X 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n"
            % (index, hex_address(local, lport), hex_address(remote, rport), state)
        )
    write(root, "/proc/net/" + name, "".join(lines))


def require_root():
    if os.geteuid() != 0:
        pytest.fail("packet socket tests need root (CAP_NET_RAW); the test suite runs as root")


def test_decode_address_handles_both_families():
    assert procfs.decode_address("0100007F:0016") == (ipaddress.ip_address("127.0.0.1"), 22)
    v6, port = procfs.decode_address(hex_address("2001:db8::1", 443))
    assert (str(v6), port) == ("2001:db8::1", 443)
    mapped, _unused = procfs.decode_address(hex_address("::ffff:192.0.2.1", 80))
    assert str(mapped) == "192.0.2.1"


def test_tcp_established_ipv4_and_ipv6(tmp_path):
    table(
        tmp_path,
        "tcp",
        ("0.0.0.0", 22, "0.0.0.0", 0, procfs.TCP_LISTEN),
        ("192.0.2.5", 40000, "198.51.100.1", 22, procfs.TCP_ESTABLISHED),
    )  # we are the client: no
    table(tmp_path, "tcp6", ("::", 22, "::", 0, procfs.TCP_LISTEN))
    monitor = make("tcp", root=tmp_path, ports="22", events="no")
    monitor.open()
    assert monitor.fds() == []
    assert monitor.check() is None
    table(tmp_path, "tcp6", ("2001:db8::1", 22, "2001:db8::99", 51000, procfs.TCP_ESTABLISHED))
    assert monitor.check() == "1 established connection on port 22 (from 2001:db8::99)"
    table(tmp_path, "tcp", ("10.0.0.1", 8080, "10.0.0.2", 50000, 0x06))  # TIME_WAIT does not count
    table(tmp_path, "tcp6", ("::ffff:10.0.0.1", 8085, "::ffff:10.0.0.3", 50001, procfs.TCP_ESTABLISHED))
    assert "port 8085 (from 10.0.0.3)" in make("tcp", root=tmp_path, ports="80,8000-8100", events="no").check()


def test_tcp_min_connections_and_remote_filters(tmp_path):
    rows = [("10.0.0.1", 5432, "10.0.0.%d" % n, 40000 + n, procfs.TCP_ESTABLISHED) for n in range(2, 7)]
    rows.append(("10.0.0.1", 5432, "192.0.2.50", 40100, procfs.TCP_ESTABLISHED))
    table(tmp_path, "tcp", *rows)
    assert make("tcp", root=tmp_path, ports="5432", min_connections="7").check() is None
    assert make("tcp", root=tmp_path, ports="5432", min_connections="6").check().startswith(">= 6 established")
    assert make("tcp", root=tmp_path, ports="5432", min_connections="2", remote="192.0.2.0/24").check() is None
    assert "192.0.2.50" in make("tcp", root=tmp_path, ports="5432", remote="192.0.2.0/24").check()
    assert make("tcp", root=tmp_path, ports="5432", ignore_remote="10.0.0.0/8, 192.0.2.50").check() is None


def test_tcp_connection_events_on_loopback_count_only_established_connections():
    """Real kernel, real root: an established connection is activity at once; a refused SYN never is;
    the end of the last connection is seen at the next check, not poll_every (30 s) later."""
    require_root()
    port = free_port()
    clock = FakeClock()
    monitor = make("tcp", clock=clock, ports="%d" % port)
    monitor.open()
    try:
        assert len(monitor.fds()) == 1, "packet socket refused"
        assert monitor.check() is None
        # Nobody listens: the kernel answers the SYN with a RST.  Not activity, now or later.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
        assert wait_event(monitor, 0.5) == {}
        assert monitor.check() is None
        clock.advance(1.0)
        assert monitor.check() is None
        server = socket.socket()
        server.bind(("127.0.0.1", port))
        server.listen(1)
        client = socket.create_connection(("127.0.0.1", port), timeout=2)
        accepted, _unused = server.accept()
        reasons = wait_event(monitor)
        assert list(reasons.values()) == ["1 established connection on port %d (from 127.0.0.1)" % port]
        client.sendall(b"data is not a new connection")
        assert wait_event(monitor, 0.3) == {}
        clock.advance(1.0)  # one interval, far less than poll_every
        assert monitor.check() == "1 established connection on port %d (from 127.0.0.1)" % port
        client.close()
        accepted.close()
        wait_event(monitor, 0.3)  # the FIN
        clock.advance(1.0)
        assert monitor.check() is None, "the end of the connection was not seen within one interval"
        server.close()
        blocked = make("tcp", ports="%d" % port, ignore_remote="127.0.0.0/8")
        blocked.open()
        try:
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=2)
            assert wait_event(blocked, 0.5) == {}
        finally:
            blocked.close()
    finally:
        monitor.close()
    assert monitor.fds() == []


def test_tcp_handshake_is_followed_with_early_checks(tmp_path):
    """A SYN whose handshake is not finished when it is read asks for early checks; an unanswered one
    stops asking after a few seconds."""
    table(tmp_path, "tcp")
    clock = FakeClock()
    monitor = make("tcp", root=tmp_path, clock=clock, ports="80")
    monitor.listener = FakeListener(
        [(syn_frame("192.0.2.7", 80), 0x0800, "eth0")]
    )  # a SYN, as the packet socket hands it over
    assert monitor.on_readable(3) is None
    first = monitor.next_check()
    assert first is not None and first - clock.monotonic() < 0.01
    table(tmp_path, "tcp", ("192.0.2.1", 80, "192.0.2.7", 40000, procfs.TCP_ESTABLISHED))
    clock.advance(0.005)
    assert monitor.check() == "1 established connection on port 80 (from 192.0.2.7)"
    assert monitor.next_check() is None
    table(tmp_path, "tcp")
    clock.advance(30)
    monitor.check()
    monitor.listener = FakeListener([(syn_frame("192.0.2.8", 80), 0x0800, "eth0")])
    assert monitor.on_readable(3) is None  # never answered
    for _unused in range(20):
        wanted = monitor.next_check()
        if wanted is None:
            break
        clock.advance(max(0.0, wanted - clock.monotonic()))
        assert monitor.check() is None
    assert monitor.next_check() is None and clock.monotonic() - first < 40


class FakeListener:
    def __init__(self, frames):
        self.frames = frames

    def receive(self, limit=64):
        frames, self.frames = self.frames, []
        return frames

    def fileno(self):
        return 3

    def close(self):
        pass


def syn_frame(source, port, flags=0x02):
    ip = bytes([0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0]) + socket.inet_aton(source) + socket.inet_aton("192.0.2.1")
    tcp = struct.pack(">HHIIBBHHH", 40000, port, 0, 0, 0x50, flags, 1024, 0, 0)
    return ip + tcp


def test_udp_sees_datagrams_without_stealing_them(tmp_path):
    require_root()
    port = free_port(socket.SOCK_DGRAM)
    service = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    service.bind(("127.0.0.1", port))
    service.settimeout(2)
    monitor = make("udp", root=tmp_path, ports="%d" % port)
    monitor.open()
    try:
        assert monitor.check() is None
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.sendto(b"query", ("127.0.0.1", port))
        sender.sendto(b"other port", ("127.0.0.1", free_port(socket.SOCK_DGRAM)))
        assert service.recv(100) == b"query"  # the service still gets it: nothing was bound by the monitor
        assert monitor.check() == "1 UDP datagram to port %d" % port
        assert monitor.check() is None
        many = make("udp", root=tmp_path, ports="%d" % port, min_packets="3")
        many.open()
        try:
            for _unused in range(2):
                sender.sendto(b"q", ("127.0.0.1", port))
            service.recv(10)
            service.recv(10)
            assert many.check() is None
        finally:
            many.close()
        sender.close()
    finally:
        monitor.close()
        service.close()


def test_udp_reports_why_it_cannot_work(tmp_path):
    monitor = make("udp", root=tmp_path, ports="53")
    monitor.error = "packet socket refused (Operation not permitted)"  # what open() records without root
    with pytest.raises(MonitorError, match="refused"):
        monitor.check()


MAC = "52:54:00:12:34:56"


@pytest.fixture
def wol_root(tmp_path):
    write(tmp_path, "/sys/class/net/lo/address", "00:00:00:00:00:00\n")
    write(tmp_path, "/sys/class/net/enp3s0/address", MAC + "\n")  # not eth*: PowerNap missed these
    write(tmp_path, "/sys/class/net/wlan0/address", "02:aa:bb:cc:dd:ee\n")
    return tmp_path


def send_udp(payload, port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(payload, ("127.0.0.1", port))


def wol_monitor(root, **options):
    monitor = make("wol", root=root, **options)
    monitor.open()
    return monitor


def test_wol_udp_magic_packet_for_any_local_mac(wol_root):
    require_root()
    port = free_port(socket.SOCK_DGRAM)
    monitor = wol_monitor(wol_root, ports=str(port))
    try:
        assert monitor.mode == "packet"
        send_udp(magic_packet.build("02:aa:bb:cc:dd:ee"), port)
        assert list(wait_event(monitor).values()) == [
            "Wake-on-LAN packet for 02:aa:bb:cc:dd:ee (UDP from 127.0.0.1 on lo)"
        ]
        send_udp(magic_packet.build("66:55:44:33:22:11"), port)  # someone else's MAC
        send_udp(b"\xff" * 6 + bytes.fromhex("525400123456") * 15, port)  # truncated
        assert wait_event(monitor, 0.5) == {}
        send_udp(b"\x00" * 40 + magic_packet.build(MAC) + b"\x00" * 20, port)  # padded
        assert "for " + MAC in list(wait_event(monitor).values())[0]
    finally:
        monitor.close()


def test_wol_secureon(wol_root):
    require_root()
    port = free_port(socket.SOCK_DGRAM)
    monitor = wol_monitor(wol_root, ports=str(port), secureon="01:02:03:04:05:06")
    try:
        send_udp(magic_packet.build(MAC), port)
        send_udp(magic_packet.build(MAC, "0a:0b:0c:0d:0e:0f"), port)
        assert wait_event(monitor, 0.5) == {}
        send_udp(magic_packet.build(MAC, "01:02:03:04:05:06"), port)
        assert list(wait_event(monitor).values()) == ["Wake-on-LAN packet for %s (UDP from 127.0.0.1 on lo)" % MAC]
    finally:
        monitor.close()


def test_wol_raw_ethertype_0842(wol_root):
    require_root()
    monitor = wol_monitor(wol_root, ports=str(free_port(socket.SOCK_DGRAM)))
    try:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
            raw.bind(("lo", 0))
            frame = b"\xff" * 6 + b"\x00" * 6 + struct.pack("!H", 0x0842) + magic_packet.build(MAC)
            raw.send(frame)
        assert list(wait_event(monitor).values()) == ["Wake-on-LAN packet for %s (ethertype 0x0842 on lo)" % MAC]
    finally:
        monitor.close()


def test_wol_fixed_macs_and_hook(wol_root):
    require_root()
    port = free_port(socket.SOCK_DGRAM)
    monitor = wol_monitor(wol_root, ports=str(port), macs="aa-bb-cc-00-11-22")
    hooked = wol_monitor(wol_root, ports=str(port), hooks={"local_macs": lambda: {bytes.fromhex("0e0000000001")}})
    try:
        send_udp(magic_packet.build(MAC), port)
        assert wait_event(monitor, 0.5) == {}  # a local MAC, but not the configured one
        assert wait_event(hooked, 0.5) == {}
        send_udp(magic_packet.build("aa:bb:cc:00:11:22"), port)
        assert wait_event(monitor) != {}
        send_udp(magic_packet.build("0e:00:00:00:00:01"), port)
        assert wait_event(hooked) != {}
    finally:
        monitor.close()
        hooked.close()


def test_wol_udp_method_shares_the_port(wol_root):
    port = free_port(socket.SOCK_DGRAM)
    monitor = wol_monitor(wol_root, ports=str(port), method="udp")
    try:
        assert monitor.mode == "udp" and len(monitor.fds()) == 2  # IPv4 and IPv6 sockets
        send_udp(magic_packet.build(MAC), port)
        assert list(wait_event(monitor).values()) == [
            "Wake-on-LAN packet for %s (UDP port %d from 127.0.0.1)" % (MAC, port)
        ]
        # A second listener (e.g. another tool) can still bind the port.
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("0.0.0.0", port))
        other.close()
    finally:
        monitor.close()
    assert monitor.fds() == []


def test_wol_cannot_listen_is_an_error(wol_root):
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # no SO_REUSEPORT: nobody may share it
    blocker.bind(("0.0.0.0", 0))
    port = blocker.getsockname()[1]
    blocker6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    blocker6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    blocker6.bind(("::", port))
    try:
        monitor = make("wol", root=wol_root, ports=str(port), method="udp")
        with pytest.raises(MonitorError, match="cannot listen"):
            monitor.open()
        assert monitor.fds() == []
    finally:
        blocker.close()
        blocker6.close()


def test_tcp_table_read_is_rate_limited_while_events_run(tmp_path):
    require_root()
    clock = FakeClock()
    port = free_port()
    table(tmp_path, "tcp")
    monitor = make("tcp", root=tmp_path, clock=clock, ports=str(port), poll_every="10s")
    monitor.open()
    try:
        assert monitor.fds(), "packet socket refused"
        assert monitor.check() is None
        table(tmp_path, "tcp", ("127.0.0.1", port, "127.0.0.1", 50000, procfs.TCP_ESTABLISHED))
        clock.advance(5)
        assert monitor.check() is None  # cached: the table is not read on every tick
        clock.advance(5)
        assert monitor.check() is not None
        table(tmp_path, "tcp")
        # While a connection is open the table is read on every check: its end is seen at once.
        assert monitor.check() is None
        clock.advance(1)
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
            server.listen(1)
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                # A SYN alone is not activity: the (fake) table it makes the monitor read shows nothing.
                assert wait_event(monitor, 0.5) == {}
        assert monitor.check() is None  # the event forced a fresh read of the (fake) table
    finally:
        monitor.close()
