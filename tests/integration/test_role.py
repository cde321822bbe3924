"""The powernap role against a lab fleet: every molecule scenario, in the lab's controller namespace.

One lab (``POWERNAP_ROLE_LAB``, default ``mol``; 3 hosts: webservers h1,h2 and fileservers h3) is shared by
the scenarios and taken down at the end. The scenarios run in order: ``default`` (converge, idempotence,
verify), ``bad_input`` (an invalid override is refused, the running config stays) and ``nap_wake`` (the
engine suspends a host, WoL wakes it; IPMI powers another off and on), which leaves h1's engine stopped.
"""

import os
import subprocess

import pytest

from .conftest import ANSIBLE_BIN_DIR, REPO, bring_up, tear_down

LAB_NAME = os.environ.get("POWERNAP_ROLE_LAB", "mol")
SCENARIOS = ("default", "bad_input", "nap_wake")
SCENARIO_TIMEOUT = 900


@pytest.fixture(scope="module")
def role_lab():
    handle = bring_up(LAB_NAME, 3, "webservers=h1,h2;fileservers=h3")
    try:
        yield handle
    finally:
        if os.environ.get("POWERNAP_LAB_KEEP") != "1":
            tear_down(LAB_NAME)


def run_scenario(lab, scenario, extra_env=None):
    """``molecule test -s SCENARIO`` in the lab's controller namespace; fail with molecule's output."""
    env = dict(os.environ, **(extra_env or {}))
    env["PATH"] = ANSIBLE_BIN_DIR + os.pathsep + env.get("PATH", "")
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", os.path.join(REPO, ".cache", "collections"))
    env["ANSIBLE_NOCOLOR"] = "1"
    env["NO_COLOR"] = "1"
    cmd = [
        lab.tool,
        "--name",
        lab.name,
        "ctl",
        "--",
        os.path.join(ANSIBLE_BIN_DIR, "molecule"),
        "test",
        "-s",
        scenario,
        "--destroy",
        "never",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT, check=False)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-80:])
    assert proc.returncode == 0, "molecule scenario %s failed (%d):\n%s" % (scenario, proc.returncode, tail)


@pytest.mark.lab
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(role_lab, scenario):
    run_scenario(role_lab, scenario)
