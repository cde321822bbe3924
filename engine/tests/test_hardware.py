"""Hardware allow/deny lists: parsing with FILE:LINE errors, matching, precedence, platform defaults, hwinfo."""

import glob
import json
import logging
import os

import pytest
from fakehost import FakeRunner, make_kvm_guest, make_laptop_on_battery, make_nspawn_container, make_server, make_tweak

from powernap import hardware, platform
from powernap.sysroot import SysRoot
from powernap.tweaks import PowersaveSet, TweakContext, default_record_path

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "hardware.d")


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def host(tmp_path, maker=make_server, override=None):
    maker(tmp_path / "root")
    root = SysRoot(str(tmp_path / "root"))
    return root, hardware.collect_facts(root), platform.detect(root, override=override)


def test_collect_facts_from_a_server_tree(tmp_path):
    root, facts, _unused = host(tmp_path)
    assert facts["sys_vendor"] == "Dell Inc." and facts["product_name"] == "PowerEdge R640"
    assert facts["board_name"] == "0X45NX" and facts["bios_version"] == "2.17.1"
    assert "10de:1f82" in facts["pci"] and "8086:15bc" in facts["pci"]
    assert facts["usb"] == ["0403:6001", "046d:c31c", "051d:0002", "0781:5567", "0d8c:0014", "1d6b:0002"]
    assert facts["nic_driver"] == ["e1000e", "iwlwifi"]
    assert facts["cpu_model"] == "Intel(R) Xeon(R) Silver 4110 CPU @ 2.10GHz"
    assert facts["kernel"] == "6.1.0-18-amd64"


def test_example_lists_load_cleanly():
    paths = sorted(glob.glob(os.path.join(EXAMPLES, "*.conf")))
    assert len(paths) >= 3
    lists, errors = hardware.load_lists(paths)
    assert errors == []
    assert len(lists.entries) == 6


def test_invalid_entries_report_file_and_line(tmp_path):
    path = write(
        tmp_path,
        "bad.conf",
        "\n".join(
            [
                "[deny.no-reason]",  # 1
                "sys_vendor = LENOVO",  # 2
                "actions = suspend",  # 3
                "",  # 4
                "[deny.typos]",  # 5
                "pci = nvidia",  # 6
                "actions = suspend, nap",  # 7
                "tweaks = usb_autosuspnd",  # 8
                "colour = blue",  # 9
                "kernel = <=six",  # 10
                "reason = testing",  # 11
                "",  # 12
                "[maybe.something]",  # 13
                "kernel = *",  # 14
                "",  # 15
                "[allow.nothing]",  # 16
                "reason = matches all",  # 17
                "[allow.ok]",  # 18
                "usb = 051d:*",  # 19
                "tweaks = *",  # 20
                "reason = fine",  # 21
            ]
        )
        + "\n",
    )
    lists, errors = hardware.load_lists([path])
    texts = [str(error) for error in errors]
    where = [(os.path.basename(e.path), e.line) for e in errors]
    assert ("bad.conf", 1) in where and any("needs a reason" in t for t in texts)
    assert "%s:6: pci: 'nvidia' is not a vendor:device pattern in hex (e.g. 8086:15b8, 10de:*)" % path in texts
    assert any(t.startswith(path + ":7: unknown action(s) nap") for t in texts)
    assert any(t.startswith(path + ":8: unknown tweak(s) usb_autosuspnd") for t in texts)
    assert any(t.startswith(path + ":9: unknown key 'colour'") for t in texts)
    assert any(t.startswith(path + ":10: kernel: '<=six' is not a kernel comparison") for t in texts)
    assert any(t.startswith(path + ":13: section [maybe.something] must be") for t in texts)
    assert any(t.startswith(path + ":16: [allow.nothing] names no actions") for t in texts)
    assert any(t.startswith(path + ":16: [allow.nothing] has no match keys") for t in texts)
    assert [entry.name for entry in lists.entries] == ["ok"]  # invalid entries are dropped


def test_matching_all_keys_any_pattern_any_device(tmp_path):
    root, facts, info = host(tmp_path)
    path = write(
        tmp_path,
        "l.conf",
        """
[deny.dell-nvidia]
sys_vendor = dell*
pci = 10de:1f8?
actions = hibernate
reason = both match

[deny.dell-amd]
sys_vendor = Dell Inc.
pci = 1002:*
actions = poweroff
reason = no AMD GPU here

[deny.any-of]
product_name = PowerEdge R740, PowerEdge R640
actions = command
reason = second pattern matches
""",
    )
    lists, errors = hardware.load_lists([path])
    assert errors == []
    verdict = hardware.evaluate(facts, lists, info)
    assert [entry.name for entry in verdict.matched] == ["dell-nvidia", "any-of"]
    assert not verdict.allows("hibernate") and verdict.allows("poweroff") and not verdict.allows("custom")
    assert verdict.reason("hibernate") == "both match"


@pytest.mark.parametrize(
    "pattern, matches",
    [
        ("6.1.*", True),
        ("6.1.0-18-amd64", True),
        ("5.*", False),
        ("<6.2", True),
        ("<6.1", False),
        ("<=6.1", True),
        (">=6.1.0", True),
        (">5", True),
        (">6", False),
        ("=6.1", True),
        (">6.1.0", False),
    ],
)
def test_kernel_patterns(tmp_path, pattern, matches):
    root, facts, info = host(tmp_path)
    path = write(tmp_path, "k.conf", "[deny.k]\nkernel = %s\nactions = suspend\nreason = r\n" % pattern)
    lists, errors = hardware.load_lists([path])
    assert errors == []
    assert hardware.evaluate(facts, lists, info).allows("suspend") is not matches


def test_deny_beats_allow_beats_platform_default(tmp_path):
    root, facts, info = host(tmp_path, make_kvm_guest)
    assert info.kind == "vm"
    empty = hardware.HardwareLists()
    verdict = hardware.evaluate(facts, empty, info)
    assert not verdict.allows("suspend") and verdict.decided_by["suspend"] == ["platform default"]
    assert not verdict.allows("cpu_governor") and verdict.allows("nmi_watchdog")
    assert verdict.allows("powersave") and verdict.allows("poweroff")

    allow = write(
        tmp_path,
        "60-allow.conf",
        "[allow.qemu]\nsys_vendor = QEMU\nactions = suspend\ntweaks = cpu_governor\nreason = tested\n",
    )
    lists, _unused = hardware.load_lists([allow])
    verdict = hardware.evaluate(facts, lists, info)
    assert verdict.allows("suspend") and verdict.allows("cpu_governor") and not verdict.allows("hibernate")
    assert verdict.decided_by["suspend"] == ["allow.qemu (%s:1)" % allow]
    assert verdict.reason("suspend").startswith("allowed by allow.qemu")

    deny = write(tmp_path, "70-deny.conf", "[deny.kernel]\nkernel = 6.1.*\nactions = *\nreason = broken kernel\n")
    lists, _unused = hardware.load_lists([allow, deny])
    verdict = hardware.evaluate(facts, lists, info)
    assert not verdict.allows("suspend") and verdict.reason("suspend") == "broken kernel"
    assert verdict.decided_by["suspend"] == ["deny.kernel (%s:1)" % deny]
    assert verdict.to_dict()["allowed_actions"] == []


def test_override_physical_drops_the_platform_default(tmp_path):
    root, facts, info = host(tmp_path, make_nspawn_container)
    verdict = hardware.evaluate(facts, hardware.HardwareLists(), info)
    assert not verdict.allows("suspend") and not verdict.allows("nmi_watchdog")
    assert "container (systemd-nspawn)" in verdict.reason("nmi_watchdog")
    verdict = hardware.evaluate(facts, hardware.HardwareLists(), info, override="physical")
    assert verdict.allows("suspend") and verdict.allows("nmi_watchdog") and verdict.denied == {}
    # The override given to detect() works the same way.
    root, facts, info = host(tmp_path / "b", make_nspawn_container, override="physical")
    assert hardware.evaluate(facts, hardware.HardwareLists(), info).denied == {}


def test_kernel_capabilities_are_part_of_the_default(tmp_path):
    root, facts, info = host(tmp_path, make_laptop_on_battery)
    verdict = hardware.evaluate(facts, hardware.HardwareLists(), info)
    assert verdict.allows("suspend") and not verdict.allows("hibernate")
    assert "no active swap" in verdict.reason("hibernate") and not verdict.allows("suspend-then-hibernate")


def test_denied_suspend_falls_back_to_the_next_allowed_action(tmp_path):
    root, facts, info = host(tmp_path)
    path = write(
        tmp_path, "d.conf", "[deny.s3]\nsys_vendor = Dell*\nactions = suspend, hibernate\nreason = firmware bug\n"
    )
    lists, _unused = hardware.load_lists([path])
    verdict = hardware.evaluate(facts, lists, info)
    chosen, skipped = verdict.fallback(["suspend", "hibernate", "poweroff"])
    assert chosen == "poweroff"
    assert skipped == [("suspend", "firmware bug"), ("hibernate", "firmware bug")]
    assert verdict.fallback(["suspend"]) == (None, [("suspend", "firmware bug")])


def test_later_file_overrides_a_key_of_the_same_entry(tmp_path):
    root, facts, info = host(tmp_path)
    first = write(tmp_path, "10.conf", "[deny.gpu]\npci = 10de:*\nactions = suspend\nreason = old\n")
    second = write(tmp_path, "20.conf", "[deny.gpu]\nactions = hibernate\n")
    lists, errors = hardware.load_lists([first, second])
    assert errors == []
    verdict = hardware.evaluate(facts, lists, info)
    assert verdict.allows("suspend") and not verdict.allows("hibernate")


def test_verdict_drives_powersave_set(tmp_path):
    root, facts, info = host(tmp_path)
    path = write(tmp_path, "u.conf", "[deny.ups]\nusb = 051d:0002\ntweaks = usb_autosuspend\nreason = UPS drops\n")
    lists, _unused = hardware.load_lists([path])
    verdict = hardware.evaluate(facts, lists, info)
    ctx = TweakContext(root, logging.getLogger("t"), info, runner=FakeRunner())
    results = PowersaveSet(
        [make_tweak(ctx, "usb_autosuspend"), make_tweak(ctx, "nmi_watchdog")],
        root,
        default_record_path(root),
        logging.getLogger("t"),
        allowed=verdict,
    ).apply("ac")
    assert {r["name"]: r["status"] for r in results} == {"usb_autosuspend": "skipped", "nmi_watchdog": "applied"}


def test_hwinfo_report_and_text(tmp_path):
    make_kvm_guest(tmp_path / "root")
    root = SysRoot(str(tmp_path / "root"))
    good = write(tmp_path, "a.conf", "[allow.qemu]\nsys_vendor = QEMU\nactions = suspend\nreason = tested\n")
    bad = write(tmp_path, "b.conf", "[deny.x]\nactions = suspend\n")
    report = hardware.hwinfo_report(root, [good, bad])
    json.dumps(report)  # --json must serialise
    assert report["platform"]["kind"] == "vm" and report["facts"]["sys_vendor"] == "QEMU"
    assert report["verdict"]["allowed_actions"] == ["powersave", "suspend", "poweroff", "custom"]
    assert report["verdict"]["decided_by"]["suspend"] == ["allow.qemu (%s:1)" % good]
    assert "cpu_governor" in report["verdict"]["denied"]
    assert report["errors"] and report["errors"][0].startswith(bad + ":1:")
    text = hardware.format_hwinfo(report)
    assert "Platform: vm (kvm)" in text
    assert "allowed actions: powersave, suspend, poweroff, custom" in text
    assert "hibernate" in text and "platform default" in text
    assert "allowed explicitly: suspend [allow.qemu" in text
    assert "List errors:" in text
    report = hardware.hwinfo_report(root, [], override="physical")
    assert report["verdict"]["denied"] == {} and "treated as physical" in hardware.format_hwinfo(report)


def test_list_files_in_name_order(tmp_path):
    tree_root = tmp_path / "root"
    os.makedirs(tree_root / "etc/powernap/hardware.d")
    for name in ("50-b.conf", "10-a.conf", "README"):
        (tree_root / "etc/powernap/hardware.d" / name).write_text("", encoding="utf-8")
    files = hardware.list_files(SysRoot(str(tree_root)))
    assert [os.path.basename(f) for f in files] == ["10-a.conf", "50-b.conf"]


def test_override_physical_keeps_the_kernel_sleep_state_check(tmp_path):
    """platform = physical lifts the VM default, not what the kernel says: an empty /sys/power/state
    (the audit's VM) means no suspend, and best-effort says it will power off, and why."""
    tree = make_kvm_guest(tmp_path)
    tree.write("/sys/power/state", "")
    root = SysRoot(str(tmp_path))
    report = hardware.hwinfo_report(root, [], override="physical")
    denied = report["verdict"]["denied"]
    assert denied["suspend"] == "the kernel offers no suspend state (/sys/power/state: empty)"
    assert "suspend-then-hibernate" in denied and "hybrid-sleep" in denied and "poweroff" not in denied
    assert report["best_effort"] == {
        "chain": ["suspend-then-hibernate", "suspend", "hibernate", "poweroff"],
        "resolves_to": "poweroff",
        "passed_over": {
            "suspend-then-hibernate": denied["suspend-then-hibernate"],
            "suspend": denied["suspend"],
            "hibernate": denied["hibernate"],
        },
    }
    text = hardware.format_hwinfo(report)
    assert (
        "best-effort (suspend-then-hibernate > suspend > hibernate > poweroff) will poweroff, because "
        "suspend-then-hibernate is not possible (the kernel offers no suspend state" in text
    )
    assert "evidence: DMI sys_vendor = QEMU; hypervisor flag in /proc/cpuinfo" in text


def test_a_replaced_suspend_command_is_not_denied_by_the_kernels_sleep_states(tmp_path):
    """The kernel's /sys/power/state speaks for the default commands only: an admin's own suspend command
    (a vendor tool, the lab's simulated suspend) is neither allowed nor denied by it."""
    from powernap.actions import ActionsSection, replaced_commands

    tree = make_kvm_guest(tmp_path)
    tree.write("/sys/power/state", "")
    info = platform.detect(SysRoot(str(tmp_path)), override="physical")
    settings = ActionsSection.parse_options({"suspend_command": "vendor-sleep --now"})
    replaced = replaced_commands(settings)
    assert replaced == frozenset(["suspend"])
    lists = hardware.HardwareLists()
    verdict = hardware.evaluate({}, lists, info, override="physical", replaced=replaced)
    assert "suspend" not in verdict.denied
    # The default commands keep the kernel's word.
    assert verdict.denied["hibernate"] and verdict.denied["hybrid-sleep"]
    assert "suspend" in hardware.evaluate({}, lists, info, override="physical").denied
