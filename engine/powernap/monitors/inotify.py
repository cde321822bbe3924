"""Minimal inotify through ctypes (the standard library has no binding).

Only what hot-plug needs: watch one directory for entries appearing and
disappearing, read the names.  ``Inotify.available()`` is False where libc
lacks the calls; callers then rescan the directory on each check instead.
"""

import ctypes
import ctypes.util
import errno
import functools
import os
import struct
from typing import List, Optional, Tuple

IN_ATTRIB = 0x00000004
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_IGNORED = 0x00008000  # the watch is gone (its directory was deleted or unmounted)
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("=iIII")  # wd, mask, cookie, len


@functools.cache
def _load_libc():
    """libc, opened once per process."""
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name else ctypes.CDLL(None, use_errno=True)


class Inotify:
    """One inotify instance watching one directory."""

    MASK = IN_CREATE | IN_DELETE | IN_MOVED_TO | IN_MOVED_FROM | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF

    def __init__(self) -> None:
        self.fd: Optional[int] = None

    @staticmethod
    def available() -> bool:
        try:
            libc = _load_libc()
        except OSError:
            return False
        return hasattr(libc, "inotify_init1") and hasattr(libc, "inotify_add_watch")

    def open(self, directory: str) -> int:
        """Start watching ``directory`` (a real path); returns the fd.  Raises OSError."""
        libc = _load_libc()
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        wd = libc.inotify_add_watch(fd, os.fsencode(directory), self.MASK)
        if wd < 0:
            code = ctypes.get_errno()
            os.close(fd)
            raise OSError(code, "%s: %s" % (directory, os.strerror(code)))
        self.fd = fd
        return fd

    def read(self) -> List[Tuple[int, str]]:
        """Pending events as (mask, name); IN_Q_OVERFLOW comes through with an empty name."""
        if self.fd is None:
            return []
        events = []
        for _unused in range(64):  # bounded: 64 reads of up to 64 KiB each
            try:
                data = os.read(self.fd, 65536)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    break
                raise
            if not data:
                break
            offset = 0
            while offset + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
                events.append((mask, raw.split(b"\0", 1)[0].decode("utf-8", "replace")))
                offset += _EVENT.size + length
        return events

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
