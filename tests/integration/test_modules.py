"""Lab tests of the collection's power modules: powernap.fleet.wake / nap / power_info against real
(nspawn) hosts, their WoL NICs and their ipmi_sim BMCs.  Run as root: ``pytest tests/integration``.

Ansible runs in the lab's controller namespace; packets are captured there with tcpdump and compared
byte for byte with the standard magic packet.
"""

import json
import struct
import time

CAPTURE = "/tmp/powernap-itest-wake.pcap"


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
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert results, proc.stdout + proc.stderr
    return results


def suspend(lab, host):
    lab.power(host, "suspend")
    lab.wait_power(host, "suspended")


def test_wake_suspended_host_by_wol_with_byte_exact_packet(lab_reset):
    lab = lab_reset
    h2 = lab.host("h2")
    suspend(lab, "h2")
    lab.ctl(
        "rm -f %s; (timeout 60 tcpdump -i eth0 -n -U -c 3 -w %s udp port 9 >/dev/null 2>&1 &); sleep 1"
        % (CAPTURE, CAPTURE)
    )
    result = module(lab, "h2", "wake", {"method": "wol", "wait": True, "timeout": 90})["h2"]
    assert result["changed"] is True and result["woken_by"] == "wol" and result["confirmed"] is True
    assert result["elapsed"] < 90
    lab.wait_for(lambda: len(udp_payloads(CAPTURE)) >= 3, 20, "3 captured magic packets")
    assert udp_payloads(CAPTURE)[:3] == [magic(h2["mac"])] * 3
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


def test_power_info_reports_the_lab_host(lab):
    info = module(lab, "h1", "power_info", {})["h1"]
    assert info["platform"] == "container"
    assert info["virt"] == "systemd-nspawn"
    # The lab's "NIC" is a veth without a device: not a physical NIC, so not listed.
    assert all(n["mac"] != lab.host("h1")["mac"] for n in info["nics"])
    # With the engine installed (by a role test in the same session) its daemon state is reported too.
    assert ("running" in info["engine"]) == info["engine"]["present"]
    assert info["bmc"]["present"] is False
