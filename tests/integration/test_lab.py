"""The lab itself, tested against independent peers: Ansible/OpenSSH, wakeonlan, etherwake, tcpdump,
ipmitool (lanplus) against ipmi_sim, and the NUT protocol against upsd. Needs root (see conftest.py)."""

import json
import os
import re
import struct
import subprocess
import time

import pytest

from .conftest import LAB_TOOL, bring_up, require_root, tear_down
from .test_powerwaked import Capture

pytestmark = pytest.mark.lab

NUT_CLIENT = """
import socket, sys
host, port, ups, var = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
with socket.create_connection((host, port), timeout=5) as s:
    s.sendall(("GET VAR %s %s\\n" % (ups, var)).encode())
    print(s.makefile().readline().strip())
"""


def ping(lab, host, count=1, wait=1):
    return (
        lab.ctl(["ping", "-n", "-c", str(count), "-W", str(wait), lab.host(host)["address"]], check=False).returncode
        == 0
    )


def last_power(lab, host, since):
    evs = lab.events(host=host, event="power", since=since)
    return evs[-1] if evs else None


def suspend(lab, host):
    since = time.time()
    assert lab.power(host, "suspend") == "suspended"
    assert last_power(lab, host, since)["cause"] == "lab"
    return since


# ----------------------------------------------------------------------------- basics
def test_status_json_shape(lab):
    data = lab.status()
    assert [h["name"] for h in data["hosts"]] == ["h%d" % i for i in range(1, len(lab.hosts) + 1)]
    for i, h in enumerate(data["hosts"], start=1):
        assert {"name", "address", "mac", "bmc_address", "power"} <= set(h)
        assert h["address"] == "198.18.0.%d" % (10 + i)
        assert h["bmc_address"] == "198.19.0.%d" % (10 + i)
        assert h["mac"] == "02:50:4e:00:00:%02x" % i
        assert h["power"] in ("on", "suspended", "off")


def test_inventory_is_read_by_ansible(lab):
    out = lab.ctl([lab.ansible_bin("ansible-inventory"), "-i", lab.inventory_path, "--list"]).stdout
    inv = json.loads(out)
    hostvars = inv["_meta"]["hostvars"]
    assert sorted(inv["lab"]["hosts"]) == sorted(h["name"] for h in lab.hosts)
    for h in lab.hosts:
        v = hostvars[h["name"]]
        assert v["ansible_host"] == h["address"]
        assert v["powernap_mac"] == h["mac"]
        assert v["powernap_bmc_host"] == h["bmc_address"]
        assert v["powernap_bmc_port"] == 623
        assert v["powernap_bmc_user"] == h["bmc_user"]
        assert v["powernap_bmc_password"] == h["bmc_password"]
        assert v["powernap_lab_suspend_command"] == "/usr/local/sbin/powernap-lab-suspend"
        assert v["powernap_lab_ups_host"] == "198.18.0.2"
        assert v["powernap_lab_ups_port"] == 3493
    assert len({v["powernap_bmc_password"] for v in hostvars.values()}) == len(lab.hosts)
    if len(lab.hosts) >= 3:
        assert sorted(inv["webservers"]["hosts"]) == ["h1", "h2"]
    with open(lab.inventory_path, encoding="utf-8") as f:
        assert lab.run("inventory").stdout == f.read()


def test_hosts_install_from_the_labs_own_apt_repository(lab):
    # The hosts have no route out of the lab: their one apt source is the lab's repository, served from the
    # controller namespace, and it holds what the role installs (python3-apt is not in the image).
    sources = lab.exec("h1", "cat /etc/apt/sources.list /etc/apt/sources.list.d/*").stdout
    assert [line for line in sources.splitlines() if line.strip() and not line.startswith("#")] == [
        "deb [trusted=yes] http://198.18.0.2:8080/ ./"
    ]
    out = lab.exec(
        "h1",
        "apt-get -q update && apt-get -q install --yes --download-only python3-apt && apt-cache policy python3-apt"
        " && apt-get clean",
        timeout=120,
    ).stdout
    assert "500 http://198.18.0.2:8080 ./ Packages" in out, out


def test_ansible_ping_from_controller(lab):
    out = lab.ansible("lab", "ping").stdout
    for h in lab.hosts:
        assert re.search(r"^%s \| SUCCESS" % h["name"], out, re.M), out


def test_hosts_are_real_and_isolated(lab):
    out = lab.exec(
        "h1",
        "hostname; systemctl is-system-running --wait; ip -o -4 addr show dev eth0; "
        "cat /sys/class/net/eth0/address; ls /run/powernap-lab-nic",
    ).stdout
    assert out.splitlines()[0] == "h1"
    assert "running" in out
    assert "198.18.0.11/24" in out
    assert "02:50:4e:00:00:01" in out
    # each host has its own disk
    lab.exec("h1", "echo mine > /root/only-on-h1")
    assert lab.exec("h2", "test -e /root/only-on-h1", check=False).returncode != 0
    assert lab.exec("h1", "cat /root/only-on-h1").stdout.strip() == "mine"


def test_root_namespace_has_no_address_or_route_into_the_lab(lab):
    addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert "198.18.0." not in addrs and "198.19.0." not in addrs
    assert "198.18.0." not in routes and "198.19.0." not in routes
    assert not re.search(r"^\d+: %s-" % lab.name, links, re.M)


def test_up_is_idempotent(lab):
    before = lab.status()
    t0 = time.monotonic()
    lab.run("up", "--hosts", len(lab.hosts))
    assert time.monotonic() - t0 < 15
    assert lab.status()["hosts"] == before["hosts"]


# ----------------------------------------------------------------------------- suspend and wake
def test_suspended_host_answers_neither_arp_nor_tcp(lab_reset):
    lab = lab_reset
    assert ping(lab, "h2") and lab.tcp_ok("h2")
    suspend(lab, "h2")
    lab.ctl(["ip", "neigh", "flush", "dev", "eth0"])
    assert not ping(lab, "h2", count=2)
    neigh = lab.ctl(["ip", "neigh", "show", lab.host("h2")["address"]]).stdout
    assert "lladdr" not in neigh, neigh  # ARP unanswered: INCOMPLETE/FAILED, no MAC learnt
    assert not lab.tcp_ok("h2", timeout=2)
    with pytest.raises(AssertionError):
        lab.exec("h2", "true")  # nothing runs on a suspended host


def test_wakeonlan_wakes_a_suspended_host(lab_reset):
    lab = lab_reset
    since = suspend(lab, "h2")
    lab.ctl(["wakeonlan", "-i", lab.broadcast, lab.host("h2")["mac"]])
    lab.wait_power("h2", "on")
    ev = last_power(lab, "h2", since)
    assert (ev["from"], ev["to"], ev["cause"], ev["kind"]) == ("suspended", "on", "wol", "udp9")
    assert ping(lab, "h2") and lab.tcp_ok("h2")
    assert lab.exec("h2", "echo awake").stdout.strip() == "awake"


def test_wakeonlan_limited_broadcast_port_7(lab_reset):
    lab = lab_reset
    since = suspend(lab, "h3")
    lab.ctl(["wakeonlan", "-p", "7", lab.host("h3")["mac"]])  # 255.255.255.255:7
    lab.wait_power("h3", "on")
    assert last_power(lab, "h3", since)["kind"] == "udp7"
    assert lab.tcp_ok("h3")


def test_etherwake_wakes_a_suspended_host(lab_reset):
    lab = lab_reset
    for extra in ([], ["-b"]):  # unicast to the NIC's MAC, then broadcast; ethertype 0x0842
        since = suspend(lab, "h1")
        lab.ctl(["etherwake", "-i", "eth0"] + extra + [lab.host("h1")["mac"]])
        lab.wait_power("h1", "on")
        ev = last_power(lab, "h1", since)
        assert (ev["cause"], ev["kind"]) == ("wol", "ether")
        assert ping(lab, "h1") and lab.tcp_ok("h1")


def test_magic_packet_on_the_wire(lab_reset, tmp_path):
    """tcpdump (in the controller namespace) captures exactly the standard 102-byte payload."""
    lab = lab_reset
    suspend(lab, "h3")
    pcap = str(tmp_path / "wol.pcap")
    dump = lab.tcpdump(["-i", "eth0", "-U", "-n", "-c", "1", "-w", pcap, "udp port 9"])
    try:
        lab.ctl(["wakeonlan", "-i", lab.broadcast, lab.host("h3")["mac"]])
        dump.wait(timeout=30)
    finally:
        lab.stop_tcpdump(dump)
    with open(pcap, "rb") as f:
        data = f.read()
    frame = data[24 + 16 :]
    assert frame[:6] == b"\xff" * 6  # broadcast
    assert struct.unpack("!H", frame[12:14])[0] == 0x0800
    ihl = (frame[14] & 0x0F) * 4
    udp = frame[14 + ihl :]
    payload = udp[8:]
    mac = bytes(int(x, 16) for x in lab.host("h3")["mac"].split(":"))
    assert payload == b"\xff" * 6 + mac * 16
    lab.wait_power("h3", "on")


def test_wrong_mac_does_not_wake(lab_reset):
    lab = lab_reset
    since = suspend(lab, "h2")
    wrong = "02:50:4e:00:00:99"
    lab.ctl(["wakeonlan", "-i", lab.broadcast, wrong])
    lab.ctl(["etherwake", "-i", "eth0", "-b", wrong])
    lab.stays("h2", "suspended", seconds=3)
    seen = [e for e in lab.events(event="wol-packet", since=since) if e["mac"] == wrong]
    assert len(seen) == 2 and all(e["result"] == "no-such-nic" for e in seen)  # the lab did see them


def test_wol_disabled_from_inside_the_host_does_not_wake(lab_reset):
    lab = lab_reset
    # the admin's way, inside the host: ethtool -s eth0 wol d
    lab.exec("h3", "ethtool -s eth0 wol d")
    assert "Wake-on: d" in lab.exec("h3", "ethtool eth0").stdout
    since = time.time()
    # the engine's way of suspending: the command the inventory gives it
    lab.exec("h3", "/usr/local/sbin/powernap-lab-suspend --delay 0.2")
    lab.wait_power("h3", "suspended")
    assert last_power(lab, "h3", since)["cause"] == "engine"
    lab.ctl(["wakeonlan", "-i", lab.broadcast, lab.host("h3")["mac"]])
    lab.ctl(["etherwake", "-i", "eth0", lab.host("h3")["mac"]])
    lab.stays("h3", "suspended", seconds=3)
    ignored = lab.events(host="h3", event="wol-packet", since=since)
    assert len(ignored) == 2 and all(e["result"] == "ignored" and "disabled" in e["reason"] for e in ignored)
    # re-enable it (the host is asleep: from the lab) and it wakes
    lab.wol("h3", "g")
    lab.ctl(["wakeonlan", "-i", lab.broadcast, lab.host("h3")["mac"]])
    lab.wait_power("h3", "on")
    assert lab.tcp_ok("h3")


def test_secureon_password(lab_reset):
    lab = lab_reset
    mac = lab.host("h1")["mac"]
    assert lab.wol("h1", "on", secureon="01:02:03:04:05:06") == {"wol": "gs", "sopass": "01:02:03:04:05:06"}
    since = suspend(lab, "h1")
    lab.ctl(["etherwake", "-i", "eth0", mac])  # no password
    lab.ctl(["etherwake", "-i", "eth0", "-p", "01:02:03:04:05:07", mac])  # wrong password
    lab.stays("h1", "suspended", seconds=3)
    reasons = [e["reason"] for e in lab.events(host="h1", event="wol-packet", since=since)]
    assert len(reasons) == 2 and "wrong SecureOn password" in reasons
    lab.ctl(["etherwake", "-i", "eth0", "-p", "01:02:03:04:05:06", mac])
    lab.wait_power("h1", "on")


def test_wol_wakes_a_host_that_is_off(lab_reset):
    lab = lab_reset
    since = time.time()
    assert lab.power("h2", "off") == "off"
    assert not ping(lab, "h2")
    lab.ctl(["wakeonlan", "-i", lab.broadcast, lab.host("h2")["mac"]])
    lab.wait_booted("h2", timeout=60)
    ev = last_power(lab, "h2", since)
    assert (ev["from"], ev["to"], ev["cause"]) == ("off", "on", "wol")
    # its disk survived the power cycle
    lab.exec("h2", "test -d /root/.ssh")


# ----------------------------------------------------------------------------- BMC
def ipmitool(lab, host, *args, password=None, check=True):
    h = lab.host(host)
    cmd = [
        "ipmitool",
        "-I",
        "lanplus",
        "-C",
        "3",
        "-H",
        h["bmc_address"],
        "-U",
        h["bmc_user"],
        "-P",
        password or h["bmc_password"],
        "-N",
        "2",
        "-R",
        "2",
    ] + list(args)
    return lab.ctl(cmd, check=check, timeout=60)


def test_ipmi_power_off_and_on(lab_reset):
    lab = lab_reset
    assert "Chassis Power is on" in ipmitool(lab, "h1", "chassis", "power", "status").stdout
    since = time.time()
    ipmitool(lab, "h1", "chassis", "power", "off")
    lab.wait_power("h1", "off", timeout=20)
    assert "Chassis Power is off" in ipmitool(lab, "h1", "chassis", "power", "status").stdout
    assert not ping(lab, "h1")
    ipmitool(lab, "h1", "chassis", "power", "on")
    lab.wait_booted("h1", timeout=60)
    assert "Chassis Power is on" in ipmitool(lab, "h1", "chassis", "power", "status").stdout
    evs = [(e["from"], e["to"], e["cause"]) for e in lab.events(host="h1", event="power", since=since)]
    assert evs == [("on", "off", "ipmi"), ("off", "on", "ipmi")]
    lab.ansible("h1", "ping")


def test_ipmi_soft_off_is_a_clean_shutdown(lab_reset):
    lab = lab_reset
    since = time.time()
    ipmitool(lab, "h3", "chassis", "power", "soft")
    lab.wait_power("h3", "off", timeout=40)
    ev = last_power(lab, "h3", since)
    assert (ev["cause"], ev["mode"]) == ("ipmi", "soft")


def test_ipmi_wakes_a_suspended_host(lab_reset):
    lab = lab_reset
    since = suspend(lab, "h2")
    assert "Chassis Power is off" in ipmitool(lab, "h2", "chassis", "power", "status").stdout
    ipmitool(lab, "h2", "chassis", "power", "on")
    lab.wait_power("h2", "on", timeout=20)
    assert last_power(lab, "h2", since)["cause"] == "ipmi"
    assert lab.tcp_ok("h2")


def test_ipmi_credentials_are_per_host(lab):
    bad = ipmitool(lab, "h1", "chassis", "power", "status", password="wrong-password", check=False)
    assert bad.returncode != 0
    other = ipmitool(lab, "h1", "chassis", "power", "status", password=lab.host("h2")["bmc_password"], check=False)
    assert other.returncode != 0


# ----------------------------------------------------------------------------- UPS
def nut_status(lab, where="ctl"):
    argv = ["/usr/bin/python3", "-c", NUT_CLIENT, lab.ups["host"], str(lab.ups["port"]), lab.ups["name"], "ups.status"]
    out = lab.ctl(argv) if where == "ctl" else lab.exec(where, argv)
    m = re.match(r'VAR \S+ ups.status "(.*)"', out.stdout.strip())
    return m.group(1) if m else out.stdout.strip()


def test_ups_status_flips_over_nut(lab):
    try:
        for status in ("OB", "OB LB", "OL"):
            lab.set_ups(status)
            lab.wait_for(lambda s=status: nut_status(lab) == s, 15, "upsd to report %s" % status, interval=0.5)
        lab.set_ups("OB")
        lab.wait_for(lambda: nut_status(lab, where="h1") == "OB", 15, "h1 to read OB from upsd", interval=0.5)
        upsc = lab.ctl(["upsc", "%s@%s:%d" % (lab.ups["name"], lab.ups["host"], lab.ups["port"]), "ups.status"])
        assert upsc.stdout.strip() == "OB"
        assert lab.events(event="ups")[-1]["status"] == "OB"
    finally:
        lab.set_ups("OL")


# ----------------------------------------------------------------------------- events
def test_events_are_timestamped_with_causes(lab):
    evs = lab.events()
    assert evs, "no events"
    ts = [e["t"] for e in evs]
    assert ts == sorted(ts)
    causes = {e.get("cause") for e in evs if e["event"] == "power"}
    assert {"lab-up"} <= causes
    text = lab.run("events").stdout
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 h1 +power", text, re.M)


# ----------------------------------------------------------------------------- robustness
def _snapshot(name):
    netns = (
        sorted(n for n in os.listdir("/run/netns") if n.startswith(name + "-")) if os.path.isdir("/run/netns") else []
    )
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    links = sorted(n for n in re.findall(r"^\d+: ([^:@]+)", links, re.M) if n.startswith(name))
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        mounts = sorted(
            line.split()[4] for line in f if "/powernap-lab/%s/" % name in line or "/run/netns/%s-" % name in line
        )
    cgroups = sorted(dirpath for dirpath, _d, _f in os.walk("/sys/fs/cgroup") if "/%s-" % name in dirpath)
    return {"netns": netns, "links": links, "mounts": mounts, "cgroups": cgroups}


def _lab_processes(name):
    """(pid, starttime) of every process in the lab's namespaces or cgroups."""
    inodes = {
        os.stat(os.path.join("/run/netns", n)).st_ino for n in os.listdir("/run/netns") if n.startswith(name + "-")
    }
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            in_ns = os.stat("/proc/%s/ns/net" % entry).st_ino in inodes
            with open("/proc/%s/cgroup" % entry, encoding="utf-8") as f:
                in_cg = "/%s-lab" % name in f.read()
            with open("/proc/%s/stat" % entry, encoding="utf-8") as f:
                start = f.read().rsplit(")", 1)[1].split()[19]
        except OSError:
            continue
        if in_ns or in_cg:
            found.add((int(entry), start))
    return found


def _alive(pid, start):
    """True while the process runs (a zombie waiting for init to reap it counts as dead)."""
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == start and fields[0] not in ("Z", "X")


def test_second_lab_coexists_and_down_leaves_nothing(lab):
    """A second lab (other name) runs beside the session lab; its `down` removes all it created."""
    # From the session lab's name (never equal to it): two sessions with their own lab names never share it.
    name = lab.name[:6] + ("lx" if lab.name.endswith("lk") else "lk")
    before = _snapshot(name)
    assert not before["netns"] and not before["cgroups"], "leftovers from an earlier run: %s" % before
    other = bring_up(name, 2)
    try:
        procs = _lab_processes(name)
        assert len(procs) > 10, procs  # supervisor, 2 x (nspawn + systemd ...), 2 BMCs, upsd, driver
        during = _snapshot(name)
        assert len(during["netns"]) == 5  # sw, ctl, bmc, h1, h2
        assert any("/run/powernap-lab/%s/" % name in m for m in during["mounts"])
        assert other.ctl(["ping", "-c1", "-W2", "198.18.0.12"]).returncode == 0
        # the two labs use the same addresses without seeing each other
        assert lab.tcp_ok("h1") and other.tcp_ok("h1")
    finally:
        tear_down(name)
    after = _snapshot(name)
    assert after == before
    assert not os.path.exists("/run/powernap-lab/%s" % name)
    assert [p for p in procs if _alive(*p)] == []
    # the session lab is untouched
    assert lab.tcp_ok("h1")
    lab.ansible("lab", "ping")


def test_segments_are_disjoint_l2_segments(segment_labs):
    """Two labs on segments 1 and 2 run side by side: own subnets, MACs, bridges; a magic packet stays on its LAN."""
    lab_a, lab_b = segment_labs
    for lab, k in ((lab_a, 1), (lab_b, 2)):
        assert lab.network == {
            "segment": k,
            "lan": "198.18.%d.0/24" % k,
            "mgmt": "198.19.%d.0/24" % k,
            "controller": "198.18.%d.2" % k,
            "controller_mgmt": "198.19.%d.2" % k,
            "broadcast": "198.18.%d.255" % k,
        }
        for i, h in enumerate(lab.status()["hosts"], start=1):
            assert (h["address"], h["bmc_address"], h["mac"]) == (
                "198.18.%d.%d" % (k, 10 + i),
                "198.19.%d.%d" % (k, 10 + i),
                "02:50:4e:%02x:00:%02x" % (k, i),
            )
        # later commands use the lab's own segment: the inventory, the hosts' view, the UPS on its controller
        inv = json.loads(lab.ctl([lab.ansible_bin("ansible-inventory"), "-i", lab.inventory_path, "--list"]).stdout)
        assert inv["_meta"]["hostvars"]["h1"]["powernap_lab_ups_host"] == lab.controller
        assert "%s/24" % lab.host("h1")["address"] in lab.exec("h1", "ip -o -4 addr show dev eth0").stdout
        assert "%s\tcontroller ups" % lab.controller in lab.exec("h1", "cat /etc/hosts").stdout
        assert nut_status(lab) in ("OL", "OB", "OB LB")
    assert not {h["mac"] for h in lab_a.hosts} & {h["mac"] for h in lab_b.hosts}
    # no route between the segments: A's controller cannot reach B's hosts
    assert lab_a.ctl(["ping", "-n", "-c1", "-W1", lab_b.host("h1")["address"]], check=False).returncode != 0
    target = lab_b.host("h1")
    suspend(lab_b, "h1")
    try:
        on_a, on_b = Capture(lab_a, bridge=True), Capture(lab_b, bridge=True)
        try:
            for dest in (lab_a.broadcast, "255.255.255.255"):
                lab_a.ctl(["wakeonlan", "-i", dest, target["mac"]])
            lab_b.stays("h1", "suspended", seconds=2)
        finally:
            seen_a, seen_b = on_a.stop(), on_b.stop()
        assert Capture.count(seen_a, target["mac"]) == 2, seen_a[-2000:]
        assert Capture.count(seen_b, target["mac"]) == 0, seen_b[-2000:]
        # the same capture on B does see a packet sent on B (so "none on B" above is not a blind capture)
        on_b = Capture(lab_b, bridge=True)
        try:
            lab_b.ctl(["wakeonlan", "-i", lab_b.broadcast, target["mac"]])
            lab_b.wait_power("h1", "on", timeout=10)
        finally:
            seen_b = on_b.stop()
        assert Capture.count(seen_b, target["mac"]) == 1, seen_b[-2000:]
    finally:
        if lab_b.power_state("h1") != "on":
            lab_b.power("h1", "on")
        lab_b.wait_booted("h1")


def test_up_refuses_another_segment_for_a_running_lab(segment_labs):
    lab_a = segment_labs[0]
    proc = lab_a.run("up", "--hosts", "2", "--segment", "3", check=False)
    assert proc.returncode != 0 and "segment 1" in proc.stderr, proc.stderr
    proc = lab_a.run("up", "--hosts", "2", "--segment", "10", check=False)
    assert proc.returncode != 0 and "invalid segment" in proc.stderr, proc.stderr
    assert lab_a.tcp_ok("h1")


def test_down_of_a_lab_that_is_not_up_is_harmless():
    require_root()
    proc = subprocess.run(
        [LAB_TOOL, "--name", "itnone", "down"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "was not up" in proc.stderr


def test_useful_error_when_not_root():
    require_root()
    proc = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            LAB_TOOL,
            "--name",
            "itnoroot",
            "up",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "must run as root" in proc.stderr, proc.stderr


def test_useful_error_when_a_package_is_missing(tmp_path):
    require_root()
    env = dict(os.environ, PATH=str(tmp_path))
    proc = subprocess.run(
        [LAB_TOOL, "--name", "itnopkg", "up"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert proc.returncode != 0
    assert "missing packages" in proc.stderr and "apt-get install" in proc.stderr, proc.stderr
    assert not os.path.exists("/run/powernap-lab/itnopkg")
