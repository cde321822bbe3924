"""The magic packet's one home: building (sender side) and finding (engine side)."""

import pytest

from ansible_collections.powernap.fleet.plugins.module_utils import magic_packet

MAC = "02:50:4e:00:00:01"
RAW = bytes.fromhex("02504e000001")


@pytest.mark.parametrize("text", [MAC, "02-50-4E-00-00-01", "0250.4e00.0001", "02504e000001", " 02:50:4e:00:00:01 "])
def test_parse_mac_accepts_common_spellings(text):
    assert magic_packet.parse_mac(text) == RAW


@pytest.mark.parametrize("text", ["", "02:50:4e:00:00", "02:50:4e:00:00:01:02", "zz:50:4e:00:00:01", None])
def test_parse_mac_rejects_and_names_the_input(text):
    with pytest.raises(ValueError, match="MAC address"):
        magic_packet.parse_mac(text)


def test_standard_packet_is_102_bytes_six_ff_then_sixteen_macs():
    packet = magic_packet.build(MAC)
    assert len(packet) == 102
    assert packet[:6] == b"\xff" * 6
    assert packet[6:] == RAW * 16
    assert magic_packet.format_mac(packet[6:12]) == MAC


@pytest.mark.parametrize(
    "password, raw",
    [
        ("192.168.1.2", bytes([192, 168, 1, 2])),
        ("01:02:03:04:05:06", bytes(range(1, 7))),
        ("0a0b0c0d", bytes([10, 11, 12, 13])),
    ],
)
def test_secureon_is_appended(password, raw):
    packet = magic_packet.build(MAC, password)
    assert len(packet) == 102 + len(raw)
    assert packet[102:] == raw


@pytest.mark.parametrize("password", ["1.2.3", "300.1.1.1", "01:02:03", "nothex!!"])
def test_bad_secureon_is_refused(password):
    with pytest.raises(ValueError, match="SecureOn"):
        magic_packet.build(MAC, password)


def test_find_tolerates_padding_and_extra_sync_bytes():
    payload = b"\x00" * 3 + b"\xff" * 2 + magic_packet.build(MAC) + b"\x00" * 20
    found = magic_packet.find(payload)
    assert found == [(RAW, b"\x00" * 6)]


def test_find_reports_every_packet_in_one_payload():
    other = "02:50:4e:00:00:02"
    payload = magic_packet.build(MAC) + magic_packet.build(other)
    assert [mac for mac, _password in magic_packet.find(payload)] == [RAW, magic_packet.parse_mac(other)]


def test_find_ignores_broken_sequences():
    broken = magic_packet.build(MAC)[:-1] + b"\x00"
    assert magic_packet.find(broken) == []
    assert magic_packet.find(b"\xff" * 200) == []


def test_matches_checks_mac_and_secureon():
    password = magic_packet.parse_secureon("01:02:03:04:05:06")
    packet = magic_packet.build(MAC, password)
    assert magic_packet.matches(packet, MAC, password)
    assert magic_packet.matches(packet, MAC)  # no password required: any packet for the MAC
    assert not magic_packet.matches(packet, MAC, magic_packet.parse_secureon("01:02:03:04:05:07"))
    assert not magic_packet.matches(packet, "02:50:4e:00:00:02")
    assert not magic_packet.matches(magic_packet.build(MAC), MAC, password)
