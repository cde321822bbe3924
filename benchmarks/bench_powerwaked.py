"""powerwaked benchmarks (root: network namespaces of our own, nothing leaves them).

1. Sleep proxy latency: ARP who-has -> first magic packet on the wire, p50/p99 (target p99 <= 10 ms).
   Two namespaces joined by a veth pair; powerwaked runs in one with the proxy on its veth and raw
   (0x0842) magic packets; the other sends who-has for 1000 different sleepers, one at a time, and
   timestamps each request and the magic packet that answers it.
2. ARP flood: 10,000 who-has per second for 10 s (retries for 200 sleepers mixed with requests for
   unknown addresses): proxy CPU, sleepers never woken (must be 0), wakes per sleeper (must be 1).
3. Registry: 10,000 simulated hosts reporting every 30 s (signed UDP on loopback) for one full
   cycle: server CPU and memory, hosts registered.

Prints one JSON object per figure (benchmarks/run.py makes the table).
"""

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE = os.path.join(REPO, "engine")
sys.path.insert(0, ENGINE)

from powernap import magic_packet  # noqa: E402
from powernap.server import protocol as P  # noqa: E402

SECRET = "benchmark-fleet-secret-0123456789"
NS_SERVER, NS_CLIENT = "pwbench-srv", "pwbench-cli"
SERVER_IP, CLIENT_IP = "10.77.0.1", "10.77.0.2"
CLIENT_MAC = "02:77:00:00:00:02"
SERVER_MAC = "02:77:00:00:00:01"
TICKS = os.sysconf("SC_CLK_TCK")


def emit(metric, value, unit, target=None, ok=None):
    row = {"bench": "powerwaked", "metric": metric, "value": value, "unit": unit}
    if target is not None:
        row["target"] = target
    if ok is not None:
        row["ok"] = ok
    print(json.dumps(row), flush=True)


def sh(*argv):
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def netns_up():
    netns_down()
    sh("ip", "netns", "add", NS_SERVER)
    sh("ip", "netns", "add", NS_CLIENT)
    sh(
        "ip",
        "link",
        "add",
        "pwb0",
        "netns",
        NS_SERVER,
        "address",
        SERVER_MAC,
        "type",
        "veth",
        "peer",
        "name",
        "pwb1",
        "netns",
        NS_CLIENT,
        "address",
        CLIENT_MAC,
    )
    for ns, dev, ip in ((NS_SERVER, "pwb0", SERVER_IP), (NS_CLIENT, "pwb1", CLIENT_IP)):
        sh("ip", "-n", ns, "addr", "add", ip + "/16", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")


def netns_down():
    for ns in (NS_SERVER, NS_CLIENT):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)


def sleeper(index):
    return (
        "s%d" % index,
        "52:54:77:%02x:%02x:%02x" % (index >> 16 & 255, index >> 8 & 255, index & 255),
        "10.77.%d.%d" % (1 + index // 250, 1 + index % 250),
    )


def write_server(directory, sleepers, extra="", listen="0.0.0.0", interface="pwb0"):
    hosts = []
    for index in range(sleepers):
        name, mac, ip = sleeper(index)
        hosts.append({"name": name, "state": "asleep", "macs": [mac], "ips": [ip], "wake": ["wol"], "since": 0.0})
    state = os.path.join(directory, "registry.json")
    with open(state, "w", encoding="utf-8") as handle:
        json.dump({"schema": 1, "saved": 0, "hosts": hosts}, handle)
    config = os.path.join(directory, "powerwaked.conf")
    with open(config, "w", encoding="utf-8") as handle:
        handle.write("[powerwaked]\nsecret = %s\nstate_file = %s\n" % (SECRET, state))
        handle.write("listen = %s\nannounce = no\n" % listen)
        if interface:
            handle.write("interface = %s\nwol_transport = raw\n" % interface)
        handle.write(extra)
    os.chmod(config, 0o600)
    return config


def start_server(config, netns=None):
    argv = [sys.executable, "-m", "powernap.server.daemon", "--config", config, "--log-level", "warning"]
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    proc = subprocess.Popen(argv, cwd=ENGINE, env=dict(os.environ, PYTHONPATH=ENGINE))
    time.sleep(1.5)
    if proc.poll() is not None:
        raise RuntimeError("powerwaked did not start")
    return proc


def server_pid(proc):
    """The python process (ip netns exec execs it, so it is the same pid)."""
    return proc.pid


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid, encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid):
    with open("/proc/%d/status" % pid, encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def arp_frame(target_ip):
    smac = magic_packet.parse_mac(CLIENT_MAC)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + smac + socket.inet_aton(CLIENT_IP) + b"\0" * 6
    return b"\xff" * 6 + smac + struct.pack("!H", 0x0806) + arp + socket.inet_aton(target_ip)


CLIENT_SCRIPT = r"""
import json, socket, sys, time
frames = json.loads(sys.stdin.readline())
mode = frames["mode"]
send = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
send.bind(("pwb1", 0))
recv = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0842))
recv.bind(("pwb1", 0x0842))
recv.setblocking(False)
requests = [bytes.fromhex(f) for f in frames["frames"]]
counts = {}
def drain(now):
    got = []
    while True:
        try:
            data = recv.recv(2048)
        except BlockingIOError:
            return got
        mac = data[14 + 6:14 + 12].hex(":")
        counts[mac] = counts.get(mac, 0) + 1
        got.append((mac, now))
if mode == "latency":
    samples = []
    for frame, mac in zip(requests, frames["macs"]):
        drain(time.perf_counter())
        start = time.perf_counter()
        send.send(frame)
        deadline = start + 0.5
        seen = None
        while time.perf_counter() < deadline and seen is None:
            for got_mac, _t in drain(time.perf_counter()):
                if got_mac == mac:
                    seen = time.perf_counter()
        samples.append(None if seen is None else seen - start)
    print(json.dumps({"samples": samples}))
else:
    rate, seconds = frames["rate"], frames["seconds"]
    start = time.perf_counter()
    sent = 0
    while True:
        now = time.perf_counter()
        if now - start >= seconds:
            break
        due = int((now - start) * rate)
        while sent < due:
            send.send(requests[sent % len(requests)])
            sent += 1
        drain(now)
        time.sleep(0.0005)
    end = time.perf_counter() + 2.0
    while time.perf_counter() < end:
        drain(time.perf_counter())
        time.sleep(0.01)
    print(json.dumps({"sent": sent, "counts": counts}))
"""


def run_client(payload, timeout):
    proc = subprocess.run(
        ["ip", "netns", "exec", NS_CLIENT, sys.executable, "-c", CLIENT_SCRIPT],
        input=json.dumps(payload) + "\n",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_latency(directory):
    count = 1000
    config = write_server(directory, count, "[proxy]\nrate = 10000\nburst = 10000\nipv6 = no\nsource_wakes = 0\n")
    proc = start_server(config, NS_SERVER)
    try:
        frames, macs = [], []
        for index in range(count):
            _name, mac, ip = sleeper(index)
            frames.append(arp_frame(ip).hex())
            macs.append(mac)
        result = run_client({"mode": "latency", "frames": frames, "macs": macs}, timeout=120)
    finally:
        stop(proc)
    samples = sorted(s for s in result["samples"] if s is not None)
    missed = len(result["samples"]) - len(samples)
    p50 = samples[len(samples) // 2] * 1000 if samples else None
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000 if samples else None
    emit("proxy who-has -> magic packet p50", round(p50, 3) if p50 else None, "ms")
    emit(
        "proxy who-has -> magic packet p99",
        round(p99, 3) if p99 else None,
        "ms",
        target="<= 10 ms",
        ok=p99 is not None and p99 <= 10.0,
    )
    emit("proxy latency requests without a wake", missed, "count", target="0", ok=missed == 0)


def bench_flood(directory):
    sleepers, rate, seconds = 200, 10000, 10
    proxy = "[proxy]\ncooldown = 60s\nrate = 50\nburst = 50\nipv6 = no\nsource_wakes = 0\n"
    config = write_server(directory, sleepers, proxy)
    proc = start_server(config, NS_SERVER)
    try:
        frames = []
        for index in range(sleepers):
            frames.append(arp_frame(sleeper(index)[2]).hex())
            for extra in range(4):  # four requests for addresses nobody registered per sleeper request
                frames.append(arp_frame("10.77.200.%d" % (1 + (index * 4 + extra) % 250)).hex())
        before = cpu_seconds(server_pid(proc))
        result = run_client({"mode": "flood", "frames": frames, "rate": rate, "seconds": seconds}, timeout=60)
        used = cpu_seconds(server_pid(proc)) - before
    finally:
        stop(proc)
    counts = result["counts"]
    missed = sum(1 for index in range(sleepers) if sleeper(index)[1] not in counts)
    extra = sum(n - 1 for n in counts.values() if n > 1)
    emit("flood who-has sent", result["sent"], "frames", target="%d" % (rate * seconds))
    emit("flood proxy CPU", round(100.0 * used / (seconds + 2.0), 1), "% of one core")
    emit("flood sleepers never woken", missed, "hosts", target="0", ok=missed == 0)
    emit("flood extra wakes beyond one per sleeper per cooldown", extra, "packets", target="0", ok=extra == 0)


def bench_registry(directory):
    hosts, period = 10000, 30.0
    # More hosts than the default max_hosts (4096): this measures the registry at 10k.
    config = write_server(directory, 0, "port = 7591\nmax_hosts = 20000\n", listen="127.0.0.1", interface="")
    proc = start_server(config)
    from powernap.fleet_keys import host_key
    from powernap.powerwake import ServerClient

    keys = {}  # each simulated host signs with its own key
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.setblocking(False)
        before = cpu_seconds(proc.pid)
        start = time.monotonic()
        sent = 0
        while True:
            elapsed = time.monotonic() - start
            if elapsed >= period:
                break
            due = min(hosts, int(elapsed / period * hosts) + 1)
            while sent < due:
                name = "sim%05d" % sent
                report = {
                    "kind": "report",
                    "from": name,
                    "host": name,
                    "event": "heartbeat",
                    "state": "awake",
                    "macs": ["52:54:%02x:%02x:%02x:01" % (sent >> 16 & 255, sent >> 8 & 255, sent & 255)],
                    "ips": ["10.%d.%d.%d" % (sent >> 16 & 255, sent >> 8 & 255, sent & 255)],
                    "load": 0.1,
                    "cpus": 4,
                    "interval": period,
                    "idle_seconds": 10.0,
                }
                key = keys.setdefault(name, host_key(SECRET, name).encode())
                sock.sendto(P.encode(key, report), ("127.0.0.1", 7591))
                sent += 1
            try:
                while True:
                    sock.recv(4096)  # acks
            except BlockingIOError:
                pass
            time.sleep(0.002)
        used = cpu_seconds(proc.pid) - before
        rss = rss_mib(proc.pid)
        time.sleep(1.0)
        status = ServerClient("http://127.0.0.1:7591", SECRET, timeout=10).get("/v1/status")
    finally:
        stop(proc)
    emit("registry hosts reporting", sent, "hosts", target=str(hosts), ok=sent == hosts)
    emit(
        "registry hosts known after one %ds cycle" % period,
        status["hosts"],
        "hosts",
        target=str(hosts),
        ok=status["hosts"] == hosts,
    )
    emit("registry server CPU (10k hosts / 30 s)", round(100.0 * used / period, 1), "% of one core")
    emit("registry server memory (RSS)", round(rss, 1), "MiB")


def main():
    if os.geteuid() != 0 or not shutil.which("ip"):
        print("bench_powerwaked needs root and iproute2 (network namespaces)", file=sys.stderr)
        return 2
    directory = tempfile.mkdtemp(prefix="pwbench-")
    try:
        netns_up()
        bench_latency(directory)
        bench_flood(directory)
        bench_registry(directory)
    finally:
        netns_down()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
