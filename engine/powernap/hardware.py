"""Hardware allow/deny lists and the verdict: which actions and tweaks this host may use, and why.

Lists are INI drop-ins (``/etc/powernap/hardware.d/*.conf``, read in name
order; a later file's key overrides the same section's key in an earlier one)::

    [deny.x200-s3]
    sys_vendor   = LENOVO
    product_name = 7459*
    actions      = suspend
    reason       = resume hangs with a black screen (BIOS 3.22)

Match keys (fnmatch patterns, case-insensitive; several patterns separated by
commas or newlines, any may match; every key given must match):
``sys_vendor product_name product_version board_vendor board_name
bios_vendor bios_version cpu_model kernel`` (one value per host) and ``pci
usb nic_driver`` (per device: the entry matches if any device matches).
``pci``/``usb`` patterns are ``vendor:device`` in hex (``10de:*``).
``kernel`` also takes a comparison: ``<6.1``, ``>=5.15.0``.

``actions`` (powersave suspend hibernate hybrid-sleep suspend-then-hibernate
poweroff custom, or ``*``; ``command`` is read as ``custom``) and/or ``tweaks`` (tweak types, or ``*``) say what
the entry allows or forbids; ``reason`` is required.

Precedence, per action or tweak: an explicit deny beats an explicit allow,
which beats the platform default.  The platform default (off with
``platform = physical``): virtual machines and containers get no sleep
actions and no hardware tweaks (containers also no kernel-wide tweaks), and
sleep actions the kernel does not offer (``/sys/power/state``, swap for
hibernation) are denied.
"""

import fnmatch
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from . import actions, ini, platform
from .actions import ActionsSection
from .errors import ConfigError
from .hardware_keys import DMI_FACTS, ENTRY_KEYS, LIST_FACTS, MATCH_KEYS
from .options import registry, split_list
from .sysroot import SysRoot
from .tweaks import platform_denies

HARDWARE_DIR = "/etc/powernap/hardware.d"
# The daemon's action names (one name each, as in [stage.N] action); best-effort is denied through its chain.
ACTIONS = tuple(name for name in actions.ACTIONS if name != actions.BEST_EFFORT)
# Lists written before the names were unified said 'command' for the custom action.
ACTION_ALIASES = {"command": actions.CUSTOM}
SLEEP_ACTIONS = ("suspend", "hibernate", "hybrid-sleep", "suspend-then-hibernate")
NEEDS_SUSPEND = ("suspend", "hybrid-sleep", "suspend-then-hibernate")
NEEDS_HIBERNATE = ("hibernate", "hybrid-sleep", "suspend-then-hibernate")
_ID_PATTERN = re.compile(r"^[0-9a-f*?\[\]!-]{1,9}:[0-9a-f*?\[\]!-]{1,9}$")
_KERNEL_COMPARE = re.compile(r"^(<=|>=|<|>|==|=)\s*(\d+(?:\.\d+)*)$")


def tweak_types() -> List[str]:
    return sorted(registry("tweak"))


class Entry:
    """One ``[allow.NAME]`` or ``[deny.NAME]`` section."""

    def __init__(self, verdict: str, name: str, path: str, line: int):
        self.verdict = verdict  # "allow" or "deny"
        self.name = name
        self.path = path
        self.line = line
        self.matches: Dict[str, List[str]] = {}
        self.actions: List[str] = []
        self.tweaks: List[str] = []
        self.reason = ""

    @property
    def label(self) -> str:
        return "%s.%s (%s:%d)" % (self.verdict, self.name, self.path, self.line)

    def covers(self, name: str) -> bool:
        if name in ACTIONS:
            return name in self.actions or "*" in self.actions
        return name in self.tweaks or "*" in self.tweaks

    def match(self, facts: Dict[str, Any]) -> bool:
        """All keys must match; within a key any pattern (and, for device lists, any device)."""
        for key, patterns in self.matches.items():
            values = facts.get(key)
            if key in LIST_FACTS:
                candidates = [str(v).lower() for v in (values or [])]
            else:
                candidates = [str(values).strip().lower()] if values else []
            if not any(_match_one(key, value, pattern) for value in candidates for pattern in patterns):
                return False
        return True

    def to_dict(self) -> Dict[str, Any]:
        return {
            "entry": "%s.%s" % (self.verdict, self.name),
            "file": self.path,
            "line": self.line,
            "match": dict(self.matches),
            "actions": list(self.actions),
            "tweaks": list(self.tweaks),
            "reason": self.reason,
        }


def _match_one(key: str, value: str, pattern: str) -> bool:
    if key == "kernel":
        compare = _KERNEL_COMPARE.match(pattern)
        if compare:
            return _compare_versions(value, compare.group(1), compare.group(2))
    return fnmatch.fnmatchcase(value, pattern.lower())


def _version_tuple(text: str) -> Tuple[int, ...]:
    found = re.match(r"(\d+(?:\.\d+)*)", text.strip())
    return tuple(int(part) for part in found.group(1).split(".")) if found else ()


def _compare_versions(value: str, operator: str, wanted: str) -> bool:
    have, want = _version_tuple(value), _version_tuple(wanted)
    if not have:
        return False
    # Compare on the length the pattern gives: "6.1.0-18-amd64" == "6.1", and < "6.2".
    have = (have + (0,) * len(want))[: len(want)]
    return {
        "<": have < want,
        "<=": have <= want,
        ">": have > want,
        ">=": have >= want,
        "=": have == want,
        "==": have == want,
    }[operator]


class HardwareLists:
    def __init__(self, entries: Optional[List[Entry]] = None, files: Optional[List[str]] = None):
        self.entries = entries or []
        self.files = files or []


def list_files(root: SysRoot, directory: str = HARDWARE_DIR) -> List[str]:
    """The drop-in files of ``directory`` inside ``root``, in the order they are read."""
    mapped = root.path(directory)
    try:
        names = sorted(name for name in os.listdir(mapped) if name.endswith(".conf"))
    except OSError:
        return []
    return [os.path.join(mapped, name) for name in names]


def load_lists(paths: Sequence[str]) -> Tuple[HardwareLists, List[ConfigError]]:
    """Parse and validate list files; invalid entries are dropped and reported as ``FILE:LINE: message``."""
    doc, errors = ini.read_files(paths)
    known_tweaks = set(tweak_types())
    entries = []
    for section in doc:
        verdict, _unused, name = section.name.partition(".")
        if verdict not in ("allow", "deny") or not name:
            errors.append(section.error("section [%s] must be [allow.NAME] or [deny.NAME]" % section.name))
            continue
        entry = Entry(verdict, name, section.path, section.line)
        before = len(errors)
        for key, value in section.values.items():
            if key not in ENTRY_KEYS:
                errors.append(
                    section.error(
                        "unknown key %r in [%s] (known: %s)" % (key, section.name, ", ".join(ENTRY_KEYS)), key
                    )
                )
                continue
            items = split_list(value.text)
            if key == "reason":
                entry.reason = value.text.strip()
            elif key == "actions":
                items = [ACTION_ALIASES.get(item, item) for item in items]
                bad = [item for item in items if item not in ACTIONS and item != "*"]
                if bad:
                    errors.append(
                        section.error("unknown action(s) %s (known: %s, *)" % (", ".join(bad), ", ".join(ACTIONS)), key)
                    )
                entry.actions = items
            elif key == "tweaks":
                bad = [item for item in items if item not in known_tweaks and item != "*"]
                if bad:
                    errors.append(
                        section.error(
                            "unknown tweak(s) %s (known: %s, *)" % (", ".join(bad), ", ".join(sorted(known_tweaks))),
                            key,
                        )
                    )
                entry.tweaks = items
            else:
                if not items:
                    errors.append(section.error("%s: no pattern given" % key, key))
                for item in items:
                    problem = _check_pattern(key, item)
                    if problem:
                        errors.append(section.error("%s: %s" % (key, problem), key))
                entry.matches[key] = items
        if not entry.reason:
            errors.append(section.error("[%s] needs a reason (shown by powernap hwinfo)" % section.name, "reason"))
        if not entry.actions and not entry.tweaks:
            errors.append(section.error("[%s] names no actions and no tweaks" % section.name))
        if not entry.matches:
            errors.append(
                section.error(
                    "[%s] has no match keys (%s); use kernel = * to match every host"
                    % (section.name, ", ".join(MATCH_KEYS))
                )
            )
        if len(errors) == before:
            entries.append(entry)
    return HardwareLists(entries, list(doc.files)), errors


def _check_pattern(key: str, pattern: str) -> Optional[str]:
    if key in ("pci", "usb") and not _ID_PATTERN.match(pattern.lower()):
        return "%r is not a vendor:device pattern in hex (e.g. 8086:15b8, 10de:*)" % pattern
    if key == "kernel" and pattern[:1] in "<>=" and not _KERNEL_COMPARE.match(pattern):
        return "%r is not a kernel comparison (e.g. <6.1, >=5.15.0)" % pattern
    if pattern.count("[") != pattern.count("]"):
        return "%r has unbalanced brackets" % pattern
    return None


# Facts ---------------------------------------------------------------------
def _device_ids(root: SysRoot, bus: str, vendor_file: str, device_file: str) -> Set[str]:
    """``vendor:device`` of every device on a sysfs bus that has both IDs."""
    ids = set()
    for dev in root.listdir(bus):
        vendor = _hex_id(root.read("%s/%s/%s" % (bus, dev, vendor_file), ""))
        device = _hex_id(root.read("%s/%s/%s" % (bus, dev, device_file), ""))
        if vendor and device:
            ids.add("%s:%s" % (vendor, device))
    return ids


def collect_facts(root: SysRoot) -> Dict[str, Any]:
    """The values list entries match on (cheap reads; ``pci``/``usb``/``nic_driver`` are sorted lists)."""
    facts: Dict[str, Any] = {}
    for field in DMI_FACTS:
        facts[field] = (root.read("/sys/class/dmi/id/" + field, "") or "").strip()
    pci = _device_ids(root, "/sys/bus/pci/devices", "vendor", "device")
    usb = _device_ids(root, "/sys/bus/usb/devices", "idVendor", "idProduct")
    drivers = set()
    for name in root.listdir("/sys/class/net"):
        try:
            drivers.add(os.path.basename(os.readlink(root.path("/sys/class/net/%s/device/driver" % name))))
        except OSError:
            pass
    facts["pci"] = sorted(pci)
    facts["usb"] = sorted(usb)
    facts["nic_driver"] = sorted(drivers)
    facts["cpu_model"] = cpu_model(root)
    facts["kernel"] = (root.read("/proc/sys/kernel/osrelease", "") or "").strip()
    return facts


def _hex_id(text: Optional[str]) -> str:
    value = (text or "").strip().lower()
    return value[2:] if value.startswith("0x") else value


def cpu_model(root: SysRoot) -> str:
    for line in (root.read("/proc/cpuinfo", "") or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("model name", "Model", "cpu model", "Hardware"):
            return value.strip()
    return ""


# Verdict ---------------------------------------------------------------------
class Verdict:
    """Which actions and tweaks are allowed here, with the entries (or platform default) that decided."""

    def __init__(self) -> None:
        self.denied: Dict[str, str] = {}
        self.decided_by: Dict[str, List[str]] = {}
        self.platform_default: Dict[str, Any] = {}
        self.matched: List[Entry] = []

    def allows(self, name: str) -> bool:
        """Unknown names (e.g. a tweak section's own name) are allowed unless denied."""
        return name not in self.denied

    __call__ = allows  # a Verdict is the ``allowed`` callable PowersaveSet takes

    def reason(self, name: str) -> str:
        if name in self.denied:
            return self.denied[name]
        deciders = self.decided_by.get(name)
        if deciders:
            return "allowed by " + ", ".join(deciders)
        return "allowed (no list entry or platform default applies)"

    def fallback(self, candidates: Sequence[str]) -> Tuple[Optional[str], List[Tuple[str, str]]]:
        """The first allowed of ``candidates`` (stage actions in order) and the denied ones skipped, with why."""
        skipped = []
        for name in candidates:
            if self.allows(name):
                return name, skipped
            skipped.append((name, self.denied[name]))
        return None, skipped

    def to_dict(self) -> Dict[str, Any]:
        return {
            "allowed_actions": [name for name in ACTIONS if self.allows(name)],
            "allowed_tweaks": [name for name in tweak_types() if self.allows(name)],
            "denied": dict(self.denied),
            "decided_by": {name: list(labels) for name, labels in self.decided_by.items()},
            "platform_default": dict(self.platform_default),
            "matched_entries": [entry.to_dict() for entry in self.matched],
        }


def evaluate(
    facts: Dict[str, Any],
    lists: HardwareLists,
    platform_info: Any,
    override: Optional[str] = None,
    replaced: Sequence[str] = (),
) -> Verdict:
    """Explicit deny > explicit allow > platform default, per action and tweak type.

    ``replaced``: actions whose command the admin replaced (``actions.replaced_commands``)."""
    verdict = Verdict()
    verdict.matched = [entry for entry in lists.entries if entry.match(facts)]
    effective = _effective(platform_info, override)
    defaults = platform_defaults(platform_info, effective, replaced)
    verdict.platform_default = {
        "kind": effective.effective_kind if effective else "unknown",
        "virt": getattr(platform_info, "virt", None),
        "override": effective.override if effective else override,
        "denies": dict(defaults),
    }
    for name in list(ACTIONS) + tweak_types():
        denies = [entry for entry in verdict.matched if entry.verdict == "deny" and entry.covers(name)]
        allows = [entry for entry in verdict.matched if entry.verdict == "allow" and entry.covers(name)]
        if denies:
            verdict.denied[name] = "; ".join(entry.reason for entry in denies)
            verdict.decided_by[name] = [entry.label for entry in denies]
        elif allows:
            verdict.decided_by[name] = [entry.label for entry in allows]
        elif name in defaults:
            verdict.denied[name] = defaults[name]
            verdict.decided_by[name] = ["platform default"]
    return verdict


class _Effective:
    def __init__(self, info: Any, override: Optional[str]):
        self.info = info
        self.override = override if override not in (None, "auto") else getattr(info, "override", None)
        self.kind = getattr(info, "kind", "physical")
        self.virt = getattr(info, "virt", "none")

    @property
    def effective_kind(self) -> str:
        return self.override if self.override and self.override != "auto" else self.kind


def _effective(info: Any, override: Optional[str]) -> Optional[_Effective]:
    return _Effective(info, override) if info is not None else None


def platform_defaults(
    info: Any, effective: Optional[_Effective] = None, replaced: Sequence[str] = ()
) -> Dict[str, str]:
    """What the platform alone denies (name → reason).

    ``platform = physical`` lifts the safe defaults for VMs and containers, never what the kernel says
    it cannot do: an empty /sys/power/state means no suspend whatever the override -- for the default
    commands; an action whose command the admin replaced (``replaced``) does not go through the kernel's
    sleep states, so they do not deny it.
    """
    effective = effective or _effective(info, None)
    if effective is None:
        return {}
    denied: Dict[str, str] = {}
    kind = effective.effective_kind
    if kind in ("vm", "container") and effective.override != "physical":
        what = "virtual machine" if kind == "vm" else "container"
        for name in SLEEP_ACTIONS:
            denied[name] = "%s (%s): no sleep states by default (set platform = physical to override)" % (
                what,
                effective.virt,
            )
    if not getattr(info, "can_suspend", True):
        states = " ".join(getattr(info, "sleep_states", None) or []) or "empty"
        for name in NEEDS_SUSPEND:
            if name not in replaced:
                denied.setdefault(name, "the kernel offers no suspend state (/sys/power/state: %s)" % states)
    if not getattr(info, "can_hibernate", True):
        for name in (n for n in NEEDS_HIBERNATE if n not in replaced):
            denied.setdefault(
                name, "hibernation unavailable: %s" % (getattr(info, "hibernate_reason", "") or "unknown")
            )
    if effective.override != "physical":
        for name, cls in registry("tweak").items():
            why = platform_denies(cls, effective)
            if why:
                denied[name] = why
    return denied


def best_effort_outcome(chain: Sequence[str], denied: Dict[str, str]) -> Dict[str, Any]:
    """What ``best-effort`` resolves to on this host, and why the actions before it were passed over.

    ``{"chain": [...], "resolves_to": "poweroff" or None, "passed_over": {"suspend": reason, ...}}``
    """
    passed_over = {}
    resolves_to = None
    for action in chain:
        if action in denied:
            passed_over[action] = denied[action]
        else:
            resolves_to = action
            break
    return {"chain": list(chain), "resolves_to": resolves_to, "passed_over": passed_over}


def describe_best_effort(outcome: Dict[str, Any]) -> str:
    """One sentence for status/explain/hwinfo, e.g. 'best-effort will poweroff: suspend: the kernel ...'."""
    target = outcome["resolves_to"]
    head = (
        "best-effort (%s) will %s" % (" > ".join(outcome["chain"]), target)
        if target
        else ("best-effort (%s) can do nothing here" % " > ".join(outcome["chain"]))
    )
    if not outcome["passed_over"]:
        return head
    return head + ", because " + "; ".join("%s is not possible (%s)" % kv for kv in outcome["passed_over"].items())


# hwinfo ------------------------------------------------------------------------
def hwinfo_report(
    root: SysRoot,
    list_paths: Sequence[str],
    override: Optional[str] = None,
    platform_info: Any = None,
    best_effort_chain: Optional[Sequence[str]] = None,
    replaced: Sequence[str] = (),
) -> Dict[str, Any]:
    """Facts, platform, verdict and list errors: what ``powernap hwinfo --json`` prints."""
    if platform_info is None:
        platform_info = platform.detect(root, override=override)
    lists, errors = load_lists(list_paths)
    facts = collect_facts(root)
    verdict = evaluate(facts, lists, platform_info, override, replaced)
    chain = best_effort_chain or ActionsSection.parse_options({})["best_effort"]
    return {
        "best_effort": best_effort_outcome(chain, verdict.denied),
        "facts": facts,
        "platform": platform_info.to_dict(),
        "verdict": verdict.to_dict(),
        "lists": list(lists.files),
        "entries": len(lists.entries),
        "errors": [str(error) for error in errors],
    }


def format_hwinfo(report: Dict[str, Any]) -> str:
    """The plain-text view of ``hwinfo_report``."""
    lines = ["Facts (what hardware lists match on):"]
    facts = report["facts"]
    for key in MATCH_KEYS:
        value = facts.get(key)
        if isinstance(value, list):
            value = ", ".join(value) if value else "-"
        lines.append("  %-16s %s" % (key, value or "-"))
    plat = report["platform"]
    kind = plat["kind"] + ("" if plat["virt"] == "none" else " (%s)" % plat["virt"])
    if plat.get("override"):
        kind += ", treated as %s (platform = %s)" % (plat["effective_kind"], plat["override"])
    lines.append(
        "Platform: %s; power %s%s" % (kind, plat["power_source"], ", battery present" if plat["has_battery"] else "")
    )
    lines.append(
        "  sleep states: %s; mem_sleep: %s"
        % (
            " ".join(plat["sleep_states"]) or "none",
            " ".join(plat["mem_sleep"]) + (" (now %s)" % plat["mem_sleep_current"] if plat["mem_sleep_current"] else "")
            if plat["mem_sleep"]
            else "n/a",
        )
    )
    lines.append("  hibernate: %s (%s)" % ("yes" if plat["can_hibernate"] else "no", plat["hibernate_reason"]))
    lines.append("  evidence: %s" % ("; ".join(plat.get("evidence") or []) or "-"))
    for nic in plat["nics"]:
        lines.append(
            "  nic %s %s driver %s, WoL supported %s, now %s"
            % (
                nic["name"],
                nic["mac"] or "-",
                nic["driver"] or "-",
                "".join(nic["wol_supported"]) if nic["wol_supported"] else "unknown",
                nic["wol"] or "unknown",
            )
        )
    verdict = report["verdict"]
    lines.append("Verdict:")
    lines.append("  allowed actions: %s" % (", ".join(verdict["allowed_actions"]) or "none"))
    lines.append("  allowed tweaks:  %s" % (", ".join(verdict["allowed_tweaks"]) or "none"))
    if verdict["denied"]:
        lines.append("  denied:")
        for name, reason in verdict["denied"].items():
            lines.append("    %-24s %s [%s]" % (name, reason, ", ".join(verdict["decided_by"].get(name, []))))
    allowed_by_entry = {name: labels for name, labels in verdict["decided_by"].items() if name not in verdict["denied"]}
    for name, labels in allowed_by_entry.items():
        lines.append("  allowed explicitly: %s [%s]" % (name, ", ".join(labels)))
    if "best_effort" in report:
        lines.append("  " + describe_best_effort(report["best_effort"]))
    lines.append(
        "  lists read: %s (%d valid entries, %d matched)"
        % (", ".join(report["lists"]) or "none", report["entries"], len(verdict["matched_entries"]))
    )
    if report["errors"]:
        lines.append("List errors:")
        lines.extend("  " + error for error in report["errors"])
    return "\n".join(lines) + "\n"
