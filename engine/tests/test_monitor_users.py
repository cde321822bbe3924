"""users and console monitors: a binary /run/utmp, logind session files and tty access times."""

import os

import pytest
from monitor_fakes import make, write

from powernap.clock import FakeClock
from powernap.errors import MonitorError
from powernap.monitors.users import USER_PROCESS, UTMP, parse_utmp

NOW = 1_700_000_000.0


def utmp_record(kind, pid, line, user, host=""):
    return UTMP.pack(kind, pid, line.encode(), b"ts/0", user.encode(), host.encode(), 0, 0, 0, 0, 0, 0, 0, 0, 0, b"")


def tty(root, line, idle):
    path = write(root, "/dev/" + line, "")
    os.utime(path, (NOW - idle, NOW - idle))


def alive(root, *pids):
    for pid in pids:
        os.makedirs(os.path.join(str(root), "proc", str(pid)), exist_ok=True)


@pytest.fixture
def clock():
    return FakeClock(start_wall=NOW)


def test_utmp_layout_is_glibc_384_bytes():
    assert UTMP.size == 384
    data = utmp_record(2, 0, "~", "reboot") + utmp_record(USER_PROCESS, 77, "pts/3", "alice", "10.1.2.3")
    sessions = parse_utmp(data)
    assert [(s.user, s.line, s.host, s.pid) for s in sessions] == [("alice", "pts/3", "10.1.2.3", 77)]


def test_logged_in_user_with_recent_input(tmp_path, clock):
    write(
        tmp_path,
        "/run/utmp",
        utmp_record(USER_PROCESS, 500, "pts/0", "alice", "192.0.2.9") + utmp_record(USER_PROCESS, 501, "tty1", "bob"),
    )
    alive(tmp_path, 500, 501)
    tty(tmp_path, "pts/0", idle=120)
    tty(tmp_path, "tty1", idle=7200)
    monitor = make("users", root=tmp_path, clock=clock, max_idle="10m")
    assert monitor.check() == "user alice logged in on pts/0 from 192.0.2.9 (idle 120s)"
    assert make("users", root=tmp_path, clock=clock, users="^bob$", max_idle="10m").check() is None
    assert "bob" in make("users", root=tmp_path, clock=clock, users="^bob$", max_idle="0").check()
    assert make("users", root=tmp_path, clock=clock, hosts=".", lines="^tty").check() is None


def test_idle_and_stale_sessions_do_not_count(tmp_path, clock):
    write(
        tmp_path,
        "/run/utmp",
        utmp_record(USER_PROCESS, 600, "pts/1", "carol") + utmp_record(USER_PROCESS, 601, "pts/2", "dave"),
    )
    alive(tmp_path, 601)  # carol's login process died without logging out
    tty(tmp_path, "pts/1", idle=5)
    tty(tmp_path, "pts/2", idle=4000)
    assert make("users", root=tmp_path, clock=clock, max_idle="1h").check() is None
    assert "dave" in make("users", root=tmp_path, clock=clock, max_idle="2h").check()


def test_logind_sessions_when_there_is_no_utmp(tmp_path, clock):
    write(
        tmp_path,
        "/run/systemd/sessions/4",
        "UID=1000\nUSER=erin\nACTIVE=1\nSTATE=active\nTYPE=tty\n"
        "CLASS=user\nTTY=/dev/pts/5\nREMOTE_HOST=198.51.100.4\nLEADER=700\n",
    )
    write(tmp_path, "/run/systemd/sessions/5", "USER=gdm\nCLASS=greeter\nSTATE=online\nLEADER=701\n")
    write(tmp_path, "/run/systemd/sessions/4.ref", "")
    alive(tmp_path, 700, 701)
    tty(tmp_path, "pts/5", idle=30)
    assert (
        make("users", root=tmp_path, clock=clock).check() == "user erin logged in on pts/5 from 198.51.100.4 (idle 30s)"
    )


def test_no_login_records_at_all_is_an_error(tmp_path, clock):
    with pytest.raises(MonitorError, match="utmp"):
        make("users", root=tmp_path, clock=clock).check()
    write(tmp_path, "/run/utmp", b"")
    assert make("users", root=tmp_path, clock=clock).check() is None


def test_console_input_within_max_idle(tmp_path, clock):
    tty(tmp_path, "tty1", idle=3600)
    tty(tmp_path, "tty2", idle=90)
    tty(tmp_path, "ttyS0", idle=10000)
    tty(tmp_path, "pts/0", idle=1)  # not a console
    write(tmp_path, "/dev/null", "")
    monitor = make("console", root=tmp_path, clock=clock, max_idle="5m")
    assert monitor.check() == "console tty2 input 90s ago"
    clock.advance(300)
    assert monitor.check() is None
    tty(tmp_path, "ttyS0", idle=-299)  # serial console typed on just now (relative to the advanced clock)
    assert "ttyS0" in monitor.check()


def test_console_without_devices_is_an_error(tmp_path, clock):
    write(tmp_path, "/dev/null", "")
    with pytest.raises(MonitorError, match="no console"):
        make("console", root=tmp_path, clock=clock).check()


def test_sessions_without_a_terminal_count_under_the_default_max_idle(tmp_path, clock):
    """ssh host cmd, sftp, VS Code remote: logind lists them with no TTY, utmp not at all."""
    write(tmp_path, "/run/utmp", b"")
    write(
        tmp_path,
        "/run/systemd/sessions/12",
        "UID=1000\nUSER=frank\nACTIVE=1\nSTATE=active\nTYPE=tty\nCLASS=user\nREMOTE=1\n"
        "REMOTE_HOST=203.0.113.9\nSERVICE=sshd\nLEADER=900\n",
    )
    alive(tmp_path, 900)
    assert make("users", root=tmp_path, clock=clock).check() == (
        "user frank logged in on no terminal (counts while it lasts) from 203.0.113.9 (idle 0s)"
    )
    assert make("users", root=tmp_path, clock=clock, lines="^pts/").check() is None  # opt out: terminals only
    os.rmdir(os.path.join(str(tmp_path), "proc", "900"))  # the session ended
    assert make("users", root=tmp_path, clock=clock).check() is None


def test_without_logind_sshd_session_children_count(tmp_path, clock):
    write(tmp_path, "/run/utmp", b"")
    write(tmp_path, "/proc/1200/cmdline", b"sshd: gina@notty\0")
    write(tmp_path, "/proc/1201/cmdline", b"sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups\0")
    assert make("users", root=tmp_path, clock=clock).check() == (
        "user gina logged in on no terminal (counts while it lasts) (idle 0s)"
    )
    assert make("users", root=tmp_path, clock=clock, users="^root$").check() is None
