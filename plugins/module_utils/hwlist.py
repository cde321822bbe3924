# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine's hardware allow/deny list files: parse, plan a change, render.  The one home of this logic, for
the hwlist module and the engine module (the role's lists).  Pure standard library."""

from ansible_collections.powernap.fleet.plugins.module_utils.hardware_keys import MATCH_KEYS

# One entry option (module argument spec suboptions).
ENTRY_SPEC = {
    "name": {"type": "str", "required": True},
    "verdict": {"type": "str", "default": "deny", "choices": ["allow", "deny"]},
    "match": {"type": "dict", "default": {}},
    "actions": {"type": "list", "elements": "str"},
    "tweaks": {"type": "list", "elements": "str"},
    "reason": {"type": "str"},
}

HEADER = "# Managed by Ansible (powernap.fleet.hwlist). Local edits to managed entries are overwritten.\n"


def parse_sections(text):
    """Ordered [(section_name, [(key, value)])] of an INI text; comments and blank lines are dropped."""
    sections = []
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = (line[1:-1].strip(), [])
            sections.append(current)
        elif current is not None and "=" in line:
            key, value = line.split("=", 1)
            current[1].append((key.strip(), value.strip()))
        elif current is not None and current[1]:
            # Continuation line (a list value over several lines).
            key, value = current[1][-1]
            current[1][-1] = (key, value + ", " + line)
    return sections


def _joined(value):
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def entry_section(entry):
    """(section name, [(key, value)]) for one entry option; ValueError naming the problem."""
    name = entry["name"]
    if not name or any(c in name for c in "[]\n=") or name != name.strip():
        raise ValueError("entry name %r is not usable as a section name" % name)
    match = entry.get("match") or {}
    unknown = sorted(set(match) - set(MATCH_KEYS))
    if unknown:
        raise ValueError(
            "entry %s: unknown match key(s) %s (known: %s)" % (name, ", ".join(unknown), ", ".join(MATCH_KEYS))
        )
    if not entry.get("actions") and not entry.get("tweaks"):
        raise ValueError("entry %s: give actions and/or tweaks it allows or denies" % name)
    if not entry.get("reason"):
        raise ValueError("entry %s: a reason is required" % name)
    values = [(key, _joined(match[key])) for key in MATCH_KEYS if key in match]
    if entry.get("actions"):
        values.append(("actions", _joined(entry["actions"])))
    if entry.get("tweaks"):
        values.append(("tweaks", _joined(entry["tweaks"])))
    values.append(("reason", " ".join(str(entry["reason"]).split())))
    return "%s.%s" % (entry["verdict"], name), values


def render(sections):
    chunks = [HEADER]
    for name, values in sections:
        width = max([len(k) for k, _v in values] or [0])
        chunks.append("\n[%s]\n" % name + "".join("%s = %s\n" % (k.ljust(width), v) for k, v in values))
    return "".join(chunks)


def plan(existing_text, entries, state, exclusive, remove_list=False):
    """The new file text (None = remove the file) for the options."""
    sections = parse_sections(existing_text or "")
    if remove_list and (entries or state != "absent"):
        raise ValueError("remove_list removes the whole file: it goes with state=absent and no entries")
    if state == "absent":
        if not entries:
            if not remove_list:
                raise ValueError(
                    "state=absent with no entries would remove the whole list file: set remove_list=true for that"
                )
            return None
        drop = {"%s.%s" % (e["verdict"], e["name"]) for e in entries}
        return render([s for s in sections if s[0] not in drop])
    wanted = [entry_section(e) for e in entries]
    wanted_names = [name for name, _values in wanted]
    if len(set(wanted_names)) != len(wanted_names):
        raise ValueError("entries: duplicate entry names")
    by_name = dict(wanted)
    result = []
    for name, values in sections:
        if name in by_name:
            result.append((name, by_name.pop(name)))
        elif not exclusive:
            result.append((name, values))
    result.extend((name, values) for name, values in wanted if name in by_name)
    return render(result)
