#!/usr/bin/python
# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: power_info
short_description: Power facts of a host; platform, power source, sleep states, Wake-on-LAN, BMC, engine state
version_added: 0.1.0
description:
  - Reports the platform (physical, VM or container), power source, supported sleep states, per-NIC Wake-on-LAN
    support and setting, whether a BMC is present, and the hardware-list verdict.
  - With the powernap engine installed, its own view is used (C(powernap status --json)), including its state and
    idle time; without it, what can be read directly from C(/sys), C(/proc) and C(systemd-detect-virt) is returned
    and RV(engine.present) is false.
author:
  - powernap.fleet maintainers (@powernap-fleet)
extends_documentation_fragment:
  - powernap.fleet.bmc
attributes:
  check_mode:
    support: full
    description: Read only.
  diff_mode:
    support: none
    description: Read only.
  platform:
    support: full
    platforms: posix
    description: Runs on the managed host.
notes:
  - The BMC options are accepted so that C(module_defaults) for C(group/powernap.fleet.power) apply; the module
    never contacts the BMC and never returns the credentials. RV(bmc.configured) tells whether O(bmc_host) is set.
requirements:
  - none (the powernap engine is used when installed)
seealso:
  - module: powernap.fleet.nap
  - module: powernap.fleet.hwlist
"""

EXAMPLES = r"""
- name: Gather power facts
  powernap.fleet.power_info:
  register: power

- name: Hosts that can be woken by magic packet
  ansible.builtin.debug:
    msg: "{{ power.nics | selectattr('wol', 'search', 'g') | map(attribute='name') | list }}"
"""

RETURN = r"""
platform:
  description: V(physical), V(vm) or V(container).
  returned: always
  type: str
  sample: physical
virt:
  description: The virtualisation or container technology (C(systemd-detect-virt) names), or V(none).
  returned: always
  type: str
  sample: kvm
power_source:
  description: V(ac), V(battery) or V(unknown).
  returned: always
  type: str
  sample: ac
sleep_states:
  description: Sleep states the kernel offers (C(/sys/power/state)), e.g. C(freeze), C(mem), C(disk).
  returned: always
  type: list
  elements: str
  sample: [freeze, mem, disk]
can_hibernate:
  description: Whether hibernation is offered (by the engine's view, or C(disk) in C(/sys/power/state)).
  returned: always
  type: bool
  sample: false
nics:
  description: Physical network interfaces and their Wake-on-LAN support and setting (C(ethtool) letters).
  returned: always
  type: list
  elements: dict
  sample: [{"name": "eth0", "mac": "52:54:00:12:34:56", "driver": "e1000e", "wol_supported": "pumbg", "wol": "g"}]
bmc:
  description: BMC presence.
  returned: always
  type: dict
  contains:
    present:
      description: An IPMI device (C(/dev/ipmi*)) or the IPMI driver is present on the host.
      type: bool
      returned: always
    configured:
      description: O(bmc_host) was given.
      type: bool
      returned: always
  sample: {"present": true, "configured": true}
engine:
  description: The powernap engine's state, from C(powernap status --json).
  returned: always
  type: dict
  contains:
    present:
      description: Whether the engine is installed.
      type: bool
      returned: always
    state:
      description: V(awake), V(grace) or V(napping).
      type: str
      returned: when present
    idle_seconds:
      description: Seconds since the last activity.
      type: float
      returned: when present
    stage:
      description: Current stage, or null.
      type: dict
      returned: when present
    next_action:
      description: Next action and when, or null.
      type: dict
      returned: when present
    powersave:
      description: Whether powersave is active and which tweaks.
      type: dict
      returned: when present
    version:
      description: Engine version.
      type: str
      returned: when present
    running:
      description: Whether the engine daemon answered C(powernap status); when not, platform and verdict come from
        C(powernap hwinfo --json).
      type: bool
      returned: when present
    error:
      description: Why the status could not be read.
      type: str
      returned: when the engine is installed but did not answer
  sample: {"present": true, "state": "awake", "idle_seconds": 42.0}
verdict:
  description: The hardware-list verdict (allowed actions, and denied ones with the reason), from the engine.
  returned: when the engine is present
  type: dict
  sample: {"allowed_actions": ["powersave", "suspend", "poweroff"], "denied": {"hibernate": "no swap"}}
"""

import glob
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.powernap.fleet.plugins.module_utils.common import BMC_SPEC
from ansible_collections.powernap.fleet.plugins.module_utils.engine import EngineCli, find_engine
from ansible_collections.powernap.fleet.plugins.module_utils.power import PowerError

ENGINE_KEYS = ("state", "idle_seconds", "stage", "next_action", "powersave", "version")
VM_VENDORS = ("qemu", "kvm", "vmware", "virtualbox", "innotek", "xen", "microsoft corporation", "bochs", "parallels")


def read(path, default=None):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return default


def detect_virt(module):
    """(platform, virt): systemd-detect-virt when present, else /proc and DMI hints."""
    tool = module.get_bin_path("systemd-detect-virt")
    if tool:
        rc, out, _err = module.run_command([tool, "--container"])
        if rc == 0 and out.strip() not in ("", "none"):
            return "container", out.strip()
        rc, out, _err = module.run_command([tool, "--vm"])
        if rc == 0 and out.strip() not in ("", "none"):
            return "vm", out.strip()
        return "physical", "none"
    # systemd's container managers set the variable in lower case.
    container = read("/run/systemd/container") or os.environ.get("container")  # noqa: SIM112
    if container or os.path.exists("/.dockerenv"):
        return "container", container or "docker"
    vendor = (read("/sys/class/dmi/id/sys_vendor", "") + " " + read("/sys/class/dmi/id/product_name", "")).lower()
    for name in VM_VENDORS:
        if name in vendor:
            return "vm", name.split()[0]
    if "hypervisor" in (read("/proc/cpuinfo", "") or ""):
        return "vm", "vm-other"
    return "physical", "none"


def power_source():
    """TLP's rule: a Mains supply online means AC; else a discharging battery means battery."""
    supplies = glob.glob("/sys/class/power_supply/*")
    kinds = {path: read(os.path.join(path, "type"), "") for path in supplies}
    if any(k == "Mains" and read(os.path.join(p, "online")) == "1" for p, k in kinds.items()):
        return "ac"
    if any(k == "Battery" and read(os.path.join(p, "status")) == "Discharging" for p, k in kinds.items()):
        return "battery"
    if any(k == "Mains" for k in kinds.values()):
        return "battery" if any(k == "Battery" for k in kinds.values()) else "unknown"
    return "unknown"


def ethtool_wol(module, name):
    """(supported, current) Wake-on-LAN letters from ethtool, or (None, None)."""
    tool = module.get_bin_path("ethtool", opt_dirs=["/usr/sbin", "/sbin"])
    if not tool:
        return None, None
    rc, out, _err = module.run_command([tool, name])
    if rc != 0:
        return None, None
    supported = current = None
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Supports Wake-on:"):
            supported = line.split(":", 1)[1].strip()
        elif line.startswith("Wake-on:"):
            current = line.split(":", 1)[1].strip()
    return supported, current


def nics(module):
    found = []
    for path in sorted(glob.glob("/sys/class/net/*")):
        name = os.path.basename(path)
        if not os.path.exists(os.path.join(path, "device")):
            continue  # loopback, bridges, veth without a device: nothing to wake
        driver = (
            os.path.basename(os.path.realpath(os.path.join(path, "device", "driver")))
            if os.path.exists(os.path.join(path, "device", "driver"))
            else None
        )
        supported, current = ethtool_wol(module, name)
        found.append(
            {
                "name": name,
                "mac": read(os.path.join(path, "address")),
                "driver": driver,
                "wol_supported": supported,
                "wol": current,
            }
        )
    return found


def direct_facts(module):
    kind, virt = detect_virt(module)
    states = (read("/sys/power/state", "") or "").split()
    return {
        "platform": kind,
        "virt": virt,
        "power_source": power_source(),
        "sleep_states": states,
        "can_hibernate": "disk" in states,
        "nics": nics(module),
    }


def main():
    module = AnsibleModule(argument_spec=dict(BMC_SPEC), supports_check_mode=True)
    result = {"changed": False}
    result.update(direct_facts(module))
    result["bmc"] = {
        "present": bool(glob.glob("/dev/ipmi*") or glob.glob("/sys/class/ipmi/*")),
        "configured": bool(module.params.get("bmc_host")),
    }
    engine = {"present": False}
    prefix = find_engine(module)
    if prefix is not None:
        engine["present"] = True
        cli = EngineCli(module.run_command, prefix)
        try:
            status = cli.status()
        except PowerError as exc:
            # The daemon is not running: the CLI still reports platform and verdict itself.
            engine["running"] = False
            engine["error"] = str(exc)
            try:
                status = cli.hwinfo()
            except PowerError as hw_exc:
                engine["error"] += "; hwinfo: %s" % hw_exc
                status = {}
        else:
            engine["running"] = True
            for key in ENGINE_KEYS:
                if key in status:
                    engine[key] = status[key]
        platform = status.get("platform") or {}
        for key in ("virt", "power_source", "sleep_states", "can_hibernate"):
            if platform.get(key) is not None:
                result[key] = platform[key]
        if platform.get("nics") is not None:
            result["nics"] = [
                {k: v for k, v in nic.items() if k in ("name", "mac", "driver", "wol_supported", "wol")}
                for nic in platform["nics"]
                if nic.get("physical", True)
            ]
        if platform.get("kind"):
            result["platform"] = platform["kind"]
        if status.get("verdict") is not None:
            result["verdict"] = status["verdict"]
    result["engine"] = engine
    module.exit_json(**result)


if __name__ == "__main__":
    main()
