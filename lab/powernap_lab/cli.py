"""powernap-lab: a fleet of real Linux hosts (systemd-nspawn) with WoL NICs, IPMI BMCs and a UPS."""

import argparse
import fcntl
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager

from . import aptrepo, cgroups, disks, image, inventory, network, services, vm, vmimage
from .common import (
    DEFAULT_SEGMENT,
    HOST_KINDS,
    MAX_HOSTS,
    PYTHON,
    SEGMENTS,
    TOOL_ENTRY,
    Lab,
    LabError,
    check_packages,
    check_root,
    check_segment,
    host_index,
    pid_alive,
    record_pid,
    recorded_pids,
    request,
    run,
    stop_pids,
    wait_for,
    write_file,
)

GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


@contextmanager
def lab_lock(lab, timeout=300):
    os.makedirs(os.path.dirname(lab.run), exist_ok=True)
    with open(os.path.join(os.path.dirname(lab.run), ".%s.lock" % lab.name), "w", encoding="utf-8") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError("another powernap-lab command holds the lock of lab %r" % lab.name) from None
                time.sleep(0.2)
        yield


def supervisor_alive(lab):
    try:
        request(lab, {"op": "ping"}, timeout=5)
        return True
    except LabError:
        return False


# ------------------------------------------------------------------------ up
def parse_groups(specs, names):
    groups = {}
    for spec in specs or []:
        for part in spec.split(";"):
            if not part.strip():
                continue
            if "=" not in part:
                raise LabError("bad --groups %r: use NAME=h1,h2" % part)
            group, members = part.split("=", 1)
            members = [m.strip() for m in members.split(",") if m.strip()]
            unknown = [m for m in members if m not in names]
            if unknown:
                raise LabError("group %s: unknown hosts %s" % (group, ", ".join(unknown)))
            groups.setdefault(group.strip(), []).extend(members)
    return groups


def parse_kind(spec, names):
    """--kind nspawn | vm | vm=h1,h2 (those hosts are VMs, the others nspawn): {host: kind}."""
    spec = (spec or "nspawn").strip()
    if spec in HOST_KINDS:
        return dict.fromkeys(names, spec)
    kinds = dict.fromkeys(names, "nspawn")
    for part in spec.split(";"):
        if not part.strip():
            continue
        kind, sep, members = part.partition("=")
        kind = kind.strip()
        if not sep or kind not in HOST_KINDS:
            raise LabError("bad --kind %r: use nspawn, vm, or KIND=h1,h2 (e.g. vm=h3)" % part)
        for m in (m.strip() for m in members.split(",")):
            if m not in kinds:
                raise LabError("--kind %s: unknown host %r (hosts: %s)" % (kind, m, ", ".join(names)))
            kinds[m] = kind
    return kinds


def cmd_up(lab, args):
    check_root()
    if not 1 <= args.hosts <= MAX_HOSTS:
        raise LabError("--hosts must be between 1 and %d" % MAX_HOSTS)
    kinds = parse_kind(args.kind, ["h%d" % i for i in range(1, args.hosts + 1)])
    want_vm = "vm" in kinds.values()
    if want_vm and args.segment != DEFAULT_SEGMENT:
        # The VM image's identity script writes segment 0's controller into each VM's /etc/hosts.
        raise LabError("--kind vm needs --segment %d (VM hosts exist only on the default segment)" % DEFAULT_SEGMENT)
    check_packages(vm=want_vm)
    t0 = time.monotonic()
    with lab_lock(lab):
        state = lab.load_state()
        if state and supervisor_alive(lab):
            running = (len(state["hosts"]), state.get("suite", image.SUITE))
            if (
                running != (args.hosts, args.suite or running[1])
                or any(h.get("kind", "nspawn") != kinds[h["name"]] for h in state["hosts"])
                or lab.segment != args.segment
            ):
                raise LabError(
                    "lab %r is already up with %d %s hosts of other kinds (segment %d); run `powernap-lab --name %s "
                    "down` first" % (lab.name, running[0], running[1], lab.segment, lab.name)
                )
            request(lab, {"op": "wait-booted", "timeout": args.timeout, "only_on": True}, timeout=args.timeout + 10)
            log("lab %r is already up (%d %s hosts)" % (lab.name, args.hosts, running[1]))
            return 0
        args.suite = args.suite or image.SUITE
        if state or os.path.exists(lab.run) or lab.all_netns():
            log("lab %r: cleaning up a previous, incomplete run" % lab.name)
            teardown(lab)
        lab.segment = args.segment
        rootfs = image.ensure_image(log, args.suite) if "nspawn" in kinds.values() else None
        apt_repo = (
            aptrepo.ensure_repo(args.suite, args.apt_packages, log)
            if args.apt_packages and "nspawn" in kinds.values()
            else None
        )
        vm_state = None
        if want_vm:
            vm_state = vmimage.ensure_vm_image(log)
            vm_state.update(vm.choose_accel(vm_state["kernel"], log))
        os.makedirs(lab.run, mode=0o755, exist_ok=True)
        os.makedirs(os.path.dirname(lab.ssh_key), mode=0o700, exist_ok=True)
        if not os.path.exists(lab.ssh_key):
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "powernap-lab-%s" % lab.name, "-f", lab.ssh_key])
        with open(lab.ssh_key + ".pub", encoding="utf-8") as f:
            pubkey = f.read()
        hosts = []
        for i in range(1, args.hosts + 1):
            hosts.append(
                {
                    "name": "h%d" % i,
                    "index": i,
                    "address": lab.host_address(i),
                    "mac": lab.host_mac(i),
                    "bmc_address": lab.bmc_address(i),
                    "bmc_user": "admin",
                    "bmc_password": "pw-h%d-%s" % (i, secrets.token_hex(4)),
                    "kind": kinds["h%d" % i],
                }
            )
        for h in hosts:
            if h["kind"] == "vm":
                h["accel"] = vm_state["accel"]
                h["cmdline"] = vm.kernel_cmdline(h, hosts, pubkey, disks.machine_id_of(lab, h["name"]))
        state = {
            "name": lab.name,
            "created": time.time(),
            "suite": args.suite,
            "segment": lab.segment,
            "network": lab.network_facts(),
            "image": rootfs,
            "apt_repo": apt_repo,
            "vm": vm_state,
            "hosts": hosts,
            "groups": parse_groups(args.groups, {h["name"] for h in hosts}),
            "cgroups": cgroups.lab_roots(lab.name),
            "boot_timeout": args.timeout,
            "initial_power": "off" if args.no_boot else "on",
            "ups": {
                "user": "monuser",
                "password": "mon-" + secrets.token_hex(4),
                "admin_user": "admin",
                "admin_password": "adm-" + secrets.token_hex(4),
            },
        }
        lab.save_state(state)
        os.chmod(lab.state_file, 0o600)
        network.setup_fabric(lab)
        for h in hosts:
            if h["kind"] == "vm":
                network.setup_vm_host(lab, h["index"])
                vm.create_disks(lab.host_dir(h["name"]), vm_state["disk"])
                disks.provision_nic(lab, h["name"])
                continue
            network.setup_host(lab, h["index"])
            disks.mount_overlay(lab, h["name"], rootfs)
            disks.provision(lab, h["name"], h["index"], hosts, pubkey, apt_repo=bool(apt_repo))
            network.set_port(lab, h["name"], False)
        services.write_configs(lab, state)
        write_file(lab.inventory_path, inventory.render(lab, state), mode=0o600)
        start_supervisor(lab)
        if not args.no_boot:
            try:
                request(lab, {"op": "wait-booted", "timeout": args.timeout}, timeout=args.timeout + 10)
            except LabError as exc:
                raise LabError(
                    "%s (lab left up for inspection; `powernap-lab --name %s down` removes it)" % (exc, lab.name)
                ) from None
    log(
        "lab %r up: %d %s hosts in %.1fs; inventory: %s"
        % (lab.name, args.hosts, args.suite, time.monotonic() - t0, lab.inventory_path)
    )
    return 0


def start_supervisor(lab):
    os.makedirs(lab.path("logs"), exist_ok=True)
    with open(lab.path("logs", "supervisor.log"), "ab") as logf:
        proc = subprocess.Popen(
            [PYTHON, TOOL_ENTRY, "--name", lab.name, "_supervise"],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    record_pid(lab, "supervisor", proc.pid)

    def ready():
        if proc.poll() is not None:
            raise LabError(
                "the lab supervisor exited (%s); see %s" % (proc.returncode, lab.path("logs", "supervisor.log"))
            )
        return os.path.exists(lab.path("supervisor.ready")) and supervisor_alive(lab)

    wait_for(ready, 30, "the lab supervisor of %r to start" % lab.name)


# ------------------------------------------------------------------------ down
def stray_pids(lab):
    """Processes (not started by the lab) still living in one of the lab's network namespaces."""
    inodes = set()
    for ns in lab.all_netns():
        try:
            inodes.add(os.stat(os.path.join("/run/netns", ns)).st_ino)
        except OSError:
            pass
    found = []
    if not inodes:
        return found
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if os.stat("/proc/%s/ns/net" % entry).st_ino in inodes:
                    found.append(int(entry))
            except OSError:
                pass
    return found


def teardown(lab):
    problems = []
    state = lab.load_state() or {}
    if os.path.exists(lab.socket_path) and supervisor_alive(lab):
        try:
            request(lab, {"op": "shutdown"}, timeout=30)
        except LabError as exc:
            problems.append(str(exc))
        sup = recorded_pids(lab).get("supervisor")
        if sup:
            try:
                wait_for(lambda: not pid_alive(sup), 60, "the lab supervisor to stop")
            except LabError as exc:
                problems.append(str(exc))
    stop_pids(list(recorded_pids(lab).values()), timeout=5)
    roots = state.get("cgroups") or cgroups.lab_roots(lab.name)
    if roots.get("unified") and not cgroups.kill(roots["unified"], timeout=15):
        problems.append("processes left in cgroup %s" % roots["unified"])
    strays = stray_pids(lab)
    if strays:
        log(
            "stopping %d process(es) left in the lab's namespaces: %s"
            % (len(strays), ", ".join("%d (%s)" % (p, _comm(p)) for p in strays))
        )
        stop_pids(strays, timeout=5)
    try:
        disks.unmount_all(lab)
    except LabError as exc:
        problems.append(str(exc))
    try:
        network.teardown(lab)
    except LabError as exc:
        problems.append(str(exc))
    for path in roots.values():
        if not cgroups.remove_tree(path):
            problems.append("cgroup still busy: %s" % path)
    for h in state.get("hosts", []):
        shutil.rmtree("/run/systemd/nspawn/propagate/%s" % lab.ns_host(h["name"]), ignore_errors=True)
    if not disks.mounts_under(lab.run):
        shutil.rmtree(lab.run, ignore_errors=True)
    else:
        problems.append("mounts left under %s" % lab.run)
    if problems:
        raise LabError("lab %r not fully removed: %s" % (lab.name, "; ".join(problems)))


def _comm(pid):
    try:
        with open("/proc/%d/comm" % pid, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return "?"


def cmd_down(lab, _args):
    check_root()
    t0 = time.monotonic()
    with lab_lock(lab):
        existed = os.path.exists(lab.run) or bool(lab.all_netns())
        teardown(lab)
    log("lab %r %s in %.1fs" % (lab.name, "removed" if existed else "was not up", time.monotonic() - t0))
    return 0


# ------------------------------------------------------------------------ queries
def status_data(lab):
    state = lab.load_state()
    if not state:
        return {"name": lab.name, "up": False, "hosts": []}
    try:
        hosts = request(lab, {"op": "status"}, timeout=10)["hosts"]
        up = True
    except LabError:
        hosts = [
            {
                "name": h["name"],
                "address": h["address"],
                "mac": h["mac"],
                "bmc_address": h["bmc_address"],
                "power": "off",
                "booted": False,
                "kind": h.get("kind", "nspawn"),
            }
            for h in state["hosts"]
        ]
        up = False
    return {
        "name": lab.name,
        "up": up,
        "hosts": hosts,
        "inventory": lab.inventory_path,
        "groups": state.get("groups", {}),
        "network": lab.network_facts(),
        "vm": {"accel": state["vm"]["accel"], "reason": state["vm"]["reason"]} if state.get("vm") else None,
    }


def cmd_status(lab, args):
    data = status_data(lab)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    if not data["hosts"]:
        print("lab %r is not up" % lab.name)
        return 0
    print("lab %r: %s" % (lab.name, "up" if data["up"] else "DOWN (supervisor not running)"))
    print("%-5s %-10s %-14s %-18s %-14s %-10s %s" % ("HOST", "KIND", "ADDRESS", "MAC", "BMC", "POWER", "BOOTED"))
    for h in data["hosts"]:
        kind = h.get("kind", "nspawn") + ("/" + h["accel"] if h.get("accel") else "")
        print(
            "%-5s %-10s %-14s %-18s %-14s %-10s %s"
            % (
                h["name"],
                kind,
                h["address"],
                h["mac"],
                h["bmc_address"],
                h["power"],
                "yes" if h.get("booted") else "no",
            )
        )
    if data.get("vm"):
        print("VM acceleration: %s (%s)" % (data["vm"]["accel"], data["vm"]["reason"]))
    return 0


def cmd_inventory(lab, _args):
    state = lab.load_state()
    if not state:
        raise LabError("lab %r is not up" % lab.name)
    sys.stdout.write(inventory.render(lab, state))
    return 0


def cmd_events(lab, args):
    try:
        with open(lab.events_file, encoding="utf-8") as f:
            events = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        events = []
    if args.host:
        events = [e for e in events if e.get("host") == args.host]
    if args.since is not None:
        events = [e for e in events if e["t"] >= args.since]
    if args.json:
        print(json.dumps(events, indent=1))
        return 0
    for e in events:
        rest = " ".join("%s=%s" % (k, v) for k, v in sorted(e.items()) if k not in ("t", "time", "host", "event"))
        print("%s %-4s %-12s %s" % (e["time"], e.get("host") or "-", e["event"], rest))
    return 0


# ------------------------------------------------------------------------ actions
def container_init(lab, host):
    state = lab.load_state()
    if not state:
        raise LabError("lab %r is not up" % lab.name)
    host_index(host)
    if host not in {h["name"] for h in state["hosts"]}:
        raise LabError("no host %r in lab %r" % (host, lab.name))
    st = {h["name"]: h for h in request(lab, {"op": "status"})["hosts"]}[host]
    if st["power"] != "on":
        raise LabError("%s is %s: power it on first (powernap-lab power %s on)" % (host, st["power"], host))
    root = os.path.join(state["cgroups"]["unified"], lab.ns_host(host))
    for pid in cgroups.pids(root):
        try:
            with open("/proc/%d/status" % pid, encoding="utf-8") as f:
                for line in f:
                    if line.startswith("NSpid:"):
                        ids = line.split()[1:]
                        if len(ids) > 1 and ids[-1] == "1":
                            return pid
        except OSError:
            continue
    raise LabError("%s: its init process is not running yet" % host)


def host_spec(lab, host):
    state = lab.load_state()
    if not state:
        raise LabError("lab %r is not up" % lab.name)
    host_index(host)
    for h in state["hosts"]:
        if h["name"] == host:
            return h
    raise LabError("no host %r in lab %r" % (host, lab.name))


def cmd_exec(lab, args):
    check_root()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        raise LabError("usage: powernap-lab exec HOST -- COMMAND...")
    spec = host_spec(lab, args.host)
    if spec.get("kind") == "vm":
        # a VM has its own kernel: the way in is its sshd, from the controller namespace
        st = {h["name"]: h for h in request(lab, {"op": "status"})["hosts"]}[args.host]
        if st["power"] != "on":
            raise LabError(
                "%s is %s: power it on first (powernap-lab power %s on)" % (args.host, st["power"], args.host)
            )
        return subprocess.call(vm.ssh_command(lab, spec["address"]) + [shlex.join(cmd)])
    pid = container_init(lab, args.host)
    env = [
        "env",
        "-i",
        "PATH=" + GUEST_PATH,
        "HOME=/root",
        "USER=root",
        "LOGNAME=root",
        "LANG=C.UTF-8",
        "TERM=" + os.environ.get("TERM", "dumb"),
    ]
    argv = ["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w", "--"] + env + cmd
    return subprocess.call(argv)


def cmd_ctl(lab, args):
    check_root()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        raise LabError("usage: powernap-lab ctl -- COMMAND...")
    if lab.ns_ctl not in lab.all_netns():
        raise LabError("lab %r is not up (no namespace %s)" % (lab.name, lab.ns_ctl))
    env = dict(os.environ, POWERNAP_LAB_NAME=lab.name, POWERNAP_LAB_INVENTORY=lab.inventory_path)
    return subprocess.call(["ip", "netns", "exec", lab.ns_ctl] + cmd, env=env)


def cmd_power(lab, args):
    check_root()
    state = {
        "suspend": "suspend",
        "on": "on",
        "off": "off",
        "soft-off": "soft-off",
        "reset": "reset",
        "status": "status",
    }[args.state]
    reply = request(
        lab,
        {
            "op": "power",
            "host": args.host,
            "state": state,
            "cause": "lab",
            "wait": state in ("on", "reset") and not args.no_wait,
            "timeout": args.timeout,
        },
        timeout=args.timeout + 30,
    )
    print(reply["host"]["power"])
    return 0


def cmd_wol(lab, args):
    check_root()
    if args.mode == "on":
        mode = "gs" if args.secureon else "g"
    elif args.mode == "off":
        mode = "d"
    else:
        mode = args.mode
    reply = request(lab, {"op": "wol", "host": args.host, "mode": mode, "sopass": args.secureon})
    print(json.dumps(reply["nic"]))
    return 0


def cmd_ups(lab, args):
    check_root()
    status = " ".join(args.status)
    reply = request(lab, {"op": "ups", "status": status})
    print(reply["status"])
    return 0


def cmd_input(lab, args):
    check_root()
    reply = request(
        lab, {"op": "input", "host": args.host, "action": args.action, "key": args.key, "device": args.device}
    )
    print(json.dumps({k: v for k, v in reply.items() if k != "ok"}))
    return 0


def cmd_qemu_status(lab, args):
    check_root()
    print(json.dumps(request(lab, {"op": "qemu-status", "host": args.host})["status"]))
    return 0


def cmd_bmc_hook(lab, args):
    """Called by ipmi_sim (chassis_control): print what ipmi_sim expects, exit with its status."""
    try:
        reply = request(lab, {"op": "bmc", "host": args.host, "args": args.args}, timeout=20)
    except LabError as exc:
        print(str(exc))
        return 1
    if reply.get("output"):
        print(reply["output"])
    return reply.get("exit", 0)


def cmd_image(_lab, args):
    check_root()
    if args.action == "path":
        print(vmimage.vm_image()["dir"] if args.vm else image.rootfs(args.suite))
        return 0
    check_packages(vm=args.vm)
    print(vmimage.ensure_vm_image(log)["dir"] if args.vm else image.ensure_image(log, args.suite))
    return 0


def segment_number(text):
    """--segment: an integer in SEGMENTS."""
    try:
        return check_segment(int(text))
    except (ValueError, LabError):
        raise argparse.ArgumentTypeError("invalid segment %r: use %d..%d" % (text, SEGMENTS[0], SEGMENTS[-1])) from None


def package_list(text):
    """--apt-packages: comma-separated Debian package names ("" for none)."""
    try:
        return aptrepo.check_packages(p.strip() for p in text.split(",") if p.strip())
    except LabError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_supervise(lab, _args):
    from . import supervisor

    supervisor.run(lab)
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="powernap-lab", description=__doc__)
    p.add_argument(
        "--name", help="lab name (default $POWERNAP_LAB_NAME or pnl); prefixes every namespace, link and cgroup"
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("up", help="build (once) and boot the lab; idempotent")
    s.add_argument("--hosts", type=int, default=3)
    s.add_argument(
        "--segment",
        type=segment_number,
        default=DEFAULT_SEGMENT,
        help="the lab's L2 segment K (%d..%d): LAN 198.18.K.0/24, management 198.19.K.0/24, host MACs "
        "02:50:4e:0K:..; labs on different segments are disjoint and can run side by side (default %%(default)s)"
        % (SEGMENTS[0], SEGMENTS[-1]),
    )
    s.add_argument("--groups", action="append", help="NAME=h1,h2 (repeatable, or ';'-separated)")
    s.add_argument("--timeout", type=float, default=120, help="seconds to wait for the hosts to boot")
    s.add_argument("--no-boot", action="store_true", help="leave the hosts powered off")
    s.add_argument(
        "--suite",
        choices=sorted(image.SUITES),
        help="the hosts' Debian release (default %s; on a running lab: whichever it runs)" % image.SUITE,
    )
    s.add_argument(
        "--apt-packages",
        type=package_list,
        default=list(aptrepo.DEFAULT_PACKAGES),
        help="packages the hosts can install from the lab's own apt repository (comma-separated; '' for no "
        "repository; default: %(default)s)",
    )
    s.add_argument(
        "--kind",
        default="nspawn",
        help="host kind: nspawn (default), vm (QEMU guests with their own kernel), or a mixed fleet "
        "KIND=h1,h2 (e.g. vm=h3: h3 is a VM, the others nspawn)",
    )
    s.set_defaults(func=cmd_up)
    s = sub.add_parser("down", help="stop and remove everything the lab created")
    s.set_defaults(func=cmd_down)
    s = sub.add_parser("status", help="hosts and their power state")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    s = sub.add_parser("inventory", help="print the lab's Ansible inventory (YAML)")
    s.set_defaults(func=cmd_inventory)
    s = sub.add_parser("events", help="the timestamped log of every transition")
    s.add_argument("--json", action="store_true")
    s.add_argument("--host")
    s.add_argument("--since", type=float, help="only events at or after this UNIX time")
    s.set_defaults(func=cmd_events)
    s = sub.add_parser("exec", help="run a command inside a host: exec HOST -- CMD...")
    s.add_argument("host")
    s.add_argument("command", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_exec)
    s = sub.add_parser("ctl", help="run a command in the controller namespace: ctl -- CMD...")
    s.add_argument("command", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_ctl)
    s = sub.add_parser("power", help="power HOST on|off|soft-off|suspend|reset|status")
    s.add_argument("host")
    s.add_argument("state", choices=["on", "off", "soft-off", "suspend", "reset", "status"])
    s.add_argument("--no-wait", action="store_true", help="do not wait for sshd after powering on")
    s.add_argument("--timeout", type=float, default=120)
    s.set_defaults(func=cmd_power)
    s = sub.add_parser("wol", help="a host NIC's Wake-on-LAN: wol HOST on|off|MODES [--secureon XX:..]")
    s.add_argument("host")
    s.add_argument("mode")
    s.add_argument("--secureon", help="SecureOn password (6 bytes, XX:XX:XX:XX:XX:XX)")
    s.set_defaults(func=cmd_wol)
    s = sub.add_parser("ups", help="set the UPS status: ups OL | OB | OB LB")
    s.add_argument("status", nargs="+")
    s.set_defaults(func=cmd_ups)
    s = sub.add_parser("input", help="a VM host's USB keyboard: input HOST key [--key QCODE] | plug | unplug")
    s.add_argument("host")
    s.add_argument("action", choices=["key", "plug", "unplug"])
    s.add_argument("--key", help="QEMU key name (qcode) to type, default shift")
    s.add_argument("--device", help="keyboard to unplug (kbd0, kbd-hot1, ...; default: the newest hot-plugged)")
    s.set_defaults(func=cmd_input)
    s = sub.add_parser("qemu-status", help="a VM host's QEMU run state (QMP query-status): running, suspended, ...")
    s.add_argument("host")
    s.set_defaults(func=cmd_qemu_status)
    s = sub.add_parser("image", help="build the base image (or print its path)")
    s.add_argument("action", nargs="?", choices=["build", "path"], default="build")
    s.add_argument("--suite", choices=sorted(image.SUITES), default=image.SUITE)
    s.add_argument("--vm", action="store_true", help="the VM hosts' image (kernel + disk) instead")
    s.set_defaults(func=cmd_image)
    s = sub.add_parser("bmc-hook", help=argparse.SUPPRESS)
    s.add_argument("host")
    s.add_argument("args", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_bmc_hook)
    s = sub.add_parser("_supervise", help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_supervise)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        lab = Lab(args.name)
        return args.func(lab, args)
    except LabError as exc:
        print("powernap-lab: error: %s" % exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # output piped into e.g. `head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
