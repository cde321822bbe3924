# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
import socket

import pytest

from ansible_collections.powernap.fleet.plugins.module_utils import magic_packet
from ansible_collections.powernap.fleet.plugins.module_utils.power import PowerSettingError
from ansible_collections.powernap.fleet.plugins.module_utils.wol import WolDriver, WolPacket, send_packets

MAC = "02:50:4e:00:00:07"


@pytest.fixture
def receiver():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    yield sock
    sock.close()


def drain(sock, count):
    return [sock.recvfrom(2048)[0] for _attempt in range(count)]


def test_sends_exactly_the_102_byte_packet_repeat_times(receiver):
    port = receiver.getsockname()[1]
    sleeps = []
    sent = send_packets(
        [WolPacket(MAC, broadcast="127.0.0.1", port=port)], repeat=3, interval=0.25, sleep=sleeps.append
    )
    assert sent == 3
    assert sleeps == [0.25, 0.25]
    payloads = drain(receiver, 3)
    expected = b"\xff" * 6 + bytes.fromhex("02504e000007") * 16
    assert payloads == [expected] * 3
    assert len(expected) == 102


def test_secureon_is_appended(receiver):
    port = receiver.getsockname()[1]
    WolDriver(MAC, secureon="192.168.1.2", broadcast="127.0.0.1", port=port, repeat=1).power_on()
    (payload,) = drain(receiver, 1)
    assert len(payload) == 106
    assert payload[-4:] == bytes([192, 168, 1, 2])
    assert magic_packet.matches(payload, MAC, bytes([192, 168, 1, 2]))


def test_source_address_is_used(receiver):
    port = receiver.getsockname()[1]
    send_packets([WolPacket(MAC, broadcast="127.0.0.1", port=port, source="127.0.0.1")], repeat=1)
    _payload, sender = receiver.recvfrom(2048)
    assert sender[0] == "127.0.0.1"


def test_one_bad_destination_does_not_stop_the_others(receiver):
    port = receiver.getsockname()[1]
    good = WolPacket(MAC, broadcast="127.0.0.1", port=port)
    bad = WolPacket("02:50:4e:00:00:08", broadcast="127.0.0.1", port=port, source="192.0.2.123")
    errors = {}
    sent = send_packets([bad, good], repeat=2, interval=0, errors=errors)
    assert sent == 2
    assert list(errors) == [id(bad)]
    assert isinstance(errors[id(bad)], PowerSettingError)
    assert drain(receiver, 2) == [good.payload, good.payload]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mac": "02:50:4e:00:00"}, "invalid MAC"),
        ({"mac": MAC, "secureon": "1.2.3"}, "SecureOn"),
        ({"mac": MAC, "transport": "raw"}, "needs an interface"),
        ({"mac": MAC, "port": 70000}, "invalid UDP port"),
        ({"mac": MAC, "transport": "tcp"}, "unknown WoL transport"),
    ],
)
def test_bad_settings_are_setting_errors(kwargs, message):
    with pytest.raises(PowerSettingError) as info:
        WolPacket(**kwargs)
    assert message in str(info.value)


def test_query_without_address_is_unknown_and_with_listener_is_on():
    assert WolDriver(MAC).power_query() == "unknown"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        port = server.getsockname()[1]
        assert WolDriver(MAC, address="127.0.0.1", probe_port=port, probe_method="tcp").power_query() == "on"
    finally:
        server.close()
