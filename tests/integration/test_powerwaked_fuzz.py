"""Fuzzing powerwaked's report and HTTP body parsers against a running server (hypothesis, bounded).

A real ``powerwaked`` runs as a subprocess on 127.0.0.1 (no lab, no root needed; magic packets go to
127.0.0.1).  Hypothesis builds reports and API request bodies with every declared field set to
values of any JSON type (NaN and infinity included), plus unknown fields, plus unsigned garbage;
each is signed as the server expects it (a report with its sender's own host key, an API request with
the master secret for its method and path), so it reaches the schema check, then sent as a UDP datagram
and as an HTTP POST.  The server must answer each POST with a JSON error or success, never fail a
handler (``errors`` in /v1/status stays 0), and still accept and acknowledge a good report at the
end.  The run is bounded by ``FUZZ_EXAMPLES`` cases and ``FUZZ_SECONDS`` of wall time; it prints the
case count and duration.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENGINE = os.path.join(REPO, "engine")
sys.path.insert(0, ENGINE)

from powernap import powerwake  # noqa: E402
from powernap.fleet_keys import host_key  # noqa: E402
from powernap.server import protocol as P  # noqa: E402

SECRET = "fuzzing-fleet-secret-0123456789"  # the master secret
MASTER = SECRET.encode()
FUZZ_EXAMPLES = int(os.environ.get("POWERNAP_FUZZ_EXAMPLES", "1000"))
FUZZ_SECONDS = float(os.environ.get("POWERNAP_FUZZ_SECONDS", "90"))

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(["52:54:00:00:00:01", "198.18.0.1", "fd00::1", "awake", "suspend", "heartbeat", "g", ""])
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=12,
)  # fmt: skip
REPORT_FIELDS = [opt.name for opt in P.ReportMessage.OPTIONS if opt.name not in ("v", "kind", "from", "ts", "nonce")]
REQUEST_FIELDS = [opt.name for opt in P.RequestMessage.OPTIONS if opt.name not in ("v", "kind", "from", "ts", "nonce")]
names = st.sampled_from(["h1", "h2", "h3"]) | st.text(min_size=1, max_size=20)


macs = st.integers(0, 2**48 - 1).map(lambda n: ":".join("%02x" % b for b in n.to_bytes(6, "big")))
ips = st.ip_addresses().map(str)
finite = st.floats(min_value=0, max_value=1e6, allow_nan=False)
VALID_REPORT = {
    "host": st.sampled_from(["h1", "h2", "h3", "h4"]),
    "event": st.sampled_from(["heartbeat", "start", "warn", "action-start", "resume", "stop", "powersave-apply"]),
    "state": st.sampled_from(P.STATES),
    "stage": st.none() | st.integers(0, 5) | st.fixed_dictionaries({"index": st.integers(0, 5)}),
    "idle_seconds": st.none() | finite,
    "next_wake": st.none() | st.floats(1.7e9, 1.9e9),
    "macs": st.lists(macs, max_size=3),
    "ips": st.lists(ips, max_size=3),
    "wol": st.dictionaries(macs, st.sampled_from(["g", "d", "pumbg", None]), max_size=3),
    "load": st.none() | finite,
    "cpus": st.none() | st.integers(1, 256),
    "interval": st.floats(1, 3600),
    "detail": st.dictionaries(
        st.text(min_size=1, max_size=10), st.none() | st.booleans() | finite | st.text(max_size=20)
    ),
}


def _message(kind, fields):
    """Any JSON value in any declared field (and an unknown one): the schema's refusals."""
    return st.fixed_dictionaries(
        {"kind": st.just(kind), "from": names},
        optional=dict.fromkeys(fields + ["surprise"], json_values),
    )


@st.composite
def _almost_valid_report(draw):
    """A valid report with at most one field replaced by any JSON value: the accepted path, and its edges."""
    message = {"kind": "report", "from": draw(VALID_REPORT["host"])}
    message["host"] = message["from"]
    for name in draw(st.sets(st.sampled_from(sorted(VALID_REPORT)))):
        message[name] = draw(VALID_REPORT[name])
    if draw(st.booleans()):
        message[draw(st.sampled_from(REPORT_FIELDS))] = draw(json_values)
    return message


cases = st.one_of(
    st.tuples(st.just("report"), _almost_valid_report()),
    st.tuples(st.just("report"), _almost_valid_report()),  # twice: half the cases take the accepted path
    st.tuples(st.just("report"), _message("report", REPORT_FIELDS)),
    st.tuples(st.sampled_from(["wake", "nap", "groups/web/demand"]), _message("request", REQUEST_FIELDS)),
    st.tuples(st.just("garbage"), st.binary(max_size=300)),
)


def _free_port():
    for _attempt in range(50):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def _post(url, data):
    request = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _tail(path):
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()[-4000:]


def _get(url):
    """A read signed with the master secret (reads need a signature by default)."""
    parts = urllib.parse.urlsplit(url)
    return powerwake.ServerClient("%s://%s" % (parts.scheme, parts.netloc), SECRET, timeout=10).get(parts.path)


def _signed(payload, path):
    """Wire bytes signed as the server expects them: a report with its sender's key, a request with the master."""
    if payload.get("kind") == "report":
        sender = payload.get("from")
        key = host_key(SECRET, sender).encode() if isinstance(sender, str) else MASTER
        return P.encode(key, payload)
    return P.encode(MASTER, payload, P.http_label("POST", path))


@pytest.fixture(scope="module")
def server():
    workdir = tempfile.mkdtemp(prefix="powerwaked-fuzz-")
    port = _free_port()
    config = os.path.join(workdir, "powerwaked.conf")
    with open(config, "w", encoding="utf-8") as handle:
        handle.write(
            "[powerwaked]\nsecret = %s\nlisten = 127.0.0.1\nport = %d\nannounce = no\nbroadcast = 127.0.0.1\n"
            "state_file = %s/registry.json\nmax_hosts = 500\n[group.web]\nhosts = h1, h2\n[cluster.web]\ngroup = web\n"
            % (SECRET, port, workdir)
        )
    os.chmod(config, 0o600)
    log = open(os.path.join(workdir, "powerwaked.log"), "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "powernap.server.daemon", "--config", config, "--log-level", "warning"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ENGINE,
        env=dict(os.environ, PYTHONPATH=ENGINE),
    )
    url = "http://127.0.0.1:%d" % port
    deadline = time.monotonic() + 15
    while True:
        try:
            _get(url + "/v1/status")
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "powerwaked did not start"
            time.sleep(0.1)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield {"url": url, "port": port, "proc": proc, "udp": udp, "log": log.name}
    udp.close()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    log.close()


def test_fuzzed_reports_and_api_bodies_never_stop_the_server(server):
    started = time.monotonic()
    stats = {"cases": 0, "answers": {}}

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(cases)
    def one_case(case):
        if time.monotonic() - started > FUZZ_SECONDS:
            return  # the time bound: the remaining cases are no-ops
        target, payload = case
        stats["cases"] += 1
        path = "/v1/report" if target in ("report", "garbage") else "/v1/" + target
        if target == "garbage":
            data = datagram = payload
        else:
            try:  # one signing per copy: the same nonce twice would be a replay
                data, datagram = _signed(payload, path), _signed(payload, path)
            except ValueError:  # json.dumps cannot write it (e.g. a huge int as a key): nothing to send
                return
        server["udp"].sendto(datagram[: P.MAX_MESSAGE + 100], ("127.0.0.1", server["port"]))
        status, answer = _post(server["url"] + path, data)
        assert status in (200, 400, 401, 403, 404), (status, answer)
        assert isinstance(answer, dict)
        stats["answers"][status] = stats["answers"].get(status, 0) + 1

    one_case()
    seconds = time.monotonic() - started
    assert server["proc"].poll() is None, _tail(server["log"])
    status = _get(server["url"] + "/v1/status")
    assert status["errors"] == 0, _tail(server["log"])
    good = _signed(
        {"kind": "report", "from": "h1", "host": "h1", "state": "awake", "load": 0.2, "cpus": 2}, "/v1/report"
    )
    code, answer = _post(server["url"] + "/v1/report", good)
    assert code == 200 and answer["host"] == "h1" and answer["saved"]
    print(
        "\nfuzz: %d cases in %.1f s (%.0f/s), HTTP answers %s, server rejected %d, refused %d, errors %d"
        % (stats["cases"], seconds, stats["cases"] / max(seconds, 0.001), stats["answers"], status["rejected"],
           status["refused"], status["errors"])
    )  # fmt: skip
    assert stats["cases"] >= min(FUZZ_EXAMPLES, 200)
