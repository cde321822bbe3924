"""Config loading and validation: every error as FILE:LINE, drop-ins, stage order, zero monitors."""

import os

import pytest

from powernap.cli import main as cli_main
from powernap.config import load_config, schema
from powernap.ini import config_files

GOOD = """\
[powernap]
interval = 2s
settle = 5m
grace = 90s

[monitor.ssh]
type = tcp
ports = 22

[monitor.load]
threshold = 1.5

[stage.1]
after = 10m
action = powersave

[stage.2]
after = 2h
action = suspend

[stage.3]
after = 1d
action = poweroff
warn = 5m

[actions]
suspend_command = /usr/local/bin/lab-suspend --host me
"""


def write(tmp_path, text, name="powernap.conf"):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def messages(errors):
    return [str(e) for e in errors]


def test_good_config_loads_with_types_defaults_and_resolved_warns(tmp_path):
    config, errors = load_config([write(tmp_path, GOOD)])
    assert errors == []
    assert config.globals["interval"] == 2.0 and config.globals["settle"] == 300.0
    assert config.globals["min_sleep"] == 1200.0  # default
    assert [(s.index, s.after, s.action, s.warn) for s in config.stages] == [
        (1, 600.0, "powersave", 0.0),
        (2, 7200.0, "suspend", 90.0),
        (3, 86400.0, "poweroff", 300.0),
    ]
    assert [(m.name, m.type) for m in config.monitors] == [("ssh", "tcp"), ("load", "load")]
    assert config.actions["suspend_command"] == "/usr/local/bin/lab-suspend --host me"
    assert config.actions["poweroff_command"] == "systemctl poweroff"


def test_dropins_override_per_key_in_name_order(tmp_path):
    main = write(tmp_path, GOOD)
    write(tmp_path, "[stage.2]\nafter = 3h\n", "conf.d/10-later.conf")
    write(tmp_path, "[stage.2]\nafter = 4h\n[monitor.load]\nenabled = no\n", "conf.d/20-last.conf")
    config, errors = load_config(config_files(main))
    assert errors == []
    assert config.stages[1].after == 4 * 3600
    assert [m.name for m in config.enabled_monitors] == ["ssh"]


def test_every_error_is_reported_with_file_and_line(tmp_path):
    path = write(
        tmp_path,
        """\
[powernap]
interval = fast
colour = blue

[monitor.web]
type = tcp
ports = 80-20

[monitor.proc]
type = process
regex = ([unclosed

[monitor.x]
type = telepathy

[stage.1]
after = 2h
action = powersave

[stage.2]
after = 1h
action = suspend

[stage.two]
after = 3h
action = poweroff

[stages]
foo = bar
""",
    )
    config, errors = load_config([path])
    got = messages(errors)
    expected_lines = {
        2: "option 'interval'",
        3: "unknown option 'colour'",
        7: "port range '80-20' runs backwards",
        11: "bad regular expression",
        14: "unknown monitor type 'telepathy'",
        21: "stage.2 after 3600s is not later than stage.1 after 7200s",
        24: "stage sections are [stage.N]",
        28: "unknown section [stages]",
    }
    for line, text in expected_lines.items():
        assert any(m.startswith("%s:%d: " % (path, line)) and text in m for m in got), (line, text, got)
    assert len(got) == len(expected_lines)


def test_stage_rules(tmp_path):
    path = write(
        tmp_path,
        """\
[monitor.load]
[stage.1]
after = 10m
action = powersave
[stage.2]
after = 20m
action = poweroff
[stage.3]
after = 30m
action = powersave
warn = 1h
[stage.4]
after = 40m
action = custom
""",
    )
    got = messages(load_config([path])[1])
    assert "%s:11: warn 3600s is longer than after 1800s" % path in got
    assert "%s:9: stage.3 can never run: stage.2 powers the host off" % path in got
    assert "%s:9: stage.3 repeats powersave (already stage.1)" % path in got
    assert any(m.startswith("%s:14: action custom needs a command" % path) for m in got)


def test_zero_monitors_is_an_error_unless_allowed(tmp_path):
    stages = "[stage.1]\nafter = 10m\naction = suspend\n"
    got = messages(load_config([write(tmp_path, stages)])[1])
    assert len(got) == 1 and "no enabled [monitor.NAME] section" in got[0]
    config, errors = load_config([write(tmp_path, "[powernap]\nallow_no_monitors = yes\n" + stages)])
    assert errors == [] and config.monitors == []
    got = messages(load_config([write(tmp_path, "[monitor.load]\nenabled = no\n" + stages)])[1])
    assert any("no enabled [monitor.NAME]" in m for m in got)


def test_no_stage_and_unreadable_file(tmp_path):
    got = messages(load_config([write(tmp_path, "[monitor.load]\n"), str(tmp_path / "missing.conf")])[1])
    assert any("missing.conf: cannot read" in m for m in got)
    assert any("no [stage.N] section" in m for m in got)


def test_check_config_cli_prints_errors_and_exit_status(tmp_path, capsys):
    bad = write(tmp_path, GOOD.replace("after = 2h", "after = soon"), "bad/powernap.conf")
    assert cli_main(["check-config", bad]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["%s:18: option 'after': 'soon' is not a duration (e.g. 90s, 10m, 2h, 1d)" % bad]
    good = write(tmp_path, GOOD, "good/powernap.conf")
    assert cli_main(["check-config", good]) == 0
    assert capsys.readouterr().out == (
        "%s: OK, 1 file(s); 2 monitor(s) (2 enabled), 3 stage(s) (1 powersave after 10m00s, 2 suspend after "
        "2h00m, 3 poweroff after 24h00m), 0 tweak(s)\n" % good
    )


def test_check_config_default_path_follows_root(tmp_path, capsys):
    write(tmp_path, GOOD, "etc/powernap/powernap.conf")
    write(tmp_path, "[stage.9]\nafter = 1s\naction = nap\n", "etc/powernap/conf.d/50-bad.conf")
    assert cli_main(["--root", str(tmp_path), "check-config"]) == 1
    out = capsys.readouterr().out
    assert os.path.join(str(tmp_path), "etc/powernap/conf.d/50-bad.conf:3: option 'action'") in out


def test_schema_covers_sections_and_registered_types(capsys):
    data = schema()
    assert set(data["section"]) >= {"powernap", "stage", "actions", "server"}
    assert data["section"]["stage"]["options"]["after"]["required"] is True
    assert data["section"]["server"]["options"]["token"]["no_log"] is True
    assert {"tcp", "load", "process"} <= set(data["monitor"])
    assert cli_main(["schema", "--markdown"]) == 0
    text = capsys.readouterr().out
    assert "#### [stage.N]" in text and "| `suspend_command` |" in text


@pytest.mark.parametrize("text", ["0", "-5s", "1x"])
def test_bad_intervals_are_rejected(tmp_path, text):
    path = write(tmp_path, "[powernap]\ninterval = %s\n[monitor.load]\n[stage.1]\nafter=1m\naction=powersave\n" % text)
    got = messages(load_config([path])[1])
    assert len(got) == 1 and got[0].startswith("%s:2: option 'interval'" % path)


def test_duplicate_stage_numbers_are_refused_naming_both_places(tmp_path):
    main = write(tmp_path, GOOD)
    dropin = write(tmp_path, "[stage.02]\nafter = 3h\naction = hibernate\n", "conf.d/50-more.conf")
    got = messages(load_config(config_files(main))[1])
    assert got == ["%s:1: [stage.02] repeats stage number 2 (already [stage.2] at %s:17)" % (dropin, main)]
    got = messages(load_config([write(tmp_path, GOOD + "[stage.²]\nafter = 3d\naction = poweroff\n", "u.conf")])[1])
    assert any("stage sections are [stage.N] with N a whole number from 1, not '²'" in m for m in got)


WARN_SWALLOWS = """\
[monitor.load]
[stage.1]
after = 10m
action = powersave
[stage.2]
after = 15m
action = suspend
warn = 10m
"""


def test_a_warn_reaching_back_before_the_previous_stage_is_refused(tmp_path):
    path = write(tmp_path, WARN_SWALLOWS)
    got = messages(load_config([path])[1])
    assert got == [
        "%s:8: stage.2 warn 600s starts its warning at 300s idle, not after stage.1 fires at 600s: "
        "stage.1 would never fire; make warn shorter than 300s or move the stages apart" % path
    ]
    # The default warn ([powernap] grace) is checked too, located at the stage's 'after'.
    path = write(tmp_path, "[powernap]\ngrace = 6m\n" + WARN_SWALLOWS.replace("warn = 10m\n", ""))
    got = messages(load_config([path])[1])
    assert len(got) == 1 and got[0].startswith("%s:8: stage.2 warn 360s ([powernap] grace) starts" % path)
    # A warning that starts after the previous stage fired is fine.
    assert load_config([write(tmp_path, WARN_SWALLOWS.replace("warn = 10m", "warn = 4m"))])[1] == []


def test_the_state_machine_would_swallow_the_stage_check_config_refuses():
    """Why item 7 is refused rather than tolerated: the machine fires the highest stage in grace."""
    from powernap.clock import FakeClock
    from powernap.config import Stage
    from powernap.state import NapMachine

    clock = FakeClock()
    machine = NapMachine([Stage(1, 600, "powersave", 0), Stage(2, 900, "suspend", 600)], clock, settle=0)
    fired = []
    for _unused in range(1000):
        clock.advance(1)
        fired += [(d.kind, d.stage.index) for d in machine.tick()]
    assert ("apply", 1) not in fired and ("act", 2) in fired


@pytest.mark.parametrize("url", ["tcp://fleet:7490", "udp://", "ftp://fleet"])
def test_check_config_refuses_a_server_url_the_reporter_cannot_use(tmp_path, capsys, url):
    path = write(tmp_path, GOOD + "\n[server]\nurl = %s\ntoken = t0ken\n" % url)
    assert cli_main(["check-config", path]) == 1
    out = capsys.readouterr().out
    assert "option 'url'" in out and "use udp://HOST[:PORT], http://HOST[:PORT] or https://HOST[:PORT]" in out
    assert "t0ken" not in out


@pytest.mark.parametrize("url", ["udp://fleet:7490", "http://fleet:7490", "https://fleet:8443", "fleet", ""])
def test_check_config_takes_every_server_url_the_reporter_uses(tmp_path, url):
    config, errors = load_config([write(tmp_path, GOOD + "\n[server]\nurl = %s\n" % url)])
    assert errors == []
