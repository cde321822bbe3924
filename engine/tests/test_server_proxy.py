"""The sleep proxy's frame parser and decisions: one wake per burst, filters, cooldown, rate limit."""

from server_fakes import arp_request, neighbour_solicitation, tcp_syn

from powernap.server.proxy import SleepProxy, build_arp, parse_frame
from powernap.server.registry import Registry

CLIENT_MAC = "02:00:00:00:00:02"
CLIENT_IP = "198.18.0.2"
GATEWAY_MAC = "02:00:00:00:00:01"
OWN_MAC = "02:00:00:00:00:fe"
SLEEPER_MAC = "52:54:00:00:00:12"
SLEEPER_IP = "198.18.0.12"


def make_proxy(**kwargs):
    registry = Registry(None)
    record = registry.define("h2", macs=[SLEEPER_MAC], ips=[SLEEPER_IP, "fd00::12"])
    record.state = "asleep"
    woken = []

    def wake(target, cause):
        woken.append((target.name, cause))
        target.state = "waking"

    options = {"own_macs": [OWN_MAC], "ignore_macs": [GATEWAY_MAC], "cooldown": 60.0, "rate": 10.0, "burst": 20}
    options.update(kwargs)
    proxy = SleepProxy(registry, wake, now=0.0, **options)
    return proxy, registry, record, woken


def test_parse_arp_request_ns_and_syn():
    frame = parse_frame(arp_request(CLIENT_MAC, CLIENT_IP, SLEEPER_IP))
    assert (frame.kind, frame.src_mac, frame.sender_ip, frame.target_ip) == (
        "who-has",
        CLIENT_MAC,
        CLIENT_IP,
        SLEEPER_IP,
    )
    frame = parse_frame(arp_request(SLEEPER_MAC, SLEEPER_IP, CLIENT_IP, op=2))
    assert frame.kind == "arp-reply"
    frame = parse_frame(neighbour_solicitation(CLIENT_MAC, "fd00::2", "fd00::12"))
    assert (frame.kind, frame.sender_ip, frame.target_ip) == ("ns", "fd00::2", "fd00::12")
    frame = parse_frame(tcp_syn(CLIENT_MAC, CLIENT_IP, SLEEPER_IP, 22))
    assert (frame.kind, frame.target_ip, frame.port) == ("syn", SLEEPER_IP, 22)
    assert parse_frame(b"\x00" * 10) is None
    tagged = arp_request(CLIENT_MAC, CLIENT_IP, SLEEPER_IP)
    tagged = tagged[:12] + b"\x81\x00\x00\x05" + tagged[12:]
    assert parse_frame(tagged).target_ip == SLEEPER_IP


def test_build_arp_round_trips_through_the_parser():
    frame = parse_frame(build_arp(2, OWN_MAC, SLEEPER_IP, CLIENT_MAC, CLIENT_IP, CLIENT_MAC))
    assert (frame.kind, frame.src_mac, frame.sender_ip, frame.target_ip) == (
        "arp-reply",
        OWN_MAC,
        SLEEPER_IP,
        CLIENT_IP,
    )


def test_client_retries_collapse_into_one_wake():
    proxy, _registry, record, woken = make_proxy()
    outcomes = [proxy.on_frame(arp_request(CLIENT_MAC, CLIENT_IP, SLEEPER_IP), t) for t in (0.0, 1.0, 2.0)]
    assert outcomes == ["woke", "collapsed", "collapsed"]
    assert len(woken) == 1 and "who-has 198.18.0.12 from 198.18.0.2" in woken[0][1]


def test_cooldown_holds_even_after_a_failed_wake_and_then_allows_another():
    proxy, _registry, record, woken = make_proxy()
    proxy.on_frame(arp_request(CLIENT_MAC, CLIENT_IP, SLEEPER_IP), 0.0)
    record.state = "asleep"  # the wake was not confirmed
    assert proxy.on_frame(arp_request(CLIENT_MAC, CLIENT_IP, SLEEPER_IP), 30.0) == "collapsed"
    assert proxy.on_frame(arp_request(CLIENT_MAC, CLIENT_IP, SLEEPER_IP), 61.0) == "woke"
    assert len(woken) == 2


def test_gratuitous_probes_gateway_and_own_frames_do_not_wake():
    proxy, _registry, _record, woken = make_proxy()
    assert proxy.on_frame(arp_request(CLIENT_MAC, SLEEPER_IP, SLEEPER_IP), 0.0) == "gratuitous"
    assert proxy.on_frame(arp_request(CLIENT_MAC, "0.0.0.0", SLEEPER_IP), 0.0) == "probe"
    assert proxy.on_frame(arp_request(GATEWAY_MAC, "198.18.0.1", SLEEPER_IP), 0.0) == "ignored-mac"
    assert proxy.on_frame(arp_request(OWN_MAC, "198.18.0.3", SLEEPER_IP), 0.0) == "ignored-mac"
    assert proxy.on_frame(neighbour_solicitation(CLIENT_MAC, "::", "fd00::12"), 0.0) == "probe"
    assert proxy.on_frame(arp_request(CLIENT_MAC, CLIENT_IP, "198.18.0.99"), 0.0) is None
    assert proxy.on_frame(arp_request(CLIENT_MAC, CLIENT_IP, SLEEPER_IP, op=2), 0.0) is None
    assert woken == []


def test_ipv6_neighbour_solicitation_wakes():
    proxy, _registry, _record, woken = make_proxy()
    assert proxy.on_frame(neighbour_solicitation(CLIENT_MAC, "fd00::2", "fd00::12"), 0.0) == "woke"
    assert woken[0][0] == "h2"


def test_awake_unknown_and_held_hosts_are_not_woken():
    proxy, _registry, record, woken = make_proxy()
    record.last_seen = 1.0  # its engine reported once: "unknown" means it went quiet, maybe up
    for state in ("awake", "napping", "unknown"):
        record.state = state
        assert proxy.on_frame(arp_request(CLIENT_MAC, CLIENT_IP, SLEEPER_IP), 0.0) is None
    record.state = "off"
    record.hold = "ups rack1"
    assert proxy.on_frame(arp_request(CLIENT_MAC, CLIENT_IP, SLEEPER_IP), 0.0) == "held"
    assert woken == []


def test_a_static_host_that_never_reported_is_woken_from_the_start():
    # Issue 13 item 4: a [host.X] with a MAC stays "unknown" until its engine reports; it must be wakeable.
    proxy, _registry, record, woken = make_proxy()
    record.state = "unknown"
    assert record.last_seen is None
    assert proxy.on_frame(arp_request(CLIENT_MAC, CLIENT_IP, SLEEPER_IP), 0.0) == "woke"
    assert woken[0][0] == "h2"


def test_waking_unreported_hosts_can_be_turned_off():
    proxy, _registry, record, woken = make_proxy(wake_unreported=False)
    record.state = "unknown"
    assert proxy.on_frame(arp_request(CLIENT_MAC, CLIENT_IP, SLEEPER_IP), 0.0) is None
    assert woken == []


def test_a_frame_from_the_sleepers_mac_is_a_hint_that_triggers_a_probe_not_a_state_change():
    # Issue 13 item 5: anyone can forge a sleeper's source MAC; the frame must not mark it awake.
    probed = []
    proxy, _registry, record, _woken = make_proxy(probe=probed.append)
    proxy.on_frame(arp_request(CLIENT_MAC, CLIENT_IP, SLEEPER_IP), 0.0)
    assert record.state == "waking"
    proxy.on_frame(arp_request(SLEEPER_MAC, SLEEPER_IP, SLEEPER_IP), 3.0)  # its gratuitous ARP, or a forgery
    assert record.state == "waking" and record.last_seen is None
    assert probed == [record] and proxy.counts["hint"] == 1
    record.state = "asleep"
    proxy.on_frame(arp_request(SLEEPER_MAC, SLEEPER_IP, "198.18.0.99"), 4.0)
    assert record.state == "asleep"


def test_tcp_probe_counts_an_answer_or_a_refusal_as_up():
    import socket

    from powernap.server.proxy import tcp_probe

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        assert "accepted" in tcp_probe(["127.0.0.1"], [(port, port)], timeout=1.0)
    assert "refused" in tcp_probe(["127.0.0.1"], [(port, port)], timeout=1.0)
    assert tcp_probe([], [(22, 22)]) == ""


def test_global_rate_limit_queues_and_never_loses_a_wake():
    registry = Registry(None)
    woken = []
    for index in range(30):
        registry.define("s%d" % index, macs=["52:54:00:00:01:%02x" % index], ips=["10.0.1.%d" % index]).state = "off"
    proxy = SleepProxy(registry, lambda r, c: woken.append(r.name), rate=5.0, burst=10, now=0.0)
    outcomes = [proxy.on_frame(arp_request(CLIENT_MAC, CLIENT_IP, "10.0.1.%d" % i), 0.0) for i in range(30)]
    assert outcomes.count("woke") == 10 and outcomes.count("queued") == 20
    # A retry of a queued request does not queue it twice.
    assert proxy.on_frame(arp_request(CLIENT_MAC, CLIENT_IP, "10.0.1.29"), 0.1) == "queued"
    assert len(proxy.pending) == 20
    assert len(proxy.tick(1.0)) == 5
    for second in range(2, 10):
        proxy.tick(float(second))
    assert sorted(woken) == sorted("s%d" % i for i in range(30))
    assert len(woken) == len(set(woken))


def test_answer_arp_mode_answers_and_wakes_only_for_listed_ports():
    sent = []
    proxy, _registry, record, woken = make_proxy(
        answer_arp=True, ports=((22, 22),), proxy_mac=OWN_MAC, send_frame=sent.append
    )
    assert proxy.on_frame(arp_request(CLIENT_MAC, CLIENT_IP, SLEEPER_IP), 0.0) == "answered"
    reply = parse_frame(sent[0])
    assert (reply.kind, reply.src_mac, reply.sender_ip, reply.target_ip) == (
        "arp-reply",
        OWN_MAC,
        SLEEPER_IP,
        CLIENT_IP,
    )
    assert woken == []
    assert proxy.on_frame(tcp_syn(CLIENT_MAC, CLIENT_IP, SLEEPER_IP, 80), 0.5) == "port-ignored"
    assert proxy.on_frame(tcp_syn(CLIENT_MAC, CLIENT_IP, SLEEPER_IP, 22), 1.0) == "woke"
    record.state = "awake"
    proxy.announce(record)
    announce = parse_frame(sent[-1])
    assert (announce.src_mac, announce.sender_ip, announce.target_ip) == (SLEEPER_MAC, SLEEPER_IP, SLEEPER_IP)


def test_syn_without_answer_arp_is_not_a_reason_to_wake():
    proxy, _registry, _record, woken = make_proxy()
    assert proxy.on_frame(tcp_syn(CLIENT_MAC, CLIENT_IP, SLEEPER_IP, 22), 0.0) is None
    assert woken == []
