"""Every monitor type registers, declares documented options and builds from INI text."""

import json

import pytest
from monitor_fakes import make

from powernap.monitors import MONITOR_COMMON_OPTIONS, Monitor
from powernap.options import registry

EXPECTED = {
    "process",
    "io",
    "load",
    "input",
    "console",
    "users",
    "tcp",
    "udp",
    "wol",
    "disk",
    "net",
    "ping",
    "command",
    "http",
    "nut",
    "inhibitors",
    "timers",
}
# The smallest valid option set per type (required options only).
MINIMAL = {
    "process": {"regex": "sshd"},
    "io": {"regex": "rsync"},
    "tcp": {"ports": "22"},
    "udp": {"ports": "53"},
    "ping": {"hosts": "127.0.0.1"},
    "command": {"command": "true"},
    "http": {"url": "http://127.0.0.1/"},
    "nut": {"ups": "rack1"},
}


def test_every_type_is_registered():
    assert set(registry("monitor")) == EXPECTED


@pytest.mark.parametrize("type_name", sorted(EXPECTED))
def test_schema_is_documented(type_name):
    cls = registry("monitor")[type_name]
    assert issubclass(cls, Monitor)
    schema = cls.schema()
    json.dumps(schema)  # the role's argument specs are generated from this
    assert schema["type"] == type_name and schema["kind"] == "monitor"
    assert len(schema["description"]) > 20, "one-line docstring missing"
    for common in MONITOR_COMMON_OPTIONS:
        assert common.name in schema["options"]
    for name, option in schema["options"].items():
        assert len(option["description"]) > 15, "%s.%s has no real doc" % (type_name, name)
        assert option["format"]


@pytest.mark.parametrize("type_name", sorted(EXPECTED))
def test_builds_from_minimal_options_and_describes_itself(tmp_path, type_name):
    monitor = make(type_name, root=tmp_path, **MINIMAL.get(type_name, {}))
    assert monitor.options["error_behavior"] == "activity"
    assert monitor.options["enabled"] is True
    assert monitor.describe()
    assert monitor.fds() == []  # nothing is opened before open()


@pytest.mark.parametrize("type_name", sorted(MINIMAL))
def test_required_options_are_enforced(type_name):
    cls = registry("monitor")[type_name]
    with pytest.raises(ValueError, match="required"):
        cls.parse_options({})


def test_secrets_are_marked():
    assert registry("monitor")["wol"].schema()["options"]["secureon"]["no_log"] is True
    assert registry("monitor")["nut"].schema()["options"]["password"]["no_log"] is True


def test_bad_values_are_rejected():
    cls = registry("monitor")
    with pytest.raises(ValueError, match="regular expression"):
        cls["process"].parse_options({"regex": "("})
    with pytest.raises(ValueError, match="port"):
        cls["tcp"].parse_options({"ports": "70000"})
    with pytest.raises(ValueError, match="IP address"):
        cls["tcp"].parse_options({"ports": "22", "remote": "10.0.0.0/8, not-a-net"})
    with pytest.raises(ValueError, match="SecureOn"):
        cls["wol"].parse_options({"secureon": "xyz"})
    with pytest.raises(ValueError, match="weekday"):
        cls["timers"].parse_options({"calendar": "Funday 07:00"})
