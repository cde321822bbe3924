"""The real powernapd never takes a stage while a watched thing is in use.

Right before a stage fires, every monitor answers again from scratch; these tests
make a monitor's cached answer wrong on purpose (a connection table cached for
poll_every, a PID namespace where process events lie) and assert that the
daemon still does not nap.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
from test_daemon_process import ENGINE, Daemon, make_root

TCP_CONFIG = """\
[powernap]
interval = 0.1s
settle = 0
wall = no

[monitor.web]
type = tcp
ports = 8080
poll_every = 1h

[stage.1]
after = 1s
action = powersave

[stage.2]
after = 1h
action = suspend
"""
TABLE_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
# 192.0.2.1:8080 <- 192.0.2.7:40000, ESTABLISHED (01), in the kernel's host-order hex.
ESTABLISHED_ROW = (
    "   0: 010200C0:1F90 070200C0:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n"
)


def test_no_stage_while_a_connection_is_open_although_the_cached_table_says_idle(tmp_path):
    """With connection events on, the table is read once per poll_every (here 1h): the pre-stage
    check must read it afresh.  Needs root (the packet socket that makes the monitor cache)."""
    if os.geteuid() != 0:
        pytest.skip("the TCP monitor only caches its table with a packet socket (root)")
    root = make_root(tmp_path)
    (root / "etc/powernap/powernap.conf").write_text(TCP_CONFIG)
    table = root / "proc/net/tcp"
    table.parent.mkdir(parents=True)
    table.write_text(TABLE_HEADER)
    d = Daemon(root, str(tmp_path / "powernapd.log"))
    try:
        status = d.wait_for(lambda s: True, "the control socket")
        assert "events" in status["monitors"][0]["describe"], status["monitors"][0]
        table.write_text(TABLE_HEADER + ESTABLISHED_ROW)  # a client connects; no SYN reaches the fake root
        time.sleep(2.5)  # stage 1 would have fired after 1 s
        status = d.ask("status")
        assert status["state"] == "awake" and not status["powersave"]["active"], status
        assert "held, activity on a fresh check: web: 1 established connection on port 8080" in d.log()
        table.write_text(TABLE_HEADER)  # the client is gone: the next fresh check lets the stage fire
        d.wait_for(lambda s: s["state"] == "napping", "powersave once the connection closed", seconds=5)
    finally:
        assert d.stop() == 0
    assert [name for name, _fields in d.events()] == ["start", "powersave-apply", "powersave-restore", "stop"]


NS_CONFIG = """\
[powernap]
interval = 0.1s
settle = 0
wall = no
state_dir = {state_dir}
hardware_dir = {state_dir}/hardware.d

[monitor.work]
type = process
regex = {marker}

[stage.1]
after = 3s
action = powersave

[stage.2]
after = 1h
action = suspend
"""


def test_in_a_pid_namespace_the_daemon_sees_a_process_started_later_and_does_not_nap(tmp_path):
    """The audit's container: the real daemon on the real root, as PID 1 of its own PID namespace.
    A watched process starts after the daemon; the host must stay awake, and status must say that
    the monitor scans /proc and why."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a PID namespace")
    marker = "powernap-ns-busy-%d" % os.getpid()
    state_dir = tmp_path / "run"
    config = tmp_path / "powernap.conf"
    config.write_text(NS_CONFIG.format(state_dir=state_dir, marker=marker))
    log_path = tmp_path / "powernapd.log"
    # The marker travels in the environment so that no shell's command line matches the regex.
    busy = '(sleep 1.5; exec "$0" -c "import time; time.sleep(60)" "$BUSY_MARKER")'
    script = '%s & exec "$0" %s --root / --config %s --dry-run --log-level info' % (
        busy,
        os.path.join(ENGINE, "bin", "powernapd"),
        config,
    )
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", BUSY_MARKER=marker)
    env.pop("NOTIFY_SOCKET", None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM", "sh", "-c", script, sys.executable],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    d = Daemon.__new__(Daemon)  # the helper's socket and log readers, around a daemon started here
    d.root, d.log_path, d.proc = tmp_path, str(log_path), proc
    d.sock = str(state_dir / "control.sock")
    d.log_file = open(log_path)  # noqa: SIM115 - closed below
    try:
        status = d.wait_for(lambda s: True, "the control socket")
        describe = status["monitors"][0]["describe"]
        assert "scan: PID namespace" in describe, describe
        busy = d.wait_for(lambda s: s["monitors"][0]["active"], "the watched process to be seen")
        assert "time.sleep(60)" in busy["monitors"][0]["reason"]
        time.sleep(3.5 - min(3.5, busy["idle_seconds"]))  # past the 3 s stage had the process been missed
        status = d.ask("status")
        assert status["state"] == "awake" and status["monitors"][0]["active"], status
    finally:
        proc.send_signal(signal.SIGTERM)  # unshare dies, the daemon (its child) gets SIGTERM
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        d.log_file.close()
    names = [name for name, _fields in d.events()]
    assert "powersave-apply" not in names, d.log()
