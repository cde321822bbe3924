"""powerwaked store benchmark (issue 18): report ingest through a real daemon, per store.

A real powerwaked on 127.0.0.1 (loopback only) gets signed reports from 2,000 simulated hosts, with
up to 64 in flight; a report counts once its ack arrives, and the server acks only after the store
transaction that journals it is durable.  Per store: acknowledged reports per second, p50/p99 time
from send to ack, server CPU per 1,000 reports, and the store's size.

Stores: SQLite (the default) and PostgreSQL (a private cluster, unix socket only, as the tests start
it; skipped with a note when PostgreSQL or psycopg is missing).  ``POWERWAKED_ENGINE=DIR`` runs the
same load against another engine tree (e.g. ``git archive`` of a release with the JSON store) for a
before/after figure; the store rows then carry that tree's default.

Prints one JSON object per figure (benchmarks/run.py makes the table).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE = os.environ.get("POWERWAKED_ENGINE") or os.path.join(REPO, "engine")
sys.path.insert(0, ENGINE)
sys.path.insert(0, os.path.join(REPO, "engine", "tests"))  # pg_cluster: the tests' private cluster

from powernap.fleet_keys import host_key  # noqa: E402
from powernap.server import protocol as P  # noqa: E402

SECRET = "benchmark-fleet-secret-0123456789"
HOSTS = 2000
SECONDS = float(os.environ.get("BENCH_STORE_SECONDS", "10"))
WINDOW = 64
TICKS = os.sysconf("SC_CLK_TCK")


def emit(store, metric, value, unit):
    print(json.dumps({"bench": "store", "metric": "%s: %s" % (store, metric), "value": value, "unit": unit}),
          flush=True)  # fmt: skip


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        return udp.getsockname()[1]


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid, encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def run(label, directory, store_line):
    port = free_port()
    config = os.path.join(directory, "powerwaked.conf")
    with open(config, "w", encoding="utf-8") as handle:
        handle.write(
            "[powerwaked]\nsecret = %s\nlisten = 127.0.0.1\nport = %d\nannounce = no\nstate_file = %s\n%s"
            "max_hosts = %d\n" % (SECRET, port, os.path.join(directory, "registry.json"), store_line, HOSTS + 10)
        )
    os.chmod(config, 0o600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "powernap.server.daemon", "--config", config, "--log-level", "warning"],
        cwd=ENGINE, env=dict(os.environ, PYTHONPATH=ENGINE),
    )  # fmt: skip
    try:
        time.sleep(1.5)
        if proc.poll() is not None:
            raise RuntimeError("powerwaked did not start")
        keys = {"h%04d" % i: host_key(SECRET, "h%04d" % i).encode() for i in range(HOSTS)}
        names = sorted(keys)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(1.0)
        in_flight = {}
        latencies = []
        counter = 0
        cpu_before = cpu_seconds(proc.pid)
        start = time.perf_counter()
        end = start + SECONDS
        while time.perf_counter() < end:
            while len(in_flight) < WINDOW:
                counter += 1
                name = names[counter % HOSTS]
                message = {"v": 1, "kind": "report", "from": name, "host": name, "state": "awake",
                           "event": "heartbeat", "ts": time.time(), "nonce": "%016x" % counter, "interval": 30.0,
                           "load": 0.1 * (counter % 10), "idle_seconds": float(counter % 600)}  # fmt: skip
                in_flight[message["nonce"]] = time.perf_counter()
                sock.sendto(P.encode(keys[name], message), ("127.0.0.1", port))
            try:
                reply = sock.recv(P.MAX_MESSAGE)
            except TimeoutError:
                in_flight.clear()  # lost (a full receive buffer): sent again with a new nonce
                continue
            sent = in_flight.pop(json.loads(reply.split(b" ", 2)[2]).get("re"), None)
            if sent is not None:
                latencies.append(time.perf_counter() - sent)
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(proc.pid) - cpu_before
        sock.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    latencies.sort()
    acked = len(latencies)
    emit(label, "acknowledged reports", round(acked / elapsed), "/s")
    if acked:
        emit(label, "send to ack p50", round(latencies[acked // 2] * 1000, 2), "ms")
        emit(label, "send to ack p99", round(latencies[int(acked * 0.99)] * 1000, 2), "ms")
        emit(label, "server CPU per 1000 reports", round(cpu / acked * 1000, 3), "s")
    return acked


def main():
    directory = tempfile.mkdtemp(prefix="powernap-bench-store-")
    try:
        os.mkdir(os.path.join(directory, "sqlite"))
        run("default store", os.path.join(directory, "sqlite"), "")
        size = sum(
            os.path.getsize(os.path.join(directory, "sqlite", f))
            for f in os.listdir(os.path.join(directory, "sqlite"))
            if f.startswith("registry")
        )
        emit("default store", "size for %d hosts" % HOSTS, round(size / 1024), "KiB")
        if os.environ.get("POWERWAKED_ENGINE"):
            return 0
        try:
            import pg_cluster
            import psycopg  # noqa: F401
        except ImportError:
            print("PostgreSQL rows skipped: psycopg is not installed", flush=True)
            return 0
        bindir = pg_cluster.binaries()
        if bindir is None:
            print("PostgreSQL rows skipped: PostgreSQL is not installed", flush=True)
            return 0
        cluster = pg_cluster.PrivateCluster(bindir).start()
        try:
            url = cluster.create_database("bench")
            os.mkdir(os.path.join(directory, "pg"))
            run("postgresql", os.path.join(directory, "pg"), "store = %s\n" % url)
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
