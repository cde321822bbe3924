# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the powernap role installs on a host, and what the engine's option tables say about its config.

``engine_manifest``: the engine's files and one digest naming that release.  ``secret_option_names`` and
``mask_secrets``: the options the engine declares secret (``Option(..., secret=True)`` in its tables,
engine/powernap/options.py), read from the engine this collection ships, so that the role hides exactly
those and a new secret option needs no second list here.
"""

import hashlib
import importlib
import importlib.util
import os
import sys

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


# Shown instead of a secret value (as AnsibleModule shows no_log values).
MASK = "********"


def _engine_package(engine_dir):
    """Import the engine package under a private name (the controller may have another ``powernap``)."""
    root = os.path.realpath(to_text(engine_dir))
    package_dir = os.path.join(root, "powernap")
    name = "_powernap_fleet_engine_%s" % hashlib.sha256(to_bytes(root)).hexdigest()[:12]
    if name in sys.modules:
        return name
    init = os.path.join(package_dir, "__init__.py")
    if not os.path.isfile(init):
        raise AnsibleFilterError("%s has no powernap/ package" % root)
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[package_dir])
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    try:
        spec.loader.exec_module(package)
    except Exception:
        del sys.modules[name]
        raise
    return name


_SECRET_NAMES = {}


def secret_option_names(engine_dir):
    """Every option name that the engine's or powerwaked's option tables declare secret."""
    root = os.path.realpath(to_text(engine_dir))
    if root not in _SECRET_NAMES:
        package = _engine_package(root)
        # Importing these registers every section, monitor, tweak and powerwaked section type.
        importlib.import_module(package + ".config").import_plugins()
        importlib.import_module(package + ".server.config")
        options = importlib.import_module(package + ".options")
        kinds = [options.registry(kind) for kind in ("section", "monitor", "tweak", "action", "powerwaked")]
        _SECRET_NAMES[root] = frozenset(
            opt.name for classes in kinds for cls in classes.values() for opt in cls.OPTIONS if opt.secret
        )
    return _SECRET_NAMES[root]


def mask_secrets(sections, engine_dir):
    """A copy of config ``sections`` with every non-empty secret option's value replaced by a mask.

    Matching is by option name across all sections (a superset of the section-exact rule): an option that
    is secret anywhere in the tables is hidden everywhere, even in a section whose type is still wrong.
    """
    if not isinstance(sections, dict):
        raise AnsibleFilterError("mask_secrets expects a mapping of sections")
    secret = secret_option_names(engine_dir)
    masked = {}
    for section, options in sections.items():
        if isinstance(options, dict):
            options = {
                name: MASK if name in secret and value not in (None, "") else value for name, value in options.items()
            }
        masked[section] = options
    return masked
