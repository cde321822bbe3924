"""DNS-SD over mDNS: message encoding, compressed-name parsing, and a responder answering a one-shot
(legacy unicast) browse over loopback."""

import socket
import struct

import pytest

from powernap.server import mdns

GROUP = "239.255.77.77"  # an admin-scoped group, used on loopback only


def test_names_round_trip_and_compression_pointers_are_followed():
    data = b"\0" * 12 + mdns.encode_name("_powerwaked._udp.local") + b"\x04host\xc0\x0c"
    assert mdns.decode_name(data, 12) == ("_powerwaked._udp.local", 12 + 24)
    assert mdns.decode_name(data, 36) == ("host._powerwaked._udp.local", 36 + 7)
    with pytest.raises(ValueError):
        mdns.decode_name(b"\xc0\x00", 0)  # a pointer to itself


def test_bad_labels_are_refused():
    with pytest.raises(ValueError):
        mdns.encode_name("a" * 64 + ".local")


def test_parse_reads_a_service_answer():
    srv = struct.pack("!HHH", 0, 0, 7490) + mdns.encode_name("box.local")
    reply = mdns.message(
        0,
        0x8400,
        [],
        [mdns.record(mdns.SERVICE, mdns.T_PTR, mdns.encode_name("box." + mdns.SERVICE))],
        [
            mdns.record("box." + mdns.SERVICE, mdns.T_SRV, srv),
            mdns.record("box.local", mdns.T_A, socket.inet_aton("198.18.0.2")),
        ],
    )
    parsed = mdns.parse(reply)
    assert mdns._server_in(parsed, "198.18.0.9") == ("198.18.0.2", 7490)


def test_responder_answers_a_browse_over_loopback():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        responder = mdns.Responder("testbox.example", 7491, address="127.0.0.1", group=(GROUP, port))
    except OSError as exc:
        pytest.fail("cannot open an mDNS responder on loopback: %s" % exc)
    try:
        import threading

        stop = threading.Event()

        def serve():
            import select

            while not stop.is_set():
                if select.select([responder.sock], [], [], 0.05)[0]:
                    responder.on_readable()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        found = mdns.browse(timeout=2.0, group=("127.0.0.1", port))
        stop.set()
        thread.join(timeout=2)
    finally:
        responder.close()
    assert found == ("127.0.0.1", 7491)
    assert responder.answered == 1
