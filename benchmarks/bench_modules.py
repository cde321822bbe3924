"""Module figures: batch WoL to 1,000 targets, IPMI power-on of 30 BMCs vs community.general.ipmi_power,
and byte-for-byte interoperability of our magic packet with Debian's ``wakeonlan``.

Run as root: ``.venv/bin/python benchmarks/bench_modules.py``.  Prints one JSON object per line
({"bench": "modules", "metric", "value", "unit", "target", "ok"}).  Everything happens inside a
network namespace of its own (``pnbench-mod``: a veth pair on a lab-style 198.18.0.0/24 segment,
30 ``ipmi_sim`` BMCs on its loopback), so no packet can leave the machine; the namespace and every
process started here are removed at the end, by PID.

community.general.ipmi_power needs the ``ansible`` package matching ansible-core: it is installed
into ``.cache/bench-ansible`` (a virtualenv of its own), never into the project's venv.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(REPO, ".venv", "bin")
BENCH_VENV = os.path.join(REPO, ".cache", "bench-ansible")
COLLECTIONS = os.path.join(REPO, ".cache", "collections")
NETNS = "pnbench-mod"
SENDER_IP = "198.18.0.2"
BROADCAST = "198.18.0.255"
sys.path.insert(0, os.path.join(REPO, "lab"))
from powernap_lab.services import SIM_EMU  # noqa: E402  (the lab's own BMC definition)

# ipmi_sim's chassis_control hook: the simulated host's power bit lives in $STATE.
CHASSIS_HOOK = """\
#!/bin/sh
STATE=${STATE:?}; [ -f "$STATE" ] || echo 0 > "$STATE"
mc=$1; op=$2; shift 2
case $op in
 get) for p in "$@"; do case $p in power) echo "power:$(cat "$STATE")";; boot) echo "boot:default";;
      *) echo "Invalid parameter: $p"; exit 1;; esac; done;;
 set) while [ -n "$1" ]; do p=$1; v=$2; shift 2; case $p in power) echo "$v" > "$STATE";;
      reset|boot|identify) ;; *) echo "Invalid parameter: $p"; exit 1;; esac; done;;
 check) exit 1;;
esac
"""
# RMCP+ sessions (ipmitool -C 3, pyghmi) need a guid: without one ipmi_sim refuses them all.
LAN_CONF = """\
name "bench-bmc-{index}"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user md2 md5 straight
    allowed_auths_operator md2 md5 straight
    allowed_auths_admin md2 md5 straight
    guid {index:08x}0000000000000000000000bb
  endlan
  chassis_control "env STATE={home}/power.state {hook} 0x20"
  user 1 false "" "" user 10 none md2 md5 straight
  user 2 true "ipmiusr" "test" admin 10 md2 md5 straight
"""
WOL_TARGETS = 1000
BMCS = 30
BMC_BASE_PORT = 17000
INTEROP_MAC = "02:50:4e:00:00:2a"


def emit(metric, value, unit, target=None, ok=None):
    row = {"bench": "modules", "metric": metric, "value": value, "unit": unit}
    if target:
        row["target"] = target
    if ok is not None:
        row["ok"] = ok
    print(json.dumps(row), flush=True)


def sh(*argv, check=True, timeout=120):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


def in_ns(*argv):
    return ["ip", "netns", "exec", NETNS] + list(argv)


def setup_netns():
    sh("ip", "netns", "del", NETNS, check=False)
    sh("ip", "netns", "add", NETNS)
    sh("ip", "-n", NETNS, "link", "set", "lo", "up")
    sh("ip", "-n", NETNS, "link", "add", "wol0", "type", "veth", "peer", "name", "wol1")
    sh("ip", "-n", NETNS, "addr", "add", SENDER_IP + "/24", "dev", "wol0")
    sh("ip", "-n", NETNS, "link", "set", "wol0", "up")
    sh("ip", "-n", NETNS, "link", "set", "wol1", "up")


class Capture:
    """tcpdump on the far end of the veth, writing a pcap we parse ourselves."""

    def __init__(self, workdir, name, bpf="udp port 9"):
        self.path = os.path.join(workdir, name + ".pcap")
        self.proc = subprocess.Popen(
            in_ns("tcpdump", "-i", "wol1", "-U", "-n", "-s", "0", "-w", self.path, bpf),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not os.path.exists(self.path):
            time.sleep(0.05)
        time.sleep(0.3)

    def stop(self):
        time.sleep(0.5)
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return udp_payloads(self.path)


def udp_payloads(path):
    """UDP payloads of every Ethernet/IPv4 frame in a classic pcap file."""
    payloads = []
    with open(path, "rb") as handle:
        data = handle.read()
    if len(data) < 24:
        return payloads
    endian = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    import struct

    offset = 24
    while offset + 16 <= len(data):
        _sec, _usec, incl, _orig = struct.unpack(endian + "IIII", data[offset : offset + 16])
        frame = data[offset + 16 : offset + 16 + incl]
        offset += 16 + incl
        if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
            continue
        ihl = (frame[14] & 0x0F) * 4
        udp = 14 + ihl
        length = struct.unpack("!H", frame[udp + 4 : udp + 6])[0]
        payloads.append(frame[udp + 8 : udp + length])
    return payloads


def ansible_env(extra_path=None):
    env = dict(os.environ)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
        ANSIBLE_GALAXY_SERVER_LIST="",
        ANSIBLE_DEPRECATION_WARNINGS="false",
        ANSIBLE_HOST_KEY_CHECKING="false",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
        PATH=(extra_path or VENV_BIN) + ":" + env.get("PATH", ""),
    )
    return env


def run_playbook(workdir, name, playbook, inventory, forks=5, bin_dir=VENV_BIN):
    play_path = os.path.join(workdir, name + ".yml")
    inv_path = os.path.join(workdir, name + ".inv.json")
    with open(play_path, "w") as handle:
        json.dump(playbook, handle)
    with open(inv_path, "w") as handle:
        json.dump(inventory, handle)
    start = time.monotonic()
    proc = subprocess.run(
        in_ns(os.path.join(bin_dir, "ansible-playbook"), "-i", inv_path, "-f", str(forks), play_path),
        capture_output=True,
        text=True,
        timeout=900,
        env=ansible_env(bin_dir),
        check=False,
    )
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        print("   %s failed (rc=%d): %s" % (name, proc.returncode, proc.stdout[-1500:]), flush=True)
    return elapsed, proc


def bench_wol_batch(workdir):
    targets = [
        {"name": "t%04d" % i, "mac": "02:50:4f:%02x:%02x:%02x" % (i >> 16, (i >> 8) & 255, i & 255)}
        for i in range(WOL_TARGETS)
    ]
    playbook = [
        {
            "hosts": "localhost",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "wake 1000",
                    "powernap.fleet.wake": {"targets": targets, "broadcast": BROADCAST, "repeat": 1, "method": "wol"},
                    "register": "woke",
                },
                {"ansible.builtin.debug": {"msg": "ELAPSED={{ woke.elapsed }} BYWOL={{ woke.summary.by_wol }}"}},
            ],
        }
    ]
    capture = Capture(workdir, "wol1000")
    wall, proc = run_playbook(
        workdir, "wol1000", playbook, {"all": {"hosts": {"localhost": {"ansible_connection": "local"}}}}
    )
    payloads = capture.stop()
    task = None
    for line in proc.stdout.splitlines():
        if "ELAPSED=" in line:
            task = float(line.split("ELAPSED=")[1].split()[0])
    emit("wake batch: 1000 WoL targets, task time", task, "s", "<= 1 s", task is not None and task <= 1.0)
    emit("wake batch: 1000 WoL targets, whole ansible-playbook run", round(wall, 2), "s")
    distinct = len(set(payloads))
    emit("wake batch: distinct magic packets captured", distinct, "packets", "1000", distinct == WOL_TARGETS)


def bench_interop(workdir):
    tool = shutil.which("wakeonlan")
    if not tool:
        emit("interop with Debian wakeonlan (not installed)", None, "")
        return
    capture = Capture(workdir, "interop")
    subprocess.run(in_ns(tool, "-i", BROADCAST, "-p", "9", INTEROP_MAC), capture_output=True, timeout=30, check=False)
    time.sleep(0.3)
    subprocess.run(
        in_ns(
            os.path.join(VENV_BIN, "ansible"),
            "localhost",
            "-c",
            "local",
            "-m",
            "powernap.fleet.wake",
            "-a",
            json.dumps({"mac": INTEROP_MAC, "broadcast": BROADCAST, "repeat": 1, "method": "wol"}),
        ),
        capture_output=True,
        timeout=120,
        env=ansible_env(),
        check=False,
    )
    payloads = capture.stop()
    same = len(payloads) == 2 and payloads[0] == payloads[1]
    emit(
        "interop: payload identical to Debian wakeonlan (%d captured, %s bytes)"
        % (len(payloads), [len(p) for p in payloads]),
        int(same),
        "bool",
        "1",
        same,
    )


class Bmcs:
    """BMCS ipmi_sim instances on the namespace's loopback, power state in files."""

    def __init__(self, workdir):
        self.workdir = os.path.join(workdir, "bmcs")
        self.procs = []
        os.makedirs(self.workdir)
        chassis = os.path.join(self.workdir, "chassis.sh")
        with open(chassis, "w") as handle:
            handle.write(CHASSIS_HOOK)
        os.chmod(chassis, 0o755)
        sim_emu = os.path.join(self.workdir, "sim.emu")
        with open(sim_emu, "w") as handle:
            handle.write(SIM_EMU)
        for index in range(BMCS):
            port = BMC_BASE_PORT + 2 * index
            home = os.path.join(self.workdir, "b%02d" % index)
            os.makedirs(os.path.join(home, "state"))
            with open(os.path.join(home, "lan.conf"), "w") as handle:
                handle.write(LAN_CONF.format(index=index, port=port, home=home, hook=chassis))
            self.procs.append(
                subprocess.Popen(
                    in_ns(
                        "ipmi_sim",
                        "-c",
                        "lan.conf",
                        "-f",
                        sim_emu,
                        "-s",
                        home + "/state",
                        "-n",
                    ),
                    cwd=home,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        time.sleep(1.5)

    def ports(self):
        return [BMC_BASE_PORT + 2 * i for i in range(BMCS)]

    def power_all(self, value):
        for index in range(BMCS):
            with open(os.path.join(self.workdir, "b%02d" % index, "power.state"), "w") as handle:
                handle.write("%d\n" % value)

    def count_on(self):
        on = 0
        for index in range(BMCS):
            with open(os.path.join(self.workdir, "b%02d" % index, "power.state")) as handle:
                on += handle.read().strip() == "1"
        return on

    def stop(self):
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def ensure_bench_venv():
    ansible_playbook = os.path.join(BENCH_VENV, "bin", "ansible-playbook")
    if os.path.exists(ansible_playbook) and os.path.isdir(
        os.path.join(
            BENCH_VENV,
            "lib",
            "python%d.%d" % sys.version_info[:2],
            "site-packages",
            "ansible_collections",
            "community",
            "general",
        )
    ):
        return os.path.join(BENCH_VENV, "bin")
    print("   installing the 'ansible' package into %s (bench only)" % BENCH_VENV, flush=True)
    subprocess.run([sys.executable, "-m", "venv", BENCH_VENV], check=True, timeout=300)
    subprocess.run(
        [
            os.path.join(BENCH_VENV, "bin", "pip"),
            "install",
            "-q",
            "ansible>=12,<13",
            "ansible-core==2.19.14",
            "pyghmi==1.6.19",
        ],
        check=True,
        timeout=1500,
    )
    return os.path.join(BENCH_VENV, "bin")


# Task time, measured inside the play: ansible-playbook start-up is the same for both and not what is compared.
START_TIMER = {"ansible.builtin.set_fact": {"t0": "{{ now().timestamp() }}"}, "run_once": True}
STOP_TIMER = {"ansible.builtin.debug": {"msg": "TASKTIME={{ now().timestamp() - (t0 | float) }}"}, "run_once": True}


def task_time(proc):
    for line in proc.stdout.splitlines():
        if "TASKTIME=" in line:
            return round(float(line.split("TASKTIME=")[1].split()[0].strip('"')), 3)
    return None


def bench_ipmi(workdir):
    bmcs = Bmcs(workdir)
    try:
        ports = bmcs.ports()
        bmcs.power_all(0)
        targets = [{"name": "b%02d" % i, "bmc_host": "127.0.0.1", "bmc_port": p} for i, p in enumerate(ports)]
        ours = [
            {
                "hosts": "localhost",
                "gather_facts": False,
                "tasks": [
                    START_TIMER,
                    {
                        "powernap.fleet.wake": {
                            "targets": targets,
                            "method": "ipmi",
                            "bmc_user": "ipmiusr",
                            "bmc_password": "test",
                            "concurrency": 30,
                        }
                    },
                    STOP_TIMER,
                ],
            }
        ]
        wall_ours, proc = run_playbook(
            workdir, "ipmi-ours", ours, {"all": {"hosts": {"localhost": {"ansible_connection": "local"}}}}
        )
        on_ours = bmcs.count_on()
        time_ours = task_time(proc)
        emit("IPMI power-on of 30 BMCs: powernap.fleet.wake batch, task time", time_ours, "s")
        emit("IPMI power-on of 30 BMCs: powernap.fleet.wake, whole ansible-playbook run", round(wall_ours, 2), "s")
        emit(
            "IPMI power-on of 30 BMCs: powered on by wake batch",
            on_ours,
            "hosts",
            "30",
            on_ours == BMCS and proc.returncode == 0,
        )

        bin_dir = ensure_bench_venv()
        bmcs.power_all(0)
        hosts = {"b%02d" % i: {"ansible_connection": "local", "bmc_port": p} for i, p in enumerate(ports)}
        theirs = [
            {
                "hosts": "all",
                "gather_facts": False,
                "tasks": [
                    START_TIMER,
                    {
                        "community.general.ipmi_power": {
                            "name": "127.0.0.1",
                            "port": "{{ bmc_port }}",
                            "user": "ipmiusr",
                            "password": "test",
                            "state": "on",
                        }
                    },
                    STOP_TIMER,
                ],
            }
        ]
        wall_theirs, proc = run_playbook(
            workdir,
            "ipmi-cg",
            theirs,
            {"all": {"hosts": hosts, "vars": {"ansible_python_interpreter": os.path.join(bin_dir, "python")}}},
            forks=30,
            bin_dir=bin_dir,
        )
        on_theirs = bmcs.count_on()
        time_theirs = task_time(proc)
        emit("IPMI power-on of 30 BMCs: community.general.ipmi_power forks=30, task time", time_theirs, "s")
        emit("IPMI power-on of 30 BMCs: ipmi_power, whole ansible-playbook run", round(wall_theirs, 2), "s")
        emit(
            "IPMI power-on of 30 BMCs: powered on by ipmi_power",
            on_theirs,
            "hosts",
            "30",
            on_theirs == BMCS and proc.returncode == 0,
        )
        speedup = time_theirs / time_ours if time_ours and time_theirs else None
        emit(
            "IPMI power-on of 30 BMCs: speed-up over ipmi_power",
            round(speedup, 1) if speedup else None,
            "x",
            ">= 5x",
            bool(speedup and speedup >= 5),
        )
    finally:
        bmcs.stop()


def main():
    if os.geteuid() != 0:
        sys.exit("bench_modules.py needs root (network namespace, tcpdump)")
    subprocess.run(["make", "-s", "-C", REPO, "collection-link"], check=False, capture_output=True, timeout=60)
    workdir = tempfile.mkdtemp(prefix="pnbench-mod.")
    setup_netns()
    try:
        bench_wol_batch(workdir)
        bench_interop(workdir)
        bench_ipmi(workdir)
    finally:
        sh("ip", "netns", "del", NETNS, check=False)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
