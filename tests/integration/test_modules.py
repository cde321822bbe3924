"""Lab tests of the collection's power modules: powernap.fleet.wake / nap / power_info against real
(nspawn) hosts, their WoL NICs and their ipmi_sim BMCs.  Run as root: ``pytest tests/integration``.

Ansible runs in the lab's controller namespace; packets are captured there with tcpdump and compared
byte for byte with the standard magic packet.
"""

import json
import re
import struct
import time

import pytest


def magic(mac):
    return b"\xff" * 6 + bytes.fromhex(mac.replace(":", "")) * 16


def udp_payloads(path):
    """UDP payloads of the Ethernet/IPv4 frames of a classic pcap file."""
    with open(path, "rb") as handle:
        data = handle.read()
    endian = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    payloads, offset = [], 24
    while offset + 16 <= len(data):
        incl = struct.unpack(endian + "IIII", data[offset : offset + 16])[2]
        frame = data[offset + 16 : offset + 16 + incl]
        offset += 16 + incl
        if len(frame) >= 42 and frame[12:14] == b"\x08\x00" and frame[23] == 17:
            udp = 14 + (frame[14] & 0x0F) * 4
            payloads.append(frame[udp + 8 : udp + struct.unpack("!H", frame[udp + 4 : udp + 6])[0]])
    return payloads


def module(lab, pattern, name, args, check=True, timeout=240):
    """Run powernap.fleet.NAME ad hoc from the controller; return {host: result}."""
    proc = lab.ansible(
        pattern,
        "powernap.fleet." + name,
        json.dumps(args) if args else None,
        check=False,
        timeout=timeout,
        extra=["-o"],
    )
    results = {}
    for line in proc.stdout.splitlines():
        if " | " in line and "=> " in line:
            host = line.split(" | ")[0].strip()
            results[host] = json.loads(line.split("=> ", 1)[1])
            if "FAILED!" in line.split("=> ", 1)[0]:
                results[host].setdefault("failed", True)  # the oneline callback drops the key
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert results, proc.stdout + proc.stderr
    return results


def suspend(lab, host):
    lab.power(host, "suspend")
    lab.wait_power(host, "suspended")


def test_wake_suspended_host_by_wol_with_byte_exact_packet(lab_reset, tmp_path):
    lab = lab_reset
    h2 = lab.host("h2")
    suspend(lab, "h2")
    capture = str(tmp_path / "wake.pcap")  # this test's own file: never one another test or lab writes
    dump = lab.tcpdump(["-i", "eth0", "-n", "-U", "-c", "3", "-w", capture, "udp port 9"])
    try:
        result = module(lab, "h2", "wake", {"method": "wol", "wait": True, "timeout": 90})["h2"]
        assert result["changed"] is True and result["woken_by"] == "wol" and result["confirmed"] is True
        assert result["elapsed"] < 90
        lab.wait_for(lambda: len(udp_payloads(capture)) >= 3, 20, "3 captured magic packets")
    finally:
        lab.stop_tcpdump(dump)
    assert udp_payloads(capture)[:3] == [magic(h2["mac"])] * 3
    ev = [e for e in lab.events(host="h2", event="power") if e["to"] == "on"][-1]
    assert ev["cause"] == "wol"
    # Idempotent: a second wake changes nothing.
    again = module(lab, "h2", "wake", {"method": "wol", "wait": True})["h2"]
    assert again["changed"] is False and again["confirmed"] is True


def test_wake_off_host_by_ipmi_from_inventory_variables(lab_reset):
    lab = lab_reset
    lab.power("h3", "off")
    lab.wait_power("h3", "off")
    result = module(lab, "h3", "wake", {"wait": True, "timeout": 180})["h3"]
    assert result["method"] == "ipmi" and result["woken_by"] == "ipmi" and result["confirmed"] is True
    assert lab.power_state("h3") == "on"


def test_escalation_from_wol_to_ipmi_when_wol_is_disabled(lab_reset):
    lab = lab_reset
    lab.wol("h1", "d")
    lab.power("h1", "off")
    lab.wait_power("h1", "off")
    result = module(lab, "h1", "wake", {"method": "wol", "escalate_after": 5, "wait": True, "timeout": 180})["h1"]
    assert result["woken_by"] == "wol+ipmi" and result.get("escalated") is True
    assert result["confirmed"] is True
    assert lab.power_state("h1") == "on"


def test_nap_then_wake_round_trip_over_ipmi(lab_reset):
    lab = lab_reset
    nap = module(lab, "h2", "nap", {"state": "poweroff", "via": "ipmi", "force": True, "timeout": 90})["h2"]
    assert nap["via"] == "ipmi" and nap["changed"] is True and nap["confirmed_down"] is True
    lab.wait_power("h2", "off", timeout=60)
    woke = module(lab, "h2", "wake", {"wait": True, "timeout": 180})["h2"]
    assert woke["woken_by"] == "ipmi" and woke["confirmed"] is True


def test_nap_refuses_the_controller(lab):
    proc = lab.ctl(
        [
            lab.ansible_bin("ansible"),
            "-i",
            "localhost,",
            "localhost",
            "-c",
            "local",
            "-m",
            "powernap.fleet.nap",
            "-a",
            "state=suspend",
        ],
        check=False,
    )
    assert proc.returncode != 0
    assert "it is the controller itself" in proc.stdout


def test_bad_bmc_password_fails_that_host_only(lab_reset):
    lab = lab_reset
    for host in ("h1", "h2", "h3"):
        lab.power(host, "off")
    for host in ("h1", "h2", "h3"):
        lab.wait_power(host, "off")
    h1 = lab.host("h1")
    targets = [
        {
            "name": "h1",
            "bmc_host": h1["bmc_address"],
            "bmc_user": h1["bmc_user"],
            "bmc_password": "wrong",
            "address": h1["address"],
        },
        "h2",
        "h3",
    ]
    started = time.monotonic()
    result = module(
        lab, "localhost", "wake", {"targets": targets, "method": "ipmi", "wait": True, "timeout": 180}, check=False
    )["localhost"]
    by_name = {r["name"]: r for r in result["results"]}
    assert by_name["h1"]["failed"] is True and by_name["h1"]["error"] == "auth"
    assert "credentials" in by_name["h1"]["msg"]
    for host in ("h2", "h3"):
        assert by_name[host].get("confirmed") is True, by_name[host]
    assert "1 of 3 target(s) failed" in result["msg"]
    assert "wrong" not in json.dumps(result)
    assert time.monotonic() - started < 200
    assert lab.power_state("h2") == "on" and lab.power_state("h3") == "on"


def test_unreachable_bmc_fails_within_the_deadline(lab):
    started = time.monotonic()
    result = module(
        lab,
        "localhost",
        "wake",
        {
            "targets": [{"name": "ghost", "bmc_host": "198.19.0.99", "bmc_user": "admin", "bmc_password": "x"}],
            "method": "ipmi",
            "bmc_timeout": 6,
        },
        check=False,
    )["localhost"]
    elapsed = time.monotonic() - started
    (ghost,) = result["results"]
    assert ghost["failed"] is True and ghost["error"] == "connection"
    assert ghost["elapsed"] <= 8
    assert elapsed < 30


def test_timeout_is_a_hard_limit_over_the_bmc_timeout(lab):
    """The issue's case: timeout=1 with bmc_timeout=4 against a BMC that never answers took 4 s."""
    started = time.monotonic()
    result = module(
        lab,
        "localhost",
        "wake",
        {
            "method": "ipmi",
            "bmc_host": "198.19.0.99",
            "bmc_user": "admin",
            "bmc_password": "x",
            "timeout": 1,
            "bmc_timeout": 4,
        },
        check=False,
    )["localhost"]
    assert result["failed"] is True and result["error"] == "connection"
    assert result["elapsed"] < 1.5, result
    assert time.monotonic() - started < 30


def test_power_info_reports_the_lab_host(lab):
    lab.exec("h3", "test ! -e /usr/local/bin/powernap")  # h3 never gets the engine in this file
    info = module(lab, "h3", "power_info", {})["h3"]
    assert info["platform"] == "container"
    assert info["virt"] == "systemd-nspawn"
    # The lab's "NIC" is a veth without a device: not a physical NIC, so not listed.
    assert all(n["mac"] != lab.host("h3")["mac"] for n in info["nics"])
    assert info["engine"] == {"present": False}
    assert "verdict" not in info
    # powernap_bmc_host is in the inventory; the BMC itself is asked only with bmc_query.
    assert info["bmc"] == {"present": False, "configured": True, "protocol": "ipmi"}


# -- with the engine installed (by the collection's own site playbook) ----------------------------------

ENGINE_HOSTS = "h1,h2"
# The lab's hosts are containers and their suspend is the lab's command: as in molecule's lab group_vars.
LAB_ENGINE_VARS = {
    "powernap_manage_packages": False,
    "powernap_wol_ethtool": "/usr/local/sbin/ethtool",
    "powernap_wol_broadcast": "{{ powernap_lab_broadcast }}",
    "powernap_common_config": {
        "powernap": {"platform": "physical", "settle": "5s", "grace": "2s", "interval": "1s"},
        "actions": {"suspend_command": "{{ powernap_lab_suspend_command }} --cause engine", "wall_command": ""},
        "monitor.load": None,
        "monitor.ssh": {"ignore_remote": "{{ powernap_lab_controller }}/32"},
        "monitor.timers": None,
    },
}


def playbook(lab, name, *extra, check=True, timeout=600):
    """Run the collection's playbooks/NAME.yml from the controller (by its FQCN); the CompletedProcess."""
    proc = lab.ansible_playbook("powernap.fleet." + name, *extra, check=False, timeout=timeout)
    if check:
        assert proc.returncode == 0, "%s failed:\n%s%s" % (name, proc.stdout[-6000:], proc.stderr[-3000:])
    return proc


def extra_vars(lab, values):
    path = "/run/powernap-lab/%s/itest-vars-%d.json" % (lab.name, abs(hash(json.dumps(values, sort_keys=True))))
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(values, handle)
    return ["-e", "@" + path]


@pytest.fixture(scope="module")
def engine_lab(lab):
    """h1 and h2 with the engine deployed by playbooks/site.yml (base profile: never suspends by itself)."""
    for host in ("h1", "h2"):
        if lab.power_state(host) != "on":
            lab.power(host, "on")
        lab.wait_booted(host)
    playbook(lab, "site", "-l", ENGINE_HOSTS, *extra_vars(lab, LAB_ENGINE_VARS))
    yield lab
    stop_engines(lab, ENGINE_HOSTS.split(","))


def stop_engines(lab, hosts):
    """Stop and disable the engines a test deployed: later test files expect hosts that run none (an engine
    left running acts on its own, e.g. answers or suspends its host, and a power cycle would start it again)."""
    for host in hosts:
        if lab.power_state(host) != "on":
            lab.power(host, "on")
        lab.wait_booted(host)
        lab.exec(host, "systemctl disable --now powernapd")


def test_power_info_reports_the_engine_facts(engine_lab):
    lab = engine_lab
    info = module(lab, "h1", "power_info", {})["h1"]
    engine = info["engine"]
    assert engine["present"] is True and engine["running"] is True, engine
    assert engine["state"] in ("awake", "grace", "napping")
    assert isinstance(engine["idle_seconds"], (int, float)) and isinstance(engine["version"], str)
    assert isinstance(engine["powersave"], dict)
    # The engine's own view: the detected platform, and the verdict that the lab's platform override allows.
    assert info["platform"] == "container" and info["virt"] == "systemd-nspawn"
    status = json.loads(lab.exec("h1", ["powernap", "status", "--json"]).stdout)
    assert engine["version"] == status["version"] and info["verdict"] == status["verdict"]
    assert isinstance(info["verdict"]["allowed_actions"], list) and "suspend" in info["verdict"]["allowed_actions"]
    lab.exec("h1", "systemctl stop powernapd")
    try:
        stopped = module(lab, "h1", "power_info", {})["h1"]["engine"]
        assert stopped["present"] is True and stopped["running"] is False and stopped["error"]
        assert "state" not in stopped
    finally:
        lab.exec("h1", "systemctl start powernapd")


def test_power_info_never_ships_bmc_credentials_to_the_host(engine_lab):
    lab = engine_lab
    secret = lab.host("h1")["bmc_password"]
    book = "/run/powernap-lab/%s/itest-power-info.yml" % lab.name
    with open(book, "w", encoding="utf-8") as handle:
        handle.write(
            "- hosts: h1\n  gather_facts: false\n  module_defaults:\n    group/powernap.fleet.power:\n"
            "      bmc_user: admin\n      bmc_password: '{{ powernap_bmc_password }}'\n  tasks:\n"
            "    - powernap.fleet.power_info:\n      register: info\n"
            "    - ansible.builtin.copy:\n        content: '{{ info | to_json }}'\n        dest: %s.out\n"
            "      delegate_to: localhost\n" % book
        )
    proc = lab.ansible_playbook(book, "-vvv", check=False)
    assert proc.returncode == 0, proc.stdout[-4000:]
    with open(book + ".out", encoding="utf-8") as handle:
        info = json.load(handle)
    assert info["bmc"]["configured"] is True
    # -vvv shows the arguments the module received on the host: no BMC option among them.
    assert '"module_args"' in proc.stdout
    assert '"bmc_user": "admin"' not in proc.stdout and "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" not in proc.stdout
    assert secret not in proc.stdout + proc.stderr


def test_status_playbook_shows_the_engine_state(engine_lab):
    proc = playbook(engine_lab, "status", "-e", "powernap_hosts=" + ENGINE_HOSTS)
    table = proc.stdout
    assert "h1" in table and "h2" in table
    assert "awake" in table or "grace" in table


def test_hwlist_module_validates_changes_and_removes_only_on_request(engine_lab):
    lab = engine_lab
    entry = {"name": "itest-s3", "match": {"kernel": "*"}, "actions": ["suspend"], "reason": "itest"}
    path = "/etc/powernap/hardware.d/itest.conf"
    lab.exec("h1", ["rm", "-f", path])
    first = module(lab, "h1", "hwlist", {"name": "itest", "entries": [entry]})["h1"]
    assert first["changed"] is True and first["entries"] == ["deny.itest-s3"]
    assert "suspend" in first["verdict"]["denied"]
    again = module(lab, "h1", "hwlist", {"name": "itest", "entries": [entry]})["h1"]
    assert again["changed"] is False
    before = lab.exec("h1", ["cat", path]).stdout
    # An entry the engine refuses: nothing written, nothing changed.
    bad = dict(entry, name="itest-bad", match={"pci": "not-an-id"})
    refused = module(lab, "h1", "hwlist", {"name": "itest", "entries": [bad]}, check=False)["h1"]
    assert refused["failed"] is True and refused["changed"] is False, refused
    assert "rejected" in refused["msg"]
    assert lab.exec("h1", ["cat", path]).stdout == before
    # state=absent with no entries removes the file only with remove_list.
    kept = module(lab, "h1", "hwlist", {"name": "itest", "state": "absent"}, check=False)["h1"]
    assert kept["failed"] is True and "remove_list" in kept["msg"]
    assert lab.exec("h1", ["test", "-e", path], check=False).returncode == 0
    gone = module(lab, "h1", "hwlist", {"name": "itest", "state": "absent", "remove_list": True})["h1"]
    assert gone["changed"] is True
    assert lab.exec("h1", ["test", "-e", path], check=False).returncode != 0
    assert "suspend" not in (gone["verdict"].get("denied") or {})


def test_hwlists_playbook_pushes_the_fleet_list(engine_lab):
    lab = engine_lab
    entries = [{"name": "itest-fleet", "match": {"kernel": "*"}, "actions": ["hibernate"], "reason": "no swap"}]
    values = dict(LAB_ENGINE_VARS, powernap_hardware_entries=entries, powernap_hosts="h2")
    proc = playbook(lab, "hwlists", *extra_vars(lab, values))
    assert "h2" in proc.stdout and "hibernate" in proc.stdout
    text = lab.exec("h2", ["cat", "/etc/powernap/hardware.d/fleet.conf"]).stdout
    assert "[deny.itest-fleet]" in text
    # Without entries the role removes its list (explicitly, with remove_list).
    playbook(lab, "hwlists", *extra_vars(lab, dict(LAB_ENGINE_VARS, powernap_hosts="h2")))
    assert lab.exec("h2", ["test", "-e", "/etc/powernap/hardware.d/fleet.conf"], check=False).returncode != 0


def test_nap_and_wake_playbooks_round_trip(engine_lab, lab_reset):
    lab = engine_lab
    proc = playbook(lab, "nap", "-e", "powernap_hosts=h2", "-e", "powernap_nap_timeout=90")
    # The playbook's summary table: HOST OUTCOME VIA ACTION CONFIRMED_DOWN ELAPSED
    assert re.search(r"h2\s+changed\s+engine\s+suspend\s+yes\s", proc.stdout), proc.stdout[-3000:]
    lab.wait_power("h2", "suspended", timeout=30)
    assert [e for e in lab.events(host="h2", event="power") if e["to"] == "suspended"][-1]["cause"] == "engine"
    # nap again: unreachable, and the lab's BMC reports a sleeping host off: down, and nothing to do.
    again = playbook(lab, "nap", "-e", "powernap_hosts=h2", "-e", "powernap_nap_timeout=20")
    assert re.search(r"h2\s+ok\s+engine\s+\S+\s+yes\s", again.stdout), again.stdout[-3000:]
    # Without a BMC nothing confirms that the unreachable host is down: a failure, not a success.
    blind = playbook(lab, "nap", "-e", "powernap_hosts=h2", "-e", "powernap_bmc_host=", check=False)
    assert blind.returncode != 0 and "nothing confirms it is down" in blind.stdout
    proc = playbook(lab, "wake", "-e", "powernap_hosts=h2", "-e", "powernap_wake_timeout=120")
    assert lab.power_state("h2") == "on"
    # HOST OUTCOME STATE_BEFORE WOKEN_BY CONFIRMED ELAPSED
    assert re.search(r"h2\s+changed\s+down\s+\S+\s+yes\s", proc.stdout), proc.stdout[-3000:]


def test_nap_of_an_off_host_is_success_without_change(lab_reset):
    lab = lab_reset
    lab.power("h3", "off")
    lab.wait_power("h3", "off")
    result = module(lab, "h3", "nap", {"state": "suspend", "timeout": 30})["h3"]
    assert result["changed"] is False and result["confirmed_down"] is True and result["bmc_power"] == "off"
    result = module(lab, "h3", "nap", {"state": "poweroff", "via": "ipmi", "timeout": 30})["h3"]
    assert result["changed"] is False and result["confirmed_down"] is True


def test_wake_delegated_to_localhost_sends_from_the_controller(lab_reset):
    lab = lab_reset
    suspend(lab, "h2")
    book = "/run/powernap-lab/%s/itest-delegate.yml" % lab.name
    with open(book, "w", encoding="utf-8") as handle:
        handle.write(
            "- hosts: h2\n  gather_facts: false\n  tasks:\n"
            "    - powernap.fleet.wake: {method: wol, wait: true, timeout: 90}\n"
            "      delegate_to: localhost\n      register: woke\n"
            "    - ansible.builtin.assert:\n        that: [woke.changed, woke.confirmed, woke.woken_by == 'wol']\n"
            "    - powernap.fleet.wake: {wait: true}\n      delegate_to: localhost\n      register: again\n"
            "    - ansible.builtin.assert:\n        that: [not again.changed, again.confirmed]\n"
        )
    proc = lab.ansible_playbook(book, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert [e for e in lab.events(host="h2", event="power") if e["to"] == "on"][-1]["cause"] == "wol"


def test_ipmi_wake_with_no_address_is_idempotent(lab_reset):
    lab = lab_reset
    lab.power("h3", "off")
    lab.wait_power("h3", "off")
    h3 = lab.host("h3")
    bmc = {
        "method": "ipmi",
        "bmc_host": h3["bmc_address"],
        "bmc_user": h3["bmc_user"],
        "bmc_password": h3["bmc_password"],
    }
    first = module(lab, "localhost", "wake", dict(bmc, wait=True, timeout=60))["localhost"]
    assert first["changed"] is True and first["woken_by"] == "ipmi" and first["confirmed"] is True
    second = module(lab, "localhost", "wake", dict(bmc, wait=True, timeout=60))["localhost"]
    assert second["changed"] is False and second["confirmed"] is True and second["bmc_power"] == "on"
    assert h3["bmc_password"] not in json.dumps(second)


def test_relay_through_h1_wakes_h2(lab_reset, tmp_path):
    lab = lab_reset
    suspend(lab, "h2")
    capture = str(tmp_path / "relay.pcap")
    dump = lab.tcpdump(["-i", "eth0", "-n", "-U", "-c", "1", "-w", capture, "udp port 9"])
    try:
        args = {"method": "wol", "relay": "h1", "broadcast": lab.broadcast, "wait": True, "timeout": 90}
        result = module(lab, "h2", "wake", args)["h2"]
        assert result["relay"] == "h1" and result["woken_by"] == "wol" and result["confirmed"] is True
        lab.wait_for(lambda: udp_sources(capture), 20, "a captured magic packet")
    finally:
        lab.stop_tcpdump(dump)
    assert udp_sources(capture)[0] == lab.host("h1")["address"]  # sent by h1, not by the controller
    assert lab.power_state("h2") == "on"


def udp_sources(path):
    """Source IPv4 addresses of the UDP frames of a classic pcap file."""
    with open(path, "rb") as handle:
        data = handle.read()
    endian = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    sources, offset = [], 24
    while offset + 16 <= len(data):
        incl = struct.unpack(endian + "IIII", data[offset : offset + 16])[2]
        frame = data[offset + 16 : offset + 16 + incl]
        offset += 16 + incl
        if len(frame) >= 34 and frame[12:14] == b"\x08\x00" and frame[23] == 17:
            sources.append(".".join(str(b) for b in frame[26:30]))
    return sources


def test_ups_playbook_restores_only_what_it_shed(engine_lab, lab_reset):
    """On mains, ups.yml wakes the hosts the UPS policy shed, never one that its engine put to sleep."""
    lab = engine_lab
    ups = "%s@%s:%d" % (lab.ups["name"], lab.ups["host"], lab.ups["port"])
    groups = ["-e", "powernap_ups=" + ups, "-e", '{"powernap_ups_groups": ["webservers"]}']
    try:
        # On battery: both web servers are shed (napped through their engines).
        lab.set_ups("OB")
        playbook(lab, "ups", *groups, "-e", "powernap_ups_timeout=90")
        lab.wait_power("h1", "suspended", timeout=30)
        lab.wait_power("h2", "suspended", timeout=30)
        # Mains again: both come back.
        lab.set_ups("OL")
        playbook(lab, "ups", *groups, "-e", "powernap_ups_timeout=120")
        assert lab.power_state("h1") == "on" and lab.power_state("h2") == "on"
        # h2 naps by itself while on mains; the next run must leave it asleep.
        suspend(lab, "h2")
        playbook(lab, "ups", *groups, "-e", "powernap_ups_timeout=60")
        lab.stays("h2", "suspended", seconds=3)
    finally:
        lab.set_ups("OL")
