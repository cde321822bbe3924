# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The powernap role's interface stays in one piece: argument specs, defaults and README agree.

``python tests/unit/roles/test_powernap_specs.py --write`` regenerates the README's variable table.
"""

import json
import os
import re
import sys

import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
ROLE = os.path.join(REPO, "roles", "powernap")
BEGIN = "<!-- BEGIN VARIABLES (generated from meta/argument_specs.yml) -->"
END = "<!-- END VARIABLES -->"
# Inventory variables the role reads but does not default (shared with the wake module).
INVENTORY_ONLY = {"powernap_mac", "powernap_secureon"}


def load(*parts):
    with open(os.path.join(ROLE, *parts), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def specs():
    return load("meta", "argument_specs.yml")["argument_specs"]["main"]["options"]


def _markup(text):
    text = re.sub(r"[COVP]\(([^)]*)\)", r"`\1`", text)
    return text.replace("|", "\\|")


def variables_table():
    rows = ["| Variable | Type | Default | Description |", "|---|---|---|---|"]
    for name, spec in specs().items():
        kind = spec["type"] + (" of %s" % spec["elements"] if spec.get("elements") else "")
        if spec.get("choices"):
            kind += " (%s)" % ", ".join(spec["choices"])
        default = "`%s`" % json.dumps(spec["default"]) if "default" in spec else "(not set)"
        description = " ".join(_markup(" ".join(line.split())) for line in spec["description"])
        rows.append("| `%s` | %s | %s | %s |" % (name, kind, default, description))
    return "\n".join(rows)


def readme_path():
    return os.path.join(ROLE, "README.md")


def test_every_default_is_declared_with_the_same_value():
    defaults = load("defaults", "main.yml")
    declared = specs()
    assert sorted(defaults) == sorted(set(declared) - INVENTORY_ONLY)
    for name, value in defaults.items():
        assert declared[name]["default"] == value, name
        assert declared[name]["description"], name


def test_every_variable_is_prefixed_and_every_role_variable_used_is_declared():
    declared = specs()
    assert all(name.startswith("powernap_") for name in declared)
    used = set()
    for folder in ("tasks", "templates", "handlers", "vars"):
        for base, _dirs, files in os.walk(os.path.join(ROLE, folder)):
            for name in files:
                with open(os.path.join(base, name), encoding="utf-8") as handle:
                    used.update(re.findall(r"(?<![\w'])powernap_[a-z_]+", handle.read()))
    # powernap_wol_macs is the fact the role sets for the wake side; powernap_config_ is the prefix of the
    # per-group override variables (powernap_config_<name>), documented under powernap_config.
    assert used - {"powernap_wol_macs", "powernap_config_"} <= set(declared), sorted(used - set(declared))
    assert "powernap_config_<name>" in declared["powernap_config"]["description"][1]


def test_readme_variable_table_is_generated_from_the_specs():
    with open(readme_path(), encoding="utf-8") as handle:
        readme = handle.read()
    assert BEGIN in readme and END in readme
    current = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert current == variables_table(), "run: python tests/unit/roles/test_powernap_specs.py --write"


def write_readme():
    with open(readme_path(), encoding="utf-8") as handle:
        readme = handle.read()
    head, rest = readme.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    table = variables_table()  # before the file is opened for writing: a bad spec must not empty the README
    with open(readme_path(), "w", encoding="utf-8") as handle:
        handle.write(head + BEGIN + "\n" + table + "\n" + END + tail)


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    write_readme()
