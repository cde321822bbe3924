"""An independent Redfish service for tests and benchmarks: OpenStack sushy-tools' emulator, fake driver.

It listens on loopback only, with HTTP basic/session authentication (bcrypt
htpasswd) and, by default, TLS with a throw-away CA-less certificate for
127.0.0.1.  The fake driver applies a power change 1-11 s after the request,
as real BMCs do, which is what makes confirmation worth testing.  The
emulator runs from its own virtualenv (``make redfish-emulator`` builds
``.cache/redfish-emulator`` from requirements/redfish-emulator.txt) and is
stopped by its process id.
"""

import base64
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


def _basic_token():
    return base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode()).decode()


# The same GET, run inside the emulator's network namespace.
_GET_SCRIPT = """
import ssl, sys, urllib.request
url, cafile, token = sys.argv[1:4]
request = urllib.request.Request(url)
request.add_header("Authorization", "Basic " + token)
context = ssl.create_default_context(cafile=cafile) if cafile else None
with urllib.request.urlopen(request, timeout=10, context=context) as reply:
    sys.stdout.write(reply.read().decode())
"""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedfishEmulator:
    """``systems``: names; each becomes a fake ComputerSystem (power Off) with a fixed UUID.

    ``netns``: run inside that network namespace (its loopback), for tests whose clients run there too.
    """

    def __init__(self, directory, systems=("h1",), tls=True, power="Off", netns=None):
        if not os.path.exists(EMULATOR):
            raise RuntimeError("no Redfish emulator at %s: run `make redfish-emulator`" % EMULATOR)
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.netns = netns
        self.prefix = ["ip", "netns", "exec", netns] if netns else []
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
        cmd = self.prefix + [
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
            except (OSError, urllib.error.URLError, subprocess.SubprocessError, ValueError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the Redfish emulator did not answer within %d s: %s" % (timeout, self.log_tail()))

    def log_tail(self):
        with open(os.path.join(self.directory, "emulator.log"), errors="replace") as handle:
            return handle.read()[-2000:]

    def context(self):
        return ssl.create_default_context(cafile=self.cert) if self.tls else None

    def get(self, path):
        """GET a Redfish resource with basic auth, by plain urllib (independent of sushy and of our driver)."""
        if self.netns:
            reply = subprocess.run(
                self.prefix
                + [EMULATOR_PYTHON, "-c", _GET_SCRIPT, self.url + path, self.cert if self.tls else "", _basic_token()],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            )
            return json.loads(reply.stdout)
        request = urllib.request.Request(self.url + path)
        request.add_header("Authorization", "Basic " + _basic_token())
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
