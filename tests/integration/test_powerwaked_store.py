"""powerwaked's SQLite store on a disk that really fills up (issue 18, and issue 13's full-disk item).

Root only (it mounts a 4 MiB tmpfs, a file system of its own, and unmounts it afterwards); no lab:
the daemon runs on 127.0.0.1, nothing leaves the loopback interface.  The disk fills with a filler file
until ENOSPC; from then on reports are not acknowledged, the daemon stays up and says so in
``/v1/status``; once the filler is gone, reports are acknowledged again, and everything acknowledged
is in the store after a ``kill -9`` and a restart.
"""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENGINE = os.path.join(REPO, "engine")
sys.path.insert(0, ENGINE)
sys.path.insert(0, os.path.join(ENGINE, "tests"))

from server_fakes import SECRET, signed_report  # noqa: E402

from powernap.server import protocol as P  # noqa: E402
from powernap.server.registry import Registry  # noqa: E402


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


@pytest.fixture
def small_disk():
    if os.geteuid() != 0:
        pytest.fail("needs root (it mounts a tmpfs): run the integration tests as root")
    directory = tempfile.mkdtemp(prefix="powernap-full-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "powernap-full", directory], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", directory], check=False, timeout=30)
        shutil.rmtree(directory, ignore_errors=True)


def _report(host, counter):
    return {"v": 1, "kind": "report", "from": host, "host": host, "state": "awake", "event": "heartbeat",
            "ts": time.time(), "nonce": "%016x" % counter, "interval": 30.0,
            "ips": ["198.18.%d.%d" % (counter // 250 % 250, 1 + counter % 250)]}  # fmt: skip


def _acked(port, host, counter, timeout):
    data = signed_report(host, _report(host, counter))
    nonce = json.loads(data.split(b" ", 2)[2])["nonce"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(data, ("127.0.0.1", port))
        try:
            reply = sock.recv(P.MAX_MESSAGE)
        except TimeoutError:
            return False
    return json.loads(reply.split(b" ", 2)[2]).get("re") == nonce


def _status(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/v1/status" % port, timeout=5) as answer:
        return json.loads(answer.read())


def test_a_really_full_disk_stops_acks_not_the_daemon_and_it_recovers(small_disk, tmp_path):
    port = _free_port()
    database = os.path.join(small_disk, "registry.sqlite3")
    config = tmp_path / "powerwaked.conf"
    config.write_text(
        "[powerwaked]\nsecret = %s\nlisten = 127.0.0.1\nport = %d\nannounce = no\nread_auth = no\n"
        "state_file = %s/registry.json\nstore = sqlite://%s\n" % (SECRET, port, tmp_path, database)
    )
    config.chmod(0o600)
    log = tmp_path / "powerwaked.log"

    def start():
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "powernap.server.daemon", "--config", str(config)],
                stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=ENGINE), cwd=ENGINE,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                _status(port)
                return proc
            except OSError:
                time.sleep(0.1)
        raise AssertionError("powerwaked did not start: %s" % log.read_text())

    proc = start()
    try:
        acked = []
        counter = 0
        for _index in range(20):
            counter += 1
            assert _acked(port, "h%d" % counter, counter, 3.0)
            acked.append("h%d" % counter)
        filler = os.path.join(small_disk, "filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)  # fill the file system to the last block
        try:
            for _chunk in range(8192):
                os.write(fd, b"\0" * 512)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        refused = 0
        for _index in range(3000):  # the WAL's free room goes first; then every commit meets ENOSPC
            counter += 1
            if _acked(port, "h%d" % counter, counter, 1.0):
                acked.append("h%d" % counter)
            else:
                refused += 1
                if refused >= 3:
                    break
        assert refused >= 3, "the disk never refused a journal write"
        status = _status(port)
        assert not status["registry"]["ok"] and "full" in json.dumps(status["registry"]["problems"])
        assert proc.poll() is None
        os.unlink(filler)  # space comes back
        deadline = time.monotonic() + 15
        recovered = False
        while time.monotonic() < deadline and not recovered:
            counter += 1
            recovered = _acked(port, "h%d" % counter, counter, 1.0)
        assert recovered, "no ack after the space came back: %s" % log.read_text()[-2000:]
        acked.append("h%d" % counter)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    registry = Registry(database)
    registry.load()
    missing = [name for name in acked if registry.get(name) is None]
    registry.close()
    assert missing == [], "acknowledged, then lost: %s" % missing[:10]
