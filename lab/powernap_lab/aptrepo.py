"""The lab's own apt repository: the packages a host may install, served from the controller namespace.

Lab hosts have no route out of the lab, so ``apt-get install`` on them can only reach a source inside it.
For one suite and a package list, the .debs that a host of that suite's image still lacks are fetched on the
machine by apt itself (the machine's apt configuration, a private sources list for the suite, dependencies
resolved against the image's dpkg status), indexed as a flat repository (``dpkg-scanpackages``) and cached
under ``CACHE_ROOT/apt/``.  The supervisor serves it over HTTP from the controller namespace and each host
has it as its only apt source (``trusted=yes``: the lab built it from the signed archive itself).
"""

import fcntl
import glob
import gzip
import hashlib
import json
import os
import re
import shutil
import time

from . import image
from .common import CACHE_ROOT, LabError, run

# What the role installs on a Debian host when it lacks it (the engine module's missing_packages), plus
# python3-apt, which ansible.builtin.apt installs for itself when the host lacks it.
DEFAULT_PACKAGES = ("python3-apt", "python3", "tar", "ethtool")
# Debian policy 5.6.1: lowercase letters, digits, + - . ; at least two characters, starting alphanumeric.
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]{1,99}$")
PORT = 8080
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# Bump when the way the repository is made changes: it is part of the cache key.
REPO_VERSION = 2
# The one apt source of every lab host (the image's own sources.list points outside the lab).
HOST_SOURCES_LIST = "# powernap lab: no route out of the lab; the lab's repository is in sources.list.d/\n"


def host_source(lab):
    """The apt source line of a host of this lab: the repository served from the lab's own controller."""
    return "deb [trusted=yes] http://%s:%d/ ./\n" % (lab.controller_lan, PORT)


def check_packages(packages):
    names = sorted(set(packages))
    for name in names:
        if not PACKAGE_RE.match(name):
            raise LabError("invalid Debian package name %r" % name)
    return names


def repo_dir(suite, packages):
    key = {
        "suite": image.check_suite(suite),
        "image": image.recipe_key(suite),
        "packages": check_packages(packages),
        "version": REPO_VERSION,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(CACHE_ROOT, "apt", "%s-%s" % (suite, digest))


def _apt(work, image_root, *args, timeout=900):
    """apt-get with the machine's apt configuration but a private source list, state and cache, and the
    image's dpkg status, so it resolves what a host of that image would install."""
    opts = [
        "Dir::Etc::SourceList=" + os.path.join(work, "sources.list"),
        "Dir::Etc::SourceParts=" + os.path.join(work, "sources.list.d"),
        "Dir::Etc::Preferences=" + os.path.join(work, "preferences"),
        "Dir::Etc::PreferencesParts=" + os.path.join(work, "preferences.d"),
        "Dir::State=" + os.path.join(work, "state"),
        "Dir::State::status=" + os.path.join(image_root, "var/lib/dpkg/status"),
        "Dir::Cache=" + os.path.join(work, "cache"),
        "Dir::Cache::archives=" + os.path.join(work, "debs"),
        "Debug::NoLocking=1",
    ]
    cmd = ["apt-get", "-q"]
    for opt in opts:
        cmd += ["-o", opt]
    return run(cmd + list(args), timeout=timeout)


def _write_release(repo):
    """A flat repository's Release file (unsigned: hosts trust the lab's source explicitly)."""
    lines = [
        "Origin: powernap-lab",
        "Label: powernap-lab",
        "Date: %s" % time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime()),
        "SHA256:",
    ]
    for name in ("Packages", "Packages.gz"):
        with open(os.path.join(repo, name), "rb") as f:
            data = f.read()
        lines.append(" %s %d %s" % (hashlib.sha256(data).hexdigest(), len(data), name))
    with open(os.path.join(repo, "Release"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def _build(suite, packages, image_root, mirror, tmp):
    work = os.path.join(tmp, "apt")
    for sub in ("sources.list.d", "preferences.d", "state/lists/partial", "cache", "debs/partial"):
        os.makedirs(os.path.join(work, sub))
    with open(os.path.join(work, "sources.list"), "w", encoding="utf-8") as f:
        f.write("deb [signed-by=%s] %s %s main\n" % (KEYRING, mirror, suite))
    _apt(work, image_root, "update")
    # --reinstall: the named packages themselves even where the image has them (a test may purge one so that
    # the role installs it), plus whatever they need that the image lacks.
    _apt(work, image_root, "install", "--download-only", "--reinstall", "--yes", "--no-install-recommends", *packages)
    repo = os.path.join(tmp, "repo")
    os.makedirs(repo)
    for deb in glob.glob(os.path.join(work, "debs", "*.deb")):
        os.rename(deb, os.path.join(repo, os.path.basename(deb)))
    shutil.rmtree(work)
    index = run(["dpkg-scanpackages", "--multiversion", "."], timeout=300, env=dict(os.environ, LC_ALL="C"), cwd=repo)
    with open(os.path.join(repo, "Packages"), "w", encoding="utf-8") as f:
        f.write(index.stdout)
    with gzip.open(os.path.join(repo, "Packages.gz"), "wt", encoding="utf-8") as f:
        f.write(index.stdout)
    _write_release(repo)
    return repo


def ensure_repo(suite, packages=DEFAULT_PACKAGES, log=None):
    """Return the cached repository directory of ``suite`` for ``packages``, building it when missing."""
    log = log or (lambda msg: None)
    target = repo_dir(suite, packages)
    if os.path.exists(os.path.join(target, "Release")):
        return target
    image_root = image.ensure_image(log, suite)
    os.makedirs(os.path.join(CACHE_ROOT, "apt"), exist_ok=True)
    with open(os.path.join(CACHE_ROOT, "apt", ".lock"), "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(target, "Release")):
            return target
        mirror = image.mirror_from_apt(suite)
        tmp = "%s.tmp-%d" % (target, os.getpid())
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        start = time.monotonic()
        log("building the lab's apt repository for %s (%s) from %s" % (suite, ", ".join(sorted(packages)), mirror))
        try:
            repo = _build(suite, check_packages(packages), image_root, mirror, tmp)
            os.rename(repo, target + ".new-%d" % os.getpid())
            os.rename(target + ".new-%d" % os.getpid(), target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        count = len(glob.glob(os.path.join(target, "*.deb")))
        log("apt repository %s: %d packages in %.0fs" % (suite, count, time.monotonic() - start))
    return target
