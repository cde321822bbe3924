"""Nap actions: what a stage does, and how its commands run without blocking the daemon.

Every command is configurable in ``[actions]`` (the lab and the tests replace
them) and is split with ``shlex``, never passed to a shell.  Commands run as
child processes that the daemon's loop polls (``CommandJob.poll``) under a
hard timeout; nothing here waits for a child.  ``--dry-run`` logs what would
run and reports success.

A failed action leaves the host awake: the job reports ``ok=False`` with the
exit status and the command's last output lines, and the state machine marks
the stage failed.
"""

import fcntl
import logging
import os
import shlex
import signal
import subprocess
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence

from .clock import Clock
from .options import Choice, Declared, Duration, ListOf, Option, String
from .sysroot import SysRoot

POWERSAVE = "powersave"
BEST_EFFORT = "best-effort"
CUSTOM = "custom"
# Actions that take the host down and expect it to come back (resume).
SLEEP_ACTIONS = ("suspend", "hibernate", "hybrid-sleep", "suspend-then-hibernate")
COMMAND_ACTIONS = SLEEP_ACTIONS + ("poweroff",)
ACTIONS = (POWERSAVE,) + COMMAND_ACTIONS + (BEST_EFFORT, CUSTOM)

RTC_WAKEALARM = "/sys/class/rtc/rtc0/wakealarm"
_OUTPUT_KEEP = 4096  # bytes of a command's output kept for the failure message


class ActionsSection(Declared):
    """[actions]: the commands behind each action (replace them for labs and tests)."""

    KIND = "section"
    TYPE = "actions"
    OPTIONS = (
        Option(
            "suspend_command",
            String(nonempty=True),
            default="systemctl suspend",
            doc="Command that suspends the host to RAM.",
        ),
        Option(
            "hibernate_command",
            String(nonempty=True),
            default="systemctl hibernate",
            doc="Command that hibernates the host to disk.",
        ),
        Option(
            "hybrid_sleep_command",
            String(nonempty=True),
            default="systemctl hybrid-sleep",
            doc="Command that suspends to RAM and disk at once.",
        ),
        Option(
            "suspend_then_hibernate_command",
            String(nonempty=True),
            default="systemctl suspend-then-hibernate",
            doc="Command that suspends, then hibernates after the system's configured delay.",
        ),
        Option(
            "poweroff_command",
            String(nonempty=True),
            default="systemctl poweroff",
            doc="Command that powers the host off.",
        ),
        Option(
            "custom_command",
            String(),
            default="",
            doc="Command for stages with action = custom (a stage's own 'command' wins).",
        ),
        Option(
            "best_effort",
            ListOf(Choice(*COMMAND_ACTIONS), nonempty=True),
            default=("suspend-then-hibernate", "suspend", "hibernate", "poweroff"),
            doc="Order tried by action = best-effort: the first action the kernel supports and the hardware "
            "verdict allows runs; if its command fails the next one is tried.",
        ),
        Option(
            "wall_command",
            String(),
            default="wall",
            doc="Command that broadcasts the grace warning (message on stdin); empty disables warnings.",
        ),
        Option(
            "command_timeout",
            Duration(minimum=1),
            default=120.0,
            doc="Longest any action command may run before it is killed and counted as failed.",
        ),
        Option(
            "rtc_wakealarm",
            String(nonempty=True),
            default=RTC_WAKEALARM,
            doc="RTC wake alarm file written before sleeping when a wake time is known ('0' first).",
        ),
    )


def command_option(action: str) -> str:
    return action.replace("-", "_") + "_command"


def replaced_commands(settings: Dict[str, object]) -> FrozenSet[str]:
    """The sleep actions whose command the admin replaced ([actions] X_command not the default).

    The kernel's /sys/power/state speaks for the default commands (systemctl suspend, ...) only: a
    replaced command (a vendor tool, the lab's simulated suspend) does its own work, so the kernel's
    sleep states neither allow nor deny it.
    """
    defaults = {opt.name: opt.default for opt in ActionsSection.OPTIONS}
    return frozenset(
        action
        for action in COMMAND_ACTIONS
        if command_option(action) in settings
        and settings[command_option(action)] != defaults.get(command_option(action))
    )


def kernel_support(root: SysRoot, action: str) -> Optional[str]:
    """Why the kernel cannot do ``action`` (from /sys/power), or None if it can."""
    if action in (POWERSAVE, CUSTOM, "poweroff"):
        return None
    states = (root.read("/sys/power/state") or "").split()
    if not states:
        return "/sys/power/state is missing or empty"
    can_ram = "mem" in states or "freeze" in states
    can_disk = "disk" in states
    if action == "suspend" and not can_ram:
        return "kernel offers no suspend to RAM (/sys/power/state: %s)" % " ".join(states)
    if action in ("hibernate", "hybrid-sleep", "suspend-then-hibernate") and not can_disk:
        return "kernel offers no hibernation (/sys/power/state: %s)" % " ".join(states)
    if action == "suspend-then-hibernate" and not can_ram:
        return "kernel offers no suspend to RAM (/sys/power/state: %s)" % " ".join(states)
    if action == "hybrid-sleep":
        modes = (root.read("/sys/power/disk") or "").replace("[", "").replace("]", "").split()
        if "suspend" not in modes:
            return "kernel offers no hybrid sleep (/sys/power/disk lacks 'suspend')"
    return None


class Step:
    """One command of a plan: the action it performs and its argv."""

    __slots__ = ("action", "argv")

    def __init__(self, action: str, argv: Sequence[str]):
        self.action = action
        self.argv = list(argv)

    def __repr__(self) -> str:
        return "Step(%s: %s)" % (self.action, shlex.join(self.argv))


class ActionResult:
    """How a command action ended: ``action`` is the one that ran last (for best-effort, the one that worked)."""

    __slots__ = ("ok", "action", "detail")

    def __init__(self, ok: bool, action: str, detail: str):
        self.ok = ok
        self.action = action
        self.detail = detail

    def __repr__(self) -> str:
        return "ActionResult(ok=%r, action=%r, detail=%r)" % (self.ok, self.action, self.detail)


class CommandJob:
    """Runs a plan's steps one after the other until one succeeds; polled by the daemon's loop."""

    def __init__(
        self,
        steps: Sequence[Step],
        timeout: float,
        clock: Clock,
        log: logging.Logger,
        dry_run: bool = False,
        stdin_text: Optional[str] = None,
        on_done: Optional[Callable[[ActionResult], None]] = None,
        popen: Callable[..., subprocess.Popen] = subprocess.Popen,
    ):
        if not steps:
            raise ValueError("a job needs at least one step")
        self.steps = list(steps)
        self.timeout = timeout
        self.clock = clock
        self.log = log
        self.dry_run = dry_run
        self.stdin_text = stdin_text
        self.on_done = on_done
        self._popen = popen
        self._proc: Optional[subprocess.Popen] = None
        self._index = -1
        self._deadline = 0.0
        self._output = b""
        self._failures: List[str] = []
        self.result: Optional[ActionResult] = None

    @property
    def done(self) -> bool:
        return self.result is not None

    @property
    def step(self) -> Step:
        return self.steps[min(max(self._index, 0), len(self.steps) - 1)]

    def start(self) -> "CommandJob":
        self._next_step()
        return self

    def poll(self) -> bool:
        """Advance the job; True once it has finished (``result`` is set, ``on_done`` called)."""
        if self.result is not None:
            return True
        proc = self._proc
        if proc is None:
            return True
        self._read_output()
        code = proc.poll()
        if code is None:
            if self.clock.monotonic() < self._deadline:
                return False
            self._kill()
            self._step_failed("timed out after %gs" % self.timeout)
            return self.result is not None
        self._read_output()
        self._close_pipe()
        self._proc = None
        if code == 0:
            self._finish(True, "%s: %s succeeded" % (self.step.action, shlex.join(self.step.argv)))
        else:
            self._step_failed("exited with status %d%s" % (code, self._output_tail()))
        return self.result is not None

    def cancel(self) -> None:
        """Kill a running command (daemon shutdown); the job ends as failed."""
        if self.result is None and self._proc is not None:
            self._kill()
            self._finish(False, "%s cancelled: daemon stopping" % self.step.action)

    # internals -------------------------------------------------------------
    def _next_step(self) -> None:
        while True:
            self._index += 1
            if self._index >= len(self.steps):
                self._finish(False, "; ".join(self._failures) or "nothing to run")
                return
            step = self.steps[self._index]
            if self.dry_run:
                self.log.info("dry-run: would run %s: %s", step.action, shlex.join(step.argv))
                self._finish(True, "dry-run: %s not run" % shlex.join(step.argv))
                return
            self._output = b""
            try:
                self._proc = self._popen(
                    step.argv,
                    stdin=subprocess.PIPE if self.stdin_text is not None else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    close_fds=True,
                    start_new_session=True,
                )
            except OSError as exc:
                self._failures.append("%s: cannot run %s: %s" % (step.action, shlex.join(step.argv), exc))
                self.log.warning("%s", self._failures[-1])
                continue
            self.log.info("running %s: %s (pid %d)", step.action, shlex.join(step.argv), self._proc.pid)
            self._deadline = self.clock.monotonic() + self.timeout
            if self._proc.stdout is not None:
                flags = fcntl.fcntl(self._proc.stdout.fileno(), fcntl.F_GETFL)
                fcntl.fcntl(self._proc.stdout.fileno(), fcntl.F_SETFL, flags | os.O_NONBLOCK)
            if self._proc.stdin is not None:
                try:
                    self._proc.stdin.write((self.stdin_text or "").encode("utf-8"))
                except OSError:
                    pass  # the command does not read its input: its exit status tells the story
                finally:
                    try:
                        self._proc.stdin.close()
                    except OSError:
                        pass
            return

    def _step_failed(self, why: str) -> None:
        step = self.step
        self._failures.append("%s: %s %s" % (step.action, shlex.join(step.argv), why))
        self.log.warning("%s", self._failures[-1])
        self._close_pipe()
        self._proc = None
        self._next_step()

    def _finish(self, ok: bool, detail: str) -> None:
        self.result = ActionResult(ok, self.step.action, detail)
        if self.on_done is not None:
            self.on_done(self.result)

    def _read_output(self) -> None:
        pipe = self._proc.stdout if self._proc is not None else None
        if pipe is None:
            return
        for _unused in range(64):  # bounded: at most 256 KiB per poll
            try:
                chunk = os.read(pipe.fileno(), 4096)
            except OSError:  # EAGAIN: nothing more for now
                return
            if not chunk:
                return
            self._output = (self._output + chunk)[-_OUTPUT_KEEP:]

    def _output_tail(self) -> str:
        text = self._output.decode("utf-8", "replace").strip()
        if not text:
            return ""
        lines = text.splitlines()[-3:]
        return ": " + " | ".join(lines)

    def _close_pipe(self) -> None:
        if self._proc is not None and self._proc.stdout is not None:
            try:
                self._proc.stdout.close()
            except OSError:
                pass

    def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: take helpers it forked along
        except OSError:
            try:
                proc.kill()
            except OSError:
                pass
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.log.error("pid %d did not die after SIGKILL", proc.pid)
        self._close_pipe()


class ActionRunner:
    """Turns action names into command jobs, and sets the RTC wake alarm."""

    def __init__(
        self,
        settings: Dict[str, object],
        root: SysRoot,
        clock: Clock,
        log: logging.Logger,
        dry_run: bool = False,
        popen: Callable[..., subprocess.Popen] = subprocess.Popen,
    ):
        self.settings = settings
        self.root = root
        self.clock = clock
        self.log = log
        self.dry_run = dry_run
        self._popen = popen

    def plan(self, action: str, stage_command: str = "", denied: Optional[Dict[str, str]] = None) -> List[Step]:
        """The steps that perform ``action``; raises ValueError when there is nothing it could run."""
        denied = denied or {}
        if action == POWERSAVE:
            raise ValueError("powersave is applied by the tweak set, not by a command")
        if action == CUSTOM:
            text = stage_command or str(self.settings.get("custom_command") or "")
            if not text:
                raise ValueError("action custom has no command (set the stage's command or [actions] custom_command)")
            return [Step(CUSTOM, shlex.split(text))]
        if action == BEST_EFFORT:
            steps = []
            reasons = []
            for candidate in self.settings["best_effort"]:  # type: ignore[union-attr]
                why = denied.get(candidate) or (
                    None if candidate in replaced_commands(self.settings) else kernel_support(self.root, candidate)
                )
                if why:
                    reasons.append("%s: %s" % (candidate, why))
                    continue
                steps.append(Step(candidate, shlex.split(str(self.settings[command_option(candidate)]))))
            if not steps:
                raise ValueError("best-effort found no usable action (%s)" % "; ".join(reasons))
            return steps
        if action not in COMMAND_ACTIONS:
            raise ValueError("unknown action %r" % action)
        return [Step(action, shlex.split(str(self.settings[command_option(action)])))]

    def start(self, steps: Sequence[Step], on_done: Optional[Callable[[ActionResult], None]] = None) -> CommandJob:
        return CommandJob(
            steps,
            float(self.settings["command_timeout"]),
            self.clock,
            self.log,  # type: ignore[arg-type]
            dry_run=self.dry_run,
            on_done=on_done,
            popen=self._popen,
        ).start()

    def wall(self, message: str) -> Optional[CommandJob]:
        """Broadcast ``message`` to logged-in users; None when warnings are switched off."""
        text = str(self.settings.get("wall_command") or "")
        if not text:
            return None
        self.log.info("wall: %s", message)
        return CommandJob(
            [Step("wall", shlex.split(text))],
            10.0,
            self.clock,
            self.log,
            dry_run=self.dry_run,
            stdin_text=message + "\n",
            popen=self._popen,
        ).start()

    def set_wake_alarm(self, epoch: float) -> str:
        """Program the RTC to wake the host at ``epoch`` (wall clock).  Writes '0' first: a set alarm gives EBUSY."""
        path = str(self.settings["rtc_wakealarm"])
        when = int(epoch)
        if self.dry_run:
            self.log.info("dry-run: would write 0 then %d to %s", when, path)
            return "dry-run: RTC wake alarm not set (%d)" % when
        try:
            self.root.write(path, "0")
            self.root.write(path, str(when))
        except OSError as exc:
            self.log.warning("cannot set the RTC wake alarm %s: %s", path, exc)
            return "RTC wake alarm not set: %s" % exc
        self.log.info("RTC wake alarm set for %d", when)
        return "RTC wake alarm set for %d" % when

    def clear_wake_alarm(self) -> None:
        if self.dry_run:
            return
        try:
            self.root.write(str(self.settings["rtc_wakealarm"]), "0")
        except OSError:
            pass  # no RTC (VM, container): nothing was set either
