"""Input devices: every /dev/input/event* device, including ones plugged in later."""

import errno
import os
import re
import struct
from typing import Dict, List, Optional

from ..errors import MonitorError
from ..options import Option, Regex
from .base import MONITOR_COMMON_OPTIONS, Monitor
from .inotify import IN_DELETE, IN_DELETE_SELF, IN_IGNORED, IN_MOVE_SELF, IN_MOVED_FROM, IN_Q_OVERFLOW, Inotify

# struct input_event: struct timeval (two longs), __u16 type, __u16 code, __s32 value.
INPUT_EVENT = struct.Struct("@llHHi")
EV_KEY, EV_REL, EV_ABS = 0x01, 0x02, 0x03
USER_EVENT_TYPES = frozenset((EV_KEY, EV_REL, EV_ABS))  # not EV_SYN/EV_MSC/EV_LED noise
_EVENT_NAME = re.compile(r"^event\d+$")


class InputMonitor(Monitor):
    """Activity on keyboards, mice, touchpads and other input devices (evdev, with hot-plug)."""

    TYPE = "input"
    OPTIONS = MONITOR_COMMON_OPTIONS + (
        Option(
            "devices",
            Regex(),
            default=re.compile(""),
            doc="Python regular expression matched against each device's name (as in "
            "/sys/class/input/eventN/device/name, e.g. 'keyboard|mouse|Touchpad'); default: all devices.",
        ),
        Option(
            "ignore",
            Regex(),
            default=re.compile(r"(?i)accelerometer|lid switch|video bus|pc speaker"),
            doc="Devices whose name matches this regular expression never count (sensors and switches that "
            "report without a person being there).",
        ),
    )

    def __init__(self, name, options, ctx):
        super().__init__(name, options, ctx)
        self.devices: Dict[int, str] = {}  # fd -> "event3 (name)"
        self.paths: Dict[str, int] = {}  # event node name -> fd
        self.inotify: Optional[Inotify] = None
        self.dir_seen = False  # /dev/input existed once: its absence now means "no devices", not an error

    def _device_name(self, node: str) -> str:
        return (self.ctx.root.read("/sys/class/input/%s/device/name" % node) or "").strip()

    def _add(self, node: str) -> None:
        if node in self.paths or not _EVENT_NAME.match(node):
            return
        label = self._device_name(node)
        if not self.options["devices"].search(label) or (label and self.options["ignore"].search(label)):
            return
        try:
            fd = os.open(self.ctx.root.path("/dev/input/" + node), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            self.log.debug("cannot open input device %s: %s", node, exc)
            return
        self.paths[node] = fd
        self.devices[fd] = "%s (%s)" % (node, label) if label else node

    def _remove_fd(self, fd: int) -> None:
        label = self.devices.pop(fd, None)
        if label is not None:
            self.paths = {node: f for node, f in self.paths.items() if f != fd}
            os.close(fd)

    def _rescan(self) -> None:
        present = set(self.ctx.root.listdir("/dev/input"))
        for node, fd in list(self.paths.items()):
            if node not in present:
                self._remove_fd(fd)
        for node in sorted(present):
            self._add(node)

    def open(self) -> None:
        self._watch(first=True)
        self._rescan()

    def _watch(self, first: bool = False) -> None:
        """Watch /dev/input for hot-plug.  devtmpfs removes the directory with the last input device
        and creates it anew with the next one; the watch dies with it, so it is re-made (and the
        directory rescanned) as soon as the directory is back."""
        if not Inotify.available():
            return
        watcher = Inotify()
        try:
            watcher.open(self.ctx.root.path("/dev/input"))
        except OSError as exc:
            if first:
                self.log.info("no hot-plug events for /dev/input (%s); rescanning each check", exc)
            return
        self.inotify = watcher
        self.dir_seen = True

    def _lose_watch(self) -> None:
        if self.inotify is not None:
            self.inotify.close()
            self.inotify = None
        self._watch()
        self._rescan()

    def close(self) -> None:
        for fd in list(self.devices):
            self._remove_fd(fd)
        if self.inotify is not None:
            self.inotify.close()
            self.inotify = None

    def check(self) -> Optional[str]:
        if self.inotify is None:
            self._watch()  # back after /dev/input was removed and created again
            self._rescan()  # a directory listing: cheap, and the only way to see hot-plug without inotify
        if self.ctx.root.exists("/dev/input"):
            self.dir_seen = True
        elif not self.paths and not self.dir_seen:
            raise MonitorError("/dev/input does not exist")
        return None

    def recheck(self) -> Optional[str]:
        self._rescan()
        return self.check()

    def fds(self) -> List[int]:
        fds = list(self.devices)
        if self.inotify is not None and self.inotify.fd is not None:
            fds.append(self.inotify.fd)
        return fds

    def on_readable(self, fd: int) -> Optional[str]:
        if self.inotify is not None and fd == self.inotify.fd:
            for mask, node in self.inotify.read():
                if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                    self._lose_watch()
                    break
                if mask & IN_Q_OVERFLOW:
                    self._rescan()
                elif mask & (IN_DELETE | IN_MOVED_FROM):
                    if node in self.paths:
                        self._remove_fd(self.paths[node])
                else:
                    self._add(node)  # created, moved in, or permissions fixed by udev
            return None
        label = self.devices.get(fd)
        if label is None:
            return None
        seen = False
        for _unused in range(16):  # bounded: 16 reads of up to 64 events each
            try:
                data = os.read(fd, INPUT_EVENT.size * 64)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    break
                self._remove_fd(fd)  # ENODEV: unplugged
                break
            if not data:
                # Only a FIFO stand-in (tests, benchmarks) reaches end-of-file; reopen it so the
                # selector does not spin on a permanently readable fd.
                node = next((n for n, f in self.paths.items() if f == fd), None)
                self._remove_fd(fd)
                if node is not None:
                    self._add(node)
                break
            for offset in range(0, len(data) - INPUT_EVENT.size + 1, INPUT_EVENT.size):
                if INPUT_EVENT.unpack_from(data, offset)[2] in USER_EVENT_TYPES:
                    seen = True
        return "input on %s" % label if seen else None

    def describe(self) -> str:
        return "input (%d devices%s)" % (len(self.devices), ", hot-plug" if self.inotify is not None else "")
