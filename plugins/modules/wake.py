#!/usr/bin/python
# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: wake
short_description: Wake hosts by Wake-on-LAN, IPMI or Redfish and confirm they are up
version_added: 0.1.0
description:
  - Wakes the targeted host (per-host form, e.g. C(ansible fileservers -m powernap.fleet.wake)) or a list of
    hosts in one task (batch form, O(targets)) by Wake-on-LAN magic packet, IPMI power-on or Redfish
    C(ComputerSystem.Reset).
  - The action plugin runs the work on the controller, or on O(relay) when the target sits on another L2
    segment, and fills unset options from the target's inventory variables (C(powernap_mac),
    C(powernap_bmc_host), C(powernap_bmc_user), ...), so no C(delegate_to) is needed.
  - With C(delegate_to), the wake is sent from the delegate (the controller for C(localhost)) and, with
    O(wait=true), confirmed by probing the host's address (O(probe)) instead of over its connection; the same
    holds for a host whose C(ansible_connection) is C(local).
  - Idempotent; a host that already answers is reported with C(changed=false).
  - With O(wait=true) in the per-host form, success means the host answers over its own Ansible connection;
    in the batch form, that each host completes an SSH handshake.
author:
  - powernap.fleet maintainers (@powernap-fleet)
extends_documentation_fragment:
  - powernap.fleet.wol
  - powernap.fleet.bmc
  - powernap.fleet.redfish
attributes:
  check_mode:
    support: full
    description: Validates every target and reports what would be sent; sends nothing.
  diff_mode:
    support: none
    description: Nothing on a host changes that a diff could show.
  action:
    support: full
    description: The action plugin resolves inventory variables, runs on the controller or relay and waits.
  async:
    support: none
    description: Waiting is built in.
  platform:
    support: full
    platforms: posix
    description: Runs on the controller or the relay host.
options:
  method:
    description:
      - V(wol) sends a magic packet; V(ipmi) powers on through the BMC over IPMI; V(redfish) through the
        BMC's Redfish service (O(redfish_host), else O(bmc_host)), waiting until the system reports C(On).
      - V(auto) takes the first the options give the means for, in this order; Redfish when O(redfish_host)
        is set or O(bmc_host) is an V(https://) or V(http://) URL; IPMI when O(bmc_host) is set; else
        Wake-on-LAN. When the BMC reports the machine on but it does not answer (asleep), a magic packet is
        sent as well.
    type: str
    choices: [auto, wol, ipmi, redfish]
    default: auto
  address:
    description:
      - Address used to check whether the host is up. Defaults to the target's C(ansible_host) (or its inventory name).
    type: str
  ssh_port:
    description:
      - TCP port probed on O(address). Defaults to the target's C(ansible_port), else 22.
    type: int
    default: 22
  relay:
    description:
      - Inventory host on the target's L2 segment that sends the magic packet (and makes the IPMI request) instead
        of the controller (inventory variable C(powernap_relay)). The relay needs this collection's module to run,
        and pyghmi for IPMI.
    type: str
  wait:
    description:
      - Wait until the host is really up. Per-host form; the host answers over its Ansible connection
        (backoff with jitter between tries). Batch form; each host completes an SSH handshake.
    type: bool
    default: false
  timeout:
    description:
      - Hard limit in seconds for the whole wake including O(wait); every BMC call and probe is cut short
        to end within it, whatever O(bmc_timeout) and O(probe_timeout) say.
    type: int
    default: 300
  connect_timeout:
    description:
      - Connection timeout in seconds used for each try while waiting for the host's Ansible connection;
        the connection's own setting is restored afterwards.
      - Sets the connection plugin's C(connection_timeout), or its C(timeout) (the ssh plugin's) when it has none,
        as M(ansible.builtin.reboot) does.
    type: int
    default: 5
  escalate:
    description:
      - When a host woken by Wake-on-LAN has not answered after O(escalate_after) seconds and a BMC is known,
        power it on through the BMC (Redfish when it has a Redfish service, else IPMI).
    type: bool
    default: true
  escalate_after:
    description:
      - Seconds to wait for a Wake-on-LAN target to answer before escalating to IPMI.
    type: float
    default: 30.0
  probe:
    description:
      - How the host's reachability is checked while confirming (and before escalating).
      - V(ssh) completes an SSH key exchange; V(tcp) accepts a TCP connect or refusal; V(icmp) uses ping;
        V(arp) sends an ARP probe (needs root).
    type: str
    choices: [ssh, tcp, icmp, arp]
    default: ssh
  probe_timeout:
    description:
      - Seconds each single probe may take.
    type: float
    default: 2.0
  targets:
    description:
      - Batch form. Wake all these hosts in one task, run once on the controller (or O(relay)).
      - Each item is an inventory host name (its C(powernap_*) variables, C(ansible_host) and C(ansible_port)
        are used) or a dictionary with any of the keys C(name), C(address), C(ssh_port), C(method), C(mac),
        C(secureon), C(broadcast), C(port), C(interface), C(source), C(transport), C(bmc_host), C(bmc_port),
        C(bmc_user), C(bmc_password), C(bmc_kg), C(bmc_privilege), C(redfish_host), C(redfish_system_id),
        C(redfish_validate_certs), C(redfish_ca_path); unset keys take the task's options.
    type: list
    elements: raw
  concurrency:
    description:
      - Batch form. Maximum number of BMCs contacted and hosts probed at the same time.
    type: int
    default: 64
requirements:
  - pyghmi (for IPMI)
  - sushy (for Redfish)
  - paramiko (optional, for the SSH handshake confirmation; a banner check is used without it)
seealso:
  - module: powernap.fleet.nap
  - module: community.general.wakeonlan
  - module: community.general.ipmi_power
  - module: community.general.redfish_command
"""

EXAMPLES = r"""
- name: Wake the targeted hosts from their inventory variables and wait until Ansible reaches them
  powernap.fleet.wake:
    wait: true

- name: Wake one host by MAC with a SecureOn password, from a given interface, on port 7
  powernap.fleet.wake:
    mac: "52:54:00:12:34:56"
    secureon: "{{ vault_secureon }}"
    interface: eth1
    port: 7
    method: wol

- name: Power the file servers on through their BMCs, credentials from module_defaults
  module_defaults:
    group/powernap.fleet.power:
      bmc_user: admin
      bmc_password: "{{ vault_bmc_password }}"
  powernap.fleet.wake:
    method: ipmi

- name: Power a host on through its BMC's Redfish service, trusting the BMCs' private CA
  powernap.fleet.wake:
    method: redfish
    redfish_host: https://bmc-db1.example.net
    redfish_ca_path: /etc/pki/bmc-ca.pem
    bmc_user: admin
    bmc_password: "{{ vault_bmc_password }}"
    wait: true

- name: Wake a whole rack in one task and confirm by SSH handshake
  powernap.fleet.wake:
    targets: "{{ groups['rack1'] }}"
    wait: true
    timeout: 180
  run_once: true
"""

RETURN = r"""
method:
  description: Method chosen for the host (per-host form).
  returned: per-host form, when the host was not already up
  type: str
  sample: wol
woken_by:
  description:
    - What actually woke the host; V(wol), V(ipmi), V(redfish), V(wol+ipmi) or V(wol+redfish) (escalated or asleep
      host), or null.
  returned: per-host form, when the options are valid
  type: str
  sample: wol
confirmed:
  description:
    - True when the host was seen up; already up, answering after the wake, or (with no address to probe)
      reported on by its BMC. False when O(wait) timed out.
  returned: per-host form, when the host was found up or O(wait=true) and something was sent
  type: bool
  sample: true
state_before:
  description: V(up) or V(down) as probed before waking, when an address was known.
  returned: per-host form, when an address is known
  type: str
  sample: down
bmc_power:
  description:
    - The power state the BMC reported (or was asked for), V(on) or V(off).
    - Over Redfish, the state the service reported once the reset took effect (the task waits for it).
  returned: per-host form, when the BMC was asked
  type: str
  sample: "on"
suspended:
  description: True when the BMC reported power on but the host did not answer (asleep), so a magic packet was sent.
  returned: per-host form, when that happened
  type: bool
  sample: true
escalated:
  description:
    - True when the host did not answer a magic packet within O(escalate_after) and was powered on by its BMC.
  returned: per-host form, when that happened
  type: bool
  sample: true
relay:
  description: The inventory host the wake was sent from (O(relay), or the C(delegate_to) host).
  returned: when the wake was sent from a relay or a delegate
  type: str
  sample: h1
error:
  description: Failure class; V(auth), V(connection), V(setting), V(timeout) or V(fatal).
  returned: on failure, when the failure has a class
  type: str
  sample: auth
elapsed:
  description: Seconds from the start of the task until the host was confirmed up (or the task ended).
  returned: always
  type: float
  sample: 12.4
results:
  description: One entry per target, in order (batch form).
  returned: batch form
  type: list
  elements: dict
  contains:
    name:
      description: Target name.
      type: str
      returned: always
    changed:
      description: Whether something was sent to the target.
      type: bool
      returned: always
    failed:
      description: Whether this target failed.
      type: bool
      returned: always
    method:
      description: Method chosen.
      type: str
      returned: when the target was valid
    woken_by:
      description: What was sent.
      type: str
      returned: always
    confirmed:
      description: Seen up (or, with no address to probe, reported on by its BMC); false when O(wait) timed out.
      type: bool
      returned: when the target was found up, or confirmation was attempted
    state_before:
      description: V(up) or V(down) as probed before waking.
      type: str
      returned: when an address is known
    bmc_power:
      description: The power state the BMC reported (or was asked for).
      type: str
      returned: when the BMC was asked
    suspended:
      description: The BMC reported power on but the host did not answer, so a magic packet was sent.
      type: bool
      returned: when that happened
    escalated:
      description: Powered on by its BMC after the magic packet went unanswered.
      type: bool
      returned: when that happened
    msg:
      description: What happened, or why the target failed.
      type: str
      returned: when there is something to say
    error:
      description: Failure class; V(auth), V(connection), V(setting), V(timeout) or V(fatal).
      type: str
      returned: on failure
    elapsed:
      description: Seconds until confirmed or until the run ended.
      type: float
      returned: always
  sample:
    - {"name": "fs1", "changed": true, "failed": false, "method": "wol", "woken_by": "wol", "confirmed": true,
       "elapsed": 9.8}
summary:
  description: Counts over all targets.
  returned: batch form
  type: dict
  sample: {"total": 3, "changed": 2, "failed": 0, "already_up": 1, "confirmed": 3, "by_wol": 2, "by_ipmi": 0,
           "by_redfish": 0}
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.powernap.fleet.plugins.module_utils import ipmi, redfish, wake
from ansible_collections.powernap.fleet.plugins.module_utils.common import BMC_SPEC, REDFISH_SPEC, WOL_SPEC


def argument_spec():
    spec = {
        "method": {"type": "str", "default": "auto", "choices": list(wake.METHODS)},
        "address": {"type": "str"},
        "ssh_port": {"type": "int", "default": 22},
        "relay": {"type": "str"},
        "wait": {"type": "bool", "default": False},
        "timeout": {"type": "int", "default": 300},
        "connect_timeout": {"type": "int", "default": 5},
        "escalate": {"type": "bool", "default": True},
        "escalate_after": {"type": "float", "default": 30.0},
        "probe": {"type": "str", "default": "ssh", "choices": ["ssh", "tcp", "icmp", "arp"]},
        "probe_timeout": {"type": "float", "default": 2.0},
        "targets": {"type": "list", "elements": "raw"},
        "concurrency": {"type": "int", "default": 64},
    }
    spec.update(WOL_SPEC)
    spec.update(BMC_SPEC)
    spec.update(REDFISH_SPEC)
    return spec


def run(params, check_mode):
    """Wake what ``params`` describe; returns the result dict (also used by the action plugin)."""
    defaults = {key: params.get(key) for key in wake.TARGET_OPTIONS if key != "name"}
    batch = params.get("targets") is not None
    targets = params["targets"] if batch else [{"name": params.get("address") or params.get("mac")}]
    for item in targets:
        if not isinstance(item, dict):
            raise ValueError("targets: every item must be a dictionary here, got %r" % (item,))
        unknown = sorted(set(item) - set(wake.TARGET_OPTIONS))
        if unknown:
            raise ValueError("targets: unknown key(s) %s" % ", ".join(unknown))
    results = wake.wake_targets(
        targets,
        defaults,
        repeat=params["repeat"],
        interval=params["interval"],
        wait=params["wait"],
        timeout=float(params["timeout"]),
        escalate=params["escalate"],
        escalate_after=params["escalate_after"],
        probe_method=params["probe"],
        probe_timeout=params["probe_timeout"],
        concurrency=max(1, params["concurrency"]),
        bmc_timeout=params["bmc_timeout"],
        check_mode=check_mode,
    )
    summary = wake.summarize(results)
    if batch:
        result = {"changed": summary["changed"] > 0, "results": results, "summary": summary}
        result["elapsed"] = max([r.get("elapsed") or 0.0 for r in results] or [0.0])
        if summary["failed"]:
            failed = [r for r in results if r.get("failed")]
            result["failed"] = True
            result["msg"] = "%d of %d target(s) failed: %s" % (
                len(failed),
                len(results),
                "; ".join("%s: %s" % (r["name"], r.get("msg")) for r in failed[:20]),
            )
        return result
    result = dict(results[0])
    result.pop("name", None)
    return result


def required_libraries(params):
    """The libraries (pyghmi, sushy) that the BMCs these parameters name need and that are missing."""
    libraries = {"ipmi": ("pyghmi", ipmi.HAS_PYGHMI), "redfish": ("sushy", redfish.HAS_SUSHY)}
    missing = set()
    for item in [params] + [t for t in (params.get("targets") or []) if isinstance(t, dict)]:
        options = dict(params, **{k: v for k, v in item.items() if v is not None})
        method = options.get("method") or "auto"
        if method == "wol":
            continue  # a Wake-on-LAN target escalates to its BMC only when the library is there
        protocol = method if method in wake.BMC_METHODS else wake.auto_method(options, False)
        if protocol in libraries and not libraries[protocol][1]:
            missing.add(libraries[protocol][0])
    return sorted(missing)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        supports_check_mode=True,
        mutually_exclusive=[("targets", "address")],
    )
    params = module.params
    import_errors = {"pyghmi": ipmi.PYGHMI_IMPORT_ERROR, "sushy": redfish.SUSHY_IMPORT_ERROR}
    for library in required_libraries(params):
        module.fail_json(msg=missing_required_lib(library), exception=str(import_errors[library]))
    try:
        result = run(params, module.check_mode)
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    if result.get("failed"):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
