"""Converge time of playbooks/site.yml on 3 and 10 lab hosts: first run, idempotent run, and the idempotent
run's cost relative to a bare ``ansible -m ping`` of the same hosts (one JSON row per figure).

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
    e.update(ANSIBLE_NOCOLOR="1", ANSIBLE_PIPELINING="1", ANSIBLE_FORKS=str(FORKS), PYTHONDONTWRITEBYTECODE="1")
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
        ping = [os.path.join(BIN, "ansible"), "-i", inventory, "lab", "-m", "ansible.builtin.ping", "-f", str(FORKS)]
        timed(name, ping)  # warm the SSH connections the same way for every figure below
        first, _out = timed(name, site)
        again, out = timed(name, site)
        changed = changed_total(out)
        ping_time, _out = timed(name, ping)
        row("site.yml first run, %d hosts" % size, round(first, 1), "s")
        row("site.yml idempotent run, %d hosts" % size, round(again, 1), "s")
        row("idempotent run changed tasks, %d hosts" % size, changed, "tasks", target="0", ok=changed == 0)
        row("ansible -m ping, %d hosts" % size, round(ping_time, 1), "s")
        row("idempotent run / ping, %d hosts" % size, round(again / ping_time, 1), "x")
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
