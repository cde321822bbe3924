"""SATA ALPM hot-plug heuristic, disk selection for APM/spindown (HDDs only, never SSDs or system disks)."""

import logging

import pytest
from fakehost import FakeRunner, changed_files, make_server, make_tweak, snapshot

from powernap.sysroot import SysRoot
from powernap.tweaks import PowersaveSet, TweakContext, default_record_path
from powernap.tweaks.storage import read_apm, spindown_code

LOG = logging.getLogger("test")


def context(tmp_path, programs=FakeRunner.PROGRAMS):
    tree = make_server(tmp_path)
    root = SysRoot(str(tmp_path))
    runner = FakeRunner(tree, programs)
    return tree, root, runner, TweakContext(root, LOG, None, runner=runner)


def test_sata_alpm_skips_hotplug_external_empty_and_removable(tmp_path):
    tree, root, runner, ctx = context(tmp_path)
    tweak = make_tweak(ctx, "sata_alpm")
    assert [c.path for c in tweak.plan()] == [
        "/sys/class/scsi_host/host0/link_power_management_policy",
        "/sys/class/scsi_host/host1/link_power_management_policy",
    ]
    notes = " | ".join(tweak.notes)
    assert "host2 skipped: empty port" in notes
    assert "host3 skipped: AHCI port is hot-plug capable or external" in notes
    assert "host4 skipped: removable disk sdd" in notes
    # eSATA bit (21) alone also counts as external.
    tree.write("/sys/class/scsi_host/host1/ahci_port_cmd", "20c017\n")
    tweak = make_tweak(ctx, "sata_alpm", skip_hosts="host0", include_empty_ports="yes")
    assert [c.path.split("/")[4] for c in tweak.plan()] == ["host2"]
    before = snapshot(tmp_path)
    powersave = PowersaveSet([make_tweak(ctx, "sata_alpm", policy="min_power")], root, default_record_path(root), LOG)
    powersave.apply("ac")
    assert tree.read("/sys/class/scsi_host/host0/link_power_management_policy") == "min_power"
    powersave.restore()
    assert changed_files(before, snapshot(tmp_path)) == []


def test_disks_hdd_only_never_ssd_or_system(tmp_path):
    tree, root, runner, ctx = context(tmp_path)
    tweak = make_tweak(ctx, "disk_apm")
    assert [c.apply for c in tweak.plan()] == [["hdparm", "-B", "128", "/dev/sdb"], ["hdparm", "-B", "128", "/dev/sdc"]]
    # The root disk spinning: still left alone unless named; an SSD: never, even when named.
    tree.write("/sys/block/sda/queue/rotational", "1\n")
    runner.apm["/dev/sda"] = "254"
    tweak = make_tweak(ctx, "disk_apm")
    assert "/dev/sda" not in [c.apply[-1] for c in tweak.plan()]
    assert any("sda holds a system mount or swap" in note for note in tweak.notes)
    assert [c.apply[-1] for c in make_tweak(ctx, "disk_apm", disks="/dev/sda").plan()] == ["/dev/sda"]
    tree.write("/sys/block/sdb/queue/rotational", "0\n")
    tweak = make_tweak(ctx, "disk_apm", disks="sdb, sdz")
    assert tweak.plan() == []
    assert "sdb is not rotational (SSD): never spun down" in tweak.notes
    assert "named disk sdz does not exist" in tweak.notes


def test_disks_under_lvm_root_and_swap_are_protected(tmp_path):
    tree, root, runner, ctx = context(tmp_path)
    # / on dm-0 built from sdb1: sdb becomes a system disk.
    tree.write("/sys/devices/virtual/block/dm-0/dm/name", "vg-root\n")
    tree.link(
        "/sys/devices/virtual/block/dm-0/slaves/sdb1",
        "/sys/devices/pci0000:00/0000:00:17.0/ata2/host1/target1:0:0/1:0:0:0/block/sdb/sdb1",
    )
    tree.link("/sys/dev/block/254:0", "/sys/devices/virtual/block/dm-0")
    tree.write("/proc/self/mountinfo", "22 1 254:0 / / rw - ext4 /dev/mapper/vg-root rw\n")
    tree.write("/proc/swaps", "Filename Type Size Used Priority\n/dev/sda3 partition 8388604 0 -2\n")
    tweak = make_tweak(ctx, "disk_apm")
    assert [c.apply[-1] for c in tweak.plan()] == ["/dev/sdc"]


def test_unknown_root_disk_means_named_disks_only(tmp_path):
    tree, root, runner, ctx = context(tmp_path)
    tree.write("/proc/self/mountinfo", "22 1 0:31 / / rw - zfs rpool/ROOT/debian rw\n")
    tweak = make_tweak(ctx, "disk_spindown")
    assert tweak.plan() == [] and "cannot tell which disk holds /" in tweak.notes[0]
    assert [c.apply for c in make_tweak(ctx, "disk_spindown", disks="sdc", timeout="2h").plan()] == [
        ["hdparm", "-S", "244", "/dev/sdc"]
    ]


def test_apm_restores_prior_level_and_skips_unsupported(tmp_path):
    tree, root, runner, ctx = context(tmp_path)
    runner.apm["/dev/sdc"] = None
    powersave = PowersaveSet([make_tweak(ctx, "disk_apm", level=192)], root, default_record_path(root), LOG)
    result = powersave.apply("ac")[0]
    assert runner.apm["/dev/sdb"] == "192" and "sdc: APM not supported" in result["detail"]
    powersave.restore()
    assert runner.apm == {"/dev/sdb": "254", "/dev/sdc": None}


def test_spindown_restores_configured_timer(tmp_path):
    tree, root, runner, ctx = context(tmp_path)
    powersave = PowersaveSet(
        [make_tweak(ctx, "disk_spindown", timeout="10m", restore_timeout="1h")], root, default_record_path(root), LOG
    )
    powersave.apply("ac")
    assert runner.spindown == {"/dev/sdb": "120", "/dev/sdc": "120"}
    powersave.restore()
    assert runner.spindown == {"/dev/sdb": "242", "/dev/sdc": "242"}


def test_without_hdparm_nothing_happens(tmp_path):
    tree, root, runner, ctx = context(tmp_path, programs=("systemctl",))
    tweak = make_tweak(ctx, "disk_apm")
    assert tweak.plan() == [] and tweak.notes == ["hdparm is not installed"]


@pytest.mark.parametrize("seconds, code", [(0, 0), (5, 1), (60, 12), (1200, 240), (1800, 241), (19800, 251), (3, 1)])
def test_spindown_encoding(seconds, code):
    assert spindown_code(seconds) == code


def test_read_apm_variants():
    assert read_apm("\n/dev/sda:\n APM_level\t= 254\n") == "254"
    assert read_apm("\n/dev/sda:\n APM_level\t= off\n") == "off"
    assert read_apm("\n/dev/sda:\n APM_level\t= not supported\n") is None
    assert read_apm("") is None
