#!/usr/bin/python
# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: hwlist
short_description: Manage the powernap engine's hardware allow/deny lists on a host
version_added: 0.1.0
description:
  - Adds, updates or removes C([allow.NAME]) / C([deny.NAME]) entries in a hardware list file under
    C(/etc/powernap/hardware.d/), or removes the whole file.
  - The new file is validated by the engine's own checker (C(powernap check-config --hardware)) before it
    replaces the old one atomically; the engine must be installed (powernap.fleet.powernap role).
  - Returns the host's resulting verdict (C(powernap hwinfo --json)).
author:
  - powernap.fleet maintainers (@powernap-fleet)
attributes:
  check_mode:
    support: full
    description: Validates and reports the change without writing.
  diff_mode:
    support: full
    description: Shows the file before and after.
  platform:
    support: full
    platforms: posix
    description: Runs on the managed host.
options:
  name:
    description:
      - Name of the list file, C(/etc/powernap/hardware.d/NAME.conf).
    type: str
    default: ansible
  path:
    description:
      - Full path of the list file, instead of O(name).
    type: path
  entries:
    description:
      - Entries to add or update (O(state=present)) or to remove (O(state=absent)).
      - O(state=absent) with no entries is refused unless O(remove_list=true), so that an empty list
        (for example from an unset variable) never deletes the whole file by accident.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Entry name (the part after C(allow.) / C(deny.) in the section name).
        type: str
        required: true
      verdict:
        description: Whether the entry allows or denies.
        type: str
        choices: [allow, deny]
        default: deny
      match:
        description:
          - Match keys and their fnmatch patterns (a string or a list of patterns); every key must match.
          - Keys are C(sys_vendor), C(product_name), C(product_version), C(board_vendor), C(board_name),
            C(bios_vendor), C(bios_version), C(cpu_model), C(kernel), C(pci), C(usb), C(nic_driver).
        type: dict
        default: {}
      actions:
        description: Actions the entry allows or denies (C(suspend), C(hibernate), C(hybrid-sleep), ..., or C(*)).
        type: list
        elements: str
      tweaks:
        description: Powersave tweaks the entry allows or denies (tweak types, or C(*)).
        type: list
        elements: str
      reason:
        description: Why; shown by C(powernap hwinfo). Required with O(state=present).
        type: str
  state:
    description:
      - V(present) adds or updates the entries, V(absent) removes them (or the file).
    type: str
    choices: [present, absent]
    default: present
  exclusive:
    description:
      - With O(state=present), remove every entry of the file that is not in O(entries).
    type: bool
    default: false
  remove_list:
    description:
      - With O(state=absent) and no O(entries), remove the whole list file. Refused with O(entries) or
        O(state=present).
    type: bool
    default: false
requirements:
  - the powernap engine on the host
seealso:
  - module: powernap.fleet.power_info
"""

EXAMPLES = r"""
- name: Forbid suspend on ThinkPad X200s with the broken BIOS
  powernap.fleet.hwlist:
    entries:
      - name: x200-s3
        verdict: deny
        match:
          sys_vendor: LENOVO
          product_name: "7459*"
          bios_version: "6DET7*"
        actions: [suspend, hybrid-sleep]
        reason: resume hangs with a black screen (BIOS 3.22)

- name: The site list holds exactly these entries
  powernap.fleet.hwlist:
    name: site
    exclusive: true
    entries:
      - name: nvidia-runtime-pm
        match: {pci: "10de:*"}
        tweaks: [runtime_pm]
        reason: the proprietary driver hangs with runtime PM

- name: Remove one entry
  powernap.fleet.hwlist:
    state: absent
    entries:
      - name: x200-s3
        verdict: deny

- name: Remove the whole list
  powernap.fleet.hwlist:
    name: site
    state: absent
    remove_list: true
"""

RETURN = r"""
path:
  description: The list file.
  returned: always
  type: str
  sample: /etc/powernap/hardware.d/ansible.conf
entries:
  description: Section names in the file after the task.
  returned: always
  type: list
  elements: str
  sample: [deny.x200-s3]
verdict:
  description: The host's verdict after the change, from C(powernap hwinfo --json).
  returned: when the engine reported one
  type: dict
  sample: {"allowed_actions": ["powersave", "poweroff"], "denied": {"suspend": "resume hangs (BIOS 3.22)"}}
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.powernap.fleet.plugins.module_utils.engine import (
    HARDWARE_DIR,
    NOT_INSTALLED,
    EngineCli,
    find_engine,
)
from ansible_collections.powernap.fleet.plugins.module_utils.hwlist import ENTRY_SPEC, parse_sections, plan
from ansible_collections.powernap.fleet.plugins.module_utils.power import PowerError


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "default": "ansible"},
            "path": {"type": "path"},
            "entries": {"type": "list", "elements": "dict", "default": [], "options": ENTRY_SPEC},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "exclusive": {"type": "bool", "default": False},
            "remove_list": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    params = module.params
    path = params["path"] or os.path.join(HARDWARE_DIR, "%s.conf" % params["name"])
    result = {"changed": False, "path": path}
    prefix = find_engine(module)
    if prefix is None:
        module.fail_json(msg=NOT_INSTALLED, **result)
    cli = EngineCli(module.run_command, prefix)

    before = None
    if os.path.exists(path):
        with open(path) as handle:
            before = handle.read()
    try:
        after = plan(before, params["entries"], params["state"], params["exclusive"], params["remove_list"])
    except ValueError as exc:
        module.fail_json(msg=str(exc), **result)
    if after is not None and before is not None and parse_sections(after) == parse_sections(before):
        after = before  # same entries: leave the file (and its comments) alone
    result["changed"] = after != before
    result["entries"] = [name for name, _values in parse_sections(after or "")]
    if module._diff:
        result["diff"] = {"before": before or "", "after": after or "", "before_header": path, "after_header": path}

    if after is not None and result["changed"]:
        # Validate a copy outside hardware.d: the engine must never read a half-checked list.
        handle, check_path = tempfile.mkstemp(suffix=".conf", dir=module.tmpdir)
        with os.fdopen(handle, "w") as out:
            out.write(after)
        problems = cli.check_hardware(check_path)
        if problems:
            # Nothing was written: a refused change is no change.
            result["changed"] = False
            result["entries"] = [name for name, _values in parse_sections(before or "")]
            result.pop("diff", None)
            module.fail_json(
                msg="the engine rejected the new hardware list: %s" % problems.replace(check_path, path), **result
            )
    if result["changed"] and not module.check_mode:
        if after is None:
            os.unlink(path)
        else:
            directory = os.path.dirname(path) or "."
            if not os.path.isdir(directory):
                os.makedirs(directory, 0o755)
            handle, staged = tempfile.mkstemp(prefix=".hwlist-", suffix=".tmp", dir=directory)
            with os.fdopen(handle, "w") as out:
                out.write(after)
            os.chmod(staged, 0o644)
            module.atomic_move(staged, path)
    try:
        report = cli.hwinfo()
        if isinstance(report, dict) and report.get("verdict") is not None:
            result["verdict"] = report["verdict"]
    except PowerError as exc:
        module.warn("could not read the resulting verdict: %s" % exc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
