"""One root for every read and write of the system (``--root`` / ``POWERNAP_ROOT``).

Tests and the lab point the engine at a fake tree holding ``sys/``, ``proc/``,
``dev/``, ``etc/`` and ``run/``; nothing in the engine opens an absolute
system path without going through ``SysRoot.path``.
"""

import os
from typing import Iterator, List, Optional

ROOT_ENV = "POWERNAP_ROOT"


class SysRoot:
    def __init__(self, root: Optional[str] = None):
        self.root = os.path.abspath(root if root is not None else os.environ.get(ROOT_ENV, "/"))

    @property
    def is_real(self) -> bool:
        return self.root == "/"

    def path(self, system_path: str) -> str:
        """Map an absolute system path (``/sys/...``) into this root."""
        if not system_path.startswith("/"):
            raise ValueError("system path must be absolute: %r" % system_path)
        if self.is_real:
            return system_path
        return os.path.join(self.root, system_path.lstrip("/"))

    def exists(self, system_path: str) -> bool:
        return os.path.exists(self.path(system_path))

    def read(self, system_path: str, default: Optional[str] = None) -> Optional[str]:
        """The file's text with the trailing newline removed, or ``default`` if unreadable."""
        try:
            with open(self.path(system_path), encoding="utf-8", errors="replace") as handle:
                return handle.read().rstrip("\n")
        except OSError:
            return default

    def read_bytes(self, system_path: str) -> bytes:
        with open(self.path(system_path), "rb") as handle:
            return handle.read()

    def write(self, system_path: str, text: str) -> None:
        """Write as sysfs expects: one write, no truncation games, no temp file."""
        with open(self.path(system_path), "w", encoding="utf-8") as handle:
            handle.write(text)

    def listdir(self, system_path: str) -> List[str]:
        try:
            return sorted(os.listdir(self.path(system_path)))
        except OSError:
            return []

    def glob(self, pattern: str) -> Iterator[str]:
        """System paths (not root-mapped) matching a glob, sorted."""
        import glob as _glob

        mapped = self.path(pattern)
        prefix_len = 0 if self.is_real else len(self.root.rstrip("/"))
        for hit in sorted(_glob.glob(mapped)):
            yield hit[prefix_len:] if prefix_len else hit
