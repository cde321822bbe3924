"""Fleet mode's options (FLEETMODE.md): instance, segment, lead_poll, [segment.NAME], a host's segment."""

import pytest

from powernap.server.config import default_instance_name, load_config

BASE = """[powerwaked]
secret = 0123456789abcdef-fleet
listen = 127.0.0.1
"""
PG = "store = postgresql:///powerwaked?host=/tmp/pg\n"
SEGMENTS = """
[segment.lan-a]
subnets = 198.18.0.0/24, fd00:a::/64

[segment.lan-b]
subnets = 198.18.1.0/24
"""


def _load(tmp_path, text):
    path = tmp_path / "powerwaked.conf"
    path.write_text(text)
    config, errors = load_config([str(path)])
    return config, [str(error) for error in errors], str(path)


def test_a_fleet_config_is_taken_and_resolves_each_hosts_segment(tmp_path):
    text = (
        BASE
        + PG
        + "instance = seg-a-1\nsegment = lan-a\nlead_poll = 500ms\n"
        + SEGMENTS
        + (
            "[host.a1]\nip = 198.18.0.11\n[host.b1]\nsegment = lan-b\nip = 198.18.0.12\n"
            "[host.x]\nmac = 02:00:00:00:00:01\n"
        )
    )
    config, errors, _path = _load(tmp_path, text)
    assert errors == []
    assert config.fleet and config.instance == "seg-a-1" and config.server["lead_poll"] == 0.5
    assert config.segments["lan-a"]["subnets"] == ("198.18.0.0/24", "fd00:a::/64")
    assert config.segment_of("a1") == "lan-a"  # by its configured address
    assert config.segment_of("b1") == "lan-b"  # its own option wins over its address
    assert config.segment_of("x") is None  # unknown: the instance that takes its first report decides
    assert config.segment_of("x", ["198.18.1.7"]) == "lan-b"  # a reported address decides
    assert config.segment_of("r", ["fd00:a::5%eth0"]) == "lan-a"
    assert config.segment_of("r", ["203.0.113.1", "bogus"]) is None


def test_single_instance_mode_is_the_default(tmp_path):
    config, errors, _path = _load(tmp_path, BASE)
    assert errors == []
    assert not config.fleet and config.server["segment"] == "" and config.server["lead_poll"] == 2.0
    assert config.instance == default_instance_name(__import__("socket").gethostname())


def test_the_default_instance_name_is_a_valid_one():
    assert default_instance_name("Seg_A1.example.org") == "seg-a1"
    assert default_instance_name("---") == "powerwaked"
    assert len(default_instance_name("x" * 100)) == 63


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # fleet mode on a SQLite store
        ("segment = lan-a\n" + SEGMENTS, ":4: [powerwaked] segment = lan-a (fleet mode) needs store = postgresql"),
        ("store = sqlite:///tmp/x.sqlite3\nsegment = lan-a\n" + SEGMENTS, "needs store = postgresql"),
        # a segment with no section
        (PG + "segment = lan-c\n" + SEGMENTS, ":5: [powerwaked] segment 'lan-c': no [segment.lan-c] section"),
        # overlapping subnets of two segments
        (
            PG
            + "segment = lan-a\n[segment.lan-a]\nsubnets = 198.18.0.0/16\n[segment.lan-b]\nsubnets = 198.18.1.0/24\n",
            ":9: [segment.lan-b] subnets: 198.18.1.0/24 overlaps 198.18.0.0/16 of [segment.lan-a]",
        ),
        # a host's segment naming no segment
        (
            PG + "segment = lan-a\n" + SEGMENTS + "[host.h1]\nsegment = lan-z\n",
            ":13: [host.h1] segment 'lan-z': no [segment.lan-z] section",
        ),
        # bad values
        ("instance = Seg_A\n", ":4: option 'instance':"),
        ("lead_poll = 0\n", ":4: option 'lead_poll':"),
        (PG + "segment = lan-a\n[segment.lan-a]\nsubnets = 198.18.0.1/24\n", ":7: option 'subnets': list item"),
        (PG + "segment = lan-a\n[segment.lan-a]\n", ":6: option 'subnets' is required"),
        ("[segment.lan_a]\nsubnets = 198.18.0.0/24\n", ":4: bad segment name 'lan_a'"),
    ],
)
def test_fleet_errors_name_the_section_and_option(tmp_path, extra, expected):
    _config, errors, path = _load(tmp_path, BASE + extra)
    assert any(path + expected in error or (path in error and expected in error) for error in errors), errors


def test_a_password_in_the_store_url_is_never_in_a_fleet_error(tmp_path):
    _config, errors, _path = _load(tmp_path, BASE + "store = sqlite:///tmp/hunter2-secret.sqlite3\nsegment = lan-a\n")
    assert errors and not any("hunter2" in error for error in errors)


def test_a_refused_store_url_is_the_one_error_not_also_fleet_mode_on_sqlite(tmp_path):
    """The refused store's default (SQLite) stands in for it: fleet mode must not be refused for a store the admin
    never wrote (the second, misleading error the role's play showed)."""
    _config, errors, path = _load(tmp_path, BASE + "store = postgresql://u:S3cret@db.example:99999/x\nsegment = lan-a\n"
                                  + SEGMENTS)  # fmt: skip
    assert errors == [path + ":4: option 'store': a PostgreSQL store URL with a bad host or port part"], errors


def test_check_config_names_the_live_file_for_a_checked_copy(tmp_path, capsys):
    """The role validates a temporary copy: --shown-as makes its errors name the file it replaces."""
    from powernap.server.daemon import main

    _config, _errors, path = _load(tmp_path, BASE + "lead_poll = 0\n")
    assert main(["--config", path, "--check-config", "--shown-as", "/etc/powernap/powerwaked.conf"]) == 1
    assert capsys.readouterr().err.startswith("/etc/powernap/powerwaked.conf:4: option 'lead_poll':")


def test_a_segments_subnets_are_parsed_once_not_for_every_address(tmp_path, monkeypatch):
    """Every new host's first report asks for its segment: at 100,000 hosts, parsing each segment's subnets for every
    address took a third of an instance's time.  Parsed once; again only when the sections change."""
    import ipaddress

    from powernap.server import config as config_module

    config, errors, _path = _load(tmp_path, BASE + PG + "instance = seg-a-1\nsegment = lan-a\n" + SEGMENTS)
    assert errors == []
    parsed, parse = [], ipaddress.ip_network

    def network(text):
        parsed.append(text)
        return parse(text)

    monkeypatch.setattr(config_module.ipaddress, "ip_network", network)
    assert config.segment_of("n1", ["198.18.1.7"]) == "lan-b"
    assert config.segment_of("n2", ["fd00:a::9"]) == "lan-a" and config.segment_of("n3", ["10.0.0.1"]) is None
    assert len(parsed) == 3  # the three subnets, once
    config.segments["lan-b"]["subnets"] = ["198.18.9.0/24"]
    assert config.segment_of("n1", ["198.18.9.1"]) == "lan-b" and len(parsed) == 6
