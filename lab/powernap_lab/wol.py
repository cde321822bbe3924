"""Magic packets as a NIC sees them: parse Ethernet frames, decide whether a host wakes."""

import json
import os
import struct

ETH_P_WOL = 0x0842
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
WOL_PORTS = (7, 9)
SYNC = b"\xff" * 6
DEFAULT_STATE = {"wol": "g", "sopass": None}
VALID_MODES = set("pumbagsd")


def mac_bytes(mac):
    return bytes(int(x, 16) for x in mac.split(":"))


def mac_str(raw):
    return ":".join("%02x" % b for b in raw)


def parse_magic(payload):
    """Return (target_mac, password_or_None) when payload is a magic packet, else None.

    A magic packet is 6 x 0xff then the target MAC 16 times, optionally followed by a
    4- or 6-byte SecureOn password.
    """
    if len(payload) < 102 or not payload.startswith(SYNC):
        return None
    mac = payload[6:12]
    if payload[6:102] != mac * 16:
        return None
    rest = payload[102:]
    password = None
    if len(rest) >= 6:
        password = rest[:6]
    elif len(rest) >= 4:
        password = rest[:4]
    return mac_str(mac), (mac_str(password) if password else None)


def parse_frame(frame):
    """Return (kind, dst_mac, target_mac, password) for a wake frame, else None.

    kind is "ether" for ethertype 0x0842 and "udp7"/"udp9" for UDP to port 7 or 9 (IPv4/IPv6).
    """
    if len(frame) < 14:
        return None
    dst = mac_str(frame[0:6])
    ethertype = struct.unpack("!H", frame[12:14])[0]
    offset = 14
    if ethertype == ETH_P_8021Q and len(frame) >= 18:
        ethertype = struct.unpack("!H", frame[16:18])[0]
        offset = 18
    body = frame[offset:]
    if ethertype == ETH_P_WOL:
        magic = parse_magic(body)
        return ("ether", dst) + magic if magic else None
    udp = None
    if ethertype == ETH_P_IP and len(body) >= 20 and body[0] >> 4 == 4:
        ihl = (body[0] & 0x0F) * 4
        frag = struct.unpack("!H", body[6:8])[0] & 0x3FFF
        if body[9] == 17 and frag == 0:
            udp = body[ihl:]
    elif ethertype == ETH_P_IPV6 and len(body) >= 40 and body[6] == 17:
        udp = body[40:]
    if udp is None or len(udp) < 8:
        return None
    port = struct.unpack("!H", udp[2:4])[0]
    if port not in WOL_PORTS:
        return None
    magic = parse_magic(udp[8:])
    return ("udp%d" % port, dst) + magic if magic else None


def decide(nic_state, mac, dst, password):
    """Would a NIC with WoL settings nic_state and address mac wake for this frame?

    Returns (wake: bool, reason: str).
    """
    broadcast = dst == "ff:ff:ff:ff:ff:ff" or (int(dst.split(":")[0], 16) & 1)
    if not broadcast and dst != mac:
        return False, "frame not addressed to this NIC (L2 destination %s)" % dst
    modes = nic_state.get("wol") or "d"
    if "g" not in modes:
        return False, "wake-on-lan disabled (wol %s)" % modes
    sopass = nic_state.get("sopass")
    if "s" in modes and sopass and sopass != "00:00:00:00:00:00":
        if password is None:
            return False, "SecureOn password required, packet has none"
        if password.lower() != sopass.lower():
            return False, "wrong SecureOn password"
    return True, "magic packet"


def read_state(path):
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return dict(DEFAULT_STATE)
    return {"wol": state.get("wol", "g"), "sopass": state.get("sopass")}


def write_state(path, wol, sopass=None):
    if not wol or not set(wol) <= VALID_MODES or ("d" in wol and wol != "d"):
        raise ValueError("invalid wol mode %r (use letters from pumbags, or d)" % wol)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"wol": wol, "sopass": sopass}, f)
        f.write("\n")
    os.chmod(tmp, 0o666)
    os.replace(tmp, path)
