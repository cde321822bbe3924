"""External commands (exit status 0 means activity) and ping."""

import math
from typing import List, Optional

from ..options import Duration, ListOf, Option, String
from .base import MONITOR_COMMON_OPTIONS
from .probing import CommandJob, Job, Outcome, ProbingMonitor


class CommandMonitor(ProbingMonitor):
    """Activity while a command, run in the background every 'every', exits with status 0."""

    TYPE = "command"
    OPTIONS = MONITOR_COMMON_OPTIONS + (
        Option(
            "command",
            String(nonempty=True),
            required=True,
            doc="Shell command (run with /bin/sh -c, as root, without blocking the daemon). Exit status 0 "
            "means activity, any other status means idle; its first output line is the reason shown.",
        ),
        Option(
            "every",
            Duration(minimum=1),
            default=60.0,
            doc="How often the command runs; between runs the last result stands.",
        ),
        Option(
            "timeout",
            Duration(minimum=0.1),
            default=30.0,
            doc="A run taking longer is killed (with its process group) and counts as an error.",
        ),
    )

    def start_probe(self, now: float) -> Job:
        return CommandJob(["/bin/sh", "-c", self.options["command"]], self.options["timeout"], now, self._interpret)

    def _interpret(self, code: int, text: str) -> Outcome:
        first = text.strip().splitlines()[0][:120] if text.strip() else ""
        if code == 0:
            return None, "command succeeded" + (": " + first if first else "")
        if code in (126, 127):
            return "command could not run (exit %d): %s" % (code, first), None
        if code < 0:
            return "command killed by signal %d" % -code, None
        return None, None

    def describe(self) -> str:
        return "command %r" % self.options["command"]


class _AnyOf(Job):
    """Several probes in flight; done when all are, active if any is."""

    def __init__(self, jobs: List[Job]):
        self.jobs = jobs
        self.outcomes: List[Optional[Outcome]] = [None] * len(jobs)

    def poll(self, now: float) -> Optional[Outcome]:
        for index, job in enumerate(self.jobs):
            if self.outcomes[index] is None:
                self.outcomes[index] = job.poll(now)
        if any(outcome is None for outcome in self.outcomes):
            return None
        reasons = [reason for _error, reason in self.outcomes if reason]
        if reasons:
            return None, reasons[0]
        errors = [error for error, _reason in self.outcomes if error]
        if errors and len(errors) == len(self.outcomes):
            return "; ".join(errors), None
        return None, None

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancel()


class PingMonitor(ProbingMonitor):
    """Activity while any of the listed hosts answers ping (e.g. a user's desktop or a dependent server)."""

    TYPE = "ping"
    OPTIONS = MONITOR_COMMON_OPTIONS + (
        Option(
            "hosts",
            ListOf(String(nonempty=True), nonempty=True),
            required=True,
            doc="Host names or addresses to ping; any one answering is activity.",
        ),
        Option(
            "every",
            Duration(minimum=1),
            default=30.0,
            doc="How often the hosts are pinged (one echo request each, in the background).",
        ),
        Option("timeout", Duration(minimum=1), default=2.0, doc="How long to wait for each reply."),
        Option(
            "ping",
            String(nonempty=True),
            default="ping",
            doc="The ping program (iputils or busybox style: -c COUNT -W SECONDS).",
        ),
    )

    def start_probe(self, now: float) -> Job:
        wait = str(int(math.ceil(self.options["timeout"])))
        jobs: List[Job] = []
        for host in self.options["hosts"]:
            argv = [self.options["ping"], "-n", "-q", "-c", "1", "-W", wait, host]
            jobs.append(CommandJob(argv, self.options["timeout"] + 3, now, self._interpreter(host)))
        return _AnyOf(jobs)

    @staticmethod
    def _interpreter(host: str):
        def interpret(code: int, text: str) -> Outcome:
            if code == 0:
                return None, "%s answers ping" % host
            if code == 1:
                return None, None  # no reply: the normal idle answer
            return "ping %s failed (exit %d): %s" % (host, code, text.strip()[:120]), None

        return interpret

    def describe(self) -> str:
        return "ping %s" % ", ".join(self.options["hosts"])
