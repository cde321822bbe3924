"""Command line: ``powernap`` (status, now, wake, explain, check-config, hwinfo, schema) and ``powernapd``.

Exit codes: 0 success, 1 failure (daemon unreachable, request refused,
config invalid), 2 usage errors (argparse).
"""

import argparse
import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from . import __version__
from .actions import ACTIONS
from .config import DEFAULT_CONFIG, GlobalSection, load_config, schema
from .control import ControlError, request, socket_path
from .errors import ConfigError
from .ini import config_files
from .sysroot import SysRoot

_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """``<N>name: message``: journald reads the priority from the prefix and stamps the time itself."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return "\n".join("<%d>%s" % (priority, line) for line in text.splitlines() or [""])


def _stderr_is_journal() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == "%d:%d" % (st.st_dev, st.st_ino)


def setup_logging(level: str) -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    if _stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("powernap")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(level.upper())
    return log


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        default=None,
        help="read /sys, /proc, /dev, /etc and /run from this tree (default: $POWERNAP_ROOT or /)",
    )
    parser.add_argument(
        "--config", default=None, help="main config file (default: /etc/powernap/powernap.conf under the root)"
    )
    parser.add_argument("--log-level", default=None, choices=("debug", "info", "warning", "error"))


def _config_paths(args: argparse.Namespace, root: SysRoot) -> List[str]:
    return config_files(args.config or root.path(DEFAULT_CONFIG))


def _state_dir(args: argparse.Namespace, root: SysRoot) -> str:
    """The daemon's state dir, from the config when it is readable (no errors reported here)."""
    state_dir = GlobalSection.option("state_dir").default
    config_path = args.config or root.path(DEFAULT_CONFIG)
    if os.path.exists(config_path):
        config, _errors = load_config(config_files(config_path), root)
        state_dir = config.globals["state_dir"]
    return root.path(str(state_dir))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="powernap", description="Control and inspect the nap engine.")
    parser.add_argument("--version", action="version", version="powernap " + __version__)
    _common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("status", help="state, idle time, monitors, next action")
    p.add_argument("--json", action="store_true", help="the stable status schema (see README)")
    p = sub.add_parser("now", help="nap now: the next stage, or ACTION")
    p.add_argument("action", nargs="?", choices=ACTIONS)
    sub.add_parser("wake", help="leave any nap stage now and settle")
    sub.add_parser("explain", help="why the host is or is not napping")
    sub.add_parser("reload", help="re-read the config (like SIGHUP) and report errors")
    p = sub.add_parser("check-config", help="validate config (or --hardware list) files")
    p.add_argument(
        "files", nargs="*", metavar="FILE", help="one file: it and its conf.d/*.conf; several: exactly those, in order"
    )
    p.add_argument("--hardware", action="store_true", help="the files are hardware allow/deny lists")
    p = sub.add_parser("hwinfo", help="hardware facts and the verdict: which actions this host may take")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("schema", help="every option of every section, monitor and tweak")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--markdown", action="store_true")
    p = sub.add_parser("daemon", help="run powernapd in the foreground")
    p.add_argument("--dry-run", action="store_true", help="log actions instead of carrying them out")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    root = SysRoot(args.root)
    if args.command == "daemon":
        return run_daemon(args, root)
    setup_logging(args.log_level or "warning")
    handler = {
        "status": cmd_status,
        "now": cmd_now,
        "wake": cmd_wake,
        "explain": cmd_explain,
        "reload": cmd_reload,
        "check-config": cmd_check_config,
        "hwinfo": cmd_hwinfo,
        "schema": cmd_schema,
    }[args.command]
    try:
        return handler(args, root)
    except ControlError as exc:
        print("powernap: %s" % exc, file=sys.stderr)
        return 1


def daemon_main(argv: Optional[Sequence[str]] = None) -> int:
    """``powernapd``: the daemon entry point."""
    parser = argparse.ArgumentParser(prog="powernapd", description="The nap engine daemon.")
    parser.add_argument("--version", action="version", version="powernapd " + __version__)
    _common(parser)
    parser.add_argument("--dry-run", action="store_true", help="log actions instead of carrying them out")
    args = parser.parse_args(argv)
    return run_daemon(args, SysRoot(args.root))


def run_daemon(args: argparse.Namespace, root: SysRoot) -> int:
    from .daemon import Daemon, StartError

    paths = _config_paths(args, root)
    log = setup_logging(args.log_level or "info")
    daemon = Daemon(paths, root, dry_run=args.dry_run, log=log)
    try:
        daemon.start()
    except StartError as exc:
        log.error("powernapd not started: %s", exc)
        return 1
    if not args.log_level:
        log.setLevel(str(daemon.setup.config.globals["log_level"]).upper())
    return daemon.run()


def _ask(args: argparse.Namespace, root: SysRoot, cmd: str, **kwargs: Any) -> Any:
    return request(socket_path(_state_dir(args, root)), cmd, **kwargs)


def cmd_status(args: argparse.Namespace, root: SysRoot) -> int:
    status = _ask(args, root, "status")
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    print(format_status(status))
    return 0


def format_status(status: Dict[str, Any]) -> str:
    from .state import human_duration

    lines = ["%s: %s" % (status["host"], status["state"] + (" (dry run)" if status["dry_run"] else ""))]
    stage = status["stage"]
    if stage:
        since = time.strftime("%H:%M:%S", time.localtime(stage["since"]))
        lines.append("stage:     %d %s since %s" % (stage["index"], stage["action"], since))
    lines.append("idle:      %s" % human_duration(status["idle_seconds"]))
    if status["settle_remaining"]:
        lines.append("settle:    %s left" % human_duration(status["settle_remaining"]))
    nxt = status["next_action"]
    if nxt:
        lines.append("next:      stage %d %s in %s" % (nxt["stage"], nxt["action"], human_duration(nxt["in_seconds"])))
    else:
        lines.append("next:      nothing")
    if status["next_wake"]:
        lines.append("next wake: %s" % time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status["next_wake"])))
    lines.append("powersave: %s" % ("active" if status["powersave"]["active"] else "off"))
    lines.append("monitors:")
    for m in status["monitors"]:
        seen = time.strftime("%H:%M:%S", time.localtime(m["last_activity"])) if m["last_activity"] else "never"
        flag = "ERROR " + m["error"] if m["error"] else ("active: " + (m["reason"] or "") if m["active"] else "idle")
        lines.append("  %-14s %-10s %s (last activity %s)" % (m["name"], m["type"], flag, seen))
    if status["verdict"]["denied"]:
        lines.append("denied:    " + ", ".join("%s (%s)" % kv for kv in sorted(status["verdict"]["denied"].items())))
    return "\n".join(lines)


def cmd_now(args: argparse.Namespace, root: SysRoot) -> int:
    result = _ask(args, root, "now", action=args.action)
    stage = result.get("stage")
    print("%s%s" % (result["state"], (": stage %d %s" % (stage["index"], stage["action"])) if stage else ""))
    return 0


def cmd_wake(args: argparse.Namespace, root: SysRoot) -> int:
    print(_ask(args, root, "wake")["state"])
    return 0


def cmd_explain(args: argparse.Namespace, root: SysRoot) -> int:
    for line in _ask(args, root, "explain")["lines"]:
        print(line)
    return 0


def cmd_reload(args: argparse.Namespace, root: SysRoot) -> int:
    result = _ask(args, root, "reload")
    for error in result["errors"]:
        print(error)
    return 0 if result["reloaded"] else 1


def cmd_check_config(args: argparse.Namespace, root: SysRoot) -> int:
    errors: List[ConfigError]
    if args.hardware:
        from . import hardware

        files = args.files or [root.path(p) for p in root.glob("/etc/powernap/hardware.d/*.conf")]
        _lists, errors = hardware.load_lists(files)
    else:
        if not args.files:
            files = _config_paths(args, root)
        elif len(args.files) == 1:
            files = config_files(args.files[0])
        else:
            files = list(args.files)
        _config, errors = load_config(files, root)
    for error in errors:
        print(error)
    return 1 if errors else 0


def cmd_hwinfo(args: argparse.Namespace, root: SysRoot) -> int:
    from . import hardware

    config_path = args.config or root.path(DEFAULT_CONFIG)
    override = None
    list_paths = [root.path(p) for p in root.glob("/etc/powernap/hardware.d/*.conf")]
    if os.path.exists(config_path):
        config, _errors = load_config(config_files(config_path), root)
        list_paths = config.hardware_files
        override = None if config.globals["platform"] == "auto" else config.globals["platform"]
    report = hardware.hwinfo_report(root, list_paths, override=override)
    print(json.dumps(report, indent=2, sort_keys=True, default=str) if args.json else hardware.format_hwinfo(report))
    return 0


def cmd_schema(args: argparse.Namespace, root: SysRoot) -> int:
    data = schema()
    if args.markdown:
        print(schema_markdown(data))
    elif args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        for kind, entries in data.items():
            print("%s: %s" % (kind, ", ".join(entries)))
    return 0


def schema_markdown(data: Dict[str, Any]) -> str:
    """The config reference: one table per section, monitor and tweak type."""
    titles = {
        "section": "Sections",
        "monitor": "Monitors ([monitor.NAME], type = …)",
        "tweak": "Powersave tweaks ([tweak.NAME], type = …)",
    }
    prefix = {"section": "", "monitor": "monitor: ", "tweak": "tweak: "}
    out = []
    for kind in ("section", "monitor", "tweak"):
        out.append("### %s\n" % titles[kind])
        for name, entry in data.get(kind, {}).items():
            heading = (
                "[stage.N]"
                if (kind == "section" and name == "stage")
                else ("[%s]" % name if kind == "section" else prefix[kind] + name)
            )
            out.append("#### %s\n\n%s\n" % (heading, entry["description"]))
            if not entry["options"]:
                continue
            out.append("| option | format | default | description |\n|---|---|---|---|")
            for opt_name, opt in entry["options"].items():
                default = "(required)" if opt.get("required") else _md_default(opt.get("default"))
                out.append(
                    "| `%s` | %s | %s | %s |"
                    % (opt_name, opt["format"], default, opt["description"].replace("|", "\\|"))
                )
            out.append("")
    return "\n".join(out)


def _md_default(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "`%s`" % ("yes" if value else "no")
    if isinstance(value, list):
        return "`%s`" % ", ".join(str(v) for v in value)
    return "`%s`" % value
