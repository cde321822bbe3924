"""Load and validate the whole configuration: powernap.conf plus conf.d/*.conf.

Every section is checked against a declared table (``options.Declared``):
``[powernap]`` (``GlobalSection``), ``[stage.N]`` (``StageSection``),
``[actions]`` (``actions.ActionsSection``), ``[server]`` (``ServerSection``),
``[monitor.NAME]`` through ``registry("monitor")`` and ``[tweak.NAME]``
through ``registry("tweak")``.  ``load_config`` never stops at the first
problem: it returns every error, each located as ``FILE:LINE``.

Decision on "zero monitors" (PowerNap's bug was to silently never act): a
configuration with no enabled monitor is an error unless
``[powernap] allow_no_monitors = yes``, in which case the host is treated as
always idle and the stages fire on their timers.
"""

import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

from . import ini
from .actions import ACTIONS, CUSTOM, POWERSAVE, ActionsSection
from .errors import ConfigError
from .options import Boolean, Choice, Declared, Duration, ListOf, Option, String, registry
from .server.protocol import parse_server_url
from .sysroot import SysRoot

DEFAULT_CONFIG = "/etc/powernap/powernap.conf"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_STAGE_NUMBER_RE = re.compile(r"^[0-9]{1,6}$")  # ASCII digits only: "²".isdigit() is true, int("²") fails


class GlobalSection(Declared):
    """[powernap]: timing and behaviour of the nap engine as a whole."""

    KIND = "section"
    TYPE = "powernap"
    OPTIONS = (
        Option(
            "interval",
            Duration(minimum=0.1, maximum=3600),
            default=1.0,
            doc="How often polled monitors are checked (event-driven monitors react at once).",
        ),
        Option(
            "settle",
            Duration(),
            default=120.0,
            doc="After start, resume or 'powernap wake', no stage fires for this long.",
        ),
        Option(
            "grace",
            Duration(),
            default=60.0,
            doc="Default warning time before a stage other than powersave fires (a stage's 'warn' wins).",
        ),
        Option(
            "wall",
            Boolean(),
            default=True,
            doc="Broadcast the grace warning and its cancellation to logged-in users with [actions] wall_command.",
        ),
        Option(
            "min_sleep",
            Duration(),
            default=1200.0,
            doc="Do not suspend, hibernate or power off when the next scheduled wake is closer than this.",
        ),
        Option(
            "wakeup_delta",
            Duration(),
            default=30.0,
            doc="Program the RTC wake alarm this long before the next scheduled wake.",
        ),
        Option(
            "allow_no_monitors",
            Boolean(),
            default=False,
            doc="Allow a configuration without enabled monitors: the host then counts as always idle.",
        ),
        Option(
            "platform",
            Choice("auto", "physical", "vm", "container"),
            default="auto",
            doc="Override platform detection; 'physical' lifts the safe defaults for VMs and containers.",
        ),
        Option(
            "hardware_dir",
            String(nonempty=True),
            default="/etc/powernap/hardware.d",
            doc="Directory of hardware allow/deny lists (*.conf).",
        ),
        Option(
            "state_dir",
            String(nonempty=True),
            default="/run/powernap",
            doc="Runtime directory: control socket, instance lock, powersave record.",
        ),
        Option(
            "log_level",
            Choice("debug", "info", "warning", "error"),
            default="info",
            doc="Log level (the --log-level option wins).",
        ),
        Option(
            "hostname",
            String(),
            default="",
            doc="Name reported in status and to the fleet server (empty: the system's hostname).",
        ),
        Option(
            "metrics_textfile_dir",
            String(max_length=4096, pattern=r"(/[^\0]*)?", form="an absolute path or empty"),
            default="",
            doc="Write powernap.prom (state, stage, idle seconds, monitor activity) here for node_exporter's "
            "textfile collector, e.g. /var/lib/prometheus/node-exporter; the directory must exist. Empty: off.",
        ),
        Option(
            "metrics_textfile_interval",
            Duration(minimum=5, maximum=3600),
            default=60.0,
            doc="Rewrite the textfile this often (and at every state change); each write is a rename, never fsynced.",
        ),
    )


class StageSection(Declared):
    """[stage.N]: one escalation step, fired when the host has been idle for 'after'."""

    KIND = "section"
    TYPE = "stage"
    OPTIONS = (
        Option("after", Duration(), required=True, doc="Idle time after which this stage fires; must grow with N."),
        Option("action", Choice(*ACTIONS), required=True, doc="What the stage does: " + ", ".join(ACTIONS) + "."),
        Option(
            "warn",
            Duration(),
            default=None,
            doc="Warning time before the stage fires (default: [powernap] grace, or 0 for powersave).",
        ),
        Option("command", String(), default="", doc="Command for action = custom (default: [actions] custom_command)."),
    )


class ServerUrl(String):
    """A fleet server URL, checked as the reporter will read it (so check-config and run time agree)."""

    def parse(self, text: str) -> str:
        text = super().parse(text)
        if text:
            parse_server_url(text)
        return text

    def describe(self) -> str:
        return "udp://, http:// or https://HOST[:PORT]"


class ServerSection(Declared):
    """[server]: optional reporting of state changes to a powerwaked fleet server."""

    KIND = "section"
    TYPE = "server"
    OPTIONS = (
        Option(
            "url",
            ServerUrl(),
            default="",
            doc="Fleet server (powerwaked): udp://HOST[:PORT] (default port 7490); http(s):// names the same server "
            "(reports go to the UDP port of that number); empty: found by DNS-SD, trusted once it proves our key.",
        ),
        Option(
            "token",
            String(),
            default="",
            secret=True,
            doc="This host's own key (derived from the fleet's master secret for this host name, e.g. by the role): "
            "it signs our reports and checks the server's commands; empty disables reporting.",
        ),
        Option(
            "timeout",
            Duration(minimum=0.1, maximum=60),
            default=5.0,
            doc="Longest a single report may take; reports never block napping.",
        ),
        Option(
            "veto_monitors",
            ListOf(String(nonempty=True, max_length=64, pattern=r"[a-z0-9][a-z0-9_-]*", form="a monitor name")),
            default=(),
            doc="Monitors ([monitor.NAME] names) whose activity vetoes the fleet's naps of this host's groups: "
            "while one is busy, every report asks powerwaked to keep the groups awake for veto_for (e.g. a "
            "backup running on a file server keeps its whole group up).",
        ),
        Option(
            "veto_for",
            Duration(minimum=60, maximum=7 * 86400),
            default=900.0,
            doc="How long one report's veto lasts; renewed with every report while the monitor is busy, lifted by "
            "the first report after it is idle.",
        ),
    )


class Stage:
    """A validated stage.  ``warn`` is resolved (never None)."""

    __slots__ = ("index", "after", "action", "warn", "command", "path", "line")

    def __init__(
        self,
        index: int,
        after: float,
        action: str,
        warn: float,
        command: str = "",
        path: Optional[str] = None,
        line: Optional[int] = None,
    ):
        self.index = index
        self.after = after
        self.action = action
        self.warn = warn
        self.command = command
        self.path = path
        self.line = line

    def __repr__(self) -> str:
        return "Stage(%d, after=%g, %s, warn=%g)" % (self.index, self.after, self.action, self.warn)


class Part:
    """A configured monitor or tweak: section name, type, class and parsed options."""

    __slots__ = ("name", "type", "cls", "options", "path", "line")

    def __init__(self, name: str, type_name: str, cls: Type[Declared], options: Dict[str, Any], path: str, line: int):
        self.name = name
        self.type = type_name
        self.cls = cls
        self.options = options
        self.path = path
        self.line = line

    @property
    def enabled(self) -> bool:
        return bool(self.options.get("enabled", True))


class Config:
    """The whole validated configuration."""

    def __init__(self) -> None:
        self.files: List[str] = []
        self.globals: Dict[str, Any] = GlobalSection.parse_options({})
        self.actions: Dict[str, Any] = ActionsSection.parse_options({})
        self.server: Dict[str, Any] = ServerSection.parse_options({})
        self.stages: List[Stage] = []
        self.monitors: List[Part] = []
        self.tweaks: List[Part] = []
        self.hardware_files: List[str] = []

    @property
    def enabled_monitors(self) -> List[Part]:
        return [m for m in self.monitors if m.enabled]


def configured_state_dir(paths: Sequence[str]) -> str:
    """``[powernap] state_dir`` as the files give it, the default when they do not (never fails).

    For what must work whatever else is wrong with the config: finding the
    control socket (``status``), the instance lock and the powersave record of a
    crashed run (start-up recovery, ``powernap restore``).  Reads only the files,
    like ``load_config`` (never blocks on a FIFO), and validates nothing else.
    """
    doc, _errors = ini.read_files(paths)
    section = doc.get("powernap")
    value = section.values.get("state_dir") if section is not None else None
    text = value.text.strip() if value is not None else ""
    return text or str(GlobalSection.option("state_dir").default)


def import_plugins() -> None:
    """Register every monitor and tweak type (their packages register on import)."""
    from . import monitors, tweaks  # noqa: F401  (imported for their registrations)


def load_config(paths: Sequence[str], root: Optional[SysRoot] = None) -> Tuple[Config, List[ConfigError]]:
    """Parse and validate ``paths`` (main file first, drop-ins after).  Returns the config and every error."""
    import_plugins()
    root = root or SysRoot()
    doc, errors = ini.read_files(paths)
    config = Config()
    config.files = list(paths)

    def parse(section: ini.Section, cls: Type[Declared], raw: Dict[str, str]) -> Dict[str, Any]:
        return cls.parse_options(raw, lambda key, message: errors.append(section.error(message, key)))

    raw_stages = []
    for section in doc:
        kind, _unused, name = section.name.partition(".")
        if section.name in ("powernap", "actions", "server"):
            cls = {"powernap": GlobalSection, "actions": ActionsSection, "server": ServerSection}[section.name]
            values = parse(section, cls, section.texts())
            # Keep defaults for options that failed to parse, so later checks still run.
            target = {"powernap": config.globals, "actions": config.actions, "server": config.server}[section.name]
            target.update(values)
        elif kind == "stage" and name:
            raw_stages.append((section, name))
        elif kind in ("monitor", "tweak") and name:
            part = _load_part(section, kind, name, errors)
            if part is not None:
                (config.monitors if kind == "monitor" else config.tweaks).append(part)
        else:
            errors.append(
                section.error(
                    "unknown section [%s] (expected [powernap], [stage.N], [monitor.NAME], [tweak.NAME], "
                    "[actions] or [server])" % section.name
                )
            )

    config.stages = _load_stages(raw_stages, config, errors, parse)
    names = {m.name for m in config.monitors}
    for name in config.server["veto_monitors"]:
        if name not in names:
            section = doc.get("server")
            errors.append(
                section.error("veto_monitors: no [monitor.%s] section" % name, "veto_monitors")
                if section is not None
                else ConfigError("veto_monitors: no [monitor.%s] section" % name, paths[0] if paths else None)
            )
    if not raw_stages:
        errors.append(
            ConfigError("no [stage.N] section: the engine would never do anything", paths[0] if paths else None)
        )
    if not config.enabled_monitors and not config.globals["allow_no_monitors"]:
        errors.append(
            ConfigError(
                "no enabled [monitor.NAME] section: the host would count as idle whatever it does; add monitors "
                "or set [powernap] allow_no_monitors = yes",
                paths[0] if paths else None,
            )
        )
    pattern = str(config.globals["hardware_dir"]).rstrip("/") + "/*.conf"
    config.hardware_files = [root.path(p) for p in root.glob(pattern)]
    return config, errors


def _load_part(section: ini.Section, kind: str, name: str, errors: List[ConfigError]) -> Optional[Part]:
    if not _NAME_RE.match(name):
        errors.append(section.error("bad %s name %r (use lower-case letters, digits, - and _)" % (kind, name)))
        return None
    raw = section.texts()
    type_name = raw.pop("type", name).strip()
    classes = registry(kind)
    cls = classes.get(type_name)
    if cls is None:
        known = ", ".join(sorted(classes)) or "none registered"
        errors.append(
            section.error(
                "unknown %s type %r (known: %s)" % (kind, type_name, known),
                "type" if "type" in section.values else None,
            )
        )
        return None
    values = cls.parse_options(raw, lambda key, message: errors.append(section.error(message, key)))
    return Part(name, type_name, cls, values, section.path, section.line)


def _load_stages(raw_stages, config: Config, errors: List[ConfigError], parse) -> List[Stage]:
    stages: List[Stage] = []
    numbered: Dict[int, ini.Section] = {}
    stage_warn_at: Dict[int, Tuple[str, int]] = {}  # where each stage's warn comes from (its after if unset)
    for section, name in raw_stages:
        if not _STAGE_NUMBER_RE.match(name) or int(name) < 1:
            errors.append(section.error("stage sections are [stage.N] with N a whole number from 1, not %r" % name))
            continue
        first = numbered.setdefault(int(name), section)
        if first is not section:
            # [stage.2] and [stage.02] would be one stage: firing one would mark the other done.
            errors.append(
                section.error(
                    "[%s] repeats stage number %d (already [%s] at %s:%d)"
                    % (section.name, int(name), first.name, first.path, first.line)
                )
            )
            continue
        before = len(errors)
        values = parse(section, StageSection, section.texts())
        if len(errors) > before:
            continue
        action = values["action"]
        warn = values["warn"]
        if warn is None:
            warn = 0.0 if action == POWERSAVE else float(config.globals["grace"])
        if action == CUSTOM and not (values["command"] or config.actions["custom_command"]):
            errors.append(
                section.error("action custom needs a command (stage 'command' or [actions] custom_command)", "action")
            )
        elif values["command"] and action != CUSTOM:
            errors.append(section.error("'command' only applies to action = custom", "command"))
        if warn > values["after"]:
            errors.append(section.error("warn %gs is longer than after %gs" % (warn, values["after"]), "warn"))
        path, line = section.where("after")
        stage = Stage(int(name), values["after"], action, warn, values["command"], path, line)
        stage_warn_at[stage.index] = section.where("warn" if "warn" in section.values else "after")
        stages.append(stage)
    stages.sort(key=lambda s: s.index)
    seen_powersave: Optional[Stage] = None
    for previous, stage in zip(stages, stages[1:]):
        if stage.after <= previous.after:
            errors.append(
                ConfigError(
                    "stage.%d after %gs is not later than stage.%d after %gs: stages must escalate in order"
                    % (stage.index, stage.after, previous.index, previous.after),
                    stage.path,
                    stage.line,
                )
            )
        elif stage.warn > 0 and stage.after - stage.warn <= previous.after:
            # The warning would start before (or as) the previous stage fires, and a stage in grace
            # supersedes every lower one: the previous stage would never fire.  Refuse, do not guess.
            errors.append(
                ConfigError(
                    "stage.%d warn %gs%s starts its warning at %gs idle, not after stage.%d fires at %gs: "
                    "stage.%d would never fire; make warn shorter than %gs or move the stages apart"
                    % (
                        stage.index,
                        stage.warn,
                        "" if stage_warn_at[stage.index][1] != stage.line else " ([powernap] grace)",
                        stage.after - stage.warn,
                        previous.index,
                        previous.after,
                        previous.index,
                        stage.after - previous.after,
                    ),
                    *stage_warn_at[stage.index],
                )
            )
        if previous.action == "poweroff":
            errors.append(
                ConfigError(
                    "stage.%d can never run: stage.%d powers the host off" % (stage.index, previous.index),
                    stage.path,
                    stage.line,
                )
            )
    for stage in stages:
        if stage.action == POWERSAVE:
            if seen_powersave is not None:
                errors.append(
                    ConfigError(
                        "stage.%d repeats powersave (already stage.%d)" % (stage.index, seen_powersave.index),
                        stage.path,
                        stage.line,
                    )
                )
            seen_powersave = seen_powersave or stage
    return stages


def schema() -> Dict[str, Any]:
    """Every declared section, monitor and tweak type: the source of docs and the role's argument specs."""
    import_plugins()
    return {
        kind: {name: cls.schema() for name, cls in sorted(registry(kind).items())}
        for kind in ("section", "monitor", "tweak")
    }
