"""The VM hosts' disk image: the nspawn image's debootstrap recipe plus a kernel, as a bootable disk.

Kept apart from image.py on purpose: the base recipe (suite, packages, post-install) is reused from
there, this module only adds what a machine with its own kernel needs (kernel + initramfs, fstab,
networkd, the per-host identity unit, sleep settings) and turns the tree into an ext4 disk image.
Built once, atomically (temp dir, then rename, under a lock), keyed by a hash of the whole recipe.
"""

import fcntl
import glob
import hashlib
import json
import os
import shutil
import sys
import time

from . import image
from .common import CACHE_ROOT, LabError, run, write_file

# What a VM host needs on top of the base recipe: its own kernel (the initramfs resumes from the
# hibernation image on the swap disk), ipmitool for the in-band BMC (/dev/ipmi0).
VM_PACKAGES = ["linux-image-amd64", "initramfs-tools", "ipmitool", "systemd-timesyncd"]
ROOT_LABEL = "pnlroot"
DISK_SIZE = "3G"
# Bump when the steps below change: it is part of the cache key.
VM_RECIPE_VERSION = 1

# Per-host identity from the kernel command line (pnl.host, pnl.addr, pnl.hosts, pnl.key): one image
# for every VM host, each host's own settings come with its boot (QEMU -append), like cloud-init's
# kernel-command-line datasource, with no writes into the shared image.
IDENTITY_SCRIPT = r"""#!/bin/sh
# powernap lab: this VM host's identity from the kernel command line.
set -eu
host= addr= key= hosts=
for word in $(cat /proc/cmdline); do
  case $word in
    pnl.host=*) host=${word#pnl.host=} ;;
    pnl.addr=*) addr=${word#pnl.addr=} ;;
    pnl.key=*) key=${word#pnl.key=} ;;
    pnl.hosts=*) hosts=${word#pnl.hosts=} ;;
  esac
done
[ -n "$host" ] || exit 0
echo "$host" > /etc/hostname
hostname "$host"
{
  printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$host"
  printf '198.18.0.2\tcontroller ups\n'
  for pair in $(echo "$hosts" | tr ',' ' '); do printf '%s\t%s\n' "${pair#*=}" "${pair%%=*}"; done
} > /etc/hosts
mkdir -p /etc/systemd/network /root/.ssh
chmod 700 /root/.ssh
cat > /etc/systemd/network/10-lab.network <<EOF
[Match]
Name=eth0
[Link]
RequiredForOnline=yes
[Network]
Address=$addr
LinkLocalAddressing=no
IPv6AcceptRA=no
[Route]
Destination=255.255.255.255/32
Scope=link
EOF
if [ -n "$key" ]; then
  echo "$key" | tr ':' ' ' > /root/.ssh/authorized_keys
  chmod 600 /root/.ssh/authorized_keys
fi
"""

IDENTITY_UNIT = """\
[Unit]
Description=powernap lab: host identity from the kernel command line
DefaultDependencies=no
After=local-fs.target
Before=network-pre.target systemd-networkd.service ssh.service sysinit.target
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/powernap-lab-identity

[Install]
WantedBy=sysinit.target
"""


# After an S3 resume the whole ICH9 ACPI PM I/O block (PM1 event/control, GPE0) is gone: QEMU's wakeup
# resets the machine, which sets the LPC bridge's PMBASE (0x40) and ACPI_CNTL (0x44) back to their reset
# values, and SeaBIOS's resume path does not program them again (real firmware restores the chipset on
# resume). The kernel's resume-time ACPI writes (SCI_EN, power button, GPEs) then go nowhere, and the NEXT
# suspend never reaches QEMU: SLP_EN is written to an unmapped port, WAK_STS reads back as 1 and the
# kernel "resumes" at once ("PM: suspend exit" within a second; the RTC alarm and WoL never get a chance).
# This hook plays that firmware part: it saves the LPC ACPI configuration and the GPE0 enables before
# sleeping and writes them back on resume, then re-enables SCI and the power button (the BMC's `power soft`).
RESUME_HOOK = r"""#!/bin/sh
# powernap lab: restore the ICH9 ACPI PM block after a resume (QEMU + SeaBIOS S3 quirk)
lpc=/sys/bus/pci/devices/0000:00:1f.0/config
state=/run/powernap-lab-acpi
[ -e "$lpc" ] || exit 0
gpe0() {  # "first enable port, count": the second half of the GPE0 block holds the enable bits
    r=$(sed -n 's/^ *\([0-9a-f]*\)-\([0-9a-f]*\) : ACPI GPE0_BLK$/\1 \2/p' /proc/ioports)
    [ -n "$r" ] || return 0
    set -- $r
    n=$(( (0x$2 - 0x$1 + 1) / 2 ))
    echo $(( 0x$1 + n )) "$n"
}
case "$1" in
pre)
    mkdir -p "$state"
    dd if="$lpc" of="$state/lpc" bs=8 skip=8 count=1 status=none
    set -- $(gpe0)
    [ -n "$1" ] && dd if=/dev/port of="$state/gpe0_en" bs=1 skip="$1" count="$2" status=none
    ;;
post)
    [ -s "$state/lpc" ] || exit 0
    dd if="$state/lpc" of="$lpc" bs=8 seek=8 count=1 conv=notrunc status=none
    base=$(( $(od -An -tu4 -j 64 -N 4 "$lpc") & 0xff80 ))
    [ "$base" -gt 0 ] && printf '\001' | dd of=/dev/port bs=1 seek=$((base + 4)) status=none  # PM1_CNT.SCI_EN
    set -- $(gpe0)
    [ -n "$1" ] && [ -s "$state/gpe0_en" ] && dd if="$state/gpe0_en" of=/dev/port bs=1 seek="$1" status=none
    echo enable > /sys/firmware/acpi/interrupts/ff_pwr_btn 2>/dev/null
    ;;
esac
exit 0
"""


def vm_recipe():
    return dict(
        image.recipe(),
        vm_packages=VM_PACKAGES,
        vm_version=VM_RECIPE_VERSION,
        disk=DISK_SIZE,
        files=hashlib.sha256((IDENTITY_SCRIPT + IDENTITY_UNIT + RESUME_HOOK).encode()).hexdigest(),
    )


def vm_image_dir():
    key = hashlib.sha256(json.dumps(vm_recipe(), sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(CACHE_ROOT, "images", "%s-vm-%s" % (image.SUITE, key))


def vm_image():
    """Paths of the cached VM image (whether it exists or not): disk, kernel, initrd."""
    d = vm_image_dir()
    return {
        "dir": d,
        "disk": os.path.join(d, "disk.qcow2"),
        "kernel": os.path.join(d, "vmlinuz"),
        "initrd": os.path.join(d, "initrd.img"),
    }


def _vm_post_install(root):
    image._post_install(root)
    write_file(
        os.path.join(root, "etc/fstab"),
        "LABEL=%s / ext4 rw,errors=remount-ro 0 1\n/dev/vdb none swap sw 0 0\n" % ROOT_LABEL,
    )
    write_file(os.path.join(root, "usr/local/sbin/powernap-lab-identity"), IDENTITY_SCRIPT, mode=0o755)
    write_file(os.path.join(root, "etc/systemd/system/powernap-lab-identity.service"), IDENTITY_UNIT)
    write_file(os.path.join(root, "usr/lib/systemd/system-sleep/powernap-lab-acpi"), RESUME_HOOK, mode=0o755)
    wants = os.path.join(root, "etc/systemd/system/sysinit.target.wants")
    os.makedirs(wants, exist_ok=True)
    os.symlink(
        "/etc/systemd/system/powernap-lab-identity.service", os.path.join(wants, "powernap-lab-identity.service")
    )
    for unit, target in (
        ("systemd-networkd.service", "multi-user.target"),
        ("systemd-networkd.socket", "sockets.target"),
    ):
        d = os.path.join(root, "etc/systemd/system/%s.wants" % target)
        os.makedirs(d, exist_ok=True)
        link = os.path.join(d, unit)
        if not os.path.lexists(link):
            os.symlink("/lib/systemd/system/%s" % unit, link)
    # No network time inside the lab (there is no route out); keep timesyncd for its clock file only.
    for link in glob.glob(os.path.join(root, "etc/systemd/system/*.wants/systemd-timesyncd.service")):
        os.unlink(link)
    # Hibernation writes the image, then powers the machine off (QEMU exits) instead of sitting in
    # ACPI S4 with QEMU still running: the lab then tells "hibernated" from "off" by the swap signature.
    write_file(os.path.join(root, "etc/systemd/sleep.conf.d/powernap-lab.conf"), "[Sleep]\nHibernateMode=shutdown\n")
    # The initramfs resumes from the swap disk when the kernel command line says resume=/dev/vdb.
    write_file(os.path.join(root, "etc/initramfs-tools/conf.d/resume"), "RESUME=/dev/vdb\n")


def ensure_vm_image(log=None):
    """Return the cached VM image paths, building them (atomically, under a lock) when missing."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    paths = vm_image()
    target = paths["dir"]
    if os.path.exists(os.path.join(target, "recipe.json")):
        return paths
    os.makedirs(os.path.join(CACHE_ROOT, "images"), exist_ok=True)
    with open(os.path.join(CACHE_ROOT, "images", ".vm-lock"), "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(target, "recipe.json")):
            return paths
        mirror = image.mirror_from_apt()
        tmp = "%s.tmp-%d" % (target, os.getpid())
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        rootfs = os.path.join(tmp, "rootfs")
        log(
            "building the VM image (debootstrap %s + kernel from %s, a few minutes) into %s"
            % (image.SUITE, mirror, target)
        )
        start = time.monotonic()
        try:
            cmd = [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(image.PACKAGES + VM_PACKAGES),
                image.SUITE,
                rootfs,
                mirror,
            ]
            proc = run(cmd, check=False, timeout=2400)
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
                raise LabError("debootstrap (VM image) failed (%d):\n%s" % (proc.returncode, tail))
            _vm_post_install(rootfs)
            # The initramfs was built while the kernel was installed, before the resume setting existed.
            kernels = sorted(glob.glob(os.path.join(rootfs, "boot/vmlinuz-*")))
            if not kernels:
                raise LabError("the VM image has no kernel in /boot")
            version = os.path.basename(kernels[-1])[len("vmlinuz-") :]
            run(["chroot", rootfs, "update-initramfs", "-u", "-k", version], timeout=600)
            shutil.copy(kernels[-1], os.path.join(tmp, "vmlinuz"))
            shutil.copy(os.path.join(rootfs, "boot/initrd.img-" + version), os.path.join(tmp, "initrd.img"))
            raw = os.path.join(tmp, "disk.raw")
            run(["mkfs.ext4", "-q", "-L", ROOT_LABEL, "-d", rootfs, raw, DISK_SIZE], timeout=900)
            run(["qemu-img", "convert", "-O", "qcow2", raw, os.path.join(tmp, "disk.qcow2")], timeout=900)
            os.unlink(raw)
            shutil.rmtree(rootfs)
            with open(os.path.join(tmp, "recipe.json"), "w", encoding="utf-8") as f:
                json.dump(dict(vm_recipe(), mirror=mirror, kernel=version, built=time.time()), f, indent=2)
            os.chmod(tmp, 0o755)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log("VM image built in %.0fs" % (time.monotonic() - start))
    return paths
