"""Lab figures: time to `up` 3 and 10 hosts with a warm image cache, memory per booted host; and for one
VM host (``--kind vm``): boot to SSH, S3 -> WoL -> SSH, hibernate -> resume -> SSH, IPMI soft-off, memory and
idle CPU (``POWERNAP_LAB_BENCH_VM=0`` skips the VM part).

Run as root: ``sudo .venv/bin/python benchmarks/bench_lab.py``. Prints one JSON object per line:
{"bench": "lab", "metric": ..., "value": ..., "unit": ..., "target": ...}. Uses a lab named "bench"
(its own namespaces, so it does not disturb another lab that is up) and removes it at the end.
"""

import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "lab", "powernap-lab")
NAME = os.environ.get("POWERNAP_LAB_BENCH_NAME", "bench")


def emit(metric, value, unit, target=None):
    rec = {"bench": "lab", "metric": metric, "value": value, "unit": unit}
    if target:
        rec["target"] = target
    print(json.dumps(rec), flush=True)


def lab(*args, timeout=900):
    proc = subprocess.run(
        [TOOL, "--name", NAME] + list(args), capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError("powernap-lab %s failed: %s" % (" ".join(args), proc.stderr.strip()))
    return proc.stdout


def timed(*args):
    t0 = time.monotonic()
    lab(*args)
    return time.monotonic() - t0


def cgroup_pids(path):
    pids = []
    for dirpath, _dirs, files in os.walk(path):
        if "cgroup.procs" in files:
            with open(os.path.join(dirpath, "cgroup.procs"), encoding="utf-8") as f:
                pids.extend(int(x) for x in f.read().split())
    return pids


def pss_bytes(pid):
    try:
        with open("/proc/%d/smaps_rollup" % pid, encoding="utf-8") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def host_memory():
    """(mean PSS per host, mean cgroup-charged memory per host or None) over the booted hosts."""
    with open(os.path.join("/run/powernap-lab", NAME, "lab.json"), encoding="utf-8") as f:
        state = json.load(f)
    roots = state["cgroups"]
    pss, charged = [], []
    for h in state["hosts"]:
        cg = "%s-%s" % (NAME, h["name"])
        pss.append(sum(pss_bytes(p) for p in cgroup_pids(os.path.join(roots["unified"], cg))))
        for key, fname in (("unified", "memory.current"), ("memory", "memory.usage_in_bytes")):
            path = os.path.join(roots.get(key, "/nonexistent"), cg, fname)
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    charged.append(int(f.read()))
                break
    return statistics.mean(pss), (statistics.mean(charged) if charged else None)


def boot_seconds():
    evs = json.loads(lab("events", "--json"))
    return [e["seconds"] for e in evs if e["event"] == "booted"]


VM_NAME = os.environ.get("POWERNAP_LAB_BENCH_VM_NAME", "benchvm")


def vm_lab(*args, timeout=900):
    proc = subprocess.run(
        [TOOL, "--name", VM_NAME] + list(args), capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError("powernap-lab %s failed: %s" % (" ".join(args), proc.stderr.strip()))
    return proc.stdout


def vm_power():
    return json.loads(vm_lab("status", "--json"))["hosts"][0]


def wait_vm(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = vm_power()
        if pred(h):
            return
        time.sleep(0.2)
    raise RuntimeError("timed out after %ss waiting for %s" % (timeout, what))


def ssh_up_seconds(t0, timeout=300):
    """Seconds from t0 until the VM's sshd answers (seen from the controller namespace)."""
    probe = "import socket;s=socket.create_connection(('198.18.0.11',22),1);print(s.recv(4)==b'SSH-')"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = subprocess.run(
            [TOOL, "--name", VM_NAME, "ctl", "--", "/usr/bin/python3", "-c", probe],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if proc.stdout.strip() == "True":
            return time.monotonic() - t0
        time.sleep(0.3)
    raise RuntimeError("sshd of the VM did not answer within %ss" % timeout)


def cgroup_cpu_usec(path):
    with open(os.path.join(path, "cpu.stat"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("usage_usec"):
                return int(line.split()[1])
    return 0


def bench_vm():
    vm_lab("down")
    vm_lab("image", "--vm")  # warm the VM image cache (not measured)
    try:
        vm_lab("up", "--hosts", "1", "--kind", "vm", "--timeout", "600", timeout=1200)
        boots = [e for e in json.loads(vm_lab("events", "--json")) if e["event"] == "booted"]
        emit("vm_boot_to_ssh", boots[0]["seconds"], "s", "~30 s (TCG)")
        with open(os.path.join("/run/powernap-lab", VM_NAME, "lab.json"), encoding="utf-8") as f:
            state = json.load(f)
        cg = os.path.join(state["cgroups"]["unified"], "%s-h1" % VM_NAME)
        time.sleep(20)  # let the guest's boot-time jobs finish
        u0, t0 = cgroup_cpu_usec(cg), time.monotonic()
        time.sleep(20)
        idle = (cgroup_cpu_usec(cg) - u0) / 1e6 / (time.monotonic() - t0) * 100
        emit("vm_idle_cpu", round(idle, 1), "% of one core", "a few %")
        emit("vm_memory_pss", round(sum(pss_bytes(p) for p in cgroup_pids(cg)) / 2**20), "MiB", "-m 512 + TCG cache")
        # S3 -> WoL -> SSH
        vm_lab("power", "h1", "suspend", timeout=120)
        wait_vm(lambda h: h["power"] == "suspended", 60, "S3")
        t0 = time.monotonic()
        vm_lab("ctl", "--", "wakeonlan", "-i", "198.18.0.255", state["hosts"][0]["mac"])
        emit("vm_s3_wol_to_ssh", round(ssh_up_seconds(t0), 2), "s", "a few s")
        # hibernate -> resume -> SSH
        vm_lab("exec", "h1", "--", "systemctl", "hibernate", timeout=120)
        t0 = time.monotonic()
        wait_vm(lambda h: h["power"] == "hibernated", 300, "S4")
        emit("vm_hibernate_to_off", round(time.monotonic() - t0, 2), "s")
        t0 = time.monotonic()
        vm_lab("power", "h1", "on", "--no-wait")
        emit("vm_resume_from_s4_to_ssh", round(ssh_up_seconds(t0), 2), "s", "~17 s (TCG)")
        # IPMI soft-off: ACPI power button -> the guest's clean shutdown -> QEMU gone
        h = state["hosts"][0]
        wait_vm(lambda x: x["booted"], 300, "boot")
        time.sleep(5)
        t0 = time.monotonic()
        vm_lab(
            "ctl",
            "--",
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
            h["bmc_password"],
            "chassis",
            "power",
            "soft",
        )
        wait_vm(lambda x: x["power"] == "off", 300, "soft-off")
        emit("vm_ipmi_soft_off", round(time.monotonic() - t0, 2), "s", "a few s")
    finally:
        vm_lab("down")


def main():
    if os.geteuid() != 0:
        print("bench_lab.py needs root (it brings up a lab)", file=sys.stderr)
        return 1
    lab("down")
    lab("image")  # warm the image cache (builds it once if missing; not measured)
    try:
        for n, target in ((3, "< 15 s"), (10, "< 40 s")):
            elapsed = timed("up", "--hosts", str(n))
            emit("up_%d_hosts" % n, round(elapsed, 2), "s", target)
            boots = boot_seconds()
            if n == 10:
                emit("host_boot_median", round(statistics.median(boots), 2), "s", "a few seconds")
                time.sleep(3)  # let the hosts settle after boot
                pss, charged = host_memory()
                emit("memory_per_host_pss", round(pss / 2**20, 1), "MiB", "< 64 MiB")
                if charged is not None:
                    emit("memory_per_host_cgroup", round(charged / 2**20, 1), "MiB")
            emit("down_%d_hosts" % n, round(timed("down"), 2), "s", "< 10 s")
    finally:
        lab("down")
    if os.environ.get("POWERNAP_LAB_BENCH_VM", "1") != "0":
        bench_vm()
    return 0


if __name__ == "__main__":
    sys.exit(main())
