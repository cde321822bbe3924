#!/usr/bin/python
# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: engine
short_description: Install or verify the powernap engine release, its config, unit, Wake-on-LAN and service in one step
version_added: 0.2.0
description:
  - The one task of the C(powernap.fleet.powernap) role that converges a host; on a host that is already
    right it costs one round trip.
  - Installs the engine release that this collection ships under C(/usr/local/lib/powernap/releases/ID) (ID
    hashes the engine's files and the interpreter) and switches the C(current) link to it atomically; links
    the engine's commands into C(/usr/local/bin). The release is copied from the controller (an archive packed
    once per engine release on the controller) only when the host lacks it.
  - Writes C(/etc/powernap/powernap.conf) (mode 0600) after the engine's own C(check-config) accepted it; on an
    error the live file stays as it was and the task fails naming the section and option. In check mode on a host
    without the engine, the config is checked on the controller with the engine this collection ships.
  - Writes a hardware allow/deny list (O(hardware_list)), validated by the engine, and installs what the engine
    lacks with the host's package manager (O(install_packages)).
  - Installs the C(powernapd) unit with the engine's interpreter, and sets the service's enabled and running
    state (restart on a new release or unit, reload on a new config).
  - Turns on Wake-on-LAN (magic packet, and SecureOn with O(secureon)) on the host's NICs that support it, and
    keeps it on across reboots with a udev rule that matches each NIC by MAC.
  - Diffs (C(--diff)) show every secret option masked, on both sides, so that neither an old nor a new secret
    shows; the option names come from the engine's option tables.
author:
  - powernap.fleet maintainers (@powernap-fleet)
attributes:
  action:
    support: full
    description: The action plugin packs and copies the engine release, installs missing packages with the host's
      package module, and checks the config and hardware list on the controller in check mode on a host without the
      engine.
  check_mode:
    support: full
    description: Reports what would change; the config is validated all the same (on the host, or on the controller
      when the host has no engine yet).
  diff_mode:
    support: full
    description: Shows the release switch and each changed file, with secret values masked on both sides.
  platform:
    support: full
    platforms: posix
    description: Runs on the managed host (Linux with systemd).
options:
  config:
    description:
      - The whole content of C(/etc/powernap/powernap.conf), for example rendered from a profile by the role.
    type: str
    required: true
  python:
    description:
      - The interpreter that runs the engine (3.9 or newer).
      - Empty means C(/usr/bin/python3) when it is 3.9 or newer, else C(/usr/bin/python3.9) (EL 8).
    type: str
    default: ""
  install_packages:
    description:
      - Install what the engine or Wake-on-LAN needs and the host lacks (its Python, C(ethtool)) with the host's
        package manager (apt, dnf or yum), then converge. Check mode lists them in RV(missing_packages).
      - V(false) fails when the engine's Python is missing, and leaves Wake-on-LAN as it is, with a warning, when
        C(ethtool) is.
    type: bool
    default: false
  psycopg:
    description:
      - The host runs the fleet server with a PostgreSQL store, which needs psycopg 3 for the engine's Python.
        With O(install_packages=true), the distribution's package (C(python3-psycopg), EL C(python3-psycopg3)) is
        installed when that Python cannot import C(psycopg).
    type: bool
    default: false
  hardware_list:
    description:
      - Name of the hardware allow/deny list file that O(hardware_entries) go to,
        C(/etc/powernap/hardware.d/NAME.conf). Omitted, no list is touched.
    type: str
  hardware_entries:
    description:
      - Entries of that list, as the C(powernap.fleet.hwlist) module takes them; the list is validated by the
        engine's C(check-config --hardware) before it replaces the old one. No entries remove the list file.
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
        description: Match keys and their fnmatch patterns (a string or a list of patterns); every key must match.
        type: dict
        default: {}
      actions:
        description: Actions the entry allows or denies.
        type: list
        elements: str
      tweaks:
        description: Powersave tweaks the entry allows or denies.
        type: list
        elements: str
      reason:
        description: Why; shown by C(powernap hwinfo).
        type: str
  hardware_exclusive:
    description: Remove every entry of the list file that is not in O(hardware_entries).
    type: bool
    default: true
  remove_server:
    description:
      - Remove the fleet server C(powerwaked) from this host (stop and disable it, remove its unit, config, TLS
        files and registry), for a host that no longer runs it.
    type: bool
    default: false
  wol:
    description:
      - Turn on Wake-on-LAN on the NICs that support it and keep it on with the udev rule
        C(/etc/udev/rules.d/70-powernap-wol.rules) (removed when no NIC supports it).
      - V(false) leaves the NICs and the rule as they are.
    type: bool
    default: true
  wol_interfaces:
    description:
      - The NICs to consider; empty means every Ethernet NIC that is not virtual (bridges, veth, tunnels, ...).
    type: list
    elements: str
    default: []
  wol_ethtool:
    description:
      - The path of ethtool that the udev rule runs.
    type: path
    default: /usr/sbin/ethtool
  secureon:
    description:
      - SecureOn password to set on the NICs (6 bytes as C(xx:xx:xx:xx:xx:xx) or 12 hex digits). A 4-byte password
        cannot be held by a NIC; the NICs then wake on the plain magic packet.
    type: str
    default: ""
  service_enabled:
    description: Whether C(powernapd) starts at boot.
    type: bool
    default: true
  service_state:
    description: Whether C(powernapd) runs.
    type: str
    choices: [started, stopped]
    default: started
  digest:
    description:
      - The digest of the engine release (set by the action plugin from the engine this collection ships).
    type: str
  unit:
    description:
      - The C(powernapd) unit as the engine ships it (set by the action plugin); C(/usr/bin/python3) in its C(Exec)
        lines becomes the engine's interpreter.
    type: str
  secret_options:
    description:
      - Option names whose values are masked in diffs (set by the action plugin from the engine's option tables).
    type: list
    elements: str
    default: []
  archive:
    description:
      - Path on the host of the engine archive (set by the action plugin when the host lacks the release).
    type: path
notes:
  - The config, O(secureon) and every option the engine declares secret never show in the output or a diff.
requirements:
  - systemd, and Python 3.9 or newer for the engine
seealso:
  - module: powernap.fleet.hwlist
"""

EXAMPLES = r"""
- name: Install the engine and run it with this config
  powernap.fleet.engine:
    config: "{{ lookup('ansible.builtin.template', 'powernap.conf.j2') }}"
    secureon: "{{ vault_secureon }}"

- name: Install the engine, stopped and disabled, without touching Wake-on-LAN
  powernap.fleet.engine:
    config: "{{ lookup('ansible.builtin.file', 'files/powernap.conf') }}"
    wol: false
    service_enabled: false
    service_state: stopped
"""

RETURN = r"""
release:
  description: The engine release on the host after the task (or that check mode would install).
  returned: always
  type: str
  sample: 8280a7196239df85
release_changed:
  description: Whether the task installed or switched to this release.
  returned: always
  type: bool
python:
  description: The engine's interpreter (empty when none was found).
  returned: always
  type: str
  sample: /usr/bin/python3
engine_ready:
  description: Whether the engine can run on the host after the task (false only in check mode on a host without it).
  returned: always
  type: bool
missing_packages:
  description: Packages the engine or Wake-on-LAN needs and the host lacked (installed by the task with
    O(install_packages=true), outside check mode).
  returned: always
  type: list
  elements: str
  sample: [ethtool]
package_manager:
  description: The host's package module, C(apt), C(dnf) or C(yum), for the action plugin to install the packages.
  returned: when packages are missing and O(install_packages=true) (between the module and its action plugin)
  type: str
  sample: apt
config:
  description: The config written (or that check mode would write), with the value of every secret option masked.
  returned: when run as a task (the action plugin adds it)
  type: str
hardware_changed:
  description: Whether the hardware list changed (or would).
  returned: always
  type: bool
archive_needed:
  description:
    - The host lacks the release and no O(archive) was given; nothing was changed. The action plugin then copies
      the archive and runs the module again, so a task never returns it.
  returned: never (between the module and its action plugin)
  type: bool
config_changed:
  description: Whether the config file changed (or would).
  returned: always
  type: bool
config_errors:
  description: The engine's C(check-config) errors, C(FILE:LINE - message) lines naming the config or list file.
  returned: when the engine rejected the config or the hardware list
  type: list
  elements: str
checked_on:
  description: Where the config was validated, C(host) or C(controller) (check mode on a host without the engine).
  returned: when the config was validated
  type: str
  sample: host
unit_changed:
  description: Whether the powernapd unit changed (or would).
  returned: always
  type: bool
server_removed:
  description: Whether powerwaked's files were removed (or would be).
  returned: always
  type: bool
service:
  description: The state of powernapd after the task.
  returned: unless the module stopped before it (packages to install first, or the archive to copy)
  type: dict
  contains:
    enabled:
      description: Whether it starts at boot.
      type: bool
      returned: always
    active:
      description: Whether it runs.
      type: bool
      returned: always
    action:
      description: What the task did to it (C(start), C(restart), C(reload), C(stop)), if anything; a reload
        re-reads the config and the hardware lists.
      type: str
      returned: when the task acted on it
wol_nics:
  description: The NICs that wake by magic packet (without any password).
  returned: when O(wol=true) and ethtool is present
  type: list
  elements: dict
  contains:
    name:
      description: Interface name.
      type: str
      returned: always
    mac:
      description: Its MAC address.
      type: str
      returned: always
    supports:
      description: The wake modes it supports (ethtool's letters).
      type: str
      returned: always
    current:
      description: Its wake mode before the task.
      type: str
      returned: always
    wanted:
      description: The wake mode the task sets, C(g) or C(gs).
      type: str
      returned: always
    change:
      description: Whether the task changed its wake mode.
      type: bool
      returned: always
ansible_facts:
  description: Facts about the host's wake NICs.
  returned: when O(wol=true) and ethtool is present
  type: dict
  contains:
    powernap_wol_macs:
      description: The MACs of the NICs that wake by magic packet.
      type: list
      elements: str
      returned: always
    powernap_mac:
      description: >-
        The MAC that the C(powernap.fleet.wake) module wakes the host by, the first of
        RV(ansible_facts.powernap_wol_macs).
      type: str
      returned: when the host has a wake NIC and the inventory sets no C(powernap_mac)
"""

import hashlib
import os
import re
import shutil
import sys
import tarfile
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.powernap.fleet.plugins.module_utils.engine import mask_ini
from ansible_collections.powernap.fleet.plugins.module_utils.hwlist import ENTRY_SPEC, parse_sections, plan
from ansible_collections.powernap.fleet.plugins.module_utils.nic_wol import (
    ethernet_interfaces,
    interface_mac,
    mask_rule,
    plan_nic,
    sopass_of,
    udev_rule,
)

# Where things go; ROOT is "" on a host (the unit tests point it at a scratch directory).
ROOT = ""
PREFIX = "/usr/local/lib/powernap"
BIN_DIR = "/usr/local/bin"
CONFIG_DIR = "/etc/powernap"
CONFIG_FILE = "/etc/powernap/powernap.conf"
UNIT_FILE = "/etc/systemd/system/powernapd.service"
UDEV_RULE = "/etc/udev/rules.d/70-powernap-wol.rules"
HARDWARE_DIR = "/etc/powernap/hardware.d"
PACKAGE_MANAGERS = (("apt-get", "apt"), ("dnf", "dnf"), ("yum", "yum"))
SERVER_UNIT = "/etc/systemd/system/powerwaked.service"
SERVER_FILES = (
    SERVER_UNIT,
    "/etc/powernap/powerwaked.conf",
    "/etc/powernap/powerwaked.crt",
    "/etc/powernap/powerwaked.key",
    "/var/lib/powerwaked",
)
DEFAULT_PYTHONS = ("/usr/bin/python3", "/usr/bin/python3.9")
MIN_PYTHON = (3, 9)
MARKER = ".installed"
_EXEC_PYTHON_RE = re.compile(r"(?m)^(Exec[A-Za-z]*=-?)/usr/bin/python3(?= )")


def path(name):
    return ROOT + name


def read(name):
    try:
        with open(name) as handle:
            return handle.read()
    except OSError:
        return None


def release_id(digest, python):
    """The release directory name: the engine's digest and the interpreter (the wrappers name it)."""
    return hashlib.sha256((digest + python).encode("utf-8")).hexdigest()[:16]


def python_version(module, python):
    if not python or not os.path.isfile(python):
        return None
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        return tuple(sys.version_info[:2])  # the module's own interpreter: no need to ask it
    rc, out, _err = module.run_command([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
    try:
        return tuple(int(part) for part in out.strip().split(".")) if rc == 0 else None
    except ValueError:
        return None


def os_release():
    values = {}
    for line in (read("/etc/os-release") or "").splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip().strip('"')
    return values


def resolve_python(module, wanted):
    """(interpreter, found version) for the engine; the interpreter is '' when none is usable."""
    found = None
    for candidate in [wanted] if wanted else DEFAULT_PYTHONS:
        version = python_version(module, candidate)
        found = found or version
        if version and version >= MIN_PYTHON:
            return candidate, version
    return "", found


def package_manager(module):
    for command, name in PACKAGE_MANAGERS:
        if module.get_bin_path(command):
            return name
    return None


def _red_hat_release():
    """The major VERSION_ID of a RHEL-family host ('8', '9', ...), or None on any other distribution."""
    info = os_release()
    family = (info.get("ID", "") + " " + info.get("ID_LIKE", "")).split()
    if not any(name in ("rhel", "centos", "fedora") for name in family):
        return None
    return info.get("VERSION_ID", "").split(".")[0]


def python_package():
    return "python39" if _red_hat_release() == "8" else "python3"


def psycopg_package(module, python):
    """The package that gives ``python`` psycopg 3, or None when it imports already."""
    rc, _out, _err = module.run_command([python, "-c", "import psycopg"])
    if rc == 0:
        return None
    return "python3-psycopg3" if _red_hat_release() is not None else "python3-psycopg"


def write_file(module, name, content, mode):
    """Replace ``name`` atomically with ``content`` (owner root, ``mode``)."""
    directory = os.path.dirname(name)
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    handle, staged = tempfile.mkstemp(prefix=".powernap-", dir=directory)
    with os.fdopen(handle, "w") as out:
        out.write(content)
    os.chmod(staged, mode)
    module.atomic_move(staged, name)
    os.chmod(name, mode)


def file_mode(name):
    try:
        return os.stat(name).st_mode & 0o7777
    except OSError:
        return None


def link(name, target, check_mode):
    """Point the symlink ``name`` at ``target`` atomically; whether it changed."""
    try:
        if os.readlink(name) == target:
            return False
    except OSError:
        pass
    if not check_mode:
        directory = os.path.dirname(name)
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o755)
        staged = os.path.join(directory, ".%s.powernap-new" % os.path.basename(name))
        if os.path.lexists(staged):
            os.unlink(staged)
        os.symlink(target, staged)
        os.rename(staged, name)
    return True


def unpack_release(module, archive, release_dir, python, marker_text):
    """Unpack the engine archive into ``release_dir`` (staged beside it, then renamed)."""
    parent = os.path.dirname(release_dir)
    if not os.path.isdir(parent):
        os.makedirs(parent, 0o755)
    staged = tempfile.mkdtemp(prefix=".%s-" % os.path.basename(release_dir), dir=parent)
    try:
        with tarfile.open(archive, "r:gz") as bundle:
            for member in bundle.getmembers():
                parts = member.name.split("/")
                if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
                    module.fail_json(msg="the engine archive holds an unexpected member: %s" % member.name)
                target = os.path.join(staged, member.name)
                if member.isdir():
                    if not os.path.isdir(target):
                        os.makedirs(target, 0o755)
                    continue
                if not os.path.isdir(os.path.dirname(target)):
                    os.makedirs(os.path.dirname(target), 0o755)
                content = bundle.extractfile(member).read()
                if parts[0] == "bin":
                    # The wrappers run on the engine's interpreter (EL 8 has no python3.9 at /usr/bin/python3).
                    content = re.sub(b"^#!.*", b"#!" + python.encode("utf-8"), content, count=1)
                with open(target, "wb") as out:
                    out.write(content)
                os.chmod(target, 0o755 if parts[0] == "bin" else 0o644)
        with open(os.path.join(staged, MARKER), "w") as out:
            out.write(marker_text)
        os.chmod(staged, 0o755)
        if os.path.lexists(release_dir):
            shutil.rmtree(release_dir)
        os.rename(staged, release_dir)
    finally:
        if os.path.isdir(staged):
            shutil.rmtree(staged, ignore_errors=True)


def check_config(module, release_dir, python, content, shown_as=CONFIG_FILE, hardware=False):
    """The engine's check-config errors for ``content`` (FILE:LINE - message lines), [] when it is valid."""
    handle, staged = tempfile.mkstemp(prefix=".powernap-check-", suffix=".conf", dir=module.tmpdir)
    with os.fdopen(handle, "w") as out:
        out.write(content)
    os.chmod(staged, 0o600)
    env = {"PYTHONPATH": release_dir, "PYTHONDONTWRITEBYTECODE": "1"}
    argv = [python, "-m", "powernap", "check-config"] + (["--hardware"] if hardware else []) + [staged]
    rc, out, err = module.run_command(argv, environ_update=env)
    os.unlink(staged)
    if rc == 0:
        return []
    lines = [line.replace(staged, shown_as) for line in (out + err).splitlines() if line.strip()]
    return lines or ["check-config failed (rc=%d) and said nothing" % rc]


class Host:
    """One run of the module: what changed, what the diff shows."""

    def __init__(self, module):
        self.module = module
        self.check = module.check_mode
        self.diffs = []
        self.result = {
            "changed": False,
            "release_changed": False,
            "config_changed": False,
            "unit_changed": False,
            "server_removed": False,
            "hardware_changed": False,
            "missing_packages": [],
        }

    def file(self, name, content, mode, shown=None):
        """Make ``name`` hold ``content`` with ``mode``; ``shown`` masks a text for the diff. Whether it changed."""
        shown = shown or (lambda text: text)
        before = read(path(name))
        if before == content and file_mode(path(name)) == mode:
            return False
        if not self.check:
            write_file(self.module, path(name), content, mode)
        self.diffs.append(
            {"before_header": name, "after_header": name, "before": shown(before or ""), "after": shown(content)}
        )
        return True

    def remove(self, name, shown=None):
        shown = shown or (lambda text: text)
        if not os.path.lexists(path(name)):
            return False
        if os.path.isdir(path(name)) and not os.path.islink(path(name)):
            before = "(directory)\n"
            if not self.check:
                shutil.rmtree(path(name))
        else:
            before = shown(read(path(name)) or "")
            if not self.check:
                os.unlink(path(name))
        self.diffs.append({"before_header": name, "after_header": "(absent)", "before": before, "after": ""})
        return True

    def systemctl(self, *args):
        return self.module.run_command(["systemctl"] + list(args))


def install_release(host, params, python):
    module = host.module
    release = release_id(params["digest"], python)
    release_dir = path(os.path.join(PREFIX, "releases", release))
    marker_text = "%s %s\n" % (params["digest"], python)
    installed = read(os.path.join(release_dir, MARKER)) == marker_text
    host.result["release"] = release
    host.result["engine_ready"] = installed or not host.check
    if not installed and not host.check:
        if not params["archive"]:
            return "archive_needed"
        unpack_release(module, params["archive"], release_dir, python, marker_text)
    before = None
    try:
        before = os.readlink(path(PREFIX + "/current"))
    except OSError:
        pass
    switched = link(path(PREFIX + "/current"), "releases/" + release, host.check)
    if switched or not installed:
        host.result["release_changed"] = True
        host.diffs.append(
            {
                "before_header": PREFIX + "/current",
                "after_header": PREFIX + "/current",
                "before": "%s\n" % (before or "(no release)"),
                "after": "releases/%s\n" % release,
            }
        )
        if not host.check:
            prune_releases(release, before)
    changed = link(path(PREFIX + "/powernap"), "current/powernap", host.check)
    commands = sorted(os.listdir(os.path.join(release_dir, "bin"))) if os.path.isdir(release_dir + "/bin") else []
    for command in commands:
        changed |= link(path(os.path.join(BIN_DIR, command)), PREFIX + "/current/bin/" + command, host.check)
    host.result["changed"] |= changed or host.result["release_changed"]
    return release_dir


def prune_releases(release, previous):
    """Remove every release but this one and the one it replaced (a daemon may still run that one)."""
    keep = {release, os.path.basename(previous or "")}
    releases = path(PREFIX + "/releases")
    for name in os.listdir(releases) if os.path.isdir(releases) else []:
        if name not in keep and not name.startswith("."):
            shutil.rmtree(os.path.join(releases, name), ignore_errors=True)


def converge_config(host, params, release_dir, python):
    module = host.module
    for directory in (CONFIG_DIR, CONFIG_DIR + "/conf.d", CONFIG_DIR + "/hardware.d"):
        if not os.path.isdir(path(directory)):
            host.result["changed"] = True
            if not host.check:
                os.makedirs(path(directory), 0o755)
    content = params["config"]
    if read(path(CONFIG_FILE)) == content and file_mode(path(CONFIG_FILE)) == 0o600:
        return
    if host.result["engine_ready"] and os.path.isdir(release_dir):
        errors = check_config(module, release_dir, python, content)
        host.result["checked_on"] = "host"
        if errors:
            module.fail_json(
                msg="the engine rejected the config, so %s was left as it was: %s" % (CONFIG_FILE, "; ".join(errors)),
                config_errors=errors,
                **dict(host.result, changed=False),
            )
    names = set(params["secret_options"])
    host.result["config_changed"] = host.file(CONFIG_FILE, content, 0o600, lambda text: mask_ini(text, names))
    host.result["changed"] |= host.result["config_changed"]


def converge_hardware(host, params, release_dir, python):
    """The role's hardware list: exactly these entries (or merged, without exclusive); none remove the file."""
    module = host.module
    name = os.path.join(HARDWARE_DIR, "%s.conf" % params["hardware_list"])
    entries = params["hardware_entries"]
    if not entries:
        host.result["hardware_changed"] = host.remove(name)
    else:
        before = read(path(name))
        try:
            after = plan(before, entries, "present", params["hardware_exclusive"])
        except ValueError as exc:
            module.fail_json(msg="hardware_entries: %s" % exc, **dict(host.result, changed=False))
        if before is not None and parse_sections(after) == parse_sections(before):
            after = before  # the same entries: the file (and its comments) stays
        if after != before and host.result["engine_ready"] and os.path.isdir(release_dir):
            errors = check_config(module, release_dir, python, after, name, hardware=True)
            if errors:
                module.fail_json(
                    msg="the engine rejected the hardware list, so %s was left as it was: %s"
                    % (name, "; ".join(errors)),
                    config_errors=errors,
                    **dict(host.result, changed=False),
                )
        host.result["hardware_changed"] = host.file(name, after, 0o644)
    host.result["changed"] |= host.result["hardware_changed"]


def converge_unit(host, params, python):
    unit = _EXEC_PYTHON_RE.sub(lambda match: match.group(1) + python, params["unit"] or "")
    if not unit.endswith("\n"):
        unit += "\n"
    host.result["unit_changed"] = host.file(UNIT_FILE, unit, 0o644)
    host.result["changed"] |= host.result["unit_changed"]


def converge_wol(host, params):
    module = host.module
    ethtool = module.get_bin_path("ethtool")
    if not ethtool:
        if not params["install_packages"]:
            module.warn("ethtool is not installed: Wake-on-LAN was left as it is")
        return
    sopass = sopass_of(params["secureon"])  # checked in main() before any change
    sys_net = path("/sys/class/net")
    nics = []
    for name in params["wol_interfaces"] or ethernet_interfaces(sys_net):
        rc, out, _err = module.run_command([ethtool, name])
        nic = plan_nic(name, interface_mac(name, sys_net), out, sopass) if rc == 0 else None
        if nic is None:
            continue
        if nic["change"]:
            host.result["changed"] = True
            if not host.check:
                argv = [ethtool, "-s", name, "wol", nic["wanted"]] + (
                    ["sopass", sopass] if "s" in nic["wanted"] else []
                )
                rc, _out, err = module.run_command(argv)
                if rc != 0:
                    # ethtool's message, never its argv: that holds the password.
                    module.fail_json(msg="ethtool could not set wol %s on %s: %s" % (nic["wanted"], name, err.strip()))
        nics.append(nic)
    host.result["wol_nics"] = nics
    host.result["ansible_facts"] = {"powernap_wol_macs": [nic["mac"] for nic in nics if nic["mac"]]}
    if nics:
        rule = udev_rule(nics, params["wol_ethtool"], sopass)
        host.result["changed"] |= host.file(UDEV_RULE, rule, 0o600 if sopass else 0o644, mask_rule)
    else:
        host.result["changed"] |= host.remove(UDEV_RULE, mask_rule)


def remove_server(host):
    if os.path.exists(path(SERVER_UNIT)) and not host.check:
        host.systemctl("disable", "--now", "powerwaked")
    removed = False
    for name in SERVER_FILES:
        # Secrets (the fleet secret, BMC passwords, the TLS key): the diff names the files, never their content.
        removed |= host.remove(name, lambda text: "(content not shown)\n")
    host.result["server_removed"] = removed
    host.result["changed"] |= removed


def converge_service(host, params):
    result = host.result
    reload_units = result["unit_changed"] or result["server_removed"]
    if reload_units and not host.check:
        host.systemctl("daemon-reload")
    enabled = active = False
    if os.path.exists(path(UNIT_FILE)):
        # One call for both states.
        _rc, out, _err = host.systemctl("show", "powernapd", "--property=UnitFileState,ActiveState")
        states = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        enabled = states.get("UnitFileState") in ("enabled", "enabled-runtime")
        active = states.get("ActiveState") in ("active", "activating", "reloading")
    service = {"enabled": enabled, "active": active}
    if enabled != params["service_enabled"]:
        result["changed"] = True
        service["enabled"] = params["service_enabled"]
        if not host.check:
            run_or_fail(host, "enable" if params["service_enabled"] else "disable", "powernapd")
    wanted_active = params["service_state"] == "started"
    action = None
    if wanted_active and not active:
        action = "start"
    elif wanted_active and (result["release_changed"] or result["unit_changed"]):
        action = "restart"
    elif wanted_active and (result["config_changed"] or result["hardware_changed"]):
        action = "reload"
    elif not wanted_active and active:
        action = "stop"
    if action:
        result["changed"] = True
        service["action"] = action
        service["active"] = wanted_active
        if not host.check:
            run_or_fail(host, action, "powernapd")
    result["service"] = service


def run_or_fail(host, *args):
    rc, out, err = host.systemctl(*args)
    if rc != 0:
        host.module.fail_json(
            msg="systemctl %s failed (rc=%d): %s" % (" ".join(args), rc, (err or out).strip()),
            **dict(host.result, changed=True),
        )


def argument_spec():
    return {
        "config": {"type": "str", "required": True, "no_log": True},
        "python": {"type": "str", "default": ""},
        "install_packages": {"type": "bool", "default": False},
        "psycopg": {"type": "bool", "default": False},
        "hardware_list": {"type": "str"},
        "hardware_entries": {"type": "list", "elements": "dict", "default": [], "options": ENTRY_SPEC},
        "hardware_exclusive": {"type": "bool", "default": True},
        "remove_server": {"type": "bool", "default": False},
        "wol": {"type": "bool", "default": True},
        "wol_interfaces": {"type": "list", "elements": "str", "default": []},
        "wol_ethtool": {"type": "path", "default": "/usr/sbin/ethtool"},
        "secureon": {"type": "str", "default": "", "no_log": True},
        "service_enabled": {"type": "bool", "default": True},
        "service_state": {"type": "str", "default": "started", "choices": ["started", "stopped"]},
        "digest": {"type": "str"},
        "unit": {"type": "str"},
        "secret_options": {"type": "list", "elements": "str", "default": [], "no_log": False},
        "archive": {"type": "path"},
    }


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    params = module.params
    if not params["digest"] or not params["unit"]:
        module.fail_json(msg="digest and unit come from the action plugin: run this module as a task")
    try:
        # A bad password fails the task before anything changes (the message never holds the value).
        sopass_of(params["secureon"])
    except ValueError as exc:
        module.fail_json(msg="secureon: %s" % exc)
    host = Host(module)
    python, version = resolve_python(module, params["python"])
    host.result["python"] = python
    host.result["release"] = ""
    host.result["engine_ready"] = False
    # What the engine, Wake-on-LAN and a PostgreSQL store need and the host lacks: its Python, an ethtool
    # command, psycopg 3.
    lacking = [] if python else [python_package()]
    # The package's own ethtool, where the udev rule runs it at boot (another ethtool on PATH is not enough).
    lacking += ["ethtool"] if params["wol"] and not os.access(path(params["wol_ethtool"]), os.X_OK) else []
    store_package = psycopg_package(module, python) if python and params["psycopg"] else None
    lacking += [store_package] if store_package else []
    host.result["missing_packages"] = lacking
    if lacking and params["install_packages"] and not module.check_mode:
        manager = package_manager(module)
        if manager:
            # The action plugin installs them with this package module, then runs this module again.
            module.exit_json(package_manager=manager, **host.result)
    if not python:
        found = ".".join(str(part) for part in version) if version else "nothing"
        if module.check_mode and params["install_packages"]:
            host.result["changed"] = True  # check mode: it would be installed
            module.exit_json(**host.result)
        module.fail_json(
            msg="the engine needs Python %d.%d+ at %s (found: %s); install %s or set python"
            % (MIN_PYTHON[0], MIN_PYTHON[1], params["python"] or " or ".join(DEFAULT_PYTHONS), found, lacking[0]),
            **host.result,
        )
    # Check mode: they would be installed.
    host.result["changed"] = bool(lacking) and module.check_mode and params["install_packages"]
    release_dir = install_release(host, params, python)
    if release_dir == "archive_needed":
        module.exit_json(archive_needed=True, **host.result)
    converge_config(host, params, release_dir, python)
    if params["hardware_list"]:
        converge_hardware(host, params, release_dir, python)
    converge_unit(host, params, python)
    if params["wol"]:
        converge_wol(host, params)
    if params["remove_server"]:
        remove_server(host)
    converge_service(host, params)
    if module._diff and host.diffs:
        host.result["diff"] = host.diffs
    module.exit_json(**host.result)


if __name__ == "__main__":
    main()
