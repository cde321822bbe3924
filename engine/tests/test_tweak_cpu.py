"""CPU tweaks against fake /sys trees: governor, EPP, EPB, boost, CPU offline."""

import logging

import pytest
from fakehost import FakeRunner, Tree, add_cpus, changed_files, make_server, make_tweak, snapshot

from powernap.options import registry
from powernap.sysroot import SysRoot
from powernap.tweaks import FileChange, PowersaveSet, TweakContext, default_record_path

LOG = logging.getLogger("test")
CPU = "/sys/devices/system/cpu"


def context(tmp_path, tree=None):
    tree = tree or make_server(tmp_path)
    root = SysRoot(str(tmp_path))
    return tree, root, TweakContext(root, LOG, None, runner=FakeRunner(tree))


def roundtrip(tmp_path, ctx, tweak):
    """Apply then restore one tweak; returns the results and the files it changed while applied."""
    before = snapshot(tmp_path)
    powersave = PowersaveSet([tweak], ctx.root, default_record_path(ctx.root), LOG)
    applied = powersave.apply("ac")
    during = changed_files(before, snapshot(tmp_path))
    powersave.restore()
    assert changed_files(before, snapshot(tmp_path)) == []
    return applied[0], during


def test_governor_uses_first_available_and_restores(tmp_path):
    tree, root, ctx = context(tmp_path)
    tweak = make_tweak(ctx, "cpu_governor", governor="schedutil, powersave")
    result, during = roundtrip(tmp_path, ctx, tweak)
    assert result["status"] == "applied"
    assert during == ["sys/devices/system/cpu/cpufreq/policy%d/scaling_governor" % n for n in range(4)]
    tweak.notes = []
    assert [c.value for c in tweak.plan()] == ["powersave"] * 4


def test_governor_shared_policy_written_once(tmp_path):
    tree = Tree(tmp_path)
    add_cpus(tree, count=2)
    # cpu1 shares policy0, as on CPUs with one frequency domain.
    import os
    import shutil

    os.unlink(tree.path(CPU + "/cpu1/cpufreq"))
    shutil.rmtree(tree.path(CPU + "/cpufreq/policy1"))
    tree.link(CPU + "/cpu1/cpufreq", CPU + "/cpufreq/policy0")
    _unused, root, ctx = context(tmp_path, tree)
    changes = make_tweak(ctx, "cpu_governor").plan()
    assert [c.path for c in changes] == [CPU + "/cpu0/cpufreq/scaling_governor"]


def test_governor_not_offered_is_noted(tmp_path):
    tree, root, ctx = context(tmp_path)
    tweak = make_tweak(ctx, "cpu_governor", governor="conservative")
    assert tweak.plan() == []
    assert "offers none of conservative" in tweak.notes[0]


def test_epp_validated_against_available_list(tmp_path):
    tree, root, ctx = context(tmp_path)
    for n in range(4):
        tree.write(
            CPU + "/cpufreq/policy%d/energy_performance_available_preferences" % n,
            "default performance balance_performance balance_power \n",
        )
    tweak = make_tweak(ctx, "energy_performance_preference", preference="power, balance_power")
    result, during = roundtrip(tmp_path, ctx, tweak)
    assert result["status"] == "applied" and len(during) == 4
    assert all(c.value == "balance_power" for c in tweak.plan())
    with pytest.raises(ValueError):
        registry("tweak")["energy_performance_preference"].parse_options({"preference": "turbo"})


def test_epb_names_and_numbers(tmp_path):
    cls = registry("tweak")["energy_perf_bias"]
    assert cls.parse_options({"bias": "balance-power"})["bias"] == 8
    assert cls.parse_options({"bias": "15"})["bias"] == 15
    with pytest.raises(ValueError):
        cls.parse_options({"bias": "16"})
    tree, root, ctx = context(tmp_path)
    result, during = roundtrip(tmp_path, ctx, make_tweak(ctx, "energy_perf_bias", bias="power"))
    assert result["detail"].count("=15") == 4 and len(during) == 4


def test_boost_intel_pstate_inverted(tmp_path):
    tree, root, ctx = context(tmp_path)
    assert [(c.path, c.value) for c in make_tweak(ctx, "cpu_boost").plan()] == [(CPU + "/intel_pstate/no_turbo", "1")]
    assert [c.value for c in make_tweak(ctx, "cpu_boost", boost="yes").plan()] == ["0"]


def test_boost_cpufreq_global_and_per_policy(tmp_path):
    tree = Tree(tmp_path)
    add_cpus(tree, count=2, pstate=False)
    for n in range(2):
        tree.write(CPU + "/cpufreq/policy%d/boost" % n, "1\n")
    _unused, root, ctx = context(tmp_path, tree)
    assert [c.path for c in make_tweak(ctx, "cpu_boost").plan()] == [
        CPU + "/cpufreq/policy0/boost",
        CPU + "/cpufreq/policy1/boost",
    ]
    tree.write(CPU + "/cpufreq/boost", "1\n")
    result, during = roundtrip(tmp_path, ctx, make_tweak(ctx, "cpu_boost"))
    assert during == ["sys/devices/system/cpu/cpufreq/boost"]


def test_offline_keeps_n_online_never_cpu0(tmp_path):
    tree, root, ctx = context(tmp_path)
    tree.write(CPU + "/cpu0/online", "1\n")  # some kernels let cpu0 go offline: we never do
    plan = make_tweak(ctx, "cpu_offline", keep_online=2).plan()
    assert [(c.path, c.value) for c in plan] == [(CPU + "/cpu3/online", "0"), (CPU + "/cpu2/online", "0")]
    plan = make_tweak(ctx, "cpu_offline", keep_online=1).plan()
    assert CPU + "/cpu0/online" not in [c.path for c in plan] and len(plan) == 3
    tree.write(CPU + "/cpu3/online", "0\n")  # already offline counts as offline
    assert [c.path for c in make_tweak(ctx, "cpu_offline", keep_online=2).plan()] == [CPU + "/cpu2/online"]
    result, during = roundtrip(tmp_path, ctx, make_tweak(ctx, "cpu_offline", keep_online=1))
    assert sorted(during) == ["sys/devices/system/cpu/cpu1/online", "sys/devices/system/cpu/cpu2/online"]
    with pytest.raises(ValueError):
        registry("tweak")["cpu_offline"].parse_options({"keep_online": "0"})


def test_changes_are_file_changes_with_exact_paths(tmp_path):
    tree, root, ctx = context(tmp_path)
    for change in make_tweak(ctx, "cpu_governor").plan():
        assert isinstance(change, FileChange)
        assert root.exists(change.path)
