"""VM hosts: QEMU guests with their own kernel (see lab/README.md, "Host kinds").

The supervisor owns each guest's QEMU process and talks to it over QMP (one connection per guest,
kept open: QEMU serves one QMP client at a time). QEMU runs in the lab's BMC namespace, where its
ipmi_sim (the guest's external BMC) listens on 127.0.0.1; its NIC is a tap in the switch namespace
(the host's switch port), opened there and handed to QEMU as a file descriptor.
"""

import fcntl
import json
import os
import socket
import struct
import subprocess
import threading
import time

from .common import RUN_ROOT, LabError, run, write_file

QEMU = "qemu-system-x86_64"
VM_MEMORY_MB = 512
VM_CPUS = 2
SWAP_MB = 768
DATA_MB = 64
BMC_SERIAL_BASE = 9100  # ipmi_sim's VM interface of host N listens on 127.0.0.1:(BASE+N) in the BMC namespace
ACCEL_PROBE_SECONDS = 20
SMBIOS_VENDOR = "PowerNap Lab"
# The swap header's last 10 bytes of its first page: "SWAPSPACE2" for plain swap, one of these after hibernation.
HIBERNATE_SIGNATURES = (b"S1SUSPEND", b"ULSUSPEND", b"LINHIB0001")

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def bmc_serial_port(index):
    return BMC_SERIAL_BASE + index


def smbios_product(host):
    return "pnl-vm-%s" % host


def kernel_cmdline(host, all_hosts, pubkey, machine_id):
    key = ":".join(pubkey.split()[:2])  # "ssh-ed25519:AAAA...": no spaces on the command line
    peers = ",".join("%s=%s" % (h["name"], h["address"]) for h in all_hosts)
    return " ".join(
        [
            "root=LABEL=pnlroot",
            "rw",
            "console=ttyS0",
            "net.ifnames=0",
            # after a resume the clocksource watchdog would otherwise mark the TSC unstable and stall the guest
            "tsc=reliable",
            "resume=/dev/vdb",
            "systemd.machine_id=%s" % machine_id,
            "pnl.host=%s" % host["name"],
            "pnl.addr=%s/24" % host["address"],
            "pnl.hosts=%s" % peers,
            "pnl.key=%s" % key,
        ]
    )


# ---------------------------------------------------------------- disks
def create_disks(host_dir, base_disk):
    """Copy-on-write overlay of the image (the host's own disk) plus a raw swap disk for hibernation."""
    os.makedirs(host_dir, exist_ok=True)
    overlay = os.path.join(host_dir, "disk.qcow2")
    if not os.path.exists(overlay):
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base_disk, overlay])
    swap = os.path.join(host_dir, "swap.raw")
    if not os.path.exists(swap):
        with open(swap, "wb") as f:
            f.truncate(SWAP_MB * 1024 * 1024)
        run(["mkswap", "-q", "-L", "pnlswap", swap])
    # a small disk on the machine's AHCI (SATA) controller, so SATA link power management has a link to manage
    data = os.path.join(host_dir, "sata.raw")
    if not os.path.exists(data):
        with open(data, "wb") as f:
            f.truncate(DATA_MB * 1024 * 1024)
    return overlay, swap


def swap_signature(swap):
    try:
        with open(swap, "rb") as f:
            f.seek(4096 - 10)
            return f.read(10)
    except OSError:
        return b""


def hibernated(swap):
    """True when the swap disk holds a hibernation image (the guest hibernated rather than powered off)."""
    return swap_signature(swap).startswith(HIBERNATE_SIGNATURES)


# ---------------------------------------------------------------- network
def open_tap(ns_switch, name):
    """Open the persistent tap NAME of the switch namespace; the fd is handed to QEMU."""
    from .common import in_netns

    with in_netns(ns_switch):
        fd = os.open("/dev/net/tun", os.O_RDWR)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
        except OSError:
            os.close(fd)
            raise
    return fd


# ---------------------------------------------------------------- acceleration
def _boot_id():
    with open("/proc/sys/kernel/random/boot_id", encoding="utf-8") as f:
        return f.read().strip()


def probe_kvm(kernel, workdir, seconds=ACCEL_PROBE_SECONDS):
    """Boot the VM kernel under KVM until it panics for want of a root disk (bounded): True when it got there.

    /dev/kvm answering is not enough: on some machines a KVM guest hangs early in boot.
    """
    if not os.path.exists("/dev/kvm"):
        return False, "no /dev/kvm"
    log = os.path.join(workdir, "kvm-probe.log")
    cmd = [
        QEMU,
        "-machine",
        "q35,hpet=off",
        "-accel",
        "kvm",
        "-cpu",
        "max",
        "-m",
        "256",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "file:" + log,
        "-kernel",
        kernel,
        "-append",
        "console=ttyS0 panic=-1 root=/dev/pnl-probe-nonexistent",
    ]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        err = proc.communicate(timeout=seconds)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return False, "a KVM guest did not reach its kernel panic within %ds (hangs)" % seconds
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        text = ""
    if "Kernel panic" in text:
        return True, "a KVM guest booted its kernel in %.1fs" % (time.monotonic() - start)
    first = ((err or b"").decode(errors="replace").strip().splitlines() or ["no output"])[0]
    return False, "a KVM guest failed (exit %d): %s" % (proc.returncode, first[:160])


def choose_accel(kernel, log=None):
    """kvm when a bounded probe boot works on this machine, else tcg; cached per machine boot."""
    forced = os.environ.get("POWERNAP_LAB_ACCEL")
    if forced in ("kvm", "tcg"):
        return {"accel": forced, "reason": "POWERNAP_LAB_ACCEL=%s" % forced}
    cache = os.path.join(RUN_ROOT, "accel.json")
    try:
        with open(cache, encoding="utf-8") as f:
            rec = json.load(f)
        if rec.get("boot_id") == _boot_id() and rec.get("kernel") == kernel:
            return {"accel": rec["accel"], "reason": rec["reason"]}
    except (OSError, ValueError, KeyError):
        pass
    if log:
        log("probing KVM with a bounded boot (up to %ds)" % ACCEL_PROBE_SECONDS)
    os.makedirs(RUN_ROOT, exist_ok=True)
    ok, reason = probe_kvm(kernel, RUN_ROOT)
    rec = {"boot_id": _boot_id(), "kernel": kernel, "accel": "kvm" if ok else "tcg", "reason": reason}
    write_file(cache, json.dumps(rec) + "\n")
    return {"accel": rec["accel"], "reason": reason}


# ---------------------------------------------------------------- QEMU
def qemu_command(lab, host, image, accel, tap_fd):
    d = lab.host_dir(host["name"])
    accel_args = ["-accel", "kvm", "-cpu", "max"] if accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]
    return [
        QEMU,
        "-name",
        "%s-%s" % (lab.name, host["name"]),
        # hpet=off: with an HPET the RTC alarm cannot wake the guest from S3
        "-machine",
        "q35,hpet=off",
        *accel_args,
        "-smp",
        str(VM_CPUS),
        "-m",
        str(VM_MEMORY_MB),
        "-global",
        "ICH9-LPC.disable_s3=0",
        "-global",
        "ICH9-LPC.disable_s4=0",
        "-nodefaults",
        "-display",
        "none",
        "-vga",
        "none",
        "-rtc",
        "base=utc",
        "-kernel",
        image["kernel"],
        "-initrd",
        image["initrd"],
        "-append",
        host["cmdline"],
        "-drive",
        "file=%s,if=virtio,format=qcow2,discard=unmap" % os.path.join(d, "disk.qcow2"),
        "-drive",
        "file=%s,if=virtio,format=raw" % os.path.join(d, "swap.raw"),
        "-netdev",
        "tap,id=lan0,fd=%d" % tap_fd,
        "-device",
        "virtio-net-pci,netdev=lan0,mac=%s" % host["mac"],
        "-device",
        "virtio-rng-pci",
        "-chardev",
        "socket,id=ipmi0,host=127.0.0.1,port=%d,reconnect=2" % bmc_serial_port(host["index"]),
        "-device",
        "ipmi-bmc-extern,id=bmc0,chardev=ipmi0",
        "-device",
        "isa-ipmi-kcs,bmc=bmc0",
        "-device",
        "qemu-xhci,id=xhci",
        "-device",
        "usb-kbd,id=kbd0,bus=xhci.0",
        "-smbios",
        "type=1,manufacturer=%s,product=%s,version=1,serial=PNL-%s-%s"
        % (SMBIOS_VENDOR, smbios_product(host["name"]), lab.name, host["name"]),
        "-chardev",
        "file,id=con0,path=%s,append=on" % os.path.join(d, "console.log"),
        "-serial",
        "chardev:con0",
        "-qmp",
        "unix:%s,server=on,wait=off" % os.path.join(d, "qmp.sock"),
    ]


class Qmp:
    """One QMP connection: commands (serialised, bounded) and an event callback."""

    def __init__(self, path, on_event, timeout=30.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.connect(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.sock.close()
                    raise LabError("QEMU's QMP socket %s did not answer within %.0fs" % (path, timeout)) from None
                time.sleep(0.1)
        self.file = self.sock.makefile("rb")
        self.on_event = on_event
        self.lock = threading.Lock()
        self.replies = {}
        self.cond = threading.Condition()
        self.next_id = 0
        self.closed = False
        self.sock.settimeout(timeout)
        json.loads(self.file.readline() or b"{}")  # greeting
        self.sock.sendall(b'{"execute": "qmp_capabilities"}\n')
        json.loads(self.file.readline() or b"{}")
        self.sock.settimeout(None)
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self):
        try:
            for line in self.file:
                msg = json.loads(line)
                if "event" in msg:
                    try:
                        self.on_event(msg)
                    except Exception:  # an event handler bug must not stop the reader
                        import traceback

                        traceback.print_exc()
                elif "id" in msg:
                    with self.cond:
                        self.replies[msg["id"]] = msg
                        self.cond.notify_all()
        except (OSError, ValueError):
            pass
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def command(self, name, timeout=15.0, **arguments):
        with self.lock:
            self.next_id += 1
            ident = self.next_id
            msg = {"execute": name, "id": ident}
            if arguments:
                msg["arguments"] = arguments
            try:
                self.sock.sendall(json.dumps(msg).encode() + b"\n")
            except OSError as exc:
                raise LabError("QMP %s: %s" % (name, exc)) from None
        deadline = time.monotonic() + timeout
        with self.cond:
            while ident not in self.replies:
                if self.closed:
                    raise LabError("QMP %s: QEMU closed the connection" % name)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LabError("QMP %s: no answer within %.0fs" % (name, timeout))
                self.cond.wait(left)
            reply = self.replies.pop(ident)
        if "error" in reply:
            raise LabError("QMP %s: %s" % (name, reply["error"].get("desc", reply["error"])))
        return reply.get("return")

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def ssh_command(lab, address, connect_timeout=5):
    """ssh into a VM host from the controller namespace, with the lab's key (VM hosts have no nsenter way in)."""
    return [
        "ip",
        "netns",
        "exec",
        lab.ns_ctl,
        "ssh",
        "-i",
        lab.ssh_key,
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=%d" % connect_timeout,
        # a guest that suspends or hibernates under the session drops it within ~15 s instead of hanging it
        "-o",
        "ServerAliveInterval=5",
        "-o",
        "ServerAliveCountMax=3",
        "root@%s" % address,
        "--",
    ]


def guest_ssh(lab, address, argv, timeout=30):
    """Run argv in a VM host (bounded); returns the CompletedProcess (ssh's 255 = connection lost)."""
    import shlex

    try:
        return subprocess.run(
            ssh_command(lab, address) + [shlex.join(argv)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 255, "", "timed out after %ss" % timeout)
