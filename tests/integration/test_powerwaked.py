"""powerwaked in the lab: sleep proxy, restart, UPS policy, schedule and cluster policy (root, lab).

powerwaked runs in the controller namespace (the segment's always-on box, eth0 on the LAN).  The
hosts run no engine here, so the test plays their engines: it sends the signed reports an engine
would send (``FleetReporter`` messages) from the controller namespace, and the server naps hosts
by IPMI soft-off (``nap_action = poweroff``).  Wakes are counted from the lab's event log (cause
wol/ipmi) and from a tcpdump capture of magic packets on the controller's LAN interface.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from .conftest import LabHandle

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENGINE = os.path.join(REPO, "engine")
SECRET = "lab-fleet-secret-0123456789"
PORT = 7490
PYTHON = "/usr/bin/python3"

pytestmark = pytest.mark.lab

SEND_REPORT = r"""
import json, socket, sys
sys.path.insert(0, %(engine)r)
from powernap.fleet_keys import host_key
from powernap.server import protocol as P
for report in json.loads(sys.argv[1]):
    report.setdefault("kind", "report")
    report["from"] = report["host"]
    report.setdefault("interval", 3600)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        # Each host signs with its own key, derived from the master as the role does.
        s.sendto(P.encode(host_key(%(secret)r, report["host"]).encode(), report), ("127.0.0.1", %(port)d))
"""

API_GET = r"""
import json, sys
sys.path.insert(0, %(engine)r)
from powernap.powerwake import ServerClient
print(json.dumps(ServerClient("http://127.0.0.1:%(port)d", %(secret)r).get(sys.argv[1])))
"""

API_POST = r"""
import json, sys, urllib.error
sys.path.insert(0, %(engine)r)
from powernap.powerwake import ServerClient
try:
    answer = ServerClient("http://127.0.0.1:%(port)d", %(secret)r).post(sys.argv[1], json.loads(sys.argv[2]))
    print(json.dumps({"status": 200, "answer": answer}))
except urllib.error.HTTPError as exc:
    print(json.dumps({"status": exc.code, "answer": json.loads(exc.read())}))
"""


class Powerwaked:
    """powerwaked in the lab's controller namespace, started and stopped by pid.

    ``options`` are more ``[powerwaked]`` lines (fleet mode: store, instance, segment ...), ``hosts`` the
    ``[host.*]`` sections to write (default: the lab's hosts; a host dict's ``segment`` key is written too),
    ``port`` the UDP report / HTTP API port (two instances in one controller namespace need two).
    """

    def __init__(self, lab, extra="", proxy=(), options=(), hosts=None, port=PORT, confirm_timeout="20s"):
        self.lab = lab
        self.port = port
        self.dir = tempfile.mkdtemp(prefix="powerwaked-lab-")
        self.config = os.path.join(self.dir, "powerwaked.conf")
        lines = [
            "[powerwaked]",
            "secret = %s" % SECRET,
            "listen = 0.0.0.0",
            "port = %d" % port,
            "interface = eth0",
            "broadcast = %s" % lab.broadcast,
            "state_file = %s" % os.path.join(self.dir, "registry.json"),
            "confirm_timeout = %s" % confirm_timeout,
            "announce = no",
            *options,
            "[proxy]",
            "cooldown = 30s",
            *proxy,  # a section is given once per file: a test's [proxy] options go here
            "[ipmi]",
            "user = admin",
            "timeout = 15s",
        ]
        for host in lab.hosts if hosts is None else hosts:
            lines += [
                "[host.%s]" % host["name"],
                "mac = %s" % host["mac"],
                "ip = %s" % host["address"],
                "bmc = %s" % host["bmc_address"],
                "bmc_user = %s" % host["bmc_user"],
                "bmc_password = %s" % host["bmc_password"],
            ]
            if host.get("segment"):
                lines.append("segment = %s" % host["segment"])
        with open(self.config, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n" + extra)
        os.chmod(self.config, 0o600)
        self.proc = None

    def start(self):
        argv = [
            "ip",
            "netns",
            "exec",
            "%s-ctl" % self.lab.name,
            PYTHON,
            "-m",
            "powernap.server.daemon",
            "--config",
            self.config,
            "--log-level",
            "debug",
        ]
        self.log = open(os.path.join(self.dir, "powerwaked.log"), "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            argv, cwd=ENGINE, env=dict(os.environ, PYTHONPATH=ENGINE), stdout=self.log, stderr=subprocess.STDOUT
        )
        self.lab.wait_for(self._api_ok, 15, "powerwaked API")

    def _api_ok(self):
        if self.proc.poll() is not None:
            raise AssertionError("powerwaked exited: %s" % self.logs())
        try:
            self.get("/v1/status")
            return True
        except AssertionError:
            return False

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.log.close()

    def logs(self):
        with open(os.path.join(self.dir, "powerwaked.log"), encoding="utf-8", errors="replace") as handle:
            return handle.read()[-4000:]

    def get(self, path):
        script = API_GET % {"engine": ENGINE, "secret": SECRET, "port": self.port}
        proc = self.lab.ctl([PYTHON, "-c", script, path], check=False)
        if proc.returncode != 0:
            raise AssertionError("API %s failed: %s" % (path, proc.stderr[-500:]))
        return json.loads(proc.stdout)

    def post(self, path, message):
        """POST a signed request to the API: {"status": HTTP status (200 for any 2xx), "answer": the JSON}."""
        script = API_POST % {"engine": ENGINE, "secret": SECRET, "port": self.port}
        return json.loads(self.lab.ctl([PYTHON, "-c", script, path, json.dumps(message)]).stdout)

    def report(self, *reports):
        script = SEND_REPORT % {"engine": ENGINE, "secret": SECRET, "port": self.port}
        self.lab.ctl([PYTHON, "-c", script, json.dumps(list(reports))])

    def host(self, name):
        return self.get("/v1/hosts/" + name)


@pytest.fixture
def powerwaked(lab_reset):
    # The test plays the hosts' engines: a real one left running by an earlier test (file) would act beside it.
    running = [
        h["name"]
        for h in lab_reset.hosts
        if lab_reset.exec(h["name"], "systemctl is-active powernapd", check=False).stdout.strip() == "active"
    ]
    assert not running, "powernapd runs on %s: an earlier test left its engine running" % ", ".join(running)
    servers = []

    def make(extra="", proxy=()):
        server = Powerwaked(lab_reset, extra, proxy)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
        print("powerwaked log (last 4000 characters):\n" + server.logs())  # pytest shows it when the test fails
        shutil.rmtree(server.dir, ignore_errors=True)  # it holds the BMC passwords


class Capture:
    """tcpdump of magic packets (UDP 9 and ethertype 0x0842) on the controller's LAN interface.

    ``bridge=True``: on the lab's LAN bridge itself (in its switch namespace), where every frame of the segment
    passes, whoever sent it.
    """

    def __init__(self, lab, bridge=False):
        fd, self.path = tempfile.mkstemp(prefix="pw-capture-", suffix=".txt")
        self.out = os.fdopen(fd, "wb")  # closed in stop()
        # on the bridge: in the switch namespace; waits until tcpdump captures (a fixed sleep could miss the
        # first packets on a loaded machine)
        netns, interface = ("%s-sw" % lab.name, "%s-lan" % lab.name) if bridge else (None, "eth0")
        self.proc = lab.tcpdump(
            ["-l", "-n", "-e", "-x", "-i", interface, "ether proto 0x0842 or udp port 9"], self.out, netns=netns
        )

    def stop(self):
        time.sleep(0.5)
        LabHandle.stop_tcpdump(self.proc)
        self.out.close()
        with open(self.path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        os.unlink(self.path)
        return text

    @staticmethod
    def count(text, mac):
        """Magic packets for ``mac`` in tcpdump -x output (three MAC copies in one packet's hex)."""
        compact = mac.replace(":", "").lower()
        return sum(1 for block in _packets(text) if compact * 3 in block)


def _packets(text):
    blocks, current = [], []
    for line in text.splitlines():
        if line and not line.startswith("\t") and not line.startswith(" "):
            if current:
                blocks.append("".join(current))
            current = []
        else:
            current.append("".join(line.split(":", 1)[-1].split()))
    if current:
        blocks.append("".join(current))
    return blocks


def power_events(lab, host, since):
    return [e for e in lab.events(host=host, event="power") if e["t"] >= since]


# argv: ADDRESS [SECONDS CONNECT_TIMEOUT PAUSE] (90, 5 and 1 unless given)
CONNECT_WITH_RETRIES = r"""
import socket, sys, time
seconds, connect_timeout, pause = (float(a) for a in (sys.argv[2:5] or (90, 5, 1)))
deadline = time.time() + seconds
tries = 0
while time.time() < deadline:
    tries += 1
    s = socket.socket(); s.settimeout(connect_timeout)
    try:
        s.connect((sys.argv[1], 22)); print("connected after %d tries" % tries); sys.exit(0)
    except OSError as e:
        time.sleep(pause)
    finally:
        s.close()
print("gave up after %d tries" % tries); sys.exit(1)
"""


def test_proxy_wakes_a_suspended_host_for_ssh_exactly_once(lab, powerwaked):
    server = powerwaked()
    h2 = lab.host("h2")
    # As an engine does: it reports the suspend, then suspends (an unreported static host is woken on any
    # who-has, so the report comes first).
    server.report(
        {"host": "h2", "state": "suspending", "event": "action-start", "macs": [h2["mac"]], "ips": [h2["address"]]}
    )
    lab.power("h2", "suspend")
    assert server.host("h2")["state"] == "suspending"
    since = time.time()
    capture = Capture(lab)
    try:
        proc = lab.exec("h1", [PYTHON, "-c", CONNECT_WITH_RETRIES, h2["address"]], timeout=120)
    finally:
        text = capture.stop()
    assert "connected" in proc.stdout
    wakes = [e for e in power_events(lab, "h2", since) if e.get("cause") == "wol"]
    assert len(wakes) == 1, wakes
    assert Capture.count(text, h2["mac"]) == 1, text[-2000:]
    history = [e for e in server.get("/v1/history")["history"] if e["host"] == "h2" and e["what"] == "wake"]
    assert len(history) == 1 and "who-has %s" % h2["address"] in history[0]["cause"]


GARP = r"""
import socket, struct, sys
mac = bytes.fromhex(sys.argv[1].replace(":", ""))
sender_ip, target_ip = socket.inet_aton(sys.argv[2]), socket.inet_aton(sys.argv[3])
frame = b"\xff" * 6 + mac + struct.pack("!H", 0x0806) + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
frame += mac + sender_ip + b"\0" * 6 + target_ip
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[4], 0))
for _ in range(3):
    s.send(frame)
"""


def test_gratuitous_arp_probes_and_the_gateway_do_not_wake(lab, powerwaked):
    h1, h2, h3 = lab.host("h1"), lab.host("h2"), lab.host("h3")
    for host in ("h1", "h2", "h3"):
        # Only this test's frames may reach the proxy: no engine an earlier test deployed, no stale neighbour
        # entry whose re-validation would ask for h2 (a real who-has, which the proxy must answer by a wake).
        lab.exec(host, "systemctl stop powernapd 2>/dev/null; ip neigh flush all", check=False)
    server = powerwaked(proxy=["ignore_macs = %s" % h3["mac"]])  # h3 plays the gateway
    server.report({"host": "h2", "state": "suspending", "event": "action-start"})  # report, then suspend
    lab.power("h2", "suspend")
    iface = lab.exec("h1", "ip -o link show | awk -F': ' '$2 != \"lo\" {print $2; exit}'").stdout.strip()
    iface = iface.split("@")[0]
    lab.exec("h1", [PYTHON, "-c", GARP, h1["mac"], h2["address"], h2["address"], iface])  # gratuitous
    lab.exec("h1", [PYTHON, "-c", GARP, h1["mac"], "0.0.0.0", h2["address"], iface])  # probe
    iface3 = lab.exec("h3", "ip -o link show | awk -F': ' '$2 != \"lo\" {print $2; exit}'").stdout.strip()
    lab.exec("h3", [PYTHON, "-c", GARP, h3["mac"], h3["address"], h2["address"], iface3.split("@")[0]])
    lab.stays("h2", "suspended", seconds=5)
    counts = server.get("/v1/status")["proxy"]
    assert counts.get("gratuitous", 0) >= 3 and counts.get("probe", 0) >= 3 and counts.get("ignored-mac", 0) >= 3
    assert counts.get("woke", 0) == 0


def test_restart_keeps_every_host(lab, powerwaked):
    server = powerwaked()
    server.report(
        {"host": "h1", "state": "awake", "event": "start"},
        {"host": "h3", "state": "napping", "event": "powersave-apply", "stage": 1},
    )
    before = {h["name"]: h for h in server.get("/v1/hosts")["hosts"]}
    server.stop()
    server.start()
    after = {h["name"]: h for h in server.get("/v1/hosts")["hosts"]}
    assert sorted(after) == sorted(before) == ["h1", "h2", "h3"]
    assert after["h1"]["state"] == "awake" and after["h3"]["state"] == "napping" and after["h3"]["stage"] == 1


def test_ups_on_battery_sheds_two_groups_in_order_and_brings_them_back(lab, powerwaked):
    ups = lab.ups
    lab.set_ups("OL")
    # step: on battery the policy sheds the next group one step after the first by itself; the step must
    # outlast h3's soft-off and the LB change below, or h1 is shed before the test checks that it is still on.
    server = powerwaked(
        "[group.webservers]\nhosts = h1, h2\nnap_action = poweroff\n[group.fileservers]\nhosts = h3\n"
        "nap_action = poweroff\n[ups.rack1]\nups = %s\nhost = %s\nport = %d\nusername = %s\n"
        "password = %s\ngroups = fileservers, webservers\naction = poweroff\nafter = 3s\nstep = 30s\n"
        "resume_charge = 0\npoll = 1s\n" % (ups["name"], ups["host"], ups["port"], ups["user"], ups["password"])
    )
    server.report(*({"host": h, "state": "awake", "event": "start"} for h in ("h1", "h2", "h3")))
    try:
        since = time.time()
        lab.set_ups("OB")
        lab.wait_power("h3", "off", timeout=40)
        assert lab.power_state("h1") == "on"
        lab.set_ups("OB LB")
        lab.wait_power("h1", "off", timeout=40)
        lab.wait_power("h2", "off", timeout=40)
        lab.set_ups("OL")
        lab.wait_power("h1", "on", timeout=90)
        lab.wait_power("h2", "on", timeout=90)
        lab.wait_power("h3", "on", timeout=90)
    finally:
        lab.set_ups("OL")  # never leave the UPS on battery for the tests after this one
    offs = {h: min(e["t"] for e in power_events(lab, h, since) if e.get("to") == "off") for h in ("h1", "h3")}
    ons = {h: min(e["t"] for e in power_events(lab, h, since) if e.get("to") == "on") for h in ("h1", "h3")}
    assert offs["h3"] < offs["h1"]  # least important first
    assert ons["h1"] < ons["h3"]  # back in reverse order


def test_schedule_wakes_a_host_at_its_time(lab, powerwaked):
    # Suspend before the server starts, then report: a wake time falling while h3 is still up (unknown to a
    # fresh server, or reported suspending) would send its WoL to a host still up, and the next try (a
    # failed-wake retry) comes after this test's deadline.
    since = time.time()
    lab.power("h3", "suspend")
    server = powerwaked(
        "[group.fileservers]\nhosts = h3\n[schedule.quick]\ngroups = fileservers\nwake = *-*-* *:*:0/20\n"
    )
    server.report({"host": "h3", "state": "suspending", "event": "action-start"})
    lab.wait_power("h3", "on", timeout=60)
    causes = [e.get("cause") for e in power_events(lab, "h3", since)]
    assert "wol" in causes
    assert any("schedule quick" in e["cause"] for e in server.get("/v1/history")["history"] if e["what"] == "wake")


LOAD_SERVER = r"""
import http.server, sys
path = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = open(path).read().encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", 8099), H).serve_forever()
"""


def test_cluster_naps_one_of_three_under_low_load_and_wakes_it_on_demand(lab, powerwaked):
    fd, load_file = tempfile.mkstemp(prefix="pw-load-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("1\n")
    loader = subprocess.Popen(["ip", "netns", "exec", "%s-ctl" % lab.name, PYTHON, "-c", LOAD_SERVER, load_file])
    try:
        server = powerwaked(
            "[group.web]\nhosts = h1, h2, h3\nnap_action = poweroff\n[cluster.web]\ngroup = web\nmin_awake = 2\n"
            "capacity = 10\nsource = url\nurl = http://127.0.0.1:8099/\nlow_for = 3s\nstep = 1h\n"
        )
        server.report(*({"host": h, "state": "awake", "event": "start"} for h in ("h1", "h2", "h3")))
        lab.wait_for(
            lambda: sum(lab.power_state(h) == "off" for h in ("h1", "h2", "h3")) == 1, 60, "one web host powered off"
        )
        napped = next(h for h in ("h1", "h2", "h3") if lab.power_state(h) == "off")
        lab.stays(napped, "off", seconds=3)
        assert sum(lab.power_state(h) == "on" for h in ("h1", "h2", "h3")) == 2  # never below min_awake
        with open(load_file, "w", encoding="utf-8") as handle:
            handle.write("25\n")  # needs 3 hosts
        lab.wait_power(napped, "on", timeout=90)
    finally:
        loader.send_signal(signal.SIGTERM)
        loader.wait(timeout=10)
        os.unlink(load_file)
