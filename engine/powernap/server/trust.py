"""What a host may claim about itself: each host is trusted only for itself.

A report is signed with its host's own key, so it speaks for that host only
(``protocol.ServerKeys``).  What it claims about its addresses is checked
here before the registry sees it, because the sleep proxy acts on them
(wakes, and with ``answer_arp`` answers ARP in their name):

* a host with ``mac`` / ``ip`` in its ``[host.NAME]`` section may claim
  only those (the inventory is the authority);
* otherwise an address is pinned to the first host that claimed it (or was
  configured with it): another host's later claim is refused;
* the server's own addresses and MACs and the default gateways' are never
  accepted from anyone.

Refused claims are dropped from the report (the rest of it counts) and
logged once per host and address.
"""

import logging
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple


class ClaimFilter:
    def __init__(self, registry: Any, static: Dict[str, Dict[str, Any]], log: Optional[logging.Logger] = None):
        self.registry = registry
        self.static = static  # [host.NAME] options by name
        self.log = log or logging.getLogger("powerwaked.trust")
        self.protected_ips: Set[str] = set()
        self.protected_macs: Set[str] = set()
        self.refused = 0
        self._logged: Set[Tuple[str, str]] = set()

    def protect(self, ips: Iterable[str], macs: Iterable[str]) -> None:
        """Addresses nobody may claim (the server's own, the gateways'); replaces the previous set."""
        self.protected_ips = {str(ip) for ip in ips}
        self.protected_macs = {str(mac).lower() for mac in macs}

    def filter(self, host: str, message: Dict[str, Any]) -> Dict[str, Any]:
        """``message`` with the MAC and IP claims ``host`` may not make left out."""
        allowed = dict(message)
        opts = self.static.get(host) or {}
        if isinstance(message.get("macs"), list):
            macs = self._keep(host, "MAC", [str(m).lower() for m in message["macs"]], opts.get("mac") or (),
                              self.protected_macs, self.registry.by_mac)  # fmt: skip
            allowed["macs"] = macs
            if isinstance(message.get("wol"), dict):
                allowed["wol"] = {k: v for k, v in message["wol"].items() if str(k).lower() in macs}
        if isinstance(message.get("ips"), list):
            allowed["ips"] = self._keep(host, "IP", [str(ip) for ip in message["ips"]], opts.get("ip") or (),
                                        self.protected_ips, self.registry.by_ip)  # fmt: skip
        return allowed

    def sender_ok(self, host: str, ip: str) -> bool:
        """Whether the report's source address may become one of ``host``'s addresses."""
        return not self._why(host, "IP", ip, (self.static.get(host) or {}).get("ip") or (), self.protected_ips,
                             self.registry.by_ip)  # fmt: skip

    def _keep(
        self, host: str, what: str, claims: List[str], configured: Iterable[str], protected: Set[str], owner: Any
    ) -> List[str]:
        kept = []
        for claim in claims:
            why = self._why(host, what, claim, configured, protected, owner)
            if why:
                self.refused += 1
                if (host, claim) not in self._logged and len(self._logged) < 10000:
                    self._logged.add((host, claim))
                    self.log.warning("host %s claims %s %s: refused (%s)", host, what, claim, why)
            else:
                kept.append(claim)
        return kept

    @staticmethod
    def _why(host: str, what: str, claim: str, configured: Iterable[str], protected: Set[str], owner: Any) -> str:
        configured = [str(c).lower() for c in configured]
        if configured:
            return "" if claim.lower() in configured else "not in its [host.%s] %s" % (host, what.lower())
        if claim.lower() in protected:
            return "the server's own or the gateway's"
        record = owner(claim)
        if record is not None and record.name != host:
            return "pinned to host %s" % record.name
        return ""
