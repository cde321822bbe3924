"""Monitors whose check is slow (a command, a network round trip) run it in the background.

``ProbingMonitor.check()`` never blocks: it collects the last finished probe,
starts a new one when ``every`` has passed on the monotonic clock, and
reports the last known outcome in between.  A probe is either a subprocess
(``CommandJob``: Popen, output to an anonymous temporary file so a chatty
child can never fill a pipe, killed with its process group on timeout) or a
function run in a daemon thread (``ThreadJob``: for urllib and socket
protocols; daemon threads never hold up SIGTERM).
"""

import os
import signal
import subprocess
import tempfile
import threading
from typing import Any, Callable, List, Optional, Tuple

from ..errors import MonitorError
from .base import Monitor

# A probe's outcome: (None, reason-or-None) on success, (message, None) on failure.
Outcome = Tuple[Optional[str], Optional[str]]


class Job:
    """One probe in flight."""

    def poll(self, now: float) -> Optional[Outcome]:
        """The outcome once finished, else None.  ``now`` is monotonic time."""
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop the probe (must not raise)."""


class CommandJob(Job):
    """A subprocess started without waiting; ``poll`` reaps it or kills it at the deadline."""

    def __init__(
        self,
        argv: List[str],
        timeout: float,
        now: float,
        interpret: Callable[[int, str], Outcome],
        env: Optional[dict] = None,
    ):
        self.argv = argv
        self.deadline = now + timeout
        self.timeout = timeout
        self.interpret = interpret
        self.output = tempfile.TemporaryFile()  # noqa: SIM115  (outlives __init__; closed in poll/cancel)
        try:
            self.proc: Optional[subprocess.Popen] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self.output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=env,
            )
            self.start_error = None
        except OSError as exc:
            self.proc = None
            self.start_error = "cannot run %s: %s" % (argv[0], exc.strerror or exc)

    def poll(self, now: float) -> Optional[Outcome]:
        if self.proc is None:
            self.output.close()
            return self.start_error, None
        code = self.proc.poll()
        if code is None:
            if now < self.deadline:
                return None
            self.cancel()
            return "%s timed out after %gs" % (os.path.basename(self.argv[0]), self.timeout), None
        self.output.seek(0)
        text = self.output.read(65536).decode("utf-8", "replace")
        self.output.close()
        return self.interpret(code, text)

    def cancel(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        if not self.output.closed:
            self.output.close()


class ThreadJob(Job):
    """``func()`` in a daemon thread; it returns a reason or None, or raises MonitorError/OSError.

    ``func`` must honour its own timeout (socket timeouts); ``poll`` gives up
    waiting one second after the deadline and reports a timeout.
    """

    def __init__(self, func: Callable[[], Optional[str]], timeout: float, now: float, name: str = "probe"):
        self.deadline = now + timeout + 1.0
        self.timeout = timeout
        self._outcome: Optional[Outcome] = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(func,), name="powernap-" + name, daemon=True)
        self._thread.start()

    def _run(self, func: Callable[[], Optional[str]]) -> None:
        try:
            self._outcome = (None, func())
        except MonitorError as exc:
            self._outcome = (str(exc), None)
        except (OSError, ValueError) as exc:
            self._outcome = (str(exc) or exc.__class__.__name__, None)
        finally:
            self._done.set()

    def wait(self, seconds: float) -> bool:
        """For tests and shutdown: block until finished or ``seconds`` pass."""
        return self._done.wait(seconds)

    def poll(self, now: float) -> Optional[Outcome]:
        if self._done.is_set():
            return self._outcome
        if now >= self.deadline:
            return "no answer within %gs" % self.timeout, None
        return None


class ProbingMonitor(Monitor):
    """Base of monitors that probe every ``every`` seconds in the background.

    Subclasses declare an ``every`` option and implement ``start_probe(now)``
    returning a Job.  The last probe's outcome stands until the next one
    finishes: an error keeps raising MonitorError (so status shows it), a
    reason keeps reporting activity.
    """

    def __init__(self, name: str, options: dict, ctx: Any):
        super().__init__(name, options, ctx)
        self.job: Optional[Job] = None
        self.started_at: Optional[float] = None
        self.last: Optional[Outcome] = None

    def start_probe(self, now: float) -> Job:
        raise NotImplementedError

    def collect(self, now: float) -> None:
        """Take a finished probe's outcome and start the next one when due."""
        if self.job is not None:
            outcome = self.job.poll(now)
            if outcome is not None:
                self.last = outcome
                self.job = None
        if self.job is None and (self.started_at is None or now - self.started_at >= self.options["every"]):
            self.started_at = now
            self.job = self.start_probe(now)

    def check(self) -> Optional[str]:
        self.collect(self.ctx.clock.monotonic())
        if self.last is None:
            return None
        error, reason = self.last
        if error:
            raise MonitorError(error)
        return reason

    def close(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.job = None
