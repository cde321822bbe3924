"""Converge time of playbooks/site.yml on 3 and 10 lab hosts: first run, idempotent run, and their cost relative
to a bare ``ansible -m ping`` of the same hosts; and ``ansible -m powernap.fleet.wake`` against the same hosts,
all awake (confirm only).  One JSON row per figure.

Targets (issue 15), as ratios within one run on the 10-host lab: the idempotent run <= 3x ping with 0 changed,
the first run <= 10x ping, the wake of awake hosts <= 1.5x ping.  A missed target is a row with ``ok: false``,
which fails ``make bench`` (benchmarks/run.py).  Pipelining comes from the lab's inventory, as a user's would.

Each size gets its own lab (mixed profiles: webservers, fileservers, standby), brought up and taken down here.
Set BENCH_ROLE_SIZES=3,10 to choose the sizes.  Needs root (the lab).
"""

import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB_TOOL = os.path.join(REPO, "lab", "powernap-lab")
BIN = os.path.dirname(os.path.abspath(sys.executable))
OVERLAY = os.path.join(REPO, "molecule", "shared", "inventory")
GROUP_CYCLE = ("webservers", "fileservers", "standby")
FORKS = 20
TIMEOUT = 1200
# Ratio targets, checked on the lab of this size (the issue's); smaller labs report their ratios only.
TARGET_SIZE = 10
TARGETS = {"idempotent": 3.0, "first": 10.0, "wake": 1.5}


def row(metric, value, unit, target=None, ok=None):
    out = {"bench": "role", "metric": metric, "value": value, "unit": unit}
    if target is not None:
        out["target"] = target
    if ok is not None:
        out["ok"] = ok
    print(json.dumps(out), flush=True)


def lab(name, *args, timeout=900):
    return subprocess.run(
        [LAB_TOOL, "--name", name] + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=True
    )


def env():
    e = dict(os.environ)
    e["PATH"] = BIN + os.pathsep + e.get("PATH", "")
    e.setdefault("ANSIBLE_COLLECTIONS_PATH", os.path.join(REPO, ".cache", "collections"))
    e.update(ANSIBLE_NOCOLOR="1", ANSIBLE_FORKS=str(FORKS), PYTHONDONTWRITEBYTECODE="1")
    return e


def timed(name, argv):
    started = time.monotonic()
    proc = subprocess.run(
        [LAB_TOOL, "--name", name, "ctl", "--"] + argv,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env(),
        cwd=REPO,
        check=False,
    )
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(
            "%s failed (%d):\n%s"
            % (" ".join(argv[:2]), proc.returncode, "\n".join((proc.stdout + proc.stderr).splitlines()[-30:]))
        )
    return elapsed, proc.stdout


def changed_total(output):
    total = 0
    for line in output.splitlines():
        if "changed=" in line and "ok=" in line:
            total += int(line.split("changed=")[1].split()[0])
    return total


def ratio(what, size, value, target):
    metric = "%s, %d hosts" % (what, size)
    if size == TARGET_SIZE:
        limit = TARGETS[target]
        row(metric, round(value, 2), "x", target="<= %g" % limit, ok=value <= limit)
    else:
        row(metric, round(value, 2), "x")


def bench(size):
    name = "brole%d" % size
    groups = {}
    for index in range(1, size + 1):
        groups.setdefault(GROUP_CYCLE[(index - 1) % len(GROUP_CYCLE)], []).append("h%d" % index)
    spec = ";".join("%s=%s" % (g, ",".join(hosts)) for g, hosts in groups.items())
    print("lab %s: %d hosts (%s)" % (name, size, spec), flush=True)
    lab(name, "up", "--hosts", size, "--groups", spec)
    try:
        inventory = "/run/powernap-lab/%s/inventory.yml" % name
        site = [
            os.path.join(BIN, "ansible-playbook"),
            "-i",
            inventory,
            "-i",
            OVERLAY,
            os.path.join(REPO, "playbooks", "site.yml"),
        ]
        adhoc = [os.path.join(BIN, "ansible"), "-i", inventory, "lab", "-f", str(FORKS), "-m"]
        ping = adhoc + ["ansible.builtin.ping"]
        wake = adhoc + ["powernap.fleet.wake"]
        timed(name, ping)  # warm the SSH connections the same way for every figure below
        ping_before, _out = timed(name, ping)
        first, _out = timed(name, site)
        again, out = timed(name, site)
        changed = changed_total(out)
        ping_after, _out = timed(name, ping)
        wake_time, _out = timed(name, wake)
        # The round trip that the ratios count in: the faster of two pings of this run (one before, one after).
        ping_time = min(ping_before, ping_after)
        row("site.yml first run, %d hosts" % size, round(first, 1), "s")
        row("site.yml idempotent run, %d hosts" % size, round(again, 1), "s")
        row("idempotent run changed tasks, %d hosts" % size, changed, "tasks", target="0", ok=changed == 0)
        row("ansible -m ping, %d hosts" % size, round(ping_time, 2), "s")
        row("ansible -m powernap.fleet.wake (awake hosts), %d hosts" % size, round(wake_time, 2), "s")
        ratio("idempotent run / ping", size, again / ping_time, "idempotent")
        ratio("first run / ping", size, first / ping_time, "first")
        ratio("wake (awake hosts) / ping", size, wake_time / ping_time, "wake")
    finally:
        subprocess.run([LAB_TOOL, "--name", name, "down"], capture_output=True, timeout=300, check=False)


def main():
    if os.geteuid() != 0:
        print("bench_role needs root (the lab)", file=sys.stderr)
        return 1
    sizes = [int(s) for s in os.environ.get("BENCH_ROLE_SIZES", "3,10").split(",") if s.strip()]
    for size in sizes:
        bench(size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
