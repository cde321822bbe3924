"""BMCs (OpenIPMI ipmi_sim, one per host, in the management namespace) and the UPS (NUT upsd + dummy-ups)."""

import os
import subprocess
import time

from . import aptrepo
from .common import (
    BMC_PORT,
    PYTHON,
    TOOL_ENTRY,
    UPS_NAME,
    UPS_PORT,
    LabError,
    forget_pid,
    record_pid,
    stop_pids,
    write_file,
)
from .vm import bmc_serial_port

SIM_EMU = """\
mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
sensor_add 0x20 0 1 0x01 0x01
sensor_set_value 0x20 0 1 0x60 0
mc_enable 0x20
"""

UPS_STATUSES = ("OL", "OB", "OB LB", "OL CHRG", "OB DISCHRG", "OB LB DISCHRG", "LB", "FSD")


def _q(text):
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"')


def write_configs(lab, state):
    """Generate every BMC's and the UPS's configuration under the runtime dir."""
    for h in state["hosts"]:
        d = lab.path("bmc", h["name"])
        os.makedirs(os.path.join(d, "state"), exist_ok=True)
        hook = os.path.join(d, "chassis")
        write_file(
            hook,
            "#!/bin/sh\n# ipmi_sim chassis_control hook for %s of lab %s\n"
            'exec %s %s --name %s bmc-hook %s "$@"\n' % (h["name"], lab.name, PYTHON, TOOL_ENTRY, lab.name, h["name"]),
            mode=0o755,
        )
        guid = ("%08x" % (0x504E0000 + h["index"])) + "0" * 24
        if h.get("kind") == "vm":
            # ipmi_sim is the VM's external BMC (QEMU ipmi-bmc-extern connects to its VM interface): power
            # status is whether the VM is connected, `power soft` an ACPI power-button press in the guest,
            # `power off` QEMU's hard stop, and `power on` runs startcmd, which asks the supervisor to start QEMU.
            power = [
                "  serial 15 127.0.0.1 %d codec VM" % (bmc_serial_port(h["index"])),
                "  startcmd %s" % _q("%s start" % hook),
                "  startnow false",
                "  poweroff_wait 30",
                "  kill_wait 5",
            ]
        else:
            power = ["  chassis_control %s" % _q("%s 0x20" % hook)]
        write_file(
            os.path.join(d, "lan.conf"),
            "\n".join(
                [
                    "name %s" % _q("%s-bmc-%s" % (lab.name, h["name"])),
                    "set_working_mc 0x20",
                    "  startlan 1",
                    "    addr %s %d" % (h["bmc_address"], BMC_PORT),
                    "    priv_limit admin",
                    "    allowed_auths_callback none md2 md5 straight",
                    "    allowed_auths_user md2 md5 straight",
                    "    allowed_auths_operator md2 md5 straight",
                    "    allowed_auths_admin md2 md5 straight",
                    "    guid %s" % guid,
                    "  endlan",
                    *power,
                    '  user 1 false "" "" user 10 none md2 md5 straight',
                    "  user 2 true %s %s admin 10 md2 md5 straight" % (_q(h["bmc_user"]), _q(h["bmc_password"])),
                    "",
                ]
            ),
            mode=0o600,
        )
        write_file(os.path.join(d, "sim.emu"), SIM_EMU)
    d = lab.path("nut")
    os.makedirs(os.path.join(d, "state"), exist_ok=True)
    os.chmod(d, 0o755)
    ups = state["ups"]
    write_file(os.path.join(d, "nut.conf"), "MODE=standalone\n")
    write_file(
        os.path.join(d, "ups.conf"),
        "[%s]\n    driver = dummy-ups\n    port = %s.dev\n    mode = dummy-once\n"
        '    desc = "powernap lab UPS"\n' % (UPS_NAME, UPS_NAME),
    )
    write_file(os.path.join(d, "upsd.conf"), "LISTEN %s %d\nMAXAGE 30\n" % (lab.controller_lan, UPS_PORT))
    write_file(
        os.path.join(d, "upsd.users"),
        "[%s]\n    password = %s\n    actions = SET FSD\n    instcmds = ALL\n"
        "[%s]\n    password = %s\n    upsmon primary\n"
        % (ups["admin_user"], ups["admin_password"], ups["user"], ups["password"]),
        mode=0o600,
    )
    if not os.path.exists(os.path.join(d, UPS_NAME + ".dev")):
        write_ups_status(lab, "OL")


def write_ups_status(lab, status):
    status = " ".join(status.split()).upper()
    if not status or any(
        w not in ("OL", "OB", "LB", "CHRG", "DISCHRG", "FSD", "RB", "BYPASS", "OFF", "CAL") for w in status.split()
    ):
        raise LabError('invalid UPS status %r (e.g. OL, OB, "OB LB")' % status)
    charge = 100 if "OL" in status.split() else (10 if "LB" in status.split() else 80)
    runtime = 3600 if "OL" in status.split() else (120 if "LB" in status.split() else 1800)
    path = lab.path("nut", UPS_NAME + ".dev")
    try:
        previous = int(os.stat(path).st_mtime)
    except OSError:
        previous = 0
    write_file(
        path,
        "ups.status: %s\nbattery.charge: %d\nbattery.runtime: %d\nups.mfr: powernap-lab\n"
        "ups.model: dummy rack UPS\ndevice.type: ups\n" % (status, charge, runtime),
    )
    # dummy-ups re-reads the file when its mtime changes, compared in whole seconds: two
    # writes within one second would look like no change, so move the mtime on a second.
    stamp = max(time.time(), previous + 1)
    os.utime(path, (stamp, stamp))
    return status


def _spawn(sup, role, cmd, env=None, log_name=None):
    log_path = sup.lab.path("logs", (log_name or role) + ".log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ, **(env or {})),
        )
    record_pid(sup.lab, role, proc.pid)
    sup.services[role] = proc
    return proc


def start_all(sup):
    lab = sup.lab
    netns = ["nsenter", "--net=/run/netns/%s" % lab.ns_bmc, "--"]
    for name in sup.hosts:
        d = lab.path("bmc", name)
        _spawn(
            sup,
            "bmc-" + name,
            netns
            + [
                "ipmi_sim",
                "-n",
                "-c",
                os.path.join(d, "lan.conf"),
                "-f",
                os.path.join(d, "sim.emu"),
                "-s",
                os.path.join(d, "state"),
            ],
        )
    d = lab.path("nut")
    env = {"NUT_CONFPATH": d, "NUT_STATEPATH": os.path.join(d, "state"), "NUT_ALTPIDPATH": os.path.join(d, "state")}
    ctl = ["nsenter", "--net=/run/netns/%s" % lab.ns_ctl, "--"]
    _spawn(sup, "ups-driver", ctl + ["/lib/nut/dummy-ups", "-a", UPS_NAME, "-F", "-u", "root"], env)
    sock = os.path.join(d, "state", "dummy-ups-%s" % UPS_NAME)
    deadline = time.monotonic() + 10
    while not os.path.exists(sock) and time.monotonic() < deadline:
        time.sleep(0.05)
    _spawn(sup, "upsd", ctl + ["/lib/nut/upsd", "-F", "-u", "root"], env)
    if sup.state.get("apt_repo"):
        # The lab's apt repository (aptrepo.py), read-only over HTTP on the LAN side of the controller.
        _spawn(
            sup,
            "apt-repo",
            ctl
            + [PYTHON, "-m", "http.server", "--bind", lab.controller_lan, "--directory", sup.state["apt_repo"]]
            + [str(aptrepo.PORT)],
        )


def stop_all(sup):
    procs = dict(sup.services)
    sup.services.clear()
    stop_pids([p.pid for p in procs.values()], timeout=5)
    for role, proc in procs.items():
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        forget_pid(sup.lab, role)
