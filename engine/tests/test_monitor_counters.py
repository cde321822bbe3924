"""load, disk and net monitors on fake /proc files and a fake clock."""

import pytest
from monitor_fakes import make, write

from powernap.clock import FakeClock
from powernap.errors import MonitorError


def test_load_threshold_defaults_to_cpus_times_factor(tmp_path):
    write(tmp_path, "/sys/devices/system/cpu/online", "0-3\n")
    write(tmp_path, "/proc/loadavg", "2.50 0.40 0.10 1/200 999\n")
    monitor = make("load", root=tmp_path)
    assert monitor.threshold == 2.0  # 4 CPUs x 0.5
    assert "1-minute load 2.50 above 2.00" in monitor.check()
    assert make("load", root=tmp_path, period="5").check() is None
    assert make("load", root=tmp_path, threshold="3").check() is None
    assert make("load", root=tmp_path, period="15", threshold="0.05").check() is not None


def test_load_counts_cpu_lists(tmp_path):
    write(tmp_path, "/sys/devices/system/cpu/online", "0-1,4,6-7\n")
    write(tmp_path, "/proc/loadavg", "0.1 0.1 0.1 1/1 1\n")
    assert make("load", root=tmp_path, factor="1").threshold == 5


def test_load_errors(tmp_path):
    with pytest.raises(MonitorError, match="/proc/loadavg"):
        make("load", root=tmp_path, threshold="1").check()
    write(tmp_path, "/proc/loadavg", "garbage\n")
    with pytest.raises(MonitorError, match="unexpected"):
        make("load", root=tmp_path, threshold="1", period="5").check()


DISKSTATS = (
    "   8       0 sda {r} 0 {rs} 0 {w} 0 {ws} 0 0 0 0 0 0 0 0 0 0\n"
    "   8       1 sda1 {r} 0 {rs} 0 {w} 0 {ws} 0 0 0 0 0 0 0 0 0 0\n"
    "   7       0 loop0 0 0 99999999 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
)


def diskstats(root, reads, read_sectors, writes, write_sectors):
    write(root, "/proc/diskstats", DISKSTATS.format(r=reads, rs=read_sectors, w=writes, ws=write_sectors))


def test_disk_bytes_per_second(tmp_path):
    clock = FakeClock()
    diskstats(tmp_path, 10, 1000, 10, 1000)
    monitor = make("disk", root=tmp_path, clock=clock, threshold="1M")
    assert monitor.check() is None  # baseline
    clock.advance(10)
    diskstats(tmp_path, 20, 1000 + 40000, 10, 1000)  # 40000 sectors = 20.48 MB in 10 s
    reason = monitor.check()
    assert reason and "2048000 bytes/s" in reason and "sda" in reason  # partition and loop not counted
    clock.advance(10)
    diskstats(tmp_path, 21, 41000 + 100, 10, 1000)  # 5 kB/s
    assert monitor.check() is None


def test_disk_ios_threshold_and_missing_devices(tmp_path):
    clock = FakeClock()
    diskstats(tmp_path, 0, 0, 0, 0)
    monitor = make("disk", root=tmp_path, clock=clock, threshold="1G", ios_threshold="5")
    monitor.check()
    clock.advance(1)
    diskstats(tmp_path, 3, 8, 3, 8)
    assert "6.0 requests/s" in monitor.check()
    with pytest.raises(MonitorError, match="no device"):
        make("disk", root=tmp_path, devices="^nvme").check()
    with pytest.raises(MonitorError, match="diskstats"):
        make("disk", root=tmp_path / "none").check()


NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls
    lo: {lo} 1 0 0 0 0 0 0 {lo} 1 0 0 0 0 0 0
  eth0: {rx} 10 0 0 0 0 0 0 {tx} 10 0 0 0 0 0 0
"""


def test_net_bandwidth(tmp_path):
    clock = FakeClock()
    write(tmp_path, "/proc/net/dev", NET_DEV.format(lo=0, rx=1000, tx=1000))
    monitor = make("net", root=tmp_path, clock=clock, receive_threshold="100k", send_threshold="1M")
    assert monitor.check() is None
    clock.advance(2)
    write(tmp_path, "/proc/net/dev", NET_DEV.format(lo=10**9, rx=1000 + 300_000, tx=1000))
    assert "receiving 150000 bytes/s (busiest eth0)" in monitor.check()  # lo excluded by default
    clock.advance(2)
    write(tmp_path, "/proc/net/dev", NET_DEV.format(lo=2 * 10**9, rx=301_000, tx=1000 + 4_000_000))
    assert "sending 2000000 bytes/s" in monitor.check()
    clock.advance(2)
    assert monitor.check() is None  # counters unchanged
    with pytest.raises(MonitorError, match="no interface"):
        make("net", root=tmp_path, interfaces="^wlan").check()
