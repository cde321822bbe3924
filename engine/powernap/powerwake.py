"""powerwake: wake hosts by name, IP or MAC, and read the fleet server's view of them.

    powerwake [--method wol|ipmi|auto] [--wait] [options] TARGET...
    powerwake list [--json]
    powerwake status HOST [--json]
    powerwake clear-mark HOST [--json]

A TARGET is resolved to a MAC from, in order: the literal MAC; the fleet
server's registry (``/v1/hosts/TARGET``); ``[host.NAME]`` sections of
powerwaked.conf; the ethers files (``/var/cache/powerwake/ethers``,
``/etc/ethers``, ``~/.cache/ethers``: ``MAC NAME-OR-IP`` lines); and the
neighbour table (``/proc/net/arp``) after resolving the name to an address.
MACs learnt from the server or the neighbour table are cached, so a host
can be woken by name once it is asleep and gone from the ARP table.

``--method auto`` sends Wake-on-LAN and, with ``--wait``, escalates to IPMI
when the host did not come up within ``--confirm`` seconds.  IPMI needs the
BMC and its credentials from powerwaked.conf (readable by root), or else
the fleet server does it (an API request signed with the fleet's master
secret, from ``$POWERWAKE_SECRET`` or powerwaked.conf, for its method and
path; an engine's own host key cannot command the fleet).  An ``https://``
server is checked against the system CAs, ``$POWERWAKE_CAFILE``, or (for the
local server) its own ``tls_cert``.
``list`` and ``status`` show each host's wake health (the last wake: succeeded,
failed or never, how long it took, by which method); a host whose wake failed
is *marked* (kept out of napping until a wake succeeds), and ``clear-mark``
clears that mark on the server (a signed request, like IPMI wakes).
``--wait`` waits until the host accepts (or refuses) TCP on ``--port``.
Exit status: 0 when every target was woken (and is up, with --wait),
1 when any failed, 2 on usage errors.  (PowerNap's powerwake exited 0 on
failure.)
"""

import argparse
import json
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import ini, magic_packet
from .server import DEFAULT_PORT
from .server import protocol as P
from .server.config import DEFAULT_CONFIG as SERVER_CONFIG
from .server.wake import IpmiTarget, WakeError, WolSender, ipmi_power

ENGINE_CONFIG = "/etc/powernap/powernap.conf"
SYSTEM_CACHE = "/var/cache/powerwake/ethers"
ETHERS_FILES = (SYSTEM_CACHE, "/etc/ethers", "~/.cache/ethers")
ARP_TABLE = "/proc/net/arp"


class Target:
    def __init__(self, text: str):
        self.text = text
        self.mac: Optional[str] = None
        self.ip: Optional[str] = None
        self.name = text
        self.source = ""
        self.bmc: Optional[IpmiTarget] = None
        self.secureon = ""


# -- resolution ---------------------------------------------------------------------------------
def read_ethers(paths: Sequence[str]) -> List[Tuple[str, str]]:
    """(mac, name-or-ip) pairs from ethers files; bad lines are skipped."""
    pairs = []
    for path in paths:
        try:
            with open(os.path.expanduser(path), encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split("#", 1)[0].split()
            if len(fields) < 2:
                continue
            try:
                pairs.append((magic_packet.format_mac(magic_packet.parse_mac(fields[0])), fields[1]))
            except ValueError:
                continue
    return pairs


def read_arp_table(path: str = ARP_TABLE) -> Dict[str, str]:
    """IP -> MAC from the kernel's neighbour table (complete entries only)."""
    table = {}
    try:
        with open(path, encoding="ascii") as handle:
            lines = handle.read().splitlines()[1:]
    except OSError:
        return table
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[2] != "0x0" and fields[3] != "00:00:00:00:00:00":
            table[fields[0]] = fields[3].lower()
    return table


def resolve_ip(name: str) -> Optional[str]:
    try:
        socket.inet_aton(name)
        return name
    except OSError:
        pass
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    return str(infos[0][4][0]) if infos else None


def cache_mac(mac: str, name: str, path: str) -> None:
    """Remember ``MAC name`` in an ethers cache (replacing an older line for the same name)."""
    path = os.path.expanduser(path)
    try:
        existing = []
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                existing = [line for line in handle.read().splitlines() if line.split()[1:2] != [name]]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            handle.write("\n".join(existing + ["%s %s" % (mac, name)]) + "\n")
        os.replace(path + ".tmp", path)
    except OSError:
        pass  # a cache is a convenience, never a failure


class Resolver:
    def __init__(
        self,
        server: Optional["ServerClient"],
        config: Dict[str, Dict[str, str]],
        ethers: Optional[Sequence[str]] = None,
        arp_path: Optional[str] = None,
        cache_path: Optional[str] = None,
    ):
        self.server = server
        self.config = config  # powerwaked.conf sections as text
        self.ethers = ethers if ethers is not None else ETHERS_FILES
        self.arp_path = arp_path or ARP_TABLE
        self.cache_path = cache_path or (SYSTEM_CACHE if os.geteuid() == 0 else "~/.cache/ethers")

    def resolve(self, text: str) -> Target:
        target = Target(text)
        try:
            target.mac = magic_packet.format_mac(magic_packet.parse_mac(text))
            target.source = "literal"
        except ValueError:
            pass
        if target.mac is None and self.server is not None:
            record = self.server.host(text)
            if record and record.get("macs"):
                target.mac, target.name, target.source = record["macs"][0], record["name"], "server"
                target.ip = next((ip for ip in record.get("ips") or () if ":" not in ip), None)
        section = self.config.get("host." + target.name) or self.config.get("host." + text)
        if section:
            if target.mac is None and section.get("mac"):
                target.mac = magic_packet.format_mac(magic_packet.parse_mac(section["mac"].split(",")[0]))
                target.source = "config"
            if target.ip is None and section.get("ip"):
                target.ip = section["ip"].split(",")[0].strip()
            target.secureon = section.get("secureon", "")
            target.bmc = self._bmc(section)
        if target.mac is None:
            for mac, name in read_ethers(self.ethers):
                if name == text:
                    target.mac, target.source = mac, "ethers"
                    break
        if target.ip is None:
            target.ip = resolve_ip(text)
        if target.mac is None and target.ip is not None:
            target.mac = read_arp_table(self.arp_path).get(target.ip)
            if target.mac is not None:
                target.source = "arp"
        if target.mac is not None and target.source in ("server", "arp") and target.mac != text:
            cache_mac(target.mac, text, self.cache_path)
        return target

    def _bmc(self, section: Dict[str, str]) -> Optional[IpmiTarget]:
        if not section.get("bmc"):
            return None
        defaults = self.config.get("ipmi", {})
        return IpmiTarget(
            section["bmc"],
            section.get("bmc_user") or defaults.get("user", ""),
            section.get("bmc_password") or defaults.get("password", ""),
            int(section.get("bmc_port") or defaults.get("port") or 623),
            int(defaults.get("cipher") or 3),
            str(defaults.get("privilege") or "OPERATOR").upper(),  # chassis power control needs no more
        )


# -- the fleet server ---------------------------------------------------------------------------
class ServerClient:
    """The powerwaked HTTP API."""

    def __init__(self, url: str, secret: str = "", timeout: float = 5.0, cafile: str = "", pinned: bool = False):
        self.url = url.rstrip("/")
        self.secret = secret
        self.timeout = timeout
        self.context: Optional[ssl.SSLContext] = None
        if self.url.startswith("https://"):
            self.context = ssl.create_default_context(cafile=cafile or None)
            # The local server's own certificate as the only CA: its name need not match 127.0.0.1.
            self.context.check_hostname = not pinned

    def _open(self, request: urllib.request.Request) -> Any:
        with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as reply:
            return json.loads(reply.read().decode("utf-8"))

    def get(self, path: str) -> Any:
        headers = {}
        if self.secret:
            signed = P.encode(self.secret.encode(), self._read(path), P.http_label("GET", path))
            headers["Authorization"] = signed.decode("utf-8")
        return self._open(urllib.request.Request(self.url + path, headers=headers))

    def _read(self, path: str) -> Dict[str, Any]:
        return {"kind": "read", "from": socket.gethostname(), "path": path}

    def post(self, path: str, message: Dict[str, Any]) -> Any:
        body = P.encode(
            self.secret.encode(),
            dict(message, kind="request", **{"from": socket.gethostname()}),
            P.http_label("POST", path),
        )
        request = urllib.request.Request(
            self.url + path, data=body, method="POST", headers={"Content-Type": "application/octet-stream"}
        )
        return self._open(request)

    def host(self, name: str) -> Optional[Dict[str, Any]]:
        try:
            return self.get("/v1/hosts/" + urllib.request.quote(name, safe=""))
        except (OSError, ValueError):
            return None


def server_from_configs(explicit: str, engine_config: str, server_config: Dict[str, Dict[str, str]]) -> Tuple[str, str]:
    """(API base URL, master secret) from --server / $POWERWAKE_SERVER, the engine's [server] url, or powerwaked.conf.

    The secret is the fleet's master ($POWERWAKE_SECRET or powerwaked.conf): an engine's token is its own host
    key, which signs its reports and nothing else.
    """
    secret = os.environ.get("POWERWAKE_SECRET", "")
    url = explicit or os.environ.get("POWERWAKE_SERVER", "")
    doc, _errors = ini.read_files([engine_config]) if os.path.exists(engine_config) else (None, [])
    section = doc.get("server") if doc is not None else None
    if section is not None:
        url = url or section.texts().get("url", "")
    own = server_config.get("powerwaked", {})
    secret = secret or own.get("secret", "")
    if not url and own:
        listen = own.get("listen", "") or "127.0.0.1"
        listen = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(listen, listen)
        url = "%s://%s:%s" % ("https" if own.get("tls_cert") else "http", listen, own.get("port") or DEFAULT_PORT)
    if url:
        scheme, host, port = P.parse_server_url(url)
        url = "%s://%s:%d" % ("https" if scheme == "https" else "http", "[%s]" % host if ":" in host else host, port)
    return url, secret


def server_client(url: str, secret: str, server_config: Dict[str, Dict[str, str]]) -> Optional[ServerClient]:
    """The API client, with the CA for https: $POWERWAKE_CAFILE, else the local server's own certificate."""
    if not url:
        return None
    cafile = os.environ.get("POWERWAKE_CAFILE", "")
    own_cert = server_config.get("powerwaked", {}).get("tls_cert", "")
    pinned = not cafile and bool(own_cert) and os.access(own_cert, os.R_OK)
    return ServerClient(url, secret, cafile=cafile or (own_cert if pinned else ""), pinned=pinned)


def read_server_config(path: str) -> Dict[str, Dict[str, str]]:
    if not os.access(path, os.R_OK):
        return {}
    doc, _errors = ini.read_files([path])
    return {section.name: section.texts() for section in doc}


# -- waiting ------------------------------------------------------------------------------------
def tcp_answers(ip: str, port: int, timeout: float = 1.0) -> bool:
    """True when the host is up: it accepts, or refuses (RST), a TCP connection."""
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def wait_up(ip: str, port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        if tcp_answers(ip, port, timeout=min(1.0, max(0.1, deadline - started))):
            return True
        time.sleep(max(0.0, 0.5 - (time.monotonic() - started)))
    return False


# -- commands -----------------------------------------------------------------------------------
def wake_one(
    target: Target, args: argparse.Namespace, sender: WolSender, server: Optional[ServerClient], out: Any
) -> bool:
    method = args.method
    sent = []
    if method in ("wol", "auto") and target.mac:
        try:
            sender.send(target.mac, args.secureon or target.secureon, repeat=args.repeat)
            sent.append("wol")
        except (WakeError, ValueError) as exc:
            print("powerwake: %s: %s" % (target.text, exc), file=sys.stderr)
    if (method == "ipmi" or (method == "auto" and not sent)) and _ipmi_on(target, args, server):
        sent.append("ipmi")
    if not sent:
        print(
            "powerwake: %s: cannot wake (no MAC found%s)"
            % (target.text, "" if method == "wol" else ", no BMC or server for IPMI"),
            file=sys.stderr,
        )
        return False
    print("%s: sent %s%s" % (target.text, "+".join(sent), " to %s" % target.mac if "wol" in sent else ""), file=out)
    if not args.wait:
        return True
    if not target.ip:
        print("powerwake: %s: --wait needs an IP address for the host" % target.text, file=sys.stderr)
        return False
    first = args.timeout if (method != "auto" or "ipmi" in sent) else min(args.confirm, args.timeout)
    if wait_up(target.ip, args.port, first):
        print("%s: up" % target.text, file=out)
        return True
    if method == "auto" and "ipmi" not in sent and _ipmi_on(target, args, server):
        print("%s: no answer after WoL, escalated to IPMI" % target.text, file=out)
        if wait_up(target.ip, args.port, max(0.0, args.timeout - first)):
            print("%s: up" % target.text, file=out)
            return True
    print("powerwake: %s: did not come up within %gs" % (target.text, args.timeout), file=sys.stderr)
    return False


def _ipmi_on(target: Target, args: argparse.Namespace, server: Optional[ServerClient]) -> bool:
    if target.bmc is not None:
        try:
            ipmi_power(target.bmc, "on", timeout=args.ipmi_timeout)
            return True
        except WakeError as exc:
            print("powerwake: %s: %s" % (target.text, exc), file=sys.stderr)
            return False
    if server is not None and server.secret:
        try:
            answer = server.post("/v1/wake", {"host": target.name, "method": "ipmi"})
            return "ipmi" in str(answer.get("method"))
        except (OSError, ValueError) as exc:
            print("powerwake: %s: server IPMI wake failed: %s" % (target.text, exc), file=sys.stderr)
    return False


def cmd_list(args: argparse.Namespace, server: Optional[ServerClient], out: Any) -> int:
    if server is None:
        print("powerwake: no fleet server configured (--server, $POWERWAKE_SERVER or [server] url)", file=sys.stderr)
        return 1
    try:
        hosts = server.get("/v1/hosts")["hosts"]
    except (OSError, ValueError, KeyError) as exc:
        print("powerwake: cannot read %s: %s" % (server.url, exc), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(hosts, indent=2, sort_keys=True), file=out)
        return 0
    print("%-20s %-12s %-9s %-17s %-16s %-10s %s" % ("HOST", "STATE", "SEEN", "MAC", "IP", "WAKE", "GROUPS"), file=out)
    now = time.time()
    for host in hosts:
        seen = _ago(now, host.get("last_seen"))
        ip = next((i for i in host.get("ips") or () if ":" not in i), "-")
        state = host["state"] + ("*" if host.get("hold") else "")
        health = host.get("wake_health") or {}
        print(
            "%-20s %-12s %-9s %-17s %-16s %-10s %s"
            % (
                host["name"],
                state,
                seen,
                host.get("macs", ["-"])[0] if host.get("macs") else "-",
                ip,
                str(health.get("result") or "never") + ("!" if health.get("marked") else ""),
                ",".join(host.get("groups") or ()) or "-",
            ),
            file=out,
        )
    return 0


def cmd_status(args: argparse.Namespace, server: Optional[ServerClient], out: Any) -> int:
    if server is None:
        print("powerwake: no fleet server configured (--server, $POWERWAKE_SERVER or [server] url)", file=sys.stderr)
        return 1
    try:
        host = server.get("/v1/hosts/" + urllib.request.quote(args.host, safe=""))
    except urllib.error.HTTPError as exc:
        print("powerwake: %s: %s" % (args.host, "unknown host" if exc.code == 404 else exc), file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print("powerwake: cannot read %s: %s" % (server.url, exc), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(host, indent=2, sort_keys=True), file=out)
        return 0
    now = time.time()
    lines = [
        ("host", host["name"]),
        ("state", host["state"] + (" (stage %s)" % host["stage"] if host.get("stage") else "")),
        ("since", _ago(now, host.get("since")) + " ago"),
        ("last seen", _ago(now, host.get("last_seen")) + " ago"),
        ("on hold", host.get("hold") or "no"),
        ("MACs", ", ".join(host.get("macs") or ()) or "-"),
        ("addresses", ", ".join(host.get("ips") or ()) or "-"),
        ("groups", ", ".join(host.get("groups") or ()) or "-"),
        ("wake by", ", ".join(host.get("wake") or ()) or "-"),
        (
            "next wake",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(host["next_wake"])) if host.get("next_wake") else "-",
        ),
        (
            "wakes",
            "%d%s"
            % (
                host.get("wakes") or 0,
                " (last: %s by %s)" % (host["last_wake"].get("cause"), host["last_wake"].get("method"))
                if host.get("last_wake")
                else "",
            ),
        ),
    ]
    lines.append(("last wake", wake_health_text(host.get("wake_health") or {}, now)))
    for key, value in lines:
        print("%-10s %s" % (key + ":", value), file=out)
    return 0


def cmd_policy(args: argparse.Namespace, server: Optional[ServerClient], out: Any) -> int:
    """decisions / approve / reject / veto: the policy gate's admin side (signed with the master secret)."""
    if server is None:
        print("powerwake: no fleet server configured (--server, $POWERWAKE_SERVER or [server] url)", file=sys.stderr)
        return 1
    quote = urllib.request.quote
    try:
        if args.command == "decisions":
            answer = server.get("/v1/decisions")["decisions"]
        elif args.command in ("approve", "reject"):
            body = {"force": True} if getattr(args, "force", False) else {}
            answer = server.post("/v1/decisions/%s/%s" % (quote(args.id, safe=""), args.command), body)
        elif args.clear:
            answer = server.post("/v1/groups/%s/veto" % quote(args.group, safe=""), {"clear": True})
        else:
            body = {"ttl": args.duration, "reason": args.reason}
            answer = server.post("/v1/groups/%s/veto" % quote(args.group, safe=""), body)
    except urllib.error.HTTPError as exc:
        print("powerwake %s: %s" % (args.command, _http_error(exc)), file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError) as exc:
        print("powerwake: cannot reach %s: %s" % (server.url, exc), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True), file=out)
    elif args.command == "decisions":
        print("%-16s %-5s %-20s %-9s %-8s %s" % ("ID", "DO", "HOST", "SOURCE", "EXPIRES", "WHY"), file=out)
        now = time.time()
        for decision in answer:
            print(
                "%-16s %-5s %-20s %-9s %-8s %s"
                % (decision["id"], decision["kind"], decision["host"], decision["source"],
                   _ago(decision["expires"], now), decision["cause"]),
                file=out,
            )  # fmt: skip
    else:
        print(_summary(answer), file=out)
    refused = isinstance(answer, dict) and answer.get("what") == "refused"
    return 1 if refused else 0


def _summary(answer: Dict[str, Any]) -> str:
    if "lifted" in answer:
        return "%s: %d veto(es) lifted" % (answer["group"], answer["lifted"])
    if "owner" in answer:
        return "%s: naps vetoed until %s (%s)" % (
            answer["group"], time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(answer["until"])), answer["reason"],
        )  # fmt: skip
    what = answer.get("what")
    detail = answer.get("reason") or answer.get("method") or ""
    return "%s %s: %s%s" % (answer.get("host"), answer.get("kind") or "", what, " (%s)" % detail if detail else "")


def _http_error(exc: Any) -> str:
    try:
        return str(json.loads(exc.read().decode("utf-8"))["error"])[:300]
    except (OSError, ValueError, KeyError, TypeError):
        return "HTTP %s" % exc.code


def wake_health_text(health: Dict[str, Any], now: float) -> str:
    """One line of a host's wake health: "failed 5m ago by wol after 45s (not confirmed ...); MARKED ..."."""
    result = str(health.get("result") or "never")
    if result == "never":
        text = "never woken"
    else:
        text = "%s %s ago by %s after %ss" % (
            result,
            _ago(now, health.get("ended")),
            health.get("method") or "?",
            health.get("seconds") if health.get("seconds") is not None else "?",
        )
        if health.get("test"):
            text += " (test wake)"
        if result == "failed" and health.get("error"):
            text += " (%s)" % health["error"]
    if health.get("in_flight"):
        text += "; a wake is being confirmed"
    if health.get("marked"):
        text += "; MARKED: kept out of napping until a wake succeeds"
        if health.get("retry_at"):
            text += ", retry in %s" % _ago(float(health["retry_at"]), now)
    return text


def cmd_clear_mark(args: argparse.Namespace, server: Optional[ServerClient], out: Any) -> int:
    """Clear a host's failed-wake mark on the fleet server (a request signed with the master secret)."""
    if server is None or not server.secret:
        print("powerwake: clear-mark needs the fleet server and its master secret", file=sys.stderr)
        return 1
    try:
        answer = server.post("/v1/clear-mark", {"host": args.host})
    except urllib.error.HTTPError as exc:
        print("powerwake: %s: %s" % (args.host, "unknown host" if exc.code == 404 else exc), file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print("powerwake: cannot reach %s: %s" % (server.url, exc), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True), file=out)
    else:
        print("%s: %s" % (answer["host"], "mark cleared" if answer.get("was_marked") else "was not marked"), file=out)
    return 0


def _ago(now: float, then: Optional[float]) -> str:
    if not then:
        return "never"
    seconds = max(0, int(now - then))
    if seconds < 120:
        return "%ds" % seconds
    if seconds < 7200:
        return "%dm" % (seconds // 60)
    return "%dh" % (seconds // 3600)


POLICY_COMMANDS = {
    "decisions": "List the fleet server's pending decisions (groups in recommend-only mode).",
    "approve": "Approve a pending decision: the server carries it out (rate limits still apply).",
    "reject": "Reject a pending decision.",
    "veto": "Stop a group's policy naps for a while (or lift its vetoes with --clear).",
}


def _seconds(text: str) -> float:
    from .options import Duration

    try:
        return float(Duration(minimum=1, maximum=7 * 86400).parse(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser(prog: str = "powerwake") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Wake hosts by name, IP or MAC (Wake-on-LAN, IPMI).")
    parser.add_argument("targets", nargs="+", metavar="TARGET", help="host name, IP address or MAC")
    parser.add_argument("--method", choices=("auto", "wol", "ipmi"), default="auto")
    parser.add_argument("--wait", action="store_true", help="wait until the host answers on --port")
    parser.add_argument("--timeout", type=float, default=120.0, help="--wait: give up after this many seconds")
    parser.add_argument("--confirm", type=float, default=30.0, help="auto: escalate to IPMI after this many seconds")
    parser.add_argument("--port", type=int, default=22, help="--wait: TCP port that shows the host is up")
    parser.add_argument("--interface", default="", help="send magic packets out of this interface")
    parser.add_argument("--broadcast", default="255.255.255.255", help="magic packet destination address")
    parser.add_argument("--wol-port", type=int, default=9, help="UDP port of magic packets (9 or 7)")
    parser.add_argument("--raw", action="store_true", help="send raw ethertype 0x0842 frames (needs --interface)")
    parser.add_argument("--repeat", type=int, default=1, help="send each magic packet this many times")
    parser.add_argument("--secureon", default="", help="SecureOn password")
    parser.add_argument("--ipmi-timeout", type=float, default=20.0, help="hard deadline of one IPMI command")
    _server_args(parser)
    return parser


def _server_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default="", help="fleet server (http(s)://HOST[:PORT]; default from the configs)")
    parser.add_argument("--config", default=SERVER_CONFIG, help="powerwaked.conf with hosts and BMCs")
    parser.add_argument("--engine-config", default=ENGINE_CONFIG, help=argparse.SUPPRESS)


def main(argv: Optional[Sequence[str]] = None, out: Any = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    if argv and argv[0] in POLICY_COMMANDS:
        sub = argparse.ArgumentParser(prog="powerwake " + argv[0], description=POLICY_COMMANDS[argv[0]])
        if argv[0] in ("approve", "reject"):
            sub.add_argument("id", help="the decision's id (powerwake decisions)")
        if argv[0] == "approve":
            sub.add_argument("--force", action="store_true", help="nap even though the group's naps are vetoed")
        if argv[0] == "veto":
            sub.add_argument("group")
            sub.add_argument("--for", dest="duration", type=_seconds, default=3600.0, help="how long (e.g. 2h)")
            sub.add_argument("--reason", default="", help="shown with the veto")
            sub.add_argument("--clear", action="store_true", help="lift every veto of the group")
        sub.add_argument("--json", action="store_true")
        _server_args(sub)
        args = sub.parse_args(argv[1:])
        args.command = argv[0]
        server_config = read_server_config(args.config)
        url, secret = server_from_configs(args.server, args.engine_config, server_config)
        return cmd_policy(args, server_client(url, secret, server_config), out)
    if argv and argv[0] in ("list", "status", "clear-mark"):
        sub = argparse.ArgumentParser(prog="powerwake " + argv[0])
        if argv[0] != "list":
            sub.add_argument("host")
        sub.add_argument("--json", action="store_true")
        _server_args(sub)
        args = sub.parse_args(argv[1:])
        server_config = read_server_config(args.config)
        url, secret = server_from_configs(args.server, args.engine_config, server_config)
        server = server_client(url, secret, server_config)
        command = {"list": cmd_list, "status": cmd_status, "clear-mark": cmd_clear_mark}[argv[0]]
        return command(args, server, out)
    args = build_parser().parse_args(argv)
    if args.raw and not args.interface:
        print("powerwake: --raw needs --interface", file=sys.stderr)
        return 2
    server_config = read_server_config(args.config)
    url, secret = server_from_configs(args.server, args.engine_config, server_config)
    server = server_client(url, secret, server_config)
    resolver = Resolver(server, server_config)
    sender = WolSender(args.interface, args.broadcast, args.wol_port, "raw" if args.raw else "udp")
    ok = True
    try:
        for text in args.targets:
            target = resolver.resolve(text)
            ok = wake_one(target, args, sender, server, out) and ok
    finally:
        sender.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
