"""The JSON registry of powerwaked 0.1 (a snapshot plus, later, a ``.journal``): read once, to import it.

The first start with a store that holds nothing imports ``state_file`` (and its journal) and then
renames both ``*.imported``, so the import happens once and the old file stays for a downgrade or an
audit.  A file that cannot be read is kept aside (``*.corrupt-TIME``) and the server starts with what
can be read, as issue 13 decided for this format.
"""

import os
import time
from typing import Any, Dict, List, Optional, Tuple

from .. import protocol as P

SCHEMA = 1  # the JSON registry's schema


def journal_path(path: str) -> str:
    return path + ".journal"


def exists(path: str) -> bool:
    return os.path.exists(path) or os.path.exists(journal_path(path))


def read(path: str, problems: List[str]) -> Tuple[Optional[Dict[str, Any]], List[Dict[str, Any]]]:
    """The snapshot (None when missing or unreadable: then it is moved aside) and the journal after it."""
    snapshot: Optional[Dict[str, Any]] = None
    if os.path.exists(path):
        try:
            with open(path, "rb") as handle:
                snapshot = P.loads_strict(handle.read())
            if not isinstance(snapshot, dict) or snapshot.get("schema") != SCHEMA:
                raise ValueError("not a registry of schema %d" % SCHEMA)
        except (OSError, ValueError, RecursionError) as exc:
            aside = "%s.corrupt-%d" % (path, int(time.time()))
            try:
                os.replace(path, aside)
                where = "kept as %s" % aside
            except OSError as move_exc:
                where = "could not be moved aside: %s" % move_exc
            problems.append("registry %s unreadable (%s), %s" % (path, str(exc)[:200], where))
            snapshot = None
    done = snapshot.get("seq", 0) if snapshot is not None else 0
    done = done if isinstance(done, int) and not isinstance(done, bool) else 0
    entries: List[Dict[str, Any]] = []
    try:
        with open(journal_path(path), "rb") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        lines = []
    except OSError as exc:
        problems.append("registry journal %s unreadable: %s" % (journal_path(path), exc))
        lines = []
    bad = 0
    for line in lines:
        try:
            entry = P.loads_strict(line)
            seq = entry["seq"]
            if not isinstance(seq, int) or isinstance(seq, bool):
                raise ValueError("bad seq")
        except (ValueError, KeyError, TypeError, RecursionError):
            bad += 1  # a torn last line after a crash, or damage: skip it, keep the rest
            continue
        if seq > done:
            entries.append(entry)
    if bad:
        problems.append("registry journal %s: %d unreadable entries skipped" % (journal_path(path), bad))
    return snapshot, entries


def set_aside(path: str) -> List[str]:
    """After a successful import: rename the snapshot and its journal ``*.imported``; returns the new names."""
    moved = []
    for source in (path, journal_path(path)):
        if os.path.exists(source):
            os.replace(source, source + ".imported")
            moved.append(source + ".imported")
    return moved
