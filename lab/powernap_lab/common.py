"""Shared constants, naming and small helpers for the powernap lab.

Everything the lab creates is named from the lab name (``pnl`` by default), so two labs
with different names never touch each other's namespaces, links, cgroups or files.
"""

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager

DEFAULT_NAME = "pnl"
RUN_ROOT = "/run/powernap-lab"
CACHE_ROOT = os.environ.get("POWERNAP_LAB_CACHE", "/var/cache/powernap-lab")
LAB_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(LAB_DIR, "powernap-lab")
# What the lab runs itself as (supervisor, BMC hooks): the Python entry behind the TOOL wrapper.
TOOL_ENTRY = os.path.join(LAB_DIR, "powernap_lab", "__main__.py")
PYTHON = "/usr/bin/python3"

# A lab is one L2 segment K (``up --segment K``, saved in its state): LAN 198.18.K.0/24, management
# 198.19.K.0/24, MACs 02:50:4e:0K:..; segment 0 is the lab's original (and default) numbering.
SEGMENTS = range(10)
DEFAULT_SEGMENT = 0
UPS_PORT = 3493
UPS_NAME = "rack1"
BMC_PORT = 623
MAX_HOSTS = 200
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
HOST_RE = re.compile(r"^h([1-9][0-9]{0,2})$")
# Inside a host: where the lab's per-host "NIC" directory is bind-mounted.
GUEST_NIC_DIR = "/run/powernap-lab-nic"
GUEST_SUSPEND = "/usr/local/sbin/powernap-lab-suspend"

CLONE_NEWNET = 0x40000000
POWER_STATES = ("on", "suspended", "hibernated", "off")
HOST_KINDS = ("nspawn", "vm")
REQUIRED_TOOLS = {
    "ip": "iproute2",
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "nsenter": "util-linux",
    "ssh-keygen": "openssh-client",
    "ipmi_sim": "openipmi",
    "dpkg-scanpackages": "dpkg-dev",
}
# Only needed when the lab has VM hosts (--kind vm).
VM_REQUIRED_TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "mkfs.ext4": "e2fsprogs",
    "mkswap": "util-linux",
}
REQUIRED_FILES = {
    "/lib/nut/upsd": "nut-server",
    "/lib/nut/dummy-ups": "nut-server",
}


class LabError(Exception):
    """A failure with a message meant for the user."""


def check_root():
    if os.geteuid() != 0:
        raise LabError("powernap-lab must run as root (it creates namespaces, mounts and cgroups); try: sudo %s" % TOOL)


def check_packages(vm=False):
    missing = []
    tools = dict(REQUIRED_TOOLS, **(VM_REQUIRED_TOOLS if vm else {}))
    for tool, pkg in tools.items():
        if not shutil.which(tool):
            missing.append("%s (command %s)" % (pkg, tool))
    for path, pkg in REQUIRED_FILES.items():
        if not os.access(path, os.X_OK):
            missing.append("%s (%s)" % (pkg, path))
    if missing:
        pkgs = sorted({m.split(" ")[0] for m in missing})
        raise LabError("missing packages: %s; install with: apt-get install %s" % (", ".join(missing), " ".join(pkgs)))


def check_name(name):
    if not NAME_RE.match(name or ""):
        raise LabError("invalid lab name %r: use 1-8 lowercase letters/digits, starting with a letter" % name)
    return name


def host_index(host):
    m = HOST_RE.match(host)
    if not m:
        raise LabError("invalid host name %r (expected h1, h2, ...)" % host)
    return int(m.group(1))


def check_segment(segment):
    if not isinstance(segment, int) or isinstance(segment, bool) or segment not in SEGMENTS:
        raise LabError("invalid segment %r: use %d..%d" % (segment, SEGMENTS[0], SEGMENTS[-1]))
    return segment


def lan_net(segment):
    """The first three octets of segment's LAN /24."""
    return "198.18.%d" % check_segment(segment)


def mgmt_net(segment):
    return "198.19.%d" % check_segment(segment)


def host_mac(index, segment):
    return "02:50:4e:%02x:%02x:%02x" % (check_segment(segment), index >> 8, index & 0xFF)


def host_address(index, segment):
    return "%s.%d" % (lan_net(segment), 10 + index)


def bmc_address(index, segment):
    return "%s.%d" % (mgmt_net(segment), 10 + index)


def lab_mac(role, segment):
    """The MAC of a lab-side endpoint (role: ctl-lan, ctl-mgmt, bmc); one per segment, never a host's."""
    prefix, last = {"ctl-lan": ("ff", 2), "ctl-mgmt": ("fe", 2), "bmc": ("fe", 1)}[role]
    return "02:50:4e:%s:%02x:%02x" % (prefix, check_segment(segment), last)


class Lab:
    """Names and paths of one lab."""

    def __init__(self, name=None):
        self.name = check_name(name or os.environ.get("POWERNAP_LAB_NAME") or DEFAULT_NAME)
        self.run = os.path.join(RUN_ROOT, self.name)
        self._segment = None

    # the lab's L2 segment: chosen by `up`, then read from the lab's state by every later command
    @property
    def segment(self):
        if self._segment is None:
            state = self.load_state() or {}
            self._segment = check_segment(state.get("segment", DEFAULT_SEGMENT))
        return self._segment

    @segment.setter
    def segment(self, value):
        self._segment = check_segment(value)

    @property
    def lan_cidr(self):
        return lan_net(self.segment) + ".0/24"

    @property
    def mgmt_cidr(self):
        return mgmt_net(self.segment) + ".0/24"

    @property
    def controller_lan(self):
        return lan_net(self.segment) + ".2"

    @property
    def controller_mgmt(self):
        return mgmt_net(self.segment) + ".2"

    @property
    def broadcast(self):
        return lan_net(self.segment) + ".255"

    def host_address(self, index):
        return host_address(index, self.segment)

    def host_mac(self, index):
        return host_mac(index, self.segment)

    def bmc_address(self, index):
        return bmc_address(index, self.segment)

    def network_facts(self):
        """The segment's numbering as saved in the lab's state (what tests and tools read)."""
        return {
            "segment": self.segment,
            "lan": self.lan_cidr,
            "mgmt": self.mgmt_cidr,
            "controller": self.controller_lan,
            "controller_mgmt": self.controller_mgmt,
            "broadcast": self.broadcast,
        }

    # namespaces
    @property
    def ns_switch(self):
        return "%s-sw" % self.name

    @property
    def ns_ctl(self):
        return "%s-ctl" % self.name

    @property
    def ns_bmc(self):
        return "%s-bmc" % self.name

    def ns_host(self, host):
        return "%s-%s" % (self.name, host)

    def all_netns(self):
        """Every existing network namespace that belongs to this lab."""
        try:
            names = os.listdir("/run/netns")
        except FileNotFoundError:
            return []
        prefix = self.name + "-"
        return sorted(n for n in names if n.startswith(prefix) and re.match(r"^(sw|ctl|bmc|h\d+)$", n[len(prefix) :]))

    # links in the switch namespace
    @property
    def br_lan(self):
        return "%s-lan" % self.name

    @property
    def br_mgmt(self):
        return "%s-mgmt" % self.name

    def port(self, who):
        """Switch-side veth of a host/ctl/bmc on the LAN."""
        return "%s-%s" % (self.name, who)

    def mport(self, who):
        """Switch-side veth on the management network."""
        return "%s-m%s" % (self.name, who)

    # files
    def path(self, *parts):
        return os.path.join(self.run, *parts)

    def host_dir(self, host, *parts):
        return os.path.join(self.run, "hosts", host, *parts)

    @property
    def state_file(self):
        return self.path("lab.json")

    @property
    def events_file(self):
        return self.path("events.jsonl")

    @property
    def socket_path(self):
        return self.path("supervisor.sock")

    @property
    def inventory_path(self):
        return self.path("inventory.yml")

    @property
    def ssh_key(self):
        return self.path("ssh", "id_ed25519")

    def load_state(self):
        try:
            with open(self.state_file, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def save_state(self, state):
        write_file(self.state_file, json.dumps(state, indent=2, sort_keys=True) + "\n")


def write_file(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = "%s.tmp%d" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def run(cmd, check=True, capture=True, timeout=60, env=None, input_text=None, cwd=None):
    """Run a command (bounded); raise LabError with its stderr when it fails and check is set."""
    try:
        proc = subprocess.run(
            cmd, check=False, capture_output=capture, text=True, timeout=timeout, env=env, input=input_text, cwd=cwd
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError("timed out after %ss: %s" % (timeout, " ".join(cmd))) from exc
    except FileNotFoundError as exc:
        raise LabError("command not found: %s" % cmd[0]) from exc
    if check and proc.returncode != 0:
        err = (proc.stderr or "").strip() if capture else ""
        raise LabError("command failed (%d): %s%s" % (proc.returncode, " ".join(cmd), (": " + err) if err else ""))
    return proc


def ip(*args, ns=None, check=True):
    cmd = ["ip"]
    if ns:
        cmd += ["-n", ns]
    return run(cmd + list(args), check=check)


_libc = None


def _setns(fd, nstype):
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def in_netns(ns):
    """Switch the calling thread into network namespace ``ns`` (by name) for the block.

    Sockets created inside the block stay in that namespace after it ends.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(os.path.join("/run/netns", ns), os.O_RDONLY)
        try:
            _setns(target, CLONE_NEWNET)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own, CLONE_NEWNET)
    finally:
        os.close(own)


def socket_in(ns, family=socket.AF_INET, type_=socket.SOCK_STREAM, proto=0):
    with in_netns(ns):
        return socket.socket(family, type_, proto)


def ssh_banner(ns, address, timeout=1.0):
    """True when an SSH server answers on address:22 as seen from namespace ns."""
    try:
        sock = socket_in(ns)
    except OSError:
        return False
    try:
        sock.settimeout(timeout)
        sock.connect((address, 22))
        return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False
    finally:
        sock.close()


# process records: pid + start time, so a recycled pid is never killed by mistake
def proc_starttime(pid):
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8", errors="replace") as f:
            data = f.read()
    except OSError:
        return None
    return int(data.rsplit(")", 1)[1].split()[19])


def record_pid(lab, role, pid):
    os.makedirs(lab.path("pids"), exist_ok=True)
    write_file(lab.path("pids", role), json.dumps({"pid": pid, "start": proc_starttime(pid)}) + "\n")


def forget_pid(lab, role):
    try:
        os.unlink(lab.path("pids", role))
    except FileNotFoundError:
        pass


def recorded_pids(lab):
    out = {}
    try:
        names = os.listdir(lab.path("pids"))
    except FileNotFoundError:
        return out
    for role in names:
        try:
            with open(lab.path("pids", role), encoding="utf-8") as f:
                rec = json.load(f)
        except (OSError, ValueError):
            continue
        if rec.get("start") is not None and proc_starttime(rec["pid"]) == rec["start"]:
            out[role] = rec["pid"]
    return out


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_pids(pids, timeout=5.0):
    """SIGTERM the given pids, wait (bounded), SIGKILL the survivors."""
    pids = [p for p in pids if pid_alive(p)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if pid_alive(p)]
        time.sleep(0.05)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def wait_for(predicate, timeout, what, interval=0.1):
    """Poll predicate until true; raise LabError naming ``what`` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise LabError("timed out after %.0fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def request(lab, message, timeout=120.0):
    """Send one JSON request to the lab supervisor and return its JSON reply."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(lab.socket_path)
        except OSError as exc:
            raise LabError(
                "lab %r is not running (no supervisor at %s: %s); run: powernap-lab --name %s up"
                % (lab.name, lab.socket_path, exc.strerror, lab.name)
            ) from exc
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError as exc:
        raise LabError(
            "timed out after %.0fs waiting for the lab supervisor (%s)" % (timeout, message.get("op"))
        ) from exc
    finally:
        sock.close()
    if not data:
        raise LabError("the lab supervisor closed the connection without answering")
    reply = json.loads(data)
    if not reply.get("ok"):
        raise LabError(reply.get("error", "supervisor error"))
    return reply
