"""powerwaked's HTTP JSON API (same port as the UDP reports, TCP).

Reads (open unless ``read_auth = yes``; then send the signed envelope of
``{"kind": "read", "path": PATH}`` in the ``Authorization`` header)::

    GET /v1/status              server summary: host counts by state, proxy counters, UPS states
    GET /v1/hosts               every host (registry records)
    GET /v1/hosts/NAME          one host (name, IP or MAC)
    GET /v1/groups              every group: members, awake, asleep, needed, demand
    GET /v1/groups/NAME         one group
    GET /v1/history             recent wakes, naps, escalations

Writes: the body is one signed message (see ``protocol``)::

    POST /v1/report             an engine report (same bytes as the UDP datagram)
    POST /v1/wake               {"kind": "request", "host": NAME, "method": "auto|wol|ipmi"}
    POST /v1/nap                {"kind": "request", "host": NAME, "action": "suspend|poweroff|..."}
    POST /v1/groups/NAME/demand {"kind": "request", "more": N, "ttl": SECONDS}  (external schedulers)

Answers are JSON objects; errors are ``{"error": "..."}`` with 400/401/404.
The server runs in its own thread; every handler takes the daemon's lock.
"""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Tuple
from urllib.parse import unquote

from .protocol import ProtocolError

MAX_BODY = 65536


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def route(app: Any, method: str, path: str, body: bytes, auth: Optional[str], client: Tuple[str, int]) -> Any:
    """Dispatch one request to the daemon ``app``; returns the JSON-able answer, raises ApiError."""
    parts = [unquote(p) for p in path.split("?")[0].strip("/").split("/") if p]
    if len(parts) < 2 or parts[0] != "v1":
        raise ApiError(404, "no such endpoint %s" % path)
    if method == "GET":
        if app.read_auth:
            _verify(app, (auth or "").encode("utf-8"), "read", path=path.split("?")[0])
        if parts[1:] == ["status"]:
            return app.api_status()
        if parts[1:] == ["hosts"]:
            return {"hosts": app.api_hosts()}
        if parts[1] == "hosts" and len(parts) == 3:
            return _found(app.api_host(parts[2]), "host", parts[2])
        if parts[1:] == ["groups"]:
            return {"groups": app.api_groups()}
        if parts[1] == "groups" and len(parts) == 3:
            return _found(app.api_group(parts[2]), "group", parts[2])
        if parts[1:] == ["history"]:
            return {"history": app.api_history()}
        raise ApiError(404, "no such endpoint %s" % path)
    if method == "POST":
        if parts[1:] == ["report"]:
            message = _verify(app, body, "report")
            try:
                return app.accept_report(message, None)
            except ProtocolError as exc:  # a valid report the registry will not take (unregistered, cap)
                raise ApiError(403, str(exc)) from None
        message = _verify(app, body, "request")
        if parts[1:] == ["wake"]:
            return _found(
                app.api_wake(
                    str(message.get("host")),
                    str(message.get("method") or "auto"),
                    "API request from %s (%s)" % (message["from"], client[0]),
                ),
                "host",
                message.get("host"),
            )
        if parts[1:] == ["nap"]:
            return _found(
                app.api_nap(
                    str(message.get("host")),
                    message.get("action"),
                    "API request from %s (%s)" % (message["from"], client[0]),
                ),
                "host",
                message.get("host"),
            )
        if parts[1] == "groups" and len(parts) == 4 and parts[3] == "demand":
            try:
                more = int(message.get("more", 1))
                ttl = float(message.get("ttl", 3600))
            except (TypeError, ValueError):
                raise ApiError(400, "'more' must be an integer and 'ttl' a number") from None
            if more < 0 or ttl <= 0:
                raise ApiError(400, "'more' must be >= 0 and 'ttl' > 0")
            return _found(app.api_demand(parts[2], more, ttl, message["from"]), "cluster group", parts[2])
        raise ApiError(404, "no such endpoint %s" % path)
    raise ApiError(405, "method %s not allowed" % method)


def _found(value: Any, what: str, name: Any) -> Any:
    if value is None:
        raise ApiError(404, "no such %s %r" % (what, name))
    return value


def _verify(app: Any, data: bytes, kind: str, **expect: Any) -> Dict[str, Any]:
    try:
        message = app.endpoint.accept(data)
    except ProtocolError as exc:
        raise ApiError(401, "not authenticated: %s" % exc) from None
    if message["kind"] != kind or any(message.get(k) != v for k, v in expect.items()):
        raise ApiError(400, "expected a signed %r message" % kind)
    return message


class _Handler(BaseHTTPRequestHandler):
    server_version = "powerwaked/1"
    timeout = 10  # a slow client cannot hold a thread forever

    def _serve(self, method: str) -> None:
        app = self.server.app  # type: ignore[attr-defined]
        body = b""
        if method == "POST":
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY:
                self._reply(400, {"error": "bad Content-Length"})
                return
            body = self.rfile.read(length)
        try:
            with app.lock:
                answer = route(app, method, self.path, body, self.headers.get("Authorization"), self.client_address)
            self._reply(200, answer)
        except ApiError as exc:
            self._reply(exc.status, {"error": str(exc)})
        except Exception:  # one request must never cost more than its own answer
            app.log.exception("API %s %s failed", method, self.path[:200])
            self._reply(500, {"error": "internal error (logged)"})

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _reply(self, status: int, answer: Any) -> None:
        data = json.dumps(answer, sort_keys=True, default=str).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        """http.server's access log, sent to ours at debug level."""
        self.server.app.log.debug("api %s: %s", self.client_address[0], args[0] % args[1:])  # type: ignore[attr-defined]


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class ApiServer:
    """The HTTP server on its own (daemon) thread."""

    def __init__(self, app: Any, address: str, port: int):
        self.httpd = (_V6Server if ":" in address else ThreadingHTTPServer)((address, port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.app = app  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.5}, name="powerwaked-api", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
