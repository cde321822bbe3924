"""make demo: a small lab fleet naps on its own and is woken by Wake-on-LAN and IPMI.

1. bring up a lab of three hosts (webservers h1, h2; standby h3),
2. deploy the engine with playbooks/site.yml and short timers (powersave after 5 s idle, the profile's
   second stage after 25 s: suspend for the web servers, power off for the standby box),
3. watch the hosts powersave, then suspend or power off on their own,
4. wake h1 and h2 by Wake-on-LAN and h3 through its BMC (IPMI) with playbooks/wake.yml,
5. run playbooks/status.yml, print what happened with timings, and take the lab down (always),
6. one VM host (a QEMU guest with its own kernel, lab "<name>vm"): deployed the same way, it suspends to
   S3 on its own (the engine's real `systemctl suspend`), wakes by Wake-on-LAN, hibernates to S4 through
   powernap.fleet.nap and wakes through its BMC; the summary says which states were real kernel states
   (POWERNAP_DEMO_VM=0 skips this part).

Environment: POWERNAP_DEMO_LAB (lab name, default "demo"), POWERNAP_LAB_KEEP=1 leaves the lab up.
"""

import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB_TOOL = os.path.join(REPO, "lab", "powernap-lab")
BIN = os.path.dirname(os.path.abspath(sys.executable))
LAB = os.environ.get("POWERNAP_DEMO_LAB", "demo")
OVERLAY = os.path.join(REPO, "molecule", "shared", "inventory")
GROUPS = "webservers=h1,h2;standby=h3"
PROFILES = {"h1": "webserver", "h2": "webserver", "h3": "standby"}
WAKE_BY = {"h1": "wol", "h2": "wol", "h3": "ipmi"}
# Short demo timers; each host keeps its profile's actions (suspend for web servers, poweroff for standby).
DEMO_TIMERS = {
    "powernap_host_config": {
        "stage.1": {"after": "5s"},
        "stage.2": {"after": "25s", "warn": "3s"},
    }
}
NAP_TIMEOUT = 150
STEP_TIMEOUT = 600


class DemoError(Exception):
    """A step failed; the message says which and why."""


def say(text=""):
    print(text, flush=True)


def step(title):
    say()
    say("== " + title)


def lab(*args, timeout=120, check=True, name=None):
    cmd = [LAB_TOOL, "--name", name or LAB] + [str(a) for a in args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        output = (proc.stderr or proc.stdout)[-2000:]
        raise DemoError("%s failed (%d): %s" % (" ".join(cmd[3:5]), proc.returncode, output))
    return proc


def ansible_env():
    env = dict(os.environ)
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", os.path.join(REPO, ".cache", "collections"))
    env.update(ANSIBLE_NOCOLOR="1", ANSIBLE_PIPELINING="1", ANSIBLE_FORKS="10", PYTHONDONTWRITEBYTECODE="1")
    return env


def playbook(name, *extra, show=("TASK [Summary]", "TASK [Show"), lab_name=None):
    """Run playbooks/NAME.yml from the controller namespace; print its summary/table output and recap."""
    inventory = "/run/powernap-lab/%s/inventory.yml" % (lab_name or LAB)
    cmd = [
        LAB_TOOL,
        "--name",
        lab_name or LAB,
        "ctl",
        "--",
        os.path.join(BIN, "ansible-playbook"),
        "-i",
        inventory,
        "-i",
        OVERLAY,
        os.path.join(REPO, "playbooks", name + ".yml"),
    ] + list(extra)
    started = time.monotonic()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=STEP_TIMEOUT, env=ansible_env(), cwd=REPO, check=False
    )
    elapsed = time.monotonic() - started
    lines = proc.stdout.splitlines()
    printing = False
    for line in lines:
        if any(line.startswith(marker) for marker in show):
            printing = True
            continue
        if printing and line.startswith(("TASK [", "PLAY RECAP", "PLAY [")):
            printing = False
        noise = line.strip() in ('"msg": [', "]", "{", "}") or line.startswith("ok: [")
        if printing and line.strip() and not noise:
            say("   " + line.strip().strip('",').replace('\\"', '"'))
    recap = (
        lines[lines.index(next(x for x in lines if x.startswith("PLAY RECAP"))) + 1 :]
        if any(x.startswith("PLAY RECAP") for x in lines)
        else []
    )
    for line in recap:
        if line.strip():
            say("   " + " ".join(line.split()))
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise DemoError("playbook %s.yml failed (%d):\n%s" % (name, proc.returncode, tail))
    return elapsed


def events(since=None, name=None):
    args = ["events", "--json"] + (["--since", since] if since is not None else [])
    return json.loads(lab(*args, name=name).stdout)


def power_events(since):
    return [e for e in events(since) if e["event"] == "power"]


def wait_for_naps(since, powersave):
    """Wait (bounded) until each host has gone down on its own; return {host: event}.

    Meanwhile ask each engine for its events, to see when it applied powersave (``powersave`` is filled in).
    """
    expected = {"h1": "suspended", "h2": "suspended", "h3": "off"}
    deadline = time.monotonic() + NAP_TIMEOUT
    seen = {}
    while time.monotonic() < deadline:
        for host in expected:
            if host not in seen and host not in powersave:
                applied = first(engine_events(host), lambda e: e.get("event") == "powersave-apply")
                if applied:
                    powersave[host] = applied
                    say(
                        "   %s  %s applied powersave (stage %s)"
                        % (time.strftime("%H:%M:%S", time.localtime(applied["time"])), host, applied.get("stage"))
                    )
        for e in power_events(since):
            host = e.get("host")
            if host in expected and host not in seen and e["to"] == expected[host]:
                seen[host] = e
                say("   %s  %s went %s (cause: %s)" % (e["time"][11:19], host, e["to"], e.get("cause")))
        if len(seen) == len(expected):
            return seen
        time.sleep(1)
    missing = ", ".join("%s (expected %s)" % (h, s) for h, s in sorted(expected.items()) if h not in seen)
    raise DemoError("hosts did not nap within %ds: %s" % (NAP_TIMEOUT, missing))


def engine_events(host):
    proc = lab("exec", host, "--", "/usr/local/bin/powernap", "status", "--json", check=False, timeout=60)
    if proc.returncode != 0:
        return []
    try:
        return json.loads(proc.stdout).get("events", [])
    except ValueError:
        return []


def first(items, predicate):
    return next((item for item in items if predicate(item)), None)


def summary(deployed_at, naps, powersave, wakes, wake_started, timings):
    step("What happened")
    say("Host  Profile    Powersave  Napped                Woken by  Wake took  Back on SSH")
    for host in sorted(PROFILES):
        nap = naps[host]
        wake = wakes.get(host) or {}
        ps = "%5.1fs" % (powersave[host]["time"] - deployed_at) if host in powersave else "  -  "
        napped = "%-9s at %5.1fs" % (nap["to"], nap["t"] - deployed_at)
        woke = wake.get("cause", "-")
        took = ("%5.1fs" % (wake["t"] - wake_started[host])) if wake else "  -  "
        booted = first(events(wake_started[host]), lambda e, h=host: e.get("host") == h and e["event"] == "booted")
        back = (
            "%5.1fs" % timings[host]
            if host in timings
            else ("%5.1fs" % (booted["t"] - wake_started[host]) if booted else "  -  ")
        )
        say("%-5s %-10s %-10s %-21s %-9s %-10s %s" % (host, PROFILES[host], ps, napped, woke, took, back))
    say()
    say("Times are seconds after the deployment finished (powersave, nap) or after the wake was sent.")


VM_LAB = LAB[:6] + "vm"
# The VM host runs the engine's real default actions: the lab overlay's suspend command and its
# no-swap hibernate deny entry are for nspawn hosts, so the VM gets its own settings here.
VM_VARS = {
    "powernap_manage_packages": False,
    "powernap_hardware_entries": [],
    "powernap_common_config": {
        "powernap": {"settle": "30s", "grace": "3s", "interval": "1s"},
        "actions": {"wall_command": ""},
        "monitor.load": None,
        "monitor.timers": None,
        "monitor.ssh": {"ignore_remote": "198.18.0.2/32"},
    },
    "powernap_host_config": {
        "powernap": {"platform": "physical"},
        "stage.1": {"after": "5s"},
        "stage.2": {"after": "20s", "action": "suspend", "warn": "3s"},
    },
}


def wait_vm_power(state, since, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in events(since, name=VM_LAB):
            if e["event"] == "power" and e["to"] == state:
                return e
        time.sleep(1)
    raise DemoError("the VM host did not go %s within %ds" % (state, timeout))


def vm_phase():
    """One VM host: real S3 by the engine, WoL wake; real S4 through powernap.fleet.nap, IPMI wake."""
    rows = []
    try:
        step("6. A VM host with its own kernel (lab %s): real suspend and hibernation" % VM_LAB)
        started = time.monotonic()
        lab("up", "--hosts", 1, "--kind", "vm", "--timeout", 600, timeout=1800, name=VM_LAB)
        st = json.loads(lab("status", "--json", name=VM_LAB).stdout)
        say("   up in %.1fs (QEMU, %s: %s)" % (time.monotonic() - started, st["vm"]["accel"], st["vm"]["reason"][:60]))
        vars_file = "/run/powernap-lab/%s/demo-vars.json" % VM_LAB
        with open(vars_file, "w", encoding="utf-8") as f:
            json.dump(VM_VARS, f)
        took = playbook("site", "-e", "@" + vars_file, lab_name=VM_LAB)
        deployed = time.time()
        say("   deployed in %.1fs; the engine's stage 2 is its real default suspend (systemctl suspend)" % took)
        nap = wait_vm_power("suspended", deployed, NAP_TIMEOUT + 120)
        say(
            "   %s  h1 went suspended (kernel %s, QEMU reported the guest's S3)"
            % (nap["time"][11:19], nap["kernel_state"])
        )
        rows.append(("suspend (engine stage 2)", nap, "S3: QMP SUSPEND from the guest kernel"))
        t = time.time()
        took = playbook("wake", "-e", "powernap_wake_method=wol", lab_name=VM_LAB)
        woke = wait_vm_power("on", t, 60)
        rows.append(("wake (Wake-on-LAN)", woke, "QMP system_wakeup: the guest resumed from S3, %.1fs" % took))
        t = time.time()
        proc = lab(
            "ctl",
            "--",
            os.path.join(BIN, "ansible"),
            "-i",
            "/run/powernap-lab/%s/inventory.yml" % VM_LAB,
            "h1",
            "-m",
            "powernap.fleet.nap",
            "-a",
            "state=hibernate delay=15",
            timeout=STEP_TIMEOUT,
            name=VM_LAB,
        )
        say("   " + proc.stdout.strip().splitlines()[0][:100])
        hib = wait_vm_power("hibernated", t, 300)
        rows.append(("hibernate (powernap.fleet.nap)", hib, "S4: image on its swap disk, machine off"))
        t = time.time()
        took = playbook("wake", "-e", "powernap_wake_method=ipmi", lab_name=VM_LAB)
        woke = wait_vm_power("on", t, 60)
        rows.append(("wake (IPMI power on)", woke, "QEMU started, the kernel resumed the image, %.1fs" % took))
        step("What was real on the VM host")
        for what, e, how in rows:
            say("   %-31s %-10s cause %-5s %s" % (what, e["to"], e["cause"], how))
        say("   (the nspawn hosts above: suspend simulated by freezing the container; these were kernel states)")
        return True
    except (DemoError, subprocess.TimeoutExpired) as exc:
        say("VM PART FAILED: %s" % exc)
        return False
    finally:
        if os.environ.get("POWERNAP_LAB_KEEP") != "1":
            lab("down", timeout=300, check=False, name=VM_LAB)


def main():
    if os.geteuid() != 0:
        say("make demo needs root: it boots the lab fleet")
        return 1
    t0 = time.monotonic()
    try:
        step("1. Bring up a lab of 3 hosts (%s)" % GROUPS.replace(";", ", "))
        started = time.monotonic()
        lab("up", "--hosts", 3, "--groups", GROUPS, timeout=900)
        say(
            "   up in %.1fs; %s"
            % (
                time.monotonic() - started,
                ", ".join(
                    "%s %s" % (h["name"], h["address"]) for h in json.loads(lab("status", "--json").stdout)["hosts"]
                ),
            )
        )

        step("2. Deploy with playbooks/site.yml (profiles webserver, standby; demo timers 5s / 25s)")
        took = playbook("site", "-e", json.dumps(DEMO_TIMERS))
        deployed_at = time.time()
        say("   deployed in %.1fs" % took)

        step("3. Nobody uses the hosts: watch them powersave, then nap on their own")
        powersave = {}
        naps = wait_for_naps(deployed_at, powersave)

        step("4. Wake h1 and h2 by Wake-on-LAN, h3 (powered off) through its BMC")
        wake_started = {}
        timings = {}
        for method in ("wol", "ipmi"):
            hosts = ",".join(h for h in sorted(WAKE_BY) if WAKE_BY[h] == method)
            started_wall = time.time()
            for host in hosts.split(","):
                wake_started[host] = started_wall
            took = playbook("wake", "-l", hosts, "-e", "powernap_wake_method=%s" % method)
            for host in hosts.split(","):
                timings[host] = took
            say("   %s: %s awake and answering after %.1fs" % (method, hosts, took))
        wakes = {}
        for e in power_events(min(wake_started.values())):
            if e["to"] == "on" and e.get("host") in WAKE_BY and e["host"] not in wakes:
                wakes[e["host"]] = e

        step("5. Fleet status (playbooks/status.yml)")
        playbook("status")

        summary(deployed_at, naps, powersave, wakes, wake_started, timings)
        if os.environ.get("POWERNAP_DEMO_VM", "1") != "0" and not vm_phase():
            return 1
        say()
        say("Demo finished in %.0fs." % (time.monotonic() - t0))
        return 0
    except (DemoError, subprocess.TimeoutExpired) as exc:
        say()
        say("DEMO FAILED: %s" % exc)
        return 1
    finally:
        if os.environ.get("POWERNAP_LAB_KEEP") == "1":
            say("Lab %r left up (POWERNAP_LAB_KEEP=1); take it down with: lab/powernap-lab --name %s down" % (LAB, LAB))
        else:
            step("Taking the lab down")
            proc = lab("down", timeout=300, check=False)
            say("   " + (proc.stderr.strip() or proc.stdout.strip() or "done"))


if __name__ == "__main__":
    sys.exit(main())
