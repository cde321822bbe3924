"""The control socket: JSON lines, mode 0600, errors as replies, a server that never blocks."""

import json
import logging
import os
import selectors
import socket
import stat
import threading

import pytest

from powernap.control import ControlError, ControlServer, request


def serve(server, stop, seconds=10.0):
    """A miniature daemon loop: the selector drives the server until ``stop`` is set."""
    sel = selectors.DefaultSelector()
    registered = set()
    loops = int(seconds / 0.02)
    for _unused in range(loops):
        if stop.is_set():
            break
        wanted = set(server.fds())
        for fd in registered - wanted:
            sel.unregister(fd)
        for fd in wanted - registered:
            sel.register(fd, selectors.EVENT_READ)
        registered = wanted
        for key, _unused in sel.select(0.02):
            server.on_readable(key.fd)
    sel.close()


@pytest.fixture
def running(tmp_path):
    calls = []

    def handler(req):
        calls.append(req)
        if req["cmd"] == "status":
            return {"state": "awake", "n": len(calls)}
        if req["cmd"] == "boom":
            raise RuntimeError("bug")
        raise ValueError("unknown command %r" % req["cmd"])

    path = str(tmp_path / "run/powernap/control.sock")
    server = ControlServer(path, handler, logging.getLogger("test.control"))
    server.open()
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(server, stop), daemon=True)
    thread.start()
    yield path, calls
    stop.set()
    thread.join(5)
    server.close()
    assert not os.path.exists(path)


def test_request_reply_and_socket_mode(running):
    path, calls = running
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert request(path, "status") == {"state": "awake", "n": 1}
    assert request(path, "status", extra=1) == {"state": "awake", "n": 2}
    assert calls[1] == {"cmd": "status", "extra": 1}


def test_refusals_and_handler_bugs_come_back_as_errors(running):
    path, _calls = running
    with pytest.raises(ControlError, match="unknown command 'nope'"):
        request(path, "nope")
    with pytest.raises(ControlError, match="internal error: bug"):
        request(path, "boom")


def test_malformed_requests_get_an_error_line(running):
    path, _calls = running
    for payload in (b"not json\n", b'["status"]\n', b'{"cmd": 5}\n'):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(5)
            client.connect(path)
            client.sendall(payload)
            reply = json.loads(client.makefile().readline())
        assert reply["ok"] is False and reply["error"]


def test_a_silent_client_does_not_block_others(running):
    path, _calls = running
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle_client:
        idle_client.connect(path)
        idle_client.sendall(b'{"cmd": "sta')  # never finishes its line
        assert request(path, "status", timeout=3)["state"] == "awake"


def test_no_daemon_is_a_clear_error(tmp_path):
    with pytest.raises(ControlError, match="cannot reach powernapd"):
        request(str(tmp_path / "none.sock"), "status", timeout=1)
