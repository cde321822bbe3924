"""No secret the role touches shows in its output, at -vvv and with --diff, on a real lab host.

One lab host (lab ``POWERNAP_SECRETS_LAB``, default ``sec``) gets the role with every kind of secret set: the
fleet token (``[server] token``), a nut monitor's ``password``, a wol monitor's ``secureon``, the NIC's SecureOn
password (``powernap_secureon``: ethtool, the udev rule) and, as the segment's fleet server, powerwaked's
``secret``, ``[ipmi] password`` and a host's ``bmc_password`` and ``secureon``. The role runs three times
with ``-vvv --diff``: a fresh install, a change of every secret (the diff would show old and new values) and
a check-mode run with a third set. No value of any set may appear in the output, in any spelling; the host
must hold the second set, so the runs really wrote them.

The same host also checks the merge across groups: in two groups, each with its own
``powernap_config_<group>``, it gets both groups' overrides.
"""

import os
import shutil
import subprocess
import tempfile

import pytest

from .conftest import ANSIBLE_BIN_DIR, REPO, bring_up, tear_down

LAB_NAME = os.environ.get("POWERNAP_SECRETS_LAB", os.environ.get("POWERNAP_LAB_TEST_NAME", "sec") + "s")[:8]
RUN_TIMEOUT = 600


def secrets(tag):
    """One set of secret values, each unlike anything else in the output."""
    return {
        "token": "tok-%s-5f1c9a77e2" % tag,
        "nut_password": "nutpw-%s-8c2e41" % tag,
        "monitor_secureon": "0a:%s:1b:2c:3d:4e" % tag,
        "nic_secureon": "1a:2b:3c:4d:%s:6f" % tag,
        "server_secret": "srvsecret-%s-90ab3c" % tag,
        "ipmi_password": "ipmipw-%s-77d1e0" % tag,
        "bmc_password": "bmcpw-%s-c4a2f9" % tag,
        "host_secureon": "9a:8b:7c:6d:%s:4f" % tag,
    }


def host_vars(values):
    return """---
powernap_secureon: "{nic_secureon}"
powernap_host_config:
  server:
    url: udp://127.0.0.1:7490
    token: "{token}"
  monitor.ups:
    type: nut
    ups: rack1@127.0.0.1
    username: monuser
    password: "{nut_password}"
  monitor.wake:
    type: wol
    secureon: "{monitor_secureon}"
powernap_server: true
powernap_server_config:
  powerwaked:
    secret: "{server_secret}"
    announce: false
  ipmi:
    user: admin
    password: "{ipmi_password}"
  host.h1:
    bmc: 198.19.0.11
    bmc_password: "{bmc_password}"
    secureon: "{host_secureon}"
""".format(**values)


def spellings(value):
    """The value as written, and as a MAC-like password may be rewritten (upper case, other separators)."""
    forms = {value, value.upper()}
    if value.count(":") == 5:
        forms |= {value.replace(":", "-"), value.replace(":", ""), value.replace(":", "").upper()}
    return forms


@pytest.fixture(scope="module")
def secrets_lab():
    handle = bring_up(LAB_NAME, 1)
    inventory = tempfile.mkdtemp(prefix="powernap-secrets-")
    try:
        os.makedirs(os.path.join(inventory, "group_vars"))
        os.makedirs(os.path.join(inventory, "host_vars"))
        shutil.copy(handle.inventory_path, os.path.join(inventory, "hosts.yml"))
        shutil.copy(
            os.path.join(REPO, "molecule", "shared", "inventory", "group_vars", "lab.yml"),
            os.path.join(inventory, "group_vars", "lab.yml"),
        )
        yield handle, inventory
    finally:
        shutil.rmtree(inventory, ignore_errors=True)
        if os.environ.get("POWERNAP_LAB_KEEP") != "1":
            tear_down(LAB_NAME)


def run_site(handle, inventory, values, *extra):
    with open(os.path.join(inventory, "host_vars", "h1.yml"), "w", encoding="utf-8") as f:
        f.write(host_vars(values))
    env = dict(os.environ)
    env["PATH"] = ANSIBLE_BIN_DIR + os.pathsep + env.get("PATH", "")
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", os.path.join(REPO, ".cache", "collections"))
    env.update(ANSIBLE_NOCOLOR="1", NO_COLOR="1", ANSIBLE_FORCE_COLOR="0")
    cmd = [handle.tool, "--name", handle.name, "ctl", "--"]
    cmd += [os.path.join(ANSIBLE_BIN_DIR, "ansible-playbook"), "-i", inventory, "powernap.fleet.site", "-vvv", "--diff"]
    cmd += list(extra)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, "the role failed (%d):\n%s" % (proc.returncode, "\n".join(output.splitlines()[-60:]))
    return output


def leaks(output, *value_sets):
    found = []
    for values in value_sets:
        for name, value in values.items():
            for form in spellings(value):
                if form in output:
                    line = next(ln for ln in output.splitlines() if form in ln)
                    found.append("%s (%s) in: %s" % (name, form, line.strip()[:200]))
    return found


@pytest.mark.lab
def test_no_secret_in_verbose_diff_output(secrets_lab):
    handle, inventory = secrets_lab
    first, second, third = secrets("a1"), secrets("b2"), secrets("c3")

    output = run_site(handle, inventory, first)
    assert leaks(output, first) == [], "secrets shown on a fresh install:\n" + "\n".join(leaks(output, first))
    # The resolved config is still shown at -v, with its secrets masked.
    assert "__powernap_config_shown" in output and "********" in output

    output = run_site(handle, inventory, second)
    found = leaks(output, first, second)
    assert found == [], "secrets shown when they change:\n" + "\n".join(found)
    assert "changed=0" not in output, "the second set of secrets changed nothing: the test proves nothing"

    output = run_site(handle, inventory, third, "--check")
    found = leaks(output, first, second, third)
    assert found == [], "secrets shown in check mode:\n" + "\n".join(found)

    # The host holds the second set: the runs really wrote the secrets they did not show.
    config = handle.exec("h1", ["cat", "/etc/powernap/powernap.conf"]).stdout
    assert second["token"] in config and second["nut_password"] in config
    assert second["monitor_secureon"] in config
    rule = handle.exec("h1", ["cat", "/etc/udev/rules.d/70-powernap-wol.rules"]).stdout
    assert "sopass " + second["nic_secureon"] in rule
    server = handle.exec("h1", ["cat", "/etc/powernap/powerwaked.conf"]).stdout
    assert second["server_secret"] in server and second["bmc_password"] in server
    modes = handle.exec(
        "h1", ["stat", "-c", "%a %n", "/etc/powernap/powernap.conf", "/etc/udev/rules.d/70-powernap-wol.rules"]
    )
    assert all(line.startswith("600 ") for line in modes.stdout.splitlines()), modes.stdout


GROUPS_INVENTORY = """---
all:
  children:
    nightly:
      hosts:
        h1: {}
    backup_window:
      hosts:
        h1: {}
"""


@pytest.mark.lab
def test_a_host_in_two_groups_gets_each_groups_prefixed_overrides(secrets_lab):
    handle, inventory = secrets_lab
    with open(os.path.join(inventory, "groups.yml"), "w", encoding="utf-8") as f:
        f.write(GROUPS_INVENTORY)
    group_vars = {
        "nightly": "powernap_config_nightly:\n  monitor.nightly: {type: process, regex: nightly-job}\n",
        "backup_window": (
            "powernap_config_backup:\n  monitor.backup: {type: process, regex: borg}\n"
            "  monitor.nightly: {regex: nightly-job2}\n"
        ),
    }
    try:
        for group, text in group_vars.items():
            with open(os.path.join(inventory, "group_vars", group + ".yml"), "w", encoding="utf-8") as f:
                f.write("---\n" + text)
        run_site(handle, inventory, secrets("d4"))
        config = handle.exec("h1", ["cat", "/etc/powernap/powernap.conf"]).stdout
        assert "[monitor.backup]" in config and "[monitor.nightly]" in config
        # Merged by variable name: powernap_config_backup, then powernap_config_nightly, which wins.
        assert "regex = nightly-job\n" in config
        assert "powernap_config_backup, powernap_config_nightly, powernap_host_config" in config
    finally:
        os.unlink(os.path.join(inventory, "groups.yml"))
        for group in group_vars:
            os.unlink(os.path.join(inventory, "group_vars", group + ".yml"))
