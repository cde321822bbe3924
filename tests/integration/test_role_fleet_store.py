"""The role deploys a fleet-mode powerwaked on a PostgreSQL store, against a real PostgreSQL (issue 18, part 3).

A private PostgreSQL cluster (``engine/tests/pg_cluster.py``) listens on TCP on the lab's controller LAN
address, inside the lab's controller namespace, and lets one role in from the LAN subnet with a password
(scram-sha-256).  The lab (``POWERNAP_ROLE_STORE_LAB``, default ``POWERNAP_LAB_TEST_NAME`` + ``p``; one
host) serves ``python3-psycopg`` from its own apt repository besides its usual packages.  h1 gets the role
with ``powernap_server: true``, ``powernap_server_store: postgresql://USER:PASSWORD@CONTROLLER:PORT/DB``
and fleet mode (one segment, the lab's LAN), run at ``-v``:

- h1 had no psycopg; the role installs ``python3-psycopg`` from the lab's repository;
- powerwaked runs; its ``/v1/status`` (read from the controller namespace) says ``store: postgresql`` and
  that it leads its segment; h1's own engine reports to it and the report is in the database, as is the
  instance (``powerwaked_instances``, read with psql as postgres);
- its config is 0600, the powerwaked user's; a second run changes nothing;
- the same store set as ``powernap_server_config``'s own ``store`` (which wins) needs psycopg too: purged,
  the role installs it again;
- a run that changes the password (``--diff``) restarts it on the new one;
- a wrong password fails the play with powerwaked's own words from the journal: they name the store, not
  the password;
- a malformed store URL is refused by the config check before it goes live, naming ``store``.

No password ever shows in the Ansible output, the diff or the daemon's journal.  The cluster is stopped by
its PID and the lab taken down at the end.
"""

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile

import pytest

from .conftest import REPO, bring_up, tear_down
from .test_role_output import leaks, run_site

sys.path.insert(0, os.path.join(REPO, "engine", "tests"))
sys.path.insert(0, os.path.join(REPO, "lab"))
from pg_cluster import PrivateCluster, binaries  # the engine's tests are not a package

from powernap_lab.aptrepo import DEFAULT_PACKAGES  # the lab is not an installed package

pytestmark = pytest.mark.lab

LAB_NAME = os.environ.get("POWERNAP_ROLE_STORE_LAB", os.environ.get("POWERNAP_LAB_TEST_NAME", "store")[:7] + "p")
PG_PORT = 5432  # in the lab's own controller namespace: nothing else listens there
DATABASE = "powernap"
DB_USER = "powerwaked_fleet"
FLEET_SECRET = "role-store-fleet-secret-5b7e21"
SERVER_PORT = 7490
SEGMENT = "lan"
READY_TIMEOUT = 30  # seconds for the restarted powerwaked to take its segment's lead and h1's report to arrive

API_GET = r"""
import json, sys
sys.path.insert(0, %(engine)r)
from powernap.powerwake import ServerClient
print(json.dumps(ServerClient(sys.argv[1], %(secret)r).get(sys.argv[2])))
"""


class StoreLab:
    """The lab, its PostgreSQL cluster and the inventory the role runs with."""

    def __init__(self, lab, cluster, inventory):
        self.lab, self.cluster, self.inventory = lab, cluster, inventory
        self.address = lab.host("h1")["address"]
        self.passwords = []  # every password the role was given: none may show anywhere

    def psql(self, sql, database=DATABASE):
        """Run SQL as postgres over the cluster's unix socket; the rows, one a line, fields joined by |."""
        argv = [os.path.join(self.cluster.bindir, "psql"), "-h", self.cluster.socket_dir, "-p", str(PG_PORT)]
        argv += ["-U", self.cluster.user, "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc", sql]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        assert proc.returncode == 0, "psql %r: %s" % (sql, proc.stderr)
        return proc.stdout.strip()

    def set_password(self):
        """A new password for the role's database user (hex: nothing to quote in SQL or a URL)."""
        password = secrets.token_hex(16)
        self.passwords.append(password)
        self.psql("ALTER ROLE %s PASSWORD '%s'" % (DB_USER, password), database="postgres")
        return password

    def store_url(self, password):
        return "postgresql://%s:%s@%s:%d/%s" % (DB_USER, password, self.lab.controller, PG_PORT, DATABASE)

    def host_vars(self, password, store_in_config=False):
        """h1's host_vars; ``store_in_config``: the store as powernap_server_config's own ``store``."""
        return (
            """---
powernap_fleet_secret: "{secret}"
powernap_host_config:
  server:
    url: udp://{address}:{port}
powernap_server: true
powernap_server_listen: "{address}"
powernap_server_segment: {segment}
powernap_server_segments:
  {segment}:
    subnets: ["{lan}"]
powernap_server_config:
  powerwaked:
    announce: false
"""
            + ('    store: "{store}"\n' if store_in_config else 'powernap_server_store: "{store}"\n')
        ).format(
            secret=FLEET_SECRET,
            address=self.address,
            port=SERVER_PORT,
            store=self.store_url(password),
            segment=SEGMENT,
            lan=self.lab.network["lan"],
        )

    def run_role(self, password, *extra, expect_ok=True, store_in_config=False):
        """site.yml at -v with h1 on the store with ``password``; the output, which must hold no password."""
        values = self.host_vars(password, store_in_config)
        result = run_site(self.lab, self.inventory, values, "-v", *extra, verbose=False, expect_ok=expect_ok)
        output = result if expect_ok else result[1]
        found = self.leaks(output)
        assert found == [], "the store's password shown by the role:\n" + "\n".join(found)
        return result

    def leaks(self, text):
        return leaks(text, {"password %d" % n: value for n, value in enumerate(self.passwords)})

    def api(self, path):
        script = API_GET % {"engine": os.path.join(REPO, "engine"), "secret": FLEET_SECRET}
        url = "http://%s:%d" % (self.address, SERVER_PORT)
        proc = self.lab.ctl(["/usr/bin/python3", "-c", script, url, path], check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def journal(self):
        return self.lab.exec("h1", ["journalctl", "-u", "powerwaked", "--no-pager", "-o", "cat"]).stdout

    def main_pid(self):
        return self.lab.exec("h1", ["systemctl", "show", "-P", "MainPID", "powerwaked"]).stdout.strip()

    def wait_leading(self):
        """The status of powerwaked on h1 once it leads its segment."""

        def leading():
            status = self.api("/v1/status")
            fleet = (status or {}).get("fleet") or {}
            return status if fleet.get("segment_leader") else None

        try:
            return self.lab.wait_for(leading, READY_TIMEOUT, "powerwaked on h1 to lead segment %s" % SEGMENT, 0.5)
        except AssertionError:
            raise AssertionError("powerwaked's journal:\n%s" % self.journal()[-3000:]) from None


@pytest.fixture(scope="module")
def store_lab():
    bindir = binaries()
    if bindir is None:
        pytest.fail("PostgreSQL is not installed (tools/system-packages.txt: postgresql)", pytrace=False)
    handle = bring_up(LAB_NAME, 1, apt_packages=DEFAULT_PACKAGES + ("python3-psycopg",))
    inventory = tempfile.mkdtemp(prefix="powernap-store-")
    # Password logins for the one role, from the LAN only (every other connection is postgres's, by socket).
    hba = ["host %s %s %s scram-sha-256" % (DATABASE, DB_USER, handle.network["lan"])]
    cluster = PrivateCluster(bindir, listen=handle.controller, port=PG_PORT, netns="%s-ctl" % LAB_NAME, hba=hba)
    try:
        cluster.start()
        for directory in ("group_vars", "host_vars"):
            os.makedirs(os.path.join(inventory, directory))
        shutil.copy(handle.inventory_path, os.path.join(inventory, "hosts.yml"))
        shutil.copy(
            os.path.join(REPO, "molecule", "shared", "inventory", "group_vars", "lab.yml"),
            os.path.join(inventory, "group_vars", "lab.yml"),
        )
        store = StoreLab(handle, cluster, inventory)
        store.psql("CREATE ROLE %s LOGIN" % DB_USER, database="postgres")
        store.psql("CREATE DATABASE %s OWNER %s" % (DATABASE, DB_USER), database="postgres")
        yield store
    finally:
        print("--- PostgreSQL log, last 4000 characters:\n%s" % cluster.log())
        cluster.stop()
        shutil.rmtree(inventory, ignore_errors=True)
        if os.environ.get("POWERNAP_LAB_KEEP") != "1":
            tear_down(LAB_NAME)


def recap(output, host="h1"):
    line = next((ln for ln in output.splitlines() if re.match(r"^%s +:" % host, ln)), "")
    assert line, "no play recap for %s:\n%s" % (host, output[-3000:])
    return line


def psycopg_installed(lab, output):
    """The engine task found psycopg missing on h1 and installed the distribution's package from the lab."""
    assert re.search(r'"missing_packages": \[[^]]*"python3-psycopg"', output), output[-3000:]
    installed = lab.exec("h1", ["dpkg-query", "-W", "-f", "${Status}", "python3-psycopg"], check=False).stdout
    assert installed == "install ok installed", installed
    policy = lab.exec("h1", ["apt-cache", "policy", "python3-psycopg"]).stdout
    assert "http://%s:8080" % lab.controller in policy, policy  # from the lab's own repository
    lab.exec("h1", ["python3", "-c", "import psycopg"])


def test_role_deploys_fleet_mode_on_postgresql(store_lab):
    lab = store_lab.lab
    # A lab kept from an earlier run (POWERNAP_LAB_KEEP) may have it already: the role must install it itself.
    lab.exec("h1", "dpkg --purge python3-psycopg >/dev/null 2>&1 || true")
    assert lab.exec("h1", ["python3", "-c", "import psycopg"], check=False).returncode != 0, "h1 has psycopg already"
    password = store_lab.set_password()

    output = store_lab.run_role(password)
    psycopg_installed(lab, output)

    assert lab.exec("h1", ["systemctl", "is-active", "powerwaked"], check=False).stdout.strip() == "active"
    status = store_lab.wait_leading()
    assert status["registry"]["store"] == "postgresql" and status["registry"]["ok"], status["registry"]
    fleet = status["fleet"]
    assert fleet["segment"] == SEGMENT and fleet["segments"][SEGMENT]["leader"] == fleet["instance"], fleet
    assert fleet["problem"] in (None, ""), fleet
    # The database holds the instance, with the segment it leads.
    rows = store_lab.psql("SELECT name, segment, roles FROM powerwaked_instances")
    name, segment, roles = rows.split("|")
    assert (name, segment) == (fleet["instance"], SEGMENT) and "segment" in roles.split(","), rows
    # A round trip: h1's engine reports to its server, which writes the host into PostgreSQL.
    lab.wait_for(lambda: store_lab.api("/v1/hosts/h1"), READY_TIMEOUT, "h1's report at powerwaked", 0.5)
    lab.wait_for(
        lambda: store_lab.psql("SELECT segment FROM powerwaked_hosts WHERE name = 'h1'") == SEGMENT,
        READY_TIMEOUT,
        "h1's row in powerwaked_hosts",
        0.5,
    )

    mode = lab.exec("h1", ["stat", "-c", "%a %U %G", "/etc/powernap/powerwaked.conf"]).stdout.strip()
    assert mode == "600 powerwaked powerwaked", mode
    config = lab.exec("h1", ["cat", "/etc/powernap/powerwaked.conf"]).stdout
    assert "store = %s\n" % store_lab.store_url(password) in config  # really written, though never shown

    output = store_lab.run_role(password)
    assert "changed=0" in recap(output), "a second run changed h1:\n" + output[-3000:]

    # The same store given as powernap_server_config's own (it wins over powernap_server_store): the same config,
    # and psycopg is still what the server needs. Taken away first, the role installs it again.
    lab.exec("h1", ["dpkg", "--purge", "python3-psycopg"])
    output = store_lab.run_role(password, store_in_config=True)
    psycopg_installed(lab, output)
    assert "changed=1 " in recap(output), "more than the package changed:\n" + output[-3000:]

    # A new password: the diff shows neither; powerwaked restarts on the new one.
    running = store_lab.main_pid()
    new_password = store_lab.set_password()  # the running one keeps its session; a new session needs this one
    output = store_lab.run_role(new_password, "--diff")
    assert "changed=0" not in recap(output), output[-3000:]
    assert store_lab.store_url(new_password) in lab.exec("h1", ["cat", "/etc/powernap/powerwaked.conf"]).stdout
    assert store_lab.main_pid() not in ("0", running), "powerwaked was not restarted on the new password"
    store_lab.wait_leading()
    journal = store_lab.journal()
    assert store_lab.leaks(journal) == [], store_lab.leaks(journal)


def test_wrong_password_fails_visibly_without_the_password(store_lab):
    lab = store_lab.lab
    wrong = secrets.token_hex(16)  # never the role's password
    store_lab.passwords.append(wrong)
    code, output = store_lab.run_role(wrong, "--diff", expect_ok=False)
    assert lab.exec("h1", ["systemctl", "is-active", "powerwaked"], check=False).stdout.strip() != "active"
    journal = store_lab.journal()
    print("--- powerwaked's journal, last 3000 characters:\n" + journal[-3000:])
    # The play and the journal name the store (its password masked) and why.
    where = "postgresql://%s:***@%s:%d/%s" % (DB_USER, lab.controller, PG_PORT, DATABASE)
    fatal = [line for line in output.splitlines() if line.startswith("fatal: [h1]")][-1:]  # the last: the play's
    fatal = fatal[0] if fatal else ""
    assert code != 0 and "powerwaked did not start" in fatal, output[-3000:]
    assert where in fatal and "password authentication failed" in fatal, fatal
    assert where in journal and "password authentication failed" in journal, journal[-3000:]
    assert store_lab.leaks(journal) == [], store_lab.leaks(journal)


def test_a_malformed_store_url_is_refused_without_its_password(store_lab):
    """powerwaked's check of the new config (the template's validate) refuses it, naming the option, not the URL."""
    lab = store_lab.lab
    before = lab.exec("h1", ["cat", "/etc/powernap/powerwaked.conf"], check=False).stdout  # none when run alone
    password = secrets.token_hex(16)
    store_lab.passwords.append(password)
    values = store_lab.host_vars(password).replace(":%d/" % PG_PORT, ":99999/")  # no such port
    assert ":99999/" in values
    code, output = run_site(lab, store_lab.inventory, values, "-v", "--diff", verbose=False, expect_ok=False)
    fatal = next((line for line in output.splitlines() if line.startswith("fatal: [h1]")), "")
    print(fatal)
    assert code != 0 and "store" in fatal and "port" in fatal, output[-3000:]
    # The one error, naming the live file (not the copy Ansible checks) and the option.
    assert "/etc/powernap/powerwaked.conf:" in fatal and "option 'store'" in fatal, fatal
    assert "needs store = postgresql" not in output, fatal
    assert store_lab.leaks(output) == [], store_lab.leaks(output)
    assert lab.exec("h1", ["cat", "/etc/powernap/powerwaked.conf"], check=False).stdout == before  # it stays
