"""The seam for reporting state changes to a fleet server (``[server] url = ...``).

The daemon hands every event (the same dicts it logs and shows in
``status --json`` under ``events``) to ``Reporter.report``.  Reports must
never slow napping down, so ``HttpReporter`` posts from one bounded worker
thread (a daemon thread with a bounded queue: a dead server loses reports,
never blocks the loop or SIGTERM).  The wire protocol belongs to powerwaked
(a later issue); until then it is one JSON object per POST to
``<url>/v1/events`` with ``Authorization: Bearer <token>`` when a token is set.
"""

import json
import logging
import queue
import threading
import urllib.request
from typing import Any, Dict, Optional


class Reporter:
    """Does nothing: no server configured."""

    def report(self, event: Dict[str, Any]) -> None:
        """Queue one event for the fleet server."""

    def close(self) -> None:
        """Stop reporting; must return promptly."""


class HttpReporter(Reporter):
    def __init__(self, url: str, token: str, timeout: float, host: str, log: Optional[logging.Logger] = None):
        self.endpoint = url.rstrip("/") + "/v1/events"
        self.token = token
        self.timeout = timeout
        self.host = host
        self.log = log or logging.getLogger("powernap.report")
        self._queue: queue.Queue[Optional[Dict[str, Any]]] = queue.Queue(maxsize=100)
        self._thread = threading.Thread(target=self._run, name="powernap-report", daemon=True)
        self._thread.start()

    def report(self, event: Dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(dict(event, host=self.host))
        except queue.Full:
            self.log.debug("fleet server queue full: dropping %s", event.get("event"))

    def close(self) -> None:
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout=self.timeout + 1.0)

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            body = json.dumps(event, sort_keys=True).encode("utf-8")
            headers = {"Content-Type": "application/json"}
            if self.token:
                headers["Authorization"] = "Bearer " + self.token
            request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    reply.read(1024)
            except (OSError, ValueError) as exc:
                self.log.debug("fleet server report failed: %s", exc)


def make_reporter(
    server: Dict[str, Any],
    host: str,
    log: Optional[logging.Logger] = None,
    control_path: Optional[str] = None,
    root: Any = None,
) -> Reporter:
    """The fleet reporter: powerwaked's signed UDP protocol (``powernap.server.protocol``) when a token is
    set (an empty url then means: find the segment's server by DNS-SD), else nothing."""
    if not server.get("token"):
        return Reporter()
    from .server.protocol import make_fleet_reporter

    return make_fleet_reporter(server, host, log, control_path, root)
