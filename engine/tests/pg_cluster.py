"""A private PostgreSQL cluster for tests: initdb + pg_ctl in a temporary directory, a unix socket only.

No TCP (``listen_addresses = ''``), trust on the socket, which lives in the cluster's own 0700
directory.  Optionally (``listen``) it also listens on TCP on that one address, inside the network
namespace ``netns`` (a lab's controller), with the ``hba`` lines appended to its pg_hba.conf (e.g.
scram-sha-256 for one role from one subnet).  As root the server runs as the ``postgres`` user
(initdb refuses root); otherwise as the caller.  ``stop`` ends the postmaster by its PID (SIGINT: a
fast shutdown; SIGKILL after 15 s) and removes the directory.  Every wait is bounded.  Reused by the
store tests and the multi-instance ones (``tests/integration`` can import it too).
"""

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from typing import List, Optional, Sequence

START_TIMEOUT = 60  # seconds; it starts in about a second here


def binaries() -> Optional[str]:
    """The directory of the newest installed PostgreSQL's initdb and pg_ctl (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return os.path.dirname(found[-1])
    path = shutil.which("pg_ctl")
    return os.path.dirname(path) if path and shutil.which("initdb") else None


class PrivateCluster:
    def __init__(self, bindir: str, listen: str = "", port: int = 5432, netns: str = "", hba: Sequence[str] = ()):
        self.bindir = bindir
        self.listen, self.port, self.netns, self.hba = listen, port, netns, tuple(hba)
        self.dir = tempfile.mkdtemp(prefix="powernap-pg-")
        self.data = os.path.join(self.dir, "data")
        self.socket_dir = self.dir
        self.pid: Optional[int] = None
        self.user = "postgres"
        self._as: List[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.dir, account.pw_uid, account.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        else:
            self.user = pwd.getpwuid(os.geteuid()).pw_name
        os.chmod(self.dir, 0o700)

    def _run(self, *args: str, netns: str = "") -> None:
        # `ip netns exec` (root) before runuser: into the namespace first, then the postgres user
        inside = ["ip", "netns", "exec", netns] if netns else []
        subprocess.run(inside + self._as + list(args), check=True, capture_output=True, timeout=START_TIMEOUT)

    def start(self) -> "PrivateCluster":
        self._run(
            os.path.join(self.bindir, "initdb"), "-D", self.data, "-U", self.user, "--auth=trust",
            "--no-sync", "-E", "UTF8", "--locale=C",
        )  # fmt: skip
        if self.hba:
            with open(os.path.join(self.data, "pg_hba.conf"), "a", encoding="utf-8") as handle:
                handle.write("".join(line + "\n" for line in self.hba))
        options = "-c listen_addresses='%s' -c port=%d -c unix_socket_directories='%s' -c fsync=on" % (
            self.listen,
            self.port,
            self.socket_dir,
        )
        # In a namespace the postmaster is born there (pg_ctl forks it), and its TCP socket with it.
        self._run(
            os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-o", options, "-l",
            os.path.join(self.dir, "server.log"), "-w", "-t", str(START_TIMEOUT), "start", netns=self.netns,
        )  # fmt: skip
        with open(os.path.join(self.data, "postmaster.pid"), encoding="ascii") as handle:
            self.pid = int(handle.readline())
        return self

    def url(self, dbname: str = "postgres") -> str:
        port = "&port=%d" % self.port if self.port != 5432 else ""  # the socket's name has the port in it
        return "postgresql:///%s?host=%s&user=%s%s" % (dbname, self.socket_dir, self.user, port)

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute('CREATE DATABASE "%s"' % name)
        return self.url(name)

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "server.log"), encoding="utf-8", errors="replace") as handle:
                return handle.read()[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGINT)  # the postmaster's fast shutdown
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and _alive(self.pid):
                    time.sleep(0.05)
                if _alive(self.pid):
                    os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.pid = None
        shutil.rmtree(self.dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not a server: the postmaster's parent is pg_ctl's shell, long gone; init reaps it.
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def reconnected(action, seconds: float = 10.0):
    """``action()`` once the store has its new connection: it is made on a thread of its own (``BackgroundConnect``),
    so the calls before it fail at once with StoreError.  Needs ``postgres.RECONNECT_EVERY`` at 0."""
    from powernap.server.store import StoreError

    deadline = time.monotonic() + seconds
    while True:
        try:
            return action()
        except StoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
