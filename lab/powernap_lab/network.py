"""Lab networks: a switch namespace with two bridges (LAN, management), endpoints on veths.

Every veth is created inside a lab namespace, with its peer placed straight into another lab
namespace, so no lab link or address ever exists in the root namespace.
"""

from .common import LabError, ip, lab_mac, run


def netns_exists(name):
    proc = run(["ip", "netns", "list"], check=False)
    return any(line.split()[0] == name for line in proc.stdout.splitlines() if line.strip())


def ensure_netns(name):
    if not netns_exists(name):
        ip("netns", "add", name)
    ip("link", "set", "lo", "up", ns=name)


def link_exists(ns, dev):
    return ip("link", "show", "dev", dev, ns=ns, check=False).returncode == 0


def _veth(lab, sw_name, peer_ns, peer_name, bridge, mac=None):
    """veth sw_name (switch side, enslaved to bridge) <-> peer_name in peer_ns."""
    if not link_exists(lab.ns_switch, sw_name):
        if link_exists(peer_ns, peer_name):  # stale half from an interrupted run
            ip("link", "del", peer_name, ns=peer_ns, check=False)
        peer = ["peer", "name", peer_name]
        if mac:
            peer += ["address", mac]
        ip("link", "add", sw_name, "type", "veth", *peer, "netns", peer_ns, ns=lab.ns_switch)
    ip("link", "set", sw_name, "master", bridge, ns=lab.ns_switch)
    ip("link", "set", sw_name, "up", ns=lab.ns_switch)
    ip("link", "set", peer_name, "up", ns=peer_ns)


def _addr(ns, dev, cidr):
    proc = ip("-o", "addr", "show", "dev", dev, ns=ns)
    if (" %s " % cidr) not in proc.stdout:
        ip("addr", "add", cidr, "dev", dev, ns=ns)


def _bcast_route(ns, dev):
    # Lets 255.255.255.255 (what WoL senders use by default) go out on the lab LAN; without a
    # default route the kernel would answer "network unreachable".
    ip("route", "replace", "255.255.255.255/32", "dev", dev, ns=ns)


def setup_fabric(lab):
    """Switch, controller and BMC namespaces (idempotent)."""
    for ns in (lab.ns_switch, lab.ns_ctl, lab.ns_bmc):
        ensure_netns(ns)
    for br in (lab.br_lan, lab.br_mgmt):
        if not link_exists(lab.ns_switch, br):
            ip("link", "add", br, "type", "bridge", "forward_delay", "0", "stp_state", "0", ns=lab.ns_switch)
        ip("link", "set", br, "up", ns=lab.ns_switch)
    # controller: eth0 on the LAN, eth1 on the management network
    _veth(lab, lab.port("ctl"), lab.ns_ctl, "eth0", lab.br_lan, mac=lab_mac("ctl-lan", lab.segment))
    _veth(lab, lab.mport("ctl"), lab.ns_ctl, "eth1", lab.br_mgmt, mac=lab_mac("ctl-mgmt", lab.segment))
    _addr(lab.ns_ctl, "eth0", lab.controller_lan + "/24")
    _addr(lab.ns_ctl, "eth1", lab.controller_mgmt + "/24")
    _bcast_route(lab.ns_ctl, "eth0")
    # all BMCs share one namespace, one address each on its management port
    _veth(lab, lab.mport("bmc"), lab.ns_bmc, "eth0", lab.br_mgmt, mac=lab_mac("bmc", lab.segment))


def setup_host(lab, index):
    host = "h%d" % index
    ns = lab.ns_host(host)
    ensure_netns(ns)
    _veth(lab, lab.port(host), ns, "eth0", lab.br_lan, mac=lab.host_mac(index))
    _addr(ns, "eth0", lab.host_address(index) + "/24")
    _bcast_route(ns, "eth0")
    _addr(lab.ns_bmc, "eth0", lab.bmc_address(index) + "/24")


def setup_vm_host(lab, index):
    """A VM host's switch port is a persistent tap on the LAN bridge; its QEMU opens it (no host namespace)."""
    host = "h%d" % index
    tap = lab.port(host)
    if not link_exists(lab.ns_switch, tap):
        ip("tuntap", "add", "dev", tap, "mode", "tap", ns=lab.ns_switch)
    ip("link", "set", tap, "master", lab.br_lan, ns=lab.ns_switch)
    ip("link", "set", tap, "down", ns=lab.ns_switch)
    _addr(lab.ns_bmc, "eth0", lab.bmc_address(index) + "/24")


def set_port(lab, host, up):
    """Carrier of a host's NIC: the switch port goes down when the host is suspended or off."""
    ip("link", "set", lab.port(host), "up" if up else "down", ns=lab.ns_switch)


def teardown(lab):
    """Delete every namespace of the lab (this removes all of its veths and bridges too)."""
    errors = []
    for ns in lab.all_netns():
        proc = run(["ip", "netns", "del", ns], check=False)
        if proc.returncode != 0:
            errors.append("%s: %s" % (ns, proc.stderr.strip()))
    if errors:
        raise LabError("could not delete namespaces: " + "; ".join(errors))
