"""Fleet mode when its PostgreSQL stops answering (issue 18): a dead database must cost the leads, never the daemon.

A database host that vanishes (or a network that starts dropping packets) sends no RST: without bounds of its
own, a client waits for TCP's retransmissions, some fifteen minutes, in whatever statement it was running, and
powerwaked's loop with it (no reports taken, no API).  Here the database really goes silent: a private
PostgreSQL cluster listens on TCP in a network namespace of its own (``NAME-db``), linked by a veth pair to
the namespace powerwaked runs in (``NAME-ctl``); the test takes the database's end of the link down, so every
packet to it is dropped and nothing answers.  Only these two namespaces, made and removed by the test, carry
any of this traffic.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from .conftest import LabHandle, require_root
from .test_powerwaked import ENGINE, PYTHON, SECRET, Powerwaked

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "engine", "tests"))
from pg_cluster import PrivateCluster, binaries  # the engine's tests are not a package

pytestmark = pytest.mark.lab

NAME = (os.environ.get("POWERNAP_LAB_TEST_NAME") or "itest")[:7] + "z"  # its own namespaces, not a lab's
DB_ADDRESS, SERVER_ADDRESS = "198.18.250.1", "198.18.250.2"  # a /30 between the two namespaces only
LEAD_POLL = 1.0
# The store's DEAD_PEER (8 s: tcp_user_timeout, or keepalives 5 + 3 x 1 s), a lead poll, and a few seconds of slack.
DETECT_BOUND = 8.0 + LEAD_POLL + 6.0
ANSWER_BOUND = 3.0  # seconds: once the dead connection is given up, an API read waits on nothing
WATCH = 20.0  # seconds the API is watched while the database stays silent


class Namespaces:
    """The two namespaces, duck-typed as the lab that ``Powerwaked`` runs in (its ``NAME-ctl`` namespace)."""

    def __init__(self, name):
        self.name = name
        self.server_ns, self.db_ns = "%s-ctl" % name, "%s-db" % name
        self.broadcast = "198.18.250.3"
        self.hosts = []

    def up(self):
        for ns in (self.server_ns, self.db_ns):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        # eth0: the interface powerwaked's config names (its sleep proxy's); the peer is the database's.
        _ip("-n", self.server_ns, "link", "add", "eth0", "type", "veth", "peer", "name", "db0", "netns", self.db_ns)
        _ip("-n", self.server_ns, "addr", "add", SERVER_ADDRESS + "/30", "dev", "eth0")
        _ip("-n", self.db_ns, "addr", "add", DB_ADDRESS + "/30", "dev", "db0")
        _ip("-n", self.server_ns, "link", "set", "eth0", "up")
        _ip("-n", self.db_ns, "link", "set", "db0", "up")

    def down(self):
        for ns in (self.server_ns, self.db_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)

    def silence(self, silent):
        """The database's end of the link down (every packet to it dropped, no RST, no ICMP) or up again."""
        _ip("-n", self.db_ns, "link", "set", "db0", "down" if silent else "up")

    def ctl(self, argv, check=True, timeout=60):
        return subprocess.run(
            ["ip", "netns", "exec", self.server_ns] + list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    wait_for = LabHandle.wait_for  # uses nothing of the lab's: the same bounded poll


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def silent_db():
    require_root()
    bindir = binaries()
    if bindir is None:
        pytest.fail("PostgreSQL is not installed (tools/system-packages.txt: postgresql)", pytrace=False)
    namespaces = Namespaces(NAME)
    namespaces.down()  # what an interrupted earlier run may have left
    cluster = None
    try:
        namespaces.up()
        cluster = PrivateCluster(
            bindir, listen=DB_ADDRESS, netns=namespaces.db_ns, hba=["host all all %s/32 trust" % SERVER_ADDRESS]
        )
        cluster.start()
        subprocess.run(
            [os.path.join(bindir, "createdb"), "-h", cluster.socket_dir, "-U", cluster.user, "blackhole"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        yield namespaces, "postgresql://%s@%s:5432/blackhole" % (cluster.user, DB_ADDRESS)
    finally:
        if cluster is not None:
            namespaces.silence(False)  # a fast shutdown needs no client, but keep the link as it was made
            cluster.stop()
        namespaces.down()


# Reads /v1/status every half second for argv[1] seconds, in one process in the daemon's namespace (so the times are the
# API's, not a client's start-up): one JSON line per read, {"took": s, "status": ... or null}.
WATCH_STATUS = r"""
import json, sys, time
sys.path.insert(0, %(engine)r)
from powernap.powerwake import ServerClient
client = ServerClient("http://127.0.0.1:%(port)d", %(secret)r, timeout=30.0)
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    started = time.monotonic()
    try:
        status = client.get("/v1/status")
    except OSError:
        status = None
    print(json.dumps({"took": time.monotonic() - started, "status": status}), flush=True)
    time.sleep(0.5)
"""


def test_a_database_that_stops_answering_costs_the_lead_within_a_bound_never_the_api(silent_db):
    namespaces, store = silent_db
    options = ["store = %s" % store, "instance = seg-z-1", "segment = lan-z", "lead_poll = %gs" % LEAD_POLL]
    server = Powerwaked(namespaces, "[segment.lan-z]\nsubnets = 198.18.251.0/24\n", options=options, hosts=[])
    server.name = "seg-z-1"
    try:
        server.start()
        namespaces.wait_for(
            lambda: server.get("/v1/status")["fleet"]["segment_leader"], 15, "the instance to lead its segment"
        )
        namespaces.silence(True)
        silenced = time.monotonic()

        def lead_given_up():
            try:  # until the dead connection is given up, the loop may wait on it: no answer is no failure yet
                return not server.get("/v1/status")["fleet"]["segment_leader"]
            except (AssertionError, subprocess.TimeoutExpired):
                return False

        namespaces.wait_for(
            lead_given_up,
            DETECT_BOUND + ANSWER_BOUND,
            "the lead to be given up",
            interval=0.5,
        )
        detected = time.monotonic() - silenced
        # From now on the dead connection is given up: the API answers at once, however long the database is silent
        # (connections are made again on a thread of their own, and each one ends within the store's bound).
        script = WATCH_STATUS % {"engine": ENGINE, "secret": SECRET, "port": server.port}
        watched = namespaces.ctl([PYTHON, "-c", script, str(WATCH)], timeout=WATCH + 60).stdout
        reads = [json.loads(line) for line in watched.splitlines()]
        slowest = max(read["took"] for read in reads)
        figures = (detected, len(reads), slowest)
        print("lead given up %.1fs after the silence; slowest of %d API reads since: %.2fs" % figures)
        assert reads and all(read["status"] is not None for read in reads), "no API answer:\n" + server.logs()
        assert slowest <= ANSWER_BOUND, "an API read took %.1fs while the database was silent" % slowest
        assert not any(read["status"]["fleet"]["segment_leader"] for read in reads), "leads with a silent database"
        problems = [str(read["status"]["fleet"]["problem"] or read["status"]["registry"]["problems"]) for read in reads]
        assert any("PostgreSQL store" in problem for problem in problems), problems
        assert server.proc.poll() is None
        namespaces.silence(False)
        namespaces.wait_for(
            lambda: server.get("/v1/status")["fleet"]["segment_leader"], 30, "the lead to be taken again"
        )
    finally:
        server.stop()
        print("--- powerwaked log, last 4000 characters:\n%s" % server.logs())
        shutil.rmtree(server.dir, ignore_errors=True)


def test_the_namespaces_are_gone_after_the_test():
    """What the fixture made, it removed (a later run starts clean; nothing is left on the machine)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30, check=True).stdout
    assert not [line for line in listed.splitlines() if line.split()[0] in ("%s-ctl" % NAME, "%s-db" % NAME)]
