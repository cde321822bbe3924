"""powernapd: one single-threaded selector loop around the state machine.

The loop waits on: the signal wake-up socket (SIGTERM/SIGINT stop, SIGHUP
reloads, SIGUSR1 naps now, SIGUSR2 wakes), the control socket and its
clients, and every event-driven monitor's fds.  It wakes at least every
``interval`` to poll monitors, and more often while an action command runs.
There are no worker threads (the optional fleet reporter has one bounded
daemon thread), so SIGTERM always ends the process promptly: powersave is
restored, running commands are killed, monitors are closed.

Resume detection: CLOCK_BOOTTIME minus CLOCK_MONOTONIC grows by the time
spent suspended; a loop iteration that comes far later than it asked to
(a frozen cgroup, as the lab's suspend does) counts as a resume as well.

Events (state changes, actions) are logged as ``event=NAME key=value ...``
lines at INFO, kept in ``status`` under ``events`` and handed to the fleet
reporter: one stable record, three readers.
"""

import collections
import fcntl
import logging
import os
import select
import selectors
import signal
import socket
import time
from typing import Any, Deque, Dict, List, Optional, Sequence

from . import __version__
from .actions import ACTIONS, BEST_EFFORT, CUSTOM, POWERSAVE, SLEEP_ACTIONS, ActionRunner, replaced_commands
from .clock import Clock
from .config import Config, configured_state_dir, load_config
from .control import STATUS_SCHEMA, ControlServer, socket_path
from .errors import ConfigError, MonitorError
from .hardware import best_effort_outcome, describe_best_effort
from .ini import config_files
from .monitors.base import MonitorContext
from .platform import read_power_source
from .report import make_reporter
from .state import AWAKE, GRACE, NapMachine, held_awake_by, human_duration, stage_after
from .sysroot import SysRoot
from .textfile import write as write_textfile

LOCK_NAME = "powernapd.lock"
RECORD_NAME = "powersave.json"
RESUME_JUMP = 2.0  # seconds of BOOTTIME-MONOTONIC growth that mean "we were suspended"
FROZEN_GAP = 10.0  # a loop iteration this much later than asked means the process was frozen
REOPEN_AFTER = 60.0  # retry opening a failed monitor this often
JOB_POLL = 0.05  # loop period while a command runs
SCHEDULED_WAKE_WINDOW = 300.0  # a resume this close to our RTC alarm was that alarm
WALL_ON_STOP = 5.0  # longest shutdown waits for the "cancelled" broadcast


class StartError(Exception):
    """The daemon cannot start; the message says why (config errors are logged one by one)."""


def sd_notify(message: str) -> bool:
    """Tell systemd something (READY=1, WATCHDOG=1, STATUS=...) over $NOTIFY_SOCKET, by hand."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError:
        return False
    return True


def watchdog_interval() -> Optional[float]:
    """Half the systemd watchdog timeout, when the watchdog is on and meant for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.5, int(usec) / 2e6)
    except ValueError:
        return None


class MonitorSlot:
    """A monitor and what the daemon knows about it (one row of status 'monitors')."""

    def __init__(self, monitor: Any, type_name: str):
        self.monitor = monitor
        self.type = type_name
        self.active = False
        self.last_activity: Optional[float] = None
        self.reason: Optional[str] = None
        self.error: Optional[str] = None
        self.opened = False
        self.retry_at = 0.0

    @property
    def name(self) -> str:
        return self.monitor.name

    @property
    def counts_errors(self) -> bool:
        return self.monitor.options.get("error_behavior", "activity") == "activity"

    def to_dict(self) -> Dict[str, Any]:
        try:
            describe = self.monitor.describe()
        except Exception:  # a description must not break status
            describe = self.type
        return {
            "name": self.name,
            "type": self.type,
            "active": self.active,
            "last_activity": self.last_activity,
            "reason": self.reason,
            "error": self.error,
            "describe": describe,
        }


class Setup:
    """Everything built from one config: swapped as a whole on reload."""

    def __init__(
        self,
        config: Config,
        platform_info: Any,
        verdict: Any,
        denied: Dict[str, str],
        monitors: List[MonitorSlot],
        powersave: Any,
    ):
        self.config = config
        self.platform_info = platform_info
        self.verdict = verdict
        self.denied = denied
        self.monitors = monitors
        self.powersave = powersave


class Daemon:
    def __init__(
        self,
        config_paths: Sequence[str],
        root: SysRoot,
        clock: Optional[Clock] = None,
        dry_run: bool = False,
        log: Optional[logging.Logger] = None,
        main_config: Optional[str] = None,
    ):
        # With ``main_config`` the drop-ins are globbed again at every (re)load; else exactly ``config_paths``.
        self.config_paths = list(config_paths)
        self.main_config = main_config
        self.root = root
        self.clock = clock or Clock()
        self.dry_run = dry_run
        self.log = log or logging.getLogger("powernap")
        self.setup: Optional[Setup] = None
        self.machine: Optional[NapMachine] = None
        self.runner: Optional[ActionRunner] = None
        self.control: Optional[ControlServer] = None
        self.reporter = make_reporter({}, "", self.log)
        self.events: Deque[Dict[str, Any]] = collections.deque(maxlen=50)
        self.powersave_results: List[Dict[str, str]] = []
        self.host = socket.gethostname()
        self._selector = selectors.DefaultSelector()
        self._registered: Dict[int, Any] = {}
        self._lock_fd: Optional[int] = None
        self._signal_r: Optional[socket.socket] = None
        self._signal_w: Optional[socket.socket] = None
        self._old_handlers: Dict[int, Any] = {}
        self._stopping = False
        self._jobs: List[Any] = []
        self._next_poll = 0.0
        self._clock_offset = 0.0
        self._alarm_epoch: Optional[float] = None
        self._warned = False
        self._next_watchdog: Optional[float] = None
        self._watchdog_every = watchdog_interval()
        # Monitor fds are watched live only while napping or warning (instant recovery); while awake
        # they are read at each poll, so a busy host does not wake the daemon for every event.
        self._live_events = False
        self._textfile_next = 0.0  # monotonic time of the next periodic textfile write
        self._textfile_problem: Optional[str] = None  # the last write error, logged once until it changes

    # life cycle --------------------------------------------------------------
    def config_files(self) -> List[str]:
        """The files to (re)load now: drop-ins added or removed since the last load count."""
        return config_files(self.main_config) if self.main_config else list(self.config_paths)

    def start(self) -> None:
        """Take the lock, undo a crashed run's powersave, load the config, build everything.

        Raises StartError (nothing left running).  Recovery comes before
        validation and needs nothing from the config but ``state_dir`` (read
        leniently): a crash in powersave followed by a bad config must not
        leave the host tweaked for good.
        """
        paths = self.config_files()
        state_dir = self.root.path(configured_state_dir(paths))
        try:
            os.makedirs(state_dir, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise StartError("cannot create the state directory %s: %s" % (state_dir, exc)) from None
        self._lock_fd = take_instance_lock(os.path.join(state_dir, LOCK_NAME))
        try:
            self._recover(os.path.join(state_dir, RECORD_NAME))
            config, errors = load_config(paths, self.root)
            setup_errors: List[ConfigError] = []
            if errors:
                raise StartError(self._config_failure(errors, "refusing to start"))
            setup = self._build(config, setup_errors)
            if setup_errors:
                raise StartError(self._config_failure(setup_errors, "refusing to start"))
        except BaseException:
            self._release_lock()
            raise
        self.setup = setup
        self._apply_globals(config)
        self.machine = NapMachine(
            config.stages,
            self.clock,
            settle=config.globals["settle"],
            min_sleep=config.globals["min_sleep"],
            denied=setup.denied,
        )
        self._open_monitors(setup.monitors)
        self.control = ControlServer(
            socket_path(self.root.path(str(config.globals["state_dir"]))),
            self.handle_request,
            self.log.getChild("control"),
        )
        self.control.open()
        self._install_signals()
        self._clock_offset = self.clock.boottime() - self.clock.monotonic()
        self._next_poll = self.clock.monotonic()
        self._event(
            "start",
            version=__version__,
            dry_run=self.dry_run,
            monitors=len(setup.monitors),
            stages=" ".join("%d:%s" % (s.index, s.action) for s in config.stages),
            denied=",".join(sorted(setup.denied)) or "-",
        )
        sd_notify("READY=1\nSTATUS=awake, %d monitors" % len(setup.monitors))

    def _recover(self, record_path: str) -> None:
        from .tweaks import recover_leftovers

        for result in recover_leftovers(self.root, record_path, self.log.getChild("powersave"), self.dry_run):
            self.log.warning("recovered powersave %s: %s (%s)", result["name"], result["status"], result["detail"])

    def run(self, max_seconds: Optional[float] = None) -> int:
        """The loop.  ``max_seconds`` bounds it (tests); SIGTERM ends it cleanly."""
        if self.setup is None:
            self.start()
        give_up = None if max_seconds is None else self.clock.monotonic() + max_seconds
        try:
            while not self._stopping:
                if give_up is not None and self.clock.monotonic() >= give_up:
                    break
                self._iterate()
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        """Restore powersave, stop commands, close everything.  Safe to call twice."""
        if self.setup is None:
            return
        sd_notify("STOPPING=1")
        for job in self._jobs:
            job.cancel()
        self._jobs = []
        self._cancel_warning("daemon stopping")
        if self.setup.powersave.active:
            self._restore_powersave("daemon stopping")
        for slot in self.setup.monitors:
            self._close_monitor(slot)
        if self.control is not None:
            self.control.close()
        self._event("stop")
        self.reporter.close()
        self._restore_signals()
        self._selector.close()
        self._release_lock()
        self.setup = None

    # the loop ----------------------------------------------------------------
    def _iterate(self) -> None:
        timeout = self._timeout()
        asked_at = self.clock.monotonic()
        for key, _mask in self._selector.select(timeout):
            self._dispatch(key.fd, key.data)
            if self._stopping:
                return
        now = self.clock.monotonic()
        self._detect_resume(now - asked_at - timeout)
        self._poll_jobs()
        due = bool(self._jobs)
        self._early_checks(now)
        if now >= self._next_poll:
            self._poll_monitors()
            interval = float(self.setup.config.globals["interval"])
            self._next_poll += interval
            if self._next_poll <= now:  # fell behind (busy host): do not try to catch up
                self._next_poll = now + interval
            due = True
        if not due:
            # Event wake-ups (a busy host's process events) only tick when a stage deadline has come.
            deadline = self.machine.deadline()
            due = deadline is not None and deadline <= self.clock.boottime()
        if due:
            self._tick()
        if now >= self._textfile_next:
            self._write_textfile()
        live = self.machine.state != AWAKE
        if live != self._live_events:
            self._live_events = live
            self._sync_fds()
        self._watchdog()

    def _tick(self) -> None:
        """Let the machine act, but never on stale answers: right before a stage would warn or fire,
        every monitor answers again from scratch (fresh /proc scan, fresh connection table, queued
        events read), and any activity holds the stage."""
        next_wake = self._next_wake()
        stage = self.machine.stage_due(next_wake)
        if stage is not None and self._recheck_monitors(stage, next_wake):
            return
        self._execute(self.machine.tick(next_wake))

    def _recheck_monitors(self, stage: Any, next_wake: Optional[float]) -> bool:
        """True when a monitor sees activity now (the stage is held and idleness starts over)."""
        self._drain_monitor_fds()
        busy = []
        if self.machine.stage_due(next_wake) is None:  # a queued event was activity
            busy.append("queued events")
        for slot in self.setup.monitors:
            if slot.opened:
                reason = self._check_slot(slot, fresh=True)
                if reason:
                    busy.append("%s: %s" % (slot.name, reason))
        if busy:
            self.log.info(
                "stage %d (%s) held, activity on a fresh check: %s", stage.index, stage.action, "; ".join(busy)
            )
        return bool(busy)

    def _drain_monitor_fds(self) -> None:
        """Hand every monitor fd that holds data to its monitor (all fds, live or not)."""
        poller = select.poll()
        owners: Dict[int, MonitorSlot] = {}
        for slot in self.setup.monitors:
            if not slot.opened:
                continue
            try:
                fds = slot.monitor.fds()
            except Exception:
                continue
            for fd in fds:
                poller.register(fd, select.POLLIN)
                owners[fd] = slot
        if not owners:
            return
        for fd, mask in poller.poll(0):
            if mask & select.POLLNVAL:
                continue  # closed behind our back: the monitor's next fds() no longer lists it
            slot = owners[fd]
            if slot.opened and fd in slot.monitor.fds():  # an earlier read may have closed it (unplug)
                self._dispatch(fd, ("monitor", slot))

    def _early_checks(self, now: float) -> None:
        """Monitors that asked for a check before the next poll (e.g. following a TCP handshake)."""
        for slot in self.setup.monitors:
            if slot.opened:
                wanted = slot.monitor.next_check()
                if wanted is not None and wanted <= now:
                    self._check_slot(slot)

    def _timeout(self) -> float:
        now = self.clock.monotonic()
        wait = max(0.0, self._next_poll - now)
        if self._jobs:
            wait = min(wait, JOB_POLL)
        deadline = self.machine.deadline()
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - self.clock.boottime()) + 0.001)
        if self._next_watchdog is not None:
            wait = min(wait, max(0.0, self._next_watchdog - now))
        for slot in self.setup.monitors:
            wanted = slot.monitor.next_check() if slot.opened else None
            if wanted is not None:
                wait = min(wait, max(0.0, wanted - now))
        return wait

    def _dispatch(self, fd: int, data: Any) -> None:
        kind = data[0]
        if kind == "signal":
            self._read_signals()
        elif kind == "control":
            self.control.on_readable(fd)
            self._sync_fds()
        elif kind == "monitor":
            slot = data[1]
            try:
                reason = slot.monitor.on_readable(fd)
            except MonitorError as exc:
                reason = self._monitor_failed(slot, str(exc))
            except Exception as exc:  # one broken monitor must not stop the daemon
                self.log.exception("monitor %s crashed in on_readable", slot.name)
                reason = self._monitor_failed(slot, "crashed: %s" % exc)
            else:
                slot.error = None
            if reason:
                self._activity(slot, reason)
            self._sync_slot(slot)

    def _poll_monitors(self) -> None:
        now_mono = self.clock.monotonic()
        if not self._live_events:
            self._drain_monitor_fds()
        for slot in self.setup.monitors:
            if not slot.opened:
                if now_mono >= slot.retry_at:
                    self._open_monitor(slot)
                    self._sync_fds()
                if not slot.opened:
                    slot.active = slot.counts_errors
                    if slot.counts_errors:
                        self._activity(slot, "monitor not working: %s" % slot.error, quiet=True)
                    continue
            self._check_slot(slot)
        self._follow_power_source()

    def _check_slot(self, slot: MonitorSlot, fresh: bool = False) -> Optional[str]:
        """One monitor's check (``fresh``: its recheck); activity is recorded.  Returns the reason."""
        try:
            reason = slot.monitor.recheck() if fresh else slot.monitor.check()
        except MonitorError as exc:
            reason = self._monitor_failed(slot, str(exc))
        except Exception as exc:  # one broken monitor must not stop the daemon
            self.log.exception("monitor %s crashed in %s", slot.name, "recheck" if fresh else "check")
            reason = self._monitor_failed(slot, "crashed: %s" % exc)
        else:
            slot.error = None
        slot.active = bool(reason)
        if reason:
            self._activity(slot, reason, quiet=True)
        self._sync_slot(slot)
        return reason

    def _follow_power_source(self) -> None:
        """Laptops: swap the ``when = ac|battery`` tweaks when the supply changes during powersave."""
        powersave = self.setup.powersave
        if not powersave.active:
            return
        source = read_power_source(self.root)
        if source == "unknown" or source == powersave.power_source:
            return
        results = powersave.switch_power_source(source)
        changed = {result["name"]: result for result in results}
        self.powersave_results = [changed.pop(r["name"], r) for r in self.powersave_results] + list(changed.values())
        self._event("powersave-switch", source=source, tweaks=",".join(sorted(r["name"] for r in results)) or "none")
        self._sync_fds()

    def _monitor_failed(self, slot: MonitorSlot, message: str) -> Optional[str]:
        if slot.error != message:
            self.log.warning(
                "monitor %s: %s%s", slot.name, message, " (counts as activity)" if slot.counts_errors else " (ignored)"
            )
        slot.error = message
        return ("error: %s" % message) if slot.counts_errors else None

    def _activity(self, slot: MonitorSlot, reason: str, quiet: bool = False) -> None:
        slot.active = True
        slot.last_activity = self.clock.wall()
        slot.reason = reason
        was = self.machine.state
        decisions = self.machine.activity("%s: %s" % (slot.name, reason))
        if not quiet:
            self.log.debug("activity from %s: %s", slot.name, reason)
        if decisions:
            self._event("activity", monitor=slot.name, reason=reason, was=was)
        self._execute(decisions)

    # decisions ---------------------------------------------------------------
    def _execute(self, decisions) -> None:
        for decision in decisions:
            stage = decision.stage
            if decision.kind == "warn":
                self._event("warn", stage=stage.index, action=stage.action, in_seconds=round(decision.in_seconds))
                self._warn(stage.action, decision.in_seconds, decision.reason)
            elif decision.kind == "cancel":
                self._event("cancel", stage=stage.index, action=stage.action, reason=decision.reason)
                if self._warned:
                    self._wall("powernap: %s of %s cancelled (%s)." % (stage.action, self.host, decision.reason))
                self._warned = False
            elif decision.kind == "apply":
                self._warned = False
                self._apply_powersave(stage, decision.reason)
            elif decision.kind == "restore":
                self._restore_powersave(decision.reason, stage.index)
            elif decision.kind == "act":
                self._warned = False
                self._act(stage, decision.reason)

    def _cancel_warning(self, reason: str) -> None:
        """Stopping during grace: the users who were warned hear that it is off (waits a bounded time)."""
        grace = self.machine.snapshot()["grace"] if self.machine is not None else None
        if grace is None or self.machine.state != GRACE:
            return
        self._event("cancel", stage=grace["stage"], action=grace["action"], reason=reason)
        if self._warned:
            self._wall("powernap: %s of %s cancelled (%s)." % (grace["action"], self.host, reason))
        self._warned = False
        give_up = time.monotonic() + WALL_ON_STOP
        while self._jobs and time.monotonic() < give_up:
            self._poll_jobs()
            if self._jobs:
                time.sleep(0.02)
        for job in self._jobs:
            job.cancel()
        self._jobs = []

    def _warn(self, action: str, in_seconds: float, reason: str) -> None:
        at = time.strftime("%H:%M:%S %Z", time.localtime(self.clock.wall() + in_seconds))
        self._wall(
            "powernap: %s will %s in %d seconds, at %s (%s). To cancel: run 'powernap wake' or use the "
            "host." % (self.host, action.replace("-", " "), round(in_seconds), at, reason)
        )
        self._warned = True

    def _wall(self, message: str) -> None:
        if not self.setup.config.globals["wall"]:
            return
        job = self.runner.wall(message)
        if job is not None and not job.done:
            self._jobs.append(job)

    def _apply_powersave(self, stage: Any, reason: str) -> None:
        results = self.setup.powersave.apply()
        self.powersave_results = results
        counts = collections.Counter(r["status"] for r in results)
        self._event(
            "powersave-apply",
            stage=stage.index,
            reason=reason,
            tweaks=",".join("%s=%d" % kv for kv in sorted(counts.items())) or "none",
        )
        for result in results:
            level = logging.WARNING if result["status"] == "failed" else logging.INFO
            self.log.log(level, "tweak %s: %s %s", result["name"], result["status"], result["detail"])

    def _restore_powersave(self, reason: str, stage_index: Optional[int] = None) -> None:
        results = self.setup.powersave.restore()
        self.powersave_results = results
        failed = [r for r in results if r["status"] == "failed"]
        self._event("powersave-restore", stage=stage_index, reason=reason, failed=len(failed))
        for result in failed:
            self.log.warning("tweak %s: restore failed: %s", result["name"], result["detail"])
        self.machine.powersave_lost()

    def _act(self, stage: Any, reason: str) -> None:
        action = stage.action
        if action == POWERSAVE:  # `now powersave` on an ad-hoc stage 0 comes through apply, not here
            return
        next_wake = self._next_wake()
        alarm = ""  # what became of the RTC wake alarm: named in the action's outcome, where admins look
        if next_wake is not None and (action in SLEEP_ACTIONS or action in (BEST_EFFORT, "poweroff")):
            when = next_wake - float(self.setup.config.globals["wakeup_delta"])
            alarm = self.runner.set_wake_alarm(when)
            self._alarm_epoch = when
        try:
            steps = self.runner.plan(action, stage.command, self.setup.denied)
        except ValueError as exc:
            self._event("action-failed", stage=stage.index, action=action, detail=str(exc))
            self._execute(self.machine.action_finished(False, str(exc)))
            return
        self._event(
            "action-start", stage=stage.index, action=action, reason=reason, steps=",".join(s.action for s in steps)
        )

        def done(result) -> None:
            detail = "%s; %s" % (result.detail, alarm) if alarm else result.detail
            if result.ok:
                self._event("action-done", stage=stage.index, action=result.action, detail=detail)
            else:
                self._event("action-failed", stage=stage.index, action=action, detail=detail)
                self.log.error("stage %d %s failed, staying awake: %s", stage.index, action, result.detail)
            self._execute(self.machine.action_finished(result.ok, result.detail))
            if result.ok and self.dry_run and result.action != CUSTOM:
                # Nothing really slept: carry on as after a resume so dry runs stay representative.
                self._resumed(0.0, "dry run")

        job = self.runner.start(steps, on_done=done)
        if not job.done:
            self._jobs.append(job)

    def _poll_jobs(self) -> None:
        if self._jobs:
            self._jobs = [job for job in self._jobs if not job.poll()]

    # time ----------------------------------------------------------------------
    def _detect_resume(self, lateness: float) -> None:
        offset = self.clock.boottime() - self.clock.monotonic()
        slept = offset - self._clock_offset
        self._clock_offset = offset
        if slept > RESUME_JUMP:
            self._resumed(slept, "suspended")
        elif lateness > FROZEN_GAP:
            self._resumed(lateness, "frozen")

    def _resumed(self, slept: float, how: str) -> None:
        scheduled = self._alarm_epoch is not None and abs(
            self.clock.wall() - self._alarm_epoch
        ) < SCHEDULED_WAKE_WINDOW + float(self.setup.config.globals["wakeup_delta"])
        self._alarm_epoch = None
        if how != "dry run":
            self.runner.clear_wake_alarm()
        self._event("resume", how=how, slept=round(slept, 1), scheduled=scheduled)
        self._execute(self.machine.resumed(scheduled, slept))
        self._next_poll = self.clock.monotonic()

    def _next_wake(self) -> Optional[float]:
        wakes = []
        for slot in self.setup.monitors:
            if not slot.opened:
                continue
            try:
                wake = slot.monitor.next_wake()
            except Exception as exc:  # a broken schedule must not stop the daemon
                self.log.debug("monitor %s next_wake failed: %s", slot.name, exc)
                continue
            if wake is not None:
                wakes.append(float(wake))
        return min(wakes) if wakes else None

    def _watchdog(self) -> None:
        if self._watchdog_every is None:
            return
        now = self.clock.monotonic()
        if self._next_watchdog is None or now >= self._next_watchdog:
            sd_notify("WATCHDOG=1\nSTATUS=%s" % self.machine.state)
            self._next_watchdog = now + self._watchdog_every

    # building --------------------------------------------------------------------
    def _build(self, config: Config, errors: List[ConfigError]) -> Setup:
        from . import hardware, platform
        from .tweaks import PowersaveSet, TweakContext

        override = config.globals["platform"]
        platform_info = platform.detect(self.root, override=override)
        lists, list_errors = hardware.load_lists(config.hardware_files)
        errors.extend(list_errors)
        facts = hardware.collect_facts(self.root)
        verdict = hardware.evaluate(
            facts,
            lists,
            platform_info,
            override=None if override == "auto" else override,
            replaced=replaced_commands(config.actions),
        )
        denied = {}
        for action in ACTIONS:
            if action == BEST_EFFORT:  # denied below when its whole chain is
                continue
            if not verdict.allows(action):
                denied[action] = verdict.reason(action)
        chain = [a for a in config.actions["best_effort"] if a not in denied]
        if not chain:
            denied[BEST_EFFORT] = "every action of the best-effort chain is denied"
        mlog = self.log.getChild("monitor")
        monitors = []
        for part in config.enabled_monitors:
            ctx = MonitorContext(self.root, self.clock, mlog)
            monitors.append(MonitorSlot(part.cls(part.name, part.options, ctx), part.type))
        tlog = self.log.getChild("tweak")
        tweaks = [
            part.cls(part.name, part.options, TweakContext(self.root, tlog, platform_info))
            for part in config.tweaks
            if part.enabled
        ]
        record = os.path.join(self.root.path(str(config.globals["state_dir"])), RECORD_NAME)
        powersave = PowersaveSet(
            tweaks, self.root, record, self.log.getChild("powersave"), dry_run=self.dry_run, allowed=verdict.allows
        )
        return Setup(config, platform_info, verdict, denied, monitors, powersave)

    def _apply_globals(self, config: Config) -> None:
        self.host = str(config.globals["hostname"]) or socket.gethostname()
        self.runner = ActionRunner(
            config.actions, self.root, self.clock, self.log.getChild("action"), dry_run=self.dry_run
        )
        self.reporter.close()
        control = socket_path(self.root.path(str(config.globals["state_dir"])))
        self.reporter = make_reporter(config.server, self.host, self.log.getChild("report"), control, self.root)

    def _open_monitors(self, slots: List[MonitorSlot]) -> None:
        for slot in slots:
            self._open_monitor(slot)
        self._sync_fds()

    def _open_monitor(self, slot: MonitorSlot) -> None:
        try:
            slot.monitor.open()
        except MonitorError as exc:
            slot.retry_at = self.clock.monotonic() + REOPEN_AFTER
            self._monitor_failed(slot, "cannot open: %s" % exc)
            return
        except Exception as exc:  # one broken monitor must not stop the daemon
            self.log.exception("monitor %s crashed in open", slot.name)
            slot.retry_at = self.clock.monotonic() + REOPEN_AFTER
            self._monitor_failed(slot, "cannot open: %s" % exc)
            return
        slot.opened = True
        slot.error = None

    def _close_monitor(self, slot: MonitorSlot) -> None:
        if slot.opened:
            try:
                slot.monitor.close()
            except Exception:  # closing must go on for the others
                self.log.exception("monitor %s crashed in close", slot.name)
            slot.opened = False

    def _sync_slot(self, slot: MonitorSlot) -> None:
        """After one monitor's event: re-sync only if its fds changed (hot-plug), cheap otherwise."""
        if not self._live_events:
            return  # no monitor fd is in the selector while awake
        try:
            fds = set(slot.monitor.fds()) if slot.opened else set()
        except Exception:
            fds = set()
        if fds != {fd for fd, data in self._registered.items() if data[0] == "monitor" and data[1] is slot}:
            self._sync_fds()

    def _sync_fds(self) -> None:
        wanted: Dict[int, Any] = {}
        if self._signal_r is not None:
            wanted[self._signal_r.fileno()] = ("signal",)
        if self.control is not None:
            for fd in self.control.fds():
                wanted[fd] = ("control",)
        for slot in self.setup.monitors if self.setup and self._live_events else ():
            if not slot.opened:
                continue
            try:
                fds = slot.monitor.fds()
            except Exception:
                self.log.exception("monitor %s crashed in fds", slot.name)
                continue
            for fd in fds:
                wanted[fd] = ("monitor", slot)
        for fd in list(self._registered):
            if fd not in wanted or self._registered[fd] != wanted[fd]:
                try:
                    self._selector.unregister(fd)
                except (KeyError, ValueError, OSError):
                    pass
                del self._registered[fd]
        for fd, data in wanted.items():
            if fd not in self._registered:
                try:
                    self._selector.register(fd, selectors.EVENT_READ, data)
                except (ValueError, OSError) as exc:
                    self.log.warning("cannot watch fd %d (%s): %s", fd, data[0], exc)
                    continue
                self._registered[fd] = data

    # reload ------------------------------------------------------------------------
    def reload(self) -> List[str]:
        """Re-read the config; on any error keep the running one.  Returns the errors (empty: reloaded)."""
        sd_notify("RELOADING=1\nMONOTONIC_USEC=%d" % int(time.monotonic() * 1e6))
        try:
            config, errors = load_config(self.config_files(), self.root)
            setup_errors: List[ConfigError] = []
            setup = None if errors else self._build(config, setup_errors)
            errors = errors + setup_errors
            moved = None
            if not errors and setup is not None:
                moved = self._prepare_state_dir(config, errors)
            if errors or setup is None:
                self.log.error("%s", self._config_failure(errors, "reload refused, keeping the running configuration"))
                self._event("reload-failed", errors=len(errors))
                return [str(e) for e in errors]
            old = self.setup
            for slot in old.monitors:
                self._close_monitor(slot)
            self.setup = setup
            self._apply_globals(config)
            if moved is not None:
                self._switch_state_dir(*moved)
            machine = NapMachine(
                config.stages,
                self.clock,
                settle=config.globals["settle"],
                min_sleep=config.globals["min_sleep"],
                denied=setup.denied,
            )
            machine.carry_over(self.machine)
            self.machine = machine
            if old.powersave.active:
                self._reload_powersave(old.powersave, machine)
            self._open_monitors(setup.monitors)
            self._event("reload", files=len(config.files), monitors=len(setup.monitors))
            return []
        finally:
            sd_notify("READY=1")

    def _reload_powersave(self, old: Any, machine: NapMachine) -> None:
        """Powersave was in effect: apply only the difference, or restore it all when no stage has it now."""
        if not machine.powersave_active:
            results = old.restore()
            self.powersave_results = results
            self._event("powersave-restore", stage=None, reason="reload: no powersave stage", failed=len(results))
            return
        results = self.setup.powersave.take_over(old)
        self.powersave_results = [r for r in results if r["status"] != "restored"]
        counts = collections.Counter(r["status"] for r in results)
        self._event("powersave-reload", tweaks=",".join("%s=%d" % kv for kv in sorted(counts.items())) or "none")
        for result in results:
            if result["status"] in ("applied", "restored", "failed"):
                level = logging.WARNING if result["status"] == "failed" else logging.INFO
                self.log.log(level, "tweak %s: %s %s", result["name"], result["status"], result["detail"])

    def _prepare_state_dir(self, config: Config, errors: List[Any]) -> Optional[Any]:
        """A reload that moves ``state_dir``: take the new lock and socket first (a failure refuses the reload)."""
        old_dir = self.root.path(str(self.setup.config.globals["state_dir"]))
        new_dir = self.root.path(str(config.globals["state_dir"]))
        if os.path.abspath(old_dir) == os.path.abspath(new_dir):
            return None
        try:
            os.makedirs(new_dir, mode=0o755, exist_ok=True)
            lock_fd = take_instance_lock(os.path.join(new_dir, LOCK_NAME))
        except (OSError, StartError) as exc:
            errors.append(ConfigError("state_dir %s: %s" % (new_dir, exc)))
            return None
        control = ControlServer(socket_path(new_dir), self.handle_request, self.log.getChild("control"))
        try:
            control.open()
        except OSError as exc:
            os.close(lock_fd)
            errors.append(ConfigError("state_dir %s: cannot open the control socket: %s" % (new_dir, exc)))
            return None
        return lock_fd, control

    def _switch_state_dir(self, lock_fd: int, control: ControlServer) -> None:
        """Serve the control socket from the new state_dir and drop the old one (and its lock)."""
        old = self.control
        self.control = control
        if old is not None:
            old.close()
        self._release_lock()
        self._lock_fd = lock_fd
        self.log.info("state_dir moved: control socket now %s", control.path)
        self._sync_fds()

    def _config_failure(self, errors: Sequence[Any], what: str) -> str:
        for error in errors:
            self.log.error("%s", error)
        return "%d configuration error(s): %s" % (len(errors), what)

    # signals -----------------------------------------------------------------------
    def _install_signals(self) -> None:
        self._signal_r, self._signal_w = socket.socketpair()
        self._signal_r.setblocking(False)
        self._signal_w.setblocking(False)
        signal.set_wakeup_fd(self._signal_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            # The handler does nothing: the wake-up fd carries the signal number into the loop.
            self._old_handlers[signum] = signal.signal(signum, _note_signal)
        self._sync_fds()

    def _restore_signals(self) -> None:
        if self._signal_r is None:
            return
        signal.set_wakeup_fd(-1)
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers.clear()
        self._signal_r.close()
        self._signal_w.close()
        self._signal_r = self._signal_w = None

    def _read_signals(self) -> None:
        try:
            data = self._signal_r.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.log.info("signal %s: stopping", signal.Signals(signum).name)
                self._stopping = True
                return
            if signum == signal.SIGHUP:
                self.reload()
            elif signum == signal.SIGUSR1:
                try:
                    self._nap_now(None)
                except ValueError as exc:
                    self.log.warning("SIGUSR1 (nap now) ignored: %s", exc)
            elif signum == signal.SIGUSR2:
                self._wake("SIGUSR2")

    # control ---------------------------------------------------------------------------
    def handle_request(self, request: Dict[str, Any]) -> Any:
        cmd = request["cmd"]
        if cmd == "status":
            return self.status()
        if cmd == "explain":
            return {"lines": self.explain()}
        if cmd == "wake":
            self._wake("powernap wake")
            return {"state": self.machine.state}
        if cmd == "now":
            action = request.get("action")
            if action is not None and action not in ACTIONS:
                raise ValueError("unknown action %r (one of: %s)" % (action, ", ".join(ACTIONS)))
            self._nap_now(action)
            return {"state": self.machine.state, "stage": self.machine.snapshot()["stage"]}
        if cmd == "reload":
            errors = self.reload()
            return {"reloaded": not errors, "errors": errors}
        raise ValueError("unknown command %r (status, now, wake, explain, reload)" % cmd)

    def _nap_now(self, action: Optional[str]) -> None:
        """Fire a stage on request.  Raises ValueError, before anything changes, when it could not run at all."""
        stage = self.machine.now_stage(action)
        if stage.action != POWERSAVE:
            self.runner.plan(stage.action, stage.command, self.setup.denied)  # e.g. custom without a command
        self._event("now", action=action or "next stage")
        self._execute(self.machine.nap_now(action))

    def _wake(self, source: str) -> None:
        was = self.machine.state
        decisions = self.machine.wake(source)
        self._event("wake", source=source, was=was)
        self._execute(decisions)

    def status(self) -> Dict[str, Any]:
        setup = self.setup
        next_wake = self._next_wake()
        snap = self.machine.snapshot(next_wake)
        allowed = [a for a in ACTIONS if a not in setup.denied]
        return {
            "schema": STATUS_SCHEMA,
            "version": __version__,
            "host": self.host,
            "state": snap["state"],
            "stage": snap["stage"],
            "idle_seconds": snap["idle_seconds"],
            "settle_remaining": snap["settle_remaining"],
            "next_action": snap["next_action"],
            "next_wake": next_wake,
            "monitors": [slot.to_dict() for slot in setup.monitors],
            "powersave": {"active": setup.powersave.active, "tweaks": list(self.powersave_results)},
            "platform": setup.platform_info.to_dict(),
            "verdict": {"allowed_actions": allowed, "denied": dict(setup.denied)},
            "best_effort": best_effort_outcome(setup.config.actions["best_effort"], setup.denied),
            "dry_run": self.dry_run,
            "config_files": list(setup.config.files),
            # Additions beyond the stable core (schema 1 allows new keys):
            "grace": snap["grace"],
            "running": snap["running"],
            "skipped": snap["skipped"],
            "last_activity": snap["last_activity"],
            "last_activity_reason": snap["last_activity_reason"],
            "stages": [
                {"index": s.index, "after": s.after, "action": s.action, "warn": s.warn} for s in setup.config.stages
            ],
            "events": list(self.events),
            "pid": os.getpid(),
        }

    def explain(self) -> List[str]:
        return explain_status(self.status())

    # helpers ---------------------------------------------------------------------------
    def _event(self, name: str, **fields: Any) -> None:
        event = {"time": round(self.clock.wall(), 3), "event": name}
        event.update(fields)
        self.events.append(event)
        self.log.info("event=%s %s", name, " ".join("%s=%s" % (k, _field(v)) for k, v in fields.items()))
        self.reporter.report(event)
        if self.machine is not None and name not in ("start", "stop"):
            sd_notify("STATUS=%s" % self.machine.state)
            self._write_textfile()

    def _write_textfile(self) -> None:
        """Rewrite the node_exporter textfile (``[powernap] metrics_textfile_dir``), if one is configured."""
        globals_ = self.setup.config.globals
        self._textfile_next = self.clock.monotonic() + float(globals_["metrics_textfile_interval"])
        if not globals_["metrics_textfile_dir"]:
            return
        directory = self.root.path(str(globals_["metrics_textfile_dir"]))
        try:
            write_textfile(directory, self.status())
        except OSError as exc:  # a full disk or a missing directory must not stop the engine
            problem = "cannot write the metrics textfile in %s: %s" % (directory, exc.strerror or exc)
            if problem != self._textfile_problem:
                self.log.warning("%s", problem)
            self._textfile_problem = problem
            return
        self._textfile_problem = None

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def take_instance_lock(path: str) -> int:
    """The single-instance flock (powernapd, ``powernap restore``); its fd.  Raises StartError if held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StartError("another powernapd holds %s" % path) from None
    # The PID inside is for people; the flock is what counts (a stale file never blocks a start).
    os.ftruncate(fd, 0)
    os.write(fd, ("%d\n" % os.getpid()).encode())
    return fd


def _note_signal(signum, frame) -> None:
    """Signal handler: nothing to do here, the wake-up fd tells the loop."""


def _field(value: Any) -> str:
    text = "-" if value is None else str(value)
    return '"%s"' % text.replace('"', "'") if (" " in text or not text) else text


def explain_status(status: Dict[str, Any]) -> List[str]:
    """Why the host is or is not napping, in plain words (from a status dict)."""
    lines = []
    state = status["state"]
    idle = status["idle_seconds"]
    if status.get("dry_run"):
        lines.append("Dry run: actions are logged, not carried out.")
    active = [m for m in status["monitors"] if m["active"]]
    if state == "awake":
        if active:
            lines.append("Awake: the host is in use.")
            for m in active:
                what = (
                    ("its monitor is failing (%s), which counts as activity" % m["error"])
                    if m["error"]
                    else m["reason"]
                )
                lines.append("  - %s (%s): %s" % (m["name"], m["type"], what))
        else:
            lines.append("Awake: idle for %s, no monitor sees activity now." % human_duration(idle))
            if status.get("last_activity_reason"):
                lines.append("  Last activity: %s." % status["last_activity_reason"])
    elif state == "grace":
        grace = status.get("grace") or {}
        lines.append(
            "Grace: %s in %s unless there is activity (run 'powernap wake' to cancel)."
            % (grace.get("action"), human_duration(grace.get("in_seconds", 0)))
        )
    else:
        stage = status.get("stage") or {}
        lines.append(
            "Napping: stage %s (%s) in effect, idle for %s."
            % (stage.get("index"), stage.get("action"), human_duration(idle))
        )
    if status["settle_remaining"] > 0:
        lines.append(
            "Settling after start, resume or wake: nothing fires for another %s."
            % human_duration(status["settle_remaining"])
        )
    for skipped in status.get("skipped", []):
        lines.append("Stage %d (%s) is skipped: %s." % (skipped["stage"], skipped["action"], skipped["reason"]))
    nxt = status.get("next_action")
    held = held_awake_by(status)
    if nxt and held:
        lines.append(
            "Next: nothing while %s keep%s the host awake; then stage %d (%s) once it has been idle for %s."
            % (
                ", ".join(held),
                "s" if len(held) == 1 else "",
                nxt["stage"],
                nxt["action"],
                human_duration(stage_after(status, nxt["stage"])),
            )
        )
    elif nxt:
        lines.append(
            "Next: stage %d (%s) in %s if the host stays idle."
            % (nxt["stage"], nxt["action"], human_duration(nxt["in_seconds"]))
        )
    elif status.get("running"):
        lines.append("Running: stage %d (%s)." % (status["running"]["stage"], status["running"]["action"]))
    else:
        lines.append("Next: nothing; no further stage is allowed on this host.")
    for action, reason in sorted(status["verdict"]["denied"].items()):
        lines.append("Not allowed here: %s (%s)." % (action, reason))
    best_effort = status.get("best_effort")
    if best_effort and any(s["action"] == BEST_EFFORT for s in status.get("stages", [])):
        lines.append("On this host %s." % describe_best_effort(best_effort))
    broken = [m for m in status["monitors"] if m["error"]]
    for m in broken:
        lines.append("Monitor %s is failing: %s." % (m["name"], m["error"]))
    if status.get("next_wake"):
        lines.append(
            "Next scheduled wake: %s." % time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(status["next_wake"]))
        )
    return lines
