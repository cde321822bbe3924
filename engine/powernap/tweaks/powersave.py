"""Applying and restoring a set of tweaks, with a crash-proof record.

The record (JSON under ``/run/powernap``, written atomically: temp file, fsync,
rename, mode 0600) gains each change's prior value *before* the change is
made, so a ``kill -9`` at any instant leaves a record that ``recover()`` on the
next start can undo.  Undoing a change that never happened is harmless: it
writes back the value that is still there, or runs an idempotent
``systemctl start`` / ``modprobe`` / ``hdparm`` / ``iw`` / ``ethtool``.

Per tweak, apply is all-or-nothing: when one of its changes fails, the changes
it already made are undone before moving on to the next tweak.

Results are lists of ``{"name", "status", "detail"}``; ``apply`` statuses are
applied | skipped | failed | unchanged, ``restore``/``recover`` statuses are
restored | failed.
"""

import json
import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..platform import read_power_source
from ..sysroot import SysRoot
from .base import CommandChange, CommandRunner, FileChange, Tweak, platform_denies

RECORD_VERSION = 1
DEFAULT_RECORD_PATH = "/run/powernap/powersave.json"


def default_record_path(root: SysRoot) -> str:
    """The record's real filesystem path for this root (``/run/powernap/powersave.json`` mapped)."""
    return root.path(DEFAULT_RECORD_PATH)


class ChangeFailed(Exception):
    """One change could not be made (its tweak is rolled back)."""


class WolGuardError(ChangeFailed):
    """A tweak tried to change Wake-on-LAN; tweaks never may."""


def check_wol_guard(change: Any) -> None:
    """Refuse any change that could turn Wake-on-LAN off (device wakeup or ``ethtool wol``)."""
    if isinstance(change, FileChange):
        if change.path.rstrip("/").endswith("/power/wakeup"):
            raise WolGuardError("refused: tweaks never change %s (Wake-on-LAN must stay armed)" % change.path)
    elif isinstance(change, CommandChange):
        for argv in (change.apply, change.restore):
            if argv and os.path.basename(argv[0]) == "ethtool" and "wol" in [a.lower() for a in argv]:
                raise WolGuardError("refused: tweaks never run %r (Wake-on-LAN must stay armed)" % " ".join(argv))


class PowersaveSet:
    """The tweaks of one powersave stage, applied and restored as a unit.

    ``tweaks``: constructed ``Tweak`` objects; ``record_path``: the real path
    of the record file (see ``default_record_path``); ``allowed``: a callable
    ``(tweak type or section name) -> bool`` from the hardware verdict — when
    it is ``None`` the platform default applies (no hardware tweaks on VMs and
    containers); ``runner``: defaults to the first tweak's ``ctx.runner``.

    AC/battery: ``apply(power_source)`` applies only tweaks whose ``when`` is
    ``always`` or that source; while active, ``switch_power_source(source)``
    restores the tweaks that no longer fit and applies the ones that now do.
    """

    def __init__(
        self,
        tweaks: Sequence[Tweak],
        root: SysRoot,
        record_path: str,
        log: Optional[logging.Logger] = None,
        dry_run: bool = False,
        allowed: Optional[Callable[[str], bool]] = None,
        runner: Optional[CommandRunner] = None,
    ):
        self.tweaks = sorted(tweaks, key=lambda tweak: tweak.ORDER)
        names = [tweak.name for tweak in self.tweaks]
        if len(names) != len(set(names)):
            raise ValueError("two tweaks share a name")
        self.root = root
        self.record_path = record_path
        self.log = log or logging.getLogger("powernap.powersave")
        self.dry_run = dry_run
        self.allowed = allowed
        if runner is None:
            runner = self.tweaks[0].ctx.runner if self.tweaks else CommandRunner.for_root(root)
        self.runner = runner
        self.power_source: Optional[str] = None
        self._record: Optional[Dict[str, Any]] = None

    # State ------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """True between ``apply`` and a complete ``restore``."""
        return self._record is not None

    def applied_tweaks(self) -> List[str]:
        return list(self._record["tweaks"]) if self._record else []

    def pending_entries(self) -> int:
        return len(self._record["entries"]) if self._record else 0

    # Public operations ------------------------------------------------------
    def recover(self) -> List[Dict[str, str]]:
        """At start: undo whatever a previous (crashed) run recorded, then clear the record."""
        if self._record is not None or not os.path.exists(self.record_path):
            return []
        record = self._load()
        if record is None:
            return [
                {
                    "name": "record",
                    "status": "failed",
                    "detail": "unreadable powersave record moved aside to %s.corrupt" % self.record_path,
                }
            ]
        self.log.warning(
            "restoring %d change(s) left by a previous run (pid %s)", len(record["entries"]), record.get("pid")
        )
        if self.dry_run:
            return [
                {"name": entry["tweak"], "status": "restored", "detail": "dry run: would undo " + _what(entry)}
                for entry in reversed(record["entries"])
            ]
        self._record = record
        return self.restore()

    def take_over(self, old: "PowersaveSet") -> List[Dict[str, str]]:
        """Reload during powersave: only the difference.

        Tweaks ``old`` applied that this set has with the same type and options
        (and still allows) stay as they are, so a ``services`` tweak is not
        stopped and started again; the others are restored; new ones are
        applied.  The record moves here (a new ``state_dir`` included).
        """
        if old._record is None:
            return []
        mine = {tweak.name: tweak for tweak in self.tweaks}
        theirs = {tweak.name: tweak for tweak in old.tweaks}
        self.power_source = old.power_source
        results = []
        for name in reversed(old._tweak_names_in_record()):
            new, was = mine.get(name), theirs.get(name)
            same = new is not None and was is not None and type(new) is type(was) and new.options == was.options
            if not same or self._skip_reason(new) is not None:
                results.append(old._restore_one(name))
        self._record, old._record = old._record, None
        self._record["pid"] = os.getpid()
        results.extend(self.apply(self.power_source))
        if old.record_path != self.record_path and not self.dry_run:
            try:
                os.unlink(old.record_path)
            except FileNotFoundError:
                pass
        return results

    def apply(self, power_source: Optional[str] = None) -> List[Dict[str, str]]:
        """Apply every tweak that is enabled, allowed and fits the power source."""
        results: List[Dict[str, str]] = []
        if self._record is None and os.path.exists(self.record_path):
            results.extend(self.recover())
        self.power_source = power_source or read_power_source(self.root)
        if self._record is None:
            self._record = {
                "version": RECORD_VERSION,
                "pid": os.getpid(),
                "created": time.time(),
                "tweaks": {},
                "entries": [],
            }
        for tweak in self.tweaks:
            if tweak.name in self._record["tweaks"]:
                results.append(_result(tweak.name, "unchanged", "already applied"))
                continue
            reason = self._skip_reason(tweak)
            if reason:
                results.append(_result(tweak.name, "skipped", reason))
                continue
            results.append(self._apply_one(tweak))
        self._save()
        return results

    def restore(self) -> List[Dict[str, str]]:
        """Undo every recorded change, newest first.  Idempotent: a second call does nothing."""
        if self._record is None:
            return []
        results = []
        for name in reversed(self._tweak_names_in_record()):
            results.append(self._restore_one(name))
        if not self._record["entries"]:
            self._clear()
        return results

    def switch_power_source(self, source: str) -> List[Dict[str, str]]:
        """The supply changed (laptops): swap the ``when = ac|battery`` tweaks while powersave is active."""
        old, self.power_source = self.power_source, source
        if self._record is None or old == source:
            return []
        results = []
        by_name = {tweak.name: tweak for tweak in self.tweaks}
        for name in reversed(list(self._record["tweaks"])):
            tweak = by_name.get(name)
            if tweak is not None and tweak.options["when"] not in ("always", source):
                results.append(self._restore_one(name))
        for tweak in self.tweaks:
            if tweak.name not in self._record["tweaks"] and tweak.options["when"] == source:
                reason = self._skip_reason(tweak)
                results.append(_result(tweak.name, "skipped", reason) if reason else self._apply_one(tweak))
        self._save()
        return results

    # Apply ------------------------------------------------------------------
    def _skip_reason(self, tweak: Tweak) -> Optional[str]:
        if not tweak.options["enabled"]:
            return "disabled"
        when = tweak.options["when"]
        if when not in ("always", self.power_source):
            return "only on %s power (now %s)" % (when, self.power_source)
        if self.allowed is not None:
            for key in (tweak.TYPE, tweak.name):
                if not self.allowed(key):
                    return (
                        "not allowed on this host for %r (hardware list or platform default; see powernap hwinfo)" % key
                    )
            return None
        return platform_denies(type(tweak), tweak.ctx.platform)

    def _apply_one(self, tweak: Tweak) -> Dict[str, str]:
        tweak.notes = []
        try:
            changes = tweak.plan()
            for change in changes:
                check_wol_guard(change)
        except Exception as exc:  # a broken tweak is logged and skipped, never fatal
            self.log.error("tweak %s: %s", tweak.name, exc)
            return _result(tweak.name, "failed", str(exc))
        notes = "; ".join(tweak.notes)
        if not changes:
            return _result(tweak.name, "unchanged", notes or "nothing to change")
        if self.dry_run:
            for change in changes:
                self.log.info("dry run: tweak %s would set %s", tweak.name, change.describe())
            return _result(
                tweak.name,
                "applied",
                _join("dry run: would set " + ", ".join(change.describe() for change in changes), notes),
            )
        assert self._record is not None
        self._record["tweaks"][tweak.name] = {"type": tweak.TYPE, "when": tweak.options["when"]}
        made = []
        try:
            for change in changes:
                entry = self._make(tweak, change)
                if entry is not None:
                    made.append(entry)
        except (OSError, ChangeFailed) as exc:
            self.log.error("tweak %s failed (%s); undoing its %d change(s)", tweak.name, exc, len(made) + 1)
            leftovers = self._undo_tweak(tweak.name)
            detail = "%s; rolled back" % exc
            if leftovers:
                detail += " except %s (kept in the record, retried on restore)" % ", ".join(leftovers)
            else:
                del self._record["tweaks"][tweak.name]
            self._save()
            return _result(tweak.name, "failed", detail)
        if not made:
            del self._record["tweaks"][tweak.name]
            return _result(tweak.name, "unchanged", notes or "already at the wanted values")
        self.log.info("tweak %s applied: %s", tweak.name, ", ".join(_what(entry) for entry in made))
        return _result(
            tweak.name,
            "applied",
            _join("%d change(s): %s" % (len(made), ", ".join(_what(entry) for entry in made)), notes),
        )

    def _make(self, tweak: Tweak, change: Any) -> Optional[Dict[str, Any]]:
        """Record, then make, one change.  Returns the entry, or ``None`` when already at the value."""
        assert self._record is not None
        if isinstance(change, FileChange):
            try:
                original = self._read_bytes(change.path).decode("latin-1")
            except OSError as exc:
                raise ChangeFailed("cannot read %s: %s" % (change.path, exc.strerror or exc)) from None
            if change.current_choice(original) == change.value:
                return None
            entry: Dict[str, Any] = {
                "tweak": tweak.name,
                "kind": "file",
                "path": change.path,
                "original": original,
                "value": change.value,
            }
            restore = change.restore_text(original)
            if restore is not None:
                entry["restore"] = restore
            self._record["entries"].append(entry)
            self._save()
            try:
                self._write(change.path, change.value.encode("latin-1"))
            except OSError as exc:
                # A rejected sysfs/procfs store changes nothing: forget the entry at once.
                self._record["entries"].pop()  # the entry appended just above
                self._save()
                raise ChangeFailed(
                    "cannot write %r to %s: %s" % (change.value, change.path, exc.strerror or exc)
                ) from None
            return entry
        if isinstance(change, CommandChange):
            entry = {
                "tweak": tweak.name,
                "kind": "command",
                "what": change.what,
                "apply": change.apply,
                "restore": change.restore,
            }
            self._record["entries"].append(entry)
            self._save()
            result = self.runner.run(change.apply)
            if not result.ok:
                raise ChangeFailed("%s: %s" % (change.what, result.error_text()))
            return entry
        raise ChangeFailed("unknown change %r" % (change,))

    # Restore ----------------------------------------------------------------
    def _tweak_names_in_record(self) -> List[str]:
        assert self._record is not None
        names = list(self._record["tweaks"])
        for entry in self._record["entries"]:
            if entry["tweak"] not in names:
                names.append(entry["tweak"])
        return names

    def _restore_one(self, name: str) -> Dict[str, str]:
        leftovers = self._undo_tweak(name)
        assert self._record is not None
        if leftovers:
            self._save()
            return _result(name, "failed", "could not undo: " + ", ".join(leftovers))
        self._record["tweaks"].pop(name, None)
        self._save()
        return _result(name, "restored", "")

    def _undo_tweak(self, name: str) -> List[str]:
        """Undo one tweak's recorded entries, newest first; returns what could not be undone."""
        assert self._record is not None
        failures = []
        entries = self._record["entries"]
        for index in range(len(entries) - 1, -1, -1):
            entry = entries[index]
            if entry["tweak"] != name:
                continue
            problem = self._undo(entry)
            if problem is None:
                del entries[index]
                self._save()
            else:
                self.log.error("tweak %s: cannot undo %s: %s", name, _what(entry), problem)
                failures.append("%s (%s)" % (_what(entry), problem))
        return failures

    def _undo(self, entry: Dict[str, Any]) -> Optional[str]:
        if entry["kind"] == "file":
            if not os.path.exists(self.root.path(entry["path"])):
                self.log.info("%s is gone (device removed?); nothing to restore", entry["path"])
                return None
            text = entry.get("restore")
            data = text.encode("latin-1") if text is not None else entry["original"].encode("latin-1")
            try:
                self._write(entry["path"], data)
            except OSError as exc:
                return str(exc.strerror or exc)
            return None
        if entry["kind"] == "command":
            result = self.runner.run(entry["restore"])
            return None if result.ok else result.error_text()
        return "unknown record entry kind %r" % entry.get("kind")

    # I/O (the only places that touch the system or the record) ---------------
    def _read_bytes(self, path: str) -> bytes:
        return self.root.read_bytes(path)

    def _write(self, path: str, data: bytes) -> None:
        # Sysfs wants one write of the whole value into the existing file.
        with open(self.root.path(path), "wb") as handle:
            handle.write(data)

    def _save(self) -> None:
        if self.dry_run or self._record is None:
            return
        directory = os.path.dirname(self.record_path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        temp = "%s.%d.tmp" % (self.record_path, os.getpid())
        data = json.dumps(self._record, indent=1, sort_keys=False).encode("utf-8")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, self.record_path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _load(self) -> Optional[Dict[str, Any]]:
        try:
            with open(self.record_path, encoding="utf-8") as handle:
                record = json.load(handle)
            if (
                not isinstance(record, dict)
                or record.get("version") != RECORD_VERSION
                or not isinstance(record.get("entries"), list)
                or not isinstance(record.get("tweaks"), dict)
            ):
                raise ValueError("not a powersave record of version %d" % RECORD_VERSION)
            for entry in record["entries"]:
                if entry.get("kind") not in ("file", "command") or "tweak" not in entry:
                    raise ValueError("bad entry %r" % (entry,))
            return record
        except (OSError, ValueError) as exc:
            self.log.error("powersave record %s is unreadable (%s); cannot undo it", self.record_path, exc)
            if not self.dry_run:
                try:
                    os.replace(self.record_path, self.record_path + ".corrupt")
                except OSError:
                    pass
            return None

    def _clear(self) -> None:
        self._record = None
        if self.dry_run:
            return
        try:
            os.unlink(self.record_path)
        except FileNotFoundError:
            pass


def recover_leftovers(root: SysRoot, record_path: str, log: logging.Logger, dry_run: bool = False):
    """Undo a crashed run's powersave from its record alone: no tweak, no config needed."""
    return PowersaveSet([], root, record_path, log, dry_run=dry_run).recover()


def _result(name: str, status: str, detail: str) -> Dict[str, str]:
    return {"name": name, "status": status, "detail": detail}


def _join(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


def _what(entry: Dict[str, Any]) -> str:
    if entry["kind"] == "file":
        return "%s=%s" % (entry["path"], entry["value"])
    return entry["what"]
