"""powerwaked's /metrics and energy accounting: promtool-clean text, who may read it, wake durations,
and energy figures that match the time spent in each state (FakeClock), kept across a restart."""

import gc
import logging
import shutil
import subprocess

import pytest
from server_fakes import SECRET, Sent, server_config
from test_server_api import free_port

from powernap.clock import FakeClock
from powernap.prometheus import COUNTER, GAUGE, HISTOGRAM, Histogram, MetricsRegistry, format_labels
from powernap.server.api import ApiError, PlainText, route
from powernap.server.config import load_config
from powernap.server.daemon import Server
from powernap.server.energy import JOULES_PER_KWH

LOG = logging.getLogger("test.metrics")
HOSTS = "[host.web1]\nmac = 52:54:00:00:00:01\ngroups = web\n[host.db1]\nmac = 52:54:00:00:00:02\ngroups = db\n"


def promtool_check(text):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (tools/system-packages.txt)"
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def make_server(tmp_path, extra="", clock=None):
    """A Server on a free port of 127.0.0.1; its magic packets are recorded, never sent."""
    config = server_config(tmp_path, "port = %d\n" % free_port() + HOSTS + extra)
    server = Server(config, clock=clock or FakeClock(), log=LOG, api=False)
    server.fleet.send_wol = Sent().send_wol
    return server


def report(server, host, state, **fields):
    """Apply a report as the daemon does after verifying it (the signature path has its own tests)."""
    body = {"kind": "report", "from": host, "host": host, "state": state, "event": "heartbeat",
            "ts": server.clock.wall(), "interval": 3600.0}  # fmt: skip
    body.update(fields)
    return server.registry.accept_report(body, ("127.0.0.1", 40000), server.clock.wall())


def value(text, sample):
    """The value of one sample line (``name{labels}``) in exposition text."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split(" ")[-1])
    raise AssertionError("no sample %s in:\n%s" % (sample, text[:3000]))


def test_metrics_are_promtool_clean_and_carry_states_transitions_wakes_and_energy(tmp_path):
    clock = FakeClock()
    server = make_server(tmp_path, clock=clock)
    server.start()
    # Start-up's long-lived objects are frozen out of the collector's full passes (bench_policy: the tick's p99).
    assert gc.get_freeze_count() >= len(server.registry)
    try:
        report(server, "web1", "awake")
        clock.advance(100)
        report(server, "web1", "suspending")
        clock.advance(30)
        server.registry.tick(clock.wall())  # quiet after suspending: asleep
        server.fleet.wake(server.registry.get("web1"), "test")
        clock.advance(12.5)
        report(server, "web1", "awake")
        server.fleet.tick()
        text = server.api_metrics()
    finally:
        server.shutdown()
    promtool_check(text)
    assert value(text, 'powernap_host_state{host="web1",state="awake"}') == 1
    assert value(text, 'powernap_host_state{host="web1",state="asleep"}') == 0
    assert value(text, 'powernap_host_state{host="db1",state="unknown"}') == 1
    assert value(text, 'powernap_host_transitions_total{host="web1"}') == 5  # unknown>awake>susp>asleep>waking>awake
    assert value(text, 'powernap_transitions_total{from="waking",to="awake"}') == 1
    assert value(text, 'powernap_wake_duration_seconds_count{method="wol"}') == 1
    assert value(text, 'powernap_wake_duration_seconds_sum{method="wol"}') == pytest.approx(12.5)
    assert value(text, 'powernap_wake_duration_seconds_bucket{method="wol",le="10"}') == 0
    assert value(text, 'powernap_wake_duration_seconds_bucket{method="wol",le="20"}') == 1
    assert value(text, 'powernap_host_wakes_total{host="web1"}') == 1
    assert value(text, 'powernap_wake_failures_total{reason="unconfirmed"}') == 0
    assert "# TYPE powernap_host_energy_saved_joules_total counter" in text
    assert value(text, 'powernap_host_power_state_seconds_total{host="web1",power_state="suspended"}') == 30
    assert value(text, "powernap_fleet_energy_saved_joules_total") > 0


def test_an_unconfirmed_wake_and_an_unsendable_one_count_as_failures(tmp_path):
    clock = FakeClock()
    server = make_server(tmp_path, extra="[host.nomac]\nwake = wol\n", clock=clock)
    server.start()
    try:
        report(server, "web1", "suspending")
        clock.advance(30)
        server.registry.tick(clock.wall())
        server.fleet.wake(server.registry.get("web1"), "test", method="wol")
        server.fleet.wake(server.registry.get("nomac"), "test")
        for _tick in range(3):
            clock.advance(30)
            server.fleet.tick()
        text = server.api_metrics()
    finally:
        server.shutdown()
    promtool_check(text)
    assert value(text, 'powernap_wake_failures_total{reason="unconfirmed"}') == 1
    assert value(text, 'powernap_wake_failures_total{reason="unsent"}') == 1


def test_label_values_are_escaped_and_a_failing_collector_costs_only_its_family():
    metrics = MetricsRegistry()
    hist = Histogram((1, 5))
    hist.observe(0.5)
    hist.observe(7)
    metrics.register("x_odd", GAUGE, 'Odd "labels"\\ here.', lambda: [({"host": 'a"b\\c\nd'}, 1.5)])
    metrics.register("x_broken_total", COUNTER, "Raises.", lambda: 1 / 0)
    metrics.register("x_seconds", HISTOGRAM, "A histogram.", lambda: [({}, hist)])
    text = metrics.render()
    assert 'x_odd{host="a\\"b\\\\c\\nd"} 1.5' in text
    assert "x_broken_total" not in text
    assert "powernap_metrics_collector_errors_total 1" in text
    assert 'x_seconds_bucket{le="1"} 1\nx_seconds_bucket{le="5"} 1\nx_seconds_bucket{le="+Inf"} 2' in text
    promtool_check(text)
    with pytest.raises(ValueError):
        metrics.register("x_odd", GAUGE, "again", list)
    with pytest.raises(ValueError):
        metrics.register("x_count", COUNTER, "a counter without _total", list)
    with pytest.raises(ValueError):
        format_labels({"bad-name": "x"})


def _route_metrics(server, client, auth=None):
    return route(server, "GET", "/metrics", b"", auth, (client, 40000))


def test_metrics_are_read_from_loopback_and_elsewhere_only_with_the_bearer_token(tmp_path):
    open_server = make_server(tmp_path)
    assert isinstance(_route_metrics(open_server, "127.0.0.1"), PlainText)
    assert isinstance(_route_metrics(open_server, "::1"), PlainText)
    assert isinstance(_route_metrics(open_server, "::ffff:127.0.0.1"), PlainText)
    with pytest.raises(ApiError) as refused:
        _route_metrics(open_server, "192.0.2.7")
    assert refused.value.status == 403
    token = "scrape-token-0123456789"
    server = make_server(tmp_path, extra="[metrics]\nlocal = no\ntoken = %s\n" % token)
    for client, auth in (("127.0.0.1", None), ("192.0.2.7", None), ("192.0.2.7", "Bearer wrong"),
                         ("192.0.2.7", "Basic " + token), ("192.0.2.7", "Bearer " + token[:-1])):  # fmt: skip
        with pytest.raises(ApiError) as denied:
            _route_metrics(server, client, auth)
        assert denied.value.status == 401 and token not in str(denied.value)
    assert "powernap_host_state" in _route_metrics(server, "192.0.2.7", "Bearer " + token)
    with pytest.raises(ApiError) as wrong_method:
        route(server, "POST", "/metrics", b"", None, ("127.0.0.1", 1))
    assert wrong_method.value.status == 405
    off = make_server(tmp_path, extra="[metrics]\nenabled = no\n")
    with pytest.raises(ApiError) as gone:
        _route_metrics(off, "127.0.0.1")
    assert gone.value.status == 404


def test_the_metrics_token_is_a_secret_and_its_file_must_be_private(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("file-token-abcdef0123\n")
    token_file.chmod(0o640)
    path = tmp_path / "powerwaked.conf"
    head = "[powerwaked]\nsecret = %s\nlisten = 127.0.0.1\n" % SECRET
    path.write_text(head + "[metrics]\ntoken_file = %s\n" % token_file)
    _config, errors = load_config([str(path)])
    assert any("token_file" in str(e) and "chmod 0600" in str(e) and str(e).startswith(str(path) + ":5")
               for e in errors), errors  # fmt: skip
    token_file.chmod(0o600)
    config, errors = load_config([str(path)])
    assert errors == [] and config.metrics["token"] == "file-token-abcdef0123"
    path.write_text(head + "[metrics]\ntoken = has space secret-part\n")
    _config, errors = load_config([str(path)])
    assert errors and all("secret-part" not in str(e) for e in errors)
    path.write_text(head + "[metrics]\ntoken = short-tok\n")
    _config, errors = load_config([str(path)])
    assert any("too short" in str(e) and "short-tok" not in str(e) for e in errors), errors


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[energy]\nwatts_idle = 300\n", "watts_idle (300) is more than watts_on (200)"),
        ("[energy]\nwatts_on = -1\n", "option 'watts_on'"),
        ("[energy]\ncurrency = a b\n", "currency"),
        ("[energy_profile.a]\nhosts = web1\n[energy_profile.b]\nhosts = web1\n", "already in [energy_profile.a]"),
        ("[energy_profile.a]\ngroups = web\nwatts_on = 50\n", "watts_idle (110) is more than watts_on (50)"),
    ],
)
def test_energy_options_are_checked_with_file_and_line(tmp_path, text, needle):
    path = tmp_path / "powerwaked.conf"
    path.write_text("[powerwaked]\nsecret = %s\nlisten = 127.0.0.1\n%s" % (SECRET, HOSTS + text))
    _config, errors = load_config([str(path)])
    assert any(needle in str(e) and str(e).startswith(str(path) + ":") for e in errors), [str(e) for e in errors]


ENERGY = (
    "[energy]\nwatts_on = 200\nwatts_idle = 100\nwatts_powersave = 80\nwatts_suspended = 5\nwatts_off = 2\n"
    "price_per_kwh = 0.30\ncurrency = EUR\n"
    "[energy_profile.big]\nhosts = db1\nwatts_on = 400\nwatts_suspended = 10\n"
)


def test_energy_saved_matches_the_time_in_each_state_and_survives_a_restart(tmp_path):
    clock = FakeClock()
    server = make_server(tmp_path, extra=ENERGY, clock=clock)
    server.start()
    plan = [("web1", "awake", 600), ("web1", "grace", 60), ("web1", "napping", 1200), ("web1", "suspending", 3600)]
    for host, state, seconds in plan:
        report(server, host, state)
        clock.advance(seconds)
    report(server, "db1", "awake")
    clock.advance(100)
    report(server, "db1", "powering-off")
    clock.advance(500)
    server.registry.save(clock.wall())
    server.shutdown()
    # The web1 figures: what (on - state) x time gives, counted by hand.
    web_saved = (200 - 100) * 60 + (200 - 80) * 1200 + (200 - 5) * 4200  # asleep while db1 ran 600 s more
    db_saved = (400 - 2) * 500  # its own profile: on 400 W, off from [energy]
    restarted = make_server(tmp_path, extra=ENERGY, clock=clock)
    restarted.start()
    try:
        web = restarted.api_host("web1")["energy"]
        assert web["seconds"] == {"on": 600, "idle": 60, "powersave": 1200, "suspended": 4200, "off": 0}
        assert web["saved_joules"] == pytest.approx(web_saved, rel=0.01)
        assert web["saved_kwh"] == pytest.approx(web_saved / JOULES_PER_KWH, rel=0.01)
        assert web["saved_cost"] == pytest.approx(web_saved / JOULES_PER_KWH * 0.30, rel=0.01)
        assert web["currency"] == "EUR"
        db = restarted.api_host("db1")["energy"]
        assert db["seconds"]["off"] == 500 and db["saved_joules"] == pytest.approx(db_saved, rel=0.01)
        status = restarted.api_status()["energy"]
        assert status["saved_joules"] == pytest.approx(web_saved + db_saved, rel=0.01)
        assert status["price_per_kwh"] == 0.30
        assert restarted.api_group("web")["energy"]["saved_joules"] == pytest.approx(web_saved, rel=0.01)
        text = restarted.api_metrics()
        promtool_check(text)
        assert value(text, 'powernap_host_energy_saved_joules_total{host="web1"}') == pytest.approx(web_saved, 0.01)
        assert value(text, 'powernap_group_energy_saved_joules_total{group="db"}') == pytest.approx(db_saved, 0.01)
        assert value(text, 'powernap_fleet_energy_cost_saved_total{currency="EUR"}') == pytest.approx(
            (web_saved + db_saved) / JOULES_PER_KWH * 0.30, rel=0.01
        )
        # The closed states' accumulators came back from the saved record.
        assert restarted.registry.get("web1").energy["powersave"] == 1200
    finally:
        restarted.shutdown()


def test_the_running_state_counts_when_read_and_the_past_is_kept_in_the_record(tmp_path):
    clock = FakeClock()
    server = make_server(tmp_path, extra=ENERGY, clock=clock)
    report(server, "web1", "napping")
    clock.advance(1000)
    record = server.registry.get("web1")
    assert record.energy == {}  # nothing closed yet
    assert server.energy.figures(record, clock.wall())["powersave"] == 1000
    report(server, "web1", "awake")
    assert record.energy["powersave"] == 1000 and record.energy["saved_joules"] == 120 * 1000
    before = server.energy.figures(record, clock.wall())["saved_joules"]
    clock.advance(50)
    assert server.energy.figures(record, clock.wall())["saved_joules"] == before  # on saves nothing


def test_the_policy_gates_queue_decisions_and_vetoes_are_in_the_metrics(tmp_path):
    """A rate limit of 1 a minute: the second and third wakes wait; a recommend-only group's nap is a decision."""
    clock = FakeClock()
    hosts = "".join("[host.h%d]\nmac = 52:54:00:00:01:%02d\ngroups = farm\n" % (n, n) for n in range(4))
    extra = hosts + "[group.farm]\nwake_rate = 1\nmode = recommend\n"
    server = make_server(tmp_path, extra=extra, clock=clock)
    server.start()
    try:
        for n in range(3):
            report(server, "h%d" % n, "asleep")
        for n in range(3):
            server.rails.wake(server.registry.get("h%d" % n), "test", source="api")
        report(server, "h3", "awake")
        server.rails.nap(server.registry.get("h3"), "suspend", "cluster test", source="cluster")
        server.rails.veto("farm", "admin", 600, "batch", clock.wall())
        text = server.api_metrics()
    finally:
        server.shutdown()
    promtool_check(text)
    assert value(text, 'powernap_policy_queue_length{kind="wake"}') == 2
    assert value(text, 'powernap_policy_decisions_total{outcome="wakes"}') == 1
    assert value(text, 'powernap_policy_decisions_total{outcome="queued"}') == 2
    assert value(text, "powernap_policy_decisions_pending") == 1
    assert value(text, 'powernap_policy_vetoes{group="farm"}') == 1


def test_wake_health_is_in_the_metrics(tmp_path):
    clock = FakeClock()
    server = make_server(tmp_path, clock=clock)
    server.start()
    try:
        report(server, "web1", "suspending", event="action-start")
        clock.advance(30)
        server.registry.tick(clock.wall())
        server.fleet.wake(server.registry.get("web1"), "test")
        clock.advance(46)  # not confirmed within confirm_timeout (45 s): failed, marked
        server.fleet.tick()
        text = server.api_metrics()
    finally:
        server.shutdown()
    promtool_check(text)
    assert value(text, 'powernap_host_wake_marked{host="web1"}') == 1
    assert value(text, 'powernap_host_wake_marked{host="db1"}') == 0
    assert value(text, 'powernap_wake_health_hosts{result="failed"}') == 1
    assert value(text, 'powernap_wake_health_hosts{result="never"}') == 1
