"""The command line as a user meets it: wrappers, pipes, option placement, help, scripted status."""

import json
import os
import subprocess
import sys

import pytest

from powernap.cli import build_parser
from powernap.cli import main as cli_main

ENGINE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ENGINE, "bin")


def run(argv, **kwargs):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.update(kwargs.pop("env", {}))
    kwargs.setdefault("timeout", 60)
    return subprocess.run(argv, capture_output=True, text=True, check=False, env=env, **kwargs)


@pytest.mark.parametrize("script", sorted(os.listdir(BIN)))
def test_every_wrapper_runs_where_only_python3_exists(script, tmp_path):
    """A stock Debian has python3 but no 'python': the wrappers must still run from a checkout."""
    only = tmp_path / "bin"
    only.mkdir()
    os.symlink(sys.executable, str(only / "python3"))
    result = run([os.path.join(BIN, script), "--help"], env={"PATH": str(only)})
    assert result.returncode == 0, result.stderr
    assert "usage: %s" % script in result.stdout


def test_wrappers_stay_python_once_the_role_sets_the_interpreter(tmp_path):
    """The role replaces the first line with '#!<python>': the rest must be a valid Python program."""
    for script in sorted(os.listdir(BIN)):
        with open(os.path.join(BIN, script)) as handle:
            text = handle.read()
        assert text.startswith("#!/bin/sh\n")
        compile("#!%s\n" % sys.executable + text.split("\n", 1)[1], script, "exec")


def into_closed_pipe(argv):
    """Run with stdout a pipe whose reader is already gone (``| head -1`` after its line, made certain)."""
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    try:
        return subprocess.run(
            argv,
            stdout=write_fd,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
            env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
        )
    finally:
        os.close(write_fd)


@pytest.mark.parametrize("argv", [["schema", "--markdown"], ["schema"], ["status", "--json"]])
def test_a_closed_pipe_ends_quietly(argv, tmp_path):
    """`powernap schema --markdown | head -1`: no BrokenPipeError traceback, SIGPIPE's exit status."""
    result = into_closed_pipe([sys.executable, os.path.join(BIN, "powernap"), "--root", str(tmp_path)] + argv)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode == 141, result


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_options_work_before_and_after_the_subcommand(where, tmp_path, capsys):
    conf = tmp_path / "x.conf"
    conf.write_text("[monitor.load]\n[stage.1]\nafter = 10m\naction = powersave\n")
    options = ["--root", str(tmp_path), "--config", str(conf), "--log-level", "debug"]
    argv = options + ["check-config"] if where == "before" else ["check-config"] + options
    args = build_parser().parse_args(argv)
    assert (args.root, args.config, args.log_level) == (str(tmp_path), str(conf), "debug")
    assert cli_main(argv) == 0
    assert capsys.readouterr().out.startswith("%s: OK, 1 file(s); 1 monitor(s)" % conf)


def test_the_global_option_defaults_survive_a_subcommand():
    args = build_parser().parse_args(["--root", "/r", "status"])
    assert args.root == "/r" and args.config is None and args.log_level is None


def test_every_subcommand_has_a_description_in_its_help():
    from powernap.cli import SUBCOMMANDS

    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices  # the subcommands argparse knows
    assert set(choices) == set(SUBCOMMANDS)
    for name, sub in choices.items():
        help_text = sub.format_help()
        assert SUBCOMMANDS[name][1].split(".")[0][:40] in " ".join(help_text.split()), name
        assert "--config" in help_text and "--root" in help_text


def test_status_json_with_the_daemon_down_prints_a_json_error(tmp_path, capsys):
    assert cli_main(["--root", str(tmp_path), "status", "--json"]) == 1
    captured = capsys.readouterr()
    reply = json.loads(captured.out)
    assert reply["schema"] == 1 and reply["state"] is None
    assert "cannot reach powernapd" in reply["error"] and str(tmp_path) in reply["error"]
    assert "cannot reach powernapd" in captured.err
    # Without --json the error stays on stderr only.
    assert cli_main(["--root", str(tmp_path), "status"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "cannot reach powernapd" in captured.err


def test_status_never_blocks_on_a_fifo_in_the_config(tmp_path):
    """A FIFO named *.conf in conf.d: `status` and `check-config` refuse it at once instead of hanging."""
    etc = tmp_path / "etc/powernap"
    (etc / "conf.d").mkdir(parents=True)
    (etc / "powernap.conf").write_text("[monitor.load]\n[stage.1]\nafter = 10m\naction = powersave\n")
    os.mkfifo(str(etc / "conf.d/50-fifo.conf"))
    powernap = [sys.executable, os.path.join(BIN, "powernap"), "--root", str(tmp_path)]
    result = run(powernap + ["status", "--json"], timeout=20)
    assert result.returncode == 1 and "cannot reach powernapd" in json.loads(result.stdout)["error"]
    result = run(powernap + ["check-config"], timeout=20)
    assert result.returncode == 1
    assert result.stdout == "%s/conf.d/50-fifo.conf: cannot read: not a regular file (a FIFO)\n" % etc


def status_dict(**changes):
    status = {
        "host": "h1",
        "state": "napping",
        "dry_run": False,
        "stage": {"index": 1, "action": "powersave", "since": 0},
        "idle_seconds": 700,
        "settle_remaining": 0,
        "next_action": {"stage": 2, "action": "suspend", "in_seconds": 60},
        "next_wake": None,
        "powersave": {"active": True, "tweaks": []},
        "monitors": [],
        "verdict": {"denied": {}},
        "stages": [{"index": 1, "after": 600, "action": "powersave", "warn": 0}],
    }
    status.update(changes)
    return status


def test_powersave_is_not_called_active_when_no_tweak_is_in_effect():
    from powernap.cli import format_status

    def line(tweaks):
        text = format_status(status_dict(powersave={"active": True, "tweaks": tweaks}))
        return next(x for x in text.splitlines() if x.startswith("powersave:"))

    assert line([]) == "powersave: stage in effect, but no tweak applied (no tweak configured)"
    skipped = {"name": "gov", "status": "skipped", "detail": "not allowed"}
    assert line([skipped]) == "powersave: stage in effect, but no tweak applied (1 skipped)"
    applied = {"name": "nmi", "status": "applied", "detail": "1 change(s)"}
    assert line([applied, skipped]) == "powersave: active, 1 tweak(s) in effect (1 skipped)"
    text = format_status(status_dict(powersave={"active": False, "tweaks": []}))
    assert "powersave: off" in text


def test_multi_line_errors_stay_on_one_row_of_the_status_table():
    from powernap.cli import format_status

    error = (
        "systemctl list-timers failed (exit 1): Failed to connect to bus: No such file or directory\n"
        "Hint: run with --user?\n\n  see journalctl -xe"
    )
    monitors = [
        {"name": "timers", "type": "timers", "active": True, "error": error, "reason": None, "last_activity": None},
        {"name": "ssh", "type": "tcp", "active": False, "error": None, "reason": None, "last_activity": None},
    ]
    text = format_status(
        status_dict(
            state="awake",
            stage=None,
            next_action={"stage": 1, "action": "powersave", "in_seconds": 2},
            monitors=monitors,
            verdict={"denied": {"suspend": "virtual machine\n(kvm)"}},
        )
    )
    lines = text.splitlines()
    rows = [x for x in lines if x.startswith("  ")]
    assert len(rows) == 2 and rows[0].startswith("  timers") and "Hint: run with --user? see journalctl -xe" in rows[0]
    assert lines[-1] == "denied:    suspend (virtual machine (kvm))"
    # The failing monitor pins the host awake: no countdown.
    assert "next:      stage 1 powersave once idle for 10m00s (now busy: timers)" in lines
