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
    def __init__(self, root, log_path):
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
                "--dry-run",
                "--log-level",
                "info",
            ],
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
