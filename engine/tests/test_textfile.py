"""The engine's node_exporter textfile: written by the running daemon (FakeClock), atomically, promtool-clean."""

import logging
import os

import pytest
from test_daemon_loop import CONFIG, step
from test_daemon_process import make_root
from test_server_metrics import promtool_check, value

from powernap import textfile
from powernap.clock import FakeClock
from powernap.daemon import Daemon
from powernap.sysroot import SysRoot

TEXTFILE = "[powernap]\nmetrics_textfile_dir = /var/lib/node-exporter\nmetrics_textfile_interval = 10s\n"


@pytest.fixture
def daemon(tmp_path):
    root = make_root(tmp_path)
    (root / "var/lib/node-exporter").mkdir(parents=True)
    (root / "etc/powernap/powernap.conf").write_text(CONFIG.replace("[powernap]\n", TEXTFILE))
    clock = FakeClock()
    d = Daemon(
        [str(root / "etc/powernap/powernap.conf")],
        SysRoot(str(root)),
        clock=clock,
        dry_run=True,
        log=logging.getLogger("powernap-test-textfile"),
    )
    d.start()
    try:
        yield d, clock, root / "var/lib/node-exporter" / textfile.FILENAME
    finally:
        d.shutdown()


def test_the_daemon_writes_its_state_stage_idle_time_and_monitors(daemon):
    d, clock, path = daemon
    step(d, clock)
    text = path.read_text()
    promtool_check(text)
    assert value(text, 'powernap_engine_state{state="awake"}') == 1
    assert value(text, 'powernap_engine_stage{action=""}') == 0
    assert value(text, 'powernap_engine_monitor_active{monitor="work",type="process"}') == 0
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"  # node_exporter reads it as another user
    step(d, clock, times=15)  # stage 1 (powersave, after 10 s) fires: the event rewrites the file at once
    text = path.read_text()
    promtool_check(text)
    assert value(text, 'powernap_engine_state{state="napping"}') == 1
    assert value(text, 'powernap_engine_stage{action="powersave"}') == 1
    assert value(text, "powernap_engine_powersave_active") == 1
    idle_then = value(text, "powernap_engine_idle_seconds")
    assert idle_then >= 10
    step(d, clock, seconds=11)  # nothing happens but the interval passes: a periodic rewrite
    assert value(path.read_text(), "powernap_engine_idle_seconds") >= idle_then + 11
    # Replaced by rename in the same directory: no temporary file is left behind.
    assert sorted(os.listdir(path.parent)) == [textfile.FILENAME]


def test_a_missing_directory_is_logged_once_and_never_stops_the_engine(tmp_path, caplog):
    root = make_root(tmp_path)
    (root / "etc/powernap/powernap.conf").write_text(CONFIG.replace("[powernap]\n", TEXTFILE))
    clock = FakeClock()
    d = Daemon([str(root / "etc/powernap/powernap.conf")], SysRoot(str(root)), clock=clock, dry_run=True,
               log=logging.getLogger("powernap-test-textfile"))  # fmt: skip
    d.start()
    try:
        with caplog.at_level(logging.WARNING):
            step(d, clock, seconds=11, times=3)
        assert d.machine is not None
        warnings = [r for r in caplog.records if "metrics textfile" in r.getMessage()]
        assert len(warnings) == 1 and not (root / "var/lib/node-exporter").exists()
    finally:
        d.shutdown()


def test_the_textfile_option_is_checked(tmp_path):
    from powernap.config import load_config

    path = tmp_path / "powernap.conf"
    path.write_text("[powernap]\nmetrics_textfile_dir = relative/dir\n[monitor.l]\ntype = load\n")
    _config, errors = load_config([str(path)], SysRoot(str(tmp_path)))
    assert any("metrics_textfile_dir" in str(e) and str(e).startswith("%s:2" % path) for e in errors), errors


def test_monitor_names_are_escaped():
    text = textfile.render(
        {"state": "grace", "stage": None, "idle_seconds": 5, "monitors": [
            {"name": 'a"b', "type": "x\\y", "active": True, "last_activity": 1700000000.5, "error": "boom"}]}
    )  # fmt: skip
    promtool_check(text)
    assert 'powernap_engine_monitor_active{monitor="a\\"b",type="x\\\\y"} 1' in text
    assert 'powernap_engine_monitor_last_activity_timestamp_seconds{monitor="a\\"b",type="x\\\\y"} 1700000000.5' in text
