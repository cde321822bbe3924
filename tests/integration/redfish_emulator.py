"""An independent Redfish service for tests and benchmarks: OpenStack sushy-tools' emulator, fake driver.

It listens on loopback only, with HTTP basic/session authentication (bcrypt
htpasswd) and, by default, TLS with a throw-away CA-less certificate for
127.0.0.1.  The fake driver applies a power change 1-11 s after the request,
as real BMCs do, which is what makes confirmation worth testing.  The
emulator runs from its own virtualenv (``make redfish-emulator`` builds
``.cache/redfish-emulator`` from requirements/redfish-emulator.txt) and is
stopped by its process id.
"""

import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EMULATOR = os.path.join(REPO, ".cache", "redfish-emulator", "bin", "sushy-emulator")
EMULATOR_PYTHON = os.path.join(REPO, ".cache", "redfish-emulator", "bin", "python")
USER = "admin"
PASSWORD = "rf-secret-3b1d"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedfishEmulator:
    """``systems``: names; each becomes a fake ComputerSystem (power Off) with a fixed UUID."""

    def __init__(self, directory, systems=("h1",), tls=True, power="Off"):
        if not os.path.exists(EMULATOR):
            raise RuntimeError("no Redfish emulator at %s: run `make redfish-emulator`" % EMULATOR)
        self.directory = directory
        self.port = free_port()
        self.tls = tls
        self.systems = {name: str(uuid.uuid5(uuid.NAMESPACE_DNS, "%s.powernap.test" % name)) for name in systems}
        self.cert = os.path.join(directory, "cert.pem")
        self.proc = None
        self._configure(power)

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.port)

    def _configure(self, power):
        htpasswd = os.path.join(self.directory, "htpasswd")
        hashed = subprocess.run(
            [
                EMULATOR_PYTHON,
                "-c",
                "import bcrypt,sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(4)).decode())",
                PASSWORD,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        with open(htpasswd, "w") as handle:
            handle.write("%s:%s\n" % (USER, hashed))
        systems = [
            {"uuid": ident, "name": name, "power_state": power, "external_notifier": False, "nics": []}
            for name, ident in self.systems.items()
        ]
        with open(os.path.join(self.directory, "emulator.conf"), "w") as handle:
            handle.write("SUSHY_EMULATOR_AUTH_FILE = %r\n" % htpasswd)
            handle.write("SUSHY_EMULATOR_FAKE_DRIVER = True\n")
            handle.write("SUSHY_EMULATOR_FAKE_SYSTEMS = %r\n" % (systems,))
            handle.write("SUSHY_EMULATOR_STATE_DIR = %r\n" % os.path.join(self.directory, "state"))
        if self.tls:
            subprocess.run(
                [
                    "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", os.path.join(self.directory, "key.pem"), "-out", self.cert,
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                ],
                capture_output=True,
                check=True,
                timeout=60,
            )  # fmt: skip

    def start(self, timeout=60):
        cmd = [
            EMULATOR,
            "--config",
            os.path.join(self.directory, "emulator.conf"),
            "-i",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        if self.tls:
            cmd += ["--ssl-certificate", self.cert, "--ssl-key", os.path.join(self.directory, "key.pem")]
        with open(os.path.join(self.directory, "emulator.log"), "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the Redfish emulator exited: %s" % self.log_tail())
            try:
                self.get("/redfish/v1/")
                return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the Redfish emulator did not answer within %d s: %s" % (timeout, self.log_tail()))

    def log_tail(self):
        with open(os.path.join(self.directory, "emulator.log"), errors="replace") as handle:
            return handle.read()[-2000:]

    def context(self):
        return ssl.create_default_context(cafile=self.cert) if self.tls else None

    def get(self, path):
        request = urllib.request.Request(self.url + path)
        token = "%s:%s" % (USER, PASSWORD)
        import base64

        request.add_header("Authorization", "Basic " + base64.b64encode(token.encode()).decode())
        with urllib.request.urlopen(request, timeout=10, context=self.context()) as reply:
            return json.loads(reply.read())

    def power(self, name):
        """The PowerState the service reports for system ``name``, read independently of our driver."""
        return self.get("/redfish/v1/Systems/%s" % self.systems[name])["PowerState"]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
