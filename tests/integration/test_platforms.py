"""The platform matrix: the role's ``default`` molecule scenario on every other Debian release the lab builds.

``test_role.py`` runs every scenario on the lab's default release (bookworm); here each other release in
``lab/powernap_lab/image.py`` (``SUITES``: bullseye with Python 3.9, trixie with Python 3.13) gets a lab of
its own (3 hosts, from the same image recipe), and ``molecule test -s default`` converges it with package
installation on (from the lab's apt repository: ``ethtool`` is purged from every host first and the udev
rule names the package's ethtool, so the role really installs it), checks that a second run changes
nothing, and verifies the config, the services, Wake-on-LAN and the installed packages.  ``make platforms``
runs this file.
"""

import os
import sys

import pytest

from .conftest import REPO, bring_up, tear_down
from .test_role import run_scenario

sys.path.insert(0, os.path.join(REPO, "lab"))
from powernap_lab import image  # the lab is not an installed package

OTHER_SUITES = sorted(set(image.SUITES) - {image.SUITE})


@pytest.mark.lab
@pytest.mark.parametrize("suite", OTHER_SUITES)
def test_default_scenario_on(suite):
    name = "pf" + suite[:6]
    lab = bring_up(name, 3, "webservers=h1,h2;fileservers=h3", suite=suite)
    try:
        python = "python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'"
        release = lab.exec("h1", python + "; cat /etc/os-release")
        assert release.stdout.splitlines()[0] == image.SUITES[suite], release.stdout
        assert "VERSION_CODENAME=%s" % suite in release.stdout, release.stdout
        for host in ("h1", "h2", "h3"):
            # The image has every package the role needs; without one, the install path has to run for real:
            # the udev rule names the package's ethtool (not the lab's shim), and verify.yml checks that the
            # package is installed again.
            purged = lab.exec(host, "dpkg --purge ethtool && ! test -e /usr/sbin/ethtool")
            assert purged.returncode == 0, purged.stdout + purged.stderr
        run_scenario(lab, "default", {"POWERNAP_LAB_WOL_ETHTOOL": "/usr/sbin/ethtool"})
    finally:
        if os.environ.get("POWERNAP_LAB_KEEP") != "1":
            tear_down(name)
