"""powerwaked policy tick cost at scale: 10,000 hosts with every feature on, and the /metrics render.

In-process, on a FakeClock (no lab, no root): a real ``Server`` with 10,000 ``[host.NAME]``
entries in 100 groups, started on a free loopback port, with every feature present on this
branch switched on (``FEATURES``): the sleep proxy (fed who-has frames, wakes recorded), a UPS
policy per 10 groups (readings injected), a schedule per 10 groups, a cluster policy per group,
energy profiles, and the metrics registry.  Every tick, 1 % of the hosts report (state changes:
transitions, energy accounting, registry saves) and the proxy sees who-has frames for sleepers.

Figures: CPU time per tick (process time, the background snapshot writer included), the
p50/p99 wall time of one ``Server.tick()``, with and without the registry's snapshot (taken
in the tick under the lock, then written by a thread: persistence, not policy, and replaced
by issue 18's store, so it is shown on its own row and kept out of the policy target), and
the time to render ``GET /metrics`` (it runs under the daemon's lock, so it delays the loop
as a tick does) with its size.

Targets: a tick's p99 within the loop's TICK (0.25 s), so the loop never falls behind; a
/metrics render <= 1 s at 10,000 hosts (a scrape every 15 s or more).  The ticks are paced
like the daemon's loop (one per TICK, real time), so the registry's background snapshot
writer runs as often as it would in service; a scrape is rendered every 15 s inside the run.

The policy gate (rate limits, queue, anti-flap, daily cap, nap windows, recommend-only, vetoes) is on in
every group, and every proxy wake passes it.  **To extend**: write ``def feature_NAME(server, names, rng)`` that
switches the part on (and returns a per-tick callable, or None) and add it to ``FEATURES``; its
cost then lands in every figure here.  Run alone: ``python3 benchmarks/bench_policy.py`` or
``BENCH=policy make bench``.
"""

import json
import logging
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE = os.path.join(REPO, "engine")
sys.path.insert(0, ENGINE)

from powernap.clock import FakeClock  # noqa: E402
from powernap.server import protocol as P  # noqa: E402
from powernap.server.config import load_config  # noqa: E402
from powernap.server.daemon import TICK, Server  # noqa: E402
from powernap.server.proxy import SleepProxy  # noqa: E402

HOSTS = int(os.environ.get("BENCH_POLICY_HOSTS", "10000"))
GROUP_SIZE = 100
TICKS = int(os.environ.get("BENCH_POLICY_TICKS", "240"))  # paced like the daemon's loop: 60 s
SCRAPE_EVERY = 60  # ticks (15 s): Prometheus' default scrape interval, rendered inside the run
RENDERS = 10
SECRET = "benchmark-fleet-secret-0123456789"
TICK_P99_TARGET_MS = TICK * 1000  # the loop never falls behind its own tick
RENDER_TARGET_S = 1.0


def emit(metric, value, unit, target=None, ok=None):
    row = {"bench": "policy", "metric": metric, "value": value, "unit": unit}
    if target is not None:
        row["target"] = target
    if ok is not None:
        row["ok"] = ok
    print(json.dumps(row), flush=True)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        return udp.getsockname()[1]


def mac_of(index):
    return "02:50:%02x:%02x:%02x:%02x" % ((index >> 24) & 255, (index >> 16) & 255, (index >> 8) & 255, index & 255)


def ip_of(index):
    return "10.%d.%d.%d" % ((index >> 16) & 255, (index >> 8) & 255, index & 255 or 1)


def config_text(workdir, names):
    groups = ["g%03d" % i for i in range(len(names) // GROUP_SIZE)]
    lines = [
        "[powerwaked]", "secret = %s" % SECRET, "listen = 127.0.0.1", "port = %d" % free_port(),
        "announce = no", "state_file = %s" % os.path.join(workdir, "registry.json"), "max_hosts = %d" % len(names),
        "[energy]", "price_per_kwh = 0.25", "currency = EUR",
    ]  # fmt: skip
    for index, name in enumerate(names):
        group = groups[min(index // GROUP_SIZE, len(groups) - 1)]
        lines += ["[host.%s]" % name, "mac = %s" % mac_of(index), "ip = %s" % ip_of(index), "groups = %s" % group]
    for number, group in enumerate(groups):
        # The policy gate with every rule on: group rate limits, anti-flap cooldowns, a daily cap, a nap
        # window, and recommend-only mode on every fifth group.
        lines += ["[group.%s]" % group, "nap_action = suspend", "wake_rate = 30", "nap_rate = 10"]
        lines += ["wake_after_nap = 5m", "nap_after_wake = 10m", "max_transitions = 24"]
        lines += ["nap_from = *-*-* 19:00", "nap_until = *-*-* 07:00"]
        lines += ["mode = recommend"] if number % 5 == 0 else []
        lines += ["[cluster.%s]" % group, "group = %s" % group, "min_awake = 10", "low_for = 60s", "step = 10s"]
    for start in range(0, len(groups), 10):
        chunk = ", ".join(groups[start : start + 10])
        lines += ["[schedule.s%03d]" % start, "groups = %s" % chunk, "wake = *-*-* 07:00", "nap = *-*-* 20:00"]
        lines += ["[ups.u%03d]" % start, "ups = bench", "host = 127.0.0.1", "port = 1", "groups = %s" % chunk]
        lines += ["after = 60s", "poll = 3600s"]
        lines += ["[energy_profile.p%03d]" % start, "groups = %s" % chunk, "watts_on = %d" % (150 + start)]
    return "\n".join(lines) + "\n"


# -- features: each switches one part on; returns a per-tick callable or None -------------------------


def feature_reports(server, names, rng):
    """Engines report: every host once at the start, then 1 % of them per tick with a new state."""
    states = (P.AWAKE, P.AWAKE, P.AWAKE, P.GRACE, P.NAPPING, P.SUSPENDING)

    def report(name, state):
        server.accept_report(
            {"kind": "report", "from": name, "host": name, "event": "heartbeat", "state": state,
             "ts": server.clock.wall(), "load": rng.random(), "cpus": 8, "idle_seconds": rng.random() * 3600,
             "interval": 30.0},
            ("127.0.0.1", 9), commit=False,
        )  # fmt: skip

    for name in names:
        report(name, rng.choice(states))

    def tick():
        for name in rng.sample(names, max(1, len(names) // 100)):
            report(name, rng.choice(states))

    return tick


def feature_proxy(server, names, rng):
    """The sleep proxy, its decisions fed who-has frames for random hosts (sleepers get woken)."""
    from powernap.server.proxy import Frame

    server.proxy = SleepProxy(
        server.registry, server._proxy_wake, own_macs=["02:00:00:00:00:01"], cooldown=60.0, rate=10.0, burst=20,
        send_frame=lambda frame: None, now=server.clock.wall(), probe=None, source_wakes=0,
        log=server.log.getChild("proxy"),
    )  # fmt: skip

    def tick():
        for _frame in range(5):
            target = rng.randrange(len(names))
            frame = Frame(kind="who-has", src_mac="02:99:00:00:00:01", sender_ip="10.255.0.1",
                          target_ip=ip_of(target))  # fmt: skip
            server.proxy.on_parsed(frame, server.clock.wall())

    return tick


def feature_ups(server, names, rng):
    """UPS policies observe a reading every tick (their pollers' threads are stopped: no upsd here)."""
    for _policy, poller in server.ups:
        poller.close()
        poller.latest = (["OL"], 100.0, "bench")
    return None


def feature_metrics(server, names, rng):
    """The metrics registry exists from the start; its render is timed on its own below."""
    assert server.metrics.families
    return None


def feature_gate(server, names, rng):
    """The policy gate: every tick a few API wakes and naps pass it (rate limits, queue, rules), and one group
    in ten carries a veto."""
    for group in sorted(server.rails.group_names)[::10]:
        server.rails.veto(group, "bench", 3600, "benchmark veto", server.clock.wall())

    def tick():
        for name in rng.sample(names, 10):
            record = server.registry.get(name)
            if record.up:
                server.rails.nap(record, "suspend", "bench", source="cluster")
            else:
                server.rails.wake(record, "bench", source="api")

    return tick


FEATURES = [feature_reports, feature_proxy, feature_ups, feature_gate, feature_metrics]


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def main():
    logging.basicConfig(level=logging.ERROR)
    rng = random.Random(16)
    names = ["host%05d" % i for i in range(HOSTS)]
    workdir = tempfile.mkdtemp(prefix="bench-policy-")
    try:
        path = os.path.join(workdir, "powerwaked.conf")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(config_text(workdir, names))
        os.chmod(path, 0o600)
        config, errors = load_config([path])
        if errors:
            raise SystemExit("bench config: %s" % errors[:3])
        clock = FakeClock(start_wall=1_767_261_600.0)  # a weekday noon: schedules in their daytime window
        server = Server(config, clock=clock, log=logging.getLogger("bench"), api=False)
        sent = []
        server.fleet.send_wol = lambda mac, secureon="": sent.append(mac)
        server.fleet.send_datagram = lambda data, address: sent.append(address)
        server.fleet.ipmi = lambda target, action, timeout: "ok"
        server.fleet.background = False
        server.start()
        per_tick = [f for f in (feature(server, names, rng) for feature in FEATURES) if f is not None]
        server.registry.commit()
        tick_seconds, policy_seconds, renders, size = [], [], [], 0

        def scrape():
            started = time.perf_counter()
            text = server.api_metrics()
            renders.append(time.perf_counter() - started)
            return len(text)

        save_seconds = []
        save_if_due = server.registry.save_if_due

        def timed_save(now, background=True):
            started = time.perf_counter()
            try:
                return save_if_due(now, background)
            finally:
                save_seconds.append(time.perf_counter() - started)

        server.registry.save_if_due = timed_save  # the snapshot is taken in the tick, under the lock
        cpu_start, wall_start = time.process_time(), time.monotonic()
        next_tick = time.monotonic()
        for index in range(TICKS):
            clock.advance(TICK)
            for work in per_tick:
                work()
            server.registry.commit()
            started = time.perf_counter()
            saves_before = len(save_seconds)
            server.tick()
            tick_seconds.append(time.perf_counter() - started)
            policy_seconds.append(tick_seconds[-1] - sum(save_seconds[saves_before:]))
            if index % SCRAPE_EVERY == SCRAPE_EVERY - 1:
                size = scrape()
            # Paced like the daemon's loop (one tick per TICK), so the background snapshot writer
            # runs as often as it would, not once per compressed burst of ticks.
            next_tick += TICK
            time.sleep(max(0.0, next_tick - time.monotonic()))
        server.registry.wait_saved()
        cpu, wall = time.process_time() - cpu_start, time.monotonic() - wall_start
        while len(renders) < RENDERS:
            size = scrape()
        status_started = time.perf_counter()
        server.api_status()
        status_seconds = time.perf_counter() - status_started
        transitions = sum(server.wake_stats.transitions.values())
        server.shutdown()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    p99 = percentile(policy_seconds, 0.99) * 1000
    emit("hosts", HOSTS, "hosts")
    emit("features", len(FEATURES), "on: " + ",".join(f.__name__[len("feature_") :] for f in FEATURES))
    emit("ticks", TICKS, "ticks (%d transitions, %d wakes sent)" % (transitions, len(sent)))
    emit("CPU per tick (reports, policies, proxy, saves, scrapes)", round(cpu / TICKS * 1000, 2), "ms")
    emit("CPU over the run (one tick per %gs)" % TICK, round(100.0 * cpu / wall, 1), "% of one core")
    emit("policy tick p50 (without the registry snapshot)", round(statistics.median(policy_seconds) * 1000, 2), "ms")
    emit("policy tick p99 (without the registry snapshot)", round(p99, 2), "ms", target="<= %g ms" % TICK_P99_TARGET_MS,
         ok=p99 <= TICK_P99_TARGET_MS)  # fmt: skip
    emit("whole tick p50", round(statistics.median(tick_seconds) * 1000, 2), "ms")
    emit("whole tick p99 (with the registry snapshot)", round(percentile(tick_seconds, 0.99) * 1000, 2), "ms")
    emit("registry snapshot under the lock p99", round(percentile(save_seconds, 0.99) * 1000, 2), "ms")
    render_p99 = percentile(renders, 0.99)
    emit("/metrics render p50", round(statistics.median(renders) * 1000, 1), "ms")
    emit("/metrics render p99", round(render_p99 * 1000, 1), "ms", target="<= %g s" % RENDER_TARGET_S,
         ok=render_p99 <= RENDER_TARGET_S)  # fmt: skip
    emit("/metrics size", round(size / 1e6, 2), "MB")
    emit("/v1/status (energy totals)", round(status_seconds * 1000, 1), "ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
