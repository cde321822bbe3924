"""PowersaveSet: apply, restore byte for byte, crash recovery, rollback, dry run, skip rules, AC/battery switch."""

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest
from fakehost import (
    FakeRunner,
    changed_files,
    is_query,
    make_kvm_guest,
    make_nspawn_container,
    make_server,
    make_tweak,
    snapshot,
    sysfs_set_class,
)

from powernap import platform
from powernap.options import registry
from powernap.sysroot import SysRoot
from powernap.tweaks import PowersaveSet, Tweak, TweakContext, default_record_path

LOG = logging.getLogger("test")
# Behaves like sysfs for "[choice] other" files, so byte-for-byte comparisons hold for pcie_aspm too.
SysfsSet = sysfs_set_class()
ENGINE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Crash(BaseException):
    """Stands for kill -9: nothing in the engine may catch it."""


def every_tweak(ctx):
    """Every registered tweak, all enabled, with services and modules to act on."""
    extra = {
        "services": {"units": "cups.service, smartd.service, bluetooth.service"},
        "kernel_modules": {"modules": "btusb, uvcvideo, e1000e, not_loaded"},
        "nic_speed": {"enabled": "yes"},
        "usb_autosuspend": {"delay_ms": "5000"},
    }
    return [make_tweak(ctx, name, **extra.get(name, {})) for name in sorted(registry("tweak"))]


def server(tmp_path, runner_cls=FakeRunner):
    tree = make_server(tmp_path)
    root = SysRoot(str(tmp_path))
    runner = runner_cls(tree)
    ctx = TweakContext(root, LOG, platform.detect(root), runner=runner)
    return tree, root, runner, ctx


def command_state(runner):
    return (
        dict(runner.units),
        dict(runner.apm),
        dict(runner.power_save),
        {name: dict(link) for name, link in runner.links.items()},
    )


def by_name(results):
    return {result["name"]: result for result in results}


def test_every_tweak_applies_and_restores_byte_for_byte(tmp_path):
    tree, root, runner, ctx = server(tmp_path)
    cls = SysfsSet
    before, commands_before = snapshot(tmp_path), command_state(runner)
    modules_before = tree.read("/proc/modules")
    powersave = cls(every_tweak(ctx), root, default_record_path(root), LOG)
    results = by_name(powersave.apply())

    # Every tweak did its job on this host.
    assert {name for name, r in results.items() if r["status"] == "applied"} == set(registry("tweak")), results
    assert powersave.active
    record_path = default_record_path(root)
    assert stat.S_IMODE(os.stat(record_path).st_mode) == 0o600
    assert tree.read("/sys/devices/system/cpu/cpufreq/policy2/scaling_governor") == "powersave"
    assert tree.read("/sys/devices/system/cpu/intel_pstate/no_turbo") == "1"
    assert tree.read("/sys/module/pcie_aspm/parameters/policy") == "default performance [powersave] powersupersave \n"
    assert tree.read("/sys/devices/system/cpu/cpu3/online") == "0"
    assert tree.read("/sys/devices/system/cpu/cpu1/online") == "0"
    assert tree.read("/proc/sys/kernel/nmi_watchdog") == "0"
    assert runner.units["cups.service"] == "inactive" and runner.units["smartd.service"] == "inactive"
    assert "btusb" not in tree.read("/proc/modules") and "e1000e" in tree.read("/proc/modules")
    assert runner.apm == {"/dev/sdb": "128", "/dev/sdc": "128"}
    assert runner.power_save["wlp2s0"] == "on"
    assert runner.links["eno1"]["speed"] == 100
    changed = changed_files(before, snapshot(tmp_path))
    assert "proc/modules" in changed and len(changed) > 25

    restored = powersave.restore()
    assert {r["status"] for r in restored} == {"restored"}, restored
    assert changed_files(before, snapshot(tmp_path)) == []
    assert tree.read("/proc/modules") == modules_before
    units, apm, power_save, links = command_state(runner)
    assert (units, power_save, links) == commands_before[:1] + commands_before[2:]
    assert apm == {"/dev/sdb": "254", "/dev/sdc": "off"}  # 'off' came back through hdparm -B 255
    assert not powersave.active and not os.path.exists(record_path)
    # bluetooth.service was not running: the engine never started it.
    assert ["systemctl", "start", "bluetooth.service"] not in runner.calls
    assert runner.units["bluetooth.service"] == "inactive"


def test_restore_is_idempotent(tmp_path):
    tree, root, runner, ctx = server(tmp_path)
    powersave = PowersaveSet(
        [make_tweak(ctx, "cpu_governor"), make_tweak(ctx, "nmi_watchdog")], root, default_record_path(root), LOG
    )
    before = snapshot(tmp_path)
    powersave.apply()
    assert len(powersave.restore()) == 2
    after_first = snapshot(tmp_path)
    assert powersave.restore() == []
    assert powersave.recover() == []
    assert snapshot(tmp_path) == after_first == before


def test_record_holds_the_prior_value_before_each_write(tmp_path):
    tree, root, runner, ctx = server(tmp_path)
    record_path = default_record_path(root)
    seen = []

    class Checking(PowersaveSet):
        def _write(self, path, data):
            if self.restoring:
                return super()._write(path, data)
            with open(record_path, encoding="utf-8") as handle:
                record = json.load(handle)
            entry = [e for e in record["entries"] if e.get("path") == path][-1]
            with open(self.root.path(path), "rb") as handle:
                assert entry["original"].encode("latin-1") == handle.read()
            seen.append(path)
            super()._write(path, data)

    powersave = Checking([make_tweak(ctx, "cpu_governor"), make_tweak(ctx, "sata_alpm")], root, record_path, LOG)
    powersave.restoring = False
    powersave.apply()
    assert len(seen) == 6
    with open(record_path, encoding="utf-8") as handle:
        record = json.load(handle)
    assert record["entries"][0]["original"] == "performance\n"  # trailing newline kept
    powersave.restoring = True
    powersave.restore()
    assert tree.read("/sys/class/scsi_host/host1/link_power_management_policy") == "max_performance\n"


def count_changes(tmp_path_factory):
    base = tmp_path_factory.mktemp("count")
    tree, root, runner, ctx = server(base)
    counter = {"writes": 0}

    class Counting(SysfsSet):
        def _write(self, path, data):
            counter["writes"] += 1
            super()._write(path, data)

    Counting(every_tweak(ctx), root, default_record_path(root), LOG).apply()
    return counter["writes"], len(runner.changing_calls())


def crashing_set(crash_at, after_write):
    """A set that dies (like kill -9) just before, or just after, its ``crash_at``-th write."""

    class Crashing(SysfsSet):
        done = 0

        def _write(self, path, data):
            if Crashing.done == crash_at and not after_write:
                raise Crash()
            super()._write(path, data)
            if Crashing.done == crash_at:
                raise Crash()
            Crashing.done += 1

    return Crashing


def crashing_runner(crash_at):
    """A runner whose process dies right after its ``crash_at``-th changing command ran."""

    class CrashingRunner(FakeRunner):
        done = 0
        armed = True

        def run(self, argv):
            result = super().run(argv)
            if CrashingRunner.armed and not is_query(argv):
                if CrashingRunner.done == crash_at:
                    raise Crash()  # the command ran, the engine died before noticing
                CrashingRunner.done += 1
            return result

    return CrashingRunner


@pytest.mark.parametrize("after_write", [False, True], ids=["before-write", "after-write"])
def test_crash_at_every_write_is_recovered(tmp_path_factory, monkeypatch, after_write):
    # Durability is the kernel's job; the simulated crashes only need the ordering, so skip disk flushes.
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    writes, commands = count_changes(tmp_path_factory)
    assert writes > 30 and commands >= 8
    for crash_at in range(writes):
        base = tmp_path_factory.mktemp("crash%d" % crash_at)
        tree, root, runner, ctx = server(base)
        before, commands_before = snapshot(base), command_state(runner)
        with pytest.raises(Crash):
            crashing_set(crash_at, after_write)(every_tweak(ctx), root, default_record_path(root), LOG).apply()
        # A new process starts: recover() restores everything the crashed one changed.
        fresh = SysfsSet(every_tweak(ctx), root, default_record_path(root), LOG)
        results = fresh.recover()
        assert results and {r["status"] for r in results} == {"restored"}
        assert changed_files(before, snapshot(base)) == [], "crash at write %d" % crash_at
        assert command_state(runner) == commands_before, "crash at write %d" % crash_at
        assert not os.path.exists(default_record_path(root))


def test_crash_inside_every_command_is_recovered(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    _unused, commands = count_changes(tmp_path_factory)
    for crash_at in range(commands):
        base = tmp_path_factory.mktemp("cmd%d" % crash_at)
        runner_class = crashing_runner(crash_at)
        tree, root, runner, ctx = server(base, runner_class)
        before, commands_before = snapshot(base), command_state(runner)
        with pytest.raises(Crash):
            SysfsSet(every_tweak(ctx), root, default_record_path(root), LOG).apply()
        runner_class.armed = False
        SysfsSet([], root, default_record_path(root), LOG, runner=runner).recover()
        assert changed_files(before, snapshot(base)) == [], "crash after command %d" % crash_at
        assert command_state(runner) == commands_before, "crash after command %d" % crash_at


CHILD = textwrap.dedent("""
    import logging, sys, time
    sys.path.insert(0, {tests!r})
    import fakehost
    from powernap import platform
    from powernap.sysroot import SysRoot
    from powernap.tweaks import PowersaveSet, TweakContext, default_record_path

    class BlockingRunner(fakehost.FakeRunner):
        def run(self, argv):
            if argv[:2] == ["hdparm", "-S"]:
                open({marker!r}, "w").close()
                time.sleep(60)  # the parent kills us here
            return super().run(argv)

    root = SysRoot({root!r})
    runner = BlockingRunner(fakehost.Tree({root!r}))
    ctx = TweakContext(root, logging.getLogger("child"), platform.detect(root), runner=runner)
    tweaks = [fakehost.make_tweak(ctx, name) for name in
              ("cpu_governor", "cpu_boost", "nmi_watchdog", "disk_spindown", "pcie_aspm", "cpu_offline")]
    fakehost.sysfs_set_class()(tweaks, root, default_record_path(root), logging.getLogger("child")).apply()
""")


def test_kill_9_in_the_middle_of_apply(tmp_path):
    base = tmp_path / "host"
    tree = make_server(base)
    root = SysRoot(str(base))
    before = snapshot(base)
    marker = str(tmp_path / "blocked")
    script = CHILD.format(tests=os.path.dirname(os.path.abspath(__file__)), marker=marker, root=str(base))
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ENGINE_DIR)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(marker) and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        assert os.path.exists(marker), "child never reached the blocking command (rc %s)" % child.poll()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    assert tree.read("/sys/devices/system/cpu/cpufreq/policy0/scaling_governor") == "powersave"
    assert tree.read("/sys/devices/system/cpu/intel_pstate/no_turbo") == "1"

    runner = FakeRunner(tree)
    results = SysfsSet([], root, default_record_path(root), LOG, runner=runner).recover()
    assert [r["name"] for r in results] == ["disk_spindown", "nmi_watchdog", "cpu_boost", "cpu_governor"]
    assert changed_files(before, snapshot(base)) == []
    # The spindown command was recorded before it ran, so its undo ran too (harmless if it never applied).
    assert runner.calls == [["hdparm", "-S", "0", "/dev/sdb"]]
    assert not os.path.exists(default_record_path(root))


def test_failed_write_rolls_back_only_that_tweak(tmp_path):
    tree, root, runner, ctx = server(tmp_path)
    before = snapshot(tmp_path)
    bad = "/sys/devices/system/cpu/cpu2/cpufreq/scaling_governor"

    class Failing(PowersaveSet):
        def _write(self, path, data):
            if path == bad and data == b"powersave":
                raise OSError(16, "Device or resource busy")
            super()._write(path, data)

    powersave = Failing(
        [make_tweak(ctx, "cpu_governor"), make_tweak(ctx, "nmi_watchdog")], root, default_record_path(root), LOG
    )
    results = by_name(powersave.apply())
    assert results["cpu_governor"]["status"] == "failed"
    assert "busy" in results["cpu_governor"]["detail"] and "rolled back" in results["cpu_governor"]["detail"]
    assert results["nmi_watchdog"]["status"] == "applied"
    # cpu0 and cpu1 were changed before cpu2 failed: put back at once, no half state.
    assert changed_files(before, snapshot(tmp_path)) == ["proc/sys/kernel/nmi_watchdog"]
    assert powersave.applied_tweaks() == ["nmi_watchdog"]
    powersave.restore()
    assert changed_files(before, snapshot(tmp_path)) == []


def test_failed_command_rolls_back_that_tweak(tmp_path):
    tree, root, runner, ctx = server(tmp_path)
    runner.fail.add(("hdparm", "-B", "128", "/dev/sdc"))
    powersave = PowersaveSet([make_tweak(ctx, "disk_apm")], root, default_record_path(root), LOG)
    result = powersave.apply()[0]
    assert result["status"] == "failed" and "simulated failure" in result["detail"]
    assert runner.apm == {"/dev/sdb": "254", "/dev/sdc": "off"}
    assert ["hdparm", "-B", "254", "/dev/sdb"] in runner.calls
    assert powersave.pending_entries() == 0


def test_broken_tweak_is_logged_and_skipped(tmp_path, caplog):
    tree, root, runner, ctx = server(tmp_path)

    class Broken(Tweak):
        """A tweak whose plan raises (not registered: no TYPE)."""

        def plan(self):
            raise RuntimeError("sysfs layout surprise")

    powersave = PowersaveSet(
        [Broken("broken", {}, ctx), make_tweak(ctx, "nmi_watchdog")], root, default_record_path(root), LOG
    )
    with caplog.at_level(logging.ERROR):
        results = by_name(powersave.apply())
    assert results["broken"] == {"name": "broken", "status": "failed", "detail": "sysfs layout surprise"}
    assert results["nmi_watchdog"]["status"] == "applied"
    assert "sysfs layout surprise" in caplog.text


def test_dry_run_changes_nothing(tmp_path):
    tree, root, runner, ctx = server(tmp_path)
    before = snapshot(tmp_path)
    powersave = PowersaveSet(every_tweak(ctx), root, default_record_path(root), LOG, dry_run=True)
    results = by_name(powersave.apply())
    assert results["cpu_governor"]["status"] == "applied"
    assert results["cpu_governor"]["detail"].startswith("dry run: would set")
    assert changed_files(before, snapshot(tmp_path)) == []
    assert runner.changing_calls() == []
    assert not os.path.exists(default_record_path(root))
    assert powersave.restore() == []


def test_skip_rules_enabled_when_allowed(tmp_path):
    tree, root, runner, ctx = server(tmp_path)
    tweaks = [
        make_tweak(ctx, "cpu_governor", enabled="no"),
        make_tweak(ctx, "cpu_boost", when="battery"),
        make_tweak(ctx, "nmi_watchdog"),
        make_tweak(ctx, "usb_autosuspend", name="usb"),
    ]
    denied = []

    def allowed(name):
        denied.append(name)
        return name != "usb_autosuspend"

    results = by_name(PowersaveSet(tweaks, root, default_record_path(root), LOG, allowed=allowed).apply("ac"))
    assert results["cpu_governor"]["detail"] == "disabled"
    assert results["cpu_boost"]["detail"] == "only on battery power (now ac)"
    assert results["usb"]["status"] == "skipped" and "usb_autosuspend" in results["usb"]["detail"]
    assert results["nmi_watchdog"]["status"] == "applied"
    assert "usb" in denied or "usb_autosuspend" in denied


@pytest.mark.parametrize(
    "maker, override, expected",
    [
        (make_kvm_guest, None, {"cpu_governor": "skipped", "nmi_watchdog": "applied"}),
        (make_kvm_guest, "physical", {"cpu_governor": "applied", "nmi_watchdog": "applied"}),
        (make_nspawn_container, None, {"cpu_governor": "skipped", "nmi_watchdog": "skipped"}),
        (make_nspawn_container, "physical", {"cpu_governor": "applied", "nmi_watchdog": "applied"}),
    ],
)
def test_platform_default_without_a_verdict(tmp_path, maker, override, expected):
    tree = maker(tmp_path)
    tree.write("/proc/sys/kernel/nmi_watchdog", "1\n")
    root = SysRoot(str(tmp_path))
    ctx = TweakContext(root, LOG, platform.detect(root, override=override), runner=FakeRunner(tree))
    results = by_name(
        PowersaveSet(
            [make_tweak(ctx, "cpu_governor"), make_tweak(ctx, "nmi_watchdog")], root, default_record_path(root), LOG
        ).apply("ac")
    )
    assert {name: r["status"] for name, r in results.items()} == expected
    if expected["cpu_governor"] == "skipped":
        assert "set platform = physical" in results["cpu_governor"]["detail"]


def test_power_source_switch_swaps_tweak_sets(tmp_path):
    tree, root, runner, ctx = server(tmp_path)
    tweaks = [
        make_tweak(ctx, "cpu_governor"),
        make_tweak(ctx, "cpu_boost", when="battery"),
        make_tweak(ctx, "platform_profile", name="profile_ac", when="ac", profile="balanced"),
        make_tweak(ctx, "platform_profile", name="profile_battery", when="battery", profile="low-power"),
    ]
    tree.write("/sys/firmware/acpi/platform_profile", "performance\n")
    before = snapshot(tmp_path)
    powersave = PowersaveSet(tweaks, root, default_record_path(root), LOG)
    powersave.apply("ac")
    assert sorted(powersave.applied_tweaks()) == ["cpu_governor", "profile_ac"]
    assert tree.read("/sys/firmware/acpi/platform_profile") == "balanced"
    assert tree.read("/sys/devices/system/cpu/intel_pstate/no_turbo") == "0\n"

    results = by_name(powersave.switch_power_source("battery"))
    assert results["profile_ac"]["status"] == "restored"
    assert results["cpu_boost"]["status"] == "applied" and results["profile_battery"]["status"] == "applied"
    assert tree.read("/sys/firmware/acpi/platform_profile") == "low-power"
    assert tree.read("/sys/devices/system/cpu/intel_pstate/no_turbo") == "1"
    assert sorted(powersave.applied_tweaks()) == ["cpu_boost", "cpu_governor", "profile_battery"]

    powersave.switch_power_source("ac")
    assert tree.read("/sys/firmware/acpi/platform_profile") == "balanced"
    assert tree.read("/sys/devices/system/cpu/intel_pstate/no_turbo") == "0\n"
    powersave.restore()
    assert changed_files(before, snapshot(tmp_path)) == []


def test_apply_after_a_crash_recovers_first(tmp_path):
    tree, root, runner, ctx = server(tmp_path)
    before = snapshot(tmp_path)
    first = PowersaveSet([make_tweak(ctx, "cpu_governor")], root, default_record_path(root), LOG)
    first.apply()
    del first  # the process died without restoring
    tree.write("/sys/devices/system/cpu/cpufreq/policy1/scaling_governor", "powersave\n")
    second = PowersaveSet([make_tweak(ctx, "cpu_governor")], root, default_record_path(root), LOG)
    results = second.apply()
    assert [r["status"] for r in results] == ["restored", "applied"]
    second.restore()
    assert changed_files(before, snapshot(tmp_path)) == []


def test_unreadable_record_is_moved_aside(tmp_path):
    tree, root, runner, ctx = server(tmp_path)
    record = default_record_path(root)
    os.makedirs(os.path.dirname(record))
    with open(record, "w", encoding="utf-8") as handle:
        handle.write('{"version": 1, "entries": [')
    results = PowersaveSet([], root, record, LOG, runner=runner).recover()
    assert results[0]["status"] == "failed" and ".corrupt" in results[0]["detail"]
    assert os.path.exists(record + ".corrupt") and not os.path.exists(record)


def test_failed_restore_stays_recorded_and_is_retried(tmp_path):
    tree, root, runner, ctx = server(tmp_path)
    before = snapshot(tmp_path)
    state = {"fail": False}

    class Flaky(PowersaveSet):
        def _write(self, path, data):
            if state["fail"] and path.endswith("nmi_watchdog"):
                raise OSError(5, "Input/output error")
            super()._write(path, data)

    powersave = Flaky(
        [make_tweak(ctx, "cpu_governor"), make_tweak(ctx, "nmi_watchdog")], root, default_record_path(root), LOG
    )
    powersave.apply()
    state["fail"] = True
    results = by_name(powersave.restore())
    assert results["nmi_watchdog"]["status"] == "failed" and results["cpu_governor"]["status"] == "restored"
    assert powersave.active and powersave.pending_entries() == 1
    with open(default_record_path(root), encoding="utf-8") as handle:
        assert json.load(handle)["entries"][0]["path"].endswith("nmi_watchdog")
    state["fail"] = False
    assert by_name(powersave.restore())["nmi_watchdog"]["status"] == "restored"
    assert not powersave.active and changed_files(before, snapshot(tmp_path)) == []


def test_device_removed_during_powersave(tmp_path):
    tree, root, runner, ctx = server(tmp_path)
    powersave = PowersaveSet([make_tweak(ctx, "usb_autosuspend")], root, default_record_path(root), LOG)
    assert powersave.apply()[0]["status"] == "applied"
    import shutil

    shutil.rmtree(tree.path("/sys/devices/pci0000:00/0000:00:14.0/usb1/1-5"))
    assert powersave.restore()[0]["status"] == "restored"
    assert not powersave.active
    assert tree.read("/sys/bus/usb/devices/usb1/power/control") == "on\n"


def test_already_at_value_is_unchanged_and_not_recorded(tmp_path):
    tree, root, runner, ctx = server(tmp_path)
    tree.write("/proc/sys/kernel/nmi_watchdog", "0\n")
    powersave = PowersaveSet([make_tweak(ctx, "nmi_watchdog")], root, default_record_path(root), LOG)
    result = powersave.apply()[0]
    assert result["status"] == "unchanged"
    assert powersave.pending_entries() == 0
    assert powersave.restore() == [] and tree.read("/proc/sys/kernel/nmi_watchdog") == "0\n"


def test_reload_take_over_applies_only_the_difference(tmp_path):
    """A reload during powersave: an unchanged services tweak is neither stopped nor started again."""
    tree, root, runner, ctx = server(tmp_path)
    record = default_record_path(root)
    old = PowersaveSet(
        [
            make_tweak(ctx, "services", units="cups.service, smartd.service"),
            make_tweak(ctx, "nmi_watchdog"),
        ],
        root,
        record,
        LOG,
    )
    assert {r["status"] for r in old.apply()} == {"applied"}
    runner.calls.clear()
    # The new config: services unchanged, nmi_watchdog gone, cpu_governor new; the record moves (state_dir).
    moved = str(tmp_path / "run/elsewhere/powersave.json")
    new = PowersaveSet(
        [make_tweak(ctx, "services", units="cups.service, smartd.service"), make_tweak(ctx, "cpu_governor")],
        root,
        moved,
        LOG,
    )
    results = by_name(new.take_over(old))
    assert results["services"]["status"] == "unchanged" and results["services"]["detail"] == "already applied"
    assert results["nmi_watchdog"]["status"] == "restored" and results["cpu_governor"]["status"] == "applied"
    assert runner.changing_calls() == []  # no systemctl stop/start of cups or smartd
    assert runner.units["cups.service"] == "inactive"
    assert tree.read("/proc/sys/kernel/nmi_watchdog") == "1\n"
    assert not old.active and new.active and not os.path.exists(record) and os.path.exists(moved)
    # A changed option restores and re-applies that tweak; the final restore undoes everything.
    newer = PowersaveSet([make_tweak(ctx, "services", units="cups.service")], root, moved, LOG)
    results = by_name(newer.take_over(new))
    assert results["services"]["status"] == "applied" and results["cpu_governor"]["status"] == "restored"
    assert runner.units["smartd.service"] == "active" and runner.units["cups.service"] == "inactive"
    assert {r["status"] for r in newer.restore()} == {"restored"}
    assert runner.units["cups.service"] == "active" and not os.path.exists(moved)
