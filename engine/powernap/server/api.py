"""powerwaked's HTTP JSON API (same port as the UDP reports, TCP).

Reads: send the envelope of ``{"kind": "read", "path": PATH}`` signed with the
master secret for ``GET PATH`` in the ``Authorization`` header.  With
``read_auth = no`` reads without it are served too, but MACs, IPs, BMC
addresses, engine ports and the history (which names them) only to signed
readers; lookups by IP or MAC need a signature as well::

    GET /v1/status              server summary: host counts by state, proxy counters, UPS states
    GET /v1/hosts               every host (registry records)
    GET /v1/hosts/NAME          one host (name, IP or MAC)
    GET /v1/groups              every group: members, awake, asleep, needed, demand
    GET /v1/groups/NAME         one group
    GET /v1/history             recent wakes, naps, escalations
    GET /v1/decisions           pending decisions of groups in recommend-only mode

Writes: the body is one message signed with the master secret for its method
and path (``protocol.http_label``: a wake body is refused at ``/v1/nap``); a
report is the engine's datagram, signed with its own host key::

    POST /v1/report             an engine report (same bytes as the UDP datagram)
    POST /v1/wake               {"kind": "request", "host": NAME, "method": "auto|wol|ipmi"}
    POST /v1/nap                {"kind": "request", "host": NAME, "action": "suspend|poweroff|...", "force": BOOL}
    POST /v1/clear-mark         {"kind": "request", "host": NAME}  (clear a failed-wake mark)
    POST /v1/groups/NAME/demand {"kind": "request", "more": N, "ttl": SECONDS}  (external schedulers)
    POST /v1/groups/NAME/veto   {"kind": "request", "ttl": SECONDS, "reason": TEXT} or {..., "clear": true}
    POST /v1/decisions/ID/approve  {"kind": "request", "force": BOOL}  (act on a recommend-only decision)
    POST /v1/decisions/ID/reject   {"kind": "request"}

Wakes and naps pass the policy gate (``rails``): the answer is the history entry of
what was done, or ``{"what": "queued" | "refused" | "decision", "reason": ...}``.

Metrics: ``GET /metrics`` answers in the Prometheus text format (``metrics.py``).  Loopback
clients read it without credentials (``[metrics] local``); any other client sends
``Authorization: Bearer TOKEN`` with ``[metrics] token``; with no token set, only loopback
is served (403).  ``[metrics] enabled = no`` turns it off (404).

A nap of a host marked by a failed wake is refused with 409 and the reason (unless ``force``).
Answers are JSON objects; errors are ``{"error": "..."}`` with 400/401/404, 403 for a
report the server will not take (another host than its signer, an unregistered host, the host
cap) and 500 when a handler fails (logged; the server goes on).
The server runs in its own thread; every handler takes the daemon's lock.
At most ``max_clients`` connections are served at once, ``max_clients_per_ip``
from one address (more are closed at once), each within ``request_timeout`` in
total, however slowly it sends;
with ``tls_cert``/``tls_key`` it speaks HTTPS (the handshake runs in the
connection's thread, under the same deadline).
"""

import hmac
import ipaddress
import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Tuple
from urllib.parse import unquote

from ..prometheus import CONTENT_TYPE
from .protocol import TO_SERVER, ProtocolError, http_label

MAX_BODY = 65536


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def route(app: Any, method: str, path: str, body: bytes, auth: Optional[str], client: Tuple[str, int]) -> Any:
    """Dispatch one request to the daemon ``app``; returns the JSON-able answer, raises ApiError."""
    parts = [unquote(p) for p in path.split("?")[0].strip("/").split("/") if p]
    if parts == ["metrics"] and app.config.metrics["enabled"]:
        if method != "GET":
            raise ApiError(405, "method %s not allowed" % method)
        _metrics_reader_ok(app.config.metrics, auth, client)
        return PlainText(app.api_metrics())
    if len(parts) < 2 or parts[0] != "v1":
        raise ApiError(404, "no such endpoint %s" % path)
    if method == "GET":
        signed = False
        if auth or app.read_auth:
            _verify(app, (auth or "").encode("utf-8"), "read", http_label(method, path), path=path.split("?")[0])
            signed = True
        if parts[1:] == ["status"]:
            return app.api_status(full=signed)
        if parts[1:] == ["hosts"]:
            return {"hosts": app.api_hosts(full=signed)}
        if parts[1] == "hosts" and len(parts) == 3:
            return _found(app.api_host(parts[2], full=signed), "host", parts[2])
        if parts[1:] == ["groups"]:
            return {"groups": app.api_groups(full=signed)}
        if parts[1] == "groups" and len(parts) == 3:
            return _found(app.api_group(parts[2], full=signed), "group", parts[2])
        if parts[1:] == ["history"]:
            if not signed:
                raise ApiError(401, "the history names addresses: send a signed read")
            return {"history": app.api_history()}
        if parts[1:] == ["decisions"]:
            if not signed:
                raise ApiError(401, "decisions name hosts and causes: send a signed read")
            return {"decisions": app.api_decisions()}
        raise ApiError(404, "no such endpoint %s" % path)
    if method == "POST":
        if parts[1:] == ["report"]:
            message = _verify(app, body, "report", TO_SERVER)
            try:
                answer = app.accept_report(message, None)
            except ProtocolError as exc:  # a valid report the registry will not take (unregistered, cap)
                raise ApiError(403, str(exc)) from None
            if answer is None:
                raise ApiError(403, "a host reports only for itself")
            return answer
        message = _verify(app, body, "request", http_label(method, path))
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
            answer = _found(
                app.api_nap(
                    str(message.get("host")),
                    message.get("action"),
                    "API request from %s (%s)" % (message["from"], client[0]),
                    force=bool(message.get("force")),
                ),
                "host",
                message.get("host"),
            )
            if answer.get("what") == "refused":  # the policy gate: a veto, or a failed-wake mark
                raise ApiError(409, "not napped: %s (send force to nap it anyway)" % answer["reason"])
            return answer
        if parts[1:] == ["clear-mark"]:
            return _found(
                app.api_clear_mark(str(message.get("host")), "%s (%s)" % (message["from"], client[0])),
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
        if parts[1] == "groups" and len(parts) == 4 and parts[3] == "veto":
            clear = bool(message.get("clear"))
            if not clear and message.get("ttl") is None:
                raise ApiError(400, "a veto needs 'ttl' (seconds), or 'clear': true")
            answer = app.api_veto(
                parts[2], message["from"], message.get("ttl"), str(message.get("reason") or ""), clear
            )
            return _found(answer, "group", parts[2])
        if parts[1] == "decisions" and len(parts) == 4 and parts[3] in ("approve", "reject"):
            answer = app.api_decide(parts[2], parts[3] == "approve", message["from"], bool(message.get("force")))
            return _found(answer, "pending decision", parts[2])
        raise ApiError(404, "no such endpoint %s" % path)
    raise ApiError(405, "method %s not allowed" % method)


class PlainText(str):
    """An answer sent as it is (the Prometheus text format), not as JSON."""

    content_type = CONTENT_TYPE


def _metrics_reader_ok(opts: Dict[str, Any], auth: Optional[str], client: Tuple[str, int]) -> None:
    """Loopback reads freely (unless [metrics] local = no); anyone else needs the bearer token."""
    if opts["local"] and _loopback(client[0]):
        return
    token = str(opts["token"] or "")
    if not token:
        raise ApiError(403, "metrics are served to loopback only: set [metrics] token for other scrapers")
    scheme, _space, given = (auth or "").partition(" ")
    # compare_digest: the time taken says nothing about how much of the token was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8")):
        raise ApiError(401, "metrics need Authorization: Bearer with the [metrics] token")


def _loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool((mapped or ip).is_loopback)


def _found(value: Any, what: str, name: Any) -> Any:
    if value is None:
        raise ApiError(404, "no such %s %r" % (what, name))
    return value


def _verify(app: Any, data: bytes, kind: str, label: bytes, **expect: Any) -> Dict[str, Any]:
    try:
        message = app.endpoint.accept(data, label)
    except ProtocolError as exc:
        raise ApiError(401, "not authenticated: %s" % exc) from None
    if message["kind"] != kind or any(message.get(k) != v for k, v in expect.items()):
        raise ApiError(400, "expected a signed %r message" % kind)
    if kind != "read":
        try:
            app.claim_signed(message)  # fleet mode: a write is taken once for the whole fleet
        except ProtocolError as exc:
            raise ApiError(401, "not authenticated: %s" % exc) from None
    return message


class _Handler(BaseHTTPRequestHandler):
    server_version = "powerwaked"
    timeout = 10  # per read; the server's request_timeout bounds the whole connection

    def version_string(self) -> str:
        return self.server_version  # not the Python version: no need to tell anyone

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
            # Fleet mode: a write another instance carries out is accepted, not done (FLEETMODE.md).
            self._reply(202 if isinstance(answer, dict) and answer.get("queued") is True else 200, answer)
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
        if isinstance(answer, PlainText):
            data, content_type = answer.encode("utf-8"), answer.content_type
        else:
            data, content_type = json.dumps(answer, sort_keys=True, default=str).encode("utf-8"), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        """http.server's access log, sent to ours at debug level."""
        self.server.app.log.debug("api %s: %s", self.client_address[0], args[0] % args[1:])  # type: ignore[attr-defined]


class _BoundedServer(ThreadingHTTPServer):
    """One thread per connection, but at most ``max_clients`` of them, each cut off after ``request_timeout``.

    One client address may hold at most ``per_client`` of them, so a single
    slow client cannot take every slot from the others.  A connection over a
    limit, or one whose thread cannot start, is closed at once (counted in
    ``refused``): the server never crashes for want of a thread.
    ``service_actions`` (run by ``serve_forever`` every poll) shuts down
    connections past their deadline, so a client that sends a byte every few
    seconds cannot hold its thread.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(
        self, address: Tuple[str, int], max_clients: int, request_timeout: float, tls: Any, per_client: int = 0
    ):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.max_clients = max_clients
        self.per_client = per_client or max(2, max_clients // 4)
        self.request_timeout = request_timeout
        self.tls = tls
        self.slots = threading.BoundedSemaphore(max_clients)
        self.active: Dict[int, list] = {}  # fd -> [socket, deadline, client address]
        self.active_lock = threading.Lock()
        self.refused = 0
        self.cut_off = 0
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.active_lock:
            mine = sum(1 for entry in self.active.values() if entry[2] == client_address[0])
        if mine >= self.per_client or not self.slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        fd = request.fileno()
        with self.active_lock:
            self.active[fd] = [request, time.monotonic() + self.request_timeout, client_address[0]]
        try:
            threading.Thread(
                target=self.process_request_thread, args=(request, client_address, fd), daemon=True
            ).start()
        except RuntimeError as exc:  # "can't start new thread": drop this client, keep serving
            self.refused += 1
            self._done(fd)
            self.shutdown_request(request)
            self.app.log.warning("api: cannot start a thread for %s: %s", client_address[0], exc)  # type: ignore[attr-defined]

    def process_request_thread(self, request: Any, client_address: Any, fd: int = -1) -> None:  # type: ignore[override]
        try:
            if self.tls is not None:
                request.settimeout(_Handler.timeout)
                request = self.tls.wrap_socket(request, server_side=True)
                with self.active_lock:
                    if fd in self.active:
                        self.active[fd][0] = request
            self.finish_request(request, client_address)
        except Exception:  # a broken client (TLS, reset) ends only its own connection
            pass
        finally:
            self._done(fd)
            self.shutdown_request(request)

    def _done(self, fd: int) -> None:
        with self.active_lock:
            if self.active.pop(fd, None) is not None:
                self.slots.release()

    def service_actions(self) -> None:
        now = time.monotonic()
        with self.active_lock:
            late = [entry for entry in self.active.values() if entry[1] <= now]
            for entry in late:
                entry[1] = float("inf")  # cut once; its thread ends and frees the slot
        for sock in (entry[0] for entry in late):
            self.cut_off += 1
            try:
                sock.shutdown(socket.SHUT_RDWR)  # its thread's next read fails and the thread ends
            except OSError:
                pass

    def connections(self) -> int:
        with self.active_lock:
            return len(self.active)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """The API's TLS settings: TLS 1.2 or newer, the certificate chain and key from PEM files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


class ApiServer:
    """The HTTP server on its own (daemon) thread."""

    def __init__(
        self,
        app: Any,
        address: str,
        port: int,
        max_clients: int = 32,
        request_timeout: float = 10.0,
        tls: Optional[ssl.SSLContext] = None,
        per_client: int = 0,
    ):
        self.httpd = _BoundedServer((address, port), max_clients, request_timeout, tls, per_client)
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
