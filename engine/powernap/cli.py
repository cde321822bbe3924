"""Command line: ``powernap`` (status, now, wake, explain, reload, restore, check-config, hwinfo, schema)
and ``powernapd``.

Exit codes: 0 success, 1 failure (daemon unreachable, request refused,
config invalid), 2 usage errors (argparse), 141 when the reader of our output
went away (``powernap status | head -1``), as for any command killed by SIGPIPE.
The global options (--root, --config, --log-level) are accepted before and
after the subcommand.
"""

import argparse
import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from . import __version__
from .actions import ACTIONS, replaced_commands
from .config import DEFAULT_CONFIG, configured_state_dir, load_config, schema
from .control import STATUS_SCHEMA, ControlError, request, socket_path
from .errors import ConfigError
from .ini import config_files
from .state import held_awake_by, human_duration, stage_after
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


EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a command killed by SIGPIPE


def _common(parser: argparse.ArgumentParser, default: Any = None) -> None:
    """The global options; subcommands repeat them with ``default=SUPPRESS`` so either place works."""
    parser.add_argument(
        "--root",
        default=default,
        help="read /sys, /proc, /dev, /etc and /run from this tree (default: $POWERNAP_ROOT or /)",
    )
    parser.add_argument(
        "--config", default=default, help="main config file (default: /etc/powernap/powernap.conf under the root)"
    )
    parser.add_argument("--log-level", default=default, choices=("debug", "info", "warning", "error"))


def _config_paths(args: argparse.Namespace, root: SysRoot) -> List[str]:
    return config_files(args.config or root.path(DEFAULT_CONFIG))


def _state_dir(args: argparse.Namespace, root: SysRoot) -> str:
    """The daemon's state dir from the config's [powernap] state_dir; never blocks, never fails."""
    return root.path(configured_state_dir(_config_paths(args, root)))


SUBCOMMANDS = {
    "status": (
        "state, idle time, monitors, next action",
        "Ask the running powernapd for its state: awake, grace or napping (which stage), idle time, each "
        "monitor's last activity or error, the next action and when, and whether powersave is in effect.",
    ),
    "now": (
        "nap now: the next stage, or ACTION",
        "Fire the next stage now (or ACTION, a configured stage's or an ad-hoc one), without grace. Fails, "
        "changing nothing, when the action is not allowed here or has nothing to run.",
    ),
    "wake": ("leave any nap stage now and settle", "Leave powersave or grace now; nothing fires during the settle."),
    "explain": ("why the host is or is not napping", "Why the host is or is not napping, in plain words."),
    "reload": (
        "re-read the config (like SIGHUP) and report errors",
        "Re-read powernap.conf and conf.d/*.conf (drop-ins added or removed since start included). On any "
        "error the running configuration stays and the errors are printed.",
    ),
    "restore": (
        "undo the powersave tweaks a crashed powernapd left applied",
        "Undo the powersave tweaks recorded by a powernapd that is no longer running (crash, kill -9), from the "
        "record in the state directory alone: needs no valid config. powernapd does the same when it starts; "
        "this is for when it cannot. Refused while powernapd runs ('powernap wake' leaves powersave then).",
    ),
    "check-config": (
        "validate config (or --hardware list) files",
        "Validate the config (default: powernap.conf and conf.d/*.conf under the root) or hardware lists. "
        "Prints FILE:LINE: message per error and exits 1, or a one-line summary and exits 0.",
    ),
    "hwinfo": (
        "hardware facts and the verdict: which actions this host may take",
        "The DMI/PCI/USB/CPU/NIC facts hardware lists match on, the platform, and the verdict: which actions "
        "and tweaks this host may use, and why.",
    ),
    "schema": (
        "every option of every section, monitor and tweak",
        "Every option of every section, monitor and tweak type (--json for tools, --markdown for the README).",
    ),
    "daemon": ("run powernapd in the foreground", "Run powernapd in the foreground (as the systemd unit does)."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="powernap", description="Control and inspect the nap engine.")
    parser.add_argument("--version", action="version", version="powernap " + __version__)
    _common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str) -> argparse.ArgumentParser:
        short, description = SUBCOMMANDS[name]
        command = sub.add_parser(name, help=short, description=description)
        _common(command, argparse.SUPPRESS)
        return command

    p = add("status")
    p.add_argument("--json", action="store_true", help="the stable status schema (see README)")
    p = add("now")
    p.add_argument("action", nargs="?", choices=ACTIONS)
    add("wake")
    add("explain")
    add("reload")
    add("restore")
    p = add("check-config")
    p.add_argument(
        "files", nargs="*", metavar="FILE", help="one file: it and its conf.d/*.conf; several: exactly those, in order"
    )
    p.add_argument("--hardware", action="store_true", help="the files are hardware allow/deny lists")
    p = add("hwinfo")
    p.add_argument("--json", action="store_true")
    p = add("schema")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--markdown", action="store_true")
    p = add("daemon")
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
        "restore": cmd_restore,
        "check-config": cmd_check_config,
        "hwinfo": cmd_hwinfo,
        "schema": cmd_schema,
    }[args.command]
    try:
        try:
            return handler(args, root)
        except ControlError as exc:
            print("powernap: %s" % exc, file=sys.stderr)
            return 1
        finally:
            sys.stdout.flush()  # inside the guard: a closed pipe shows up here, not at interpreter exit
    except BrokenPipeError:
        return _reader_went_away()


def _reader_went_away() -> int:
    """``powernap status | head -1``: the reader is gone; end quietly, as a SIGPIPE'd command would."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's final flush must not raise again
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE


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

    log = setup_logging(args.log_level or "info")
    # The main file, not a list: drop-ins are globbed again on every reload.
    daemon = Daemon([], root, dry_run=args.dry_run, log=log, main_config=args.config or root.path(DEFAULT_CONFIG))
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
    try:
        status = _ask(args, root, "status")
    except ControlError as exc:
        if not args.json:
            raise
        # Scripts read stdout: tell them in JSON too (the schema's "error" form), and fail.
        print(json.dumps({"schema": STATUS_SCHEMA, "error": str(exc), "state": None}, indent=2, sort_keys=True))
        print("powernap: %s" % exc, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    print(format_status(status))
    return 0


def format_status(status: Dict[str, Any]) -> str:
    lines = ["%s: %s" % (status["host"], status["state"] + (" (dry run)" if status["dry_run"] else ""))]
    stage = status["stage"]
    if stage:
        since = time.strftime("%H:%M:%S", time.localtime(stage["since"]))
        lines.append("stage:     %d %s since %s" % (stage["index"], stage["action"], since))
    lines.append("idle:      %s" % human_duration(status["idle_seconds"]))
    if status["settle_remaining"]:
        lines.append("settle:    %s left" % human_duration(status["settle_remaining"]))
    nxt = status["next_action"]
    held = held_awake_by(status)
    if nxt and held:
        lines.append(
            "next:      stage %d %s once idle for %s (now busy: %s)"
            % (nxt["stage"], nxt["action"], human_duration(stage_after(status, nxt["stage"])), ", ".join(held))
        )
    elif nxt:
        lines.append("next:      stage %d %s in %s" % (nxt["stage"], nxt["action"], human_duration(nxt["in_seconds"])))
    else:
        lines.append("next:      nothing")
    if status["next_wake"]:
        lines.append("next wake: %s" % time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status["next_wake"])))
    lines.append("powersave: %s" % powersave_summary(status["powersave"]))
    lines.append("monitors:")
    for m in status["monitors"]:
        seen = time.strftime("%H:%M:%S", time.localtime(m["last_activity"])) if m["last_activity"] else "never"
        flag = "ERROR " + m["error"] if m["error"] else ("active: " + (m["reason"] or "") if m["active"] else "idle")
        lines.append("  %-14s %-10s %s (last activity %s)" % (m["name"], m["type"], one_line(flag), seen))
    if status["verdict"]["denied"]:
        lines.append(
            "denied:    "
            + ", ".join("%s (%s)" % (a, one_line(why)) for a, why in sorted(status["verdict"]["denied"].items()))
        )
    return "\n".join(lines)


def one_line(text: Any) -> str:
    """Free text (a command's multi-line error, e.g. systemctl's) squeezed onto one table row."""
    return " ".join(str(text).split())


def powersave_summary(powersave: Dict[str, Any]) -> str:
    """'active' only when some tweak is in effect; a powersave stage that changed nothing says so."""
    if not powersave["active"]:
        return "off"
    tweaks = powersave.get("tweaks") or []
    counts: Dict[str, int] = {}
    for tweak in tweaks:
        counts[tweak["status"]] = counts.get(tweak["status"], 0) + 1
    in_effect = counts.pop("applied", 0) + counts.pop("unchanged", 0)
    others = ", ".join("%d %s" % (n, status) for status, n in sorted(counts.items()))
    if not in_effect:
        return "stage in effect, but no tweak applied" + (" (%s)" % others if others else " (no tweak configured)")
    return "active, %d tweak(s) in effect%s" % (in_effect, (" (%s)" % others) if others else "")


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


def cmd_restore(args: argparse.Namespace, root: SysRoot) -> int:
    """Undo a dead powernapd's powersave from its record (the same recovery powernapd runs at start)."""
    from .daemon import LOCK_NAME, RECORD_NAME, StartError, take_instance_lock
    from .tweaks import recover_leftovers

    state_dir = _state_dir(args, root)
    record = os.path.join(state_dir, RECORD_NAME)
    if not os.path.exists(record):
        print("nothing to restore: no powersave record at %s" % record)
        return 0
    try:
        lock_fd = take_instance_lock(os.path.join(state_dir, LOCK_NAME))
    except StartError as exc:
        print(
            "powernap: %s: powernapd is running and owns the record; 'powernap wake' leaves powersave" % exc,
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        print("powernap: cannot take the instance lock in %s: %s" % (state_dir, exc), file=sys.stderr)
        return 1
    try:
        results = recover_leftovers(root, record, logging.getLogger("powernap.restore"))
    finally:
        os.close(lock_fd)
    for result in results:
        print("%s: %s%s" % (result["name"], result["status"], (" (%s)" % result["detail"]) if result["detail"] else ""))
    failed = [r for r in results if r["status"] == "failed"]
    print("%d restored, %d failed" % (len(results) - len(failed), len(failed)))
    return 1 if failed else 0


def cmd_check_config(args: argparse.Namespace, root: SysRoot) -> int:
    errors: List[ConfigError]
    if args.hardware:
        from . import hardware

        files = args.files or [root.path(p) for p in root.glob("/etc/powernap/hardware.d/*.conf")]
        lists, errors = hardware.load_lists(files)
        summary = "%d hardware list file(s), %d entr%s" % (
            len(files),
            len(lists.entries),
            "y" if len(lists.entries) == 1 else "ies",
        )
    else:
        if not args.files:
            files = _config_paths(args, root)
        elif len(args.files) == 1:
            files = config_files(args.files[0])
        else:
            files = list(args.files)
        config, errors = load_config(files, root)
        summary = "%d file(s); %d monitor(s) (%d enabled), %d stage(s) (%s), %d tweak(s)" % (
            len(files),
            len(config.monitors),
            len(config.enabled_monitors),
            len(config.stages),
            ", ".join("%d %s after %s" % (s.index, s.action, human_duration(s.after)) for s in config.stages),
            len(config.tweaks),
        )
    for error in errors:
        print(error)
    if not errors:
        print("%s: OK, %s" % (files[0] if files else "(no files)", summary))
    return 1 if errors else 0


def cmd_hwinfo(args: argparse.Namespace, root: SysRoot) -> int:
    from . import hardware

    config_path = args.config or root.path(DEFAULT_CONFIG)
    override = None
    list_paths = [root.path(p) for p in root.glob("/etc/powernap/hardware.d/*.conf")]
    actions = None
    if os.path.exists(config_path):
        config, _errors = load_config(config_files(config_path), root)
        list_paths = config.hardware_files
        override = None if config.globals["platform"] == "auto" else config.globals["platform"]
        actions = config.actions
    # The same verdict as the daemon's: the configured best-effort chain and replaced commands count.
    report = hardware.hwinfo_report(
        root,
        list_paths,
        override=override,
        best_effort_chain=actions["best_effort"] if actions else None,
        replaced=replaced_commands(actions) if actions else (),
    )
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
        if kind not in data:
            continue  # powerwaked's reference has sections only
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
