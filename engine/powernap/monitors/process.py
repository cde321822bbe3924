"""Process monitors: a regex over full command lines (process) and per-process I/O (io)."""

import errno
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

from ..errors import MonitorError
from ..options import Boolean, Choice, Duration, Option, Regex, Size
from ..platform import in_initial_pid_namespace
from . import packet, procfs
from .base import MONITOR_COMMON_OPTIONS, Monitor, RateMonitor

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_COMM = 0x00000200
PROC_EVENT_EXIT = 0x80000000
NLMSG_DONE = 3
_NLMSGHDR = struct.Struct("=IHHII")
_CN_MSG = struct.Struct("=IIIIHH")
_EVENT_HEAD = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_FOUR_PIDS = struct.Struct("=iiii")
FRESH_EVENT_NS = 200_000_000  # an event read within 0.2 s of happening (CLOCK_MONOTONIC, as the kernel stamps)
RESCAN_AFTER_VANISHED = 5.0  # seconds between rescans caused by unreadable short-lived processes
SO_RCVBUFFORCE = 33  # setsockopt beyond rmem_max (CAP_NET_ADMIN)
RECEIVE_BUFFER = 1 << 20
PROBE_TIMEOUT = 3.0  # the exec event of our own test child must arrive within this long
PROBE_EVERY = 600.0  # re-prove that events still arrive this often (a 'true' started every 10 minutes)
_WHAT_OFFSET = _NLMSGHDR.size + _CN_MSG.size  # proc_event.what within a netlink message


class ProcConnector:
    """The kernel's process event stream (netlink connector, needs CAP_NET_ADMIN in the initial namespaces).

    ``read()`` returns events as (what, pid, tgid, parent_tgid, stamp_ns) where for a
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
            # While the host is awake the daemon reads events once per interval: room for a second of
            # a busy host's program starts (an overflow only costs a rescan).
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind((0, CN_IDX_PROC))
            # Only exec events and renames of whole processes (prctl PR_SET_NAME) reach us:
            # forks, exits and thread renames are most of the stream on a busy host and waking
            # for each costs more than the whole rest of the daemon.  Exits and fork-then-exit
            # daemons are caught by ProcessMonitor.check().
            try:
                packet.attach_filter(sock, _exec_or_process_rename_filter())
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

    def read(self, limit: int = 256) -> List[Tuple[int, int, int, int, int]]:
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
                what, _cpu, stamp = _EVENT_HEAD.unpack_from(data, body)
                detail = body + _EVENT_HEAD.size
                if what in (PROC_EVENT_EXEC, PROC_EVENT_EXIT, PROC_EVENT_COMM) and detail + 8 <= len(data):
                    pid, tgid = struct.unpack_from("=ii", data, detail)
                    events.append((what, pid, tgid, 0, stamp))
                elif what == PROC_EVENT_FORK and detail + _FOUR_PIDS.size <= len(data):
                    _ppid, ptgid, cpid, ctgid = _FOUR_PIDS.unpack_from(data, detail)
                    events.append((what, cpid, ctgid, ptgid, stamp))
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


def _exec_or_process_rename_filter() -> bytes:
    """BPF: pass exec events, and comm events whose pid is the thread-group leader (a process renamed
    itself, not one of its threads)."""
    event = _WHAT_OFFSET + _EVENT_HEAD.size  # the event's pid and tgid words follow its header
    prog = packet.BpfProgram()
    prog.op(packet.LD_W_ABS, _WHAT_OFFSET)
    prog.op(packet.JEQ_K, packet.native_word(PROC_EVENT_EXEC), jt="pass")
    prog.op(packet.JEQ_K, packet.native_word(PROC_EVENT_COMM), jf="drop")
    prog.op(packet.LD_W_ABS, event)
    prog.op(packet.TAX)
    prog.op(packet.LD_W_ABS, event + 4)
    prog.op(packet.JEQ_X, 0, jt="pass")
    prog.label("drop")
    prog.op(packet.RET_K, 0)
    prog.label("pass")
    prog.op(packet.RET_K, 0xFFFFFFFF)
    return prog.assemble()


def _probe_program() -> List[str]:
    """The cheapest program to start as a test child."""
    found = shutil.which("true")
    return [found] if found else [sys.executable, "-c", ""]


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
            "by spaces, as 'ps -eo args' shows them; kernel threads appear as [name], and a process that "
            "renamed itself with prctl gets its new name appended as [name]).",
        ),
        Option(
            "events",
            Boolean(),
            default=True,
            doc="Follow process starts through the kernel's netlink process events (instant, no polling; "
            "needs root in the initial PID namespace). The engine proves at start, and every 10 minutes, "
            "that events arrive (for a child it starts itself); where they do not (a container, a kernel "
            "that refuses) it scans /proc on every check instead and status says why.",
        ),
        Option(
            "rescan_every",
            Duration(minimum=1),
            default=30.0,
            doc="With events, also scan all of /proc this often: a process that rewrites its command line "
            "after start (nginx, postgres and sshd titles) sends no event. Renames through prctl are seen "
            "at once. Before any stage fires /proc is scanned afresh anyway.",
        ),
    )

    def __init__(self, name, options, ctx):
        super().__init__(name, options, ctx)
        self.regex = options["regex"]
        self.matching: Dict[int, str] = {}
        self.connector: Optional[ProcConnector] = None
        self.mode = "scan"
        self.why_scan = "events = no" if not options["events"] else ""
        self.last_rescan = float("-inf")
        self.vanished_since: Optional[float] = None
        # The test child whose exec event proves that events arrive, and since when we wait for it.
        self.probe: Optional[subprocess.Popen] = None
        self.probe_started = 0.0
        self.verified = False
        self.next_probe = float("inf")
        self.unreaped: List[subprocess.Popen] = []

    def open(self) -> None:
        if self.options["events"] and self.ctx.root.is_real:
            if in_initial_pid_namespace(self.ctx.root) is False:
                # The kernel ignores subscriptions from there, and events that still arrive (someone on
                # the host subscribed) carry the host's PIDs, which mean nothing in our /proc.
                self._fall_back("PID namespace: the kernel sends process events to the initial namespace only")
            else:
                connector = ProcConnector()
                try:
                    connector.open()
                    self.connector = connector
                    self.mode = "events"
                    self._start_probe()
                except OSError as exc:
                    self._fall_back("process events unavailable: %s" % exc)
        self.rescan()  # after subscribing, so nothing starting in between is missed

    def _fall_back(self, why: str) -> None:
        """Scan /proc on every check from now on, and say why (status shows it)."""
        if self.connector is not None:
            self.connector.close()
            self.connector = None
        self._reap_probe(kill=True)
        self.mode = "scan"
        self.why_scan = why
        self.verified = False
        self.log.warning("%s; scanning /proc on every check", why)

    def _start_probe(self) -> None:
        try:
            self.probe = subprocess.Popen(
                _probe_program(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError as exc:  # cannot prove it either way: keep events, but scan until proven
            self.log.info("cannot start a test child to prove process events arrive: %s", exc)
            self.probe = None
            return
        self.probe_started = self.ctx.clock.monotonic()

    def _reap_probe(self, kill: bool = False) -> None:
        """Forget the test child; one still running is reaped later, never waited for in the loop."""
        if self.probe is not None:
            if kill and self.probe.poll() is None:
                self.probe.kill()
            self.unreaped.append(self.probe)
            self.probe = None
        self.unreaped = [child for child in self.unreaped if child.poll() is None]

    def _follow_probe(self) -> None:
        """Fall back when the test child's exec event did not come in time; re-prove now and then."""
        now = self.ctx.clock.monotonic()
        if self.unreaped:
            self.unreaped = [child for child in self.unreaped if child.poll() is None]
        if self.probe is None:
            if self.connector is not None and now >= self.next_probe:
                self._start_probe()
            return
        if self.probe.poll() is not None and now - self.probe_started >= PROBE_TIMEOUT:
            self._fall_back(
                "no process event arrived for a test child within %gs (PID or user namespace, or another "
                "program switched the kernel's process events off)" % PROBE_TIMEOUT
            )

    def _probe_seen(self) -> None:
        self._reap_probe()
        if not self.verified:
            self.log.info("process events arrive: following process starts as they happen")
        self.verified = True
        self.next_probe = self.ctx.clock.monotonic() + PROBE_EVERY

    def close(self) -> None:
        if self.connector is not None:
            self.connector.close()
            self.connector = None
        self._reap_probe(kill=True)
        for child in self.unreaped:  # killed above or long done: a bounded wait, and no zombie stays
            try:
                child.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
        self.unreaped = []
        self.mode = "scan"
        self.verified = False

    def rescan(self, names: bool = False) -> None:
        """Scan /proc.  Process names (comm) are read for every process only when ``names`` is set (the
        pre-stage check); otherwise only for processes already matched (a prctl rename comes as an
        event), which halves the cost of the periodic scan."""
        root = self.ctx.root
        self.last_rescan = self.ctx.clock.monotonic()
        found = {}
        own = os.getpid()
        probe = self.probe.pid if self.probe is not None else None
        for pid in procfs.pids(root):
            if pid in (own, probe):
                continue
            line = procfs.command_and_name(root, pid) if names or pid in self.matching else procfs.cmdline(root, pid)
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
        if self.connector is not None:
            self._follow_probe()
        if (
            self.connector is None
            or not self.verified
            or not self._tracked_still_match()
            or self._rescan_due()
            or self.ctx.clock.monotonic() - self.last_rescan >= self.options["rescan_every"]
        ):
            self.rescan()
        return self._reason()

    def recheck(self) -> Optional[str]:
        """Right before a stage: a fresh /proc scan, whatever the events said."""
        self.rescan(names=True)
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
        return all(procfs.command_and_name(root, pid) == line for pid, line in self.matching.items())

    def fds(self) -> List[int]:
        fd = self.connector.fileno() if self.connector is not None else None
        return [] if fd is None else [fd]

    def on_readable(self, fd: int) -> Optional[str]:
        if self.connector is None:
            return None
        try:
            events = self.connector.read()
        except OverflowError:
            if self.probe is not None:  # its event may be among the dropped ones: prove it again
                self._reap_probe(kill=True)
                self._start_probe()
            self.rescan()
            return self._reason()
        except OSError as exc:
            raise MonitorError("reading process events: %s" % exc) from None
        started = None
        probe = self.probe.pid if self.probe is not None else None
        now_ns = time.monotonic_ns()
        for what, pid, tgid, parent, stamp in events:
            if what == PROC_EVENT_EXIT:
                if pid == tgid:
                    self.matching.pop(pid, None)
            elif tgid == probe and what == PROC_EVENT_EXEC:
                self._probe_seen()
                probe = None
            elif what in (PROC_EVENT_EXEC, PROC_EVENT_COMM):
                # At exec the name is the program's file name, part of the command line: read it only
                # for a rename (one open less per program start on a busy host).
                line = (
                    procfs.cmdline(self.ctx.root, tgid)
                    if what == PROC_EVENT_EXEC
                    else procfs.command_and_name(self.ctx.root, tgid)
                )
                # Gone before we could read it, though we read at once: maybe a wrapper that forked a
                # matching daemon no event announces; rescan soon.  Events read at the poll (the host is
                # awake) are mostly gone by then: the periodic rescan covers those.
                if line is None and self.vanished_since is None and now_ns - stamp < FRESH_EVENT_NS:
                    self.vanished_since = self.ctx.clock.monotonic()
                if line is not None and self.regex.search(line):
                    if tgid not in self.matching:
                        started = "process %d %s: %s" % (
                            tgid,
                            "started" if what == PROC_EVENT_EXEC else "renamed",
                            _short(line),
                        )
                    self.matching[tgid] = line
                else:
                    self.matching.pop(tgid, None)
            elif what == PROC_EVENT_FORK and pid == tgid and parent in self.matching:
                self.matching[pid] = self.matching[parent]
                started = "process %d started: %s" % (pid, _short(self.matching[pid]))
        return started

    def describe(self) -> str:
        if self.mode == "events":
            how = "events" if self.verified else "events, being verified"
        else:
            how = "scan" + (": " + self.why_scan if self.why_scan else "")
        return "process /%s/ (%s)" % (self.regex.pattern, how)


class IoMonitor(RateMonitor):
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

    def measure(self) -> Optional[str]:
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
