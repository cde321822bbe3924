"""What the role prints and does, run by ``ansible-playbook`` on real lab hosts (two: h1 and h2).

Secrets: no secret the role touches shows in its output, at -vvv and with --diff. The lab host h1 (lab
``POWERNAP_ROLE_OUTPUT_LAB``, default ``POWERNAP_LAB_TEST_NAME`` + ``o``) gets the role with every kind of
secret set: the fleet token (``[server] token``), a nut monitor's ``password``, a wol monitor's
``secureon``, the NIC's SecureOn password (``powernap_secureon``: ethtool, the udev rule) and, as the
segment's fleet server, powerwaked's ``secret``, ``[ipmi] password`` and a host's ``bmc_password`` and
``secureon``. The role runs three times with ``-vvv --diff``: a fresh install, a change of every secret
(the diff would show old and new values) and a check-mode run with a third set. No value of any set may
appear in the output, in any spelling; the host must hold the second set, so the runs really wrote them.
A run that takes the secrets away again shows none of the old values on the "before" side of its diff.

Merge across groups: in two groups, each with its own ``powernap_config_<group>``, h1 gets both groups'
overrides.

Noise and waste: a normal run (nothing to change) lists no skipped task and each step once; a fresh
install packs the engine archive on the controller once for all hosts. Check mode on a host without the
engine still judges the config it would write (on the controller), and fails on a bad one.
"""

import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from .conftest import ANSIBLE_BIN_DIR, REPO, bring_up, tear_down

LAB_NAME = os.environ.get("POWERNAP_ROLE_OUTPUT_LAB", os.environ.get("POWERNAP_LAB_TEST_NAME", "out")[:7] + "o")
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
        # powernap_server_store is a secret (a PostgreSQL URL holds a password); a SQLite path the lab can use
        "server_store": "sqlite:///var/lib/powerwaked/store-%s-5e7d.sqlite3" % tag,
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
powernap_server_store: "{server_store}"
powernap_server_segments:
  lab:
    subnets: [198.18.0.0/24]
  other:
    subnets: [198.51.100.0/24, "2001:db8:1::/64"]
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
    handle = bring_up(LAB_NAME, 2)
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


def run_site(handle, inventory, values, *extra, verbose=True, expect_ok=True):
    """Run site.yml with h1's host_vars from ``values`` (a set of secrets, or the host_vars text itself)."""
    with open(os.path.join(inventory, "host_vars", "h1.yml"), "w", encoding="utf-8") as f:
        f.write(values if isinstance(values, str) else host_vars(values))
    env = dict(os.environ)
    env["PATH"] = ANSIBLE_BIN_DIR + os.pathsep + env.get("PATH", "")
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", os.path.join(REPO, ".cache", "collections"))
    env.update(ANSIBLE_NOCOLOR="1", NO_COLOR="1", ANSIBLE_FORCE_COLOR="0")
    cmd = [handle.tool, "--name", handle.name, "ctl", "--"]
    cmd += [os.path.join(ANSIBLE_BIN_DIR, "ansible-playbook"), "-i", inventory, "powernap.fleet.site"]
    cmd += (["-vvv", "--diff"] if verbose else []) + list(extra)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    output = proc.stdout + proc.stderr
    if not expect_ok:
        return proc.returncode, output
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
    # The config is still shown at -v (the engine module's "config"), with its secrets masked.
    assert '"config": "' in output and "token = ********" in output

    output = run_site(handle, inventory, second)
    found = leaks(output, first, second)
    assert found == [], "secrets shown when they change:\n" + "\n".join(found)
    h1_recap = [line for line in output.splitlines() if re.match(r"^h1 +:", line)]
    assert h1_recap and "changed=0" not in h1_recap[0], "the second set of secrets changed nothing on h1"

    output = run_site(handle, inventory, third, "--check")
    found = leaks(output, first, second, third)
    assert found == [], "secrets shown in check mode:\n" + "\n".join(found)

    # A secret the engine refuses: the play fails naming the option, without the value, and the host keeps
    # its config.
    refused = dict(second, monitor_secureon="zz:b2:1b:2c:3d:4e")
    code, output = run_site(handle, inventory, refused, expect_ok=False)
    assert code != 0 and "secureon" in output, output
    found = leaks(output, first, refused)
    assert found == [], "secrets shown in the error:\n" + "\n".join(found)

    # The host holds the second set: the runs really wrote the secrets they did not show.
    config = handle.exec("h1", ["cat", "/etc/powernap/powernap.conf"]).stdout
    assert second["token"] in config and second["nut_password"] in config
    assert second["monitor_secureon"] in config
    rule = handle.exec("h1", ["cat", "/etc/udev/rules.d/70-powernap-wol.rules"]).stdout
    assert "sopass " + second["nic_secureon"] in rule
    server = handle.exec("h1", ["cat", "/etc/powernap/powerwaked.conf"]).stdout
    assert second["server_secret"] in server and second["bmc_password"] in server
    assert "store = %s" % second["server_store"] in server
    # powernap_server_segments as [segment.NAME] sections (fleet mode's segments; the daemon checked them)
    assert "[segment.lab]\nsubnets = 198.18.0.0/24\n" in server
    assert "[segment.other]\nsubnets = 198.51.100.0/24, 2001:db8:1::/64\n" in server
    store = second["server_store"][len("sqlite://") :]
    deadline = time.monotonic() + 20
    while handle.exec("h1", ["stat", "-c", "%a %U", store], check=False).stdout.strip() != "600 powerwaked":
        assert time.monotonic() < deadline, "powerwaked did not create its store %s, 0600" % store
        time.sleep(0.5)
    modes = handle.exec(
        "h1", ["stat", "-c", "%a %n", "/etc/powernap/powernap.conf", "/etc/udev/rules.d/70-powernap-wol.rules"]
    )
    assert all(line.startswith("600 ") for line in modes.stdout.splitlines()), modes.stdout


# h1's secrets taken away again: no token, no nut password, no SecureOn anywhere, no fleet server.
HOST_VARS_WITHOUT_SECRETS = """---
powernap_host_config:
  monitor.ups:
    type: nut
    ups: rack1@127.0.0.1
    username: monuser
  monitor.wake:
    type: wol
powernap_server: false
"""


@pytest.mark.lab
def test_removing_the_secrets_shows_no_old_value_in_the_diff(secrets_lab):
    """--diff of a run that removes secret options: the old values must not show on the diff's "before" side."""
    handle, inventory = secrets_lab
    values = secrets("b8")
    run_site(handle, inventory, values, verbose=False)
    output = run_site(handle, inventory, HOST_VARS_WITHOUT_SECRETS)
    found = leaks(output, values)
    assert found == [], "old secrets shown when they are removed:\n" + "\n".join(found)
    # The run did change the files (and showed their diffs, masked).
    assert (
        "before: /etc/powernap/powernap.conf" in output and "before: /etc/udev/rules.d/70-powernap-wol.rules" in output
    )
    config = handle.exec("h1", ["cat", "/etc/powernap/powernap.conf"]).stdout
    assert values["token"] not in config and values["nut_password"] not in config
    rule = handle.exec("h1", ["cat", "/etc/udev/rules.d/70-powernap-wol.rules"]).stdout
    assert "sopass" not in rule
    gone = handle.exec("h1", ["test", "-e", "/etc/powernap/powerwaked.conf"], check=False)
    assert gone.returncode != 0, "the fleet server's config stayed"


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


ENGINE_TASK = "Install the engine release, its config, unit and Wake-on-LAN, and run powernapd"


def task_results(output, task):
    """The per-host result lines printed under every header of the role's task named ``task``."""
    results, inside = [], False
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [", "PLAY ")):
            inside = line.startswith("TASK [powernap.fleet.powernap : %s]" % task)
        elif inside and re.match(r"^(ok|changed|skipping|failed|fatal): \[", line):
            results.append(line)
    return results


@pytest.mark.lab
def test_a_normal_run_lists_no_skipped_task_and_packs_the_engine_once(secrets_lab):
    handle, inventory = secrets_lab
    values = secrets("e5")
    run_site(handle, inventory, values, "-e", "powernap_state=absent", verbose=False)

    output = run_site(handle, inventory, values, verbose=False)
    # Both hosts install the engine in one task, with no task of the controller's per host: the engine module's
    # action plugin packs the archive once per engine release, for every host and fork.
    installs = task_results(output, ENGINE_TASK)
    assert len(installs) == 2 and all(line.startswith("changed:") for line in installs), output
    assert "delegate" not in output and "localhost" not in output, output

    output = run_site(handle, inventory, values, verbose=False)
    assert "skipping" not in output, [line for line in output.splitlines() if "skipping" in line]
    recap = [line for line in output.splitlines() if re.match(r"^h[12] +:", line)]
    assert len(recap) == 2 and all("changed=0" in line and "skipped=0" in line for line in recap), recap
    # A host that runs no fleet server has any earlier one removed by the engine module, in its one round trip:
    # no separate removal step (it once ran twice per play).
    assert "Check for the powerwaked unit" not in output, output
    assert len(task_results(output, ENGINE_TASK)) == 2, output  # once per host


def run_ups(handle, inventory, record):
    env = dict(os.environ)
    env["PATH"] = ANSIBLE_BIN_DIR + os.pathsep + env.get("PATH", "")
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", os.path.join(REPO, ".cache", "collections"))
    # Pipelining as in the molecule scenarios: no remote temp directory to clean up on a host that has just
    # been suspended (the cleanup would wait on the frozen host's SSH connection).
    env.update(ANSIBLE_NOCOLOR="1", NO_COLOR="1", ANSIBLE_PIPELINING="1")
    cmd = [handle.tool, "--name", handle.name, "ctl", "--", os.path.join(ANSIBLE_BIN_DIR, "ansible-playbook")]
    cmd += ["-i", inventory, "powernap.fleet.ups", "-e", "powernap_ups=rack1@%s" % handle.controller]
    cmd += ["-e", '{"powernap_ups_groups": ["lab"]}', "-e", "powernap_ups_record=" + record]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, "ups.yml failed (%d):\n%s" % (proc.returncode, "\n".join(output.splitlines()[-60:]))
    return output


def recorded(record):
    if not os.path.exists(record):
        return set()
    with open(record, encoding="utf-8") as f:
        return set(f.read().split())


@pytest.mark.lab
def test_ups_playbook_on_mains_wakes_only_the_hosts_it_shed(secrets_lab):
    """ups.yml runs from cron: on mains, it must not wake a host whose own engine put it to sleep."""
    handle, inventory = secrets_lab
    record = os.path.join(inventory, "ups.shed")
    run_site(handle, inventory, secrets("a7"), verbose=False)  # the engines that nap.yml's module asks
    try:
        handle.set_ups("OB")
        output = run_ups(handle, inventory, record)
        assert "is OB: shed" in output, output
        for host in ("h1", "h2"):
            handle.wait_power(host, "suspended", timeout=60)
        assert recorded(record) == {"h1", "h2"}

        handle.set_ups("OL")
        output = run_ups(handle, inventory, record)
        assert "is OL: restore" in output, output
        for host in ("h1", "h2"):
            handle.wait_booted(host)
        assert recorded(record) == set()

        # Later h1's engine naps it on its own; the next run on mains (cron) leaves it asleep.
        handle.power("h1", "suspend")
        output = run_ups(handle, inventory, record)
        assert "is OL: restore" in output, output
        handle.stays("h1", "suspended", seconds=5)
    finally:
        handle.set_ups("OL")
        for host in ("h1", "h2"):
            if handle.power_state(host) != "on":
                handle.power(host, "on")


@pytest.mark.lab
def test_check_mode_on_a_fresh_host_judges_the_config_it_would_write(secrets_lab):
    handle, inventory = secrets_lab
    values = secrets("f6")
    run_site(handle, inventory, values, "-e", "powernap_state=absent", verbose=False)
    bad = '{"powernap_config": {"stage.1": {"after": "soon"}}}'
    code, output = run_site(handle, inventory, values, "--check", "-e", bad, verbose=False, expect_ok=False)
    assert code != 0, output
    assert "checked on the controller" in output and "'after'" in output and "soon" in output, output
    assert leaks(output, values) == []
    refused = dict(values, monitor_secureon="zz:f6:1b:2c:3d:4e")
    code, output = run_site(handle, inventory, refused, "--check", verbose=False, expect_ok=False)
    assert code != 0 and "checked on the controller" in output and "secureon" in output, output
    assert leaks(output, refused) == [], leaks(output, refused)
    # The hardware lists are judged on the controller too: an entry the engine refuses fails the check run.
    bad_list = (
        '{"powernap_host_hardware_entries": [{"name": "bad", "verdict": "deny", "match": {"sys_vendor": "X"},'
        ' "actions": ["fly"], "reason": "never"}]}'
    )
    code, output = run_site(handle, inventory, values, "--check", "-e", bad_list, verbose=False, expect_ok=False)
    assert code != 0 and "fly" in output, output
    output = run_site(handle, inventory, values, "--check", "-v", verbose=False)
    # Nothing is skipped silently: the config (and list) are judged on the controller, the service change reported.
    assert ENGINE_TASK in output and '"checked_on": "controller"' in output, output
    assert '"engine_ready": false' in output and '"action": "start"' in output, output
    gone = handle.exec("h1", ["test", "-e", "/etc/powernap/powernap.conf"], check=False)
    assert gone.returncode != 0, "check mode wrote the config"
    gone = handle.exec("h1", ["test", "-e", "/etc/powernap/hardware.d"], check=False)
    assert gone.returncode != 0, "check mode created the hardware lists"
