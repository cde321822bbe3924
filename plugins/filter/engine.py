# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the powernap role installs on a host: the engine's files and one digest naming that release."""

import hashlib
import os

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_bytes, to_text

# Parts of the engine directory a host needs; tests, examples and caches stay on the controller.
ENGINE_PARTS = ("powernap", "bin")
_SKIP_DIRS = ("__pycache__",)
_SKIP_SUFFIXES = (".pyc", ".pyo", ".swp", "~")


def _wanted(name):
    return not name.startswith(".") and not name.endswith(_SKIP_SUFFIXES)


def engine_manifest(engine_dir, parts=ENGINE_PARTS):
    """List the engine files under ``engine_dir`` (symlinks followed) and hash them.

    Returns ``{"digest": sha256 hex, "release": first 16 hex digits, "dirs": [...], "files": [{"path", "mode"}]}``
    with paths relative to ``engine_dir``.  The digest covers every path, mode and content byte, so it
    changes exactly when the installed engine would.
    """
    root = os.path.realpath(to_text(engine_dir))
    if not os.path.isdir(os.path.join(root, "powernap")):
        raise AnsibleFilterError("engine_manifest: %s has no powernap/ package" % root)
    digest = hashlib.sha256()
    dirs = []
    files = []
    for part in parts:
        top = os.path.join(root, part)
        if not os.path.isdir(top):
            raise AnsibleFilterError("engine_manifest: %s is missing" % top)
        for current, subdirs, names in os.walk(top, followlinks=True):
            subdirs[:] = sorted(d for d in subdirs if d not in _SKIP_DIRS and _wanted(d))
            rel_dir = os.path.relpath(current, root)
            dirs.append(rel_dir)
            for name in sorted(n for n in names if _wanted(n)):
                path = os.path.join(current, name)
                rel = os.path.join(rel_dir, name)
                mode = "0755" if part == "bin" else "0644"
                with open(path, "rb") as handle:
                    content = handle.read()
                digest.update(to_bytes(rel) + b"\0" + to_bytes(mode) + b"\0")
                digest.update(hashlib.sha256(content).digest())
                files.append({"path": rel, "mode": mode})
    hexdigest = digest.hexdigest()
    return {"digest": hexdigest, "release": hexdigest[:16], "dirs": dirs, "files": files}


class FilterModule:
    """The engine release the powernap role installs."""

    def filters(self):
        return {"engine_manifest": engine_manifest}
