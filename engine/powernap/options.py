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

    def describe(self) -> str:
        return self.schema_type

    def schema(self) -> Dict[str, Any]:
        return {"type": self.schema_type}


class String(OptionType):
    def __init__(self, nonempty: bool = False):
        self.nonempty = nonempty

    def parse(self, text: str) -> str:
        text = text.strip()
        if self.nonempty and not text:
            raise ValueError("must not be empty")
        return text


class Boolean(OptionType):
    schema_type = "bool"

    def parse(self, text: str) -> bool:
        word = text.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError("%r is not a boolean (use yes/no, true/false, on/off, 1/0)" % text)


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
        if math.isnan(value):
            raise ValueError("%r is not a number" % text)
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
            raise ValueError("%r is not one of: %s" % (text, ", ".join(self.choices)))
        return word

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

    def __init__(self, item: OptionType, nonempty: bool = False):
        self.item = item
        self.nonempty = nonempty

    def parse(self, text: str) -> Tuple[Any, ...]:
        values = []
        for part in split_list(text):
            try:
                values.append(self.item.parse(part))
            except ValueError as exc:
                raise ValueError("list item %r: %s" % (part, exc)) from None
        if self.nonempty and not values:
            raise ValueError("must name at least one item")
        return tuple(values)

    def describe(self) -> str:
        return "list of " + self.item.describe()

    def schema(self) -> Dict[str, Any]:
        return {"type": "list", "elements": self.item.schema()["type"]}


def split_list(text: str) -> List[str]:
    """Split ``a, b`` / ``a,b`` / one item per line; blank items are dropped."""
    return [part.strip() for part in re.split(r"[,\n]", text) if part.strip()]


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
                report(name, "option %r: %s" % (name, exc))
        for opt in cls.OPTIONS:
            if opt.name not in values and opt.name not in raw:
                if opt.required:
                    report(opt.name, "option %r is required for %s %r" % (opt.name, cls.KIND, cls.TYPE))
                else:
                    values[opt.name] = opt.default
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


def registry(kind: str) -> Dict[str, Type[Declared]]:
    """Every registered class of one kind, by type name (import the package first)."""
    return dict(Declared._registry.get(kind, {}))
