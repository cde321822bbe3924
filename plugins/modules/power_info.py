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
  - With O(server_url), also the fleet server's (C(powerwaked)) view of the host, read from its HTTP API
    (C(GET /v1/hosts/NAME)) by the host itself, including its wake health (the last wake, succeeded, failed or
    never, how long it took, by which method, and whether a failed wake keeps it out of napping).
author:
  - powernap.fleet maintainers (@powernap-fleet)
extends_documentation_fragment:
  - powernap.fleet.bmc
  - powernap.fleet.redfish
options:
  bmc_query:
    description:
      - Ask the host's BMC for its power state, from the controller, and report it in RV(bmc.power) (and, over
        Redfish, the service's own PowerState in RV(bmc.power_state)).
      - The BMC is reached over Redfish when O(redfish_host) is set or O(bmc_host) is an V(https://) or V(http://)
        URL, else over IPMI (as O(powernap.fleet.wake#module:method=auto) does). O(bmc_timeout) bounds each call.
      - A BMC that cannot be asked does not fail the task; RV(bmc.error) says why.
    type: bool
    default: false
  server_url:
    description:
      - Base URL of the segment's fleet server API, for example C(http://nas1.example.net:7490).
      - The engines' form C(udp://HOST[:PORT]) is accepted too and read as C(http://HOST:PORT) (the API shares
        the report port, 7490 by default).
      - Not set, the fleet server is not asked and RV(server) is not returned.
    type: str
  server_host:
    description:
      - Name (or IP or MAC) the fleet server knows the host by.
      - Defaults to the engine's host name (C(powernap status)), or the system host name without the engine; for a
        host that does not answer (asked from the controller), its inventory name.
    type: str
  server_timeout:
    description:
      - Seconds to wait for the fleet server's answer.
    type: float
    default: 5.0
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
  action:
    support: full
    description: The action plugin keeps the BMC options on the controller.
notes:
  - The BMC options are accepted so that C(module_defaults) for C(group/powernap.fleet.power) apply. The action
    plugin checks them on the controller and never sends them to the managed host; the BMC is contacted only with
    O(bmc_query=true), and then from the controller. RV(bmc.configured) tells whether a BMC is known (O(bmc_host),
    O(redfish_host) or their inventory variables).
  - A host that does not answer (asleep or off) is reported unreachable; with O(server_url), the action plugin then
    asks the fleet server about it from the controller, so RV(server) (its wake health, energy saved, policy) is
    still returned, with RV(server.asked_from=controller). Use C(ignore_unreachable) to register it.
  - The fleet server is asked from the managed host (a plain HTTP GET), so the host must reach it. Unsigned
    reads need C(read_auth = no) on the server (the default is V(yes), and the read is refused and RV(server.error)
    says so); the record then carries states, not the host's addresses.
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

- name: What the fleet server knows of the host
  powernap.fleet.power_info:
    server_url: http://nas1.example.net:7490
  register: power_server

- name: Hosts the fleet server has not heard from
  ansible.builtin.debug:
    msg: "{{ inventory_hostname }}: {{ power_server.server.state | default(power_server.server.error) }}"
  when: not power_server.server.found or power_server.server.state == 'unknown'

- name: Hosts whose last wake failed (the fleet server keeps them out of napping)
  ansible.builtin.debug:
    msg: "{{ inventory_hostname }}: {{ power_server.server.wake_health.error }}"
  when: power_server.server.found and (power_server.server.wake_health.marked | default(false))

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
      description: O(bmc_host) or O(redfish_host) was given, or the host's inventory sets C(powernap_bmc_host) or
        C(powernap_redfish_host).
      type: bool
      returned: always
    protocol:
      description: How the BMC is reached; V(redfish) or V(ipmi).
      type: str
      returned: when a BMC is configured
    power:
      description: The power state the BMC reports; V(on), V(off) or V(unknown).
      type: str
      returned: with O(bmc_query=true), when the BMC answered
    power_state:
      description: The Redfish C(PowerState) as the service reports it (C(On), C(Off), C(PoweringOn), ...).
      type: str
      returned: with O(bmc_query=true) over Redfish, when the service answered
    error:
      description: Why the BMC could not be asked.
      type: str
      returned: with O(bmc_query=true), when the BMC could not be asked
    error_kind:
      description: Failure class; V(auth), V(connection), V(setting) or V(fatal).
      type: str
      returned: with O(bmc_query=true), when the BMC could not be asked
  sample: {"present": true, "configured": true, "protocol": "redfish", "power": "on", "power_state": "On"}
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
server:
  description: The fleet server's view of the host (its registry record, C(GET /v1/hosts/NAME)).
  returned: when O(server_url) is given
  type: dict
  contains:
    url:
      description: The API base URL that was asked.
      type: str
      returned: always
    asked_from:
      description: V(controller) when the host did not answer and the action plugin asked the server itself.
      type: str
      returned: when the host is unreachable
    host:
      description: The name the host was looked up by (O(server_host) or its default).
      type: str
      returned: always
    reachable:
      description: Whether the fleet server answered at all.
      type: bool
      returned: always
    found:
      description: Whether the fleet server knows the host.
      type: bool
      returned: always
    error:
      description: Why the record could not be read (server unreachable, host unknown, read refused).
      type: str
      returned: when RV(server.found) is false
    name:
      description: The host's name in the registry.
      type: str
      returned: when found
    state:
      description: Registry state, V(awake), V(grace), V(napping), V(suspending), V(hibernating), V(powering-off),
        V(resumed), V(stopped), V(asleep), V(off), V(waking) or V(unknown).
      type: str
      returned: when found
    since:
      description: When the host entered that state (epoch seconds).
      type: float
      returned: when found
    last_seen:
      description: When the server last heard from the host (epoch seconds), or null if never.
      type: float
      returned: when found
    last_event:
      description: The engine event of the host's last report, or null.
      type: str
      returned: when found
    stage:
      description: The engine's stage in effect as last reported, or null.
      type: int
      returned: when found
    idle_seconds:
      description: The host's idle time as last reported, or null.
      type: float
      returned: when found
    next_wake:
      description: The host's next scheduled wake (epoch seconds), or null.
      type: float
      returned: when found
    engine:
      description: Whether a nap engine has reported for this host (not only static config or the proxy).
      type: bool
      returned: when found
    groups:
      description: The server's groups the host is in.
      type: list
      elements: str
      returned: when found
    macs:
      description: The host's MACs as the server knows them.
      type: list
      elements: str
      returned: when found
    ips:
      description: The host's addresses as the server knows them.
      type: list
      elements: str
      returned: when found
    hold:
      description: The policy that keeps the host down (for example C(ups rack1)), or null.
      type: str
      returned: when found
    wakes:
      description: How many wakes the server has sent the host.
      type: int
      returned: when found
    segment:
      description:
        - The L2 segment of the host in a fleet of C(powerwaked) instances on one PostgreSQL (fleet mode, C(powerwaked)
          18+); its segment's leader sends its wakes. Any instance of the fleet answers for every host.
        - Null from a single server, and for a host whose segment is not known yet.
      type: str
      returned: when found
    energy:
      description:
        - The energy the host saved against staying on, as the server accounts it over the host's state changes
          (C([energy]) watts per state in C(powerwaked.conf)), with the time spent in each power state.
        - Null from a server that does not account energy.
      type: dict
      returned: when found
      contains:
        seconds:
          description: Seconds in each power state, V(on), V(idle), V(powersave), V(suspended) and V(off).
          type: dict
        saved_joules:
          description: Energy saved, in joules.
          type: float
        saved_kwh:
          description: Energy saved, in kWh.
          type: float
        saved_cost:
          description: What the saved energy would have cost at the server's price per kWh.
          type: float
        currency:
          description: The currency of RV(server.energy.saved_cost).
          type: str
        power_state:
          description: The host's power state now.
          type: str
        watts:
          description: What the host draws now, by the server's figures.
          type: float
    policy:
      description:
        - The server's policy gate for the host (C(powerwaked) 16+, null before)
        - V(last_wake) and V(last_nap) (epoch seconds or null), V(transitions_today), V(queued) (a request waiting
          for a rate limit or cooldown, or null), V(decisions) (pending recommend-only decisions, each with V(id),
          V(kind), V(expires)) and V(vetoes) (the active vetoes on the host's groups, each with V(group), V(owner),
          V(reason), V(until), V(since)).
      type: dict
      returned: when found
    wake_health:
      description:
        - The host's wake health, like VMware DPM's "last time exited standby". The last wake attempt, how it
          ended, how long it took and by which method.
        - A host whose wake failed is marked (RV(server.wake_health.marked)) and the server keeps it out of
          napping until a wake succeeds (a retry, a test wake) or an admin clears the mark
          (C(powerwake clear-mark HOST)).
        - Null from a fleet server that does not keep wake health.
      type: dict
      returned: when found
      contains:
        result:
          description: How the last finished wake ended; V(succeeded), V(failed) or V(never) (never woken).
          type: str
          returned: always
        marked:
          description: A wake failed and none has succeeded since; the server does not nap the host.
          type: bool
          returned: always
        method:
          description: How the last attempt woke the host; V(wol), V(ipmi), V(escalated) (WoL, then IPMI) or
            V(none) (no way to wake it).
          type: str
          returned: when a wake was tried
        cause:
          description: Why the last attempt was made (a client's request, a schedule, a retry, a test wake).
          type: str
          returned: when a wake was tried and the server's answer is signed (it may name a client's address, so
            an unsigned read as power_info makes never carries it)
        started:
          description: When the last attempt began (epoch seconds).
          type: float
          returned: when a wake was tried
        ended:
          description: When the result of the last finished attempt was known (epoch seconds).
          type: float
          returned: when a wake has finished
        seconds:
          description: How long the last finished attempt took, to its confirmation or to giving up.
          type: float
          returned: when a wake has finished
        error:
          description: Why the last attempt failed, or null.
          type: str
          returned: when a wake has finished
        test:
          description: Whether the last attempt was a test wake.
          type: bool
          returned: when a wake was tried
        in_flight:
          description: Whether a wake is being confirmed now.
          type: bool
          returned: when a wake was tried
        failures:
          description: Failed attempts in a row.
          type: int
          returned: when a wake has finished
        retries:
          description: Automatic retries made since the host was marked.
          type: int
          returned: when a wake has finished
        retry_at:
          description: When the next automatic retry is due (epoch seconds), or null.
          type: float
          returned: when a wake has finished
        last_success:
          description: When a wake last succeeded (epoch seconds).
          type: float
          returned: when a wake has succeeded
        cleared:
          description: Who last cleared the mark by hand, and when.
          type: str
          returned: when an admin cleared the mark and the server's answer is signed (see RV(server.wake_health.cause))
  sample: {"url": "http://nas1.example.net:7490", "host": "web1", "reachable": true, "found": true,
           "name": "web1", "state": "asleep", "since": 1790000000.0, "last_seen": 1790000000.0,
           "last_event": "action-start", "stage": 2, "idle_seconds": 3600.0, "next_wake": null, "engine": true,
           "groups": ["webservers"], "macs": ["52:54:00:12:34:61"], "ips": ["192.0.2.31"], "hold": null,
           "wakes": 3, "wake_health": {"result": "failed", "marked": true, "method": "wol", "seconds": 45.0,
           "started": 1790000000.0, "ended": 1790000045.0, "error": "not confirmed within 45s"}}
"""

import glob
import os
import socket

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.powernap.fleet.plugins.module_utils.common import BMC_SPEC, REDFISH_SPEC
from ansible_collections.powernap.fleet.plugins.module_utils.engine import EngineCli, find_engine
from ansible_collections.powernap.fleet.plugins.module_utils.fleet_server import server_base_url, server_view
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
    argument_spec = dict(BMC_SPEC)
    argument_spec.update(REDFISH_SPEC)
    argument_spec.update(
        bmc_query={"type": "bool", "default": False},
        server_url={"type": "str"},
        server_host={"type": "str"},
        server_timeout={"type": "float", "default": 5.0},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    server_base = None
    if module.params["server_url"]:
        try:
            server_base = server_base_url(module.params["server_url"])
        except ValueError as exc:
            module.fail_json(msg=str(exc))
    result = {"changed": False}
    result.update(direct_facts(module))
    result["bmc"] = {
        "present": bool(glob.glob("/dev/ipmi*") or glob.glob("/sys/class/ipmi/*")),
        "configured": bool(module.params.get("bmc_host")),
    }
    engine = {"present": False}
    engine_host = None
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
            engine_host = status.get("host")
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
    if server_base is not None:
        host = module.params["server_host"] or engine_host or socket.gethostname()
        result["server"] = server_view(server_base, host, module.params["server_timeout"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
