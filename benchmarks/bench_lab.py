"""Lab figures: time to `up` 3 and 10 hosts with a warm image cache, memory per booted host.

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
