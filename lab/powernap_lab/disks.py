"""Per-host disks: an overlay of the cached image, plus the files that make each host itself."""

import hashlib
import os

from . import aptrepo
from .common import GUEST_NIC_DIR, LabError, run, write_file
from .wol import DEFAULT_STATE, write_state

GUEST_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guest")


def mounts_under(path):
    """Mount points at or below path (deepest first), from /proc/self/mountinfo."""
    path = path.rstrip("/")
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == path or mp.startswith(path + "/"):
                found.append(mp)
    return sorted(set(found), key=lambda p: -p.count("/"))


def is_mounted(path):
    return path.rstrip("/") in mounts_under(path)


def mount_overlay(lab, host, image_root):
    d = lab.host_dir(host)
    for sub in ("upper", "work", "root", "nic"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    root = os.path.join(d, "root")
    if not is_mounted(root):
        opts = "lowerdir=%s,upperdir=%s,workdir=%s" % (image_root, os.path.join(d, "upper"), os.path.join(d, "work"))
        run(["mount", "-t", "overlay", "-o", opts, "overlay-%s" % lab.ns_host(host), root])
    return root


def machine_id_of(lab, host):
    return hashlib.sha256(("%s/%s" % (lab.name, host)).encode()).hexdigest()[:32]


def provision_nic(lab, host):
    """The host's lab-side NIC state (Wake-on-LAN mode), kept by the supervisor."""
    os.makedirs(lab.host_dir(host, "nic"), exist_ok=True)
    nic = lab.host_dir(host, "nic", "wol.json")
    if not os.path.exists(nic):
        write_state(nic, DEFAULT_STATE["wol"], DEFAULT_STATE["sopass"])
    os.chmod(lab.host_dir(host, "nic"), 0o755)


def provision(lab, host, index, all_hosts, pubkey, apt_repo=False):
    """Write the host's identity into its disk (through the overlay, so it lands in the upper dir)."""
    root = lab.host_dir(host, "root")
    # The image's apt source is outside the lab, which hosts cannot reach: the lab's repository replaces it.
    write_file(os.path.join(root, "etc/apt/sources.list"), aptrepo.HOST_SOURCES_LIST)
    lab_source = os.path.join(root, "etc/apt/sources.list.d/powernap-lab.list")
    if apt_repo:
        write_file(lab_source, aptrepo.host_source(lab))
    elif os.path.exists(lab_source):
        os.unlink(lab_source)
    write_file(os.path.join(root, "etc/hostname"), host + "\n")
    machine_id = machine_id_of(lab, host)
    write_file(os.path.join(root, "etc/machine-id"), machine_id + "\n", mode=0o444)
    lines = [
        "127.0.0.1\tlocalhost",
        "127.0.1.1\t%s" % host,
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "%s\tcontroller ups" % lab.controller_lan,
    ]
    lines += ["%s\t%s" % (h["address"], h["name"]) for h in all_hosts]
    write_file(os.path.join(root, "etc/hosts"), "\n".join(lines) + "\n")
    ssh_dir = os.path.join(root, "root/.ssh")
    os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
    write_file(os.path.join(ssh_dir, "authorized_keys"), pubkey, mode=0o600)
    # The guest tools are kept without a shebang in the repo (ansible-test's shebang rule
    # rejects python3 ones); the hosts have only python3, so it is added here.
    for name in ("ethtool", "powernap-lab-suspend"):
        dst = os.path.join(root, "usr/local/sbin", name)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(os.path.join(GUEST_DIR, name + ".py"), encoding="utf-8") as source:
            write_file(dst, "#!/usr/bin/python3\n" + source.read(), mode=0o755)
    os.makedirs(os.path.join(root, GUEST_NIC_DIR.lstrip("/")), exist_ok=True)
    provision_nic(lab, host)


def unmount_all(lab):
    """Unmount everything the lab mounted (all below its runtime dir); lazily as a last resort."""
    left = []
    for mp in mounts_under(lab.run):
        if run(["umount", mp], check=False).returncode != 0 and run(["umount", "-l", mp], check=False).returncode != 0:
            left.append(mp)
    if left:
        raise LabError("could not unmount: " + ", ".join(left))
