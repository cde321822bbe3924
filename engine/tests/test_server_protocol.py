"""Signed messages, replay protection and the event-to-state mapping of the powerwaked protocol."""

import json

import pytest

from powernap.server import protocol as P

KEY = b"a fleet secret of some length"


def test_round_trip_keeps_fields_and_adds_ts_and_nonce():
    data = P.encode(KEY, {"kind": "report", "from": "h1", "state": "awake"})
    assert data.startswith(b"PWK1 ")
    message = P.decode(KEY, data)
    assert message["state"] == "awake" and message["v"] == 1
    assert isinstance(message["ts"], float) and len(message["nonce"]) == 16


@pytest.mark.parametrize(
    "mangle, why",
    [
        (lambda d: d.replace(b'"awake"', b'"napping"'), "bad signature"),
        (lambda d: b"PWK2" + d[4:], "not a powerwaked message"),
        (lambda d: d[:10], "not a powerwaked message"),
        (lambda d: d + b" " * P.MAX_MESSAGE, "too long"),
    ],
)
def test_tampered_messages_are_rejected(mangle, why):
    data = P.encode(KEY, {"kind": "report", "from": "h1", "state": "awake"})
    with pytest.raises(P.ProtocolError, match=why):
        P.decode(KEY, mangle(data))


def test_wrong_secret_is_rejected():
    data = P.encode(b"another secret entirely", {"kind": "report", "from": "h1"})
    with pytest.raises(P.ProtocolError, match="bad signature"):
        P.decode(KEY, data)


def test_signed_but_incomplete_message_is_rejected():
    body = json.dumps({"v": 1, "kind": "report", "ts": 1.0}).encode()
    data = b"PWK1 " + P._mac(KEY, body).encode() + b" " + body
    with pytest.raises(P.ProtocolError, match="lacks 'from'"):
        P.decode(KEY, data)


def test_replay_and_skew_are_rejected():
    now = 1_700_000_000.0
    endpoint = P.Endpoint(KEY, max_skew=60, clock=lambda: now)
    data = P.encode(KEY, {"kind": "report", "from": "h1", "ts": now - 5})
    assert endpoint.accept(data)["from"] == "h1"
    with pytest.raises(P.ProtocolError, match="replayed"):
        endpoint.accept(data)
    with pytest.raises(P.ProtocolError, match="clock skew or replay"):
        endpoint.accept(P.encode(KEY, {"kind": "report", "from": "h1", "ts": now - 61}))
    with pytest.raises(P.ProtocolError, match="clock skew or replay"):
        endpoint.accept(P.encode(KEY, {"kind": "report", "from": "h1", "ts": now + 61}))
    # The same nonce from another sender is a different message.
    other = json.loads(data.split(b" ", 2)[2])
    other["from"] = "h2"
    assert endpoint.accept(P.encode(KEY, other))["from"] == "h2"


def test_replay_window_refuses_messages_older_than_what_it_remembers():
    guard = P.ReplayGuard(max_skew=100, per_sender=4)
    for index in range(4):
        guard.check({"from": "h1", "nonce": "n%d" % index, "ts": 1000.0 + index}, now=1000.0)
    # The window is full: a message older than its oldest entry cannot be checked, so it is refused.
    with pytest.raises(P.ProtocolError, match="older than the replay window"):
        guard.check({"from": "h1", "nonce": "old", "ts": 999.0}, now=1000.0)
    guard.check({"from": "h1", "nonce": "n9", "ts": 1005.0}, now=1000.0)
    with pytest.raises(P.ProtocolError, match="replayed"):
        guard.check({"from": "h1", "nonce": "n9", "ts": 1005.0}, now=1000.0)


@pytest.mark.parametrize(
    "event, previous, state",
    [
        ({"event": "start"}, "unknown", "awake"),
        ({"event": "warn", "stage": 2}, "awake", "grace"),
        ({"event": "cancel"}, "grace", "awake"),
        ({"event": "powersave-apply", "stage": 1}, "awake", "napping"),
        ({"event": "action-start", "action": "suspend"}, "napping", "suspending"),
        ({"event": "action-start", "action": "hibernate"}, "napping", "hibernating"),
        ({"event": "action-start", "action": "poweroff"}, "napping", "powering-off"),
        ({"event": "action-start", "action": "custom"}, "napping", "napping"),
        ({"event": "action-done", "action": "suspend"}, "suspending", "suspending"),
        ({"event": "resume", "how": "suspended"}, "suspending", "resumed"),
        ({"event": "action-failed"}, "suspending", "awake"),
        ({"event": "reload"}, "napping", "napping"),
        ({"event": "stop"}, "awake", "stopped"),
    ],
)
def test_engine_events_map_to_states(event, previous, state):
    assert P.state_for_event(event, previous) == state


def test_server_url_forms():
    assert P.parse_server_url("udp://10.0.0.1:7000") == ("udp", "10.0.0.1", 7000)
    assert P.parse_server_url("10.0.0.1") == ("udp", "10.0.0.1", 7490)
    assert P.parse_server_url("http://[fd00::1]") == ("http", "fd00::1", 7490)
    with pytest.raises(ValueError, match="udp://HOST"):
        P.parse_server_url("ftp://x")


def test_local_addresses_from_proc():
    fib_trie = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.1
           /32 host LOCAL
     |-- 198.18.0.11
        /32 host LOCAL
     |-- 198.18.0.255
        /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 198.18.0.11
        /32 host LOCAL
"""
    assert P.local_ipv4(fib_trie) == ["198.18.0.11"]
    if_inet6 = (
        "00000000000000000000000000000001 01 80 10 80       lo\nfe80000000000000505400fffe123456 02 40 20 80     eth0\n"
    )
    assert P.local_ipv6(if_inet6) == ["fe80::5054:ff:fe12:3456"]


# -- issue 13: one declared schema per message kind, strict JSON, persisted replay floor ----------
def _accept(message, **kwargs):
    return P.Endpoint(KEY, **kwargs).accept(P.encode(KEY, message))


def _report(**fields):
    message = {"kind": "report", "from": "h1", "host": "h1", "event": "heartbeat", "state": "awake"}
    message.update(fields)
    return message


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"wol": "x"}, "wol"),
        ({"load": "x"}, "load"),
        ({"load": True}, "load"),
        ({"interval": 1e9}, "interval"),
        ({"interval": 0}, "interval"),
        ({"macs": ["not-a-mac"]}, "macs"),
        ({"macs": "52:54:00:00:00:01"}, "macs"),
        ({"ips": ["999.1.1.1"]}, "ips"),
        ({"state": "bogus"}, "state"),
        ({"stage": "x"}, "stage"),
        ({"cpus": 0}, "cpus"),
        ({"cpus": 1.5}, "cpus"),
        ({"idle_seconds": -1}, "idle_seconds"),
        ({"detail": {"k": {"nested": 1}}}, "detail"),
        ({"detail": {"k": "x" * 2000}}, "detail"),
        ({"host": "../../etc"}, "host"),
        ({"host": "h" * 300}, "host"),
        ({"wol": {"52:54:00:00:00:01": 7}}, "wol"),
        ({"surprise": 1}, "surprise"),
        ({"next_wake": 1e300}, "next_wake"),
    ],
)
def test_every_report_field_is_checked_against_the_declared_schema(fields, field):
    with pytest.raises(P.ProtocolError, match="report: (field|unknown field) '%s'" % field):
        _accept(_report(**fields))


def test_a_good_report_is_normalised():
    message = _accept(
        _report(macs=["52-54-00-AA-BB-01"], wol={"52:54:00:AA:BB:01": "g"}, stage={"index": 2, "action": "x"})
    )
    assert message["macs"] == ["52:54:00:aa:bb:01"] and message["wol"] == {"52:54:00:aa:bb:01": "g"}
    assert message["stage"] == 2  # the engine status' stage object becomes its index


@pytest.mark.parametrize(
    "message",
    [
        {"kind": "ack", "from": "powerwaked"},
        {"kind": "ack", "from": "powerwaked", "re": 5},
        {"kind": "command", "from": "powerwaked", "to": "h1", "command": "rm -rf"},
        {"kind": "command", "from": "powerwaked", "to": "h1", "command": "nap", "action": "reboot"},
        {"kind": "command", "from": "powerwaked", "to": "h1", "command": "nap", "wake_at": "tomorrow"},
        {"kind": "command-ack", "from": "h1", "re": "ab", "ok": "yes"},
        {"kind": "request", "from": "admin", "host": "h1", "method": "telnet"},
        {"kind": "request", "from": "admin", "more": -1},
        {"kind": "request", "from": "admin", "ttl": 0},
        {"kind": "read", "from": "admin"},
        {"kind": "gossip", "from": "admin"},
    ],
)
def test_acks_commands_and_api_bodies_are_checked_too(message):
    with pytest.raises(P.ProtocolError):
        _accept(message)


def test_non_finite_numbers_are_refused_everywhere():
    for text in ("NaN", "Infinity", "-Infinity", "1e999"):
        body = ('{"from":"h1","kind":"report","load":%s,"nonce":"ab","ts":%f,"v":1}' % (text, 1e9)).encode()
        data = P.MAGIC + b" " + P._mac(KEY, body).encode() + b" " + body
        with pytest.raises(P.ProtocolError, match="strict JSON"):
            P.decode(KEY, data)
    with pytest.raises(P.ProtocolError, match="timestamp"):
        P.ReplayGuard().check({"from": "h1", "nonce": "ab", "ts": float("nan")}, 1000.0)


def test_deeply_nested_json_is_refused_not_a_recursion_crash():
    body = (
        '{"from":"h1","kind":"report","detail":%s,"nonce":"ab","ts":1,"v":1}' % ("[" * 100000 + "]" * 100000)
    ).encode()
    data = P.MAGIC + b" " + P._mac(KEY, body).encode() + b" " + body
    with pytest.raises(P.ProtocolError):
        P.decode(KEY, data[: P.MAX_MESSAGE])  # the size cap holds first
    P.MAX_MESSAGE, old = 10**7, P.MAX_MESSAGE
    try:
        with pytest.raises(P.ProtocolError, match="strict JSON"):
            P.decode(KEY, data)
    finally:
        P.MAX_MESSAGE = old


def test_the_replay_floor_restored_after_a_restart_refuses_older_messages():
    guard = P.ReplayGuard(max_skew=120.0)
    guard.check({"from": "h1", "nonce": "a1", "ts": 1000.0}, 1000.0)
    saved = dict(guard.newest)
    restarted = P.ReplayGuard(max_skew=120.0)
    restarted.restore(saved)
    with pytest.raises(P.ProtocolError, match="restart"):
        restarted.check({"from": "h1", "nonce": "a1", "ts": 1000.0}, 1010.0)
    restarted.check({"from": "h1", "nonce": "a2", "ts": 1000.5}, 1010.0)
    restarted.prune(2000.0)  # quiet for longer than the skew window: the clock check covers it now
    assert restarted.newest == {} and restarted.floor == {} and restarted.senders() == 0


def test_the_engine_sends_only_what_the_schema_takes():
    reporter = P.FleetReporter.__new__(P.FleetReporter)
    reporter.host, reporter.state, reporter.stage, reporter.heartbeat = "h1", "awake", None, 30.0
    reporter.root, reporter.control_path, reporter._facts = None, None, {"macs": [], "load": None}
    message = reporter._message({"event": "warn", "stage": 1, "reason": "x" * 5000, "ratio": float("nan")})
    checked = _accept(message)
    assert len(checked["detail"]["reason"]) == 1024 and "ratio" not in checked["detail"]
