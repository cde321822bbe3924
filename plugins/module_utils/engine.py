# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The installed nap engine, driven through its CLI (``--json``): the engine is the one place that
knows its config, hardware lists and how to nap, so modules ask it rather than re-implement it.

``run`` is any callable ``run(argv) -> (rc, stdout, stderr)``: ``AnsibleModule.run_command`` on a
host, or a command over the Ansible connection from an action plugin.  Python 3.8 syntax.
"""

import json
import os
import re

from ansible_collections.powernap.fleet.plugins.module_utils.power import (
    CAN_POWER_OFF,
    CAN_QUERY,
    CAN_SOFT_OFF,
    ON,
    UNKNOWN,
    PowerConnectionError,
    PowerDriver,
    PowerFatalError,
    PowerSettingError,
)

HARDWARE_DIR = "/etc/powernap/hardware.d"
NOT_INSTALLED = (
    "the powernap engine is not installed on this host (no 'powernap' command and no 'python3 -m powernap'); "
    "install it first with the powernap.fleet.powernap role"
)
# Nap states of the modules -> engine action names.
ENGINE_ACTIONS = {
    "powersave": "powersave",
    "suspend": "suspend",
    "hibernate": "hibernate",
    "hybrid": "hybrid-sleep",
    "poweroff": "poweroff",
}


def find_engine(module):
    """The argv prefix that runs the engine CLI on this host, or None when it is absent."""
    binary = module.get_bin_path("powernap")
    if binary:
        return [binary]
    python = module.get_bin_path("python3")
    if python:
        rc, _out, _err = module.run_command([python, "-c", "import powernap"])
        if rc == 0:
            return [python, "-m", "powernap"]
    return None


class EngineCli:
    """Thin, typed wrapper over the engine's commands."""

    def __init__(self, run, prefix=None):
        self.run = run
        self.prefix = list(prefix or ["powernap"])

    def _run(self, *args):
        rc, out, err = self.run(self.prefix + list(args))
        return rc, out or "", err or ""

    def _json(self, *args):
        rc, out, err = self._run(*args)
        if rc != 0:
            raise PowerFatalError("'%s' failed (rc=%d): %s" % (" ".join(args), rc, (err or out).strip()))
        try:
            return json.loads(out)
        except ValueError as exc:
            raise PowerFatalError("'%s' printed no JSON: %s" % (" ".join(args), exc)) from exc

    def status(self):
        return self._json("status", "--json")

    def hwinfo(self):
        return self._json("hwinfo", "--json")

    def now(self, action):
        rc, out, err = self._run("now", action)
        if rc != 0:
            raise PowerSettingError("the engine refused '%s': %s" % (action, (err or out).strip()))
        return out

    def wake(self):
        rc, out, err = self._run("wake")
        if rc != 0:
            raise PowerFatalError("'powernap wake' failed: %s" % (err or out).strip())
        return out

    def check_hardware(self, path):
        """None when the hardware list at ``path`` is valid, else the checker's messages."""
        rc, out, err = self._run("check-config", "--hardware", path)
        if rc == 0:
            return None
        return (out + err).strip() or "check-config failed with rc=%d" % rc


def verdict_denies(verdict, action):
    """The reason the hardware-list verdict forbids ``action``, or None when it is allowed."""
    if not verdict:
        return None
    denied = verdict.get("denied") or {}
    if action in denied:
        return denied[action] or "denied by the hardware lists"
    allowed = verdict.get("allowed_actions")
    if allowed is not None and action not in allowed and action != "powersave":
        return "not among the actions the hardware lists allow on this host (%s)" % ", ".join(allowed or ["none"])
    return None


class EngineDriver(PowerDriver):
    """Power off / nap a host through its own engine; query = does the engine answer."""

    CAPABILITIES = frozenset([CAN_POWER_OFF, CAN_SOFT_OFF, CAN_QUERY])
    name = "engine"

    def __init__(self, cli):
        self.cli = cli

    def power_off(self, soft=True):
        if not soft:
            raise PowerSettingError("the engine only powers off cleanly (soft); use IPMI for a hard power-off")
        return self.nap("poweroff")

    def nap(self, state):
        if state not in ENGINE_ACTIONS:
            raise PowerSettingError("unknown nap state %r" % (state,))
        return self.cli.now(ENGINE_ACTIONS[state])

    def power_query(self):
        try:
            self.cli.status()
        except (PowerFatalError, PowerConnectionError, OSError):
            return UNKNOWN
        return ON


def rtc_alarm_path(root="/"):
    return os.path.join(root, "sys/class/rtc/rtc0/wakealarm")


def set_rtc_alarm(epoch, root="/"):
    """Arm the RTC wake alarm; writing 0 first clears an old alarm (else the kernel answers EBUSY)."""
    path = rtc_alarm_path(root)
    if not os.path.exists(path):
        raise PowerSettingError("this host has no RTC wake alarm (%s missing)" % path)
    with open(path, "w") as handle:
        handle.write("0\n")
    with open(path, "w") as handle:
        handle.write("%d\n" % int(epoch))


# An INI option line: indentation, name, separator, value.
_INI_OPTION_RE = re.compile(r"^(\s*)([^\s=:#;\[][^=:]*?)(\s*[=:]\s*)(\S.*)$")
SECRET_MASK = "********"


def mask_ini(text, secret_names):
    """An engine config's text with the value of every option named in ``secret_names`` masked (for diffs)."""
    lines = []
    for line in (text or "").splitlines(True):
        match = _INI_OPTION_RE.match(line.rstrip("\n"))
        if match and match.group(2) in secret_names:
            line = "%s%s%s%s%s" % (
                match.group(1),
                match.group(2),
                match.group(3),
                SECRET_MASK,
                "\n" if line.endswith("\n") else "",
            )
        lines.append(line)
    return "".join(lines)
