"""powerwaked's configuration: /etc/powernap/powerwaked.conf plus powerwaked.d/*.conf, INI like the engine.

Sections (each declared once below, so ``powerwaked check-config`` and the
docs come from the same table): ``[powerwaked]``, ``[proxy]``, ``[ipmi]``,
``[host.NAME]``, ``[group.NAME]``, ``[ups.NAME]``, ``[schedule.NAME]``,
``[cluster.NAME]``.  The file holds the fleet secret and BMC passwords:
keep it mode 0600 (the daemon warns when its group or others can read it;
a ``secret_file`` they can read is refused).  Every value has a declared
type, so nothing unchecked reaches the wake code; errors carry FILE:LINE
and never show a secret option's value.
"""

import ipaddress
import os
import re
import socket
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple, Type
from urllib.parse import urlsplit

from .. import ini
from ..errors import ConfigError
from ..fleet_keys import MIN_MASTER
from ..magic_packet import parse_secureon
from ..monitors.oncalendar import CalendarEvent
from ..options import (
    Boolean,
    Choice,
    Declared,
    Duration,
    HostAddress,
    Integer,
    IpAddress,
    ListOf,
    Mac,
    Number,
    Option,
    OptionType,
    PortRanges,
    String,
)
from . import DEFAULT_PORT
from .store import parse_url as parse_store_url

DEFAULT_CONFIG = "/etc/powernap/powerwaked.conf"
NAP_ACTIONS = ("suspend", "hibernate", "hybrid-sleep", "suspend-then-hibernate", "poweroff", "best-effort")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


class Calendar(OptionType):
    def parse(self, text: str) -> CalendarEvent:
        try:
            return CalendarEvent(text.strip())
        except (ValueError, KeyError, IndexError) as exc:
            raise ValueError("bad calendar expression: %s" % exc) from None

    def describe(self) -> str:
        return "systemd OnCalendar expression (e.g. Mon..Fri 07:00)"


class SecureOn(OptionType):
    """A SecureOn password: 4 or 6 bytes, written a.b.c.d or as hex pairs (checked here, not at wake time)."""

    def parse(self, text: str) -> str:
        text = text.strip()
        if text:
            parse_secureon(text)  # its message never quotes the password
        return text

    def describe(self) -> str:
        return "SecureOn password (a.b.c.d or 4/6 hex pairs)"


class HttpUrl(OptionType):
    def parse(self, text: str) -> str:
        text = text.strip()
        if text:
            parts = urlsplit(text)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("%r is not an http:// or https:// URL" % text[:200])
        return text

    def describe(self) -> str:
        return "http(s) URL"


class Network(OptionType):
    """An IPv4 or IPv6 network in CIDR form (host bits must be zero: 198.18.0.0/24, not 198.18.0.1/24)."""

    def parse(self, text: str) -> str:
        try:
            return str(ipaddress.ip_network(text.strip(), strict=True))
        except ValueError:
            raise ValueError("%r is not a network in CIDR form (e.g. 198.18.0.0/24)" % text[:64]) from None

    def describe(self) -> str:
        return "IP network (CIDR)"


class StoreUrl(OptionType):
    """Where the registry lives: sqlite:///PATH or postgresql://… (secret: it may hold a password)."""

    def parse(self, text: str) -> str:
        text = text.strip()
        if text:
            parse_store_url(text)  # its messages never quote the URL
        return text

    def describe(self) -> str:
        return "sqlite:///PATH or postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DBNAME"


def _path(nonempty: bool = False) -> String:
    return String(nonempty=nonempty, max_length=4096, pattern=r"/[^\0]*", form="an absolute path")


# A fleet-mode name (an instance or a segment): it goes into lock names, job rows and metric labels.
_FLEET_NAME = String(max_length=63, pattern=r"[a-z0-9][a-z0-9-]{0,62}", form="a name of a-z, 0-9 and - (at most 63)")
_INTERFACE = String(max_length=15, pattern=r"[A-Za-z0-9_.:@-]+", form="a network interface name")
_USER = String(max_length=64, pattern=r"[^\s-][^\s]*", form="a user name (no spaces, not starting with -)")
_NAMES = ListOf(String(nonempty=True, max_length=253, pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]*", form="a name"))


class ServerSection(Declared):
    """[powerwaked]: the server as a whole."""

    KIND = "powerwaked"
    TYPE = "powerwaked"
    OPTIONS = (
        Option("secret", String(), default="", secret=True,
               doc="The fleet's master secret: each engine's [server] token is its own key derived from it "
                   "(powerwaked --derive-key NAME, or the role's host_key filter); admins sign API requests with it."),
        Option("secret_file", _path(), default="",
               doc="Read the secret from this file instead (first line); refused unless only its owner can read it."),
        Option("listen", IpAddress(), default="",
               doc="Address for reports (UDP) and the API (TCP); no default: name the segment's address "
                   "(0.0.0.0 or :: only on purpose)."),
        Option("port", Integer(1, 65535), default=DEFAULT_PORT, doc="Port for reports (UDP) and the HTTP API (TCP)."),
        Option("state_file", _path(nonempty=True), default="/var/lib/powerwaked/registry.json",
               doc="The JSON registry of powerwaked 0.1: imported once into the store, then renamed *.imported. "
                   "With store unset, the SQLite store is registry.sqlite3 in this file's directory."),
        Option("store", StoreUrl(), default="", secret=True,
               doc="Where the registry is kept across restarts: sqlite:///PATH (the default, next to state_file) "
                   "or postgresql://USER@HOST/DBNAME (needs psycopg 3; a password in the URL makes this file a "
                   "secret: keep it 0600)."),
        # Fleet mode (several instances on one PostgreSQL; FLEETMODE.md): on when segment is set.
        Option("instance", _FLEET_NAME, default="",
               doc="Fleet mode: this instance's name, unique in the fleet (default: the host's short name)."),
        Option("segment", _FLEET_NAME, default="",
               doc="Fleet mode: the L2 segment this instance sits on (a [segment.NAME] section). Setting it turns "
                   "fleet mode on (needs a postgresql:// store); unset: one powerwaked per segment, as before."),
        Option("lead_poll", Duration(minimum=0.2, maximum=60), default=2.0,
               doc="Fleet mode: how often an instance tries to take a free lead (segment, policy); a dead leader is "
                   "replaced within about this plus a second."),
        Option("save_every", Duration(minimum=1), default=10.0, doc="Write heartbeat-only changes at most this often."),
        Option("stale_factor", Number(minimum=1.5), default=3.0,
               doc="An up host is 'unknown' after this many missed heartbeat intervals."),
        Option("max_skew", Duration(minimum=5), default=120.0,
               doc="Reject messages whose timestamp is further than this from the server clock."),
        Option("interface", _INTERFACE, default="",
               doc="The segment's network interface: the sleep proxy listens here and wakes leave by it."),
        Option("broadcast", IpAddress(), default="255.255.255.255", doc="Destination of UDP magic packets."),
        Option("wol_port", Integer(1, 65535), default=9, doc="UDP port of magic packets."),
        Option("wol_transport", Choice("udp", "raw", "both"), default="udp",
               doc="udp (broadcast), raw (ethertype 0x0842 frame, needs interface) or both."),
        Option("confirm_timeout", Duration(minimum=1), default=45.0,
               doc="A wake not confirmed (report, frame from the host's MAC) within this escalates to IPMI."),
        Option("read_auth", Boolean(), default=True,
               doc="Require a signed request for the API's GET endpoints. With no, anyone who reaches the port "
                   "reads states and groups, but MACs, IPs, BMC addresses and command ports only with a signature."),
        Option("announce", Boolean(), default=False,
               doc="Announce _powerwaked._udp by multicast DNS (engines with no url find the server; they trust "
                   "it only once it has proved their key)."),
        Option("tls_cert", _path(), default="",
               doc="PEM certificate (chain) for the API: with it the API speaks HTTPS only (reports stay UDP)."),
        Option("tls_key", _path(), default="", doc="PEM private key of tls_cert (keep it 0600)."),
        Option("max_clients", Integer(1, 1000), default=32,
               doc="API connections served at once; more are closed at once (slow clients cannot exhaust threads)."),
        Option("max_clients_per_ip", Integer(0, 1000), default=0,
               doc="API connections one client address may hold at once (0: a quarter of max_clients, at least 2)."),
        Option("request_timeout", Duration(minimum=1, maximum=300), default=10.0,
               doc="Longest one API connection may take in total (slow clients are cut off)."),
        Option("command_retries", Integer(0, 10), default=3, doc="Resend an unacknowledged command this often."),
        Option("max_hosts", Integer(1, 100000), default=4096,
               doc="At most this many hosts in the registry (fleet mode: of the whole fleet, as every instance shows "
                   "every host); reports for further new hosts are refused."),
        Option("register", Boolean(), default=True,
               doc="Accept reports from hosts the config does not name ([host.NAME] or a group); no: refuse them."),
        # The policy gate (rails.py): every wake and nap of every source passes it.
        Option("wake_rate", Number(0, 100000), default=300.0,
               doc="Fleet-wide: at most this many hosts woken per minute, by any path (proxy, schedules, cluster, "
                   "UPS, API); a minute's worth may go at once, the rest is paced and queued (0: no limit; Slurm's "
                   "ResumeRate default)."),
        Option("nap_rate", Number(0, 100000), default=60.0,
               doc="Fleet-wide: at most this many hosts napped per minute (0: no limit; Slurm's SuspendRate default). "
                   "UPS naps on low battery or forced shutdown are never held back."),
        Option("queue_size", Integer(1, 100000), default=10000,
               doc="Requests over a rate limit wait in one FIFO queue of at most this many (one per host); when it "
                   "is full the oldest is dropped (and shown under refused)."),
        Option("queue_timeout", Duration(minimum=1, maximum=86400), default=3600.0,
               doc="A queued request that waited this long is dropped (refused, with the reason)."),
        Option("decision_ttl", Duration(minimum=10, maximum=7 * 86400), default=3600.0,
               doc="Recommend-only mode: a decision not approved within this lapses."),
        Option("max_decisions", Integer(1, 10000), default=1000,
               doc="Recommend-only mode: at most this many pending decisions (the oldest make room)."),
        Option("max_veto", Duration(minimum=60, maximum=7 * 86400), default=86400.0,
               doc="The longest veto an engine or an API client may set on a group's naps (longer ones are cut)."),
        Option("wake_retries", Integer(0, 20), default=3,
               doc="A wake that was not confirmed marks the host (kept out of napping); while the host is still down "
                   "and not held, the wake is retried this many times (0: never; test wakes and "
                   "powerwake clear-mark remain)."),
        Option("wake_retry_delay", Duration(minimum=1, maximum=86400), default=60.0,
               doc="The first retry of a failed wake comes this long after it; each further one twice as long."),
        Option("wake_retry_max", Duration(minimum=1, maximum=7 * 86400), default=3600.0,
               doc="Retries of a failed wake are never further apart than this."),
    )  # fmt: skip


class ProxySection(Declared):
    """[proxy]: the ARP/NDP sleep proxy (needs [powerwaked] interface)."""

    KIND = "powerwaked"
    TYPE = "proxy"
    OPTIONS = (
        Option("enabled", Boolean(), default=True, doc="Watch the segment and wake sleepers that are asked for."),
        Option("ignore_macs", ListOf(Mac()), default=(), doc="Never wake for requests from these MACs (gateways)."),
        Option("cooldown", Duration(minimum=1), default=60.0, doc="At most one wake per sleeper in this time."),
        Option("rate", Number(minimum=0.1), default=10.0, doc="Global wake rate limit (wakes per second)."),
        Option("burst", Integer(1, 10000), default=20, doc="Wakes allowed at once before the rate limit applies."),
        Option("ipv6", Boolean(), default=True, doc="Also wake for IPv6 neighbour solicitations."),
        Option("answer_arp", Boolean(), default=False,
               doc="ARP SPOOFING: answer who-has for sleepers with our MAC and wake only for TCP SYNs to 'ports'."),
        Option("ports", PortRanges(), default=((22, 22),), doc="With answer_arp: the TCP ports that wake a sleeper."),
        Option("wake_unreported", Boolean(), default=True,
               doc="Wake a host with a known MAC whose engine never reported (state unknown from the start)."),
        Option("probe_ports", PortRanges(), default=((22, 22),),
               doc="A frame from a sleeper's MAC is only a hint: a TCP probe to these ports confirms it is up."),
        Option("ignore_gateway", Boolean(), default=True,
               doc="Never wake for requests from the default gateways (detected; their sweeps would wake everyone)."),
        Option("source_wakes", Integer(0, 100000), default=20,
               doc="Wakes one source MAC may cause per source_window; more are ignored and logged (0: no limit)."),
        Option("source_window", Duration(minimum=1), default=3600.0, doc="The window of source_wakes."),
    )  # fmt: skip


class IpmiSection(Declared):
    """[ipmi]: defaults for IPMI escalation and power-off (ipmitool -I lanplus)."""

    KIND = "powerwaked"
    TYPE = "ipmi"
    OPTIONS = (
        Option("user", _USER, default="", doc="BMC user."),
        Option("password", String(), default="", secret=True, doc="BMC password (never logged)."),
        Option("port", Integer(1, 65535), default=623, doc="BMC UDP port."),
        Option("cipher", Integer(0, 17), default=3, doc="Cipher suite (ipmitool -C)."),
        Option("privilege", Choice("USER", "OPERATOR", "ADMINISTRATOR"), default="OPERATOR",
               doc="Privilege level (ipmitool -L); OPERATOR is enough for chassis power control."),
        Option("timeout", Duration(minimum=1, maximum=300), default=20.0, doc="Hard deadline of one ipmitool run."),
    )  # fmt: skip


class HostSection(Declared):
    """[host.NAME]: a host's static facts (engines report the rest)."""

    KIND = "powerwaked"
    TYPE = "host"
    OPTIONS = (
        Option("mac", ListOf(Mac(), max_items=32), default=(), doc="MAC address(es) for Wake-on-LAN."),
        Option("ip", ListOf(IpAddress(), max_items=64), default=(), doc="Addresses the sleep proxy watches for."),
        Option("groups", _NAMES, default=(), doc="Groups this host belongs to."),
        Option("wake", ListOf(Choice("wol", "ipmi")), default=("wol", "ipmi"),
               doc="Wake methods in order; ipmi is the escalation when WoL is not confirmed."),
        Option("secureon", SecureOn(), default="", secret=True, doc="SecureOn password of the host's NIC."),
        Option("bmc", HostAddress(), default="", doc="BMC address (IPMI)."),
        Option("segment", _FLEET_NAME, default="",
               doc="Fleet mode: the host's L2 segment (default: the segment whose subnets hold one of its ip, else "
                   "the segment of the instance that took its first report)."),
        Option("bmc_port", Integer(1, 65535), default=None, doc="BMC port (default: [ipmi] port)."),
        Option("bmc_user", _USER, default="", doc="BMC user (default: [ipmi] user)."),
        Option("bmc_password", String(), default="", secret=True, doc="BMC password (default: [ipmi] password)."),
    )  # fmt: skip


class GroupSection(Declared):
    """[group.NAME]: members of a group (in addition to [host.NAME] groups)."""

    KIND = "powerwaked"
    TYPE = "group"
    OPTIONS = (
        Option("hosts", _NAMES, default=(), doc="Member hosts."),
        Option("nap_action", Choice(*NAP_ACTIONS), default="suspend", doc="What 'nap' means for this group."),
        Option("wake_rate", Number(0, 100000), default=0.0,
               doc="At most this many of the group's hosts woken per minute, on top of [powerwaked] wake_rate "
                   "(0: only the fleet-wide limit)."),
        Option("nap_rate", Number(0, 100000), default=0.0,
               doc="At most this many of the group's hosts napped per minute (0: only the fleet-wide limit)."),
        Option("wake_after_nap", Duration(maximum=7 * 86400), default=0.0,
               doc="Anti-flap: a host napped less than this ago is woken by the proxy, a schedule or the cluster "
                   "policy only once this has passed (the wake waits in the queue); admins and the UPS policy are "
                   "not held back."),
        Option("nap_after_wake", Duration(maximum=7 * 86400), default=0.0,
               doc="Anti-flap: a host woken less than this ago is not napped by a schedule or the cluster policy "
                   "(refused, with the reason)."),
        Option("max_transitions", Integer(0, 100000), default=0,
               doc="At most this many naps plus wakes of one host per local day by the proxy, schedules and the "
                   "cluster policy; more are refused (0: no cap). Admin and UPS requests are not capped."),
        Option("nap_from", Calendar(), default=None,
               doc="Nap window: schedules and the cluster policy nap this group's hosts only from this event until "
                   "the next nap_until event (e.g. Mon..Fri 20:00); admin and UPS naps are not bound by it."),
        Option("nap_until", Calendar(), default=None,
               doc="End of the nap window (e.g. Mon..Fri 07:00); goes with nap_from."),
        Option("mode", Choice("act", "recommend"), default="act",
               doc="recommend: schedules and the cluster policy only record what they would do (GET /v1/decisions) "
                   "until an admin approves it (powerwake approve ID); act: they act."),
        Option("test_wake", Calendar(), default=None,
               doc="Test wakes: from each of these times (OnCalendar, e.g. Sat 03:00) for test_wake_window, sleeping "
                   "members never woken since they joined (and marked ones, see test_wake_marked) are woken, "
                   "confirmed and recorded; they then nap again by their own engine or policy."),
        Option("test_wake_window", Duration(minimum=1, maximum=7 * 86400), default=3600.0,
               doc="How long each test-wake window stays open after its test_wake time."),
        Option("test_wake_marked", Boolean(), default=True,
               doc="Test wakes also retry members marked by a failed wake (once their automatic retries are over); "
                   "a test wake that succeeds clears the mark."),
        Option("test_wakes_at_once", Integer(1, 1000), default=1,
               doc="Test wakes of this group in flight at once (each waits for its confirmation)."),
    )  # fmt: skip


class UpsSection(Declared):
    """[ups.NAME]: shed groups while a NUT UPS is on battery, bring them back when mains returns."""

    KIND = "powerwaked"
    TYPE = "ups"
    OPTIONS = (
        Option("ups", String(nonempty=True, max_length=64, pattern=r"[A-Za-z0-9_.-]+", form="a NUT UPS name"),
               required=True, doc="UPS name in upsd."),
        Option("host", HostAddress(), default="127.0.0.1", doc="upsd host."),
        Option("port", Integer(1, 65535), default=3493, doc="upsd port."),
        Option("username", _USER, default="", doc="upsd user (if reading needs a login)."),
        Option("password", String(), default="", secret=True, doc="upsd password."),
        Option("groups", ListOf(_NAMES.item, nonempty=True), required=True,
               doc="Groups to shed, least important first; they come back in reverse order."),
        Option("action", Choice("nap", "poweroff"), default="nap",
               doc="nap (the group's nap_action) or poweroff."),
        Option("after", Duration(), default=300.0, doc="On battery this long before shedding starts."),
        Option("step", Duration(), default=30.0, doc="Time between one group and the next (shedding and waking)."),
        Option("resume_charge", Number(0, 100), default=80.0,
               doc="On mains, wake groups back once battery.charge reaches this percentage."),
        Option("resume_delay", Duration(), default=60.0,
               doc="On mains, wake back after this long when the UPS does not report battery.charge."),
        Option("poll", Duration(minimum=0.2), default=5.0, doc="How often upsd is asked."),
        Option("timeout", Duration(minimum=0.1), default=3.0, doc="upsd connection and reply timeout."),
    )  # fmt: skip


class ScheduleSection(Declared):
    """[schedule.NAME]: calendar windows for groups (wake at, nap after when idle)."""

    KIND = "powerwaked"
    TYPE = "schedule"
    OPTIONS = (
        Option("groups", ListOf(_NAMES.item, nonempty=True), required=True, doc="Groups it applies to."),
        Option("wake", Calendar(), default=None, doc="When to wake the groups (OnCalendar, e.g. Mon..Fri 07:00)."),
        Option("nap", Calendar(), default=None, doc="From when on idle hosts are napped (e.g. Mon..Fri 20:00)."),
        Option("idle", Duration(), default=600.0, doc="After 'nap', nap a host once it reports this much idle time."),
    )


class ClusterSection(Declared):
    """[cluster.NAME]: keep enough hosts of a load-balanced group awake, nap the surplus."""

    KIND = "powerwaked"
    TYPE = "cluster"
    OPTIONS = (
        Option("group", _NAMES.item, required=True, doc="The group behind the load balancer."),
        Option("min_awake", Integer(0, 100000), default=1, doc="Never fewer awake hosts than this."),
        Option("capacity", Number(minimum=0.01), default=0.7,
               doc="Load one host may carry (reported load per CPU, or status URL units per host)."),
        Option("source", Choice("reports", "url"), default="reports",
               doc="reports: the engines' load; url: a number from 'url'."),
        Option("url", HttpUrl(), default="", doc="Status URL giving the group's total load (plain number or JSON)."),
        Option("json_key", String(max_length=256, pattern=r"[^\s]+", form="a dotted key (no spaces)"), default="",
               doc="With a JSON status page: the key holding the number."),
        Option("low_for", Duration(), default=600.0, doc="Load must stay low this long before a host is napped."),
        Option("step", Duration(), default=300.0, doc="At most one nap per this interval."),
        Option("headroom", Integer(0, 1000), default=0, doc="Extra hosts kept awake above the computed need."),
        Option("rotation", Choice("longest", "name"), default="longest",
               doc="Among equally good candidates: longest naps the host awake longest and wakes the host asleep "
                   "longest (wear and test coverage spread over the group); name takes them in name order."),
        Option("rotation_margin", Number(0, 1e6), default=0.01,
               doc="Nap candidates whose load per CPU is within this of the least loaded one count as equally good."),
    )  # fmt: skip


class SegmentSection(Declared):
    """[segment.NAME]: an L2 segment of the fleet (fleet mode): the subnets its hosts sit on."""

    KIND = "powerwaked"
    TYPE = "segment"
    OPTIONS = (
        Option("subnets", ListOf(Network(), nonempty=True, max_items=256), required=True,
               doc="The segment's subnets (CIDR, IPv4 or IPv6): a host with an address in one sits on this segment. "
                   "Two segments' subnets never overlap."),
    )  # fmt: skip


_WATTS = Number(0, 100000)
POWER_STATES = ("on", "idle", "powersave", "suspended", "off")  # the energy accounting's states (energy.py)
# Typical figures of a recent 1U two-socket server: working ~200 W, idle ~110 W, with the powersave
# tweaks ~85 W, suspended (S3) ~6 W, soft-off ~4 W (the BMC's standby).
DEFAULT_WATTS = {"on": 200.0, "idle": 110.0, "powersave": 85.0, "suspended": 6.0, "off": 4.0}


class MetricsSection(Declared):
    """[metrics]: the Prometheus endpoint GET /metrics (same port as the API)."""

    KIND = "powerwaked"
    TYPE = "metrics"
    OPTIONS = (
        Option("enabled", Boolean(), default=True, doc="Serve GET /metrics (Prometheus text format)."),
        Option("local", Boolean(), default=True,
               doc="Serve loopback clients (127.0.0.0/8, ::1) without a token; every other client needs the token."),
        Option("token", String(max_length=4096, pattern=r"[\x21-\x7e]*", form="printable ASCII without spaces"),
               default="", secret=True,
               doc="Bearer token for scrapes from other addresses (Authorization: Bearer TOKEN; Prometheus "
                   "authorization.credentials_file). Empty: only loopback is served."),
        Option("token_file", _path(), default="",
               doc="Read the token from this file instead (first line); refused unless only its owner can read it."),
    )  # fmt: skip


class EnergySection(Declared):
    """[energy]: the power each state draws by default, and the price of a kWh (energy saved vs always-on)."""

    KIND = "powerwaked"
    TYPE = "energy"
    OPTIONS = tuple(
        Option("watts_" + state, _WATTS, default=DEFAULT_WATTS[state],
               doc="Watts a host draws %s (default: a typical 1U server)." % what)
        for state, what in (
            ("on", "awake and working: the always-on baseline savings are counted against"),
            ("idle", "awake and idle (the engine's grace period before a nap)"),
            ("powersave", "awake with the powersave tweaks applied (engine state napping)"),
            ("suspended", "suspended or hibernated (asleep)"),
            ("off", "powered off (the BMC's standby power)"),
        )
    ) + (
        Option("price_per_kwh", Number(0, 1000), default=0.15, doc="Price of one kWh, for the cost saved."),
        Option("currency", String(nonempty=True, max_length=16, pattern=r"[A-Za-z0-9_.$-]+", form="a currency code"),
               default="USD", doc="Currency label of price_per_kwh (shown with the cost; e.g. EUR)."),
    )  # fmt: skip


class EnergyProfileSection(Declared):
    """[energy_profile.NAME]: the watts of some hosts or groups, where they differ from [energy]."""

    KIND = "powerwaked"
    TYPE = "energy_profile"
    OPTIONS = (
        Option("hosts", _NAMES, default=(), doc="Hosts this profile applies to (wins over groups)."),
        Option("groups", _NAMES, default=(), doc="Groups this profile applies to (a host takes its first such group)."),
    ) + tuple(
        Option("watts_" + state, _WATTS, default=None, doc="Watts %s (default: [energy] watts_%s)." % (state, state))
        for state in POWER_STATES
    )  # fmt: skip


SECTIONS: Dict[str, Type[Declared]] = {
    cls.TYPE: cls
    for cls in (
        ServerSection, ProxySection, IpmiSection, HostSection, GroupSection, UpsSection, ScheduleSection,
        ClusterSection, MetricsSection, EnergySection, EnergyProfileSection, SegmentSection,
    )
}  # fmt: skip
NAMED = ("host", "group", "ups", "schedule", "cluster", "energy_profile", "segment")


class ServerConfig:
    def __init__(self) -> None:
        self.files: List[str] = []
        self.server: Dict[str, Any] = ServerSection.parse_options({})
        self.proxy: Dict[str, Any] = ProxySection.parse_options({})
        self.ipmi: Dict[str, Any] = IpmiSection.parse_options({})
        self.metrics: Dict[str, Any] = MetricsSection.parse_options({})
        self.energy: Dict[str, Any] = EnergySection.parse_options({})
        self.named: Dict[str, Dict[str, Dict[str, Any]]] = {kind: {} for kind in NAMED}
        # (section, option) whose value was refused (and reported): checks across options leave them alone, as their
        # default stands in for a value the admin did not mean.
        self.refused: Set[Tuple[str, str]] = set()
        self._networks: Optional[Tuple[Any, List[Tuple[str, List[Any]]]]] = None  # ``_segment_networks``'s

    @property
    def hosts(self) -> Dict[str, Dict[str, Any]]:
        return self.named["host"]

    @property
    def groups(self) -> Dict[str, Dict[str, Any]]:
        return self.named["group"]

    def group_members(self) -> Dict[str, List[str]]:
        """Group name to member hosts, from [group.X] hosts and [host.Y] groups."""
        # Ordered sets (dict keys): a list's "in" per host made this O(n^2), 0.4 s at 10,000 hosts in one group.
        members: Dict[str, Dict[str, None]] = {name: dict.fromkeys(opts["hosts"]) for name, opts in self.groups.items()}
        for host, opts in self.hosts.items():
            for group in opts["groups"]:
                members.setdefault(group, {})[host] = None
        return {group: list(names) for group, names in members.items()}

    def watts(self, profile: Optional[Dict[str, Any]] = None) -> Dict[str, float]:
        """Watts per power state: a profile's own values, [energy]'s for the rest."""
        profile = profile or {}
        return {
            state: float(profile.get("watts_" + state) if profile.get("watts_" + state) is not None
                         else self.energy["watts_" + state])
            for state in POWER_STATES
        }  # fmt: skip

    def nap_action(self, group: str) -> str:
        return str(self.groups.get(group, {}).get("nap_action") or "suspend")

    @property
    def segments(self) -> Dict[str, Dict[str, Any]]:
        return self.named["segment"]

    @property
    def fleet(self) -> bool:
        """Fleet mode: several instances share one PostgreSQL (on when [powerwaked] segment is set)."""
        return bool(self.server["segment"])

    @property
    def instance(self) -> str:
        """This instance's name: ``instance``, or the host's short name made a valid one."""
        if self.server["instance"]:
            return str(self.server["instance"])
        return default_instance_name(socket.gethostname())

    def segment_of(self, name: str, ips: Iterable[str] = ()) -> Optional[str]:
        """The one home of host -> segment resolution (fleet mode): the host's own ``segment``, else the segment
        whose subnets hold one of its configured or given addresses, else None (the caller decides: the
        segment of the instance that took the host's first report)."""
        host = self.hosts.get(name)
        if host is not None and host["segment"]:
            return str(host["segment"])
        addresses = list(host["ip"]) if host is not None else []
        addresses += [ip for ip in ips if ip not in addresses]
        for text in addresses:
            try:
                address = ipaddress.ip_address(str(text).split("%", 1)[0])
            except ValueError:
                continue
            for segment, networks in self._segment_networks():
                if any(address in network for network in networks):
                    return segment
        return None

    def _segment_networks(self) -> List[Tuple[str, List[Any]]]:
        """Each segment's subnets, parsed once (not for every address of every report: a third of an instance's time
        while 100,000 hosts register), again only when the sections changed."""
        key = tuple((segment, tuple(opts["subnets"])) for segment, opts in self.segments.items())
        if self._networks is None or self._networks[0] != key:
            self._networks = (key, [(segment, [ipaddress.ip_network(net) for net in nets]) for segment, nets in key])
        return self._networks[1]

    @property
    def secret(self) -> str:
        return str(self.server["secret"])

    @property
    def store(self) -> str:
        """The store URL: ``store``, or by default SQLite's registry.sqlite3 beside ``state_file``."""
        if self.server["store"]:
            return str(self.server["store"])
        return "sqlite://" + os.path.join(os.path.dirname(str(self.server["state_file"])), "registry.sqlite3")


def load_config(paths: List[str]) -> Tuple[ServerConfig, List[ConfigError]]:
    """Parse and validate; returns every problem located as FILE:LINE."""
    doc, errors = ini.read_files(paths)
    config = ServerConfig()
    config.files = list(doc.files)
    for section in doc:
        kind, _dot, name = section.name.partition(".")
        cls = SECTIONS.get(kind)
        if cls is None:
            errors.append(
                section.error(
                    "unknown section [%s] (known: %s)"
                    % (section.name, ", ".join(sorted(k + (".NAME" if k in NAMED else "") for k in SECTIONS)))
                )
            )
            continue
        if (kind in NAMED) != bool(name):
            errors.append(
                section.error(
                    "section [%s] %s"
                    % (section.name, "needs a name: [%s.NAME]" % kind if kind in NAMED else "takes no name")
                )
            )
            continue
        if name and not _NAME_RE.match(name):
            errors.append(section.error("bad name %r (use letters, digits, _ . -)" % name))
            continue

        def on_error(key: str, message: str, section: Any = section) -> None:
            errors.append(section.error(message, key))
            config.refused.add((section.name, key))

        values = cls.parse_options(section.texts(), on_error)
        if any(opt.required and opt.name not in values for opt in cls.OPTIONS):
            continue  # reported; the later checks must not trip over the missing value
        for opt in cls.OPTIONS:
            values.setdefault(opt.name, opt.default)  # a bad value was reported: check the rest with the default
        if kind in NAMED:
            config.named[kind][name] = values
        else:
            setattr(config, "server" if kind == "powerwaked" else kind, values)
    _check(config, doc, errors)
    return config, errors


def _check(config: ServerConfig, doc: Any, errors: List[ConfigError]) -> None:
    def where(name: str, key: Optional[str] = None) -> Any:
        section = doc.get(name)
        if section is not None:
            return section.error
        first = config.files[0] if config.files else DEFAULT_CONFIG
        return lambda message, key=None: ConfigError("[%s] %s" % (name, message), first, 1)

    _read_secret_file(config.server, "secret", where("powerwaked"), errors)
    _read_secret_file(config.metrics, "token", where("metrics"), errors)
    if config.metrics["token"] and len(config.metrics["token"]) < MIN_MASTER:
        errors.append(where("metrics")("the metrics token is too short (at least %d characters)" % MIN_MASTER, "token"))
    _check_energy(config, where, errors)
    if not config.server["secret"]:
        errors.append(where("powerwaked")("a fleet secret is required (secret or secret_file)", "secret"))
    elif len(config.server["secret"]) < MIN_MASTER:
        errors.append(where("powerwaked")("the fleet secret is too short (at least 16 characters)", "secret"))
    if not config.server["listen"]:
        errors.append(
            where("powerwaked")("listen is required: the segment interface's address (0.0.0.0: all)", "listen")
        )
    if bool(config.server["tls_cert"]) != bool(config.server["tls_key"]):
        errors.append(where("powerwaked")("tls_cert and tls_key go together", "tls_cert"))
    for key in ("tls_cert", "tls_key"):
        if config.server[key] and not os.path.isfile(config.server[key]):
            errors.append(where("powerwaked")("%s: no such file %s" % (key, config.server[key]), key))
    if config.server["wol_transport"] != "udp" and not config.server["interface"]:
        errors.append(
            where("powerwaked")("wol_transport = %s needs interface" % config.server["wol_transport"], "wol_transport")
        )
    members = config.group_members()
    for kind, key in (("ups", "groups"), ("schedule", "groups")):
        for name, opts in config.named[kind].items():
            for group in opts[key]:
                if group not in members:
                    errors.append(where("%s.%s" % (kind, name))("unknown group %r" % group, key))
    for name, opts in config.named["cluster"].items():
        if opts["group"] not in members:
            errors.append(where("cluster." + name)("unknown group %r" % opts["group"], "group"))
        if opts["source"] == "url" and not opts["url"]:
            errors.append(where("cluster." + name)("source = url needs url", "source"))
    for name, opts in config.groups.items():
        if (opts["nap_from"] is None) != (opts["nap_until"] is None):
            errors.append(where("group." + name)("nap_from and nap_until go together", "nap_from"))
    for name, opts in config.named["schedule"].items():
        if opts["wake"] is None and opts["nap"] is None:
            errors.append(where("schedule." + name)("a schedule needs wake, nap or both"))
    _check_fleet(config, where, errors)


def _check_fleet(config: ServerConfig, where: Any, errors: List[ConfigError]) -> None:
    """Fleet mode needs PostgreSQL and a declared segment; segments never overlap; a host's segment exists."""
    segment = config.server["segment"]
    if segment:
        try:
            kind = parse_store_url(config.store)[0]
        except ValueError:
            kind = ""  # the store option's own error says why
        if kind and kind != "postgresql" and ("powerwaked", "store") not in config.refused:
            message = "[powerwaked] segment = %s (fleet mode) needs store = postgresql://… (several instances share "
            errors.append(where("powerwaked")((message + "one database; SQLite is one file of one server)") % segment,
                                              "segment"))  # fmt: skip
        if segment not in config.segments:
            errors.append(
                where("powerwaked")("[powerwaked] segment %r: no [segment.%s] section" % (segment, segment), "segment")
            )
    for name in config.segments:
        if not _FLEET_NAME.pattern.fullmatch(name):
            errors.append(where("segment." + name)("bad segment name %r (use a-z, 0-9 and -, at most 63)" % name))
    seen: List[Tuple[str, Any]] = []
    for name, opts in sorted(config.segments.items()):
        for text in opts["subnets"]:
            net = ipaddress.ip_network(text)
            for other, other_net in seen:
                if net.version == other_net.version and net.overlaps(other_net):
                    errors.append(where("segment." + name)(
                        "[segment.%s] subnets: %s overlaps %s of [segment.%s] (a host must sit on one segment)"
                        % (name, net, other_net, other), "subnets"))  # fmt: skip
            seen.append((name, net))
    for name, opts in config.hosts.items():
        if opts["segment"] and opts["segment"] not in config.segments:
            message = "[host.%s] segment %r: no [segment.%s] section" % (name, opts["segment"], opts["segment"])
            errors.append(where("host." + name)(message, "segment"))


def _read_secret_file(values: Dict[str, Any], key: str, error: Any, errors: List[ConfigError]) -> None:
    """``KEY_file``: the first line of an owner-only file becomes ``KEY`` (never shown in any message)."""
    path = values[key + "_file"]
    if not path:
        return
    try:
        with open(path, encoding="utf-8") as handle:
            readable = others_can_read(handle.fileno())
            line = handle.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"  # never the content
        errors.append(error("cannot read %s_file %s: %s" % (key, path, reason), key + "_file"))
        return
    if readable:
        errors.append(
            error("%s_file %s is readable by its group or others: chmod 0600 it" % (key, path), key + "_file")
        )
    else:
        values[key] = line


def _check_energy(config: ServerConfig, where: Any, errors: List[ConfigError]) -> None:
    """Every state draws at most what 'on' draws (savings are counted against always-on); no host or group in two
    profiles."""
    profiles = [("energy", config.energy)] + [
        ("energy_profile." + n, o) for n, o in config.named["energy_profile"].items()
    ]
    for section, opts in profiles:
        watts = config.watts(opts)
        for state in POWER_STATES[1:]:
            if watts[state] > watts["on"]:
                errors.append(
                    where(section)("watts_%s (%g) is more than watts_on (%g)" % (state, watts[state], watts["on"]),
                                   "watts_" + state)
                )  # fmt: skip
    for key in ("hosts", "groups"):
        owner: Dict[str, str] = {}
        for name, opts in config.named["energy_profile"].items():
            for item in opts[key]:
                if item in owner:
                    errors.append(
                        where("energy_profile." + name)(
                            "%s %r is already in [energy_profile.%s]" % (key[:-1], item, owner[item]), key
                        )
                    )
                owner.setdefault(item, name)


def schema() -> Dict[str, Any]:
    """Every powerwaked section's options (the source of its reference in engine/README.md)."""
    return {
        "section": {(kind + ".NAME" if kind in NAMED else kind): cls.schema() for kind, cls in sorted(SECTIONS.items())}
    }


def default_instance_name(hostname: str) -> str:
    """A host's short name as an instance name: lower case, other characters as -, at most 63."""
    short = re.sub(r"[^a-z0-9-]", "-", hostname.split(".", 1)[0].lower()).strip("-")[:63].strip("-")
    return short or "powerwaked"


def config_files(main: str) -> List[str]:
    return ini.config_files(main, os.path.join(os.path.dirname(main), "powerwaked.d"))


def others_can_read(fd: int) -> bool:
    """True when anyone but the owner may read the open file (group or others read bit)."""
    return bool(os.fstat(fd).st_mode & 0o044)


def insecure_mode(path: str) -> bool:
    """True when a config file (it may hold secrets inline) is readable by its group or by others."""
    try:
        return bool(os.stat(path).st_mode & 0o044)
    except OSError:
        return False
