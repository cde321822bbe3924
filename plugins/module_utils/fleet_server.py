# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet server's (powerwaked's) record of a host, read over its HTTP API: power_info's ``server``.

Read by the module on the managed host, and by its action plugin on the controller for a host that does not
answer (asleep or off), so both give the same ``server`` value.
"""

import json
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlsplit, urlunsplit

from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
from ansible.module_utils.urls import open_url

# The registry record fields returned under `server` (see engine/powernap/server/registry.py HostRecord).
SERVER_KEYS = (
    "name", "state", "since", "last_seen", "last_event", "stage", "idle_seconds", "next_wake", "engine", "groups",
    "macs", "ips", "hold", "wakes", "energy", "policy", "wake_health", "segment",
)  # fmt: skip
SERVER_PORT = 7490


def server_base_url(url):
    """The API base URL: http(s) URLs as given; the engines' udp://HOST[:PORT] as http://HOST:PORT."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https", "udp") or not parts.hostname:
        raise ValueError("server_url must be http://HOST:PORT (or udp://HOST[:PORT]), not %r" % url)
    if parts.scheme == "udp":
        netloc = parts.netloc if parts.port else "%s:%d" % (parts.netloc, SERVER_PORT)
        return "http://" + netloc
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def server_view(base, host, timeout):
    """The fleet server's record of ``host`` (GET /v1/hosts/NAME), as the ``server`` return value."""
    info = {"url": base, "host": host, "reachable": False, "found": False}
    url = base + "/v1/hosts/" + quote(host, safe="")
    try:
        with open_url(url, method="GET", headers={"Accept": "application/json"}, timeout=timeout) as response:
            record = json.loads(response.read().decode("utf-8"))
    except HTTPError as exc:
        info["reachable"] = True
        try:
            detail = json.loads(exc.read().decode("utf-8")).get("error")
        except (ValueError, AttributeError, OSError):
            detail = None
        info["error"] = "HTTP %d from %s: %s" % (exc.code, base, detail or exc.reason)
        return info
    except (URLError, OSError, UrlsConnectionError) as exc:
        info["error"] = "cannot reach the fleet server at %s: %s" % (base, getattr(exc, "reason", exc))
        return info
    except ValueError as exc:
        info["reachable"] = True
        info["error"] = "the fleet server at %s did not answer JSON: %s" % (base, exc)
        return info
    info["reachable"] = True
    if not isinstance(record, dict):
        info["error"] = "the fleet server at %s answered %r, not a host record" % (base, record)
        return info
    info["found"] = True
    for key in SERVER_KEYS:
        info[key] = record.get(key)
    return info
