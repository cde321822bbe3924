"""inhibitors monitor against fake logind state files."""

import pytest
from monitor_fakes import make, write

from powernap.errors import MonitorError


def lock(root, ident, what, mode, who, why="because"):
    write(
        root,
        "/run/systemd/inhibit/%s" % ident,
        "# This is private data. Do not parse.\nWHAT=%s\nMODE=%s\nUID=0\nPID=4242\nWHO=%s\nWHY=%s\n"
        "FIFO=/run/systemd/inhibit/%s.ref\n" % (what, mode, who, why, ident),
    )
    write(root, "/run/systemd/inhibit/%s.ref" % ident, "")


def test_block_lock_on_sleep_is_activity(tmp_path):
    lock(tmp_path, "1", "handle-lid-switch", "block", "logind")
    lock(tmp_path, "2", "sleep", "delay", "NetworkManager")
    assert make("inhibitors", root=tmp_path).check() is None  # wrong kind / delay mode
    lock(tmp_path, "3", "shutdown:sleep", "block", "backup-job", "nightly backup")
    assert make("inhibitors", root=tmp_path).check() == "backup-job blocks sleep: nightly backup"
    assert make("inhibitors", root=tmp_path, who="^gnome").check() is None
    assert make("inhibitors", root=tmp_path, ignore="backup").check() is None
    assert make("inhibitors", root=tmp_path, what="shutdown").check() == "backup-job blocks shutdown: nightly backup"


def test_no_locks_and_no_logind(tmp_path):
    write(tmp_path, "/run/systemd/system/.keep", "")
    assert make("inhibitors", root=tmp_path).check() is None  # systemd up, no lock ever taken
    with pytest.raises(MonitorError, match="logind"):
        make("inhibitors", root=tmp_path / "other").check()
