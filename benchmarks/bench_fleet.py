"""powerwaked fleet mode at datacenter scale (issue 18): 100,000 hosts, 10 segments, 10 instances, one PostgreSQL.

Everything on loopback: a private PostgreSQL cluster (unix socket only, as the tests start it) and ten
real powerwaked processes on 127.0.0.1, instance ``fleet-N`` on segment ``segN``.  A separate generator
process sends every simulated host's signed report to its segment's instance every 30 s (100,000 hosts:
about 3,333 reports a second in all).  Each instance sends its segment's magic packets as UDP to
127.0.0.1 on a port of its own, where this script listens: a packet arriving on another segment's port
is a packet on the wrong segment.

After one full report cycle (every host registered), while the generator goes on (at least one more cycle):

- **instance CPU**: each instance's process time over the cycle (mean and busiest, % of one core);
- **UDP drops**: datagrams the kernel dropped for a full receive buffer (``/proc/net/snmp``), over the run
  and while measuring, with the number of host rows in the database: a host no instance knows and without
  a row never reached its leader (its reports were dropped); one with a row was not mirrored;
- **database CPU and size**: every process of the PostgreSQL cluster over the cycle, and
  ``pg_database_size`` at the end;
- **report -> visible elsewhere**: a report of a sampled host (kept out of the generator) carrying a
  marker, sent to its own segment's instance as an engine sends it (again, with a fresh nonce, while no
  ack came: ``REPORT_TRIES`` times within the engine's default ``[server] timeout``; how many needed it is
  shown), until the marker shows through the API of the next segment's instance (polled every 10 ms),
  p50/p99 from the first send;
- **wake -> magic packet**: a wake of a sampled sleeping host asked through the API of another segment's
  instance, until its magic packet arrives on its own segment's port, p50/p99; packets on any other
  segment's port are counted (must be 0).

Checks (``ok``): every instance knows all 100,000 hosts after the cycle; every sampled report becomes
visible and every sampled wake sends its packet within 30 s; no packet on a wrong segment.  Latency and
CPU are figures, not targets (the issue asks for the measurement; the machine's 2 cores run the
generator, the ten instances and PostgreSQL at once).  Smaller runs: ``BENCH_FLEET_HOSTS``,
``BENCH_FLEET_SEGMENTS``.  Run alone: ``BENCH=fleet make bench`` (needs PostgreSQL and psycopg, as the
tests do).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE = os.path.join(REPO, "engine")
sys.path.insert(0, ENGINE)
sys.path.insert(0, os.path.join(ENGINE, "tests"))  # pg_cluster: the tests' private cluster

from powernap.config import ServerSection  # noqa: E402
from powernap.fleet_keys import host_key  # noqa: E402
from powernap.powerwake import ServerClient  # noqa: E402
from powernap.server import protocol as P  # noqa: E402

SECRET = "benchmark-fleet-secret-0123456789"
HOSTS = int(os.environ.get("BENCH_FLEET_HOSTS", "100000"))
SEGMENTS = int(os.environ.get("BENCH_FLEET_SEGMENTS", "10"))
PERIOD = 30.0  # every host reports every 30 s
SAMPLES = 100  # sampled reports and sampled wakes each
DEADLINE = 30.0  # a sampled report or wake that takes longer counts as lost
REPORT_TIMEOUT = ServerSection.option("timeout").default  # an engine's [server] timeout: its report's ack waits
# The generator reports until the measurement ends (it is stopped then): the load is on while the samples are taken,
# however long they take.  This many cycles at most, so that it ends on its own should the benchmark die.
GENERATOR_CYCLES = 60
TICKS = os.sysconf("SC_CLK_TCK")


def emit(metric, value, unit, target=None, ok=None):
    row = {"bench": "fleet", "metric": metric, "value": value, "unit": unit}
    if target is not None:
        row["target"] = target
    if ok is not None:
        row["ok"] = ok
    print(json.dumps(row), flush=True)


def free_ports(count):
    sockets = []
    try:
        for _index in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def host_name(index):
    return "f%06d" % index


def host_mac(index):
    return "52:54:%02x:%02x:%02x:%02x" % (index >> 24 & 255, index >> 16 & 255, index >> 8 & 255, index & 255)


def host_ip(segment, index):
    return "10.%d.%d.%d" % (100 + segment, index >> 8 & 255, index & 255)


def segment_of(index):
    return index % SEGMENTS


def cpu_seconds(pid):
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def process_tree(root):
    """``root`` and its children (PostgreSQL's backends are the postmaster's children)."""
    pids = [root]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry, encoding="ascii") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == root:
                pids.append(int(entry))
    return pids


def report(name, index, state="awake", idle=10.0, event="heartbeat"):
    segment = segment_of(index)
    return {
        "v": 1,
        "kind": "report",
        "from": name,
        "host": name,
        "state": state,
        "event": event,
        "ts": time.time(),
        "nonce": os.urandom(8).hex(),
        "interval": PERIOD,
        "macs": [host_mac(index)],
        "ips": [host_ip(segment, index)],
        "load": 0.1,
        "idle_seconds": idle,
    }


GENERATOR = r"""
import json, os, socket, sys, time
sys.path.insert(0, %(engine)r)
from powernap.fleet_keys import host_key
from powernap.server import protocol as P
sys.path.insert(0, %(bench)r)
import bench_fleet as B
ports, skip, cycles = json.loads(sys.argv[1]), set(json.loads(sys.argv[2])), int(sys.argv[3])
names = [(i, B.host_name(i)) for i in range(B.HOSTS) if i not in skip]
keys = {n: host_key(B.SECRET, n).encode() for _i, n in names}
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setblocking(False)
start = time.monotonic()
sent = 0
total = len(names) * cycles  # an upper bound: the benchmark stops it once it has measured
while sent < total:
    due = min(total, int((time.monotonic() - start) / B.PERIOD * len(names)) + 1)
    while sent < due:
        index, name = names[sent %% len(names)]
        message = B.report(name, index)
        try:
            sock.sendto(P.encode(keys[name], message), ("127.0.0.1", ports[B.segment_of(index)]))
        except BlockingIOError:
            pass
        sent += 1
    try:
        while True:
            sock.recv(4096)  # acks, not waited for: the engine's own reporter does not wait either
    except BlockingIOError:
        pass
    time.sleep(0.002)
print(json.dumps({"sent": sent}), flush=True)
"""


class PacketListener:
    """One UDP socket per segment on 127.0.0.1: which MACs' magic packets arrived on which segment, and when."""

    def __init__(self, ports):
        self.socks = []
        for port in ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", port))
            sock.settimeout(0.2)
            self.socks.append(sock)
        self.seen = {}  # (segment, mac) -> first arrival (perf_counter)
        self.lock = threading.Lock()
        self.stopping = False
        self.threads = [threading.Thread(target=self._run, args=(seg,), daemon=True) for seg in range(len(ports))]
        for thread in self.threads:
            thread.start()

    def _run(self, segment):
        sock = self.socks[segment]
        while not self.stopping:
            try:
                data = sock.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(data) >= 102 and data[:6] == b"\xff" * 6:
                mac = data[6:12].hex(":")
                with self.lock:
                    self.seen.setdefault((segment, mac), time.perf_counter())

    def first(self, segment, mac):
        with self.lock:
            return self.seen.get((segment, mac))

    def wrong(self, expected):
        """Packets for the sampled MACs that arrived on a segment other than their own."""
        with self.lock:
            return sum(1 for (seg, mac) in self.seen if mac in expected and expected[mac] != seg)

    def stop(self):
        self.stopping = True
        for thread in self.threads:
            thread.join(timeout=2)
        for sock in self.socks:
            sock.close()


def write_config(directory, segment, port, wol_port, url):
    config = os.path.join(directory, "fleet-%d.conf" % segment)
    lines = [
        "[powerwaked]",
        "secret = %s" % SECRET,
        "listen = 127.0.0.1",
        "port = %d" % port,
        "announce = no",
        "store = %s" % url,
        "state_file = %s" % os.path.join(directory, "registry-%d.json" % segment),
        "instance = fleet-%d" % segment,
        "segment = seg%d" % segment,
        "max_hosts = %d" % min(HOSTS + 100, 100000),  # the option's maximum: the fleet's hosts, every segment
        "broadcast = 127.0.0.1",
        "wol_port = %d" % wol_port,
        "wol_transport = udp",
        "confirm_timeout = 60s",
        "wake_rate = 100000",
        "[proxy]",
        "enabled = no",
    ]
    for other in range(SEGMENTS):
        lines += ["[segment.seg%d]" % other, "subnets = 10.%d.0.0/16" % (100 + other)]
    with open(config, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    os.chmod(config, 0o600)
    return config


def start_instance(config, directory, segment):
    log = open(os.path.join(directory, "fleet-%d.log" % segment), "ab")  # noqa: SIM115 (closed by the caller)
    proc = subprocess.Popen(
        [sys.executable, "-m", "powernap.server.daemon", "--config", config, "--log-level", "warning"],
        cwd=ENGINE,
        env=dict(os.environ, PYTHONPATH=ENGINE),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, log


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_api(client, proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("a powerwaked instance exited at start (see its log)")
        try:
            return client.get("/v1/status")
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("a powerwaked instance's API did not answer within %ds" % timeout)


def udp_receive_drops():
    """Datagrams the kernel dropped since boot because a socket's receive buffer was full (this network
    namespace's UDP RcvbufErrors: every socket's, but the benchmark's sockets are the busy ones)."""
    try:
        with open("/proc/net/snmp", encoding="ascii") as handle:
            lines = [line.split() for line in handle if line.startswith("Udp:")]
        return int(lines[1][lines[0].index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        return 0


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else None


def sample_reports(clients, ports, samples):
    """Report -> visible through the next segment's instance: seconds per sampled host (None: never), from the first
    send.  Each sampled report is sent as an engine sends it (``FleetReporter._send``): it waits for the instance's
    ack ``timeout / REPORT_TRIES`` and sends it again with a fresh nonce, REPORT_TRIES times at most; how many needed
    another try is a figure of its own."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    results, retried = [], 0
    for number, index in enumerate(samples):
        name, segment = host_name(index), segment_of(index)
        marker = 1000.0 + number  # an idle time no generated report carries
        reader = clients[(segment + 1) % SEGMENTS]
        sent = time.perf_counter()
        nonces, next_try, acked, seen = set(), sent, False, None
        while time.perf_counter() - sent < DEADLINE:
            now = time.perf_counter()
            if not acked and len(nonces) < P.REPORT_TRIES and now >= next_try:
                message = report(name, index, idle=marker)
                nonces.add(message["nonce"])
                sock.sendto(P.encode(host_key(SECRET, name).encode(), message), ("127.0.0.1", ports[segment]))
                next_try = now + REPORT_TIMEOUT / P.REPORT_TRIES
            acked = acked or _acked(sock, nonces)
            try:
                record = reader.get("/v1/hosts/" + name)
            except OSError:
                record = None
            if record and record.get("idle_seconds") == marker:
                seen = time.perf_counter() - sent
                break
            time.sleep(0.01)
        retried += len(nonces) > 1
        results.append(seen)
    sock.close()
    return results, retried


def _acked(sock, nonces):
    """Whether an ack of one of ``nonces`` has come (the acks waiting on ``sock`` are read; not verified: a bench)."""
    while True:
        try:
            data = sock.recv(P.MAX_MESSAGE)
        except BlockingIOError:
            return False
        try:
            if json.loads(data.split(b" ", 2)[2]).get("re") in nonces:
                return True
        except (IndexError, ValueError, AttributeError):
            continue


def sample_wakes(clients, ports, listener, samples):
    """A wake asked at another segment's instance -> the packet on the host's own segment: seconds each."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    for index in samples:  # asleep first, as an engine reports before it suspends
        name = host_name(index)
        message = report(name, index, state="suspending", event="action-start")
        sock.sendto(P.encode(host_key(SECRET, name).encode(), message), ("127.0.0.1", ports[segment_of(index)]))
    sock.close()
    deadline = time.monotonic() + DEADLINE
    for index in samples:  # every instance sees them asleep before a wake is asked
        while time.monotonic() < deadline:
            try:
                record = clients[(segment_of(index) + 1) % SEGMENTS].get("/v1/hosts/" + host_name(index))
            except OSError:
                record = None
            if record and record.get("state") == "suspending":
                break
            time.sleep(0.05)
    results = []
    for index in samples:
        name, segment, mac = host_name(index), segment_of(index), host_mac(index)
        asked = time.perf_counter()
        try:
            clients[(segment + 1) % SEGMENTS].post("/v1/wake", {"host": name, "method": "wol"})
        except OSError as exc:
            print("wake of %s refused: %s" % (name, exc), flush=True)
            results.append(None)
            continue
        arrived = None
        while time.perf_counter() - asked < DEADLINE:
            arrived = listener.first(segment, mac)
            if arrived is not None:
                break
            time.sleep(0.005)
        results.append(None if arrived is None else arrived - asked)
    return results


def main():
    try:
        import pg_cluster
        import psycopg
    except ImportError:
        print("bench_fleet needs psycopg (requirements/dev.txt)", file=sys.stderr)
        return 2
    bindir = pg_cluster.binaries()
    if bindir is None:
        print("bench_fleet needs PostgreSQL (tools/system-packages.txt)", file=sys.stderr)
        return 2
    directory = tempfile.mkdtemp(prefix="powernap-bench-fleet-")
    cluster = pg_cluster.PrivateCluster(bindir).start()
    drops_before = udp_receive_drops()
    procs, logs, listener, generator = [], [], None, None
    finished = False
    try:
        url = cluster.create_database("fleet")
        ports = free_ports(2 * SEGMENTS)
        api_ports, wol_ports = ports[:SEGMENTS], ports[SEGMENTS:]
        listener = PacketListener(wol_ports)
        for segment in range(SEGMENTS):
            config = write_config(directory, segment, api_ports[segment], wol_ports[segment], url)
            proc, log = start_instance(config, directory, segment)
            procs.append(proc)
            logs.append(log)
        clients = [ServerClient("http://127.0.0.1:%d" % port, SECRET, timeout=10) for port in api_ports]
        for client, proc in zip(clients, procs, strict=True):
            wait_api(client, proc)
        step = max(1, HOSTS // (2 * SAMPLES))
        spread = max(1, min(SEGMENTS, step - 1))  # sampled hosts on every segment, not only where step lands
        report_samples = [i + n % spread for n, i in enumerate(range(0, HOSTS - 1, step))][:SAMPLES]
        wake_samples = [i + 1 for i in report_samples if i + 1 < HOSTS][:SAMPLES]
        skip = report_samples + wake_samples
        generator = subprocess.Popen(
            [sys.executable, "-c", GENERATOR % {"engine": ENGINE, "bench": os.path.dirname(os.path.abspath(__file__))},
             json.dumps(api_ports), json.dumps(skip), str(GENERATOR_CYCLES)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        warm = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the sampled hosts register once too
        for index in skip:
            name = host_name(index)
            warm.sendto(
                P.encode(host_key(SECRET, name).encode(), report(name, index)),
                ("127.0.0.1", api_ports[segment_of(index)]),
            )
        warm.close()
        time.sleep(PERIOD + 2.0)  # the first cycle: every host registers
        db_root = cluster.pid
        cpu_before = [cpu_seconds(p.pid) for p in procs]
        drops_cycle = udp_receive_drops()
        db_pids = process_tree(db_root)
        db_before = sum(cpu_seconds(pid) for pid in db_pids)
        started = time.monotonic()
        visible, retried = sample_reports(clients, api_ports, report_samples)
        wakes = sample_wakes(clients, api_ports, listener, wake_samples)
        left = PERIOD - (time.monotonic() - started)
        if left > 0:
            time.sleep(left)
        elapsed = time.monotonic() - started
        cpu = [cpu_seconds(p.pid) - before for p, before in zip(procs, cpu_before, strict=True)]
        db_cpu = sum(cpu_seconds(pid) for pid in process_tree(db_root)) - db_before
        with psycopg.connect(url) as conn:
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        known = [c.get("/v1/status").get("hosts") for c in clients]
        drops = udp_receive_drops() - drops_before
        drops_cycle = drops_before + drops - drops_cycle  # those while the samples were taken
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT count(*) FROM powerwaked_hosts").fetchone()[0]
        alive = sum(1 for p in procs if p.poll() is None)
        finished = True
    finally:
        if generator is not None:
            stop(generator)
        for proc in procs:
            stop(proc)
        for log in logs:
            log.close()
        if listener is not None:
            listener.stop()
        cluster.stop()
        if not finished:
            for segment in range(len(logs)):
                with open(os.path.join(directory, "fleet-%d.log" % segment), encoding="utf-8", errors="replace") as f:
                    print("fleet-%d log (last lines):\n%s" % (segment, "".join(f.readlines()[-5:])), file=sys.stderr)
        shutil.rmtree(directory, ignore_errors=True)  # it holds the fleet secret
    expected = {host_mac(i): segment_of(i) for i in wake_samples}
    wrong = listener.wrong(expected)
    shown = [v for v in visible if v is not None]
    woken = [v for v in wakes if v is not None]
    emit("instances still running at the end", alive, "of %d" % SEGMENTS, target=str(SEGMENTS), ok=alive == SEGMENTS)
    emit("hosts known by every instance", min(known), "hosts", target=str(HOSTS), ok=min(known) == HOSTS)
    # Where a host is missing: no row at all (its reports never reached its segment's leader: see the drops),
    # or a row the mirror has not taken in.
    emit("hosts known by the best instance", max(known), "hosts")
    emit("host rows in the database", rows, "rows")
    emit("UDP datagrams dropped, receive buffers full (whole run)", drops, "datagrams")
    emit("UDP datagrams dropped, receive buffers full (measured)", drops_cycle, "datagrams")
    emit("instance CPU, mean", round(100.0 * sum(cpu) / len(cpu) / elapsed, 1), "% of one core")
    emit("instance CPU, busiest", round(100.0 * max(cpu) / elapsed, 1), "% of one core")
    emit("database CPU", round(100.0 * db_cpu / elapsed, 1), "% of one core")
    emit("database size", round(size / 1048576.0, 1), "MiB")
    emit("sampled reports never visible elsewhere", len(visible) - len(shown), "reports", target="0",
         ok=len(shown) == len(visible))  # fmt: skip
    emit("sampled reports sent again (no ack within timeout / %d, as an engine does)" % P.REPORT_TRIES, retried,
         "reports")  # fmt: skip
    if shown:
        emit("report -> visible at another instance p50", round(percentile(shown, 0.5) * 1000), "ms")
        emit("report -> visible at another instance p99", round(percentile(shown, 0.99) * 1000), "ms")
    emit("sampled wakes without a packet", len(wakes) - len(woken), "wakes", target="0", ok=len(woken) == len(wakes))
    if woken:
        emit("wake asked elsewhere -> packet on its segment p50", round(percentile(woken, 0.5) * 1000), "ms")
        emit("wake asked elsewhere -> packet on its segment p99", round(percentile(woken, 0.99) * 1000), "ms")
    emit("magic packets on a wrong segment", wrong, "packets", target="0", ok=wrong == 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
