"""Shared helpers for the monitor tests: fake roots, building monitors from INI text, bounded waits."""

import os
import select
import socket
import time
from typing import Dict, Optional

from powernap.clock import FakeClock
from powernap.monitors import MonitorContext
from powernap.monitors.command import _AnyOf
from powernap.monitors.probing import CommandJob, ThreadJob
from powernap.options import registry
from powernap.sysroot import SysRoot


def write(root_dir, system_path: str, text="", mode: Optional[int] = None) -> str:
    """Create ``system_path`` inside the fake root (parents too); returns the real path."""
    path = os.path.join(str(root_dir), system_path.lstrip("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(text, bytes) else "w") as handle:
        handle.write(text)
    if mode is not None:
        os.chmod(path, mode)
    return path


def make(type_name: str, root=None, clock=None, name: Optional[str] = None, hooks=None, **raw: str):
    """A monitor of ``type_name`` built the way the daemon does: options parsed from their INI text."""
    cls = registry("monitor")[type_name]
    options = cls.parse_options({key: str(value) for key, value in raw.items()})
    root = root if isinstance(root, SysRoot) else SysRoot(str(root) if root is not None else "/")
    ctx = MonitorContext(root, clock or FakeClock(), hooks=hooks)
    return cls(name or type_name, options, ctx)


def wait_probe(monitor, seconds: float = 10.0) -> None:
    """Block (bounded) until the monitor's background probe has finished."""
    job = monitor.job
    jobs = job.jobs if isinstance(job, _AnyOf) else [job] if job is not None else []
    for each in jobs:
        if isinstance(each, CommandJob) and each.proc is not None:
            each.proc.wait(timeout=seconds)
        elif isinstance(each, ThreadJob):
            assert each.wait(seconds), "probe thread did not finish within %ss" % seconds


def probe(monitor, seconds: float = 10.0):
    """Start a probe through check(), wait for it, and return what the next check() says."""
    monitor.check()
    wait_probe(monitor, seconds)
    return monitor.check()


def wait_event(monitor, seconds: float = 3.0) -> Dict[int, Optional[str]]:
    """Select on the monitor's fds (bounded) and feed readable ones to on_readable; first non-None reasons."""
    deadline = time.monotonic() + seconds
    reasons: Dict[int, Optional[str]] = {}
    while time.monotonic() < deadline:
        fds = monitor.fds()
        assert fds, "monitor has no fds"
        readable = select.select(fds, [], [], max(0.0, deadline - time.monotonic()))[0]
        for fd in readable:
            reason = monitor.on_readable(fd)
            if reason:
                reasons[fd] = reason
        if reasons:
            return reasons
    return reasons


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
