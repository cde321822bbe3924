"""The control socket: a root-only unix stream socket speaking JSON lines.

Request (one line): ``{"cmd": "status"}``, ``{"cmd": "now", "action": "suspend"}``,
``{"cmd": "wake"}``, ``{"cmd": "explain"}``.
Reply (one line): ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.

The server never blocks the daemon's loop: the listening socket and every
connection are non-blocking and served from the daemon's selector; a reply is
written with a short timeout.  The socket file is mode 0600, and peers are
checked with SO_PEERCRED (root or the daemon's own user only).
"""

import json
import os
import socket
import struct
from typing import Any, Callable, Dict, List, Optional

from .errors import PowernapError

SOCKET_NAME = "control.sock"
STATUS_SCHEMA = 1  # version of the "status" reply (powernap status --json); new keys may come, none go
MAX_REQUEST = 65536
REPLY_TIMEOUT = 2.0


class ControlError(PowernapError):
    """The daemon could not be reached, or refused the request."""


def socket_path(state_dir: str) -> str:
    return os.path.join(state_dir, SOCKET_NAME)


class ControlServer:
    """Serves requests with ``handler(request) -> result``; ``handler`` raises ValueError to refuse."""

    def __init__(
        self, path: str, handler: Callable[[Dict[str, Any]], Any], log, allowed_uids: Optional[List[int]] = None
    ):
        self.path = path
        self.handler = handler
        self.log = log
        self.allowed_uids = set(allowed_uids if allowed_uids is not None else (0, os.getuid()))
        self._listener: Optional[socket.socket] = None
        self._conns: Dict[int, socket.socket] = {}
        self._buffers: Dict[int, bytes] = {}

    def open(self) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
        # The caller holds the single-instance lock, so an existing socket is a leftover.
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # never a moment with the socket open to others
        try:
            listener.bind(self.path)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        listener.listen(16)
        listener.setblocking(False)
        self._listener = listener

    def close(self) -> None:
        for conn in list(self._conns.values()):
            conn.close()
        self._conns.clear()
        self._buffers.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def fds(self) -> List[int]:
        listener = [self._listener.fileno()] if self._listener is not None else []
        return listener + list(self._conns)

    def on_readable(self, fd: int) -> None:
        if self._listener is not None and fd == self._listener.fileno():
            self._accept()
        elif fd in self._conns:
            self._read(fd)

    # internals -------------------------------------------------------------
    def _accept(self) -> None:
        for _unused in range(16):  # bounded: drain a burst of connections
            try:
                conn, _addr = self._listener.accept()  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                return
            uid = _peer_uid(conn)
            if uid is not None and uid not in self.allowed_uids:
                self._reply(conn, {"ok": False, "error": "permission denied: root only"})
                conn.close()
                continue
            conn.setblocking(False)
            self._conns[conn.fileno()] = conn
            self._buffers[conn.fileno()] = b""

    def _read(self, fd: int) -> None:
        conn = self._conns[fd]
        try:
            chunk = conn.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        data = self._buffers[fd] + chunk
        if b"\n" not in data and chunk and len(data) < MAX_REQUEST:
            self._buffers[fd] = data
            return
        self._drop(fd)
        line = data.split(b"\n", 1)[0]
        if not line.strip():
            conn.close()
            return
        self._reply(conn, self._dispatch(line))
        conn.close()

    def _dispatch(self, line: bytes) -> Dict[str, Any]:
        try:
            request = json.loads(line.decode("utf-8"))
            if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                raise ValueError("a request is a JSON object with a string 'cmd'")
            return {"ok": True, "result": self.handler(request)}
        except (ValueError, UnicodeDecodeError) as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a handler bug must not kill the daemon
            self.log.exception("control request failed")
            return {"ok": False, "error": "internal error: %s" % exc}

    def _reply(self, conn: socket.socket, reply: Dict[str, Any]) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(REPLY_TIMEOUT)
            conn.sendall((json.dumps(reply, sort_keys=True) + "\n").encode("utf-8"))
        except OSError as exc:
            self.log.debug("control client went away: %s", exc)

    def _drop(self, fd: int) -> None:
        self._conns.pop(fd, None)
        self._buffers.pop(fd, None)


def _peer_uid(conn: socket.socket) -> Optional[int]:
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def request(path: str, cmd: str, timeout: float = 10.0, **args: Any) -> Any:
    """Send one request to the daemon and return its result; raises ControlError."""
    message = dict(args, cmd=cmd)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        try:
            client.connect(path)
        except OSError as exc:
            raise ControlError("cannot reach powernapd at %s: %s (is it running?)" % (path, exc)) from None
        client.sendall((json.dumps(message) + "\n").encode("utf-8"))
        data = b""
        while b"\n" not in data:
            chunk = client.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise ControlError("talking to powernapd at %s: %s" % (path, exc)) from None
    finally:
        client.close()
    try:
        reply = json.loads(data.decode("utf-8"))
    except ValueError:
        raise ControlError("powernapd sent a malformed reply: %r" % data[:200]) from None
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error") or "request refused"))
    return reply.get("result")
