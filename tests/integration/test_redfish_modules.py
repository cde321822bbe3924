"""wake, nap and power_info over Redfish, cross-checked with community.general's redfish modules.

Everything runs in a network namespace this test creates: the Redfish emulator on its loopback (TLS and
authentication on), and ansible-playbook against inventory hosts whose addresses have no route there, so
the only thing the modules can reach is the emulator and no packet can leave the namespace.  Power states
are read back from the emulator by a plain GET of our own, and by community.general.redfish_info.
"""

import json
import os
import subprocess
import textwrap

import pytest

from .conftest import ANSIBLE_BIN_DIR, require_root
from .redfish_emulator import PASSWORD, REPO, USER, RedfishEmulator

SYSTEMS = ("rf1", "rf2", "rf3")
COLLECTIONS = os.pathsep.join(
    [os.path.join(REPO, ".cache", "collections"), os.path.join(REPO, ".cache", "community-general")]
)


@pytest.fixture(scope="module")
def netns():
    require_root()
    name = "pnrf%d" % (os.getpid() % 100000)
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=30)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


@pytest.fixture(scope="module")
def emulator(netns, tmp_path_factory):
    service = RedfishEmulator(str(tmp_path_factory.mktemp("redfish-mod")), systems=SYSTEMS, netns=netns)
    with service:
        yield service


@pytest.fixture(scope="module")
def inventory(emulator, tmp_path_factory):
    path = tmp_path_factory.mktemp("inv") / "hosts.yml"
    hosts = {}
    for index, name in enumerate(SYSTEMS):
        hosts[name] = {
            # No route in the namespace: a probe of the host fails at once and sends nothing.
            "ansible_host": "198.18.99.%d" % (10 + index),
            "powernap_redfish_host": emulator.url,
            "powernap_redfish_system_id": emulator.systems[name],
            "powernap_redfish_ca_path": emulator.cert,
            "powernap_bmc_user": USER,
            "powernap_bmc_password": PASSWORD,
        }
    path.write_text(json.dumps({"all": {"hosts": hosts}}))
    return str(path)


def playbook(netns, inventory, tmp_path, body, check=True):
    play = tmp_path / "play.yml"
    play.write_text(textwrap.dedent(body))
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
        ANSIBLE_HOST_KEY_CHECKING="False",
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"),
    )
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, os.path.join(ANSIBLE_BIN_DIR, "ansible-playbook"), "-i", inventory, str(play)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    if check and proc.returncode != 0:
        pytest.fail("ansible-playbook failed (%d):\n%s\n%s" % (proc.returncode, proc.stdout[-6000:], proc.stderr))
    out = json.loads(proc.stdout)
    return {
        task["task"]["name"]: dict(task["hosts"]) for play_result in out["plays"] for task in play_result["tasks"]
    }, proc


def test_wake_and_nap_over_redfish_are_confirmed_and_agree_with_community_general(netns, emulator, inventory, tmp_path):
    results, _ = playbook(
        netns,
        inventory,
        tmp_path,
        """\
        - hosts: rf1
          gather_facts: false
          tasks:
            - name: wake
              powernap.fleet.wake:
                probe: tcp
            - name: info
              powernap.fleet.power_info:
                bmc_query: true
              delegate_to: localhost
              vars:
                ansible_connection: local
            - name: cg
              community.general.redfish_info:
                category: Systems
                command: GetSystemInventory
                baseuri: "{{ powernap_redfish_host | urlsplit('netloc') }}"
                username: "{{ powernap_bmc_user }}"
                password: "{{ powernap_bmc_password }}"
                ca_path: "{{ powernap_redfish_ca_path }}"
              delegate_to: localhost
            - name: nap
              powernap.fleet.nap:
                state: poweroff
                via: redfish
                timeout: 60
            - name: nap again
              powernap.fleet.nap:
                state: poweroff
                via: redfish
        """,
    )
    woke = results["wake"]["rf1"]
    assert woke["changed"] is True and woke["woken_by"] == "redfish" and woke["method"] == "redfish"
    # Confirmed: the wake returned only after the service itself reported On.
    assert woke["bmc_power"] == "on"
    bmc = results["info"]["rf1"]["bmc"]
    assert bmc["protocol"] == "redfish" and bmc["power"] == "on" and bmc["power_state"] == "On"
    entries = results["cg"]["rf1"]["redfish_facts"]["system"]["entries"]
    seen = {data["Id"]: data["PowerState"] for _, data in entries}
    assert seen[emulator.systems["rf1"]] == "On"  # community.general sees what we did
    napped = results["nap"]["rf1"]
    assert napped["changed"] is True and napped["via"] == "redfish" and napped["confirmed_down"] is True
    assert results["nap again"]["rf1"]["changed"] is False
    assert emulator.power("rf1") == "Off"
    assert PASSWORD not in json.dumps(results)


def test_community_general_power_on_is_seen_by_power_info_and_wake(netns, emulator, inventory, tmp_path):
    results, _ = playbook(
        netns,
        inventory,
        tmp_path,
        """\
        - hosts: rf2
          gather_facts: false
          tasks:
            - name: cg on
              community.general.redfish_command:
                category: Systems
                command: PowerOn
                resource_id: "{{ powernap_redfish_system_id }}"
                baseuri: "{{ powernap_redfish_host | urlsplit('netloc') }}"
                username: "{{ powernap_bmc_user }}"
                password: "{{ powernap_bmc_password }}"
                ca_path: "{{ powernap_redfish_ca_path }}"
              delegate_to: localhost
            - name: until on
              powernap.fleet.power_info:
                bmc_query: true
              delegate_to: localhost
              vars:
                ansible_connection: local
              register: info
              until: info.bmc.power_state == 'On'
              retries: 30
              delay: 1
            - name: wake
              powernap.fleet.wake:
                # Batch form with no address: the BMC's word is the host's state (nothing to probe).
                targets:
                  - name: rf2
                    redfish_host: "{{ powernap_redfish_host }}"
                    redfish_system_id: "{{ powernap_redfish_system_id }}"
                    redfish_ca_path: "{{ powernap_redfish_ca_path }}"
                bmc_user: "{{ powernap_bmc_user }}"
                bmc_password: "{{ powernap_bmc_password }}"
                wait: true
                timeout: 60
        """,
    )
    assert results["cg on"]["rf2"]["changed"] is True
    assert results["until on"]["rf2"]["bmc"]["power"] == "on"
    # Already on by community.general's hand: nothing to do, and the service agrees.
    woke = results["wake"]["rf2"]
    assert woke["changed"] is False and woke["summary"]["confirmed"] == 1
    assert emulator.power("rf2") == "On"


def test_batch_wake_over_redfish_confirms_each_system(netns, emulator, inventory, tmp_path):
    results, _ = playbook(
        netns,
        inventory,
        tmp_path,
        """\
        - hosts: localhost
          gather_facts: false
          tasks:
            - name: batch
              powernap.fleet.wake:
                targets:
                  - name: rf3
                    redfish_host: "%s"
                    redfish_system_id: "%s"
                    redfish_ca_path: "%s"
                bmc_user: "%s"
                bmc_password: "%s"
                wait: true
                timeout: 60
              register: first
            - name: batch again
              powernap.fleet.wake:
                targets: "{{ first.results | map(attribute='name') | map('extract', targets) | list }}"
                bmc_user: "%s"
                bmc_password: "%s"
                wait: true
                timeout: 60
              vars:
                targets:
                  rf3: {name: rf3, redfish_host: "%s", redfish_system_id: "%s", redfish_ca_path: "%s"}
        """
        % (
            emulator.url,
            emulator.systems["rf3"],
            emulator.cert,
            USER,
            PASSWORD,
            USER,
            PASSWORD,
            emulator.url,
            emulator.systems["rf3"],
            emulator.cert,
        ),
    )
    batch = results["batch"]["localhost"]
    assert batch["summary"]["by_redfish"] == 1 and batch["summary"]["confirmed"] == 1
    assert emulator.power("rf3") == "On"
    again = results["batch again"]["localhost"]
    assert again["changed"] is False and again["summary"]["confirmed"] == 1


def test_wrong_password_fails_that_host_clearly_without_echoing_it(netns, emulator, inventory, tmp_path):
    results, proc = playbook(
        netns,
        inventory,
        tmp_path,
        """\
        - hosts: rf1
          gather_facts: false
          tasks:
            - name: wake
              powernap.fleet.wake:
                bmc_password: not-the-password-51c
                timeout: 20
        """,
        check=False,
    )
    failed = results["wake"]["rf1"]
    assert failed["failed"] is True and failed["error"] == "auth"
    assert "not-the-password-51c" not in proc.stdout + proc.stderr
