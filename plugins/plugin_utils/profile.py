# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Profiles for the powernap role: inheritance (tuned-like ``include``), inventory overrides, INI rendering.

A profile is data::

    description: One line saying what the profile is for.
    include: base            # or a list / comma-separated string; parents merge left to right
    sections:
      powernap: {settle: 5m}
      monitor.ssh: {type: tcp, ports: 22}
      stage.1: {after: 20m, action: powersave}
      tweak.cpu_offline: ~   # null removes a section inherited from a parent

Inventory overrides (``powernap_config``, ``powernap_host_config``) have the shape of ``sections``: a
section mapped to null is removed, an option mapped to null falls back to the engine's default, and
``_replace: true`` in a section drops what the parents set for it instead of merging option by option.
Only the structure is checked here; the engine's own ``check-config`` judges the values on the host.
"""

import re

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_text

SECTION_RE = re.compile(r"^(powernap|actions|server|stage\.[1-9][0-9]*|(monitor|tweak)\.[a-z0-9][a-z0-9_-]*)$")
OPTION_RE = re.compile(r"^[a-z][a-z0-9_]*$")
REPLACE_KEY = "_replace"
# The order sections are written in: globals first, then the stages in number order, monitors, tweaks.
_SECTION_RANK = {"powernap": 0, "actions": 1, "server": 2, "stage": 3, "monitor": 4, "tweak": 5}
# The fleet server's config (powerwaked.conf, to_ini(kind='powerwaked')): its own sections and order.
# powerwaked's sections, as its config table declares them (engine/powernap/server/config.py SECTIONS and
# NAMED; tests/unit/plugins/filter/test_profile.py keeps the two lists equal).
SERVER_SECTIONS = ("powerwaked", "proxy", "ipmi", "metrics", "energy")
SERVER_NAMED_SECTIONS = ("host", "group", "ups", "schedule", "cluster", "energy_profile", "segment")
SERVER_SECTION_RE = re.compile(
    r"^(%s|(%s)\.[A-Za-z0-9][A-Za-z0-9_.-]*)$" % ("|".join(SERVER_SECTIONS), "|".join(SERVER_NAMED_SECTIONS))
)
# The order sections are written in (the rest after these, by kind then name): as 0.1 wrote them.
_SERVER_SECTION_RANK = {"powerwaked": 0, "proxy": 1, "ipmi": 2, "host": 3, "group": 4, "ups": 5, "schedule": 6}
_SECTION_NAMES = {
    "powernap": (SECTION_RE, "powernap, actions, server, stage.N, monitor.NAME or tweak.NAME"),
    "powerwaked": (
        SERVER_SECTION_RE,
        ", ".join(SERVER_SECTIONS + tuple(kind + ".NAME" for kind in SERVER_NAMED_SECTIONS)),
    ),
}
_ERROR_LINE_RE = re.compile(r"^(?P<path>.*?):(?P<line>[0-9]+): (?P<message>.*)$")


def _includes(profile):
    include = profile.get("include") or []
    if isinstance(include, str):
        include = include.split(",")
    if not isinstance(include, list):
        raise AnsibleFilterError("include must be a profile name or a list of names, not %r" % (include,))
    return [to_text(name).strip() for name in include if to_text(name).strip()]


def profile_chain(library, name):
    """The profiles to merge for ``name``, parents first, each once (depth-first like tuned's include)."""
    if not isinstance(library, dict):
        raise AnsibleFilterError("the profile library must be a mapping of name to profile")
    chain = []

    def visit(current, path):
        if current in path:
            raise AnsibleFilterError("profile include loop: %s" % " -> ".join(path + [current]))
        if current not in library:
            known = ", ".join(sorted(library)) or "none"
            where = (" (included by %s)" % path[-1]) if path else ""
            raise AnsibleFilterError("unknown powernap profile %r%s; known profiles: %s" % (current, where, known))
        profile = library[current]
        if not isinstance(profile, dict):
            raise AnsibleFilterError("profile %r must be a mapping" % current)
        for parent in _includes(profile):
            visit(parent, path + [current])
        if current not in chain:
            chain.append(current)

    visit(to_text(name), [])
    return chain


def _check_value(value, where):
    if isinstance(value, (bool, int, float)):
        return
    if isinstance(value, str):
        if "\n" in value or "\r" in value:
            raise AnsibleFilterError("%s: a value must fit on one line" % where)
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, (list, tuple, dict)) or item is None:
                raise AnsibleFilterError("%s: list items must be plain values, not %s" % (where, type(item).__name__))
            _check_value(item, where)
        return
    raise AnsibleFilterError("%s: expected a string, number, boolean or list, not %s" % (where, type(value).__name__))


def merge_sections(merged, layer, label, kind="powernap"):
    """Merge one layer of sections into ``merged`` (changed in place) and return it."""
    section_re, allowed = _SECTION_NAMES[kind]
    if layer is None:
        return merged
    if not isinstance(layer, dict):
        raise AnsibleFilterError(
            "%s must be a mapping of section name to options, not %s" % (label, type(layer).__name__)
        )
    for section, options in layer.items():
        section = to_text(section)
        if not section_re.match(section):
            raise AnsibleFilterError("%s: bad section name %r (use %s)" % (label, section, allowed))
        if options is None:
            merged.pop(section, None)
            continue
        if not isinstance(options, dict):
            raise AnsibleFilterError(
                "%s: section %r must map option names to values (or be null to remove it)" % (label, section)
            )
        if options.get(REPLACE_KEY):
            merged.pop(section, None)
        target = merged.setdefault(section, {})
        for option, value in options.items():
            option = to_text(option)
            if option == REPLACE_KEY:
                continue
            where = "%s: [%s] %s" % (label, section, option)
            if not OPTION_RE.match(option):
                raise AnsibleFilterError("%s: bad option name (use lower-case letters, digits and _)" % where)
            if value is None:
                target.pop(option, None)
                continue
            _check_value(value, where)
            target[option] = value
    return merged


def resolve_profile(library, name, overrides=None, labels=None):
    """Sections of profile ``name`` after inheritance and the override layers (applied in order)."""
    merged = {}
    for profile_name in profile_chain(library, name):
        merge_sections(merged, library[profile_name].get("sections") or {}, "profile %s" % profile_name)
    if overrides is None:
        overrides = []
    elif isinstance(overrides, dict):
        overrides = [overrides]
    labels = list(labels or [])
    for index, layer in enumerate(overrides):
        label = labels[index] if index < len(labels) else "override %d" % (index + 1)
        merge_sections(merged, layer, label)
    return merged


def _section_key(name):
    kind, _sep, rest = name.partition(".")
    number = int(rest) if kind == "stage" else 0
    return (_SECTION_RANK.get(kind, 9), number, rest)


def _server_section_key(name):
    kind, _sep, rest = name.partition(".")
    return (_SERVER_SECTION_RANK.get(kind, 9), kind, rest)


def format_value(value):
    """One option value as the engine's INI reads it (booleans yes/no, lists comma-separated)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return "%d" % value
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(item) for item in value)
    return to_text(value).strip()


def to_ini(sections, header=None, kind="powernap"):
    """Render resolved sections as the engine's INI text (stable order, so re-renders are byte-identical).

    ``kind='powerwaked'`` takes the fleet server's sections (powerwaked.conf) instead of the engine's.
    """
    if not isinstance(sections, dict):
        raise AnsibleFilterError("to_ini expects a mapping of sections")
    if kind not in _SECTION_NAMES:
        raise AnsibleFilterError("to_ini: kind must be one of %s, not %r" % (", ".join(sorted(_SECTION_NAMES)), kind))
    merge_sections({}, sections, "sections", kind)  # validates the structure
    section_key = _server_section_key if kind == "powerwaked" else _section_key
    lines = []
    if header:
        lines.extend("# " + line if line else "#" for line in to_text(header).splitlines())
        lines.append("")
    for name in sorted(sections, key=section_key):
        lines.append("[%s]" % name)
        options = sections[name] or {}
        # 'type' first: it says what the rest of the section means.
        for option in sorted(options, key=lambda o: (o != "type", o)):
            lines.append("%s = %s" % (option, format_value(options[option])))
        lines.append("")
    return "\n".join(lines)


def config_errors(output, ini_text):
    """Turn ``check-config`` output (``FILE:LINE: message``) into readable lines that name section and option."""
    source = to_text(ini_text).splitlines()
    described = []
    lines = output if isinstance(output, (list, tuple)) else to_text(output).splitlines()
    for raw in lines:
        raw = to_text(raw)
        raw = raw.strip()
        if not raw:
            continue
        match = _ERROR_LINE_RE.match(raw)
        if not match:
            described.append(raw)
            continue
        line_no = int(match.group("line"))
        section = None
        for text in source[: line_no - 1]:
            stripped = text.strip()
            if stripped.startswith("[") and stripped.endswith("]"):
                section = stripped
        at = source[line_no - 1].strip() if 0 < line_no <= len(source) else ""
        if at.startswith("["):
            section, at = at, ""
        where = " ".join(part for part in (section, at) if part)
        described.append("%s: %s" % (where, match.group("message")) if where else match.group("message"))
    return described
