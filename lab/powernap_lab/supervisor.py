"""The per-lab supervisor: owns the hosts' power, their "NICs", the BMCs, the UPS and the event log.

One process per lab (started by ``up``, stopped by ``down``). It talks JSON lines over
``<run>/supervisor.sock`` and listens on one socket per host (``suspend.sock`` in the host's NIC
directory, bind-mounted into the host) for the host's own suspend requests.
"""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from datetime import UTC, datetime

from . import cgroups, network, vm, wol
from .common import GUEST_NIC_DIR, LabError, forget_pid, in_netns, record_pid, ssh_banner, write_file

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_OUTGOING = 4
NSPAWN_REBOOT = 133
# A VM that shuts down this soon after an ACPI power-button press (from its BMC) was soft-powered-off.
SOFT_OFF_WINDOW = 120.0


def now_iso(t):
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


class Host:
    def __init__(self, spec):
        self.name = spec["name"]
        self.index = spec["index"]
        self.address = spec["address"]
        self.mac = spec["mac"]
        self.bmc_address = spec["bmc_address"]
        self.power = "off"
        self.booted = False
        self.since = time.time()
        self.proc = None
        self.generation = 0
        self.lock = threading.RLock()
        self.cg = {}
        self.kind = spec.get("kind", "nspawn")
        self.spec = spec
        # VM hosts: QMP connection, and what the lab itself asked QEMU for (to name the cause of events)
        self.qmp = None
        self.suspend_cause = None
        self.powerdown_at = None
        self.shutdown_reason = None
        self.hotplugged = []
        self.plug_count = 0

    def as_dict(self):
        d = {
            "name": self.name,
            "kind": self.kind,
            "address": self.address,
            "mac": self.mac,
            "bmc_address": self.bmc_address,
            "power": self.power,
            "booted": self.booted,
            "since": self.since,
        }
        if self.kind == "vm":
            d["accel"] = self.spec.get("accel")
            d["smbios_product"] = vm.smbios_product(self.name)
        return d


class Supervisor:
    def __init__(self, lab):
        self.lab = lab
        self.state = lab.load_state()
        if not self.state:
            raise LabError("no lab state at %s" % lab.state_file)
        self.hosts = {h["name"]: Host(h) for h in self.state["hosts"]}
        self.by_mac = {h.mac: h for h in self.hosts.values()}
        self.roots = self.state["cgroups"]
        self.stop = threading.Event()
        self.done = threading.Event()
        self.events_lock = threading.Lock()
        self.services = {}
        self.servers = []
        self.boot_timeout = float(self.state.get("boot_timeout", 120))

    # ---------------------------------------------------------------- events
    def event(self, host, event, **fields):
        t = time.time()
        rec = {"t": round(t, 3), "time": now_iso(t), "host": host, "event": event}
        rec.update(fields)
        line = json.dumps(rec, sort_keys=True) + "\n"
        with self.events_lock, open(self.lab.events_file, "a", encoding="utf-8") as f:
            f.write(line)

    def transition(self, host, new, cause, **fields):
        old = host.power
        host.power = new
        host.since = time.time()
        self.event(host.name, "power", **dict({"from": old, "to": new, "cause": cause}, **fields))

    # ---------------------------------------------------------------- hosts
    def _nspawn_cmd(self, host):
        root = self.lab.host_dir(host.name, "root")
        # nspawn starts inside the host's network namespace (rather than --network-namespace-path) so that
        # the sysfs it mounts for the container shows the host's own eth0, not the machine's interfaces.
        return [
            "nsenter",
            "--net=/run/netns/%s" % self.lab.ns_host(host.name),
            "--",
            "systemd-nspawn",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--quiet",
            "-D",
            root,
            "--machine=%s" % self.lab.ns_host(host.name),
            "--hostname=%s" % host.name,
            "--capability=CAP_NET_ADMIN",
            "--bind=%s:%s" % (self.lab.host_dir(host.name, "nic"), GUEST_NIC_DIR),
            "--console=read-only",
            "--link-journal=no",
            "--resolv-conf=off",
            "--timezone=off",
            "--kill-signal=SIGRTMIN+4",
        ]

    def _start(self, host, cause):
        """Boot a host that is off. Caller holds host.lock."""
        if host.kind == "vm":
            return self._start_vm(host, cause)
        host.cg = cgroups.create(self.roots, self.lab.ns_host(host.name))
        uni = host.cg["unified"]
        cgroups.kill(uni, timeout=5)
        for path in host.cg.values():
            cgroups.clear_children(path)
        cgroups.freeze(uni, False)
        network.set_port(self.lab, host.name, True)
        env = dict(os.environ, SYSTEMD_NSPAWN_LOCK="0", SYSTEMD_LOG_LEVEL="warning")
        procs = " ".join(os.path.join(p, "cgroup.procs") for p in host.cg.values())
        script = 'for f in %s; do echo $$ > "$f" || exit 97; done; exec "$@"' % procs
        log = open(self.lab.host_dir(host.name, "console.log"), "ab")  # noqa: SIM115 (owned by the child)
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", script, "launch"] + self._nspawn_cmd(host),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        finally:
            log.close()
        record_pid(self.lab, "host-" + host.name, proc.pid)
        host.proc = proc
        host.booted = False
        host.generation += 1
        self.transition(host, "on", cause)
        gen = host.generation
        threading.Thread(target=self._watch, args=(host, proc), daemon=True).start()
        threading.Thread(target=self._probe_boot, args=(host, gen), daemon=True).start()

    def _watch(self, host, proc):
        rc = proc.wait()
        with host.lock:
            if host.proc is not proc:
                return  # stopped on purpose; the stopper records the transition
            host.proc = None
            forget_pid(self.lab, "host-" + host.name)
            self._cleanup_host(host)
            if self.stop.is_set():
                return
            if host.kind == "vm":
                self._vm_exited(host, rc)
            elif rc == NSPAWN_REBOOT:
                self.transition(host, "off", "reboot")
                self._start(host, "reboot")
            else:
                self.transition(host, "off", "host", exit_status=rc)

    def _probe_boot(self, host, gen):
        start = time.monotonic()
        deadline = start + self.boot_timeout
        while not self.stop.is_set() and host.generation == gen and time.monotonic() < deadline:
            if host.power == "on" and ssh_banner(self.lab.ns_ctl, host.address, timeout=1.0):
                if host.generation == gen:
                    host.booted = True
                    self.event(host.name, "booted", seconds=round(time.monotonic() - start, 3))
                return
            time.sleep(0.2)
        if host.generation == gen and not self.stop.is_set():
            self.event(host.name, "boot-timeout", seconds=self.boot_timeout)

    def _cleanup_host(self, host):
        try:
            network.set_port(self.lab, host.name, False)
        except LabError:
            pass
        if host.qmp is not None:
            host.qmp.close()
            host.qmp = None
        uni = host.cg.get("unified")
        if uni:
            cgroups.freeze(uni, False)
            cgroups.kill(uni, timeout=10)
        for path in host.cg.values():
            cgroups.clear_children(path)
        host.booted = False

    def _stop(self, host, cause, soft=False, timeout=30.0):
        """Power a host off: soft = clean shutdown (bounded, then hard). Caller holds host.lock."""
        if host.power in ("off", "hibernated"):
            return
        if host.kind == "vm":
            return self._stop_vm(host, cause, soft, timeout)
        if host.power == "suspended":
            cgroups.freeze(host.cg["unified"], False)
            network.set_port(self.lab, host.name, True)
        proc, host.proc = host.proc, None
        host.generation += 1
        clean = False
        if proc is not None and soft:
            try:
                proc.send_signal(signal.SIGTERM)  # nspawn: SIGRTMIN+4 to the container's systemd
                proc.wait(timeout=timeout)
                clean = True
            except subprocess.TimeoutExpired:
                pass
        self._cleanup_host(host)
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        forget_pid(self.lab, "host-" + host.name)
        self.transition(host, "off", cause, mode="soft" if clean else "hard")

    def _suspend(self, host, cause):
        if host.power != "on":
            raise LabError("%s is %s, cannot suspend" % (host.name, host.power))
        if host.kind == "vm":
            return self._suspend_vm(host, cause)
        network.set_port(self.lab, host.name, False)
        if not cgroups.freeze(host.cg["unified"], True):
            network.set_port(self.lab, host.name, True)
            raise LabError("%s: the cgroup freezer did not freeze within 5s" % host.name)
        self.transition(host, "suspended", cause)

    def _wake(self, host, cause, **fields):
        if host.kind == "vm" and host.power == "suspended":
            # the guest's own resume: QEMU wakes it as its NIC or power button would
            self.transition(host, "on", cause, **fields)
            try:
                host.qmp.command("system_wakeup")
            except (LabError, AttributeError) as exc:
                self.event(host.name, "error", op="wake", error=str(exc))
        elif host.power == "suspended":
            cgroups.freeze(host.cg["unified"], False)
            network.set_port(self.lab, host.name, True)
            self.transition(host, "on", cause, **fields)
        elif host.power in ("off", "hibernated"):
            self._start(host, cause)
            if fields:
                self.event(host.name, "wake-detail", cause=cause, **fields)

    # ---------------------------------------------------------------- VM hosts (QEMU)
    def _start_vm(self, host, cause):
        """Start a VM host's QEMU (a hibernated guest resumes from its swap disk). Caller holds host.lock."""
        host.cg = cgroups.create(self.roots, self.lab.ns_host(host.name))
        cgroups.kill(host.cg["unified"], timeout=5)
        for path in host.cg.values():
            cgroups.clear_children(path)
        network.set_port(self.lab, host.name, True)
        tap = vm.open_tap(self.lab.ns_switch, self.lab.port(host.name))
        procs = " ".join(os.path.join(p, "cgroup.procs") for p in host.cg.values())
        script = 'for f in %s; do echo $$ > "$f" || exit 97; done; exec "$@"' % procs
        # QEMU lives in the BMC namespace: its ipmi_sim (external BMC) listens on 127.0.0.1 there
        cmd = ["nsenter", "--net=/run/netns/%s" % self.lab.ns_bmc, "--"]
        cmd += vm.qemu_command(self.lab, host.spec, self.state["vm"], host.spec["accel"], tap)
        qemu_log = open(self.lab.host_dir(host.name, "qemu.log"), "ab")  # noqa: SIM115 (owned by the child)
        try:
            for stale in ("qmp.sock",):
                try:
                    os.unlink(self.lab.host_dir(host.name, stale))
                except FileNotFoundError:
                    pass
            proc = subprocess.Popen(
                ["/bin/sh", "-c", script, "launch"] + cmd,
                stdin=subprocess.DEVNULL,
                stdout=qemu_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(tap,),
            )
        finally:
            qemu_log.close()
            os.close(tap)
        record_pid(self.lab, "host-" + host.name, proc.pid)
        host.proc = proc
        host.booted = False
        host.generation += 1
        host.powerdown_at = None
        host.shutdown_reason = None
        host.suspend_cause = None
        host.hotplugged = []
        host.plug_count = 0
        resumed = vm.hibernated(self.lab.host_dir(host.name, "swap.raw"))
        self.transition(host, "on", cause, **({"resume": "hibernation"} if resumed else {}))
        try:
            host.qmp = vm.Qmp(self.lab.host_dir(host.name, "qmp.sock"), lambda ev: self._vm_event(host, ev))
        except LabError as exc:
            self.event(host.name, "error", op="start", error=str(exc))
        gen = host.generation
        threading.Thread(target=self._watch, args=(host, proc), daemon=True).start()
        threading.Thread(target=self._probe_boot, args=(host, gen), daemon=True).start()

    def _vm_event(self, host, ev):
        """QMP events: the guest kernel's own power transitions."""
        name = ev.get("event")
        data = ev.get("data") or {}
        if name == "SUSPEND" and host.power == "on":
            cause, host.suspend_cause = host.suspend_cause or "host", None
            self.transition(host, "suspended", cause, kernel_state="S3")
        elif name == "WAKEUP" and host.power == "suspended":
            # not asked for by the lab (that transition comes first): a wake source inside the machine, e.g. its RTC
            self.transition(host, "on", "guest")
        elif name == "POWERDOWN":
            host.powerdown_at = time.monotonic()
        elif name == "SHUTDOWN":
            host.shutdown_reason = data.get("reason")
        elif name == "RESET" and data.get("guest"):
            host.booted = False
            host.generation += 1
            self.event(host.name, "reset", reason=data.get("reason"))
            threading.Thread(target=self._probe_boot, args=(host, host.generation), daemon=True).start()
        if name in ("SUSPEND", "WAKEUP", "POWERDOWN", "SHUTDOWN", "SUSPEND_DISK"):
            self.event(host.name, "qemu", qmp=name, **{k: v for k, v in data.items() if k in ("reason", "guest")})

    def _vm_exited(self, host, rc):
        """QEMU exited by itself: the guest hibernated, powered off, or its BMC cut the power."""
        if vm.hibernated(self.lab.host_dir(host.name, "swap.raw")):
            self.transition(host, "hibernated", "host", kernel_state="S4")
        elif host.powerdown_at is not None and time.monotonic() - host.powerdown_at < SOFT_OFF_WINDOW:
            # the guest shut down after an ACPI power-button press the lab did not make: the BMC's `power soft`
            self.transition(host, "off", "ipmi", mode="soft", reason=host.shutdown_reason)
        else:
            # the guest's own poweroff, or the BMC's hard `power off` (QEMU reports both as guest-shutdown)
            self.transition(host, "off", "host", reason=host.shutdown_reason, exit_status=rc)

    def _stop_vm(self, host, cause, soft, timeout):
        proc, host.proc = host.proc, None
        host.generation += 1
        clean = False
        if proc is not None and soft and host.qmp is not None:
            try:
                if host.power == "suspended":
                    host.qmp.command("system_wakeup")
                host.qmp.command("system_powerdown")  # ACPI power button: the guest's systemd shuts down
                proc.wait(timeout=timeout)
                clean = True
            except (LabError, subprocess.TimeoutExpired):
                pass
        if proc is not None and proc.poll() is None:
            try:
                if host.qmp is not None:
                    host.qmp.command("quit", timeout=5)
                proc.wait(timeout=10)
            except (LabError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait(timeout=10)
        self._cleanup_host(host)
        forget_pid(self.lab, "host-" + host.name)
        self.transition(host, "off", cause, mode="soft" if clean else "hard")

    def _suspend_vm(self, host, cause):
        """Ask the guest to suspend itself (there is no sleep button to press): its kernel enters S3."""
        host.suspend_cause = cause
        proc = vm.guest_ssh(self.lab, host.address, ["systemctl", "suspend"], timeout=30)
        if proc.returncode not in (0, 255):
            raise LabError("%s: systemctl suspend failed: %s" % (host.name, (proc.stderr or "").strip()))
        deadline = time.monotonic() + 60
        while host.power == "on" and time.monotonic() < deadline:
            time.sleep(0.1)
        if host.power != "suspended":
            raise LabError("%s did not enter S3 within 60s (QEMU reported no SUSPEND)" % host.name)

    def vm_input(self, name, action, key=None, device=None):
        """device: the keyboard to unplug (default: the newest hot-plugged one, else kbd0)."""
        """The VM's USB keyboard through QEMU's monitor: type a key, plug or unplug a keyboard."""
        host = self.host(name)
        if host.kind != "vm":
            raise LabError("%s is not a VM host: `input` needs --kind vm" % name)
        with host.lock:
            if host.power != "on" or host.qmp is None:
                raise LabError("%s is %s: input needs a running VM" % (name, host.power))
            if action == "key":
                key = key or "shift"
                if not key.replace("_", "").isalnum() or len(key) > 20:
                    raise LabError("invalid key name %r (QEMU qcode, e.g. shift, a, ret)" % key)
                # QMP send-key: QEMU routes it to the active keyboard (with -display none, input devices are not
                # bound to a console, so one cannot be picked)
                host.qmp.command("send-key", keys=[{"type": "qcode", "data": key}])
                detail = {"key": key}
            elif action == "plug":
                host.plug_count += 1
                dev = "kbd-hot%d" % host.plug_count
                host.qmp.command("device_add", driver="usb-kbd", id=dev, bus="xhci.0")
                host.hotplugged.append(dev)
                detail = {"device": dev}
            elif action == "unplug":
                dev = device or (host.hotplugged[-1] if host.hotplugged else "kbd0")
                if dev in host.hotplugged:
                    host.hotplugged.remove(dev)
                host.qmp.command("device_del", id=dev)
                detail = {"device": dev}
            else:
                raise LabError("unknown input action %r (key, plug, unplug)" % action)
        self.event(name, "input", action=action, **detail)
        return detail

    def vm_query_status(self, name):
        host = self.host(name)
        if host.kind != "vm" or host.qmp is None:
            raise LabError("%s has no running QEMU" % name)
        return host.qmp.command("query-status")

    def power(self, name, state, cause="lab", wait=False, timeout=None):
        host = self.host(name)
        with host.lock:
            if state == "on":
                self._wake(host, cause)
            elif state in ("off", "hard-off"):
                self._stop(host, cause)
            elif state == "soft-off":
                self._stop(host, cause, soft=True)
            elif state == "suspend":
                self._suspend(host, cause)
            elif state == "reset":
                self._stop(host, cause)
                self._start(host, cause)
            elif state != "status":
                raise LabError("unknown power state %r (on, off, soft-off, suspend, reset, status)" % state)
        if wait and state in ("on", "reset"):
            self.wait_booted(host, timeout or self.boot_timeout)
        return host.as_dict()

    def wait_booted(self, host, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if host.power == "on" and host.booted:
                return
            if host.power != "on":
                raise LabError("%s went %s while waiting for it to boot" % (host.name, host.power))
            time.sleep(0.1)
        raise LabError(
            "timed out after %.0fs waiting for %s (%s) to boot (sshd not answering); console log: %s"
            % (timeout, host.name, host.address, self.lab.host_dir(host.name, "console.log"))
        )

    def host(self, name):
        try:
            return self.hosts[name]
        except KeyError:
            raise LabError("no host %r in lab %r (hosts: %s)" % (name, self.lab.name, ", ".join(self.hosts))) from None

    def async_power(self, name, state, cause):
        def work():
            try:
                self.power(name, state, cause)
            except Exception as exc:
                self.event(name, "error", op=state, cause=cause, error=str(exc))

        threading.Thread(target=work, daemon=True).start()

    # ---------------------------------------------------------------- NICs (WoL)
    def wol_listener(self):
        with in_netns(self.lab.ns_switch):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            ifindex = socket.if_nametoindex(self.lab.br_lan)
        sock.bind((self.lab.br_lan, 0))
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b""))
        sock.settimeout(0.5)
        while not self.stop.is_set():
            try:
                frame, addr = sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                if self.stop.is_set():
                    break
                time.sleep(0.1)
                continue
            if addr[2] == PACKET_OUTGOING:
                continue
            parsed = wol.parse_frame(frame)
            if parsed:
                try:
                    self.on_magic(*parsed)
                except Exception:
                    traceback.print_exc()
        sock.close()

    def on_magic(self, kind, dst, target, password):
        host = self.by_mac.get(target)
        fields = {"kind": kind, "mac": target, "dst": dst}
        if password:
            fields["password"] = password
        if host is None:
            self.event(None, "wol-packet", result="no-such-nic", **fields)
            return
        nic = wol.read_state(self.lab.host_dir(host.name, "nic", "wol.json"))
        wake, reason = wol.decide(nic, host.mac, dst, password)
        if host.power == "on":
            self.event(host.name, "wol-packet", result="already-on", **fields)
            return
        if not wake:
            self.event(host.name, "wol-packet", result="ignored", reason=reason, **fields)
            return
        self.event(host.name, "wol-packet", result="wake", **fields)

        def work():
            with host.lock:
                if host.power != "on":
                    self._wake(host, "wol", kind=kind)

        threading.Thread(target=work, daemon=True).start()

    def set_wol(self, name, mode, sopass=None):
        host = self.host(name)
        try:
            wol.write_state(self.lab.host_dir(host.name, "nic", "wol.json"), mode, sopass)
        except ValueError as exc:
            raise LabError(str(exc)) from None
        self.event(host.name, "wol-config", wol=mode, sopass=sopass)
        return wol.read_state(self.lab.host_dir(host.name, "nic", "wol.json"))

    # ---------------------------------------------------------------- BMC hook
    def bmc_hook(self, name, args):
        """ipmi_sim chassis_control: ARGS = [mc] get PARAM... | set PARAM VALUE ..."""
        host = self.host(name)
        if host.kind == "vm":
            # ipmi_sim is QEMU's external BMC: it knows the power state itself and only runs its
            # startcmd (this hook, "start") to power the machine on.
            if args != ["start"]:
                raise LabError("a VM host's BMC hook only takes 'start'")
            self.event(name, "ipmi", request="start")
            self.async_power(name, "on", "ipmi")
            return {"exit": 0, "output": ""}
        if len(args) >= 2 and args[0].startswith("0x"):
            args = args[1:]
        op, params = args[0], args[1:]
        out = []
        if op == "get":
            for p in params:
                if p == "power":
                    out.append("power:%d" % (1 if host.power == "on" else 0))
                elif p == "boot":
                    out.append("boot:default")
                else:
                    raise LabError("Invalid parameter: %s" % p)
        elif op == "set":
            pairs = list(zip(params[0::2], params[1::2], strict=False))
            for p, v in pairs:
                if p == "power":
                    self.async_power(name, "on" if v == "1" else "off", "ipmi")
                elif p == "shutdown" and v == "1":
                    self.async_power(name, "soft-off", "ipmi")
                elif p == "reset" and v == "1":
                    self.async_power(name, "reset", "ipmi")
                elif p in ("boot", "identify", "reset", "shutdown"):
                    pass
                else:
                    raise LabError("Invalid parameter: %s" % p)
            self.event(name, "ipmi", request=" ".join(args))
        elif op == "check":
            return {"exit": 1, "output": ""}
        else:
            raise LabError("unknown chassis operation %r" % op)
        return {"exit": 0, "output": "\n".join(out)}

    # ---------------------------------------------------------------- UPS
    def ups(self, status):
        from . import services

        services.write_ups_status(self.lab, status)
        self.event(None, "ups", status=status)
        return {"status": status}

    # ---------------------------------------------------------------- control socket
    def handle(self, msg):
        op = msg.get("op")
        if op == "ping":
            return {"pid": os.getpid()}
        if op == "status":
            return {"hosts": [h.as_dict() for h in sorted(self.hosts.values(), key=lambda h: h.index)]}
        if op == "power":
            return {
                "host": self.power(
                    msg["host"], msg["state"], msg.get("cause", "lab"), msg.get("wait", False), msg.get("timeout")
                )
            }
        if op == "wait-booted":
            for name in msg.get("hosts") or list(self.hosts):
                host = self.host(name)
                if msg.get("only_on") and host.power != "on":
                    continue  # left off/suspended on purpose
                self.wait_booted(host, float(msg.get("timeout", self.boot_timeout)))
            return {}
        if op == "wol":
            return {"nic": self.set_wol(msg["host"], msg["mode"], msg.get("sopass"))}
        if op == "bmc":
            return self.bmc_hook(msg["host"], msg["args"])
        if op == "ups":
            return self.ups(msg["status"])
        if op == "input":
            return self.vm_input(msg["host"], msg["action"], msg.get("key"), msg.get("device"))
        if op == "qemu-status":
            return {"status": self.vm_query_status(msg["host"])}
        if op == "shutdown":
            threading.Thread(target=self.shutdown, daemon=True).start()
            return {}
        raise LabError("unknown request %r" % op)

    def serve(self, server, handler):
        server.settimeout(0.5)
        while not self.stop.is_set():
            try:
                conn = server.accept()[0]
            except TimeoutError:
                continue
            except OSError:
                break
            threading.Thread(target=self._conn, args=(conn, handler), daemon=True).start()

    def _conn(self, conn, handler):
        with conn:
            try:
                conn.settimeout(600)
                line = conn.makefile("rb").readline()
                msg = json.loads(line or b"{}")
                try:
                    reply = dict(handler(msg), ok=True)
                except LabError as exc:
                    reply = {"ok": False, "error": str(exc)}
                except Exception as exc:
                    traceback.print_exc()
                    reply = {"ok": False, "error": "internal error: %r" % exc}
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except (OSError, ValueError):
                pass

    def nic_handler(self, host):
        def handler(msg):
            if msg.get("op") != "suspend":
                raise LabError("unknown NIC request")
            delay = min(max(float(msg.get("delay", 1.0)), 0.0), 60.0)
            cause = str(msg.get("cause") or "engine")[:32]

            def later():
                time.sleep(delay)
                with host.lock:
                    if host.power == "on":
                        self._suspend(host, cause)

            threading.Thread(target=later, daemon=True).start()
            return {"delay": delay}

        return handler

    def listen_unix(self, path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(64)
        self.servers.append(server)
        return server

    # ---------------------------------------------------------------- lifecycle
    def shutdown(self):
        if self.stop.is_set():
            return
        self.stop.set()
        threads = []
        for host in self.hosts.values():

            def stop_host(h=host):
                with h.lock:
                    try:
                        self._stop(h, "lab-down")
                    except Exception:
                        traceback.print_exc()

            t = threading.Thread(target=stop_host)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(30)
        from . import services

        services.stop_all(self)
        self.event(None, "lab", action="down")
        for server in self.servers:
            server.close()
        self.done.set()

    def main(self):
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=self.shutdown, daemon=True).start())
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        cgroups.enter(cgroups.create(self.roots, "%s-supervisor" % self.lab.name))
        from . import services

        threading.Thread(target=self.wol_listener, daemon=True).start()
        server = self.listen_unix(self.lab.socket_path)
        os.chmod(self.lab.socket_path, 0o600)
        for host in self.hosts.values():
            nic = self.listen_unix(self.lab.host_dir(host.name, "nic", "suspend.sock"))
            os.chmod(self.lab.host_dir(host.name, "nic", "suspend.sock"), 0o666)
            threading.Thread(target=self.serve, args=(nic, self.nic_handler(host)), daemon=True).start()
        services.start_all(self)
        self.event(None, "lab", action="up", hosts=len(self.hosts))
        initial = self.state.get("initial_power", "on")
        if initial == "on":
            for host in self.hosts.values():
                with host.lock:
                    self._start(host, "lab-up")
        write_file(self.lab.path("supervisor.ready"), "%d\n" % os.getpid())
        self.serve(server, self.handle)
        # serve() returns once shutdown() closed the socket; let it finish (bounded)
        self.done.wait(90)
        forget_pid(self.lab, "supervisor")


def run(lab):
    sup = Supervisor(lab)
    try:
        sup.main()
    except Exception:
        traceback.print_exc()
        sup.shutdown()
        sys.exit(1)
