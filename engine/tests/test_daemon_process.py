"""The real powernapd process, in dry run against a fake root, driven through its control socket.

idle → powersave → activity → awake, plus `now`, a refused reload (SIGHUP),
the single-instance lock and a clean SIGTERM, asserting the exact events the
daemon logged.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from powernap.control import ControlError, request

ENGINE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = """\
[powernap]
interval = 0.1s
settle = 0
wall = no

[monitor.work]
type = process
regex = powernap-test-busy

[stage.1]
after = 1s
action = powersave

[stage.2]
after = 1h
action = suspend

[tweak.nmi]
type = nmi_watchdog
"""
EVENT_RE = re.compile(r"event=(\S+)(.*)$")


def make_root(tmp_path):
    root = tmp_path / "root"
    for sub in ("proc/sys/kernel", "sys/power", "etc/powernap", "run"):
        (root / sub).mkdir(parents=True)
    (root / "proc/sys/kernel/nmi_watchdog").write_text("1\n")
    (root / "sys/power/state").write_text("freeze mem disk\n")
    (root / "etc/powernap/powernap.conf").write_text(CONFIG)
    return root


class Daemon:
    def __init__(self, root, log_path, dry_run=True):
        self.root = root
        self.log_path = log_path
        self.sock = str(root / "run/powernap/control.sock")
        self.log_file = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        env.pop("NOTIFY_SOCKET", None)
        env.pop("JOURNAL_STREAM", None)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                os.path.join(ENGINE, "bin", "powernapd"),
                "--root",
                str(root),
                "--log-level",
                "info",
            ]
            + (["--dry-run"] if dry_run else []),
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def ask(self, cmd, **kwargs):
        return request(self.sock, cmd, timeout=5, **kwargs)

    def wait_for(self, predicate, what, seconds=10.0):
        deadline = time.monotonic() + seconds
        last = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "daemon died:\n" + self.log()
            try:
                last = self.ask("status")
                if predicate(last):
                    return last
            except ControlError:
                pass
            time.sleep(0.05)
        raise AssertionError("timed out waiting for %s; last status %r\n%s" % (what, last, self.log()))

    def log(self):
        if not self.log_file.closed:
            self.log_file.flush()
        with open(self.log_path) as handle:
            return handle.read()

    def events(self):
        out = []
        for line in self.log().splitlines():
            match = EVENT_RE.search(line)
            if match:
                out.append((match.group(1), match.group(2).strip()))
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise
        self.log_file.close()
        return self.proc.returncode


@pytest.fixture
def daemon(tmp_path):
    root = make_root(tmp_path)
    d = Daemon(root, str(tmp_path / "powernapd.log"))
    try:
        d.wait_for(lambda s: True, "the control socket")
        yield d
    finally:
        d.stop()


def test_idle_powersave_activity_awake_through_the_socket(daemon, tmp_path):
    status = daemon.ask("status")
    for key in (
        "schema",
        "version",
        "host",
        "state",
        "stage",
        "idle_seconds",
        "settle_remaining",
        "next_action",
        "next_wake",
        "monitors",
        "powersave",
        "platform",
        "verdict",
        "dry_run",
        "config_files",
    ):
        assert key in status, key
    assert status["schema"] == 1 and status["dry_run"] is True
    assert status["monitors"][0]["name"] == "work" and status["monitors"][0]["type"] == "process"
    assert status["config_files"] == [str(daemon.root / "etc/powernap/powernap.conf")]
    assert "powersave" in status["verdict"]["allowed_actions"]
    json.dumps(status)  # the whole thing is plain JSON

    napping = daemon.wait_for(lambda s: s["state"] == "napping", "powersave")
    assert napping["stage"]["index"] == 1 and napping["stage"]["action"] == "powersave"
    assert napping["powersave"]["active"] is True
    assert [t["name"] for t in napping["powersave"]["tweaks"]] == ["nmi"]
    assert napping["next_action"]["stage"] == 2 and napping["next_action"]["action"] == "suspend"
    # Dry run: the tweak did not touch the fake /proc.
    assert (daemon.root / "proc/sys/kernel/nmi_watchdog").read_text() == "1\n"

    # Activity: a matching process appears in the fake /proc.
    (daemon.root / "proc/4242").mkdir()
    (daemon.root / "proc/4242/cmdline").write_bytes(b"/usr/bin/powernap-test-busy\0--now\0")
    awake = daemon.wait_for(lambda s: s["state"] == "awake", "activity to end powersave")
    assert awake["powersave"]["active"] is False and awake["stage"] is None
    work = awake["monitors"][0]
    assert work["active"] is True and "powernap-test-busy --now" in work["reason"] and work["error"] is None

    explain = "\n".join(daemon.ask("explain")["lines"])
    assert "Awake: the host is in use." in explain and "work (process)" in explain

    assert daemon.stop() == 0
    names = [name for name, _fields in daemon.events()]
    assert names == ["start", "powersave-apply", "activity", "powersave-restore", "stop"]
    fields = dict(daemon.events())
    assert fields["start"].startswith("version=") and 'stages="1:powersave 2:suspend"' in fields["start"]
    assert fields["powersave-apply"].startswith('stage=1 reason="idle for 1s"')
    assert fields["activity"].startswith('monitor=work reason="process 4242 running: /usr/bin/powernap-test-busy')
    assert fields["powersave-restore"].startswith('stage=1 reason="activity: work: process 4242 running')
    assert not os.path.exists(daemon.sock)


def test_now_wake_bad_reload_lock_and_sigterm(daemon, tmp_path):
    daemon.wait_for(lambda s: s["state"] == "napping", "powersave")
    # `now suspend` in dry run: logged, not run, then treated as a resume (awake, settling).
    result = daemon.ask("now", action="suspend")
    assert result["state"] in ("napping", "awake")
    after = daemon.wait_for(lambda s: s["state"] == "awake", "dry-run suspend to come back")
    assert after["powersave"]["active"] is False
    with pytest.raises(ControlError, match="unknown action 'nap'"):
        daemon.ask("now", action="nap")

    # A second instance is refused by the lock, and leaves the first untouched.
    second = subprocess.run(
        [sys.executable, os.path.join(ENGINE, "bin", "powernapd"), "--root", str(daemon.root), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert second.returncode == 1 and "another powernapd holds" in second.stderr
    assert daemon.ask("status")["pid"] == daemon.proc.pid

    # A broken config on SIGHUP is refused; the daemon keeps the running one.
    conf = daemon.root / "etc/powernap/powernap.conf"
    conf.write_text(CONFIG.replace("after = 1h", "after = never"))
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda s: s["events"][-1]["event"] == "reload-failed", "the refused reload")
    assert daemon.ask("status")["stages"][1]["after"] == 3600.0
    # A good config reloads.
    conf.write_text(CONFIG.replace("after = 1h", "after = 2h"))
    assert daemon.ask("reload") == {"reloaded": True, "errors": []}
    assert daemon.ask("status")["stages"][1]["after"] == 7200.0

    assert daemon.stop() == 0
    names = [name for name, _fields in daemon.events()]
    assert names[:7] == [
        "start",
        "powersave-apply",
        "now",
        "powersave-restore",
        "action-start",
        "action-done",
        "resume",
    ]
    # After the (dry-run) resume the host may nap again before the reloads on a slow machine: powersave
    # apply/restore pairs are the only other events allowed.
    later = names[7:]
    assert later.count("powersave-apply") == later.count("powersave-restore")
    assert [n for n in later if not n.startswith("powersave-")] == ["reload-failed", "reload", "stop"]
    log = daemon.log()
    assert "dry-run: would run suspend: systemctl suspend" in log
    assert ":15: option 'after': 'never' is not a duration" in log
    assert "1 configuration error(s): reload refused, keeping the running configuration" in log
    # The lock file stays (flock, not a PID check) and does not stop the next start.
    assert os.path.exists(daemon.root / "run/powernap/powernapd.lock")


LAPTOP_CONFIG = """\
[powernap]
interval = 0.1s
settle = 0
wall = no
platform = physical

[monitor.work]
type = process
regex = powernap-test-busy

[stage.1]
after = 1s
action = powersave

[tweak.nmi]
type = nmi_watchdog
when = battery
"""


def test_laptop_switches_tweak_sets_when_the_supply_changes(tmp_path):
    root = make_root(tmp_path)
    (root / "etc/powernap/powernap.conf").write_text(LAPTOP_CONFIG)
    supply = root / "sys/class/power_supply"
    for name, kind in (("AC", "Mains"), ("BAT0", "Battery")):
        (supply / name).mkdir(parents=True)
        (supply / name / "type").write_text(kind + "\n")
    (supply / "AC/online").write_text("1\n")
    (supply / "BAT0/status").write_text("Charging\n")
    d = Daemon(root, str(tmp_path / "powernapd.log"))
    try:
        on_ac = d.wait_for(lambda s: s["state"] == "napping", "powersave on AC")
        assert on_ac["powersave"]["tweaks"] == [
            {"name": "nmi", "status": "skipped", "detail": "only on battery power (now ac)"}
        ]
        (supply / "AC/online").write_text("0\n")
        (supply / "BAT0/status").write_text("Discharging\n")
        on_battery = d.wait_for(
            lambda s: s["powersave"]["tweaks"][0]["status"] != "skipped", "the battery tweak set after unplugging"
        )
        assert on_battery["state"] == "napping" and on_battery["powersave"]["active"] is True
        assert on_battery["powersave"]["tweaks"][0]["name"] == "nmi"
        assert on_battery["powersave"]["tweaks"][0]["status"] == "applied"
    finally:
        assert d.stop() == 0
    names = [name for name, _fields in d.events()]
    assert names == ["start", "powersave-apply", "powersave-switch", "powersave-restore", "stop"]
    assert dict(d.events())["powersave-switch"] == "source=battery tweaks=nmi"


# --- issue 12: start-up recovery, reload, `now`, state_dir, stopping during grace -------------------

NMI = "proc/sys/kernel/nmi_watchdog"


def crashed_powersave_record(root):
    """What a powernapd killed during powersave leaves: nmi_watchdog at 0 and the record of its value 1."""
    (root / NMI).write_text("0\n")
    run = root / "run/powernap"
    run.mkdir(parents=True, exist_ok=True)
    record = {
        "version": 1,
        "pid": 999999,
        "created": time.time() - 60,
        "tweaks": {"nmi": {"type": "nmi_watchdog", "when": "always"}},
        "entries": [
            {"tweak": "nmi", "kind": "file", "path": "/" + NMI, "original": "1\n", "value": "0"},
        ],
    }
    (run / "powersave.json").write_text(json.dumps(record))
    return run / "powersave.json"


def run_daemon_once(root, *extra):
    return subprocess.run(
        [sys.executable, os.path.join(ENGINE, "bin", "powernapd"), "--root", str(root)] + list(extra),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
    )


def test_startup_recovery_runs_even_when_the_config_is_now_broken(tmp_path):
    """Crash in powersave, then a bad config: the next start still undoes the tweaks, then refuses."""
    root = make_root(tmp_path)
    record = crashed_powersave_record(root)
    (root / "etc/powernap/powernap.conf").write_text(CONFIG.replace("after = 1h", "after = never"))
    result = run_daemon_once(root)
    assert result.returncode == 1
    assert "recovered powersave nmi: restored" in result.stderr
    assert "refusing to start" in result.stderr and ":15: option 'after': 'never'" in result.stderr
    assert (root / NMI).read_text() == "1\n" and not record.exists()
    # Recovery comes first: it is logged before the config errors.
    assert result.stderr.index("recovered powersave") < result.stderr.index("refusing to start")


def test_startup_recovery_with_a_good_config_then_runs(tmp_path):
    root = make_root(tmp_path)
    record = crashed_powersave_record(root)
    (root / "etc/powernap/powernap.conf").write_text(POWERSAVE_ONLY.replace("after = 1s", "after = 1h"))
    d = Daemon(root, str(tmp_path / "powernapd.log"), dry_run=False)
    try:
        d.wait_for(lambda s: s["state"] == "awake", "the daemon")
        assert (root / NMI).read_text() == "1\n" and not record.exists()
        assert "recovered powersave nmi: restored" in d.log()
    finally:
        assert d.stop() == 0


def test_powernap_restore_undoes_a_dead_daemons_powersave(tmp_path, capsys):
    from powernap.cli import main as cli_main

    root = make_root(tmp_path)
    (root / "etc/powernap/powernap.conf").write_text("[stage.1]\nbroken line\n")  # restore needs no valid config
    assert cli_main(["--root", str(root), "restore"]) == 0
    assert capsys.readouterr().out.startswith("nothing to restore: no powersave record at %s" % root)
    record = crashed_powersave_record(root)
    assert cli_main(["restore", "--root", str(root)]) == 0
    assert capsys.readouterr().out == "nmi: restored\n1 restored, 0 failed\n"
    assert (root / NMI).read_text() == "1\n" and not record.exists()


def test_powernap_restore_is_refused_while_the_daemon_runs(daemon, capsys):
    from powernap.cli import main as cli_main

    daemon.wait_for(lambda s: s["state"] == "napping", "powersave")
    (daemon.root / "run/powernap/powersave.json").write_text("{}")  # dry run keeps no record: stand one in
    assert cli_main(["--root", str(daemon.root), "restore"]) == 1
    assert "powernapd is running" in capsys.readouterr().err
    assert daemon.ask("status")["powersave"]["active"] is True


def test_dropins_are_read_again_on_every_reload(daemon):
    dropins = daemon.root / "etc/powernap/conf.d"
    dropins.mkdir()
    added = dropins / "50-later.conf"
    added.write_text("[stage.2]\nafter = 3h\n")
    assert daemon.ask("reload") == {"reloaded": True, "errors": []}
    status = daemon.ask("status")
    assert status["stages"][1]["after"] == 3 * 3600.0 and status["config_files"][-1] == str(added)
    added.unlink()
    daemon.proc.send_signal(signal.SIGHUP)  # the same through SIGHUP, after the drop-in is gone
    daemon.wait_for(lambda s: s["stages"][1]["after"] == 3600.0, "the reload without the drop-in")
    assert daemon.ask("status")["config_files"] == [str(daemon.root / "etc/powernap/powernap.conf")]
    assert "reload-failed" not in [name for name, _fields in daemon.events()]


def test_reload_moves_the_control_socket_with_state_dir(daemon, capsys):
    from powernap.cli import main as cli_main

    conf = daemon.root / "etc/powernap/powernap.conf"
    conf.write_text(CONFIG.replace("[powernap]\n", "[powernap]\nstate_dir = /run/powernap-moved\n"))
    assert daemon.ask("reload") == {"reloaded": True, "errors": []}
    moved = daemon.root / "run/powernap-moved"
    assert (moved / "control.sock").exists() and not os.path.exists(daemon.sock)
    assert (moved / "powernapd.lock").exists()
    daemon.sock = str(moved / "control.sock")
    assert daemon.ask("status")["pid"] == daemon.proc.pid
    # The CLI follows the config to the new socket.
    assert cli_main(["--root", str(daemon.root), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pid"] == daemon.proc.pid
    # A second daemon is still refused: the lock moved along.
    second = run_daemon_once(daemon.root, "--dry-run")
    assert second.returncode == 1 and "another powernapd holds %s" % (moved / "powernapd.lock") in second.stderr


POWERSAVE_ONLY = """\
[powernap]
interval = 0.1s
settle = 0
wall = no

[monitor.work]
type = process
regex = powernap-test-busy

[stage.1]
after = 1s
action = powersave

[tweak.nmi]
type = nmi_watchdog
"""


def test_reload_during_powersave_keeps_unchanged_tweaks(tmp_path):
    """Not a dry run (fake root: files only, no command ever runs): the tweak really stays applied."""
    root = make_root(tmp_path)
    conf = root / "etc/powernap/powernap.conf"
    conf.write_text(POWERSAVE_ONLY)
    d = Daemon(root, str(tmp_path / "powernapd.log"), dry_run=False)
    try:
        d.wait_for(lambda s: s["state"] == "napping", "powersave")
        assert (root / NMI).read_text() == "0"
        conf.write_text(POWERSAVE_ONLY.replace("interval = 0.1s", "interval = 0.2s"))
        assert d.ask("reload") == {"reloaded": True, "errors": []}
        status = d.ask("status")
        assert status["state"] == "napping" and status["stage"]["index"] == 1 and status["powersave"]["active"]
        assert status["powersave"]["tweaks"] == [{"name": "nmi", "status": "unchanged", "detail": "already applied"}]
        assert (root / NMI).read_text() == "0"
        names = [name for name, _fields in d.events()]
        assert names == ["start", "powersave-apply", "powersave-reload", "reload"]
        assert dict(d.events())["powersave-reload"] == "tweaks=unchanged=1"
        # Taking the tweak out of the config restores it at once, still without leaving powersave.
        conf.write_text(POWERSAVE_ONLY.replace("[tweak.nmi]\ntype = nmi_watchdog\n", ""))
        assert d.ask("reload") == {"reloaded": True, "errors": []}
        assert (root / NMI).read_text() == "1\n"
        assert d.ask("status")["state"] == "napping"
    finally:
        assert d.stop() == 0
    assert not (root / "run/powernap/powersave.json").exists()


CUSTOM_DENIED_LIST = """\
[deny.this-kernel]
kernel = 6.1.*
actions = command
reason = the custom script wedges this kernel
"""


def test_now_custom_without_a_command_fails_and_changes_nothing(daemon, capsys):
    from powernap.cli import main as cli_main

    napping = daemon.wait_for(lambda s: s["state"] == "napping", "powersave")
    with pytest.raises(ControlError, match="action custom has no command"):
        daemon.ask("now", action="custom")
    assert cli_main(["--root", str(daemon.root), "now", "custom"]) == 1
    assert "action custom has no command" in capsys.readouterr().err
    status = daemon.ask("status")
    assert status["state"] == "napping" and status["stage"]["since"] == pytest.approx(napping["stage"]["since"])
    names = [name for name, _fields in daemon.events()]
    assert "now" not in names and "powersave-restore" not in names and "action-failed" not in names


def test_a_hardware_deny_of_custom_is_honoured(tmp_path):
    """hwinfo, the hardware lists and the daemon use one name; the old list name 'command' means the same."""
    root = make_root(tmp_path)
    (root / "proc/sys/kernel/osrelease").write_text("6.1.0-18-amd64\n")
    (root / "etc/powernap/hardware.d").mkdir()
    (root / "etc/powernap/hardware.d/10-custom.conf").write_text(CUSTOM_DENIED_LIST)
    (root / "etc/powernap/powernap.conf").write_text(CONFIG + "[actions]\ncustom_command = /bin/true\n")
    d = Daemon(root, str(tmp_path / "powernapd.log"))
    try:
        status = d.wait_for(lambda s: True, "the daemon")
        assert status["verdict"]["denied"]["custom"] == "the custom script wedges this kernel"
        assert "custom" not in status["verdict"]["allowed_actions"]
        with pytest.raises(ControlError, match="custom is not allowed on this host: the custom script wedges"):
            d.ask("now", action="custom")
    finally:
        assert d.stop() == 0
    assert "action-start" not in [name for name, _fields in d.events()]


GRACE_CONFIG = """\
[powernap]
interval = 0.1s
settle = 0
wall = yes

[monitor.work]
type = process
regex = powernap-test-busy

[stage.1]
after = 2h
warn = 2h
action = suspend

[actions]
suspend_command = /bin/false
wall_command = tee -a {wall}
"""


def test_sigterm_during_grace_cancels_the_wall_warning(tmp_path):
    """Not a dry run, so the wall command really runs (tee into a file; suspend is /bin/false, 2h away)."""
    root = make_root(tmp_path)
    wall = tmp_path / "wall.txt"
    (root / "etc/powernap/powernap.conf").write_text(GRACE_CONFIG.format(wall=wall))
    d = Daemon(root, str(tmp_path / "powernapd.log"), dry_run=False)
    try:
        d.wait_for(lambda s: s["state"] == "grace", "the grace warning")
        deadline = time.monotonic() + 10
        while "will suspend" not in (wall.read_text() if wall.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        assert d.stop() == 0
    lines = wall.read_text().splitlines()
    assert len(lines) == 2 and "will suspend in 7200 seconds" in lines[0], lines
    assert lines[1].startswith("powernap: suspend of ") and lines[1].endswith(" cancelled (daemon stopping).")
    names = [name for name, _fields in d.events()]
    assert names == ["start", "warn", "cancel", "stop"]
    assert dict(d.events())["cancel"] == 'stage=1 action=suspend reason="daemon stopping"'


def test_status_text_into_a_closed_pipe_and_explain_while_held_awake(daemon):
    """`powernap status | head -1` ends quietly; a busy host gets no "Next: stage 1 in 0s"."""
    (daemon.root / "proc/4242").mkdir()
    (daemon.root / "proc/4242/cmdline").write_bytes(b"powernap-test-busy\0")
    daemon.wait_for(lambda s: s["monitors"][0]["active"], "the busy process")
    explain = daemon.ask("explain")["lines"]
    nxt = [line for line in explain if line.startswith("Next:")]
    assert nxt == [
        "Next: nothing while work keeps the host awake; then stage 1 (powersave) once it has been idle for 1s."
    ]
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    try:
        result = subprocess.run(
            [sys.executable, os.path.join(ENGINE, "bin", "powernap"), "--root", str(daemon.root), "status"],
            stdout=write_fd,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        os.close(write_fd)
    assert result.returncode == 141 and result.stderr == ""
