"""The lab's image recipe and apt plumbing, without root: which mirror builds each suite, package names."""

import os
import sys

import pytest

from .conftest import REPO

sys.path.insert(0, os.path.join(REPO, "lab"))
from powernap_lab import aptrepo, image  # the lab is not an installed package
from powernap_lab.common import LabError

# A Debian 12 machine as cloud images ship it: the archive and the security archive (deb822), plus a
# third-party source and a disabled stanza that must never be taken for a Debian mirror.
BOOKWORM_MACHINE = {
    "sources.list.d/debian.sources": """\
Types: deb
# a comment inside the stanza
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
""",
    "sources.list.d/vendor.list": "deb [arch=amd64] http://vendor.example/apt stable-tools main\n",
    "sources.list.d/old.sources": "Types: deb\nURIs: http://disabled.example/debian\nSuites: trixie\nEnabled: no\n",
}


def apt_root(tmp_path, files):
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path)


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    monkeypatch.delenv("POWERNAP_LAB_MIRROR", raising=False)


@pytest.mark.parametrize("suite", sorted(image.SUITES))
def test_every_suite_builds_from_the_machines_debian_archive(tmp_path, suite):
    # The machine runs bookworm; its archive serves bullseye and trixie too. Neither the security
    # archive, nor the vendor's source, nor the disabled trixie stanza is taken.
    assert image.mirror_from_apt(suite, apt_root(tmp_path, BOOKWORM_MACHINE)) == "http://mirror.example/debian"


def test_a_source_naming_the_suite_wins(tmp_path):
    files = dict(BOOKWORM_MACHINE)
    files["sources.list"] = "deb http://trixie.example/debian trixie main\n"
    assert image.mirror_from_apt("trixie", apt_root(tmp_path, files)) == "http://trixie.example/debian"
    assert image.mirror_from_apt("bookworm", apt_root(tmp_path, files)) == "http://mirror.example/debian"


def test_no_debian_archive_names_the_override(tmp_path):
    root = apt_root(tmp_path, {"sources.list.d/vendor.list": BOOKWORM_MACHINE["sources.list.d/vendor.list"]})
    with pytest.raises(LabError, match="POWERNAP_LAB_MIRROR"):
        image.mirror_from_apt("trixie", root)


def test_the_override_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("POWERNAP_LAB_MIRROR", "http://override.example/debian")
    assert image.mirror_from_apt("bullseye", apt_root(tmp_path, BOOKWORM_MACHINE)) == "http://override.example/debian"


def test_unknown_suites_are_refused(tmp_path):
    with pytest.raises(LabError, match="unknown Debian suite 'jammy'"):
        image.mirror_from_apt("jammy", apt_root(tmp_path, BOOKWORM_MACHINE))
    with pytest.raises(LabError, match="unknown Debian suite"):
        image.image_dir("../etc")


def test_one_recipe_one_image_per_suite():
    dirs = {image.image_dir(s) for s in image.SUITES}
    assert len(dirs) == len(image.SUITES)
    for suite in image.SUITES:
        recipe = image.recipe(suite)
        assert recipe["suite"] == suite
        assert {k: v for k, v in recipe.items() if k != "suite"} == {
            k: v for k, v in image.recipe(image.SUITE).items() if k != "suite"
        }


@pytest.mark.parametrize("name", ["python3-apt", "libstdc++6", "g++", "ethtool", "0ad"])
def test_package_names_debian_allows(name):
    assert aptrepo.check_packages([name, name]) == [name]


@pytest.mark.parametrize("name", ["", "a", "Python3", "-o", "foo bar", "x;reboot", "../deb", "a" * 101])
def test_package_names_that_are_no_package(name):
    with pytest.raises(LabError, match="invalid Debian package name"):
        aptrepo.check_packages([name])
