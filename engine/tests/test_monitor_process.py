"""process and io monitors: /proc scans on a fake root, netlink process events on the real kernel."""

import os
import subprocess
import sys
import time

import pytest
from monitor_fakes import make, wait_event, write

from powernap.clock import FakeClock
from powernap.errors import MonitorError


def fake_process(root, pid, argv, io=None, comm=None):
    write(root, "/proc/%d/cmdline" % pid, b"\0".join(a.encode() for a in argv) + (b"\0" if argv else b""))
    if comm:
        write(root, "/proc/%d/comm" % pid, comm + "\n")
    if io is not None:
        write(
            root,
            "/proc/%d/io" % pid,
            "rchar: %d\nwchar: %d\nsyscr: 1\nsyscw: 1\nread_bytes: %d\n"
            "write_bytes: %d\ncancelled_write_bytes: 0\n" % (io[0] * 10, io[1] * 10, io[0], io[1]),
        )


def remove_process(root, pid):
    base = os.path.join(str(root), "proc", str(pid))
    for name in os.listdir(base):
        os.unlink(os.path.join(base, name))
    os.rmdir(base)


def test_scan_finds_full_command_line(tmp_path):
    fake_process(tmp_path, 100, ["/usr/bin/python3", "/opt/backup.py", "--full"])
    fake_process(tmp_path, 200, ["bash"])
    monitor = make("process", root=tmp_path, regex=r"backup\.py --full")
    monitor.open()
    assert monitor.fds() == []  # fake root: no netlink, polling
    reason = monitor.check()
    assert reason and "process 100" in reason and "/opt/backup.py --full" in reason
    remove_process(tmp_path, 100)
    assert monitor.check() is None
    monitor.close()


def test_scan_idle_when_nothing_matches_and_kernel_threads_match_by_name(tmp_path):
    fake_process(tmp_path, 2, [], comm="kworker/0:1")
    fake_process(tmp_path, 300, ["sleep", "100"])
    assert make("process", root=tmp_path, regex="rsync").check() is None
    assert "kworker" in make("process", root=tmp_path, regex=r"^\[kworker").check()


def test_netlink_events_see_a_real_process_start_and_exit():
    """Runs as root on the real kernel: the proc connector must work here (no silent fallback)."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (the lab and CI run as root)")
    marker = "powernap-test-marker-%d" % os.getpid()
    monitor = make("process", regex=marker)  # real root
    monitor.open()
    try:
        assert monitor.mode == "events", "kernel refused netlink process events"
        assert len(monitor.fds()) == 1
        assert monitor.check() is None
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
        try:
            reasons = wait_event(monitor, 5.0)
            assert any("process %d started" % child.pid in r for r in reasons.values()), reasons
            assert "process %d running" % child.pid in monitor.check()
        finally:
            child.kill()
            child.wait(5)
        # Exit events are filtered out in the kernel; check() sees the process is gone.
        assert monitor.check() is None, "the exited process is still reported"
        assert child.pid not in monitor.matching
    finally:
        monitor.close()
    assert monitor.fds() == []


def test_only_exec_events_are_delivered_and_daemonizing_forks_are_followed():
    if os.geteuid() != 0:
        pytest.fail("this test needs root (the lab and CI run as root)")
    marker = "powernap-daemon-marker-%d" % os.getpid()
    clock = FakeClock()
    monitor = make("process", clock=clock, regex=marker)
    monitor.open()
    daemon_pid = None
    try:
        assert monitor.connector.exec_only, "the exec-only filter was not attached"
        # Like a daemon: exec with the marker, fork, let the parent exit, keep the child.
        script = "import os, sys, time\nif os.fork():\n    sys.exit(0)\ntime.sleep(30)"
        # No pipes: the daemon would hold them open and keep the parent's waiter blocked.
        parent = subprocess.Popen([sys.executable, "-c", script, marker], stdout=subprocess.DEVNULL)
        parent.wait(10)
        parent_pid = parent.pid
        deadline = time.monotonic() + 10
        reason = None
        while time.monotonic() < deadline:
            wait_event(monitor, 0.2)
            clock.advance(1.0)  # the rescan after a vanished exec is rate-limited on the monitor's clock
            reason = monitor.check()
            found = [pid for pid in monitor.matching if pid != parent_pid]
            if found:
                daemon_pid = found[0]
                break
        assert daemon_pid is not None, "the daemonized child was never found (%r)" % reason
        assert "process %d running" % daemon_pid in reason
    finally:
        if daemon_pid:
            os.kill(daemon_pid, 9)
        monitor.close()


def test_events_disabled_falls_back_to_scanning_real_proc():
    monitor = make("process", regex="^this-matches-no-process-anywhere$", events="no")
    monitor.open()
    assert monitor.fds() == [] and monitor.mode == "scan"
    assert monitor.check() is None
    monitor.close()


def test_io_rate_threshold(tmp_path):
    clock = FakeClock()
    fake_process(tmp_path, 10, ["rsync", "-a", "/src", "/dst"], io=(1000, 0))
    fake_process(tmp_path, 11, ["sshd"], io=(0, 0))
    monitor = make("io", root=tmp_path, clock=clock, regex="^rsync", threshold="1M")
    assert monitor.check() is None  # first sample only sets the baseline
    clock.advance(2)
    fake_process(tmp_path, 10, ["rsync", "-a", "/src", "/dst"], io=(1000 + 3_000_000, 0))
    fake_process(tmp_path, 11, ["sshd"], io=(50_000_000, 0))  # not matching: ignored
    reason = monitor.check()
    assert reason and "1500000 bytes/s" in reason
    clock.advance(2)
    fake_process(tmp_path, 10, ["rsync", "-a", "/src", "/dst"], io=(3_001_000, 100_000))
    assert monitor.check() is None  # 50 kB/s is below 1 MB/s


def test_io_all_counters_and_errors(tmp_path):
    clock = FakeClock()
    fake_process(tmp_path, 10, ["nfsd"], io=(0, 0))
    monitor = make("io", root=tmp_path, clock=clock, regex="nfsd", counters="all", threshold="100")
    monitor.check()
    clock.advance(1)
    fake_process(tmp_path, 10, ["nfsd"], io=(0, 20))  # wchar grows by 200
    assert monitor.check() is not None
    with pytest.raises(MonitorError, match="no processes"):
        make("io", root=tmp_path / "empty", regex="x").check()


RENAME_CHILD = r"""
import ctypes, sys, time
time.sleep(0.3)
title = bytes.fromhex(sys.argv[2])  # hex: the title must not be on the original command line
if sys.argv[1] == "prctl":
    ctypes.CDLL(None).prctl(15, ctypes.c_char_p(title[:15]), 0, 0, 0)  # PR_SET_NAME
else:
    # setproctitle-style: overwrite the original argv area in place (nginx, postgres, sshd).
    with open("/proc/self/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])
    with open("/proc/self/mem", "r+b", buffering=0) as mem:
        mem.seek(start)
        mem.write(title.ljust(end - start, b"\0")[: end - start])
time.sleep(30)
"""


def _renamed_child(how, title):
    # Room in argv for the new title: the placeholder is longer than any title used here.
    return subprocess.Popen([sys.executable, "-c", RENAME_CHILD, how, title.encode().hex(), "x" * 64])


def test_a_process_that_rewrites_its_command_line_after_start_is_seen():
    """argv rewrite sends no kernel event: the periodic rescan (rescan_every) and recheck() see it."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (the lab and CI run as root)")
    marker = "powernap-title-%d" % os.getpid()
    clock = FakeClock()
    monitor = make("process", clock=clock, regex=marker, rescan_every="10s")
    monitor.open()
    child = _renamed_child("argv", marker + ": worker process")
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and marker not in (procfs_cmdline(child.pid) or ""):
            wait_event(monitor, 0.1)
        assert marker in procfs_cmdline(child.pid), "the child did not rewrite its argv"
        assert monitor.recheck() and child.pid in monitor.matching  # the pre-stage check scans afresh
        monitor.matching.clear()
        clock.advance(10)
        reason = monitor.check()
        assert reason and "process %d running: %s: worker process" % (child.pid, marker) in reason
    finally:
        child.kill()
        child.wait(5)
        monitor.close()


def test_a_process_renamed_with_prctl_is_seen_at_once():
    """prctl(PR_SET_NAME) sends a comm event: the renamed process is matched by its new name at once."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (the lab and CI run as root)")
    marker = "pn-comm-%d" % (os.getpid() % 100000)
    monitor = make("process", regex=r"\[%s\]" % marker)
    monitor.open()
    child = _renamed_child("prctl", marker)
    try:
        reasons = wait_event(monitor, 5.0)
        assert any("process %d renamed" % child.pid in (r or "") for r in reasons.values()), reasons
        assert monitor.check() and monitor.matching[child.pid].endswith("[%s]" % marker)
    finally:
        child.kill()
        child.wait(5)
        monitor.close()


def procfs_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode()
    except OSError:
        return None


IN_NAMESPACE = r"""
import select, subprocess, sys, time
from monitor_fakes import make
from powernap.clock import FakeClock
from powernap.monitors import process

marker = sys.argv[1]


def started(argv):
    # Popen returns once exec began; the new command line is readable a moment later.
    child = subprocess.Popen(argv)
    for _unused in range(200):
        with open("/proc/%d/cmdline" % child.pid, "rb") as handle:
            if marker.encode() in handle.read():
                return child
        time.sleep(0.01)
    raise AssertionError("child command line never appeared")


# 1. The namespace is recognised: no subscription at all, scanning, and status says why.
monitor = make("process", regex=marker)
monitor.open()
assert monitor.mode == "scan" and monitor.fds() == [], monitor.describe()
assert "PID namespace" in monitor.describe(), monitor.describe()
child = started([sys.executable, "-c", "import time; time.sleep(30)", marker])
assert "process %d running" % child.pid in monitor.check()
child.kill(); child.wait()
monitor.close()

# 2. Where the namespace cannot be told (an older kernel), the test child proves events do not arrive.
process.in_initial_pid_namespace = lambda root: None
clock = FakeClock()
monitor = make("process", clock=clock, regex=marker)
monitor.open()
assert monitor.mode == "events", monitor.describe()
deadline = time.monotonic() + 2
while time.monotonic() < deadline:
    fds = monitor.fds()
    if fds and select.select(fds, [], [], 0.1)[0]:
        monitor.on_readable(fds[0])
assert not monitor.verified, "the test child's exec event arrived inside a PID namespace?"
child = started([sys.executable, "-c", "import time; time.sleep(30)", marker])
assert "process %d running" % child.pid in monitor.check()  # unproven events: scanned meanwhile
clock.advance(process.PROBE_TIMEOUT)
monitor.check()
assert monitor.mode == "scan" and monitor.fds() == [], monitor.describe()
assert "no process event arrived for a test child" in monitor.describe(), monitor.describe()
child.kill(); child.wait()
assert monitor.check() is None
print("ok")
"""


def test_inside_a_pid_namespace_the_monitor_scans_and_says_why():
    """A real PID namespace (unshare): the kernel drops the subscription, and events from the host carry
    host PIDs.  The monitor must notice, fall back to scanning, and say so."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a PID namespace")
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join((os.path.dirname(here), here)))
    result = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", IN_NAMESPACE, "pn-ns-%d" % os.getpid()],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


def test_process_events_are_proven_again_every_ten_minutes():
    """Events that stop later (another program's PROC_CN_MCAST_IGNORE drops the kernel's global
    listener count) are caught by the periodic proof."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (the lab and CI run as root)")
    from powernap.monitors import process

    clock = FakeClock()
    monitor = make("process", clock=clock, regex="^this-matches-no-process-anywhere$")
    monitor.open()
    try:
        deadline = time.monotonic() + 5
        while not monitor.verified and time.monotonic() < deadline:
            wait_event(monitor, 0.2)
        assert monitor.verified and monitor.probe is None, monitor.describe()
        assert monitor.describe().endswith("(events)")
        clock.advance(process.PROBE_EVERY)
        monitor.check()
        assert monitor.probe is not None, "no new proof started after PROBE_EVERY"
        # This time nobody reads the events: the proof times out and the monitor falls back.
        monitor.probe.wait(5)
        clock.advance(process.PROBE_TIMEOUT)
        monitor.check()
        assert monitor.mode == "scan" and "no process event arrived" in monitor.describe()
    finally:
        monitor.close()
