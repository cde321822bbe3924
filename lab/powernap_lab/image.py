"""The base image: a debootstrap'ed Debian, built once into a cache keyed by its recipe."""

import fcntl
import glob
import hashlib
import json
import os
import shutil
import sys
import time

from .common import CACHE_ROOT, LabError, run

SUITE = "bookworm"
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


def recipe():
    return {
        "suite": SUITE,
        "variant": "minbase",
        "packages": PACKAGES,
        "disable": DISABLE_UNITS,
        "version": RECIPE_VERSION,
    }


def recipe_key():
    return hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:16]


def image_dir():
    return os.path.join(CACHE_ROOT, "images", "%s-%s" % (SUITE, recipe_key()))


def rootfs():
    return os.path.join(image_dir(), "rootfs")


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


def mirror_from_apt(suite=SUITE, root="/etc/apt"):
    """The first Debian archive URI that the machine's apt sources use for ``suite``."""
    env = os.environ.get("POWERNAP_LAB_MIRROR")
    if env:
        return env
    candidates = []
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
                candidates.append((words[1], words[2].split()))
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
                candidates.append((uri, st.get("suites", "").split()))
    for uri, suites in candidates:
        if suite in (suites if isinstance(suites, list) else [suites]):
            return uri
    raise LabError(
        "no apt source for Debian %s found in %s/sources.list or %s/sources.list.d/; "
        "set POWERNAP_LAB_MIRROR to a Debian archive URI" % (suite, root, root)
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


def ensure_image(log=None):
    """Return the cached rootfs, building it (atomically, under a lock) when missing."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    target = image_dir()
    if os.path.isdir(os.path.join(target, "rootfs", "usr")):
        return os.path.join(target, "rootfs")
    os.makedirs(os.path.join(CACHE_ROOT, "images"), exist_ok=True)
    with open(os.path.join(CACHE_ROOT, "images", ".lock"), "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isdir(os.path.join(target, "rootfs", "usr")):
            return os.path.join(target, "rootfs")
        mirror = mirror_from_apt()
        tmp = "%s.tmp-%d" % (target, os.getpid())
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        log("building the lab image (debootstrap %s from %s, takes a minute or two) into %s" % (SUITE, mirror, target))
        start = time.monotonic()
        cmd = [
            "debootstrap",
            "--variant=minbase",
            "--include=" + ",".join(PACKAGES),
            SUITE,
            os.path.join(tmp, "rootfs"),
            mirror,
        ]
        try:
            proc = run(cmd, check=False, timeout=1800)
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
                raise LabError("debootstrap failed (%d):\n%s" % (proc.returncode, tail))
            _post_install(os.path.join(tmp, "rootfs"))
            with open(os.path.join(tmp, "recipe.json"), "w", encoding="utf-8") as f:
                json.dump(dict(recipe(), mirror=mirror, built=time.time()), f, indent=2)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log("image built in %.0fs" % (time.monotonic() - start))
    return os.path.join(target, "rootfs")
