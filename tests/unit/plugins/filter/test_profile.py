# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Profile inheritance, inventory overrides and INI rendering (plugins/filter/profile.py).

The built-in profiles are also rendered and checked with the engine's own config loader, so a profile
that the engine would refuse fails here, not on a host.
"""

import glob
import os
import sys

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.powernap.fleet.plugins.plugin_utils.profile import (
    SERVER_NAMED_SECTIONS,
    SERVER_SECTIONS,
    config_errors,
    format_value,
    profile_chain,
    resolve_profile,
    to_ini,
)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
PROFILE_DIR = os.path.join(REPO, "roles", "powernap", "files", "profiles")
BUILTIN = ("base", "database", "desktop", "fileserver", "laptop", "standby", "webserver")

LIBRARY = {
    "base": {
        "sections": {
            "powernap": {"settle": "5m"},
            "monitor.ssh": {"type": "tcp", "ports": "22"},
            "stage.1": {"after": "30m", "action": "powersave"},
            "tweak.nmi_watchdog": {},
        }
    },
    "server": {"include": "base", "sections": {"stage.2": {"after": "2h", "action": "suspend"}}},
    "web": {
        "include": ["server"],
        "sections": {"monitor.web": {"type": "tcp", "ports": "80,443"}, "stage.1": {"after": "15m"}},
    },
    "quiet": {"sections": {"tweak.audio_powersave": {}, "powernap": {"settle": "1m", "wall": False}}},
    "both": {"include": "web, quiet", "sections": {}},
}


def builtin_library():
    library = {}
    for path in sorted(glob.glob(os.path.join(PROFILE_DIR, "*.yml"))):
        with open(path, encoding="utf-8") as handle:
            library[os.path.basename(path)[:-4]] = yaml.safe_load(handle)
    return library


def test_chain_lists_parents_first_and_each_once():
    assert profile_chain(LIBRARY, "web") == ["base", "server", "web"]
    assert profile_chain(LIBRARY, "both") == ["base", "server", "web", "quiet", "both"]


def test_child_changes_one_option_and_keeps_the_rest_of_the_section():
    merged = resolve_profile(LIBRARY, "web")
    assert merged["stage.1"] == {"after": "15m", "action": "powersave"}
    assert merged["stage.2"] == {"after": "2h", "action": "suspend"}
    assert merged["monitor.web"]["ports"] == "80,443"


def test_later_include_wins_per_option():
    assert resolve_profile(LIBRARY, "both")["powernap"] == {"settle": "1m", "wall": False}


def test_overrides_add_change_and_remove_sections_and_options():
    group = {"monitor.ssh": {"ports": "22,2222"}, "stage.2": None, "tweak.cpu_offline": {}}
    host = {"monitor.web": None, "powernap": {"settle": None, "platform": "physical"}}
    merged = resolve_profile(LIBRARY, "web", [group, host], ["powernap_config", "powernap_host_config"])
    assert merged["monitor.ssh"] == {"type": "tcp", "ports": "22,2222"}
    assert "stage.2" not in merged
    assert "monitor.web" not in merged
    assert merged["tweak.cpu_offline"] == {}
    assert merged["powernap"] == {"platform": "physical"}
    # The library itself is never changed by a merge.
    assert LIBRARY["base"]["sections"]["powernap"] == {"settle": "5m"}


def test_replace_drops_inherited_options():
    merged = resolve_profile(LIBRARY, "web", {"monitor.ssh": {"_replace": True, "type": "tcp", "ports": "2222"}})
    assert merged["monitor.ssh"] == {"type": "tcp", "ports": "2222"}


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(AnsibleFilterError, match=r"unknown powernap profile 'nope'.*base, both"):
        resolve_profile(LIBRARY, "nope")


def test_unknown_parent_names_the_child():
    with pytest.raises(AnsibleFilterError, match=r"'ghost' \(included by orphan\)"):
        profile_chain({"orphan": {"include": "ghost"}}, "orphan")


def test_include_loop_is_reported():
    with pytest.raises(AnsibleFilterError, match="include loop: a -> b -> a"):
        profile_chain({"a": {"include": "b"}, "b": {"include": "a"}}, "a")


@pytest.mark.parametrize(
    "layer, message",
    [
        ({"monitors.ssh": {}}, r"powernap_config: bad section name 'monitors.ssh'"),
        ({"stage.0": {}}, "bad section name 'stage.0'"),
        ({"monitor.ssh": "22"}, r"section 'monitor.ssh' must map option names"),
        ({"monitor.ssh": {"Ports": "22"}}, r"\[monitor.ssh\] Ports: bad option name"),
        ({"monitor.ssh": {"ports": {"a": 1}}}, r"\[monitor.ssh\] ports: expected a string"),
        ({"monitor.ssh": {"ports": "22\n[x]"}}, "must fit on one line"),
        ({"monitor.ssh": {"ports": [[22]]}}, "list items must be plain values"),
    ],
)
def test_bad_structure_fails_naming_layer_section_and_option(layer, message):
    with pytest.raises(AnsibleFilterError, match=message):
        resolve_profile(LIBRARY, "base", [layer], ["powernap_config"])


def test_values_are_written_as_the_engine_reads_them():
    assert format_value(True) == "yes"
    assert format_value(False) == "no"
    assert format_value(2.0) == "2"
    assert format_value(0.5) == "0.5"
    assert format_value(["sleep", "idle"]) == "sleep, idle"
    assert format_value(" 10m ") == "10m"


def test_ini_order_is_stable_and_type_comes_first():
    sections = {
        "tweak.b": {},
        "monitor.z": {"ports": 22, "type": "tcp"},
        "stage.10": {"after": "3h"},
        "stage.2": {"after": "1h"},
        "powernap": {"settle": "5m"},
        "actions": {"wall_command": ""},
    }
    text = to_ini(sections, header="Managed\nby Ansible")
    assert text.splitlines()[:3] == ["# Managed", "# by Ansible", ""]
    headings = [line for line in text.splitlines() if line.startswith("[")]
    assert headings == ["[powernap]", "[actions]", "[stage.2]", "[stage.10]", "[monitor.z]", "[tweak.b]"]
    assert "[monitor.z]\ntype = tcp\nports = 22\n" in text
    assert "wall_command = \n" in text
    assert to_ini(dict(reversed(list(sections.items()))), header="Managed\nby Ansible") == text


def test_server_ini_takes_powerwaked_sections():
    sections = {
        "host.nas1": {"mac": "52:54:00:12:34:56", "groups": ["fileservers", "nas"]},
        "group.fileservers": {"nap_action": "suspend"},
        "ipmi": {"user": "powerwake"},
        "powerwaked": {"secret": "0123456789abcdef", "port": 7490},
    }
    text = to_ini(sections, kind="powerwaked")
    headings = [line for line in text.splitlines() if line.startswith("[")]
    assert headings == ["[powerwaked]", "[ipmi]", "[host.nas1]", "[group.fileservers]"]
    assert "groups = fileservers, nas\n" in text
    with pytest.raises(AnsibleFilterError, match="bad section name 'host.nas1'"):
        to_ini(sections)
    with pytest.raises(AnsibleFilterError, match="bad section name 'stage.1'"):
        to_ini({"stage.1": {"after": "1h"}}, kind="powerwaked")
    with pytest.raises(AnsibleFilterError, match="kind must be one of"):
        to_ini({}, kind="nginx")


def test_server_ini_takes_every_section_powerwaked_declares():
    """The filter's list of powerwaked sections is the daemon's own (config.SECTIONS and NAMED)."""
    engine_dir = os.path.join(REPO, "engine")
    if engine_dir not in sys.path:
        sys.path.insert(0, engine_dir)
    from powernap.server import config  # pylint: disable=import-error,import-outside-toplevel

    assert set(SERVER_SECTIONS) | set(SERVER_NAMED_SECTIONS) == set(config.SECTIONS)
    assert set(SERVER_NAMED_SECTIONS) == set(config.NAMED)
    for kind in SERVER_SECTIONS:
        assert "[%s]" % kind in to_ini({kind: {}}, kind="powerwaked")
    for kind in SERVER_NAMED_SECTIONS:
        assert "[%s.a-1]" % kind in to_ini({kind + ".a-1": {}}, kind="powerwaked")


def test_config_errors_name_section_and_option():
    text = to_ini({"powernap": {"settle": "5m"}, "stage.1": {"after": "10x", "action": "powersave"}})
    line = text.splitlines().index("after = 10x") + 1
    output = ["/tmp/ansible.xyz/source:%d: option 'after': '10x' is not a duration" % line, "", "no stages at all"]
    assert config_errors(output, text) == [
        "[stage.1] after = 10x: option 'after': '10x' is not a duration",
        "no stages at all",
    ]
    heading = text.splitlines().index("[stage.1]") + 1
    assert config_errors("f.conf:%d: bad stage" % heading, text) == ["[stage.1]: bad stage"]


def test_builtin_profiles_are_all_present_and_described():
    library = builtin_library()
    assert sorted(library) == sorted(BUILTIN)
    for name, profile in library.items():
        assert profile.get("description"), name
        if name != "base":
            assert "base" in profile_chain(library, name), name


def _engine():
    engine_dir = os.path.join(REPO, "engine")
    if engine_dir not in sys.path:
        sys.path.insert(0, engine_dir)
    from powernap.config import load_config  # pylint: disable=import-error,import-outside-toplevel
    from powernap.sysroot import SysRoot  # pylint: disable=import-error,import-outside-toplevel

    return load_config, SysRoot


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_profile_passes_the_engines_check(name, tmp_path):
    load_config, sys_root = _engine()
    path = tmp_path / "powernap.conf"
    path.write_text(to_ini(resolve_profile(builtin_library(), name), header="profile " + name))
    config, errors = load_config([str(path)], sys_root(str(tmp_path)))
    assert [str(e) for e in errors] == []
    assert config.stages and config.stages[0].action == "powersave"
    assert any(m.type == "tcp" and m.name == "ssh" for m in config.monitors)


def test_engine_rejects_a_bad_override_and_the_message_names_it(tmp_path):
    load_config, sys_root = _engine()
    text = to_ini(resolve_profile(builtin_library(), "webserver", [{"stage.2": {"after": "soon"}}]))
    path = tmp_path / "powernap.conf"
    path.write_text(text)
    _config, errors = load_config([str(path)], sys_root(str(tmp_path)))
    described = config_errors([str(e) for e in errors], text)
    assert any(line.startswith("[stage.2] after = soon: ") for line in described), described
