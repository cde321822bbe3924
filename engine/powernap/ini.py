"""A small INI reader that remembers where every value came from.

``configparser`` forgets line numbers, and ``check-config`` must say
``FILE:LINE: message``.  This reader keeps the conventions admins know from
PowerNap, tuned and autosuspend:

* ``[section]`` headers, ``key = value`` or ``key: value`` lines,
* ``#`` and ``;`` comment lines, blank lines,
* indented continuation lines (joined with a newline),
* later files win per key (drop-ins in ``conf.d/*.conf``, sorted by name),
  and ``key =`` with an empty value in a later file keeps the key empty.

Values are text; typing happens in ``options``.  Keys are lower-cased.
"""

import glob
import os
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

from .errors import ConfigError


class Value:
    """One value with its origin."""

    __slots__ = ("text", "path", "line")

    def __init__(self, text: str, path: str, line: int):
        self.text = text
        self.path = path
        self.line = line

    def __repr__(self) -> str:
        return "Value(%r, %s:%d)" % (self.text, self.path, self.line)


class Section:
    """A section merged from every file that mentions it."""

    def __init__(self, name: str, path: str, line: int):
        self.name = name
        self.path = path  # where the section first appeared
        self.line = line
        self.values: Dict[str, Value] = {}

    def texts(self) -> Dict[str, str]:
        return {key: value.text for key, value in self.values.items()}

    def where(self, key: Optional[str] = None) -> Tuple[str, int]:
        if key is not None and key in self.values:
            return self.values[key].path, self.values[key].line
        return self.path, self.line

    def error(self, message: str, key: Optional[str] = None) -> ConfigError:
        path, line = self.where(key)
        return ConfigError(message, path, line)


class Document:
    """Sections in first-seen order, merged across files."""

    def __init__(self) -> None:
        self.sections: Dict[str, Section] = {}
        self.files: List[str] = []

    def __iter__(self) -> Iterator[Section]:
        return iter(self.sections.values())

    def get(self, name: str) -> Optional[Section]:
        return self.sections.get(name)

    def with_prefix(self, prefix: str) -> List[Section]:
        return [s for s in self.sections.values() if s.name.startswith(prefix)]


def parse_text(text: str, path: str, doc: Optional[Document] = None) -> Tuple[Document, List[ConfigError]]:
    """Parse one file's text into ``doc`` (a new one by default); returns it and the syntax errors."""
    doc = doc if doc is not None else Document()
    doc.files.append(path)
    errors: List[ConfigError] = []
    section: Optional[Section] = None
    last: Optional[Value] = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if raw[:1] in (" ", "\t") and last is not None:
            last.text = (last.text + "\n" + stripped) if last.text else stripped
            continue
        last = None
        if stripped.startswith("["):
            if not stripped.endswith("]") or len(stripped) < 3:
                errors.append(ConfigError("malformed section header %r" % stripped, path, number))
                section = None
                continue
            name = stripped[1:-1].strip().lower()
            section = doc.sections.get(name)
            if section is None:
                section = doc.sections[name] = Section(name, path, number)
            continue
        separator = _separator(stripped)
        if separator < 0:
            errors.append(ConfigError("expected 'key = value', got %r" % stripped, path, number))
            continue
        key = stripped[:separator].strip().lower()
        if not key:
            errors.append(ConfigError("empty option name", path, number))
            continue
        if section is None:
            errors.append(ConfigError("option outside of any [section]", path, number))
            continue
        last = section.values[key] = Value(stripped[separator + 1 :].strip(), path, number)
    return doc, errors


def _separator(line: str) -> int:
    positions = [p for p in (line.find("="), line.find(":")) if p >= 0]
    return min(positions) if positions else -1


def read_files(paths: Iterable[str], doc: Optional[Document] = None) -> Tuple[Document, List[ConfigError]]:
    """Parse files in order into one document; unreadable files are errors, not skipped."""
    doc = doc if doc is not None else Document()
    errors: List[ConfigError] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(ConfigError("cannot read: %s" % exc, path))
            continue
        file_errors = parse_text(text, path, doc)[1]
        errors.extend(file_errors)
    return doc, errors


def config_files(main: str, dropin_dir: Optional[str] = None) -> List[str]:
    """``main`` followed by ``<dropin_dir>/*.conf`` in name order (default: ``conf.d`` beside main)."""
    if dropin_dir is None:
        dropin_dir = os.path.join(os.path.dirname(main), "conf.d")
    return [main] + sorted(glob.glob(os.path.join(dropin_dir, "*.conf")))
