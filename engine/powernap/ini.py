"""A small INI reader that remembers where every value came from.

``configparser`` forgets line numbers, and ``check-config`` must say
``FILE:LINE: message``.  This reader keeps the conventions admins know from
PowerNap, tuned and autosuspend:

* ``[section]`` headers, ``key = value`` or ``key: value`` lines,
* ``#`` and ``;`` comment lines, blank lines,
* indented continuation lines (joined with a newline),
* later files win per key (drop-ins in ``conf.d/*.conf``, sorted by name),
  and ``key =`` with an empty value in a later file keeps the key empty;
* within one file a repeated section or key is an error naming both places,
  as configparser (PowerNap, autosuspend) does.

Files are read as UTF-8 (a leading byte order mark is accepted).  Lines end
at ``\n``, ``\r\n`` or ``\r`` only: form feeds, vertical tabs, ``\x1c``-``\x1e``,
``\x85`` and ``\u2028``/``\u2029`` (which ``str.splitlines`` would also break at) are
whitespace inside a line, so every reported line number is the one an editor
shows.  Only regular files are read, opened without blocking: a FIFO or a
device named ``*.conf`` is refused, never waited on.

Values are text; typing happens in ``options``.  Keys are lower-cased.
"""

import glob
import os
import stat
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

from .errors import ConfigError

MAX_FILE_SIZE = 1024 * 1024  # a config file larger than this is a mistake, not a config


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
    # Within this file: where each section and each (section, key) was first given.
    first_section: Dict[str, int] = {}
    first_key: Dict[Tuple[str, str], int] = {}
    if text.startswith("\ufeff"):
        text = text[1:]
    for number, raw in enumerate(split_lines(text), start=1):
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
            if name in first_section:
                errors.append(
                    ConfigError(
                        "section [%s] is repeated (first at %s:%d); give each section once per file"
                        % (name, path, first_section[name]),
                        path,
                        number,
                    )
                )
            else:
                first_section[name] = number
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
        if (section.name, key) in first_key:
            errors.append(
                ConfigError(
                    "option '%s' in [%s] is repeated (first at %s:%d); give each option once per section"
                    % (key, section.name, path, first_key[(section.name, key)]),
                    path,
                    number,
                )
            )
            continue
        first_key[(section.name, key)] = number
        last = section.values[key] = Value(stripped[separator + 1 :].strip(), path, number)
    return doc, errors


def _separator(line: str) -> int:
    positions = [p for p in (line.find("="), line.find(":")) if p >= 0]
    return min(positions) if positions else -1


def split_lines(text: str) -> List[str]:
    """Lines as an editor numbers them: broken at \\n, \\r\\n and \\r only (not at \\f, \\v, \\x85, ...)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def read_text(path: str) -> str:
    """One config file's text.  Raises ConfigError (located) for anything that is not a readable UTF-8 file.

    Never blocks: a FIFO, socket or device is refused before it is opened, and
    the file is opened non-blocking and checked again (it may be swapped in between).
    """
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError("cannot read: not a regular file (%s)" % _file_kind(mode), path)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ConfigError("cannot read: not a regular file (%s)" % _file_kind(info.st_mode), path)
            if info.st_size > MAX_FILE_SIZE:
                raise ConfigError("cannot read: larger than %d bytes" % MAX_FILE_SIZE, path)
            with os.fdopen(fd, "rb", closefd=False) as handle:
                data = handle.read(MAX_FILE_SIZE + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError("cannot read: %s" % (exc.strerror or exc), path) from None
    if len(data) > MAX_FILE_SIZE:
        raise ConfigError("cannot read: larger than %d bytes" % MAX_FILE_SIZE, path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") + 1
        column = exc.start - max(before.rfind(b"\n"), before.rfind(b"\r"))
        raise ConfigError("not UTF-8 text: byte 0x%02x at column %d" % (data[exc.start], column), path, line) from None


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "mode %o" % stat.S_IFMT(mode)


def read_files(paths: Iterable[str], doc: Optional[Document] = None) -> Tuple[Document, List[ConfigError]]:
    """Parse files in order into one document; unreadable files are errors, not skipped."""
    doc = doc if doc is not None else Document()
    errors: List[ConfigError] = []
    for path in paths:
        try:
            text = read_text(path)
        except ConfigError as exc:
            errors.append(exc)
            continue
        file_errors = parse_text(text, path, doc)[1]
        errors.extend(file_errors)
    return doc, errors


def config_files(main: str, dropin_dir: Optional[str] = None) -> List[str]:
    """``main`` followed by ``<dropin_dir>/*.conf`` in name order (default: ``conf.d`` beside main)."""
    if dropin_dir is None:
        dropin_dir = os.path.join(os.path.dirname(main), "conf.d")
    return [main] + sorted(glob.glob(os.path.join(dropin_dir, "*.conf")))
