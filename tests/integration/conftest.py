"""Integration-test fixtures: a real lab fleet (see lab/README.md).

The session fixture ``lab`` brings up one lab (``lab/powernap-lab up``), yields a :class:`LabHandle`
and runs ``down`` at the end of the session. It needs root; without root every test that uses it
errors with a clear message (on purpose: these tests must not silently skip).

Settings (environment):

``POWERNAP_LAB_TEST_NAME``   lab name (default ``itest``; namespaces/links/cgroups are prefixed with it)
``POWERNAP_LAB_TEST_HOSTS``  number of hosts (default 3)
``POWERNAP_LAB_TEST_GROUPS`` inventory groups, e.g. ``webservers=h1,h2;fileservers=h3`` (that is the default)
``POWERNAP_LAB_KEEP=1``      leave the lab up after the session (for debugging; ``down`` it yourself)
``ANSIBLE_BIN_DIR``          where ``ansible``/``ansible-playbook`` live (default: the repo's ``.venv/bin``)

Typical use::

    def test_something(lab):
        lab.ansible("lab", "ping")                       # from the controller namespace
        lab.power("h2", "suspend")
        lab.ctl(["wakeonlan", "-i", lab.broadcast, lab.host("h2")["mac"]])
        lab.wait_power("h2", "on")
        assert lab.events(host="h2", event="power")[-1]["cause"] == "wol"

Packet captures in the controller namespace: ``dump = lab.tcpdump([...])`` returns once tcpdump captures
(never a fixed sleep before sending), ``lab.stop_tcpdump(dump)`` stops it. A fixture that starts a service
on a host (e.g. deploys the engine) stops it at teardown: later test files share the lab.
"""

import json
import os
import select
import signal
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB_TOOL = os.path.join(REPO, "lab", "powernap-lab")
ANSIBLE_BIN_DIR = os.environ.get("ANSIBLE_BIN_DIR", os.path.join(REPO, ".venv", "bin"))
DEFAULT_GROUPS = "webservers=h1,h2;fileservers=h3"


class LabError(AssertionError):
    """A lab command failed (shows its output)."""


class LabHandle:
    """A running lab. Hosts are named h1..hN.

    Attributes: ``name``, ``tool`` (path of powernap-lab), ``inventory_path``, ``hosts`` (list of dicts with
    name, address, mac, bmc_address, bmc_user, bmc_password), ``network`` (the lab segment's numbering:
    segment, lan, mgmt, controller, controller_mgmt, broadcast), ``controller`` (198.18.K.2 on segment K),
    ``broadcast`` (198.18.K.255), ``ups`` (dict host/port/name/user/password).
    """

    def __init__(self, name, tool=LAB_TOOL):
        self.name = name
        self.tool = tool
        self.inventory_path = os.path.join("/run/powernap-lab", name, "inventory.yml")
        self.hosts = []
        self.ups = {}
        self.refresh()

    # -- plumbing ---------------------------------------------------------------------------
    def run(self, *args, check=True, timeout=180, input=None):
        """Run ``powernap-lab --name NAME ARGS...``; return the CompletedProcess (text)."""
        cmd = [self.tool, "--name", self.name] + [str(a) for a in args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input, check=False)
        if check and proc.returncode != 0:
            raise LabError(
                "%s failed (%d)\nstdout:\n%s\nstderr:\n%s" % (" ".join(cmd), proc.returncode, proc.stdout, proc.stderr)
            )
        return proc

    def refresh(self):
        """Reload host facts (addresses, MACs, BMC credentials) from the lab's state."""
        with open(os.path.join("/run/powernap-lab", self.name, "lab.json"), encoding="utf-8") as f:
            state = json.load(f)
        self.network = state["network"]
        self.segment = self.network["segment"]
        self.controller = self.network["controller"]
        self.broadcast = self.network["broadcast"]
        self.hosts = [
            {k: h[k] for k in ("name", "address", "mac", "bmc_address", "bmc_user", "bmc_password")}
            for h in state["hosts"]
        ]
        self.ups = {
            "host": self.controller,
            "port": 3493,
            "name": "rack1",
            "user": state["ups"]["user"],
            "password": state["ups"]["password"],
        }

    def host(self, name):
        return next(h for h in self.hosts if h["name"] == name)

    @staticmethod
    def _argv(cmd):
        return ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)

    # -- the API ----------------------------------------------------------------------------
    def exec(self, host, cmd, check=True, timeout=60):
        """Run cmd (list, or str for ``sh -c``) inside a powered-on host, as root."""
        return self.run("exec", host, "--", *self._argv(cmd), check=check, timeout=timeout)

    def ctl(self, cmd, check=True, timeout=120):
        """Run cmd (list, or str for ``sh -c``) in the controller namespace (where Ansible runs)."""
        return self.run("ctl", "--", *self._argv(cmd), check=check, timeout=timeout)

    def power(self, host, state, wait=True, timeout=120):
        """power HOST on|off|soft-off|suspend|reset; ``on`` waits for sshd unless wait=False. Returns the state."""
        args = ["power", host, state, "--timeout", timeout]
        if not wait:
            args.append("--no-wait")
        return self.run(*args, timeout=timeout + 30).stdout.strip()

    def status(self):
        return json.loads(self.run("status", "--json").stdout)

    def power_state(self, host):
        return next(h["power"] for h in self.status()["hosts"] if h["name"] == host)

    def events(self, host=None, event=None, since=None):
        """The lab's event log (list of dicts with t, time, host, event, and from/to/cause for power events)."""
        args = ["events", "--json"]
        if host:
            args += ["--host", host]
        if since is not None:
            args += ["--since", since]
        out = json.loads(self.run(*args).stdout)
        return [e for e in out if event is None or e["event"] == event]

    def wol(self, host, mode, secureon=None):
        """Set a host NIC's Wake-on-LAN from outside: mode on/off or ethtool letters (g, d, gs...)."""
        args = ["wol", host, mode] + (["--secureon", secureon] if secureon else [])
        return json.loads(self.run(*args).stdout)

    def set_ups(self, status, timeout=30):
        """Set the UPS status and wait until upsd itself reports it (dummy-ups re-reads its file on a poll)."""
        written = self.run("ups", *status.split()).stdout.strip()
        target = "%s@%s:%d" % (self.ups["name"], self.ups["host"], self.ups["port"])

        def upsd_says():
            reply = self.ctl(["upsc", target, "ups.status"], check=False, timeout=15)
            return reply.returncode == 0 and reply.stdout.strip() == written

        self.wait_for(upsd_says, timeout, "upsd to report %s" % written, interval=0.5)
        return written

    def wait_for(self, predicate, timeout, what, interval=0.2):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
            time.sleep(interval)

    def wait_power(self, host, state, timeout=30):
        return self.wait_for(lambda: self.power_state(host) == state, timeout, "%s to be %s" % (host, state))

    def wait_booted(self, host, timeout=120):
        def booted():
            h = next(x for x in self.status()["hosts"] if x["name"] == host)
            return h["power"] == "on" and h.get("booted")

        return self.wait_for(booted, timeout, "%s to boot (sshd answering)" % host)

    def stays(self, host, state, seconds=3.0):
        """Assert host keeps the given power state for a while (negative wake tests)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            current = self.power_state(host)
            assert current == state, "%s went %s, expected it to stay %s" % (host, current, state)
            time.sleep(0.25)

    def tcp_ok(self, host, port=22, timeout=2.0):
        """True when host:port accepts a TCP connection as seen from the controller namespace."""
        addr = self.host(host)["address"]
        script = (
            "import socket\ns=socket.socket();s.settimeout(%s)\n"
            "try:\n s.connect((%r,%d));print('ok')\nexcept OSError as e:\n print('fail',e)" % (timeout, addr, port)
        )
        out = self.ctl(["/usr/bin/python3", "-c", script], timeout=timeout + 10).stdout
        return out.startswith("ok")

    def tcpdump(self, args, stdout=subprocess.DEVNULL, timeout=30, netns=None):
        """Start tcpdump ARGS in the controller namespace (or ``netns``); return its Popen once it captures.

        tcpdump says "listening on IFACE" on stderr when its socket is bound: packets sent after that are
        seen. A fixed sleep instead can miss the first packets on a loaded machine. The caller stops it by pid.
        """
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns or "%s-ctl" % self.name, "tcpdump"] + [str(a) for a in args],
            stdout=stdout,
            stderr=subprocess.PIPE,
        )
        said = b""
        deadline = time.monotonic() + timeout
        while b"listening on" not in said:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                proc.kill()
                proc.wait()
                raise LabError("tcpdump %s did not start capturing within %ss: %r" % (" ".join(args), timeout, said))
            if select.select([proc.stderr], [], [], left)[0]:
                said += os.read(proc.stderr.fileno(), 4096)
        return proc

    @staticmethod
    def stop_tcpdump(proc, timeout=5):
        """Stop a tcpdump from :meth:`tcpdump` (SIGINT: it writes out what it captured) and reap it."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stderr.close()

    def ansible_bin(self, name="ansible"):
        return os.path.join(ANSIBLE_BIN_DIR, name)

    def ansible(self, pattern, module, args=None, check=True, timeout=180, extra=()):
        """Run an ad-hoc ansible command from the controller namespace against the lab inventory."""
        cmd = [self.ansible_bin("ansible"), "-i", self.inventory_path, pattern, "-m", module]
        if args:
            cmd += ["-a", args]
        cmd += list(extra)
        return self.ctl(cmd, check=check, timeout=timeout)

    def ansible_playbook(self, playbook, *extra, check=True, timeout=600):
        cmd = [self.ansible_bin("ansible-playbook"), "-i", self.inventory_path, playbook] + list(extra)
        return self.ctl(cmd, check=check, timeout=timeout)


def require_root():
    if os.geteuid() != 0:
        pytest.fail(
            "the lab integration tests need root (namespaces, mounts, cgroups): run them with sudo, "
            "e.g. sudo %s/pytest tests/integration" % ANSIBLE_BIN_DIR,
            pytrace=False,
        )


def bring_up(name, hosts, groups=None, timeout=180, suite=None, kind=None, segment=None, apt_packages=None):
    """Bring a lab up (idempotent) and return its handle; on failure tear it down and fail.

    ``apt_packages``: what the lab's apt repository serves (``up --apt-packages``; default: the lab's list).
    """
    require_root()
    cmd = [LAB_TOOL, "--name", name, "up", "--hosts", str(hosts), "--timeout", str(timeout)]
    if segment is not None:
        cmd += ["--segment", str(segment)]
    if groups:
        cmd += ["--groups", groups]
    if suite:
        cmd += ["--suite", suite]
    if kind:
        cmd += ["--kind", kind]
    if apt_packages is not None:
        cmd += ["--apt-packages", ",".join(apt_packages)]
    # a first VM lab also builds the VM image (a few minutes)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + (1800 if kind else 600), check=False)
    if proc.returncode != 0:
        subprocess.run([LAB_TOOL, "--name", name, "down"], capture_output=True, timeout=300, check=False)
        pytest.fail("powernap-lab up failed (%d):\n%s%s" % (proc.returncode, proc.stdout, proc.stderr), pytrace=False)
    return LabHandle(name)


def tear_down(name):
    proc = subprocess.run([LAB_TOOL, "--name", name, "down"], capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise LabError("powernap-lab down failed (%d): %s" % (proc.returncode, proc.stderr))


@pytest.fixture(scope="session")
def lab():
    """A running lab for the whole test session (see the module docstring)."""
    name = os.environ.get("POWERNAP_LAB_TEST_NAME", "itest")
    hosts = int(os.environ.get("POWERNAP_LAB_TEST_HOSTS", "3"))
    groups = os.environ.get("POWERNAP_LAB_TEST_GROUPS", DEFAULT_GROUPS if hosts >= 3 else "")
    handle = bring_up(name, hosts, groups)
    try:
        yield handle
    finally:
        if os.environ.get("POWERNAP_LAB_KEEP") != "1":
            tear_down(name)


@pytest.fixture
def lab_reset(lab):
    """The session lab, restored after the test: every host powered on (booted) with WoL "g"."""
    yield lab
    for h in lab.hosts:
        lab.wol(h["name"], "g")
        if lab.power_state(h["name"]) != "on":
            lab.power(h["name"], "on")
        lab.wait_booted(h["name"])


def segment_lab_names(base=None):
    """Names of the two segment labs: the test lab name (default ``fleet``) + ``a`` / ``b``, 8 characters at most."""
    base = (base or os.environ.get("POWERNAP_LAB_TEST_NAME") or "fleet")[:7]
    return base + "a", base + "b"


@pytest.fixture(scope="session")
def segment_labs():
    """Two labs on L2 segments 1 and 2 (two hosts each; disjoint bridges, subnets and MACs), up side by side.

    Shared by the lab's segment test and the fleet-mode tests (one bring-up for the session); both labs are
    taken down at the end unless POWERNAP_LAB_KEEP=1.
    """
    names = segment_lab_names()
    labs = []
    try:
        for segment, name in enumerate(names, start=1):
            labs.append(bring_up(name, 2, segment=segment))
        yield tuple(labs)
    finally:
        if os.environ.get("POWERNAP_LAB_KEEP") != "1":
            problems = []
            for name in names:  # both, even when the first fails
                try:
                    tear_down(name)
                except LabError as exc:
                    problems.append(str(exc))
            if problems:
                raise LabError("; ".join(problems))
