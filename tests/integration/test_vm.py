"""The nap → wake path on VM hosts (``powernap-lab up --kind vm``): QEMU guests with their own kernel.

Two VMs are booted once for this module (lab ``POWERNAP_VM_TEST_NAME``, default ``vmt``) and reused; the
engine from this checkout is installed in each (the role's own deploy is tested on nspawn hosts by
molecule) and runs its REAL default actions: ``systemctl suspend`` / ``hibernate``. The tests run in
file order: those that leave the guest running first, then soft-off, S3, RTC wake and S4, and last the
teardown check. Every wait is bounded. Run as root: ``pytest tests/integration/test_vm.py``.
"""

import base64
import io
import json
import os
import re
import subprocess
import tarfile
import time

import pytest
import yaml

from .conftest import REPO, bring_up, tear_down
from .test_lab import _alive, _lab_processes, _snapshot

VM_LAB = os.environ.get("POWERNAP_VM_TEST_NAME", "vmt")
BOOT_TIMEOUT = 420  # TCG boot on a loaded 2-core machine
CONTROLLER = "198.18.0.2"
# Baseline engine config: reacts in seconds; settles a minute after start/resume (so a stage that has just
# woken the host cannot fire again while a test still looks at it); SSH from the controller is not activity.
BASE_CONF = (
    """\
[powernap]
settle = 60s
grace = 3s
interval = 1s
wall = no
min_sleep = 30s
wakeup_delta = 45s
[actions]
wall_command =
[monitor.ssh]
type = tcp
ports = 22
ignore_remote = %s/32
[stage.1]
after = 1h
action = powersave
"""
    % CONTROLLER
)
TEST_CONF = "/etc/powernap/conf.d/50-test.conf"


def engine_tarball():
    """The engine as the role installs it: <prefix>/powernap (package), <prefix>/bin, <prefix>/systemd."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", dereference=True) as tar:
        for sub in ("powernap", "bin", "systemd"):
            tar.add(
                os.path.join(REPO, "engine", sub),
                arcname=sub,
                filter=lambda t: None if "__pycache__" in t.name else t,
            )
    return base64.b64encode(buf.getvalue()).decode()


INSTALL = r"""
set -e
mkdir -p /usr/local/lib/powernap /etc/powernap/conf.d /etc/powernap/hardware.d
base64 -d | tar -xz -C /usr/local/lib/powernap
for f in /usr/local/lib/powernap/bin/*; do sed -i '1s|.*|#!/usr/bin/python3|' "$f"; chmod 755 "$f"; \
  ln -sf "$f" /usr/local/bin/; done
cp /usr/local/lib/powernap/systemd/powernapd.service /etc/systemd/system/
cat > /etc/powernap/powernap.conf <<'EOF'
%s
EOF
cat > /etc/powernap/conf.d/10-inventory.conf <<'EOF'
%s
EOF
# the tests' drop-in exists from the start: a reload re-reads only the files the daemon started with
printf '[stage.1]\nafter = 1h\naction = powersave\n' > /etc/powernap/conf.d/50-test.conf
systemctl daemon-reload
systemctl enable --now powernapd
"""


def inventory_host_config(lab, host):
    """powernap_host_config of the lab inventory, as INI (what the role would render from it)."""
    inv = yaml.safe_load(lab.run("inventory").stdout)
    config = inv["all"]["children"]["lab"]["hosts"][host].get("powernap_host_config", {})
    lines = []
    for section, options in config.items():
        lines.append("[%s]" % section)
        lines.extend("%s = %s" % (k, v) for k, v in options.items())
    return "\n".join(lines)


class Guest:
    """A VM host of the lab, with the engine installed."""

    def __init__(self, lab, name):
        self.lab = lab
        self.name = name

    def sh(self, script, check=True, timeout=300, input=None):
        return self.lab.run("exec", self.name, "--", "sh", "-c", script, check=check, timeout=timeout, input=input)

    def status(self):
        return json.loads(self.sh("powernap status --json").stdout)

    def configure(self, text, naps=False):
        """Replace the test drop-in; reload the engine (a reload keeps its idle time and settle state).

        naps: the new stage fires at once (the host has long been idle), so the session may drop as it sleeps.
        """
        self.sh(
            "cat > %s <<'EOF'\n%s\nEOF\npowernap check-config && systemctl reload powernapd && sleep 1 && "
            "systemctl is-active powernapd" % (TEST_CONF, text),
            check=not naps,
        )

    def events(self, name=None):
        return [e for e in self.status()["events"] if name is None or e["event"] == name]


def wait(predicate, timeout, what, interval=1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(interval)


@pytest.fixture(scope="module")
def vms():
    before = _snapshot(VM_LAB)
    t0 = time.monotonic()
    lab = bring_up(VM_LAB, 2, kind="vm", timeout=BOOT_TIMEOUT)
    lab.before = before
    lab.boot_seconds = time.monotonic() - t0
    tarball = engine_tarball()
    try:
        for name in ("h1", "h2"):
            guest = Guest(lab, name)
            guest.sh(INSTALL % (BASE_CONF, inventory_host_config(lab, name)), input=tarball, timeout=300)
        yield lab
    finally:
        if os.environ.get("POWERNAP_LAB_KEEP") != "1" and os.path.exists("/run/powernap-lab/%s" % VM_LAB):
            tear_down(VM_LAB)


def guest(vms, name):
    return Guest(vms, name)


def module(lab, host, name, args, timeout=400):
    # pipelining: one SSH session per module, none left to open after a nap was scheduled
    extra = ["-o", "-e", "ansible_pipelining=true"]
    proc = lab.ansible(host, "powernap.fleet." + name, json.dumps(args), check=False, timeout=timeout, extra=extra)
    out = proc.stdout
    assert proc.returncode == 0 and "=> " in out, out + proc.stderr
    return json.loads(out.split("=> ", 1)[1])


# --------------------------------------------------------------------------- 3h, 3g: who the VM is
def test_status_says_vm_kind_and_acceleration(vms):
    st = vms.status()
    assert [h["kind"] for h in st["hosts"]] == ["vm", "vm"]
    assert st["vm"]["accel"] in ("kvm", "tcg") and st["vm"]["reason"]
    assert all(h["accel"] == st["vm"]["accel"] and h["booted"] and h["power"] == "on" for h in st["hosts"])


def test_platform_detected_as_vm_and_inventory_override_applies(vms):
    g = guest(vms, "h1")
    inv = yaml.safe_load(vms.run("inventory").stdout)
    h1 = inv["all"]["children"]["lab"]["hosts"]["h1"]
    # the override the engine's docs give admins, and no lab suspend command: the engine's real default
    assert h1["powernap_host_config"] == {"powernap": {"platform": "physical"}}
    assert "powernap_lab_suspend_command" not in h1 and h1["powernap_lab_kind"] == "vm"
    plat = g.status()["platform"]
    # named a VM (the SMBIOS vendor is the lab's, so the evidence is the CPU's hypervisor flag, not DMI)
    assert plat["kind"] == "vm" and plat["virt"] and plat["evidence"], plat
    assert g.sh("systemd-detect-virt").stdout.strip() == "qemu"
    assert plat["override"] == "physical" and plat["effective_kind"] == "physical"
    assert "mem" in plat["sleep_states"] and "disk" in plat["sleep_states"] and plat["can_hibernate"], plat
    # without the override, detection alone gives the safe VM default: no suspend
    out = g.sh(
        "mkdir -p /tmp/pnl-auto && printf '[powernap]\\nplatform = auto\\n[monitor.ssh]\\ntype = tcp\\n"
        "[stage.1]\\nafter = 1h\\naction = powersave\\n' > /tmp/pnl-auto/powernap.conf && "
        "powernap --config /tmp/pnl-auto/powernap.conf hwinfo --json"
    )
    report = json.loads(out.stdout)
    assert report["platform"]["override"] is None and report["platform"]["effective_kind"] == "vm", report["platform"]
    assert "suspend" in report["verdict"]["denied"], report["verdict"]


def test_hwinfo_real_dmi_and_deny_entry_on_smbios_product(vms):
    entry = (
        "[deny.lab-vm-h2-s3]\nproduct_name = pnl-vm-h2\nactions = suspend\n"
        "reason = test: S3 of this VM model is not trusted\n"
    )
    script = "cat > /etc/powernap/hardware.d/test.conf <<'EOF'\n%sEOF\npowernap hwinfo --json" % entry
    reports = {}
    try:
        for name in ("h1", "h2"):
            reports[name] = json.loads(guest(vms, name).sh(script).stdout)
    finally:
        for name in ("h1", "h2"):
            guest(vms, name).sh("rm -f /etc/powernap/hardware.d/test.conf")
    for name, rep in reports.items():
        facts = rep["facts"]
        assert facts["sys_vendor"] == "PowerNap Lab" and facts["product_name"] == "pnl-vm-%s" % name, facts
        assert "8086:2922" in facts["pci"] and "1b36:000d" in facts["pci"], facts["pci"]  # ICH9 AHCI, qemu-xhci
        assert any(p.startswith("1af4:") for p in facts["pci"]), facts["pci"]  # virtio
        assert "0627:0001" in facts["usb"], facts["usb"]  # QEMU USB keyboard
        assert facts["nic_driver"] == ["virtio_net"], facts
    h2 = reports["h2"]["verdict"]
    assert "suspend" in h2["denied"] and "suspend" not in h2["allowed_actions"], h2
    assert any(e["entry"] == "deny.lab-vm-h2-s3" for e in h2["matched_entries"]), h2
    assert any("deny.lab-vm-h2-s3" in label for label in h2["decided_by"]["suspend"]), h2
    assert "suspend" in reports["h1"]["verdict"]["allowed_actions"]


# --------------------------------------------------------------------------- 3d: powersave on a real kernel
KNOBS = r"""
python3 - <<'EOF'
import glob, json
def rd(p):
    try:
        return open(p).read().strip()
    except OSError as e:
        return "ERR"
out = {p: rd(p) for p in ["/sys/devices/system/cpu/cpu1/online", "/proc/sys/kernel/nmi_watchdog",
       "/proc/sys/vm/dirty_writeback_centisecs", "/proc/sys/vm/dirty_expire_centisecs"]}
for pat in ["/sys/class/scsi_host/host*/link_power_management_policy", "/sys/bus/pci/devices/*/power/control",
            "/sys/bus/usb/devices/*/power/control", "/sys/bus/usb/devices/*/power/autosuspend_delay_ms"]:
    for p in sorted(glob.glob(pat)):
        out[p] = rd(p)
print(json.dumps(out))
EOF
"""
TWEAKS = """\
[stage.1]
after = 3s
action = powersave
[tweak.cpu_offline]
[tweak.nmi_watchdog]
[tweak.dirty_writeback]
[tweak.sata_alpm]
[tweak.pci_runtime_pm]
[tweak.usb_autosuspend]
"""


def test_powersave_tweaks_applied_and_restored_exactly_also_after_kill9(vms):
    g = guest(vms, "h2")
    before = json.loads(g.sh(KNOBS).stdout)
    g.configure(TWEAKS)
    wait(lambda: g.status()["powersave"]["active"], 90, "powersave on h2")
    during = json.loads(g.sh(KNOBS).stdout)
    changed = {k for k in before if during.get(k) != before[k]}
    assert during["/sys/devices/system/cpu/cpu1/online"] == "0"
    assert during["/proc/sys/vm/dirty_writeback_centisecs"] == "1500"
    # every tweak that applies on this machine was applied; the rest say why not (e.g. no NMI watchdog under TCG)
    tweaks = {t["name"]: t for t in g.status()["powersave"]["tweaks"]}
    assert {"cpu_offline", "dirty_writeback", "pci_runtime_pm", "usb_autosuspend"} <= {
        n for n, t in tweaks.items() if t["status"] == "applied"
    }, tweaks
    assert all(t["status"] in ("applied", "unchanged", "skipped") and t["detail"] for t in tweaks.values()), tweaks
    assert any(k.startswith("/sys/bus/pci/devices/") for k in changed), changed
    assert any(k.startswith("/sys/bus/usb/devices/") for k in changed), changed
    g.sh("powernap wake")
    wait(lambda: not g.status()["powersave"]["active"], 60, "powersave restored on h2")
    assert json.loads(g.sh(KNOBS).stdout) == before
    # again, then kill -9 the daemon in powersave: its record under /run/powernap undoes it on the next start
    wait(lambda: g.status()["powersave"]["active"], 90, "powersave on h2 again")
    out = g.sh(
        "pid=$(systemctl show -p MainPID --value powernapd); kill -9 $pid\n"
        "printf '[stage.1]\\nafter = 1h\\naction = powersave\\n' > %s; sleep 1\n%s\n"
        "for i in $(seq 1 60); do systemctl is-active -q powernapd && powernap status >/dev/null 2>&1 && break; "
        "sleep 1; done; sleep 2\n%s\nsystemctl show -p NRestarts --value powernapd" % (TEST_CONF, KNOBS, KNOBS),
        timeout=180,
    ).stdout.split("\n")
    killed, after = json.loads(out[0]), json.loads(out[1])
    assert killed == during, "kill -9 must leave the tweaks in place (else the test proves nothing)"
    assert after == before
    assert int(out[2]) >= 1


# --------------------------------------------------------------------------- 3e: input
INPUT_CONF = """\
[monitor.input]
type = input
[stage.1]
after = 90s
action = suspend
warn = 60s
"""


def test_key_on_vm_keyboard_cancels_grace_and_hotplugged_keyboard_is_watched(vms):
    g = guest(vms, "h1")

    def cancel_after(t):
        found = [e for e in g.events("cancel") if e["time"] >= t]
        return found[-1] if found else None

    g.configure(INPUT_CONF)
    try:
        wait(lambda: g.status()["state"] == "grace", 150, "the grace period on h1")
        t = time.time() - 2
        vms.run("input", "h1", "key", "--key", "shift")
        first = wait(lambda: cancel_after(t), 60, "the key to cancel the grace period")
        assert "QEMU USB Keyboard" in first["reason"], first
        # a keyboard plugged in after the engine started, and the first one unplugged: a key typed now comes
        # from the new keyboard's event device, and it cancels the next grace period
        known = set(g.sh("ls /sys/class/input | grep ^event").stdout.split())
        vms.run("input", "h1", "plug")
        new = wait(
            lambda: set(g.sh("ls /sys/class/input | grep ^event").stdout.split()) - known, 60, "the new keyboard"
        )
        vms.run("input", "h1", "unplug", "--device", "kbd0")
        wait(lambda: g.status()["state"] == "grace", 120, "the grace period on h1 again")
        t = time.time() - 2
        vms.run("input", "h1", "key", "--key", "a")
        second = wait(lambda: cancel_after(t), 60, "a key on the hot-plugged keyboard to cancel it")
        assert re.search(r"input on (event\d+)", second["reason"]).group(1) in new, (second, new)
    finally:
        g.configure("[stage.1]\nafter = 1h\naction = powersave\n")


# --------------------------------------------------------------------------- 3f: IPMI soft-off
def ipmitool(lab, host, *args):
    h = lab.host(host)
    cmd = ["ipmitool", "-I", "lanplus", "-C", "3", "-H", h["bmc_address"], "-U", h["bmc_user"], "-P", h["bmc_password"]]
    return lab.ctl(cmd + list(args), timeout=60).stdout


def test_ipmi_soft_off_is_a_clean_guest_shutdown_and_power_on_boots(vms):
    since = time.time()
    assert "on" in ipmitool(vms, "h2", "chassis", "power", "status")
    ipmitool(vms, "h2", "chassis", "power", "soft")
    vms.wait_power("h2", "off", timeout=180)
    assert "off" in ipmitool(vms, "h2", "chassis", "power", "status")
    ev = [e for e in vms.events(host="h2", event="power", since=since) if e["to"] == "off"][-1]
    assert ev["cause"] == "ipmi" and ev["mode"] == "soft", ev
    with open("/run/powernap-lab/%s/hosts/h2/console.log" % VM_LAB, encoding="utf-8", errors="replace") as f:
        console = f.read()
    assert "reboot: Power down" in console and "systemd-shutdown" in console, console[-2000:]
    ipmitool(vms, "h2", "chassis", "power", "on")
    vms.wait_booted("h2", timeout=BOOT_TIMEOUT)
    assert "on" in ipmitool(vms, "h2", "chassis", "power", "status")
    assert [e for e in vms.events(host="h2", event="power", since=since) if e["to"] == "on"][-1]["cause"] == "ipmi"
    wait(
        lambda: guest(vms, "h2").sh("systemctl is-active powernapd", check=False).stdout.strip() == "active",
        120,
        "powernapd after the boot",
    )


# --------------------------------------------------------------------------- 3a: S3 through the engine, WoL wake
def test_engine_suspends_to_s3_and_wol_wakes_with_resume_detected(vms):
    g = guest(vms, "h1")
    since = time.time()
    # delay: the task must return before the (slow, emulated) guest suspends
    nap = module(vms, "h1", "nap", {"state": "suspend", "delay": 60, "timeout": 300})
    assert nap["changed"] is True and nap["via"] == "engine", nap
    vms.wait_power("h1", "suspended", timeout=120)
    assert json.loads(vms.run("qemu-status", "h1").stdout)["status"] == "suspended"
    ev = [e for e in vms.events(host="h1", event="power", since=since) if e["to"] == "suspended"][-1]
    assert ev["kernel_state"] == "S3"
    # SSH and ARP fall silent
    assert not vms.tcp_ok("h1")
    arp = vms.ctl(
        "ip neigh flush dev eth0; ping -c 2 -W 1 198.18.0.11 >/dev/null; ip neigh show 198.18.0.11", check=False
    ).stdout
    assert "lladdr" not in arp, arp
    time.sleep(5)  # sleep long enough for a clear clock jump
    woke = module(vms, "h1", "wake", {"method": "wol", "wait": True, "timeout": 180})
    assert woke["woken_by"] == "wol" and woke["confirmed"] is True, woke
    assert [e for e in vms.events(host="h1", event="power", since=since) if e["to"] == "on"][-1]["cause"] == "wol"
    journal = g.sh("journalctl -b -k --no-pager -g 'PM: suspend (entry|exit)'").stdout
    assert "PM: suspend entry (deep)" in journal and "PM: suspend exit" in journal, journal
    # the ICH9 ACPI PM block is mapped again (PMBASE, ACPI_EN): else the host's next suspend returns at once (3c)
    lpc = [int(b, 16) for b in g.sh("od -An -tx1 -j 64 -N 5 /sys/bus/pci/devices/0000:00:1f.0/config").stdout.split()]
    assert (lpc[0] | lpc[1] << 8) & 0xFF80 and lpc[4] & 0x80, lpc
    st = g.status()
    resumes = [e for e in st["events"] if e["event"] == "resume" and e["time"] >= since - 5]
    assert resumes and resumes[-1]["how"] == "suspended" and resumes[-1]["slept"] >= 4, st["events"]
    assert st["settle_remaining"] > 0 and st["state"] == "awake", st
    fired = [e for e in st["events"] if e["event"] == "action-start" and e["time"] > resumes[-1]["time"]]
    assert not fired, fired


# --------------------------------------------------------------------------- 3c: RTC wake before a timer
def test_rtc_alarm_wakes_the_host_before_a_timer(vms):
    # runs after 3a's S3 + WoL resume of h1: this is the host's second suspend of its boot, which a lost ACPI PM
    # block after the first resume would turn into an immediate "PM: suspend exit"
    g = guest(vms, "h1")
    # a timer due in 150 s; the engine suspends at once and wakes wakeup_delta (45 s) before it
    g.sh("systemctl stop pnl-rtc-test.timer 2>/dev/null; systemd-run --unit pnl-rtc-test --on-active=150 true")
    due = time.time() + 150
    since = time.time()
    g.configure(
        "[monitor.timers]\ntype = timers\nwindow = 20s\nevery = 5s\n"
        "[stage.1]\nafter = 2s\naction = suspend\nwarn = 0s\n",
        naps=True,
    )
    try:
        vms.wait_power("h1", "suspended", timeout=150)
        vms.wait_power("h1", "on", timeout=max(10, due - time.time()))
        assert time.time() < due, "the RTC alarm woke the host only after the timer was due"
        ev = [e for e in vms.events(host="h1", event="power", since=since) if e["to"] == "on"][-1]
        assert ev["cause"] == "guest", ev  # nothing outside woke it
        vms.wait_booted("h1", timeout=120)
        st = g.status()
        resume = [e for e in st["events"] if e["event"] == "resume"][-1]
        assert resume["scheduled"] is True, st["events"]
        done = [e for e in st["events"] if e["event"] == "action-done" and e["time"] >= since - 5][-1]
        assert "RTC wake alarm set for" in done["detail"], done
    finally:
        g.configure("[stage.1]\nafter = 1h\naction = powersave\n")


# --------------------------------------------------------------------------- 3b: hibernate, IPMI wake
def test_stage_hibernates_marker_and_engine_survive_ipmi_wake(vms):
    g = guest(vms, "h2")
    pid = g.sh("echo marker-$$ > /dev/shm/pnl-marker; systemctl show -p MainPID --value powernapd").stdout.strip()
    since = time.time()
    g.configure("[stage.1]\nafter = 2s\naction = hibernate\nwarn = 0s\n", naps=True)
    vms.wait_power("h2", "hibernated", timeout=240)
    assert "off" in ipmitool(vms, "h2", "chassis", "power", "status")
    woke = module(vms, "h2", "wake", {"method": "ipmi", "wait": True, "timeout": 300})
    assert woke["woken_by"] == "ipmi" and woke["confirmed"] is True, woke
    ons = [e for e in vms.events(host="h2", event="power", since=since) if e["to"] == "on"]
    assert ons[-1]["cause"] == "ipmi" and ons[-1]["resume"] == "hibernation", ons
    g.configure("[stage.1]\nafter = 1h\naction = powersave\n")
    out = g.sh("cat /dev/shm/pnl-marker; systemctl show -p MainPID --value powernapd").stdout.split()
    assert out[0].startswith("marker-") and out[1] == pid, out
    resume = [e for e in g.events("resume") if e["time"] >= since][-1]
    assert resume["how"] == "suspended" and resume["slept"] > 2


# --------------------------------------------------------------------------- down leaves nothing
def test_down_leaves_no_qemu_socket_tap_overlay_or_namespace(vms):
    run_dir = "/run/powernap-lab/%s" % VM_LAB
    procs = _lab_processes(VM_LAB)
    qemu = subprocess.run(
        ["pgrep", "-f", "qemu-system-x86_64 -name %s-" % VM_LAB], capture_output=True, text=True, check=False
    ).stdout.split()
    assert qemu, "no QEMU running"  # (a host an earlier failure left hibernated has none)
    taps = subprocess.run(
        ["ip", "-n", "%s-sw" % VM_LAB, "-o", "link", "show", "type", "tun"], capture_output=True, text=True, check=False
    ).stdout
    assert "%s-h1" % VM_LAB in taps and "%s-h2" % VM_LAB in taps, taps
    for sub in ("qmp.sock", "disk.qcow2", "swap.raw"):
        assert os.path.exists(os.path.join(run_dir, "hosts", "h1", sub))
    tear_down(VM_LAB)
    assert _snapshot(VM_LAB) == vms.before  # namespaces (and with them the taps and bridges), mounts, cgroups
    assert not os.path.exists(run_dir)  # QMP sockets, overlays, swap disks
    assert [p for p in procs if _alive(*p)] == []
    assert not [p for p in qemu if os.path.exists("/proc/%s" % p)]
