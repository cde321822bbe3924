"""Process monitors: a regex over full command lines (process) and per-process I/O (io)."""

import errno
import os
import socket
import struct
from typing import Dict, List, Optional, Tuple

from ..errors import MonitorError
from ..options import Boolean, Choice, Option, Regex, Size
from . import packet, procfs
from .base import MONITOR_COMMON_OPTIONS, Monitor

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_EXIT = 0x80000000
NLMSG_DONE = 3
_NLMSGHDR = struct.Struct("=IHHII")
_CN_MSG = struct.Struct("=IIIIHH")
_EVENT_HEAD = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_FOUR_PIDS = struct.Struct("=iiii")
RESCAN_AFTER_VANISHED = 5.0  # seconds between rescans caused by unreadable short-lived processes
_WHAT_OFFSET = _NLMSGHDR.size + _CN_MSG.size  # proc_event.what within a netlink message


class ProcConnector:
    """The kernel's process event stream (netlink connector, needs CAP_NET_ADMIN in the initial namespaces).

    ``read()`` returns events as (what, pid, tgid, parent_tgid) where for a
    fork ``pid``/``tgid`` are the child's and ``parent_tgid`` the parent's;
    it raises ``OverflowError`` when the kernel dropped events (ENOBUFS), so
    the caller rescans.
    """

    def __init__(self) -> None:
        self.sock: Optional[socket.socket] = None
        self.exec_only = False

    def open(self) -> int:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        try:
            sock.bind((0, CN_IDX_PROC))
            # Only exec events reach us: forks and exits are most of the stream on a busy
            # host and waking for each costs more than the whole rest of the daemon.
            # Exits and fork-then-exit daemons are caught by ProcessMonitor.check().
            try:
                packet.attach_filter(sock, packet.word_equals_filter(_WHAT_OFFSET, PROC_EVENT_EXEC))
                self.exec_only = True
            except OSError:
                self.exec_only = False
            self._control(sock, PROC_CN_MCAST_LISTEN)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        return sock.fileno()

    @staticmethod
    def _control(sock: socket.socket, op: int) -> None:
        payload = struct.pack("=I", op)
        cn_msg = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
        sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(cn_msg), NLMSG_DONE, 0, 0, 0) + cn_msg)

    def read(self, limit: int = 256) -> List[Tuple[int, int, int, int]]:
        events = []
        if self.sock is None:
            return events
        for _unused in range(limit):
            try:
                data = self.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    raise OverflowError("process events were dropped") from None
                raise
            offset = 0
            while offset + _NLMSGHDR.size + _CN_MSG.size + _EVENT_HEAD.size <= len(data):
                length = _NLMSGHDR.unpack_from(data, offset)[0]
                body = offset + _NLMSGHDR.size + _CN_MSG.size
                what = _EVENT_HEAD.unpack_from(data, body)[0]
                detail = body + _EVENT_HEAD.size
                if what in (PROC_EVENT_EXEC, PROC_EVENT_EXIT) and detail + 8 <= len(data):
                    pid, tgid = struct.unpack_from("=ii", data, detail)
                    events.append((what, pid, tgid, 0))
                elif what == PROC_EVENT_FORK and detail + _FOUR_PIDS.size <= len(data):
                    _ppid, ptgid, cpid, ctgid = _FOUR_PIDS.unpack_from(data, detail)
                    events.append((what, cpid, ctgid, ptgid))
                if length < _NLMSGHDR.size:
                    break
                offset += (length + 3) & ~3
        return events

    def fileno(self) -> Optional[int]:
        return None if self.sock is None else self.sock.fileno()

    def close(self) -> None:
        if self.sock is not None:
            try:
                self._control(self.sock, PROC_CN_MCAST_IGNORE)
            except OSError:
                pass
            self.sock.close()
            self.sock = None


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ProcessMonitor(Monitor):
    """Activity while a process whose full command line matches a regex is running."""

    TYPE = "process"
    OPTIONS = MONITOR_COMMON_OPTIONS + (
        Option(
            "regex",
            Regex(),
            required=True,
            doc="Python regular expression searched in each process's full command line (arguments joined "
            "by spaces, as 'ps -eo args' shows them; kernel threads appear as [name]).",
        ),
        Option(
            "events",
            Boolean(),
            default=True,
            doc="Follow process starts and exits through the kernel's netlink process events (instant, no "
            "polling; needs root in the initial namespace). Falls back to a /proc scan per check when "
            "the kernel refuses.",
        ),
    )

    def __init__(self, name, options, ctx):
        super().__init__(name, options, ctx)
        self.regex = options["regex"]
        self.matching: Dict[int, str] = {}
        self.connector: Optional[ProcConnector] = None
        self.mode = "scan"
        self.last_rescan = float("-inf")
        self.vanished_since: Optional[float] = None

    def open(self) -> None:
        if self.options["events"] and self.ctx.root.is_real:
            connector = ProcConnector()
            try:
                connector.open()
                self.connector = connector
                self.mode = "events"
            except OSError as exc:
                self.log.info("process events unavailable (%s); scanning /proc each check", exc)
        self.rescan()  # after subscribing, so nothing starting in between is missed

    def close(self) -> None:
        if self.connector is not None:
            self.connector.close()
            self.connector = None
        self.mode = "scan"

    def rescan(self) -> None:
        root = self.ctx.root
        self.last_rescan = self.ctx.clock.monotonic()
        found = {}
        own = os.getpid()
        for pid in procfs.pids(root):
            if pid == own:
                continue
            line = procfs.cmdline(root, pid)
            if line is not None and self.regex.search(line):
                found[pid] = line
        self.matching = found

    def _reason(self) -> Optional[str]:
        if not self.matching:
            return None
        pid = min(self.matching)
        more = len(self.matching) - 1
        return "process %d running: %s%s" % (pid, _short(self.matching[pid]), " (+%d more)" % more if more else "")

    def check(self) -> Optional[str]:
        if self.connector is None or not self._tracked_still_match() or self._rescan_due():
            self.rescan()
        return self._reason()

    def _rescan_due(self) -> bool:
        """A process exec'd and vanished before its command line could be read: it may have
        forked a matching daemon that no event will announce.  Rescan, at most every few seconds."""
        if self.vanished_since is None:
            return False
        now = self.ctx.clock.monotonic()
        if now - self.last_rescan < RESCAN_AFTER_VANISHED:
            return False
        self.vanished_since = None
        return True

    def _tracked_still_match(self) -> bool:
        """False when a tracked process is gone or no longer matches.

        With exec-only events this is how exits are seen; a rescan then also
        finds children a daemonizing process forked before it exited.
        """
        root = self.ctx.root
        return all(procfs.cmdline(root, pid) == line for pid, line in self.matching.items())

    def fds(self) -> List[int]:
        fd = self.connector.fileno() if self.connector is not None else None
        return [] if fd is None else [fd]

    def on_readable(self, fd: int) -> Optional[str]:
        if self.connector is None:
            return None
        try:
            events = self.connector.read()
        except OverflowError:
            self.rescan()
            return self._reason()
        except OSError as exc:
            raise MonitorError("reading process events: %s" % exc) from None
        started = None
        for what, pid, tgid, parent in events:
            if what == PROC_EVENT_EXIT:
                if pid == tgid:
                    self.matching.pop(pid, None)
            elif what == PROC_EVENT_EXEC:
                line = procfs.cmdline(self.ctx.root, tgid)
                if line is None and self.vanished_since is None:
                    self.vanished_since = self.ctx.clock.monotonic()
                if line is not None and self.regex.search(line):
                    self.matching[tgid] = line
                    started = "process %d started: %s" % (tgid, _short(line))
                else:
                    self.matching.pop(tgid, None)
            elif what == PROC_EVENT_FORK and pid == tgid and parent in self.matching:
                self.matching[pid] = self.matching[parent]
                started = "process %d started: %s" % (pid, _short(self.matching[pid]))
        return started

    def describe(self) -> str:
        return "process /%s/ (%s)" % (self.regex.pattern, self.mode)


class IoMonitor(Monitor):
    """Activity while processes matching a regex read or write more than a threshold per second."""

    TYPE = "io"
    OPTIONS = MONITOR_COMMON_OPTIONS + (
        Option(
            "regex",
            Regex(),
            required=True,
            doc="Python regular expression searched in each process's full command line; the I/O of all "
            "matching processes is added up.",
        ),
        Option(
            "threshold",
            Size(),
            default=65536,
            doc="Bytes per second (read plus written, summed over matching processes) at or above which "
            "there is activity, e.g. 64k, 1M.",
        ),
        Option(
            "counters",
            Choice("storage", "all"),
            default="storage",
            doc="'storage' counts bytes that reached the block layer (read_bytes/write_bytes in "
            "/proc/PID/io); 'all' counts every read()/write() including sockets and pipes (rchar/wchar).",
        ),
    )

    def __init__(self, name, options, ctx):
        super().__init__(name, options, ctx)
        self.regex = options["regex"]
        keys = ("read_bytes", "write_bytes") if options["counters"] == "storage" else ("rchar", "wchar")
        self.keys = tuple(key + ":" for key in keys)
        self.known: Dict[int, bool] = {}  # pid -> command line matched (decided once per pid)
        self.previous: Dict[int, int] = {}
        self.previous_time: Optional[float] = None

    def _io_total(self, pid: int) -> Optional[int]:
        try:
            with open(self.ctx.root.path("/proc/%d/io" % pid), encoding="ascii") as handle:
                total = 0
                for line in handle:
                    if line.startswith(self.keys):
                        total += int(line.split()[1])
                return total
        except (OSError, ValueError, IndexError):
            return None

    def check(self) -> Optional[str]:
        root = self.ctx.root
        now = self.ctx.clock.monotonic()
        current_pids = procfs.pids(root)
        if not current_pids:
            raise MonitorError("no processes visible under /proc")
        alive = set(current_pids)
        self.known = {pid: hit for pid, hit in self.known.items() if pid in alive}
        totals: Dict[int, int] = {}
        for pid in current_pids:
            hit = self.known.get(pid)
            if hit is None:
                line = procfs.cmdline(root, pid)
                hit = bool(line is not None and self.regex.search(line))
                self.known[pid] = hit
            if hit:
                value = self._io_total(pid)
                if value is not None:
                    totals[pid] = value
        reason = None
        if self.previous_time is not None and now > self.previous_time:
            moved = sum(value - self.previous[pid] for pid, value in totals.items() if pid in self.previous)
            rate = moved / (now - self.previous_time)
            if rate >= self.options["threshold"]:
                reason = "I/O of /%s/ at %.0f bytes/s (%d processes)" % (self.regex.pattern, rate, len(totals))
        self.previous = totals
        self.previous_time = now
        return reason

    def describe(self) -> str:
        return "io /%s/ >= %d B/s" % (self.regex.pattern, self.options["threshold"])
