"""Option declarations: the single table every configurable part is built from.

Each monitor, tweak, action and config section declares its options once, as
``Option`` objects in a class attribute ``OPTIONS``.  From that one table come:

* parsing and validation of INI values (``check-config`` and the daemon),
* the documentation (``powernap schema`` / docs generation),
* the Ansible role's argument specs (generated from ``schema()``).

Values are never ``eval``'d.  A type's ``parse`` raises ``ValueError`` with a
plain message; the config loader turns that into a ``ConfigError`` carrying
the file and line.
"""

import ipaddress
import math
import re
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Type

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|d|w)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {
    None: 1.0,
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}
_TRUE = frozenset(("1", "yes", "true", "on"))
_FALSE = frozenset(("0", "no", "false", "off"))


class OptionType:
    """How one option's text becomes a value.  Subclasses override ``parse``."""

    schema_type = "str"  # the Ansible argument-spec type this maps to

    def parse(self, text: str) -> Any:
        return text

    def check(self, value: Any) -> Any:
        """Validate a JSON value (a wire message, the saved registry) and return it normalised.

        Strict: a number is never accepted as text nor text as a number.  The
        default takes a string and parses it like INI text.
        """
        if not isinstance(value, str):
            raise ValueError("must be a string, not %s" % json_type(value))
        if len(value) > MAX_TEXT:
            raise ValueError("longer than %d characters" % MAX_TEXT)
        return self.parse(value)

    def describe(self) -> str:
        return self.schema_type

    def schema(self) -> Dict[str, Any]:
        return {"type": self.schema_type}


class String(OptionType):
    """Text; ``max_length`` caps its size, ``pattern`` (a regex the whole text must match) its form."""

    def __init__(self, nonempty: bool = False, max_length: Optional[int] = None, pattern: str = "", form: str = ""):
        self.nonempty = nonempty
        self.max_length = max_length
        self.pattern = re.compile(pattern) if pattern else None
        self.form = form  # what the pattern means, for error messages and docs

    def parse(self, text: str) -> str:
        text = text.strip()
        if self.nonempty and not text:
            raise ValueError("must not be empty")
        if self.max_length is not None and len(text) > self.max_length:
            raise ValueError("longer than %d characters" % self.max_length)
        if self.pattern is not None and text and not self.pattern.fullmatch(text):
            raise ValueError("is not %s" % (self.form or "in the expected form"))
        return text

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError("must be a string, not %s" % json_type(value))
        if len(value) > (self.max_length if self.max_length is not None else MAX_TEXT):
            raise ValueError("longer than %d characters" % (self.max_length or MAX_TEXT))
        if value != value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("has surrounding spaces or control characters")
        return self.parse(value)

    def describe(self) -> str:
        return self.form or self.schema_type


class Boolean(OptionType):
    schema_type = "bool"

    def parse(self, text: str) -> bool:
        word = text.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError("%r is not a boolean (use yes/no, true/false, on/off, 1/0)" % text)

    def check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError("must be true or false, not %s" % json_type(value))
        return value


class Integer(OptionType):
    schema_type = "int"

    def __init__(self, minimum: Optional[int] = None, maximum: Optional[int] = None):
        self.minimum = minimum
        self.maximum = maximum

    def parse(self, text: str) -> int:
        try:
            value = int(text.strip(), 0)
        except ValueError:
            raise ValueError("%r is not an integer" % text) from None
        _check_range(value, self.minimum, self.maximum)
        return value

    def check(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be an integer, not %s" % json_type(value))
        _check_range(value, self.minimum, self.maximum)
        return value

    def describe(self) -> str:
        return "integer" + _range_text(self.minimum, self.maximum)


class Number(OptionType):
    schema_type = "float"

    def __init__(self, minimum: Optional[float] = None, maximum: Optional[float] = None):
        self.minimum = minimum
        self.maximum = maximum

    def parse(self, text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError("%r is not a number" % text) from None
        if not math.isfinite(value):
            raise ValueError("%r is not a number (only finite numbers)" % text)
        _check_range(value, self.minimum, self.maximum)
        return value

    def check(self, value: Any) -> float:
        value = _finite_number(value)
        _check_range(value, self.minimum, self.maximum)
        return value

    def describe(self) -> str:
        return "number" + _range_text(self.minimum, self.maximum)


class Duration(OptionType):
    """Seconds, written ``90``, ``90s``, ``10m``, ``2h``, ``1d``, ``500ms`` or ``1h30m``."""

    schema_type = "str"

    def __init__(self, minimum: Optional[float] = 0.0, maximum: Optional[float] = None):
        self.minimum = minimum
        self.maximum = maximum

    def parse(self, text: str) -> float:
        value = parse_duration(text)
        _check_range(value, self.minimum, self.maximum, unit="s")
        return value

    def check(self, value: Any) -> float:
        value = _finite_number(value)
        _check_range(value, self.minimum, self.maximum, unit="s")
        return value

    def describe(self) -> str:
        return "duration (e.g. 90s, 10m, 2h, 1d)"


def parse_duration(text: str) -> float:
    """Parse ``10m``, ``1h30m``, ``45`` (seconds) and the like into seconds."""
    parts = re.findall(r"\d+(?:\.\d+)?\s*[a-zA-Z]*", text.strip())
    if not parts or "".join(parts).replace(" ", "") != text.strip().replace(" ", ""):
        raise ValueError("%r is not a duration (e.g. 90s, 10m, 2h, 1d)" % text)
    total = 0.0
    for part in parts:
        match = _DURATION_RE.match(part)
        if not match:
            raise ValueError("%r is not a duration (e.g. 90s, 10m, 2h, 1d)" % text)
        unit = match.group(2).lower() if match.group(2) else None
        total += float(match.group(1)) * _DURATION_UNITS[unit]
    if not math.isfinite(total):
        raise ValueError("duration %r is too large" % text[:64])
    return total


class Size(OptionType):
    """A byte count: ``4096``, ``64k``, ``10M``, ``1GiB``."""

    schema_type = "str"

    def parse(self, text: str) -> int:
        match = _SIZE_RE.match(text)
        if not match:
            raise ValueError("%r is not a size (e.g. 4096, 64k, 10M, 1GiB)" % text)
        unit = (match.group(2) or "").lower()
        return int(float(match.group(1)) * _SIZE_UNITS[unit])

    def describe(self) -> str:
        return "size (e.g. 64k, 10M, 1GiB)"


class Choice(OptionType):
    def __init__(self, *choices: str):
        self.choices = tuple(choices)

    def parse(self, text: str) -> str:
        word = text.strip()
        if word not in self.choices:
            raise ValueError("%r is not one of: %s" % (text[:64], ", ".join(self.choices)))
        return word

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise ValueError("must be one of: %s" % ", ".join(self.choices))
        return value

    def describe(self) -> str:
        return "one of " + ", ".join(self.choices)

    def schema(self) -> Dict[str, Any]:
        return {"type": "str", "choices": list(self.choices)}


class Regex(OptionType):
    """A Python regular expression, compiled at load time so errors show up in check-config."""

    def parse(self, text: str) -> "re.Pattern[str]":
        try:
            return re.compile(text.strip())
        except re.error as exc:
            raise ValueError("bad regular expression %r: %s" % (text.strip(), exc)) from None

    def describe(self) -> str:
        return "regular expression"


class PortRanges(OptionType):
    """TCP/UDP ports: ``22``, ``80,443``, ``8000-8100`` (inclusive)."""

    schema_type = "list"

    def parse(self, text: str) -> Tuple[Tuple[int, int], ...]:
        ranges: List[Tuple[int, int]] = []
        for item in split_list(text):
            low_text, _dash, high_text = item.partition("-")
            try:
                low = int(low_text)
                high = int(high_text) if high_text else low
            except ValueError:
                raise ValueError("%r is not a port or port range" % item) from None
            if not (1 <= low <= 65535 and 1 <= high <= 65535):
                raise ValueError("port %r is outside 1-65535" % item)
            if low > high:
                raise ValueError("port range %r runs backwards" % item)
            ranges.append((low, high))
        if not ranges:
            raise ValueError("no ports given")
        return tuple(ranges)

    def describe(self) -> str:
        return "ports and ranges (e.g. 22, 80,443, 8000-8100)"

    def schema(self) -> Dict[str, Any]:
        return {"type": "list", "elements": "str"}


class ListOf(OptionType):
    """A comma (or newline) separated list of values of one item type."""

    schema_type = "list"

    def __init__(self, item: OptionType, nonempty: bool = False, max_items: Optional[int] = None):
        self.item = item
        self.nonempty = nonempty
        self.max_items = max_items

    def parse(self, text: str) -> Tuple[Any, ...]:
        values = []
        for part in split_list(text):
            try:
                values.append(self.item.parse(part))
            except ValueError as exc:
                raise ValueError("list item %r: %s" % (part, exc)) from None
        if self.nonempty and not values:
            raise ValueError("must name at least one item")
        if self.max_items is not None and len(values) > self.max_items:
            raise ValueError("more than %d items" % self.max_items)
        return tuple(values)

    def check(self, value: Any) -> List[Any]:
        if not isinstance(value, list):
            raise ValueError("must be a list, not %s" % json_type(value))
        limit = self.max_items if self.max_items is not None else MAX_ITEMS
        if len(value) > limit:
            raise ValueError("more than %d items" % limit)
        if self.nonempty and not value:
            raise ValueError("must name at least one item")
        out = []
        for index, item in enumerate(value):
            try:
                out.append(self.item.check(item))
            except ValueError as exc:
                raise ValueError("item %d: %s" % (index, exc)) from None
        return out

    def describe(self) -> str:
        return "list of " + self.item.describe()

    def schema(self) -> Dict[str, Any]:
        return {"type": "list", "elements": self.item.schema()["type"]}


class MapOf(OptionType):
    """A JSON object of bounded size whose keys and values each have a type (wire messages only)."""

    schema_type = "dict"

    def __init__(self, key: OptionType, value: OptionType, max_items: int = 64, nullable: bool = False):
        self.key = key
        self.value = value
        self.max_items = max_items
        self.nullable = nullable  # values may be null

    def parse(self, text: str) -> Any:
        raise ValueError("a map cannot be written as text")

    def check(self, value: Any) -> Dict[Any, Any]:
        if not isinstance(value, dict):
            raise ValueError("must be an object, not %s" % json_type(value))
        if len(value) > self.max_items:
            raise ValueError("more than %d entries" % self.max_items)
        out = {}
        for key, item in value.items():
            try:
                checked_key = self.key.check(key)
            except ValueError as exc:
                raise ValueError("key: %s" % exc) from None
            if item is None and self.nullable:
                out[checked_key] = None
                continue
            try:
                out[checked_key] = self.value.check(item)
            except ValueError as exc:
                raise ValueError("entry %s: %s" % (str(checked_key)[:64], exc)) from None
        return out

    def describe(self) -> str:
        return "map of %s to %s" % (self.key.describe(), self.value.describe())


class Fields(OptionType):
    """A JSON object whose fields are declared like a section's options (``schema``: a Declared class).

    For a structured value inside a record or message (wire and saved data only): every key declared,
    every value of its type, as ``Declared.check_values`` checks a whole message.
    """

    schema_type = "dict"

    def __init__(self, schema: Any):
        self.declared = schema

    def parse(self, text: str) -> Any:
        raise ValueError("an object cannot be written as text")

    def check(self, value: Any) -> Dict[str, Any]:
        return self.declared.check_values(value)

    def describe(self) -> str:
        return "object (%s)" % ", ".join(opt.name for opt in self.declared.OPTIONS)


class Scalar(OptionType):
    """One plain JSON value: null, true/false, a finite number or a string of at most ``max_length``."""

    def __init__(self, max_length: int = 256):
        self.max_length = max_length

    def check(self, value: Any) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, (int, float)):
            return _finite_number(value) if isinstance(value, float) else value
        if isinstance(value, str):
            if len(value) > self.max_length:
                raise ValueError("longer than %d characters" % self.max_length)
            return value
        raise ValueError("must be a plain value, not %s" % json_type(value))

    def describe(self) -> str:
        return "plain value"


class Mac(OptionType):
    """A MAC address, normalised to aa:bb:cc:dd:ee:ff."""

    def parse(self, text: str) -> str:
        from .magic_packet import format_mac, parse_mac

        try:
            return format_mac(parse_mac(text.strip()))
        except ValueError:
            raise ValueError("%r is not a MAC address (six hex octets, e.g. 52:54:00:12:34:56)" % text[:64]) from None

    def describe(self) -> str:
        return "MAC address"


class IpAddress(OptionType):
    """An IPv4 or IPv6 address literal (no names: these are matched against packets)."""

    def parse(self, text: str) -> str:
        try:
            return str(ipaddress.ip_address(text.strip()))
        except ValueError:
            raise ValueError("%r is not an IP address" % text[:64]) from None

    def describe(self) -> str:
        return "IP address"


_HOSTNAME_RE = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*\.?")


class HostAddress(OptionType):
    """A host name (RFC 1123) or an IP address."""

    def parse(self, text: str) -> str:
        text = text.strip()
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            pass
        if not _HOSTNAME_RE.fullmatch(text):
            raise ValueError("%r is neither a host name nor an IP address" % text[:64])
        return text

    def describe(self) -> str:
        return "host name or IP address"


def split_list(text: str) -> List[str]:
    """Split ``a, b`` / ``a,b`` / one item per line; blank items are dropped."""
    return [part.strip() for part in re.split(r"[,\n]", text) if part.strip()]


MAX_TEXT = 4096  # the longest string a JSON value may carry unless its type says less
MAX_ITEMS = 256  # the longest JSON list unless its type says less


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for error messages that must not echo the value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _finite_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a number, not %s" % json_type(value))
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer too large for a float (JSON numbers have no size limit)
        finite = False
    if not finite:
        raise ValueError("must be a finite number")
    return value


def _check_range(value, minimum, maximum, unit: str = "") -> None:
    if minimum is not None and value < minimum:
        raise ValueError("%s%s is below the minimum %s%s" % (_num(value), unit, _num(minimum), unit))
    if maximum is not None and value > maximum:
        raise ValueError("%s%s is above the maximum %s%s" % (_num(value), unit, _num(maximum), unit))


def _num(value) -> str:
    return ("%g" % value) if isinstance(value, float) else str(value)


def _range_text(minimum, maximum) -> str:
    if minimum is None and maximum is None:
        return ""
    return " in [%s, %s]" % ("-inf" if minimum is None else _num(minimum), "inf" if maximum is None else _num(maximum))


class Option:
    """One declared option: name, type, default and documentation, nothing else.

    ``default`` is the parsed value used when the option is absent; ``None``
    with ``required=True`` means the option must be given.
    """

    __slots__ = ("name", "type", "default", "doc", "required", "secret")

    def __init__(
        self,
        name: str,
        type: OptionType,
        default: Any = None,
        doc: str = "",
        required: bool = False,
        secret: bool = False,
    ):
        if not doc:
            raise TypeError("option %r needs a doc string" % name)
        self.name = name
        self.type = type
        self.default = default
        self.doc = doc
        self.required = required
        self.secret = secret  # never logged, printed or shown in status

    def schema(self) -> Dict[str, Any]:
        entry = dict(self.type.schema())
        entry["description"] = self.doc
        entry["required"] = self.required
        if not self.required:
            entry["default"] = _jsonable(self.default)
        if self.secret:
            entry["no_log"] = True
        entry["format"] = self.type.describe()
        return entry


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "pattern"):
        return value.pattern
    return value


class Declared:
    """Base of everything configured by an INI section with declared options.

    Subclasses set ``KIND`` (``"monitor"``, ``"tweak"``, ``"action"``,
    ``"section"``), ``TYPE`` (the name used in ``type = ...``), ``OPTIONS`` and
    a one-line ``__doc__``.  Concrete classes register themselves, so
    ``registry("monitor")`` lists every monitor type without a hand-kept list.
    """

    KIND: ClassVar[str] = ""
    TYPE: ClassVar[str] = ""
    OPTIONS: ClassVar[Sequence[Option]] = ()
    _registry: ClassVar[Dict[str, Dict[str, Type["Declared"]]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names = [opt.name for opt in cls.OPTIONS]
        if len(names) != len(set(names)):
            raise TypeError("%s declares an option twice" % cls.__name__)
        if cls.KIND and cls.TYPE:
            kind = Declared._registry.setdefault(cls.KIND, {})
            if cls.TYPE in kind and kind[cls.TYPE] is not cls:
                raise TypeError("two %s types named %r" % (cls.KIND, cls.TYPE))
            kind[cls.TYPE] = cls

    @classmethod
    def option(cls, name: str) -> Optional[Option]:
        for opt in cls.OPTIONS:
            if opt.name == name:
                return opt
        return None

    @classmethod
    def parse_options(
        cls, raw: Dict[str, str], on_error: Optional[Callable[[str, str], None]] = None
    ) -> Dict[str, Any]:
        """Turn ``{name: text}`` into ``{name: value}`` for every declared option.

        Unknown names, bad values and missing required options are reported
        through ``on_error(option_name, message)``; without ``on_error`` the
        first problem raises ``ValueError``.  Defaults fill the rest.
        """

        def report(name: str, message: str) -> None:
            if on_error is None:
                raise ValueError("%s: %s" % (name, message))
            on_error(name, message)

        values: Dict[str, Any] = {}
        for name, text in raw.items():
            opt = cls.option(name)
            if opt is None:
                known = ", ".join(sorted(o.name for o in cls.OPTIONS)) or "none"
                report(name, "unknown option %r for %s %r (known: %s)" % (name, cls.KIND, cls.TYPE, known))
                continue
            try:
                values[name] = opt.type.parse(text)
            except ValueError as exc:
                report(name, "option %r: %s" % (name, _masked(opt, text, exc)))
        for opt in cls.OPTIONS:
            if opt.name not in values and opt.name not in raw:
                if opt.required:
                    report(opt.name, "option %r is required for %s %r" % (opt.name, cls.KIND, cls.TYPE))
                else:
                    values[opt.name] = opt.default
        return values

    @classmethod
    def check_values(cls, data: Any) -> Dict[str, Any]:
        """Validate a JSON object (a wire message, a saved record) against ``OPTIONS``.

        Every key must be declared, every value of its type and in range, every
        required option present; ``null`` stands for "unset" where the default
        is ``None``.  Returns the normalised values (absent ones stay absent);
        ``ValueError`` names the first bad field and never quotes a secret.
        """
        if not isinstance(data, dict):
            raise ValueError("must be a JSON object, not %s" % json_type(data))
        values: Dict[str, Any] = {}
        for name, value in data.items():
            opt = cls.option(name) if isinstance(name, str) else None
            if opt is None:
                raise ValueError("unknown field %r" % str(name)[:64])
            if value is None and opt.default is None and not opt.required:
                values[name] = None
                continue
            try:
                values[name] = opt.type.check(value)
            except ValueError as exc:
                raise ValueError("field %r: %s" % (name, _masked(opt, value, exc)[:200])) from None
        for opt in cls.OPTIONS:
            if opt.required and opt.name not in values:
                raise ValueError("field %r is required" % opt.name)
        return values

    @classmethod
    def schema(cls) -> Dict[str, Any]:
        doc = (cls.__doc__ or "").strip().splitlines()
        return {
            "kind": cls.KIND,
            "type": cls.TYPE,
            "description": doc[0] if doc else "",
            "options": {opt.name: opt.schema() for opt in cls.OPTIONS},
        }


def _masked(opt: Option, value: Any, exc: Exception) -> str:
    """A type's error message, unless the option is secret and the message would show (part of) its value."""
    message = str(exc)
    if opt.secret:
        text = value.strip() if isinstance(value, str) else repr(value)
        if not text or text in message or repr(text)[1:-1] in message or len(text) > 3 and text[:4] in message:
            return "invalid value (secret, not shown)"
    return message


def registry(kind: str) -> Dict[str, Type[Declared]]:
    """Every registered class of one kind, by type name (import the package first)."""
    return dict(Declared._registry.get(kind, {}))
