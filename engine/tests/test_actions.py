"""Action runners: plans, best-effort chain, non-blocking command jobs, timeouts, dry run, RTC alarm."""

import logging
import time

import pytest

from powernap.actions import ActionRunner, ActionsSection, kernel_support
from powernap.clock import Clock
from powernap.sysroot import SysRoot

LOG = logging.getLogger("test.actions")


class RecordingRoot(SysRoot):
    """A fake root that remembers every write in order."""

    def __init__(self, root):
        super().__init__(root)
        self.writes = []

    def write(self, system_path, text):
        self.writes.append((system_path, text))
        super().write(system_path, text)


def make_root(tmp_path, states="freeze mem disk", disk="[platform] shutdown reboot suspend"):
    (tmp_path / "sys/power").mkdir(parents=True)
    (tmp_path / "sys/power/state").write_text(states + "\n")
    (tmp_path / "sys/power/disk").write_text(disk + "\n")
    (tmp_path / "sys/class/rtc/rtc0").mkdir(parents=True)
    (tmp_path / "sys/class/rtc/rtc0/wakealarm").write_text("")
    return RecordingRoot(str(tmp_path))


def runner(root, dry_run=False, **overrides):
    settings = ActionsSection.parse_options({})
    settings.update(overrides)
    return ActionRunner(settings, root, Clock(), LOG, dry_run=dry_run)


def finish(job, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not job.poll():
        assert time.monotonic() < deadline, "job did not finish in time"
        time.sleep(0.01)
    return job.result


def test_plans_use_the_configured_commands(tmp_path):
    r = runner(make_root(tmp_path), suspend_command="/usr/bin/lab-suspend --host 'a b'")
    (step,) = r.plan("suspend")
    assert (step.action, step.argv) == ("suspend", ["/usr/bin/lab-suspend", "--host", "a b"])
    assert r.plan("poweroff")[0].argv == ["systemctl", "poweroff"]
    assert r.plan("custom", stage_command="echo hi")[0].argv == ["echo", "hi"]
    with pytest.raises(ValueError, match="no command"):
        r.plan("custom")
    with pytest.raises(ValueError, match="tweak set"):
        r.plan("powersave")


def test_best_effort_skips_unsupported_and_denied_actions(tmp_path):
    root = make_root(tmp_path, states="freeze mem")  # no hibernation
    r = runner(root)
    steps = r.plan("best-effort")
    assert [s.action for s in steps] == ["suspend", "poweroff"]
    steps = r.plan("best-effort", denied={"suspend": "deny list"})
    assert [s.action for s in steps] == ["poweroff"]
    with pytest.raises(ValueError, match="no usable action.*poweroff: vm"):
        r.plan("best-effort", denied={"suspend": "x", "poweroff": "vm"})


def test_kernel_support_reads_sys_power(tmp_path):
    root = make_root(tmp_path, states="freeze mem disk", disk="[shutdown] reboot")
    assert kernel_support(root, "suspend") is None
    assert kernel_support(root, "hibernate") is None
    assert "hybrid" in kernel_support(root, "hybrid-sleep")
    assert kernel_support(root, "poweroff") is None
    empty = SysRoot(str(tmp_path / "nothing"))
    assert "missing" in kernel_support(empty, "suspend")


def test_command_success_and_failure_are_reported_with_output(tmp_path):
    r = runner(make_root(tmp_path), suspend_command="true", hibernate_command="sh -c 'echo no swap device >&2; exit 3'")
    result = finish(r.start(r.plan("suspend")))
    assert result.ok and result.action == "suspend"
    result = finish(r.start(r.plan("hibernate")))
    assert not result.ok
    assert "exited with status 3: no swap device" in result.detail


def test_best_effort_falls_through_to_the_next_command_when_one_fails(tmp_path):
    r = runner(
        make_root(tmp_path),
        best_effort=("suspend", "hibernate", "poweroff"),
        suspend_command="false",
        hibernate_command="/nonexistent/hibernate",
        poweroff_command="true",
    )
    done = []
    result = finish(r.start(r.plan("best-effort"), on_done=done.append))
    assert result.ok and result.action == "poweroff"
    assert done == [result]


def test_job_does_not_block_and_is_killed_at_its_timeout(tmp_path):
    r = runner(make_root(tmp_path), suspend_command="sleep 30", command_timeout=1.0)
    started = time.monotonic()
    job = r.start(r.plan("suspend"))
    assert time.monotonic() - started < 0.5  # start() returns at once
    assert job.poll() is False
    result = finish(job, seconds=5.0)
    assert not result.ok and "timed out after 1s" in result.detail
    assert time.monotonic() - started < 4.0


def test_dry_run_runs_nothing_and_logs(tmp_path, caplog):
    marker = tmp_path / "ran"
    r = runner(make_root(tmp_path), dry_run=True, suspend_command="touch %s" % marker)
    with caplog.at_level(logging.INFO, logger="test.actions"):
        job = r.start(r.plan("suspend"))
    assert job.done and job.result.ok
    assert not marker.exists()
    assert "dry-run: would run suspend: touch %s" % marker in caplog.text


def test_rtc_alarm_writes_zero_first(tmp_path):
    root = make_root(tmp_path)
    r = runner(root)
    assert r.set_wake_alarm(1700000123.7) == "RTC wake alarm set for 1700000123"
    assert root.writes == [("/sys/class/rtc/rtc0/wakealarm", "0"), ("/sys/class/rtc/rtc0/wakealarm", "1700000123")]
    assert (tmp_path / "sys/class/rtc/rtc0/wakealarm").read_text() == "1700000123"
    missing = runner(SysRoot(str(tmp_path / "no-rtc")))
    assert missing.set_wake_alarm(5).startswith("RTC wake alarm not set")
    dry = runner(make_root(tmp_path / "dry"), dry_run=True)
    assert dry.set_wake_alarm(5).startswith("dry-run")


def test_wall_passes_the_message_on_stdin(tmp_path):
    out = tmp_path / "wall.txt"
    r = runner(make_root(tmp_path), wall_command="sh -c 'cat > %s'" % out)
    finish(r.wall("powernap: suspend in 60 seconds"))
    assert out.read_text() == "powernap: suspend in 60 seconds\n"
    assert runner(make_root(tmp_path / "x"), wall_command="").wall("hi") is None
