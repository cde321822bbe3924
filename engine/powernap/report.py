"""The seam for reporting state changes to a fleet server (``[server] url = ...``).

The daemon hands every event (the same dicts it logs and shows in
``status --json`` under ``events``) to ``Reporter.report``.  Reports must
never slow napping down or block SIGTERM.  The wire protocol and the real
reporter belong to powerwaked (``powernap.server.protocol``).
"""

import logging
from typing import Any, Dict, Optional


class Reporter:
    """Does nothing: no server configured."""

    def report(self, event: Dict[str, Any]) -> None:
        """Queue one event for the fleet server."""

    def close(self) -> None:
        """Stop reporting; must return promptly."""


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
