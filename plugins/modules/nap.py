#!/usr/bin/python
# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: nap
short_description: Put hosts into powersave, suspend, hibernate or power them off, and confirm they went down
version_added: 0.1.0
description:
  - Naps the targeted host through its installed powernap engine (C(powernap now ACTION)), or powers it off
    through its BMC.
  - The connection dropping as the host goes to sleep is expected, not an error; the action plugin then confirms
    the host really went down (it stops answering, or the BMC reports power off) within O(timeout).
  - Refuses when the host's hardware lists deny the action, and refuses to nap the controller itself (a local
    connection, or a host whose C(/etc/machine-id) is the controller's); other hosts at a loopback address (a
    port-forwarded VM) are napped like any other.
  - A host that cannot be reached counts as down only when its BMC reports power off (then C(changed=false)).
  - Over the engine the module runs pipelined where the connection allows it, because nothing may follow it over
    the connection once the host is about to sleep.
author:
  - powernap.fleet maintainers (@powernap-fleet)
extends_documentation_fragment:
  - powernap.fleet.bmc
  - powernap.fleet.redfish
attributes:
  check_mode:
    support: full
    description: Checks the engine, the hardware-list verdict and the wake alarm, and reports what would happen.
  diff_mode:
    support: none
    description: No file is changed.
  action:
    support: full
    description: The action plugin chooses engine or IPMI, refuses the controller and waits for the host to go down.
  async:
    support: none
    description: Waiting is built in.
  platform:
    support: full
    platforms: posix
    description: The engine path runs on the target host; the IPMI path runs on the controller.
options:
  state:
    description:
      - V(powersave) applies the engine's reversible powersave tweaks (the host stays up).
      - V(suspend), V(hibernate), V(hybrid) (hybrid sleep) and V(poweroff) take the host down.
      - V(awake) leaves powersave and cancels a pending nap (C(powernap wake)); with O(via=ipmi) or O(via=redfish) it
        powers the host on.
    type: str
    required: true
    choices: [powersave, suspend, hibernate, hybrid, poweroff, awake]
  via:
    description:
      - V(engine) asks the host's powernap engine; V(ipmi) and V(redfish) use the BMC over that protocol
        (only O(state=poweroff) and O(state=awake)).
      - V(auto) uses the engine when the host answers, else the BMC for V(poweroff) and V(awake); Redfish when
        O(redfish_host) is set or O(bmc_host) is an V(https://) or V(http://) URL, else IPMI.
    type: str
    choices: [engine, ipmi, redfish, auto]
    default: auto
  wake_at:
    description:
      - Arm the host's RTC wake alarm for this time; seconds since the epoch or C(YYYY-MM-DD HH:MM[:SS]) in the
        host's local time. Mutually exclusive with O(wake_after).
    type: str
  wake_after:
    description:
      - Arm the RTC wake alarm this long from now, e.g. V(90m), V(1h30m), V(3600) (seconds).
    type: str
  delay:
    description:
      - Seconds the engine waits before napping, so that the task returns cleanly first.
    type: int
    default: 2
  timeout:
    description:
      - Seconds the action plugin waits for the host to go down (for O(state=poweroff) over IPMI, for the BMC to
        report power off).
      - A hard limit for the whole task; every BMC call is cut short to end within it.
    type: int
    default: 120
  force:
    description:
      - With O(via=ipmi) or O(via=redfish) and O(state=poweroff), power off hard when the soft (ACPI) power-off
        is refused or the machine is still on at O(timeout).
    type: bool
    default: false
  address:
    description:
      - Address probed to confirm the host went down. Defaults to C(ansible_host).
    type: str
  ssh_port:
    description:
      - TCP port probed on O(address). Defaults to C(ansible_port), else 22.
    type: int
    default: 22
  protect_machine_ids:
    description:
      - Machine IDs (C(/etc/machine-id)) the module refuses to nap. The action plugin adds the controller's own,
        so a play can never put the controller to sleep.
    type: list
    elements: str
    default: []
requirements:
  - the powernap engine on the target (installed by the powernap.fleet.powernap role) for O(via=engine)
  - pyghmi on the controller for O(via=ipmi)
  - sushy on the controller for O(via=redfish)
seealso:
  - module: powernap.fleet.wake
  - module: powernap.fleet.power_info
"""

EXAMPLES = r"""
- name: Suspend the laptops and wake them again in 8 hours
  powernap.fleet.nap:
    state: suspend
    wake_after: 8h

- name: Power off the file servers, hard through the BMC if a clean shutdown does not happen
  powernap.fleet.nap:
    state: poweroff
    via: ipmi
    force: true
    timeout: 300

- name: Apply powersave tweaks now
  powernap.fleet.nap:
    state: powersave

- name: What would happen?
  powernap.fleet.nap:
    state: hibernate
  check_mode: true
"""

RETURN = r"""
state:
  description: The requested state.
  returned: when the options are valid
  type: str
  sample: suspend
via:
  description: V(engine), V(ipmi) or V(redfish), the path actually used.
  returned: when the options are valid and the host is not the controller
  type: str
  sample: engine
action:
  description: Engine action run (C(powernap now ACTION)), or the BMC request sent.
  returned: when something was or would be done
  type: str
  sample: suspend
wake_alarm:
  description: Epoch seconds the RTC wake alarm was set to.
  returned: when O(wake_at) or O(wake_after) is given
  type: int
  sample: 1767261600
engine_state:
  description: The engine's state before the nap (C(awake), C(grace), C(napping)).
  returned: via engine
  type: str
  sample: awake
confirmed_down:
  description:
    - True when the host was seen down (no answer, or BMC power off) after the nap, or was found down already
      (the BMC reports power off). False when the wait timed out.
  returned: when the state takes the host down, not in check mode, and the host was or went down
  type: bool
  sample: true
bmc_power:
  description: The power state the BMC last reported, V(on) or V(off).
  returned: when the BMC was asked (O(via=ipmi) or O(via=redfish), an unreachable host, or confirming O(state=poweroff))
  type: str
  sample: "off"
error:
  description: Failure class; V(auth), V(connection), V(setting) or V(fatal).
  returned: on failure, when the failure has a class
  type: str
  sample: connection
elapsed:
  description: Seconds until the host was seen down (or the task ended).
  returned: always
  type: float
  sample: 7.5
scheduled:
  description: How the nap was scheduled on the host so that the task could return first.
  returned: when a nap was scheduled via the engine
  type: str
  sample: systemd-run unit powernap-nap-1767261600
machine_id:
  description: The host's /etc/machine-id.
  returned: via engine, when readable
  type: str
  sample: 0123456789abcdef0123456789abcdef
"""

import os
import re
import shlex
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.powernap.fleet.plugins.module_utils.common import BMC_SPEC, REDFISH_SPEC
from ansible_collections.powernap.fleet.plugins.module_utils.engine import (
    ENGINE_ACTIONS,
    NOT_INSTALLED,
    EngineCli,
    find_engine,
    set_rtc_alarm,
    verdict_denies,
)
from ansible_collections.powernap.fleet.plugins.module_utils.power import PowerError

DOWN_STATES = ("suspend", "hibernate", "hybrid", "poweroff")
_DURATION = re.compile(r"^\s*(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s?)?\s*$")


def argument_spec():
    spec = {
        "state": {
            "type": "str",
            "required": True,
            "choices": ["powersave", "suspend", "hibernate", "hybrid", "poweroff", "awake"],
        },
        "via": {"type": "str", "default": "auto", "choices": ["engine", "ipmi", "redfish", "auto"]},
        "wake_at": {"type": "str"},
        "wake_after": {"type": "str"},
        "delay": {"type": "int", "default": 2},
        "timeout": {"type": "int", "default": 120},
        "force": {"type": "bool", "default": False},
        "address": {"type": "str"},
        "ssh_port": {"type": "int", "default": 22},
        "protect_machine_ids": {"type": "list", "elements": "str", "default": []},
    }
    spec.update(BMC_SPEC)
    spec.update(REDFISH_SPEC)
    return spec


def parse_duration(text):
    """Seconds in ``90``, ``90s``, ``10m``, ``1h30m``, ``2d``; ValueError otherwise."""
    match = _DURATION.match(str(text))
    if not match or not any(match.groups()):
        raise ValueError("invalid duration %r (examples: 90, 90s, 10m, 1h30m)" % (text,))
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


def wake_epoch(wake_at, wake_after, now):
    """The RTC alarm time for the options, or None."""
    if wake_after:
        return int(now + parse_duration(wake_after))
    if not wake_at:
        return None
    text = str(wake_at).strip()
    if re.match(r"^\d+$", text):
        epoch = int(text)
    else:
        for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"):
            try:
                epoch = int(time.mktime(time.strptime(text, fmt)))
                break
            except ValueError:
                continue
        else:
            raise ValueError("invalid wake_at %r (epoch seconds or YYYY-MM-DD HH:MM[:SS])" % (text,))
    if epoch <= now:
        raise ValueError("wake_at %s is in the past" % text)
    return epoch


def read_machine_id():
    try:
        with open("/etc/machine-id") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def schedule_detached(module, argv, delay):
    """Run ``argv`` after ``delay`` seconds, detached from this connection (it will drop as the host sleeps)."""
    systemd_run = module.get_bin_path("systemd-run")
    if systemd_run and os.path.isdir("/run/systemd/system"):
        unit = "powernap-nap-%d" % int(time.time())
        cmd = [systemd_run, "--quiet", "--unit", unit, "--on-active=%ds" % max(1, delay)] + argv
        rc, out, err = module.run_command(cmd)
        if rc != 0:
            module.fail_json(msg="systemd-run failed to schedule the nap: %s" % (err or out).strip())
        return "systemd-run unit %s" % unit
    # No systemd: a new session (setsid) with no inherited pipes survives the SSH connection closing.
    script = 'sleep "$0"; exec "$@"'
    words = ["setsid", "sh", "-c", script, str(max(1, delay))] + list(argv)
    command = " ".join(shlex.quote(word) for word in words) + " </dev/null >/dev/null 2>&1 &"
    rc, out, err = module.run_command(command, use_unsafe_shell=True)
    if rc != 0:
        module.fail_json(msg="could not schedule the nap: %s" % (err or out).strip())
    return "background process"


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        supports_check_mode=True,
        mutually_exclusive=[("wake_at", "wake_after")],
    )
    params = module.params
    state = params["state"]
    result = {"changed": False, "state": state, "via": "engine"}
    machine_id = read_machine_id()
    if machine_id:
        result["machine_id"] = machine_id
    if machine_id and machine_id in params["protect_machine_ids"]:
        module.fail_json(msg="refusing to nap the controller itself (machine-id %s)" % machine_id, **result)
    if params["via"] in ("ipmi", "redfish"):
        module.fail_json(
            msg="via=%s is handled on the controller by the action plugin, not on the host" % params["via"], **result
        )
    try:
        alarm = wake_epoch(params["wake_at"], params["wake_after"], time.time())
    except ValueError as exc:
        module.fail_json(msg=str(exc), **result)

    prefix = find_engine(module)
    if prefix is None:
        module.fail_json(msg=NOT_INSTALLED, **result)
    cli = EngineCli(module.run_command, prefix)
    try:
        status = cli.status()
    except PowerError as exc:
        module.fail_json(msg="cannot read the engine status: %s" % exc, **result)
    result["engine_state"] = status.get("state")

    if state == "awake":
        result["action"] = "wake"
        powersave = (status.get("powersave") or {}).get("active")
        result["changed"] = bool(powersave) or status.get("state") != "awake"
        if result["changed"] and not module.check_mode:
            try:
                cli.wake()
            except PowerError as exc:
                module.fail_json(msg=str(exc), **result)
        module.exit_json(**result)

    action = ENGINE_ACTIONS[state]
    result["action"] = action
    reason = verdict_denies(status.get("verdict"), action)
    if reason:
        module.fail_json(msg="refused by the hardware lists: %s: %s" % (action, reason), **result)
    if alarm is not None:
        result["wake_alarm"] = alarm

    if state == "powersave":
        result["changed"] = not (status.get("powersave") or {}).get("active")
        if result["changed"] and not module.check_mode:
            try:
                cli.now(action)
            except PowerError as exc:
                module.fail_json(msg=str(exc), **result)
        module.exit_json(**result)

    result["changed"] = True
    if module.check_mode:
        module.exit_json(**result)
    if alarm is not None:
        try:
            set_rtc_alarm(alarm)
        except (PowerError, OSError) as exc:
            module.fail_json(msg="cannot set the RTC wake alarm: %s" % exc, **result)
    result["scheduled"] = schedule_detached(module, cli.prefix + ["now", action], params["delay"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
