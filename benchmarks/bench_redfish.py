"""Redfish figures: power-on of 30 systems by one powernap.fleet.wake batch task, against
community.general.redfish_command with forks=30, through the same Redfish service.

Run as root (``make bench`` with ``BENCH=redfish``).  Prints one JSON object per line.  Everything runs in
a network namespace of its own (``pnbench-rf``) on its loopback: 30 BMCs (one sushy-tools emulator each,
fake driver, TLS, authentication) and both playbooks.  The namespace and the emulators are removed at the
end, by PID.

The emulator applies a reset 1-11 s after the request, as a real BMC takes a while.  ``wake`` returns
only once every system reports PowerState On; redfish_command returns as soon as the service accepted the
request.  So the figure compared is the same for both: the time until all 30 systems report On (for
redfish_command, its task time plus the time until the service shows all 30 On).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

from redfish_emulator import PASSWORD, USER, RedfishEmulator  # noqa: E402  (the tests' own emulator wrapper)

NETNS = "pnbench-rf"
SYSTEMS = 30
BIN = os.path.join(REPO, ".venv", "bin")
COLLECTIONS = os.pathsep.join(
    [os.path.join(REPO, ".cache", "collections"), os.path.join(REPO, ".cache", "community-general")]
)
START_TIMER = {"ansible.builtin.set_fact": {"t0": "{{ now().timestamp() }}"}, "run_once": True}
STOP_TIMER = {"ansible.builtin.debug": {"msg": "TASKTIME={{ now().timestamp() - (t0 | float) }}"}, "run_once": True}


def emit(metric, value, unit, target=None, ok=None):
    row = {"bench": "redfish", "metric": metric, "value": value, "unit": unit}
    if target:
        row["target"] = target
    if ok is not None:
        row["ok"] = ok
    print(json.dumps(row), flush=True)


def run_playbook(workdir, name, play, inventory, forks=5):
    play_path = os.path.join(workdir, name + ".yml")
    inventory_path = os.path.join(workdir, name + ".inv.json")
    with open(play_path, "w") as handle:
        json.dump(play, handle)
    with open(inventory_path, "w") as handle:
        json.dump(inventory, handle)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1", ANSIBLE_FORKS=str(forks))
    started = time.monotonic()
    proc = subprocess.run(
        [os.path.join(BIN, "ansible-playbook"), "-i", inventory_path, play_path],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        check=False,
    )
    wall = time.monotonic() - started
    if proc.returncode != 0:
        print("   %s failed (%d):\n%s\n%s" % (name, proc.returncode, proc.stdout[-3000:], proc.stderr[-2000:]))
    return wall, proc


def task_time(proc):
    for line in proc.stdout.splitlines():
        if "TASKTIME=" in line:
            return float(line.split("TASKTIME=")[1].split()[0].strip('"'))
    return None


def power_states(services):
    return [service.power(name) for name, service in services.items()]


def wait_all_on(services, limit=60.0):
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if power_states(services).count("On") == SYSTEMS:
            return time.monotonic() - started
        time.sleep(0.25)
    return None


def measure(workdir):
    """Inside the namespace: 30 BMCs (one emulator each, as 30 real BMCs), both playbooks."""
    names = ["s%02d" % i for i in range(SYSTEMS)]
    services = {name: RedfishEmulator(os.path.join(workdir, name), systems=(name,)) for name in names}
    try:
        for service in services.values():
            service.start(timeout=120)
        targets = [
            {
                "name": name,
                "redfish_host": service.url,
                "redfish_ca_path": service.cert,
                "redfish_system_id": service.systems[name],
            }
            for name, service in services.items()
        ]
        ours = [
            {
                "hosts": "localhost",
                "gather_facts": False,
                "tasks": [
                    START_TIMER,
                    {
                        "powernap.fleet.wake": {
                            "targets": targets,
                            "method": "redfish",
                            "bmc_user": USER,
                            "bmc_password": PASSWORD,
                            "concurrency": SYSTEMS,
                            "wait": True,
                            "timeout": 120,
                        }
                    },
                    STOP_TIMER,
                ],
            }
        ]
        local = {"all": {"hosts": {"localhost": {"ansible_connection": "local"}}}}
        wall_ours, proc = run_playbook(workdir, "rf-ours", ours, local)
        time_ours = task_time(proc)
        on_ours = power_states(services).count("On")
        emit("power-on of 30 Redfish BMCs: powernap.fleet.wake batch, until all report On", time_ours, "s")
        emit("powernap.fleet.wake, whole ansible-playbook run", round(wall_ours, 2), "s")
        emit("systems On when wake returned", on_ours, "systems", "30", on_ours == SYSTEMS and not proc.returncode)

        # Every emulator restarted with its system off, for community.general.
        for service in services.values():
            service.stop()
        services = {name: RedfishEmulator(os.path.join(workdir, name + "-cg"), systems=(name,)) for name in names}
        for service in services.values():
            service.start(timeout=120)
        hosts = {
            name: {
                "ansible_connection": "local",
                "system_id": service.systems[name],
                "baseuri": service.url.split("://", 1)[1],
                "ca_path": service.cert,
            }
            for name, service in services.items()
        }
        theirs = [
            {
                "hosts": "all",
                "gather_facts": False,
                "tasks": [
                    START_TIMER,
                    {
                        "community.general.redfish_command": {
                            "category": "Systems",
                            "command": "PowerOn",
                            "resource_id": "{{ system_id }}",
                            "baseuri": "{{ baseuri }}",
                            "username": USER,
                            "password": PASSWORD,
                            "ca_path": "{{ ca_path }}",
                        }
                    },
                    STOP_TIMER,
                ],
            }
        ]
        inventory = {"all": {"hosts": hosts, "vars": {"ansible_python_interpreter": os.path.join(BIN, "python")}}}
        wall_theirs, proc = run_playbook(workdir, "rf-cg", theirs, inventory, forks=SYSTEMS)
        time_theirs = task_time(proc)
        settle = wait_all_on(services)
        emit("community.general.redfish_command forks=30, task time (returns unconfirmed)", time_theirs, "s")
        emit("redfish_command, whole ansible-playbook run", round(wall_theirs, 2), "s")
        if time_theirs is None or settle is None or time_ours is None:
            emit("redfish_command: all 30 report On", 0, "bool", "1", False)
            return 1
        emit("redfish_command: further wait until all 30 report On", round(settle, 2), "s")
        until_on = time_theirs + settle
        emit("redfish_command, until all report On", round(until_on, 2), "s")
        emit("speed-up of wake batch over redfish_command forks=30 (until all On)", round(until_on / time_ours, 2), "x")
        return 0
    finally:
        for service in services.values():
            service.stop()


def main():
    if os.environ.get("PNBENCH_RF_INSIDE") == "1":
        workdir = tempfile.mkdtemp(prefix="pnbench-rf-")
        try:
            return measure(workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    if os.geteuid() != 0:
        print("bench_redfish needs root (a network namespace of its own)", file=sys.stderr)
        return 2
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        subprocess.run(["ip", "-n", NETNS, "link", "set", "lo", "up"], check=True)
        # The whole measurement runs inside the namespace: its loopback is all it can reach.
        inside = subprocess.run(
            ["ip", "netns", "exec", NETNS, sys.executable, os.path.abspath(__file__)],
            env=dict(os.environ, PNBENCH_RF_INSIDE="1"),
            timeout=1500,
            check=False,
        )
        return inside.returncode
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)


if __name__ == "__main__":
    sys.exit(main())
