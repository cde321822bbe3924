"""The base images: a debootstrap'ed Debian per suite, built once into a cache keyed by its recipe.

One recipe serves every suite the lab offers (``SUITES``), so the platform claims are tested on the
same kind of host.  ``debootstrap_rootfs`` is the recipe itself, for any builder that needs a Debian
root filesystem (nspawn images here; a VM disk builder can start from the same tree).
"""

import fcntl
import glob
import hashlib
import json
import os
import shutil
import sys
import time

from .common import CACHE_ROOT, LabError, run

# The Debian releases the lab can build hosts from, with the Python each one ships (what the role's
# platform matrix proves the engine and the modules run on).
SUITES = {"bullseye": "3.9", "bookworm": "3.11", "trixie": "3.13"}
# The release of every image built without naming one (lab hosts by default, and any other builder).
SUITE = "bookworm"
# Names a Debian archive uses for its releases (a suite without a -updates/-security suffix): how the
# machine's own Debian mirror is told apart from other apt sources when no source names the suite asked for.
DEBIAN_RELEASES = frozenset(
    list(SUITES) + ["buster", "forky", "duke", "sid", "oldoldstable", "oldstable", "stable", "testing", "unstable"]
)
PACKAGES = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "iproute2",
    "udev",
    # what the nap engine and the tests use inside a host
    "libpam-systemd",
    "procps",
    "iputils-ping",
    "ethtool",
    "kmod",
]
# Units that only slow a container's boot or wake it up at random times.
DISABLE_UNITS = [
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "e2scrub_reap.service",
    "systemd-pstore.service",
    "getty@tty1.service",
]
# Bump when the post-debootstrap steps below change: it is part of the cache key.
RECIPE_VERSION = 2


def check_suite(suite):
    if suite not in SUITES:
        raise LabError("unknown Debian suite %r: the lab builds %s" % (suite, ", ".join(SUITES)))
    return suite


def recipe(suite=SUITE):
    return {
        "suite": check_suite(suite),
        "variant": "minbase",
        "packages": PACKAGES,
        "disable": DISABLE_UNITS,
        "version": RECIPE_VERSION,
    }


def recipe_key(suite=SUITE):
    return hashlib.sha256(json.dumps(recipe(suite), sort_keys=True).encode()).hexdigest()[:16]


def image_dir(suite=SUITE):
    return os.path.join(CACHE_ROOT, "images", "%s-%s" % (suite, recipe_key(suite)))


def rootfs(suite=SUITE):
    return os.path.join(image_dir(suite), "rootfs")


def _deb822_stanzas(text):
    stanza = {}
    key = None
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza, key = {}, None
        elif line[0] in " \t" and key:
            stanza[key] += " " + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            stanza[key] = value.strip()


def apt_sources(root="/etc/apt"):
    """(URI, [suites]) of every enabled binary source in the machine's apt configuration, in apt's order."""
    found = []
    files = [os.path.join(root, "sources.list")] + sorted(glob.glob(os.path.join(root, "sources.list.d", "*.list")))
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split("#", 1)[0].split()
            if len(words) < 3 or words[0] != "deb":
                continue
            if words[1].startswith("["):  # options: deb [arch=amd64] URI suite ...
                while words and not words[0].endswith("]"):
                    words.pop(0)
                words = ["deb"] + words[1:]
            if len(words) >= 3:
                found.append((words[1], [words[2]]))
    for path in sorted(glob.glob(os.path.join(root, "sources.list.d", "*.sources"))):
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError:
            continue
        for st in _deb822_stanzas(text):
            if "deb" not in st.get("types", "").split() or st.get("enabled", "yes").lower() == "no":
                continue
            for uri in st.get("uris", "").split():
                found.append((uri, st.get("suites", "").split()))
    return found


def mirror_from_apt(suite=SUITE, root="/etc/apt"):
    """The Debian archive URI to build ``suite`` from, read from the machine's apt sources.

    A source that names the suite wins; otherwise the machine's own Debian archive (a source for a plain
    Debian release, e.g. ``bookworm`` rather than ``bookworm-security``) serves it, as every Debian
    mirror carries all current releases.  ``POWERNAP_LAB_MIRROR`` overrides both.
    """
    env = os.environ.get("POWERNAP_LAB_MIRROR")
    if env:
        return env
    check_suite(suite)
    sources = apt_sources(root)
    for uri, suites in sources:
        if suite in suites:
            return uri
    for uri, suites in sources:
        if any(s in DEBIAN_RELEASES for s in suites):
            return uri
    raise LabError(
        "no Debian archive found in the apt sources (%s/sources.list, %s/sources.list.d/) to build %s from; "
        "set POWERNAP_LAB_MIRROR to a Debian archive URI" % (root, root, suite)
    )


def _post_install(root):
    for unit in DISABLE_UNITS:
        for link in glob.glob(os.path.join(root, "etc/systemd/system/*.wants", unit)):
            os.unlink(link)
    # Per-host identity (hostname, machine-id, authorized_keys) is written into each host's overlay.
    with open(os.path.join(root, "etc/machine-id"), "w", encoding="utf-8"):
        pass
    for name in ("etc/resolv.conf", "etc/hostname"):
        path = os.path.join(root, name)
        if os.path.islink(path) or os.path.exists(path):
            os.unlink(path)
    with open(os.path.join(root, "etc/resolv.conf"), "w", encoding="utf-8") as f:
        f.write("# powernap lab: no DNS inside the lab, names are in /etc/hosts\n")
    with open(os.path.join(root, "etc/ssh/sshd_config.d/powernap-lab.conf"), "w", encoding="utf-8") as f:
        f.write("PasswordAuthentication no\nPermitRootLogin prohibit-password\nUseDNS no\n")
    os.makedirs(os.path.join(root, "root/.ssh"), mode=0o700, exist_ok=True)
    # Keep the image small: no apt lists or downloaded archives.
    for path in glob.glob(os.path.join(root, "var/cache/apt/archives/*.deb")):
        os.unlink(path)


def debootstrap_rootfs(suite, dest, mirror, packages=None):
    """Build the recipe's Debian root filesystem for ``suite`` into ``dest`` (a new directory)."""
    cmd = [
        "debootstrap",
        "--variant=minbase",
        "--include=" + ",".join(PACKAGES + list(packages or [])),
        check_suite(suite),
        dest,
        mirror,
    ]
    proc = run(cmd, check=False, timeout=1800)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise LabError("debootstrap %s failed (%d):\n%s" % (suite, proc.returncode, tail))
    _post_install(dest)


def ensure_image(log=None, suite=SUITE):
    """Return the cached rootfs of ``suite``, building it (atomically, under a lock) when missing."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    target = image_dir(suite)
    if os.path.isdir(os.path.join(target, "rootfs", "usr")):
        return os.path.join(target, "rootfs")
    os.makedirs(os.path.join(CACHE_ROOT, "images"), exist_ok=True)
    with open(os.path.join(CACHE_ROOT, "images", ".lock"), "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isdir(os.path.join(target, "rootfs", "usr")):
            return os.path.join(target, "rootfs")
        mirror = mirror_from_apt(suite)
        tmp = "%s.tmp-%d" % (target, os.getpid())
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        log("building the lab image (debootstrap %s from %s, takes a minute or two) into %s" % (suite, mirror, target))
        start = time.monotonic()
        try:
            debootstrap_rootfs(suite, os.path.join(tmp, "rootfs"), mirror)
            with open(os.path.join(tmp, "recipe.json"), "w", encoding="utf-8") as f:
                json.dump(dict(recipe(suite), mirror=mirror, built=time.time()), f, indent=2)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log("image %s built in %.0fs" % (suite, time.monotonic() - start))
    return os.path.join(target, "rootfs")
